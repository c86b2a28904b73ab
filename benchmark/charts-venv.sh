#!/usr/bin/env bash
# A Python venv with matplotlib, for benchmark/charts.py. Prints its python. Idempotent.
set -euo pipefail
venv=${CHARTS_VENV:-$HOME/.cache/websocket-public-chat/charts-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check -q "matplotlib==3.10.3" >&2
fi
echo "$venv/bin/python"
