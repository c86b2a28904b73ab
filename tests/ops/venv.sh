#!/usr/bin/env bash
# A Python venv with the independent clients the operations tests use:
# `websockets` (a WebSocket client that is not ours) and `prometheus_client`
# (its text-format parser). Prints the venv's python. Idempotent.
set -euo pipefail
venv=${OPS_VENV:-$HOME/.cache/websocket-public-chat/ops-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import websockets, prometheus_client' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check -q "websockets==15.0.1" "prometheus_client==0.22.1" >&2
fi
echo "$venv/bin/python"
