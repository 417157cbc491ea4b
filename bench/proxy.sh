#!/usr/bin/env bash
# The proxy's figures, beside nginx and HAProxy in the same run (design §6):
# requests/s, p50/p99, CPU per request and RSS through each proxy in front of the same
# upstream, and switches under load (failed requests, time to a switch).
#
#   cargo build --release -p hoist
#   bash bench/proxy.sh [RESULTS_DIR]       (default /tmp/hoist-bench-proxy)
#
# Uses ../shared/bench/run.sh (needs root: it installs nginx, haproxy and wrk if
# missing) with our OURS_CMD/OURS_SWITCH_CMD hooks, then prints hoist÷nginx and
# hoist÷haproxy ratios per round and their geometric means. Knobs: ROUNDS (5),
# SECTIONS ("proxy switch"), HOIST_BIN (the release binary), and the harness's own.
# No thresholds: it prints figures; judge them over several rounds (one swings ±15 %).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
harness="$here/../../shared/bench/run.sh"
results=${1:-/tmp/hoist-bench-proxy}
bin=${HOIST_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/hoist}

if [ ! -x "$bin" ]; then
  echo "error: no release binary at \`$bin\`" >&2
  echo "hint: run \`cargo build --release -p hoist\` (or set HOIST_BIN)" >&2
  exit 2
fi
if [ ! -f "$harness" ]; then
  echo "error: the shared bench harness is missing (\`$harness\`)" >&2
  exit 2
fi

sock='/tmp/hoist-bench-{listen_port}.sock'
# The proxies leave their control sockets behind (a restart replaces them); tidy up.
trap 'rm -f /tmp/hoist-bench-[0-9]*.sock' EXIT
export OURS_NAME=hoist
export OURS_CMD="$bin proxy --listen {listen} --upstream {upstream} --control $sock"
export OURS_SWITCH_CMD="$bin proxy switch --control $sock --upstream {target}"
export SECTIONS=${SECTIONS:-proxy switch}
export ROUNDS=${ROUNDS:-5}

bash "$harness" "$results"
python3 "$here/proxy_report.py" "$results/results.json"
