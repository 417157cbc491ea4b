#!/usr/bin/env bash
# The cost of the per-method x code counters on the proxy's request path (issue 13):
# requests/s and proxy CPU per request through `hoist proxy` with them and with
# `--no-code-counters`, in the same run, rounds interleaved (A B A B ...) against the
# same upstream (the test app). Prints figures; asserts nothing. On a busy machine they
# are indicative only.
#
#   bash bench/metrics_cost.sh        HOIST_BIN / TESTAPP_BIN (default: target/release),
#                                     ROUNDS (4), SECS (10), CONNS (32)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}/release
bin=${HOIST_BIN:-$target/hoist}
app=${TESTAPP_BIN:-$target/hoist-testapp}
rounds=${ROUNDS:-4}
secs=${SECS:-10}
conns=${CONNS:-32}
for x in "$bin" "$app"; do
  [ -x "$x" ] || { echo "error: no binary at \`$x\`; hint: cargo build --release -p hoist -p hoist-testapp (or set HOIST_BIN/TESTAPP_BIN)" >&2; exit 2; }
done
command -v wrk >/dev/null || { echo "error: \`wrk\` is missing; hint: apt-get install wrk" >&2; exit 2; }

work=$(mktemp -d /tmp/hoist-bench-metrics.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

up=$(free_port)
PORT=$up "$app" serve >"$work/app.log" 2>&1 &
pids+=($!)
# clock ticks of a process (user + system)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

declare -A port pid
for mode in with without; do
  port[$mode]=$(free_port)
  extra=()
  [ "$mode" = without ] && extra=(--no-code-counters)
  "$bin" proxy --listen "127.0.0.1:${port[$mode]}" --control "$work/$mode.sock" \
    --upstream "127.0.0.1:$up" --workers 2 "${extra[@]}" 2>"$work/$mode.log" &
  pid[$mode]=$!
  pids+=(${pid[$mode]})
done
for mode in with without; do
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:${port[$mode]}/" && break; sleep 0.1; done
done

echo "proxy metrics cost: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $rounds x ${secs}s rounds, $conns connections, $(date -u +%FT%TZ)"
printf '%-8s %5s %12s %14s\n' mode round 'req/s' 'CPU us/req'
declare -A sum_rps sum_cpu
for r in $(seq "$rounds"); do
  for mode in with without; do
    t0=$(ticks "${pid[$mode]}")
    out=$(wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:${port[$mode]}/")
    t1=$(ticks "${pid[$mode]}")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    cpu=$(python3 -c "print(round(($t1-$t0)/$hz*1e6/max($reqs,1),2))")
    printf '%-8s %5s %12s %14s\n' "$mode" "$r" "$rps" "$cpu"
    sum_rps[$mode]=$(python3 -c "print(${sum_rps[$mode]:-0}+$rps)")
    sum_cpu[$mode]=$(python3 -c "print(${sum_cpu[$mode]:-0}+$cpu)")
  done
done
for mode in with without; do
  printf '%-8s %5s %12.0f %14.2f\n' "$mode" mean "$(python3 -c "print(${sum_rps[$mode]}/$rounds)")" "$(python3 -c "print(${sum_cpu[$mode]}/$rounds)")"
done
