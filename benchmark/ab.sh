#!/usr/bin/env bash
# Interleaved A/B runs of one load generator mode against two server binaries,
# on a quiet machine: A, B, A, B, ... each against a fresh server process,
# pinned like benchmark/run.sh (server on core 0, generator on core 1). Prints
# every run and the median of each figure per binary, and B/A.
#
#   benchmark/ab.sh OLD_BINARY NEW_BINARY ROUNDS LOADGEN_ARGS...
#   benchmark/ab.sh /tmp/old target/release/websocket-public-chat 3 fanout --duration 10
#   benchmark/ab.sh /tmp/old target/release/websocket-public-chat 3 --spread-sources connect --connections 19000
#
# Interleaving matters on shared machines: a noisy minute then hurts both
# binaries alike instead of one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { echo "usage: benchmark/ab.sh OLD NEW ROUNDS LOADGEN_ARGS..." >&2; exit 2; }
old=$1 new=$2 rounds=$3
shift 3
cargo build --release --quiet -p loadgen
pin_server=() pin_loadgen=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  pin_server=(taskset -c 0) pin_loadgen=(taskset -c 1)
fi
runs=$(mktemp)
server=
trap '[ -z "$server" ] || kill "$server" 2>/dev/null || true; rm -f "$runs"' EXIT
for round in $(seq "$rounds"); do
  for label in A B; do
    binary=$old
    [ "$label" = B ] && binary=$new
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${pin_server[@]}" "$binary" --host 127.0.0.1 --port "$port" >/dev/null 2>&1 &
    server=$!
    for _ in $(seq 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
      sleep 0.05
    done
    result=$("${pin_loadgen[@]}" target/release/loadgen --server-pid "$server" \
      --url "ws://127.0.0.1:$port/ws" --json "$@")
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
    echo "$label $result" >>"$runs"
    echo "round $round $label done" >&2
    # Let TIME_WAIT sockets and the kernel settle between runs.
    sleep 2
  done
done
python3 - "$runs" "$old" "$new" <<'PY'
import json, statistics, sys
runs, old, new = sys.argv[1], sys.argv[2], sys.argv[3]
by = {"A": [], "B": []}
for line in open(runs):
    label, result = line.split(" ", 1)
    by[label].append(json.loads(result))
keys = [k for k, v in by["A"][0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
print(f"A = {old}\nB = {new}\n")
print(f"| figure | A runs | B runs | A median | B median | B/A |")
print(f"| --- | --- | --- | --- | --- | --- |")
for k in keys:
    a = [r[k] for r in by["A"] if k in r]
    b = [r[k] for r in by["B"] if k in r]
    if not a or not b:
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = f"{mb / ma:.3f}" if ma else "-"
    fmt = lambda xs: ", ".join(f"{x:.4g}" for x in xs)
    print(f"| {k} | {fmt(a)} | {fmt(b)} | {ma:.4g} | {mb:.4g} | {ratio} |")
PY
