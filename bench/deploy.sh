#!/usr/bin/env bash
# Deploy figures (design §6), printed, never asserted:
#   (a) 50 alternating deploys and rollbacks under continuous load (wrk through hoist's
#       proxy): failed requests = non-2xx + socket errors; the target is 0;
#   (b) what a deploy adds on top of the app's own start-up (a prebuilt artifact);
#   (c) rollback time: from the command to the first response from the previous release.
#
#   cargo build --release -p hoist -p hoist-testapp
#   bash bench/deploy.sh            (CYCLES=25 pairs by default; wrk installed if missing)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}/release
bin=${HOIST_BIN:-$target/hoist}
app=${TESTAPP_BIN:-$target/hoist-testapp}
cycles=${CYCLES:-25}
count_lua="$here/../../shared/bench/wrk/count.lua"
for b in "$bin" "$app"; do
  [ -x "$b" ] || { echo "error: \`$b\` is not built; hint: cargo build --release -p hoist -p hoist-testapp" >&2; exit 2; }
done
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

work=$(mktemp -d /tmp/hoist-bench-deploy.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export HOIST_SOCKET="$work/agent.sock"
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null || true
  for f in "$work"/root/run/*.json; do
    [ -f "$f" ] || continue
    for pid in $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["shim"]["pid"], d["process"]["pid"])' "$f" 2>/dev/null); do
      kill -9 "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    done
  done
  pkill -9 -f "proxy --listen 127.0.0.1:$port" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" agent --root "$work/root" --socket "$HOIST_SOCKET" --proxy "127.0.0.1:$port" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 200); do [ -S "$HOIST_SOCKET" ] && break; sleep 0.05; done

# One project per release: the VERSION file (and so the release id) differs.
project() { # NAME
  local d="$work/$1"
  mkdir -p "$d"
  echo "$1" >"$d/VERSION"
  cat >"$d/hoist.toml" <<TOML
app = "bench"

[build]
include = ["VERSION"]

[services.web]
command = "$app serve"
replicas = 2
stop_timeout = "5s"
http = { domains = ["*"], health = { path = "/health", interval = "50ms", healthy_threshold = 2, min_healthy = "0s" }, drain_timeout = "5s" }

[deploy]
standby = "1h"
keep_releases = 3

[[hosts]]
name = "local"
roles = ["web"]
TOML
  "$bin" build -c "$d/hoist.toml" -o "$d/release.tar.zst" >/dev/null 2>&1
}
ms() { date +%s%3N; }

echo "== (b) deploy overhead"
project base
"$bin" deploy -c "$work/base/hoist.toml" --artifact "$work/base/release.tar.zst" >/dev/null 2>&1
# The app's own start-up: spawn to the first healthy answer, measured here directly.
startup=()
for i in 1 2 3 4 5; do
  p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  t0=$(ms); PORT=$p "$app" serve >/dev/null 2>&1 & pid=$!
  until curl -sf "http://127.0.0.1:$p/health" >/dev/null 2>&1; do sleep 0.002; done
  startup+=($(( $(ms) - t0 ))); kill "$pid"; wait "$pid" 2>/dev/null || true
done
deploys=()
for i in 1 2 3 4 5; do
  project "o$i"
  t0=$(ms)
  "$bin" deploy -c "$work/o$i/hoist.toml" --artifact "$work/o$i/release.tar.zst" --json >"$work/o$i.events" 2>/dev/null
  deploys+=($(( $(ms) - t0 )))
done
python3 - "$work" "${startup[*]}" "${deploys[*]}" <<'PY'
import json, statistics, sys
work, startup, deploys = sys.argv[1], list(map(int, sys.argv[2].split())), list(map(int, sys.argv[3].split()))
print(f"app start-up to first healthy answer: median {statistics.median(startup)} ms {startup}")
print(f"hoist deploy --artifact, command to exit: median {statistics.median(deploys)} ms {deploys}")
print(f"added by hoist (median deploy - median start-up): {statistics.median(deploys) - statistics.median(startup)} ms")
steps = {}
for i in range(1, 6):
    begin = {}
    for line in open(f"{work}/o{i}.events"):
        e = json.loads(line)
        if e.get("type") == "step":
            if e["phase"] == "begin":
                begin[e["step"]] = e["at_ms"]
            elif e["phase"] == "end" and e["step"] in begin:
                steps.setdefault(e["step"], []).append(e["at_ms"] - begin[e["step"]])
print("per step, median ms: " + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in steps.items()))
print("(health gate: 2 consecutive passes at 50 ms, min_healthy 0s; defaults are 3 at 1 s + 2 s)")
PY

echo "== (c) rollback time (previous release warm)"
roll=()
for i in 1 2 3 4 5; do
  cur=$(curl -s "http://127.0.0.1:$port/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["release"])')
  prev=$("$bin" releases -c "$work/base/hoist.toml" --json | python3 -c 'import json,sys; print([r["release"] for r in json.load(sys.stdin) if r["role"]=="standby"][0])')
  t0=$(ms)
  "$bin" rollback -c "$work/base/hoist.toml" >/dev/null 2>&1 &
  rb=$!
  until [ "$(curl -s "http://127.0.0.1:$port/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["release"])' 2>/dev/null)" = "$prev" ]; do :; done
  roll+=($(( $(ms) - t0 )))
  wait "$rb"
done
echo "rollback, command to first response from the previous release: ${roll[*]} ms"

echo "== (a) $((cycles * 2)) alternating deploys and rollbacks under load"
for i in $(seq "$cycles"); do project "c$i"; done
wrk -t2 -c16 -d600s --latency -s "$count_lua" "http://127.0.0.1:$port/" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
sleep 1
t0=$(ms)
fails=0
for i in $(seq "$cycles"); do
  "$bin" deploy -c "$work/c$i/hoist.toml" --artifact "$work/c$i/release.tar.zst" >/dev/null 2>&1 || fails=$((fails + 1))
  "$bin" rollback -c "$work/c$i/hoist.toml" >/dev/null 2>&1 || fails=$((fails + 1))
done
took=$(( $(ms) - t0 ))
sleep 1
kill -INT "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
python3 - "$work/wrk.out" "$took" "$fails" "$cycles" <<'PY'
import json, sys
out, took, fails, cycles = open(sys.argv[1]).read(), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
line = next((l for l in out.splitlines() if l.startswith("WRKJSON ")), None)
if not line:
    print(out); sys.exit(1)
r = json.loads(line[8:])
errors = r.get("errors", {})
sock = sum(errors.get(k, 0) for k in ("connect", "read", "write", "timeout"))
print(f"operations: {cycles} deploys + {cycles} rollbacks in {took/1000:.1f} s ({fails} failed)")
print(f"requests: {r.get('requests')}  non-2xx: {r.get('non2xx')}  socket errors: {sock} {errors}")
print(f"failed requests (non-2xx + socket errors): {r.get('non2xx', 0) + sock}")
lat = r.get("latency_us", {})
print(f"latency p50 {lat.get('p50', 0)/1000:.2f} ms, p99 {lat.get('p99', 0)/1000:.2f} ms, max {lat.get('max', 0)/1000:.1f} ms")
PY
