"""The WSGI entry point Phusion Passenger loads (`application`), also used by serve.py.

The vendored packages are put first on the import path, so the release runs exactly the
versions it was built and tested with, whatever the host has installed.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "vendor"))

from app import app as application  # noqa: E402
