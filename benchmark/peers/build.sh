#!/usr/bin/env bash
# Builds the reference servers whose toolchain is present, and says in one
# line why it skipped any other. Writes target/peers/servers.tsv: one line per
# server, "name<TAB>command with {port}<TAB>what it takes to run", ours first.
#   benchmark/peers/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/peers
mkdir -p "$out"
list=$out/servers.tsv
size() { stat -c %s "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }

cargo build --release --quiet -p websocket-public-chat
printf 'ours\t%s\t%s\n' "target/release/websocket-public-chat --host 127.0.0.1 --port {port}" \
  "$(size target/release/websocket-public-chat) B stripped binary (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))" >"$list"

if command -v cargo >/dev/null; then
  cargo build --release --quiet --manifest-path benchmark/peers/rust-tokio/Cargo.toml --target-dir "$out/rust-tokio"
  bin=$out/rust-tokio/release/peer-rust-tokio
  tungstenite=$(grep -A1 '^name = "tokio-tungstenite"' benchmark/peers/rust-tokio/Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
  tokio=$(grep -A1 '^name = "tokio"$' benchmark/peers/rust-tokio/Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
  printf 'rust-tokio\t%s\t%s\n' "$bin --port {port}" "$(size "$bin") B stripped binary (tokio $tokio, tokio-tungstenite $tungstenite)" >>"$list"
fi

gorilla=/usr/share/gocode/src/github.com/gorilla/websocket
if command -v go >/dev/null && [ -d "$gorilla" ]; then
  # GOPATH mode against Debian's golang-github-gorilla-websocket-dev: no module proxy.
  (cd benchmark/peers/go-gorilla && GOPATH=/usr/share/gocode GO111MODULE=off GOCACHE="$PWD/../../../$out/go-cache" \
    go build -ldflags "-s -w" -o "../../../$out/go-gorilla/peer" .)
  gorilla_version=$(dpkg-query -W -f '${Version}' golang-github-gorilla-websocket-dev 2>/dev/null || echo unknown)
  printf 'go-gorilla\t%s\t%s\n' "$out/go-gorilla/peer --port {port}" "$(size "$out/go-gorilla/peer") B stripped binary (gorilla/websocket $gorilla_version)" >>"$list"
else
  echo "peers/build.sh: go-gorilla skipped: needs golang-go and golang-github-gorilla-websocket-dev (apt-get)" >&2
fi

if command -v node >/dev/null && command -v npm >/dev/null; then
  (cd benchmark/peers/node-ws && npm ci --silent --no-audit --no-fund)
  node=$(command -v node)
  ws_kib=$(du -sk benchmark/peers/node-ws/node_modules | cut -f1)
  printf 'node-ws\t%s\t%s\n' "node benchmark/peers/node-ws/server.js --port {port}" \
    "Node.js $(node --version) ($(size "$(readlink -f "$node")") B) + ws $(node -p 'require("./benchmark/peers/node-ws/node_modules/ws/package.json").version') ($ws_kib KiB)" >>"$list"
else
  echo "peers/build.sh: node-ws skipped: needs node and npm" >&2
fi

if command -v python3 >/dev/null && python3 -c 'import venv' 2>/dev/null; then
  venv=${PEERS_VENV:-$HOME/.cache/websocket-public-chat/peer-python-venv}
  if ! "$venv/bin/python" -c 'import websockets' 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r benchmark/peers/python-websockets/requirements.txt >&2
  fi
  py_kib=$(du -sk "$("$venv/bin/python" -c 'import websockets, os; print(os.path.dirname(websockets.__file__))')" | cut -f1)
  libpython=$("$venv/bin/python" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")))')
  printf 'python-websockets\t%s\t%s\n' "$venv/bin/python benchmark/peers/python-websockets/server.py --port {port}" \
    "CPython $("$venv/bin/python" -c 'import platform; print(platform.python_version())') ($(size "$(readlink -f "$libpython")") B, its standard library not counted) + websockets $("$venv/bin/python" -c 'import websockets; print(websockets.__version__)') ($py_kib KiB)" >>"$list"
else
  echo "peers/build.sh: python-websockets skipped: needs python3 with venv" >&2
fi
cat "$list" | cut -f1,3 >&2
