#!/usr/bin/env bash
# Profile A (see benchmark/profiles.py): ours and every reference server
# of benchmark/peers/ whose toolchain is present, side by side; writes
# benchmark/results/DATE-profile-a.json, .md and the SVG charts beside them.
#   benchmark/run-profile-a.sh [--quick] [--servers NAME,...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p websocket-public-chat -p loadgen
benchmark/peers/build.sh 2>/dev/null
base=$(python3 benchmark/profiles.py a "$@")
"$(benchmark/charts-venv.sh)" benchmark/charts.py "$base.json"
