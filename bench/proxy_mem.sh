#!/usr/bin/env bash
# The proxy's memory under route churn (issue #14): one release-build `hoist proxy` with
# its state file and access log, four test-app upstreams, wrk against it, and a pusher
# that sends a new route table every PUSH_MS over the control socket — each push a new
# release of one of 6 routes (route 1 is `*` and takes wrk's traffic), its members
# alternating between two sets (the old ones drain), and every other push of route 1
# with a canary of yet another release. That is the agent's soak compressed: a deploy
# per push. Prints the proxy's RSS (and smaps_rollup's anonymous and private figures)
# every INTERVAL seconds; the figures must level off, not grow with the pushes.
#
#   cargo build --release -p hoist -p hoist-testapp
#   bash bench/proxy_mem.sh          DURATION=120 PUSH_MS=100 WRK_CONNECTIONS=32 INTERVAL=10
#   (HEAPTRACK=1: run the proxy under heaptrack; its file is kept and named at the end)
# Measured (2 loaded cores, DURATION=120, ~1,000 pushes): before the fix of issue #14 the
# RSS went 11.9 → 52.0 MB with 975 (route, release) counters held; after it, 10.5 → 16.6 MB,
# flat from the 40th second on, with 19 held.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$root_dir/target}
HOIST=${HOIST_BIN:-$target/release/hoist}
TESTAPP=${TESTAPP_BIN:-$target/release/hoist-testapp}
DURATION=${DURATION:-120}
PUSH_MS=${PUSH_MS:-100}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-32}
INTERVAL=${INTERVAL:-10}
for b in "$HOIST" "$TESTAPP"; do
  [ -x "$b" ] || { echo "error: no release binary at \`$b\`" >&2; echo "hint: cargo build --release -p hoist -p hoist-testapp" >&2; exit 2; }
done
command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
if [ "${HEAPTRACK:-0}" = 1 ]; then
  command -v heaptrack >/dev/null || { echo "error: heaptrack is not installed (apt-get install heaptrack)" >&2; exit 2; }
fi

work=$(mktemp -d /tmp/hoist-proxymem.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ] || [ "${HEAPTRACK:-0}" = 1 ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ups=()
for i in 1 2 3 4; do
  p=$(free_port)
  PORT=$p "$TESTAPP" serve > "$work/app$i.log" 2>&1 &
  pids+=($!)
  ups+=("127.0.0.1:$p")
done
port=$(free_port)
wrap=()
[ "${HEAPTRACK:-0}" = 1 ] && wrap=(heaptrack -o "$work/heaptrack")
"${wrap[@]}" "$HOIST" proxy --listen "127.0.0.1:$port" --control "$work/control.sock" \
  --state "$work/routes.json" --access-log "$work/access.log" 2> "$work/proxy.log" &
pids+=($!)
for _ in $(seq 200); do [ -S "$work/control.sock" ] && break; sleep 0.05; done
[ -S "$work/control.sock" ] || { cat "$work/proxy.log" >&2; exit 1; }
proxy_pid=$(python3 - "$work/control.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b'{"version":1,"request":{"type":"ping"}}\n')
print(json.loads(s.makefile().readline())["response"]["ok"]["pid"])
PY
)
for u in "${ups[@]}"; do
  for _ in $(seq 100); do curl -sf "http://$u/health" >/dev/null && break; sleep 0.05; done
done

python3 - "$work/control.sock" "$PUSH_MS" "${ups[@]}" > "$work/pusher.log" 2>&1 <<'PY' &
import json, socket, sys, time
sock, push_ms, ups = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = socket.socket(socket.AF_UNIX); s.connect(sock)
f = s.makefile("rw")
sets = [ups[:2], ups[2:]]
n = 0
while True:
    i = n % 6
    members = sets[(n // 6) % 2]
    route = {
        "id": f"mem{i}/web", "app": f"mem{i}", "service": "web",
        "domains": ["*"] if i == 0 else [f"s{i}.mem.test"], "path_prefix": "/",
        "release": f"r{n}", "drain_timeout_ms": 1000,
        "upstreams": [{"addr": a, "instance": f"mem{i}-{a}"} for a in members],
    }
    if i == 0 and (n // 6) % 2 == 1:
        other = sets[((n // 6) + 1) % 2]
        route["canary"] = {"release": f"c{n}", "weight_bp": 2000,
                           "upstreams": [{"addr": a, "instance": f"mem{i}-c-{a}"} for a in other]}
    f.write(json.dumps({"version": 1, "request": {"type": "set_route", "route": route}}) + "\n")
    f.flush()
    answer = f.readline()
    if '"ok"' not in answer:
        print("refused:", answer.strip(), flush=True)
    n += 1
    if n == 6:
        print("routes set", flush=True)
    if n % 100 == 0:
        print(n, flush=True)
    time.sleep(push_ms / 1000)
PY
pids+=($!)
# wrk starts once every route is there (else its first second is 404s).
for _ in $(seq 200); do grep -q 'routes set' "$work/pusher.log" && break; sleep 0.05; done
wrk -t2 -c"$WRK_CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$port/" > "$work/wrk.log" 2>&1 &
pids+=($!)

figures() {
  local rss anon priv
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$proxy_pid/status")
  anon=$(awk '/^Anonymous:/ {print $2}' "/proc/$proxy_pid/smaps_rollup")
  priv=$(awk '/^Private_Dirty:/ {print $2}' "/proc/$proxy_pid/smaps_rollup")
  printf '%6ss  pushes %6s  RSS %7s kB  anonymous %7s kB  private dirty %7s kB\n' \
    "$1" "$(grep -E '^[0-9]+$' "$work/pusher.log" 2>/dev/null | tail -1 || echo 0)" "$rss" "$anon" "$priv"
}
echo "proxy pid $proxy_pid on 127.0.0.1:$port; pushing a route every ${PUSH_MS} ms for ${DURATION}s"
start=$(date +%s)
figures 0
while :; do
  sleep "$INTERVAL"
  now=$(( $(date +%s) - start ))
  figures "$now"
  [ "$now" -ge "$DURATION" ] && break
done
stats=$("$HOIST" proxy stats --control "$work/control.sock" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["routes"]))')
echo "counters held (route, release pairs): $stats"
grep -E 'Requests/sec|Non-2xx|Socket errors' "$work/wrk.log" || true
grep refused "$work/pusher.log" | head -3 || true
if [ "${HEAPTRACK:-0}" = 1 ]; then
  kill -INT "$proxy_pid" 2>/dev/null || true
  sleep 2
  echo "heaptrack file: $(ls "$work"/heaptrack* 2>/dev/null | head -1)"
fi
