#!/usr/bin/env bash
# Regenerates everything under docs/ that is derived from the code: the app-file and host
# config references, the CLI reference, the man pages. `crates/hoist/tests/docs.rs` fails
# when the committed files differ from what the code generates.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p hoist --bin hoist
target/debug/hoist docs gen docs
