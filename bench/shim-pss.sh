#!/usr/bin/env bash
# Memory of the shims alone: starts N shims (each supervising `sleep 1000`) from SHIM_EXE
# (run as `SHIM_EXE shim --spec FILE`, as the agent does), prints their PSS and
# Private_Dirty per shim from /proc/PID/smaps_rollup and the largest private dirty
# mappings of one of them, then kills them. Fine on a busy machine (memory, not time).
#
#   bash bench/shim-pss.sh target/release/hoist-shim 20     # the small shim binary
#   bash bench/shim-pss.sh target/release/hoist 20          # `hoist shim` (the fallback)
set -euo pipefail
bin=$(realpath "${1:?usage: shim-pss.sh SHIM_EXE [N]}"); n=${2:-20}
d=$(mktemp -d /tmp/hoist-shim-pss.XXXXXX); mkdir -p "$d/run"
shims=()
cleanup() { for s in "${shims[@]}"; do kill -USR2 "$s" 2>/dev/null || true; done; sleep 1; rm -rf "$d"; }
trap cleanup EXIT
for i in $(seq 1 "$n"); do
  cat > "$d/run/i$i.spec.json" <<EOS
{"instance":"i$i","app":"a","service":"s","release":"r","command":"sleep 1000","cwd":"/","env":[["PATH","/usr/bin:/bin"]],"stop_signal":"SIGTERM","stop_timeout":{"secs":1,"nanos":0},"user":null,"log_dir":"$d/logs","log_max_bytes":10000000,"log_keep":2}
EOS
  setsid "$bin" shim --spec "$d/run/i$i.spec.json" > "$d/r$i" 2> "$d/e$i" < /dev/null &
done
for i in $(seq 1 "$n"); do
  for _ in $(seq 1 300); do [ -s "$d/r$i" ] && break; sleep 0.1; done
  shims+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["identity"]["shim"]["pid"])' "$d/r$i")")
done
sleep 2
pss=0; dirty=0
for s in "${shims[@]}"; do
  pss=$((pss + $(awk '/^Pss:/ {print $2}' "/proc/$s/smaps_rollup")))
  dirty=$((dirty + $(awk '/^Private_Dirty:/ {print $2}' "/proc/$s/smaps_rollup")))
done
echo "$(basename "$bin"): $n shims, PSS $((pss / n)) kB per shim ($pss kB in all), Private_Dirty $((dirty / n)) kB per shim"
echo "largest private dirty mappings of one shim (kB):"
awk '/^[0-9a-f]+-/ {name = $6 " " $2} /^Private_Dirty:/ {if ($2 > 0) print "  " $2, name}' "/proc/${shims[0]}/smaps" | sort -rn | head -6
