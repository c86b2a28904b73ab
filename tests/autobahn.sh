#!/usr/bin/env bash
# RFC 6455 conformance: the Autobahn|Testsuite fuzzing client (../shared/tools/autobahn)
# against the release binary in --echo mode. Fails if any case FAILED, if a
# closing behaviour is off, or if no case ran.
#   tests/autobahn.sh [CASES]    default: every case but 12.* and 13.* (permessage-deflate,
#                                which the server does not offer); '*' runs all 517.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${AUTOBAHN_TOOLS:-../shared/tools/autobahn}
venv=${AUTOBAHN_VENV:-$HOME/.cache/autobahn/venv}
[ -x "$venv/bin/wstest" ] || "$tools/setup.sh" "$venv" >/dev/null
cargo build --release --quiet
out=$(mktemp -d)
# 9.* sends messages of up to 16 MiB.
./target/release/websocket-public-chat --host 127.0.0.1 --port 0 --echo --max-message-size 16777216 \
  >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
addr=
for _ in $(seq 100); do
  addr=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$out/server.log")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "autobahn.sh: the server did not start" >&2; cat "$out/server.log" >&2; exit 1; }
AUTOBAHN_VENV=$venv "$tools/run.sh" "ws://$addr/ws" "$out/report" ${1:+"$1"} | tee "$out/summary"
ok=$(awk '$1 == "OK" {print $2}' "$out/summary")
failed=$(awk '$1 == "FAILED" {print $2}' "$out/summary")
if [ "${ok:-0}" = 0 ] || [ "${failed:-1}" != 0 ] || grep -q '^closing behavior not OK' "$out/summary"; then
  echo "autobahn.sh: conformance failures; report in $out/report/index.html" >&2
  exit 1
fi
echo "autobahn.sh: conformant (report in $out/report/index.html)"
