#!/usr/bin/env bash
# The project's test command. Installs what it needs (cargo-fuzz, the Autobahn
# suite's Python venv) on first use.
#   1. unit tests of the sans-IO core and integration tests against the real binary;
#   2. RFC 6455 conformance: the Autobahn suite against the release binary (tests/autobahn.sh);
#   3. each fuzz target for FUZZ_SECONDS (default 20) from the committed seed corpus.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --all-targets
tests/autobahn.sh
fuzz/run.sh "${FUZZ_SECONDS:-20}"
