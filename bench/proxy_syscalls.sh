#!/usr/bin/env bash
# System calls per proxied request, hoist against nginx, in front of the same upstream.
# Like instructions (bench/proxy_instr.sh), counts barely move on a busy machine; with
# them the two say where a proxy's CPU goes (user space, or the kernel's share behind
# each call). bench/proxy.sh, on a quiet machine, stays the judge (design §6).
#
#   cargo build --release -p hoist
#   bash bench/proxy_syscalls.sh            (SECONDS_RUN=5 CONNS=8)
#
# Each proxy runs one worker (nginx without a master; hoist with `--workers 1`) under
# `strace -c -f` for SECONDS_RUN seconds of wrk keep-alive requests; the upstream is a
# native nginx answering `return 200 "blue\n"`. Prints the calls per request by kind and
# in all. strace slows each call, so only the counts mean anything, not the rates.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${HOIST_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/hoist}
run_s=${SECONDS_RUN:-5}
conns=${CONNS:-8}
base=${PORT_BASE:-19490}
up_port=$base
nginx_port=$((base + 1))
hoist_port=$((base + 2))

for tool in strace wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` is missing (apt-get install strace wrk nginx curl)" >&2; exit 2; }
done
if [ ! -x "$bin" ]; then
  echo "error: no release binary at \`$bin\`" >&2
  echo "hint: run \`cargo build --release -p hoist\` (or set HOIST_BIN)" >&2
  exit 2
fi

work=$(mktemp -d /tmp/hoist-syscalls.XXXXXX)
source "$here/proxy_lib.sh"
trap cleanup EXIT

# measure NAME PORT PID: prints the calls per request, by kind and in all.
measure() {
  local name=$1 port=$2 pid=$3 n tracer
  wait_http "http://127.0.0.1:$port/"
  wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null
  strace -c -f -q -p "$pid" -o "$work/$name.strace" &
  tracer=$!
  sleep 0.5
  n=$(wrk -t1 -c"$conns" -d"$run_s"s "http://127.0.0.1:$port/" | grep -Eo '^ *[0-9]+ requests in' | grep -Eo '[0-9]+')
  kill -INT "$tracer"
  wait "$tracer" 2>/dev/null || true
  echo "$name ($n requests):"
  # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
  awk -v n="$n" '
    /^ *[0-9]/ && $NF != "total" { calls[$NF] = $4; sum += $4 }
    END {
      for (c in calls) if (calls[c] / n >= 0.01) printf "  %-14s %6.2f per request\n", c, calls[c] / n
      printf "  %-14s %6.2f per request\n", "all", sum / n
    }' "$work/$name.strace" | sort -k2 -rn
}

start_upstream "$up_port"

nginx_proxy_conf "$nginx_port" "$up_port"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" \
  -g 'daemon off; master_process off; worker_processes 1;' >"$work/nginx.log" 2>&1 </dev/null &
nginx_pid=$!
pids+=($nginx_pid)
measure nginx "$nginx_port" "$nginx_pid"
kill "$nginx_pid" 2>/dev/null || true

"$bin" proxy --workers 1 --listen "127.0.0.1:$hoist_port" --upstream "127.0.0.1:$up_port" \
  --control "$work/hoist.sock" >"$work/hoist.log" 2>&1 </dev/null &
hoist_pid=$!
pids+=($hoist_pid)
measure hoist "$hoist_port" "$hoist_pid"
