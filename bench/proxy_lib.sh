# shellcheck shell=bash
# What bench/proxy_instr.sh and bench/proxy_syscalls.sh share: a native nginx upstream
# answering `return 200 "blue\n"`, nginx's proxy config in front of it, and clean-up of
# every process started (listed in `pids`) and of `$work`.

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}

nginx_conf() { # DIR BODY
  mkdir -p "$1/tmp"
  cat >"$1/nginx.conf" <<EOF
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
$2
}
EOF
}

wait_http() { # URL
  local i
  for ((i = 0; i < 600; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: nothing answers at $1" >&2
  return 1
}

# start_upstream PORT: the upstream, one worker, under $work/upstream.
start_upstream() {
  mkdir -p "$work/upstream"
  nginx_conf "$work/upstream" "  server { listen 127.0.0.1:$1; location / { return 200 \"blue\\n\"; } }"
  setsid nginx -p "$work/upstream" -c "$work/upstream/nginx.conf" -e "$work/upstream/error.log" -g 'daemon off; worker_processes 1;' >"$work/upstream.log" 2>&1 </dev/null &
  pids+=($!)
  wait_http "http://127.0.0.1:$1/"
}

# nginx_proxy_conf PORT UPSTREAM_PORT: nginx as the proxy, under $work/nginx, with a
# keep-alive pool to the upstream.
nginx_proxy_conf() {
  mkdir -p "$work/nginx"
  nginx_conf "$work/nginx" "  upstream backend { server 127.0.0.1:$2; keepalive 128; keepalive_requests 1000000; keepalive_timeout 75s; }
  server { listen 127.0.0.1:$1; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
}
