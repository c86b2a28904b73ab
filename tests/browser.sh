#!/usr/bin/env bash
# Browser test: the page at GET / in headless Chromium (Debian's `chromium`),
# driven by playwright-core from npm; both are installed here if missing.
# The screenshot it takes is left in target/browser-artifacts/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && npm ci --silent --no-audit --no-fund)
cargo build --release --quiet -p websocket-public-chat
timeout 120 node tests/browser/chat.test.mjs target/release/websocket-public-chat target/browser-artifacts
