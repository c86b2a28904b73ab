#!/usr/bin/env bash
# deploy/nginx.conf for real: Debian's nginx (installed here if missing) on a
# free loopback port with that file (ports and paths substituted), in front
# of two instances sharing the room through a redis-server of its own.
# Clients through nginx chat across both instances; the per-address cap
# counts each client behind nginx; the page in headless Chromium survives a
# restart of every instance behind nginx.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx >/dev/null
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)
python=$(tests/ops/venv.sh)
cargo build --release --quiet -p websocket-public-chat --features redis --target-dir target/redis
server=target/redis/release/websocket-public-chat

work=$(mktemp -d)
pids=()
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  for f in "$work"/instance-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

rport=$(free_port)
redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
ports=("$(free_port)" "$(free_port)")

# Starts (or restarts) the instance on port $1, its PID in a file for restart.sh.
cat >"$work/instance.sh" <<EOF
#!/usr/bin/env bash
"$PWD/$server" --host 127.0.0.1 --port "\$1" --redis "redis://127.0.0.1:$rport/" \\
  --trusted-proxy 127.0.0.1 --max-conns-per-ip 1 >>"$work/instance-\$1.log" 2>&1 &
echo \$! >"$work/instance-\$1.pid"
EOF
cat >"$work/restart.sh" <<EOF
#!/usr/bin/env bash
# Every instance stops (SIGTERM: close 1001 to its clients) and starts again.
set -e
for port in ${ports[*]}; do
  pid=\$(cat "$work/instance-\$port.pid")
  kill "\$pid"
  while kill -0 "\$pid" 2>/dev/null; do sleep 0.05; done
  bash "$work/instance.sh" "\$port"
done
"$PWD/benchmark/wait-linked.py" ${ports[*]}
EOF
for port in "${ports[@]}"; do bash "$work/instance.sh" "$port"; done
benchmark/wait-linked.py "${ports[@]}"

nport=$(free_port)
mkdir -p "$work/tmp"
sed -e "s|^pid .*|pid $work/nginx.pid;|" \
    -e "s|^error_log .*|error_log $work/error.log;|" \
    -e "s|access_log .*|access_log $work/access.log;|" \
    -e "s|^http {|http {\n    client_body_temp_path $work/tmp/body; proxy_temp_path $work/tmp/proxy;\n    fastcgi_temp_path $work/tmp/fastcgi; uwsgi_temp_path $work/tmp/uwsgi; scgi_temp_path $work/tmp/scgi;|" \
    -e "s|listen 8080;|listen 127.0.0.1:$nport;|" \
    -e "s|server 127.0.0.1:8081 |server 127.0.0.1:${ports[0]} |" \
    -e "s|server 127.0.0.1:8082 |server 127.0.0.1:${ports[1]} |" \
    deploy/nginx.conf >"$work/nginx.conf"
grep -q "listen 127.0.0.1:$nport;" "$work/nginx.conf" && grep -q "127.0.0.1:${ports[1]} " "$work/nginx.conf" \
  || { echo "tests/ops/nginx.sh: deploy/nginx.conf no longer has the lines this test substitutes" >&2; exit 1; }
"$nginx" -p "$work" -c "$work/nginx.conf" -g "daemon on;"
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$nport") 2>/dev/null && break
  sleep 0.05
done

timeout 60 "$python" tests/ops/nginx_check.py "$nport" "${ports[@]}"
if command -v chromium >/dev/null && [ -d tests/browser/node_modules ]; then
  timeout 120 node tests/browser/nginx.test.mjs "http://127.0.0.1:$nport/" "$work/restart.sh"
else
  echo "tests/ops/nginx.sh: no chromium or playwright-core (tests/browser.sh installs them): page step skipped" >&2
  exit 1
fi
