#!/usr/bin/env bash
# The whole test suite, as README.md gives it and CI runs it (.ci/run calls this file):
# installs the system packages the tests need when they are missing, then formatting,
# lints, the workspace's binaries, and every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# System packages the tests use. Installed only when missing, so a developer's machine
# is left alone; `apt-get update` runs at most once.
need=()
command -v python3 >/dev/null || need+=(python3)
# `hoist init` → `hoist deploy` of a Flask app (pip from PyPI) and of a Node app.
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v node >/dev/null || need+=(nodejs)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v rsync >/dev/null || need+=(rsync)
command -v zstd >/dev/null || need+=(zstd)
command -v git >/dev/null || need+=(git)
command -v faketime >/dev/null || need+=(faketime)
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
# The fleet tests run a real sshd per network namespace (tests/netns).
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ip >/dev/null || need+=(iproute2)
# Files hosts (tests/files_host.rs): a real Apache 2 with Phusion Passenger serving a WSGI app.
[ -x /usr/sbin/apache2 ] || need+=(apache2)
[ -e /usr/lib/apache2/modules/mod_passenger.so ] || need+=(libapache2-mod-passenger)
# PostgreSQL server and client: the backup tests start their own server.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && command -v pg_dump >/dev/null || need+=(postgresql)
# HTTPS: curl (h2 and http/1.1 checks), openssl (served certificates), and Pebble with
# pebble-challtestsrv (one Debian package) as the ACME CA of the TLS tests.
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
{ command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null; } || need+=(pebble)
# The dashboard's browser test drives Debian's chromium (Playwright never downloads one).
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "==> installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own sshd and PostgreSQL: keep the packages from starting
  # system-wide ones (the standard policy-rc.d switch; removed again afterwards).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Python packages of the dashboard tests (tests/dashboard/*.py): Playwright drives the
# browser, schemathesis fuzzes the API. Installed only when missing, so a machine that
# has them needs no network here.
if ! python3 -c 'import playwright, schemathesis' >/dev/null 2>&1; then
  echo "==> pip install playwright schemathesis"
  python3 -m pip install -q --break-system-packages playwright schemathesis 2>/dev/null \
    || python3 -m pip install -q playwright schemathesis
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Tests start the real binaries (hoist, hoist-testapp): build them first.
echo "==> cargo build (binaries)"
cargo build --workspace --bins --locked

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
