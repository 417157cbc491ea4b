"""`hoist run`'s test: asks the running release, at $HOIST_URL, for its pages."""

import json
import os
import sys
import urllib.request

URL = os.environ["HOIST_URL"]


def get(path):
    with urllib.request.urlopen(URL + path, timeout=10) as r:
        return r.status, r.read().decode()


status, body = get("/?name=hoist")
assert (status, body) == (200, "hello, hoist\n"), (status, body)
status, body = get("/version")
info = json.loads(body)
print("flask", info["flask"], "from", info["from"])
assert "/vendor/flask/" in info["from"], info
sys.exit(0)
