#!/usr/bin/env bash
# Instructions per proxied request, hoist against nginx, in front of the same upstream.
# Instruction counts barely move on a busy machine, where wall-clock figures are noise:
# this is the figure to drive the proxy's request path with; bench/proxy.sh (on a quiet
# machine) stays the judge of requests/s, p99 and CPU per request (design §6).
#
#   cargo build --release -p hoist
#   bash bench/proxy_instr.sh            (SECONDS_RUN=10 WARMUP=3 CONNS=8)
#
# Each proxy runs under `valgrind --tool=callgrind` (perf counters are not available in
# this VM); the upstream is a native nginx answering `return 200 "blue\n"` (as in
# ../shared/bench). wrk warms the proxy up for WARMUP seconds, its counters are dumped,
# then wrk runs SECONDS_RUN seconds of keep-alive requests, and the second dump's total
# divided by the requests wrk completed is the figure (how many there are does not
# matter: the figure is per request). nginx runs one worker without a master (valgrind follows one
# process); hoist runs its usual workers (valgrind runs their threads one at a time, and
# counts them all). Prints one line per proxy and the ratio. No thresholds.
# KEEP=DIR keeps the measured callgrind dumps there (DIR/nginx.cg, DIR/hoist.cg) for
# `callgrind_annotate`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${HOIST_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/hoist}
run_s=${SECONDS_RUN:-10}
warmup=${WARMUP:-3}
conns=${CONNS:-8}
base=${PORT_BASE:-19480}
up_port=$base
nginx_port=$((base + 1))
hoist_port=$((base + 2))

for tool in valgrind callgrind_control wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` is missing (apt-get install valgrind wrk nginx curl)" >&2; exit 2; }
done
if [ ! -x "$bin" ]; then
  echo "error: no release binary at \`$bin\`" >&2
  echo "hint: run \`cargo build --release -p hoist\` (or set HOIST_BIN)" >&2
  exit 2
fi

work=$(mktemp -d /tmp/hoist-instr.XXXXXX)
# Each dump after the first names functions by numbers the first dump defined: keep the
# names in every dump, so callgrind_annotate can read the kept one on its own.
cg_opts="--compress-strings=no --compress-pos=no"
source "$here/proxy_lib.sh"
trap cleanup EXIT

# run_wrk PORT SECONDS: keep-alive requests for that long; prints how many completed.
run_wrk() {
  wrk -t1 -c"$conns" -d"$2"s "http://127.0.0.1:$1/" >"$work/wrk.out" 2>&1
  grep -Eo '^ *[0-9]+ requests in' "$work/wrk.out" | grep -Eo '[0-9]+'
}

# The callgrind dump's total instruction count.
dump_total() { # FILE
  grep -E '^(summary|totals):' "$1" | head -1 | awk '{print $2}'
}

# measure NAME PORT PID OUT_PREFIX : prints instructions per request.
measure() {
  local name=$1 port=$2 pid=$3 out=$4 done_n total i
  wait_http "http://127.0.0.1:$port/"
  run_wrk "$port" "$warmup" >/dev/null
  callgrind_control -d "$pid" >/dev/null 2>&1
  done_n=$(run_wrk "$port" "$run_s")
  callgrind_control -d "$pid" >/dev/null 2>&1
  # The dumps are numbered; the newest is the measured stretch.
  local last
  last=$(ls -1 "$out".* 2>/dev/null | sort -t. -k3 -n | tail -1)
  total=$(dump_total "$last")
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$last" "$KEEP/$name.cg"; fi
  echo "$name $total $done_n" | awk '{printf "%-6s %8.0f instructions/request  (%d requests, %.0f instructions)\n", $1, $2 / $3, $3, $2}' >&2
  awk -v t="$total" -v n="$done_n" 'BEGIN { printf "%.0f\n", t / n }'
}

# The upstream (native).
start_upstream "$up_port"

# nginx as the proxy, one worker, no master, under callgrind.
nginx_proxy_conf "$nginx_port" "$up_port"
valgrind --tool=callgrind $cg_opts --callgrind-out-file="$work/nginx.cg" \
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" \
  -g 'daemon off; master_process off; worker_processes 1;' >"$work/nginx.log" 2>&1 </dev/null &
nginx_pid=$!
pids+=($nginx_pid)
nginx_ipr=$(measure nginx "$nginx_port" "$nginx_pid" "$work/nginx.cg")
kill "$nginx_pid" 2>/dev/null || true

# hoist's proxy under callgrind.
valgrind --tool=callgrind $cg_opts --callgrind-out-file="$work/hoist.cg" \
  "$bin" proxy --listen "127.0.0.1:$hoist_port" --upstream "127.0.0.1:$up_port" \
  --control "$work/hoist.sock" >"$work/hoist.log" 2>&1 </dev/null &
hoist_pid=$!
pids+=($hoist_pid)
hoist_ipr=$(measure hoist "$hoist_port" "$hoist_pid" "$work/hoist.cg")

awk -v h="$hoist_ipr" -v n="$nginx_ipr" 'BEGIN { printf "hoist / nginx instructions per request: %.3f\n", h / n }'
