#!/usr/bin/env bash
# The reference servers (benchmark/peers/) cannot rot: Go and gorilla/websocket
# are installed from Debian if missing, every peer whose toolchain is present
# is built, and one shared smoke check of the protocol's core runs against
# each and ours (benchmark/peers/smoke.py, with the `websockets` client);
# then both profiles in their short form.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/gorilla/websocket ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq golang-go golang-github-gorilla-websocket-dev >/dev/null
fi
benchmark/peers/build.sh
python=$(tests/ops/venv.sh)
timeout 300 "$python" benchmark/peers/smoke.py target/peers/servers.tsv
# The profiles in their short form, so they and their charts cannot rot either
# (the full runs are on demand: benchmark/run-profile-a.sh, run-profile-b.sh).
benchmark/run-profile-a.sh --quick
benchmark/run-profile-b.sh --quick
