#!/usr/bin/env bash
# The agent's footprint supervising N trivial instances, beside supervisord and PM2 in the
# same run (../shared/bench footprint section), plus what the harness does not count for
# us: the shims (one per instance) that hold the pipes and survive the agent.
#
#   cargo build --release -p hoist
#   bash bench/footprint.sh [RESULTS_DIR]     (default /tmp/hoist-bench-footprint)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
harness="$here/../../shared/bench/run.sh"
results=${1:-/tmp/hoist-bench-footprint}
export HOIST_BIN=${HOIST_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/hoist}
export BENCH_ROOT=/tmp/hoist-bench-supervise
[ -x "$HOIST_BIN" ] || { echo "error: no release binary at \`$HOIST_BIN\`" >&2; echo "hint: cargo build --release -p hoist" >&2; exit 2; }

# Ends every shim the runs leave behind (they outlive the agent by design).
cleanup() {
  local f pid
  for f in "$BENCH_ROOT"/n*/root/run/*.json; do
    [ -f "$f" ] || continue
    for pid in $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["shim"]["pid"], d["process"]["pid"])' "$f" 2>/dev/null); do
      kill -9 "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    done
  done
}
trap cleanup EXIT

export OURS_NAME=hoist
export OURS_SUPERVISE_CMD="bash $here/supervise.sh {n} {child}"
export SECTIONS=footprint
export FOOTPRINT_N=${FOOTPRINT_N:-2 20}
bash "$harness" "$results"
cleanup
rm -f "$results/hoist-total-pss"

# Our own pass: agent alone, and agent + shims, after the same settle and idle window.
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# PSS: shared pages (the shim binary's text, libc) counted once across the processes.
pss_kb() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
for n in $FOOTPRINT_N; do
  bash "$here/supervise.sh" "$n" /bin/sleep 3600 &
  agent=$!
  for _ in $(seq 200); do
    [ "$(pgrep -c -P "$agent" -x "hoist|hoist-shim" 2>/dev/null)" -ge "$n" ] 2>/dev/null && break
    sleep 0.1
  done
  sleep 2
  shims=$(pgrep -P "$agent" -x "hoist|hoist-shim" | paste -sd' ')
  total=0
  for s in $shims; do total=$((total + $(rss_kb "$s"))); done
  pss=0
  for s in $shims; do pss=$((pss + $(pss_kb "$s"))); done
  c0=$(ticks "$agent"); sleep 10; c1=$(ticks "$agent")
  printf 'hoist agent with %s instances: agent RSS %s kB, shims RSS %s kB (%s shims, %s kB each on average), agent idle CPU %.2f%%\n' \
    "$n" "$(rss_kb "$agent")" "$total" "$(echo "$shims" | wc -w)" "$((total / ($(echo "$shims" | wc -w) + 0 == 0 ? 1 : $(echo "$shims" | wc -w))))" \
    "$(awk -v a="$c0" -v b="$c1" -v t="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", 100*(b-a)/t/10}')"
  apss=$(pss_kb "$agent")
  printf 'hoist agent with %s instances: agent PSS %s kB, shims PSS %s kB in all\n' "$n" "$apss" "$pss"
  echo "$n $((apss + pss))" >>"$results/hoist-total-pss"
  kill "$agent" 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
  cleanup
done
python3 - "$results/results.json" "$results/hoist-total-pss" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1])).get("footprint", [])
print("\nfootprint (harness, manager process only):")
for r in rows:
    print(f"  {r['name']:<12} children {r['children']:>3}  running {r.get('running')!s:>3}  RSS {r.get('rss_mb', r.get('rss_kb', 0)/1024):.1f} MB  idle CPU {r.get('idle_cpu_pct')}%")
# Design §6: every hoist process (agent and shims) against supervisord (which forks its
# children directly: the manager is all it adds), PSS, same run.
print("\nall of hoist's processes against supervisord (PSS):")
for line in open(sys.argv[2]):
    n, kb = map(int, line.split())
    sup = [r for r in rows if r["name"] == "supervisord" and r["children"] == n and "pss_mb" in r]
    vs = f"supervisord {sup[0]['pss_mb']:.1f} MB" if sup else "supervisord not measured"
    print(f"  {n:>3} instances: hoist agent + shims {kb / 1024:.1f} MB, {vs}")
PY
