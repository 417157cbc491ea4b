#!/usr/bin/env bash
# OURS_SUPERVISE_CMD for ../shared/bench's footprint section: becomes a hoist agent (the
# measured process) supervising N copies of CHILD, deployed as a worker service.
#   bench/supervise.sh N CHILD...      (HOIST_BIN: the hoist binary; BENCH_ROOT: scratch)
set -euo pipefail
n=$1
shift
bin=${HOIST_BIN:?HOIST_BIN must name the hoist binary}
base=${BENCH_ROOT:-/tmp/hoist-bench-supervise}/n$n
rm -rf "$base"
mkdir -p "$base/app"
cat >"$base/app/hoist.toml" <<TOML
app = "footprint"

[services.trivial]
command = "exec $*"
replicas = $n
stop_timeout = "2s"

[[hosts]]
name = "local"
roles = ["trivial"]
TOML
(
  for _ in $(seq 200); do [ -S "$base/agent.sock" ] && break; sleep 0.05; done
  HOIST_SOCKET="$base/agent.sock" "$bin" deploy -c "$base/app/hoist.toml" >"$base/deploy.log" 2>&1
) &
exec "$bin" agent --root "$base/root" --socket "$base/agent.sock" 2>"$base/agent.log"
