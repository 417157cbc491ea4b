#!/usr/bin/env bash
# Soak: months of an agent's life compressed into minutes, through one real agent (release
# build), its proxy and real shims. Load, all at once for DURATION seconds:
#   - job runs: JOBS jobs, each `every = "1s"` (the real scheduler, shim and process per run);
#   - deploys: one after another, each a new release of the test app (as many as fit);
#   - access-log lines: wrk against the proxy (each request is one line).
# Printed at the start, every minute and at the end: the agent's RSS (and the proxy's),
# state.db (+ WAL) size, the disk used under the root, the API's latency (GET /v1/status,
# p50/p99 of 50), and the work done so far. The figures must level off, not grow with the
# work: retention prunes the tables once a minute, logs and the access log rotate by size.
# Not a test: the machine it runs on (and how busy it is) sets the rates; it says what it
# reached against the issue's targets (100,000 job runs, 5,000 deploys, 10 million
# access-log lines). The defaults are sized to reach them in about 30 minutes on a quiet
# 2-core machine: deploys go to DEPLOY_APPS apps at once (each app's deploys are
# serialised by the agent; apps deploy in parallel), each a new release.
#
#   cargo build --release -p hoist -p hoist-testapp
#   bash bench/soak.sh        DURATION=1800 JOBS=180 DEPLOY_APPS=6 WRK_CONNECTIONS=32 KEEP=1
#   (JOB_RUNS_MAX=5000 EVENTS_MAX=5000: lower retention caps, so that a short run reaches
#   them and shows the state file holding at its cap)
#   UNTIL_TARGETS=1 bash bench/soak.sh   runs until all three targets are reached (each
#   load stops at its own target), or MAX_DURATION seconds (2400) pass; DURATION is then
#   unused. ROW_EVERY: seconds between rows (60).
set -euo pipefail
shopt -s nullglob
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$root_dir/target}
HOIST=${HOIST_BIN:-$target/release/hoist}
TESTAPP=${TESTAPP_BIN:-$target/release/hoist-testapp}
DURATION=${DURATION:-1800}
UNTIL_TARGETS=${UNTIL_TARGETS:-0}
MAX_DURATION=${MAX_DURATION:-2400}
ROW_EVERY=${ROW_EVERY:-60}
if [ "$UNTIL_TARGETS" = 1 ]; then DURATION=$MAX_DURATION; fi
JOBS=${JOBS:-180}
DEPLOY_APPS=${DEPLOY_APPS:-6}
JOB_RUNS_TARGET=${JOB_RUNS_TARGET:-100000}
DEPLOYS_TARGET=${DEPLOYS_TARGET:-5000}
LINES_TARGET=${LINES_TARGET:-10000000}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-32}
for b in "$HOIST" "$TESTAPP"; do
  [ -x "$b" ] || { echo "error: no release binary at \`$b\`" >&2; echo "hint: cargo build --release -p hoist -p hoist-testapp" >&2; exit 2; }
done
command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "error: sqlite3 is not installed (apt-get install sqlite3)" >&2; exit 2; }

work=$(mktemp -d /tmp/hoist-soak.XXXXXX)
root="$work/root"
export HOIST_SOCKET="$work/agent.sock"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
agent_pid=""
proxy_pid=""
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The agent stops the app's instances itself; the loop below catches any left.
  local f pid
  for f in "$work"/app*/hoist.toml; do "$HOIST" down -c "$f" >/dev/null 2>&1 || true; done
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  for f in "$root"/run/*.json; do
    [ -f "$f" ] || continue
    for pid in $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["shim"]["pid"], d["process"]["pid"])' "$f" 2>/dev/null); do
      kill -9 "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    done
  done
  [ -n "${proxy_pid:-}" ] && kill -9 "$proxy_pid" 2>/dev/null || true
  # Whatever else runs under this soak's directory (a proxy the agent started again, an
  # agent under a wrapper): by pid, found by the directory in its arguments.
  local c
  for c in /proc/[0-9]*/cmdline; do
    pid=${c#/proc/}; pid=${pid%/cmdline}
    [ "$pid" = $$ ] && continue
    if { tr '\0' ' ' < "$c"; } 2>/dev/null | grep -qF -- "$work/"; then kill -9 "$pid" 2>/dev/null || true; fi
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The defaults (unless overridden above), written out: what an operator's
# /etc/hoist/agent.toml would say.
cat > "$work/agent.toml" <<TOML
[retention]
events_days = 30
events_max = ${EVENTS_MAX:-50000}
job_runs_days = 30
job_runs_max = ${JOB_RUNS_MAX:-20000}
operations_days = 90
operations_max = 5000
history_days = 400
history_max = 10000
TOML

"$HOIST" agent --root "$root" --socket "$HOIST_SOCKET" --proxy "127.0.0.1:$port" \
  --config "$work/agent.toml" 2> "$work/agent.log" &
agent_pid=$!
for _ in $(seq 200); do [ -S "$HOIST_SOCKET" ] && break; sleep 0.1; done

# App 1 takes the wrk traffic (domain `*`) and runs the jobs; the others are deployed
# beside it, each on a domain of its own.
app_file() {
  local n=$1 domain
  if [ "$n" = 1 ]; then domain='*'; else domain="s$n.soak.test"; fi
  printf 'app = "soak%d"\n\n[build]\ninclude = ["VERSION"]\n\n' "$n"
  printf '[services.web]\ncommand = "%s serve"\nreplicas = 2\nstop_timeout = "5s"\n' "$TESTAPP"
  printf 'http = { domains = ["%s"], health = { path = "/health", interval = "200ms", healthy_threshold = 1, min_healthy = "0s" }, drain_timeout = "1s" }\n\n' "$domain"
  if [ "$n" = 1 ]; then
    for i in $(seq "$JOBS"); do
      printf '[jobs.j%d]\ncommand = "true"\nevery = "1s"\ntimeout = "30s"\n\n' "$i"
    done
  fi
  printf '[deploy]\nhealth_deadline = "30s"\nstandby = "0s"\nkeep_releases = 20\n\n[[hosts]]\nname = "local"\nroles = ["web"]\n'
}
for n in $(seq "$DEPLOY_APPS"); do
  mkdir -p "$work/app$n"
  app_file "$n" > "$work/app$n/hoist.toml"
  echo 0 > "$work/app$n/VERSION"
  "$HOIST" deploy -c "$work/app$n/hoist.toml" >/dev/null 2>"$work/deploy0.log" || { cat "$work/deploy0.log" >&2; exit 1; }
done
project="$work/app1"

proxy_pid=$(pgrep -f "proxy --listen 127.0.0.1:$port" | head -1 || true)
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
latency() {
  python3 - "$HOIST_SOCKET" <<'PY'
import socket, sys, time
ts = []
for _ in range(50):
    t = time.perf_counter()
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
    s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    while s.recv(65536): pass
    s.close()
    ts.append((time.perf_counter() - t) * 1000)
ts.sort()
print(f"{ts[len(ts)//2]:.1f}/{ts[int(len(ts)*0.99)-1]:.1f}")
PY
}
deploys=0
row() {
  local label=$1 db wal disk runs lines
  db=$(stat -c %s "$root/state.db" 2>/dev/null || echo 0)
  wal=$(stat -c %s "$root/state.db-wal" 2>/dev/null || echo 0)
  disk=$( (du -sb "$root" 2>/dev/null || true) | cut -f1)
  runs=$(sqlite3 -readonly "$root/state.db" 'SELECT coalesce(max(id),0) FROM job_runs' 2>/dev/null || echo '?')
  local logs=("$root"/proxy/access.log*)
  lines=$( (cat "${logs[@]}" 2>/dev/null || true) | wc -l)
  local rotated=$(( ${#logs[@]} > 0 ? ${#logs[@]} - 1 : 0 ))
  printf '%-6s agent %6s kB  proxy %6s kB  state.db %6.1f MB (+wal %5.1f MB)  root %7.1f MB  status p50/p99 %s ms  | job runs %s  deploys %s  access lines kept %s (+%s rotated files)\n' \
    "$label" "$(rss "$agent_pid")" "$(rss "${proxy_pid:-0}")" "$(echo "$db/1048576" | bc -l)" "$(echo "$wal/1048576" | bc -l)" \
    "$(echo "$disk/1048576" | bc -l)" "$(latency)" "$runs" "$(deploys_done)" "$lines" "$rotated"
}
deploys_done() { cat "$work"/deploys.* 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
echo "soak: ${DURATION}s, $JOBS jobs every 1s, deploys back to back to $DEPLOY_APPS apps, wrk -c$WRK_CONNECTIONS; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
row start

end=$(( $(date +%s) + DURATION ))
for n in $(seq "$DEPLOY_APPS"); do
  echo 0 > "$work/deploys.$n"
  ( i=0
    while [ "$(date +%s)" -lt "$end" ] && ! [ -e "$work/stop.deploys" ]; do
      i=$((i + 1)); echo "$i" > "$work/app$n/VERSION"
      if "$HOIST" deploy -c "$work/app$n/hoist.toml" >/dev/null 2>"$work/deploy-last.$n.log"; then
        echo $(( $(cat "$work/deploys.$n") + 1 )) > "$work/deploys.$n"
      else
        echo "app$n #$i" >> "$work/failed"
        cp "$work/deploy-last.$n.log" "$work/deploy-failed-$n-$i.log"
      fi
    done ) &
  pids+=($!)
done
# Traffic in rounds of WRK_ROUND seconds (the requests of each round are summed, and the
# load stops at its target between two rounds).
WRK_ROUND=${WRK_ROUND:-30}
( while [ "$(date +%s)" -lt "$end" ] && ! [ -e "$work/stop.wrk" ]; do
    left=$(( end - $(date +%s) )); d=$(( left < WRK_ROUND ? left : WRK_ROUND ))
    [ "$d" -gt 0 ] || break
    wrk -t2 -c"$WRK_CONNECTIONS" -d"${d}s" --latency "http://127.0.0.1:$port/" > "$work/wrk.round.txt" 2>&1 || true
    cat "$work/wrk.round.txt" >> "$work/wrk.txt"
    awk '/requests in/ {print $1}' "$work/wrk.round.txt" >> "$work/wrk.requests"
  done ) &
pids+=($!)
requests_done() { awk '{s += $1} END {print s + 0}' "$work/wrk.requests" 2>/dev/null || echo 0; }
runs_done() { sqlite3 -readonly "$root/state.db" 'SELECT coalesce(max(id),0) FROM job_runs' 2>/dev/null || echo 0; }
started=$(date +%s)
next_row=$(( started + ROW_EVERY ))
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 5
  if [ "$UNTIL_TARGETS" = 1 ]; then
    # Each load stops at its target; the run ends when all three are reached.
    [ "$(deploys_done)" -ge "$DEPLOYS_TARGET" ] && touch "$work/stop.deploys"
    [ "$(requests_done)" -ge "$LINES_TARGET" ] && touch "$work/stop.wrk"
    if [ "$(runs_done)" -ge "$JOB_RUNS_TARGET" ] && [ -e "$work/stop.deploys" ] && [ -e "$work/stop.wrk" ]; then
      break
    fi
  fi
  if [ "$(date +%s)" -ge "$next_row" ]; then
    next_row=$(( next_row + ROW_EVERY ))
    row "$(( ($(date +%s) - started) / 60 ))m"
  fi
done
touch "$work/stop.deploys" "$work/stop.wrk"
wait "${pids[@]}" 2>/dev/null || true
pids=()
sleep 5
row end
echo "elapsed: $(( $(date +%s) - started )) s"
requests=$(requests_done)
runs_total=$(runs_done)
failed=$( (cat "$work/failed" 2>/dev/null || true) | wc -l)
echo "totals: job runs $runs_total, deploys $(deploys_done) (each a new release), access-log lines written ${requests:-0} (wrk requests); failed deploys $failed"
reached() { if [ "${1:-0}" -ge "$2" ]; then echo reached; else echo "NOT reached"; fi; }
echo "targets: job runs $runs_total/$JOB_RUNS_TARGET $(reached "$runs_total" "$JOB_RUNS_TARGET"), deploys $(deploys_done)/$DEPLOYS_TARGET $(reached "$(deploys_done)" "$DEPLOYS_TARGET"), access-log lines ${requests:-0}/$LINES_TARGET $(reached "$(printf '%.0f' "${requests:-0}")" "$LINES_TARGET")"
echo "wrk rounds: $(grep -c 'requests in' "$work/wrk.txt" 2>/dev/null || echo 0); $(grep -E 'Non-2xx|Socket errors' "$work/wrk.txt" | sort | uniq -c | tr -s ' ' | head -5 | tr '\n' ';')"
echo "history --verify: $("$HOIST" history --verify -c "$project/hoist.toml" 2>&1 | tail -1)"
