"""The smoke hook: after the switch, asks the live release for /health and the notes
API through hoist's proxy ($HOIST_URL). A failure makes hoist switch back. Uses only
the standard library because curl may not be installed.
"""

import json
import os
import sys
import urllib.request


def main():
    base = os.environ.get("HOIST_URL", "http://127.0.0.1:{}".format(os.environ.get("PORT", "8000")))
    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as response:
            health = response.read().decode()
        with urllib.request.urlopen(base + "/api/notes", timeout=5) as response:
            notes = json.load(response)
    except Exception as error:  # any failure fails the smoke test, with its reason
        print("smoke failed against {}: {}".format(base, error), file=sys.stderr)
        return 1
    print("smoke ok: health `{}`, {} notes listed".format(health.strip(), len(notes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
