#!/usr/bin/env bash
# Fleet figures (design §6: a deploy to 10 hosts takes at most 1.5x a deploy to one),
# printed, never asserted: 10 network-namespace hosts with real sshd, `hoist setup`,
# then deploys to 1, 3 and 10 hosts over OpenSSH, cold (ssh masters closed) and warm
# (after `hoist plan`, masters kept by ControlPersist), beside the plain `ssh true`
# fan-out to the same hosts (crates/hoist/benches/fleet.rs).
#
#   bash bench/fleet.sh        (as root; ROUNDS=3 redeploys per size by default)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" -eq 0 ] || { echo "error: network namespaces need root" >&2; exit 2; }
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
}
cargo build --release --bins -p hoist -p hoist-testapp
cargo bench -p hoist --bench fleet
