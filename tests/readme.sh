#!/usr/bin/env bash
# The README's "run the server" command, exactly as written there (so it can
# never break silently again), with a free port in place of 8080, on
# loopback, and a short --duration: it must build, listen, serve the page
# and /health, and exit 0 with its statistics block.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=$(awk '/^```sh/{b=1;next} /^```/{b=0} b && /^cargo run/ {print; exit}' README.md)
[ -n "$cmd" ] || { echo "tests/readme.sh: no cargo run command in README.md" >&2; exit 1; }
case "$cmd" in
  *"--port 8080"*) ;;
  *) echo "tests/readme.sh: the README's command has no --port 8080 to replace: $cmd" >&2; exit 1 ;;
esac
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run="${cmd/--port 8080/--port $port} --host 127.0.0.1 --duration 5"
echo "tests/readme.sh: $run" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
bash -c "$run" >"$log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  grep -q '^listening on ' "$log" && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
grep -q "^listening on 127.0.0.1:$port " "$log" || { cat "$log" >&2; echo "tests/readme.sh: it did not start" >&2; exit 1; }
python3 - "$port" <<'PY'
import sys, urllib.request
port = sys.argv[1]
health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
assert health == b"ok\n", health
page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
assert b"<html" in page.lower(), page[:100]
PY
wait "$pid"
grep -q '^--- Statistics ---' "$log" || { cat "$log" >&2; exit 1; }
echo "tests/readme.sh: the README's server command starts, serves and stops cleanly"
