# Sourced by the test scripts: start_release_server FLAGS... builds the release
# binary once, starts it on 127.0.0.1 with a free port, waits for its
# "listening on" line and sets $server (its PID) and $addr (host:port). The
# caller stops it (kill "$server"); the EXIT trap set here stops it otherwise.
server=
release_server_log=$(mktemp)
trap 'kill "$server" 2>/dev/null || true; rm -f "$release_server_log"' EXIT

start_release_server() {
  cargo build --release --quiet -p websocket-public-chat
  ./target/release/websocket-public-chat --host 127.0.0.1 --port 0 "$@" >"$release_server_log" 2>&1 &
  server=$!
  addr=
  for _ in $(seq 100); do
    addr=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$release_server_log")
    [ -n "$addr" ] && return 0
    sleep 0.05
  done
  echo "the server did not start:" >&2
  cat "$release_server_log" >&2
  exit 1
}
