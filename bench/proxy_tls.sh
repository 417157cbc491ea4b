#!/usr/bin/env bash
# HTTPS figures (design §6, issue 12): hoist's proxy with `--https` and a file certificate
# beside nginx with TLS, both in front of the same upstream, in the same run, ROUNDS
# alternating rounds (even rounds run hoist first). Two loads per round, each through
# both proxies:
#   keepalive  wrk over kept TLS connections (requests/s, p99, CPU per request)
#   handshake  wrk with `Connection: close`: a new TLS connection (and handshake, resumed
#              or not as wrk's OpenSSL does it, the same for both) per request
# Prints hoist÷nginx per round and geometric means. No thresholds: figures only.
#
#   cargo build --release -p hoist
#   bash bench/proxy_tls.sh [RESULTS_DIR]      (default /tmp/hoist-bench-proxy-tls)
#
# Knobs: ROUNDS (5), DURATION (5 s), WARMUP (1 s), THREADS (2), CONNS (64), PORT_BASE
# (18180), HOIST_BIN. Needs nginx, wrk, openssl, curl and python3 (the shared harness's
# install.sh installs the first two). The nginx configs follow ../shared/bench/servers.sh
# (upstream answering "blue\n", a keep-alive pool to it), with TLS added.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
results=${1:-/tmp/hoist-bench-proxy-tls}
bin=${HOIST_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/hoist}
ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-5} WARMUP=${WARMUP:-1}
THREADS=${THREADS:-2} CONNS=${CONNS:-64} PORT_BASE=${PORT_BASE:-18180}
UP_PORT=$((PORT_BASE + 1)) NGINX_PORT=$((PORT_BASE + 2))
HOIST_PORT=$((PORT_BASE + 3)) HOIST_HTTP_PORT=$((PORT_BASE + 4))

log() { printf '[tls-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for tool in nginx wrk openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` is not installed" >&2; exit 2; }
done
if [ ! -x "$bin" ]; then
  echo "error: no release binary at \`$bin\`" >&2
  echo "hint: run \`cargo build --release -p hoist\` (or set HOIST_BIN)" >&2
  exit 2
fi
for p in $UP_PORT $NGINX_PORT $HOIST_PORT $HOIST_HTTP_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "error: 127.0.0.1:$p is in use; set PORT_BASE to another range" >&2
    exit 2
  fi
done

mkdir -p "$results/raw"
rm -f "$results"/raw/*.txt "$results/records.jsonl"
work=$(mktemp -d /tmp/hoist-bench-tls.XXXXXX)
chmod 755 "$work" # nginx workers run as nobody and read their temp paths here
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    # Each was started with setsid: its process group is ours to end.
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
start_bg() { # NAME CMD... ; sets LAST_PID
  local name=$1
  shift
  setsid "$@" >"$work/$name.log" 2>&1 </dev/null &
  LAST_PID=$!
  pids+=("$LAST_PID")
  log "started $name (pid $LAST_PID)"
}
wait_url() { # URL [CURL ARGS...]
  local url=$1 i
  shift
  for ((i = 0; i < 400; i++)); do
    curl -s -f -o /dev/null -m 1 "$@" "$url" && return 0
    sleep 0.05
  done
  echo "error: $url did not answer" >&2
  return 1
}
tree_pids() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { pid[NR] = $1; ppid[NR] = $2 }
    END {
      want[root] = 1; changed = 1
      while (changed) {
        changed = 0
        for (i = 1; i <= NR; i++)
          if (!(pid[i] in want) && (ppid[i] in want)) { want[pid[i]] = 1; changed = 1 }
      }
      for (p in want) print p
    }'
}
cpu_ticks() { # PID... : utime+stime summed
  local p sum=0 f
  local -a a
  for p in "$@"; do
    f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    read -ra a <<<"$f"
    sum=$((sum + ${a[11]:-0} + ${a[12]:-0}))
  done
  echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)

# One certificate for both: ECDSA P-256 for `localhost`.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/key.pem" # read by nginx's workers (nobody); a scratch key

nginx_conf() { # DIR WORKERS SERVER_BLOCK...
  local dir=$1 workers=$2
  shift 2
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
$*
}
EOF
}
start_nginx() { # NAME DIR
  nginx -t -q -p "$2" -c "$2/nginx.conf" -e "$2/error.log"
  start_bg "$1" nginx -p "$2" -c "$2/nginx.conf" -e "$2/error.log" -g 'daemon off;'
}

nginx_conf "$work/upstream" auto \
  "server { listen 127.0.0.1:$UP_PORT; location / { return 200 \"blue\\n\"; } }"
start_nginx upstream "$work/upstream"
wait_url "http://127.0.0.1:$UP_PORT/"

# nginx: TLS 1.2/1.3, a shared session cache and tickets (its defaults plus the cache),
# HTTP/2 offered like hoist's, the same keep-alive pool to the upstream as the plain bench.
nginx_conf "$work/nginx" auto "
  upstream backend {
    server 127.0.0.1:$UP_PORT;
    keepalive 128;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
start_nginx nginx "$work/nginx"
NGINX_PID=$LAST_PID

start_bg hoist "$bin" proxy --listen "127.0.0.1:$HOIST_HTTP_PORT" --https "127.0.0.1:$HOIST_PORT" \
  --upstream "127.0.0.1:$UP_PORT" --control "$work/hoist.sock" --state "$work/hoist-routes.json"
HOIST_PID=$LAST_PID
wait_url "http://127.0.0.1:$HOIST_HTTP_PORT/"
# The certificate goes in as the agent hands over a `file` certificate: over the control socket.
python3 - "$work/hoist.sock" "$work/cert.pem" "$work/key.pem" <<'PY'
import json, socket, sys
sock, cert, key = sys.argv[1:4]
line = json.dumps({"version": 1, "request": {"type": "tls", "request": {"type": "set_cert", "cert": {
    "domains": ["localhost"], "cert_pem": open(cert).read(), "key_pem": open(key).read(),
    "source": "file"}}}}) + "\n"
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
s.sendall(line.encode())
answer = s.makefile().readline()
if '"ok"' not in answer:
    sys.exit(f"the proxy refused the certificate: {answer}")
PY
wait_url "https://localhost:$NGINX_PORT/" --cacert "$work/cert.pem"
wait_url "https://localhost:$HOIST_PORT/" --cacert "$work/cert.pem"
for port in $NGINX_PORT $HOIST_PORT; do
  body=$(curl -s --cacert "$work/cert.pem" "https://localhost:$port/")
  [ "$body" = blue ] || { echo "error: port $port answered \`$body\`" >&2; exit 1; }
done

lua="$work/report.lua"
cat >"$lua" <<'LUA'
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%.3f,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
LUA

measure() { # ROUND NAME PORT ROOT_PID MODE
  local round=$1 name=$2 port=$3 pid=$4 mode=$5 label="r$1-$2-$5" c0 c1 json
  local -a hdr=() procs=()
  [ "$mode" = handshake ] && hdr=(-H 'Connection: close')
  local url="https://localhost:$port/"
  [ "$WARMUP" -gt 0 ] && wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "${hdr[@]}" "$url" >/dev/null 2>&1
  mapfile -t procs < <(tree_pids "$pid")
  c0=$(cpu_ticks "${procs[@]}")
  timeout -s INT -k 5 $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
    -s "$lua" "${hdr[@]}" "$url" >"$results/raw/$label.txt" 2>&1 || true
  c1=$(cpu_ticks "${procs[@]}")
  json=$(grep '^WRKJSON ' "$results/raw/$label.txt" | tail -n 1 | cut -d' ' -f2-)
  [ -n "$json" ] || json=null
  printf '{"round":%d,"name":"%s","mode":"%s","cpu_s":%s,"wrk":%s}\n' "$round" "$name" "$mode" \
    "$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/t}')" "$json" \
    >>"$results/records.jsonl"
  log "  $name $mode: $(tail -n 1 "$results/records.jsonl")"
}

log "results -> $results ; rounds $ROUNDS, ${DURATION}s each, wrk -t$THREADS -c$CONNS"
for ((round = 1; round <= ROUNDS; round++)); do
  order=(nginx hoist)
  ((round % 2 == 0)) && order=(hoist nginx)
  log "round $round: ${order[*]}"
  for mode in keepalive handshake; do
    for name in "${order[@]}"; do
      if [ "$name" = nginx ]; then
        measure "$round" nginx "$NGINX_PORT" "$NGINX_PID" "$mode"
      else
        measure "$round" hoist "$HOIST_PORT" "$HOIST_PID" "$mode"
      fi
    done
  done
done

python3 - "$results/records.jsonl" <<'PY'
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def geo(xs):
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")
for mode in ("keepalive", "handshake"):
    print(f"\n== HTTPS {mode} (hoist ÷ nginx; rps > 1 is better, p99 and CPU/req < 1 are better)")
    print("round   hoist rps   nginx rps  rps ratio  hoist p99 ms  nginx p99 ms  p99 ratio  hoist µs/req  nginx µs/req  cpu ratio  errors h/n")
    ratios = {"rps": [], "p99": [], "cpu": []}
    rounds = sorted({r["round"] for r in recs})
    for rnd in rounds:
        row = {r["name"]: r for r in recs if r["round"] == rnd and r["mode"] == mode}
        h, n = row.get("hoist"), row.get("nginx")
        if not h or not n or not h["wrk"] or not n["wrk"]:
            print(f"{rnd:>5}  (missing)")
            continue
        def fig(r):
            w = r["wrk"]
            rps = w["requests"] / w["duration_s"]
            return rps, w["p99_us"] / 1000, r["cpu_s"] * 1e6 / max(w["requests"], 1), w["errors"] + w["non2xx"]
        hr, hp, hc, he = fig(h)
        nr, np_, nc, ne = fig(n)
        rr, pr, cr = hr / nr, hp / np_ if np_ else float("nan"), hc / nc if nc else float("nan")
        ratios["rps"].append(rr); ratios["p99"].append(pr); ratios["cpu"].append(cr)
        print(f"{rnd:>5}  {hr:>10.0f}  {nr:>10.0f}  {rr:>9.3f}  {hp:>12.2f}  {np_:>12.2f}  {pr:>9.3f}  {hc:>12.1f}  {nc:>12.1f}  {cr:>9.3f}  {he}/{ne}")
    if ratios["rps"]:
        print(f"geometric mean over {len(ratios['rps'])} rounds: rps {geo(ratios['rps']):.3f}, "
              f"p99 {geo(ratios['p99']):.3f}, CPU/request {geo(ratios['cpu']):.3f}")
PY
