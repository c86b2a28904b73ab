#!/usr/bin/env bash
# The project's test command: unit tests of the sans-IO core, then the
# integration tests, which start the real server binary on loopback.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --all-targets
