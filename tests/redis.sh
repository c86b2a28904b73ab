#!/usr/bin/env bash
# The Redis backplane (cargo feature `redis`) against a real redis-server,
# installed here from Debian if missing; the test starts and stops its own.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi
cargo test --features redis --test redis
