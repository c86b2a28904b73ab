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
