#!/usr/bin/env bash
# Runs each fuzz target for SECONDS; prints executions and findings per target.
#   fuzz/run.sh SECONDS [TARGET...]      (targets: frame handshake protocol simulation)
# Seeds come from fuzz/corpus/<target> (committed); what the fuzzer adds goes
# to fuzz/work/<target> (not committed); a crash input lands in
# fuzz/artifacts/<target>/ and the script exits 1.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame handshake protocol simulation)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz passes nightly-only flags (sanitizers, coverage) to rustc.
export RUSTC_BOOTSTRAP=1
cargo fuzz build >/dev/null 2>&1 || cargo fuzz build
failed=0
for target in "${targets[@]}"; do
  mkdir -p "work/$target"
  log="work/$target.log"
  if cargo fuzz run "$target" "work/$target" "corpus/$target" -- \
      -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    verdict="no findings"
  else
    verdict="FINDING (see $log and artifacts/$target/)"
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  printf '%-10s %6ss  %12s executions  %-10s %s\n' "$target" "$secs" "${execs:-?}" "${cov:-}" "$verdict"
  if [ "$failed" = 1 ]; then
    grep -E 'panicked at|^ERROR|Test unit written' "$log" | head -5 || true
  fi
done
exit "$failed"
