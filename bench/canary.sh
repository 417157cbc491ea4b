#!/usr/bin/env bash
# Canary figure (issue 13, item 5): the share of requests that failed while a release
# answering 30% of its requests with 500 was deployed, under the same load over the same
# 12 s window — as a canary, plainly with a bake window of the same limit, and plainly.
# Real agent, proxy and test app (debug build, as the tests use). Prints; checks nothing.
#
#   bash bench/canary.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build -q --workspace --bins
echo "hoist canary figure on $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
cargo nextest run -p hoist --test canary --run-ignored only \
    -E 'test(figure_failed_share_under_canary_and_plain_deploys)' --no-capture 2>&1 \
    | grep -E '^(failed requests|  (canary|plain|\())'
