#!/usr/bin/env bash
# The project's test command. Installs what it needs on first use (cargo-fuzz,
# the Autobahn suite's and k6's Python venvs, Chromium and playwright-core,
# redis-server, nginx, a venv with websockets and prometheus_client, Go with
# gorilla/websocket for the reference servers).
#   0. the README's "run the server" command, as written (tests/readme.sh);
#   1. unit tests of the sans-IO core and the load generator, and integration
#      tests against the real binary (cargo test); then the engine under
#      deterministic simulation, 4,000 seeds in a release build (tests/sim);
#   2. RFC 6455 conformance: the Autobahn suite against the release binary
#      (its report is left in target/autobahn/);
#   3. k6 smoke: steady chat, and clean 1001 closes at the end of --duration;
#   4. the browser page in headless Chromium (screenshot in target/browser-artifacts/),
#      and the Redis backplane across three instances (feature `redis`, redis-server);
#      operations: /metrics read by prometheus_client's parser, and
#      deploy/nginx.conf with the real nginx in front of two instances;
#   5. the reference servers of benchmark/peers/ built and smoke-checked
#      (Go and gorilla/websocket from Debian), and the benchmark runner in
#      --quick mode (figures are reported, not asserted);
#   6. each fuzz target for FUZZ_SECONDS (default 20) from the committed seeds.
# Temporary files go under target/tmp/ (emptied at each run), not /tmp.
set -euo pipefail
cd "$(dirname "$0")"
export TMPDIR="$PWD/target/tmp/test-run"
rm -rf "$TMPDIR"
mkdir -p "$TMPDIR"
tests/readme.sh
cargo test --workspace --all-targets
cargo test --release -p chat-sim
tests/autobahn.sh
tests/k6-smoke.sh
tests/browser.sh
tests/redis.sh
tests/ops.sh
tests/peers.sh
benchmark/run.sh --quick
fuzz/run.sh "${FUZZ_SECONDS:-20}"
