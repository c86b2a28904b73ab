#!/usr/bin/env bash
# RFC 6455 conformance: the Autobahn|Testsuite fuzzing client against the
# release binary in --echo mode. The suite is Python 2 code; tests/autobahn/
# carries what makes it run on Python 3 (setup.sh installs it from PyPI into
# a venv and applies py3.patch; run.sh runs it and sums up the verdicts). Fails if any case FAILED, if a
# closing behaviour is off, or if no case ran.
#   tests/autobahn.sh [CASES]    default: every case but 12.* and 13.* (permessage-deflate,
#                                which the server does not offer); '*' runs all 517.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${AUTOBAHN_TOOLS:-tests/autobahn}
venv=${AUTOBAHN_VENV:-$HOME/.cache/autobahn/venv}
[ -x "$venv/bin/wstest" ] || "$tools/setup.sh" "$venv" >/dev/null
# The report is kept (under target/, not committed) for a person to read.
out=target/autobahn
rm -rf "$out"
mkdir -p "$out"
. tests/release-server.sh
# 9.* sends messages of up to 16 MiB.
start_release_server --echo --max-message-size 16777216
AUTOBAHN_VENV=$venv "$tools/run.sh" "ws://$addr/ws" "$out/report" ${1:+"$1"} | tee "$out/summary"
ok=$(awk '$1 == "OK" {print $2}' "$out/summary")
failed=$(awk '$1 == "FAILED" {print $2}' "$out/summary")
if [ "${ok:-0}" = 0 ] || [ "${failed:-1}" != 0 ] || grep -q '^closing behavior not OK' "$out/summary"; then
  echo "autobahn.sh: conformance failures; report in $out/report/index.html" >&2
  exit 1
fi
echo "autobahn.sh: conformant (report in $out/report/index.html)"
