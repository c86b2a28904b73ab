#!/usr/bin/env bash
# Benchmarks the server, and optionally other servers speaking the same
# protocol, with our load generator (and k6), and writes
# benchmark/results/<date>.md and .json with every figure, the stripped binary
# size and the machine.
#
#   benchmark/run.sh [--quick] [--compare 'CMD with {port}']...
#
# --quick: a short pass of each scenario (well under a minute; CI runs it).
# --compare: another server, started as CMD with {port} replaced by a free
#   port (e.g. --compare 'node server.js --port {port}'); it must serve
#   ws://127.0.0.1:{port}/ws. Each scenario gets a fresh server process.
# With two or more cores, servers run on core 0 and the generator on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
compares=()
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --compare) compares+=("$2"); shift ;;
    *) echo "usage: benchmark/run.sh [--quick] [--compare 'CMD with {port}']..." >&2; exit 2 ;;
  esac
  shift
done

cargo build --release --quiet -p websocket-public-chat -p loadgen
server_bin=target/release/websocket-public-chat
loadgen=target/release/loadgen
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  pin_server=(taskset -c 0)
  pin_loadgen=(taskset -c 1)
else
  pin_server=()
  pin_loadgen=()
fi
work=$(mktemp -d)
lines=$work/results.jsonl
: >"$lines"
server_pid=

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_server() { # $1: command with {port}
  local port cmd
  port=$(free_port)
  cmd=${1//\{port\}/$port}
  "${pin_server[@]}" bash -c "exec $cmd" >"$work/server.log" 2>&1 &
  server_pid=$!
  url="ws://127.0.0.1:$port/ws"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "run.sh: the server did not start: $cmd" >&2
  cat "$work/server.log" >&2
  exit 1
}

cluster_pids=()
stop_server() {
  kill "$server_pid" "${cluster_pids[@]}" 2>/dev/null || true
  wait "$server_pid" "${cluster_pids[@]}" 2>/dev/null || true
  server_pid=
  cluster_pids=()
}
trap 'stop_server; rm -rf "$work"' EXIT

record() { # $1: server label, $2: scenario label, stdin: one JSON object
  python3 -c 'import json, sys; r = json.load(sys.stdin); r["server"] = sys.argv[1]; r["scenario"] = sys.argv[2]; print(json.dumps(r))' "$1" "$2" >>"$lines"
}

loadgen_run() { # $1: server label, $2: scenario label, rest: loadgen arguments
  local label=$1 scenario=$2
  shift 2
  echo "== $label: $scenario" >&2
  "${pin_loadgen[@]}" "$loadgen" --url "$url" --server-pid "$server_pid" --json "$@" | tee "$work/last.json" | record "$label" "$scenario"
}

k6_run() { # $1: server label, $2: script, rest: VAR=value settings
  local label=$1 script=$2 k6
  shift 2
  k6=$(k6/install.sh)
  echo "== $label: k6 $script $*" >&2
  env WS_URL="$url" "$@" "${pin_loadgen[@]}" "$k6" run --quiet --summary-export "$work/k6.json" "k6/$script" >"$work/k6.log" 2>&1 || true
  python3 - "$work/k6.json" <<'PY' | record "$label" "k6 ${script%.js}"
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
get = lambda name, key: m.get(name, {}).get(key, 0)
print(json.dumps({
    "mode": "k6",
    "ws_sessions": get("ws_sessions", "count"),
    "ws_errors": get("ws_errors", "count"),
    "checks_passed_percent": 100 * get("checks", "value"),
    "chats_sent": get("chats_sent", "count"),
    "chats_received": get("chats_received", "count"),
    "latency_p50_ms": get("chat_latency", "med"),
    "latency_p95_ms": get("chat_latency", "p(95)"),
    "latency_max_ms": get("chat_latency", "max"),
    "connecting_p95_ms": get("ws_connecting", "p(95)"),
}))
PY
}

suite() { # $1: label, $2: command with {port}
  local label=$1 cmd=$2
  if [ "$quick" = 1 ]; then
    start_server "$cmd"; loadgen_run "$label" "fanout 1000 × 100 senders × 9/s" fanout --duration 3; stop_server
    start_server "$cmd"; loadgen_run "$label" "connect 2000 idle" connect --connections 2000; stop_server
    start_server "$cmd"; loadgen_run "$label" "churn 200 loops" churn --duration 3; stop_server
start_server "$cmd"; loadgen_run "$label" "steady (×0.05)" scenario steady --scale 0.05; stop_server
    start_server "$cmd"; k6_run "$label" steady.js VUS=20 HOLD=3; stop_server
    return
  fi
  start_server "$cmd"; loadgen_run "$label" "fanout 1000 × 100 senders × 9/s" fanout --duration 10; stop_server
  # The ceiling: more senders (each stays under the 10 chats/s rate limit) until p99
  # passes 50 ms or deliveries are lost.
  for senders in 150 200 300 400 600; do
    start_server "$cmd"
    loadgen_run "$label" "fanout 1000 × $senders senders × 9/s" fanout --senders "$senders" --duration 10
    stop_server
    if python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if r["latency_p99_ms"] > 50 or r["delivery_ratio"] < 0.999 else 1)' "$work/last.json"; then
      break
    fi
  done
  start_server "$cmd"; loadgen_run "$label" "connect 19000 idle" --spread-sources connect --connections 19000; stop_server
  start_server "$cmd"; loadgen_run "$label" "churn 200 loops" churn --duration 10; stop_server
for name in steady burst churn; do
    start_server "$cmd"; loadgen_run "$label" "$name" scenario "$name"; stop_server
  done
  start_server "$cmd"; k6_run "$label" steady.js; stop_server
  start_server "$cmd"; k6_run "$label" burst.js; stop_server
  start_server "$cmd"; k6_run "$label" churn.js; stop_server
}

# Scale-out: two instances sharing the room through Redis (built with
# `--features redis` in its own target dir, so the default binary above is
# untouched), every other connection on each. Redis orders the room: every
# chat makes a round trip through it before any instance relays it. The
# servers' CPU figure is both instances plus Redis, all on the servers' core.
start_cluster() {
  local rport port
  rport=$(free_port)
  "${pin_server[@]}" redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no >"$work/redis.log" 2>&1 &
  cluster_pids+=($!)
  cluster_urls=()
  cluster_ports=()
  for _ in 1 2; do
    port=$(free_port)
    "${pin_server[@]}" target/redis/release/websocket-public-chat --host 127.0.0.1 --port "$port" \
      --redis "redis://127.0.0.1:$rport/" >"$work/instance-$port.log" 2>&1 &
    cluster_pids+=($!)
    cluster_urls+=(--url "ws://127.0.0.1:$port/ws")
    cluster_ports+=("$port")
  done
  # Both instances' backplane up before the load starts.
  benchmark/wait-linked.py "${cluster_ports[@]}"
}

cluster_run() { # $1: scenario label, rest: loadgen arguments
  local label="websocket-public-chat ×2 + Redis" scenario=$1 pids=() pid
  shift
  for pid in "${cluster_pids[@]}"; do pids+=(--server-pid "$pid"); done
  echo "== $label: $scenario" >&2
  "${pin_loadgen[@]}" "$loadgen" "${cluster_urls[@]}" "${pids[@]}" --json "$@" | tee "$work/last.json" | record "$label" "$scenario"
}

cluster() {
  if ! command -v redis-server >/dev/null; then
    echo "run.sh: no redis-server (tests/redis.sh installs it): cluster scenario skipped" >&2
    return
  fi
  cargo build --release --quiet -p websocket-public-chat --features redis --target-dir target/redis
  local secs=10
  [ "$quick" = 1 ] && secs=3
  start_cluster; cluster_run "cluster fanout 1000 × 100 senders × 9/s" fanout --duration "$secs"; stop_server
  start_cluster; cluster_run "reconnect 100 people, 10 senders × 9/s" reconnect --duration "$secs" --seed 1; stop_server
  start_cluster; cluster_run "connect 2000, each recovers 100" connect --connections 2000 --fill 100 --since-back 100; stop_server
  start_cluster; cluster_run "200 recoveries of 100, one at a time" connect --connections 200 --concurrency 1 --fill 100 --since-back 100; stop_server
}

# History and recovery (ours only: the compared servers have none). People
# drop and rejoin with since/epoch while others chat; the generator exits 1
# if any chat within the window was lost or duplicated. Then what a join
# asking for 100 chats costs beside a plain one, with the ring full.
recovery() {
  local secs=10
  [ "$quick" = 1 ] && secs=3
  start_server "$server_bin --host 127.0.0.1 --port {port}"
  loadgen_run websocket-public-chat "reconnect 100 people, 10 senders × 9/s" reconnect --duration "$secs" --seed 1
  stop_server
  start_server "$server_bin --host 127.0.0.1 --port {port}"
  loadgen_run websocket-public-chat "connect 2000, ring of 100" connect --connections 2000 --fill 100
  stop_server
  start_server "$server_bin --host 127.0.0.1 --port {port}"
  loadgen_run websocket-public-chat "connect 2000 with history 100" connect --connections 2000 --fill 100 --history 100
  stop_server
  start_server "$server_bin --host 127.0.0.1 --port {port}"
  loadgen_run websocket-public-chat "connect 2000, each recovers 100" connect --connections 2000 --fill 100 --since-back 100
  stop_server
  start_server "$server_bin --host 127.0.0.1 --port {port}"
  loadgen_run websocket-public-chat "200 recoveries of 100, one at a time" connect --connections 200 --concurrency 1 --fill 100 --since-back 100
  stop_server
  [ "$quick" = 1 ] && return
  start_server "$server_bin --host 127.0.0.1 --port {port}"
  loadgen_run websocket-public-chat "ring of 100 × 10 KB chats" connect --connections 1 --fill 100 --fill-size 10000
  stop_server
}

# A deploy under load: people on an instance that gets SIGTERM come back
# with the page's backoff and recover what they missed. Single: the same
# instance again, keeping the room in --history-file. Cluster: the people
# move to the other instance (Redis keeps the room). The generator starts
# and stops these servers itself; it exits 1 if a chat was lost or
# duplicated, or not everyone came back.
restart_run() { # $1: server label, $2: scenario label, rest: loadgen arguments
  local label=$1 scenario=$2
  shift 2
  echo "== $label: $scenario" >&2
  "${pin_loadgen[@]}" "$loadgen" --json "$@" | tee "$work/last.json" | record "$label" "$scenario"
}

restarts() {
  local people=10000 secs=3 port a b rport
  [ "$quick" = 1 ] && people=300 secs=1
  port=$(free_port)
  restart_run websocket-public-chat "restart: $people people, --history-file" \
    --url "ws://127.0.0.1:$port/ws" restart --people "$people" --chat "$secs" --seed 1 \
    --server "${pin_server[*]} $server_bin --host 127.0.0.1 --port $port --history-file $work/history.json"
  [ -x target/redis/release/websocket-public-chat ] || return 0
  rport=$(free_port)
  "${pin_server[@]}" redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no >"$work/redis.log" 2>&1 &
  cluster_pids+=($!)
  a=$(free_port)
  b=$(free_port)
  restart_run "websocket-public-chat ×2 + Redis" "restart: $people people move to the other instance" \
    --url "ws://127.0.0.1:$a/ws" --url "ws://127.0.0.1:$b/ws" restart --people "$people" --chat "$secs" --seed 1 \
    --server "${pin_server[*]} target/redis/release/websocket-public-chat --host 127.0.0.1 --port $a --redis redis://127.0.0.1:$rport/" \
    --server "${pin_server[*]} target/redis/release/websocket-public-chat --host 127.0.0.1 --port $b --redis redis://127.0.0.1:$rport/"
  stop_server
}

suite websocket-public-chat "$server_bin --host 127.0.0.1 --port {port}"
recovery
cluster
restarts
for cmd in "${compares[@]}"; do
  suite "$(basename "${cmd%% *}")" "$cmd"
done

stamp=$(date -u +%Y-%m-%dT%H-%M-%SZ)
[ "$quick" = 1 ] && stamp="$stamp-quick"
mkdir -p benchmark/results
python3 - "$lines" "benchmark/results/$stamp" "$server_bin" "$quick" <<'PY'
import json, os, platform, subprocess, sys
lines, base, binary, quick = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
results = [json.loads(l) for l in open(lines)]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
run = {
    "date": os.path.basename(base),
    "quick": quick,
    "machine": {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release()},
    "binary_size_bytes": os.path.getsize(binary),
    "command": "benchmark/run.sh" + (" --quick" if quick else ""),
    "results": results,
}
json.dump(run, open(base + ".json", "w"), indent=1)
columns = {
    "fanout": ["deliveries_per_sec", "delivery_ratio", "latency_p50_ms", "latency_p99_ms", "latency_p99_9_ms",
               "latency_max_ms", "server_cpu_ms_per_1000_deliveries", "server_cpu_percent", "loadgen_cpu_percent"],
    "connect": ["connections", "handshakes_per_sec", "handshake_p99_ms", "server_bytes_per_connection",
                "server_cpu_us_per_handshake", "join_p50_ms", "join_p99_ms", "failed", "server_rss_fill_kib"],
    "churn": ["cycles_per_sec", "errors", "unclean_closes", "server_cpu_us_per_cycle", "loadgen_cpu_percent"],
    "reconnect": ["chats_sent", "drops", "recoveries", "recoveries_incomplete", "chats_received", "lost", "duplicated",
                  "server_cpu_us_per_chat", "loadgen_cpu_percent"],
    "restart": ["people", "chats_sent", "down_s", "all_back_s", "all_caught_up_s", "recoveries", "recoveries_incomplete",
                "lost", "duplicated", "connects_refused", "handshakes_failed", "storm_server_cpu_s",
                "storm_server_cpu_us_per_rejoin"],
"scenario": ["sessions", "connection_success_percent", "errors", "chats_sent", "deliveries_per_sec",
                 "drop_rate_percent", "latency_p50_ms", "latency_p99_ms", "server_cpu_percent"],
    "k6": ["ws_sessions", "ws_errors", "checks_passed_percent", "chats_received", "latency_p50_ms", "latency_p95_ms"],
}
fmt = lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 100 else (f"{v:.3f}" if isinstance(v, float) else str(v))
out = [f"# Benchmark {run['date']}", "",
       f"`{run['command']}` on {run['machine']['nproc']} cores ({cpu}), kernel {run['machine']['kernel']}; "
       f"server and generator pinned to separate cores. Stripped server binary: {run['binary_size_bytes']:,} bytes.", ""]
for mode, cols in columns.items():
    rows = [r for r in results if r.get("mode") == mode]
    if not rows:
        continue
    out += [f"## {mode}", "", "| server | scenario | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    out += ["| " + " | ".join([r["server"], r["scenario"]] + [fmt(r.get(c, "")) for c in cols]) + " |" for r in rows]
    notes = [f"- {r['server']}, {r['scenario']}: {n}" for r in rows for n in r.get("notes", [])]
    out += [""] + notes + ([""] if notes else [])
open(base + ".md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
print(f"written: {base}.md, {base}.json")
PY
