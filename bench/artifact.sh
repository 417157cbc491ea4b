#!/usr/bin/env bash
# Release-artifact benchmark: build, verify and unpack throughput against tar|zstd,
# sha256sum and zstd|tar on a ~100 MB tree of mixed files, and the bytes a one-file
# redeploy moves against the full artifact and rsync. Prints figures; passes or fails
# nothing. Needs zstd, GNU tar, rsync (apt-get install -y zstd rsync).
#
#   bash bench/artifact.sh            # the tree goes under $TMPDIR (or BENCH_DIR=...)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in zstd tar rsync sha256sum; do
    command -v "$tool" >/dev/null || { echo "error: \`$tool\` is not installed" >&2; exit 2; }
done

cargo build --release -q -p hoist-artifact --example artifact_bench
target_dir="${CARGO_TARGET_DIR:-target}"
echo "hoist-artifact benchmark on $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
"$target_dir/release/examples/artifact_bench"
