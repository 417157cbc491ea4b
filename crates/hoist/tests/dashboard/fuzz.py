"""schemathesis against a live agent's dashboard listener (run by tests/dashboard.rs):

    fuzz.py BASE TOKEN ARTIFACTS

The description is fetched from BASE/v1/openapi.json (no token needed); its `follow`
query parameters are left out of the copy given to schemathesis (a stream that never
ends is no test case), and two operations are not fuzzed: `POST /v1/agent/stop` (it
would end the agent under test) and `POST /v1/dashboard/rotate` (it would end the
fuzzer's own token). Checks: no 5xx, answers and their content types and status codes
as described, and operations refused without the token.
"""

import json
import os
import shutil
import subprocess
import sys
import urllib.request

BASE, TOKEN, ART = sys.argv[1:4]
os.makedirs(ART, exist_ok=True)
with urllib.request.urlopen(BASE + "/v1/openapi.json", timeout=30) as r:
    doc = json.load(r)
for ops in doc["paths"].values():
    for op in ops.values():
        op["parameters"] = [p for p in op.get("parameters", []) if p["name"] != "follow"]
schema = os.path.join(ART, "openapi-fuzzed.json")
with open(schema, "w") as f:
    json.dump(doc, f, indent=1)

exe = shutil.which("schemathesis") or os.path.join(os.path.dirname(sys.executable), "schemathesis")
cmd = [
    exe, "run", schema,
    "--url", BASE,
    "-H", "Authorization: Bearer " + TOKEN,
    "--phases", "examples,fuzzing",
    "--max-examples", os.environ.get("HOIST_FUZZ_EXAMPLES", "12"),
    "--exclude-path", "/v1/agent/stop",
    "--exclude-path", "/v1/dashboard/rotate",
    "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance,"
    "status_code_conformance,response_headers_conformance,ignored_auth",
    "--request-timeout", "20",
    "--generation-database", "none",
    "--seed", "1",
    "--no-color",
]
# Run from the artifacts directory: schemathesis keeps a `.schemathesis` cache where it runs.
sys.exit(subprocess.run(cmd, cwd=ART).returncode)
