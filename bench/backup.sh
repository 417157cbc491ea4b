#!/usr/bin/env bash
# Backup and restore figures (issue 8), printed, never asserted: a ~1 GB SQLite database
# and a PostgreSQL database of similar size (pgbench -i -s 70), each backed up with
# `hoist backup` and restored with `hoist restore --force` through a real agent; as
# anchors in the same run, `sqlite3 .backup` and a bare `pg_dump -Fc` / `pg_restore`.
#
#   bash bench/backup.sh        (builds release; SQLITE_ROWS / PG_SCALE to change sizes)
#
# Needs: sqlite3, the postgresql server (initdb, postgres, pgbench) and root (the server
# runs as the `postgres` user). Uses about 5 GB under /tmp for a few minutes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
rows=${SQLITE_ROWS:-2200000}
scale=${PG_SCALE:-70}

(cd "$root" && cargo build --release -q -p hoist -p hoist-testapp)
target=${CARGO_TARGET_DIR:-$root/target}/release
bin=$target/hoist
app=$target/hoist-testapp
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "error: the PostgreSQL server is not installed; hint: apt-get install postgresql" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "error: \`sqlite3\` is missing; hint: apt-get install sqlite3" >&2; exit 2; }

work=$(mktemp -d /tmp/hoist-bench-backup.XXXXXX)
chmod 755 "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
proxy_port=$(free_port)
pg_port=$(free_port)
export HOIST_SOCKET="$work/agent.sock"
agent_pid=""
pg_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null || true
  for f in "$work"/root/run/*.json; do
    [ -f "$f" ] || continue
    for pid in $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["shim"]["pid"], d["process"]["pid"])' "$f" 2>/dev/null); do
      kill -9 "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    done
  done
  if [ -S "$work/root/proxy/control.sock" ]; then
    ppid=$(python3 - "$work/root/proxy/control.sock" <<'PY' 2>/dev/null || true
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b'{"version":1,"request":{"type":"ping"}}\n')
print(json.loads(s.makefile().readline())["response"]["ok"]["pid"])
PY
)
    [ -n "$ppid" ] && kill -9 "$ppid" 2>/dev/null || true
  fi
  [ -n "$pg_pid" ] && kill -INT "$pg_pid" 2>/dev/null && sleep 2 || true
  rm -rf "$work"
}
trap cleanup EXIT

secs() { python3 -c "print(f'{($2 - $1) / 1000:.2f}')"; }
rate() { python3 -c "print(f'{$1 / 1048576 / (($3 - $2) / 1000):.0f}')"; }
ms() { date +%s%3N; }
row() { printf '%-34s %8s s %8s MB/s\n' "$1" "$(secs "$2" "$3")" "$(rate "$4" "$2" "$3")"; }

echo "== postgres: initdb, start, pgbench -i -s $scale"
password=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$work/pg"
echo "$password" >"$work/pg/pw"
chown -R postgres: "$work/pg"
runuser -u postgres -- "$pgbin/initdb" -U postgres --auth=scram-sha-256 --pwfile="$work/pg/pw" -D "$work/pg/data" >/dev/null
runuser -u postgres -- "$pgbin/postgres" -D "$work/pg/data" -k "$work/pg" -p "$pg_port" \
  -c listen_addresses=127.0.0.1 -c max_wal_size=4GB >"$work/pg/log" 2>&1 &
pg_pid=$!
export PGPASSWORD=$password PGHOST=127.0.0.1 PGPORT=$pg_port PGUSER=postgres
for _ in $(seq 300); do "$pgbin/pg_isready" -q && break; sleep 0.1; done
"$pgbin/psql" -Xq -d postgres -c "CREATE DATABASE bench"
"$pgbin/pgbench" -i -q -s "$scale" bench >/dev/null 2>&1
pg_bytes=$("$pgbin/psql" -XAt -d bench -c "SELECT pg_database_size('bench')")

echo "== agent and app"
"$bin" agent --root "$work/root" --socket "$HOIST_SOCKET" --proxy "127.0.0.1:$proxy_port" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 200); do [ -S "$HOIST_SOCKET" ] && break; sleep 0.05; done
mkdir -p "$work/app"
echo bench >"$work/app/VERSION"
cat >"$work/app/hoist.toml" <<TOML
app = "bench"

[build]
include = ["VERSION"]

[secrets]
required = ["DATABASE_URL"]

[services.web]
command = "$app serve"
replicas = 1
http = { domains = ["*"], health = "/health" }

[backups.db]
sqlite = "big.db"

[backups.pg]
postgres = "DATABASE_URL"

[[hosts]]
name = "local"
roles = ["web"]
TOML
cfg="$work/app/hoist.toml"
printf 'postgres://postgres:%s@127.0.0.1:%s/bench' "$password" "$pg_port" | "$bin" secrets set DATABASE_URL -c "$cfg" 2>/dev/null
"$bin" deploy -c "$cfg" >/dev/null 2>&1

echo "== sqlite: $rows rows"
db="$work/root/data/bench/big.db"
sqlite3 "$db" "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b BLOB);
  WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $rows)
  INSERT INTO t (a, b) SELECT hex(randomblob(32)), randomblob(400) FROM s;
  CREATE INDEX t_a ON t(a); PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
sq_bytes=$(stat -c %s "$db")
sync

echo
printf 'sqlite database: %.2f GB; postgres database: %.2f GB\n' \
  "$(python3 -c "print($sq_bytes / 1e9)")" "$(python3 -c "print($pg_bytes / 1e9)")"
printf '%-34s %10s %13s\n' "" "time" "rate"

t0=$(ms); sqlite3 "$db" ".backup '$work/anchor.db'"; t1=$(ms)
row "sqlite3 .backup (anchor)" "$t0" "$t1" "$sq_bytes"
rm -f "$work/anchor.db"
t0=$(ms); "$bin" backup db -c "$cfg" 2>/dev/null; t1=$(ms)
row "hoist backup (sqlite)" "$t0" "$t1" "$sq_bytes"
t0=$(ms); "$bin" restore db --force -c "$cfg" 2>/dev/null; t1=$(ms)
row "hoist restore --force (sqlite)" "$t0" "$t1" "$sq_bytes"

t0=$(ms); "$pgbin/pg_dump" -Fc -f "$work/anchor.dump" bench; t1=$(ms)
row "pg_dump -Fc (anchor)" "$t0" "$t1" "$pg_bytes"
t0=$(ms); "$pgbin/pg_restore" --clean --if-exists --no-owner --single-transaction -d bench "$work/anchor.dump"; t1=$(ms)
row "pg_restore (anchor)" "$t0" "$t1" "$pg_bytes"
rm -f "$work/anchor.dump"
t0=$(ms); "$bin" backup pg -c "$cfg" 2>/dev/null; t1=$(ms)
row "hoist backup (postgres)" "$t0" "$t1" "$pg_bytes"
t0=$(ms); "$bin" restore pg --force -c "$cfg" 2>/dev/null; t1=$(ms)
row "hoist restore --force (postgres)" "$t0" "$t1" "$pg_bytes"

echo
echo "backup files:"
"$bin" backups -c "$cfg"
echo "(MB/s = database size / wall time; a pg dump is smaller than the database: indexes are rebuilt on restore)"
