#!/usr/bin/env bash
# Operations, each with the real thing: /metrics read by prometheus_client's
# parser (a venv made here), and deploy/nginx.conf with Debian's nginx in
# front of two instances and Redis (tests/ops/nginx.sh; after
# tests/browser.sh and tests/redis.sh, which install Chromium and redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p websocket-public-chat
python=$(tests/ops/venv.sh)
timeout 60 "$python" tests/ops/metrics_check.py target/release/websocket-public-chat
tests/ops/nginx.sh
