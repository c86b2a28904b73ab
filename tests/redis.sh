#!/usr/bin/env bash
# The Redis backplane (cargo feature `redis`) against a real redis-server
# (with TLS; openssl makes the test's certificates), installed here from
# Debian if missing; the tests start and stop their own.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v openssl >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server openssl >/dev/null
fi
cargo test --features redis --test redis

# The loadgen's reconnect scenario across two instances: people drop and
# rejoin (round-robin, so mostly on the other instance) with since/epoch while
# others chat on both; it exits 1 if any chat was lost or duplicated.
cargo build --release --quiet -p websocket-public-chat -p loadgen --features websocket-public-chat/redis --target-dir target/redis
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rport=$(free_port)
redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
urls=()
ports=()
for _ in 1 2; do
  port=$(free_port)
  target/redis/release/websocket-public-chat --host 127.0.0.1 --port "$port" \
    --redis "redis://127.0.0.1:$rport/" >"$work/instance-$port.log" 2>&1 &
  pids+=($!)
  urls+=(--url "ws://127.0.0.1:$port/ws")
  ports+=("$port")
done
benchmark/wait-linked.py "${ports[@]}"
echo "tests/redis.sh: loadgen reconnect across two instances" >&2
timeout 60 target/redis/release/loadgen "${urls[@]}" reconnect --duration 3 --seed 1
