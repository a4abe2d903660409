# Node.js with the `ws` library (bench/peers/node-ws), installed from npm on first use.
DESC="Node.js $(node --version 2>/dev/null) + ws 8.18.3 (bench/peers/node-ws)"
SERVER_CMD=(node "$BENCH/peers/node-ws/server.js" '{port}')
URL_PATH='/'
SCENARIOS='rpc fanout conns'
RPC_REQUEST='{"id":{seq},"action":"echo","data":{"ts":{ts},"pad":"{pad}"}}'
RPC_REPLY_CONTAINS='"id":{seq},'
SUBSCRIBE='{"action":"subscribe","channel":"{channel}"}'
SUBSCRIBE_ACK='"subscribed"'
PUBLISH='{"action":"publish","channel":"{channel}","data":{"seq":{seq},"ts":{ts},"pad":"{pad}"}}'
setup() {
  command -v node >/dev/null || { echo "node is not installed" >&2; return 1; }
  [ -d "$BENCH/peers/node-ws/node_modules/ws" ] ||
    (cd "$BENCH/peers/node-ws" && npm install --no-audit --no-fund --silent >/dev/null)
}
