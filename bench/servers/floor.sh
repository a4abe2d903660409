# The floor: bench/floor, a bare tokio-tungstenite server (4 KiB read buffer, a writer task
# and bounded queue per connection), no framework.
DESC="bare tokio-tungstenite 0.29 (bench/floor), read buffer 4 KiB"
SERVER_CMD=("$TARGET/release/plexus-bench-floor" '{port}')
URL_PATH='/'
SCENARIOS='rpc fanout conns'
RPC_REQUEST='{"id":{seq},"action":"echo","data":{"ts":{ts},"pad":"{pad}"}}'
RPC_REPLY_CONTAINS='"id":{seq},'
SUBSCRIBE='{"action":"subscribe","channel":"{channel}"}'
SUBSCRIBE_ACK='"subscribed"'
PUBLISH='{"action":"publish","channel":"{channel}","data":{"seq":{seq},"ts":{ts},"pad":"{pad}"}}'
setup() { cargo build --release -q -p plexus-bench-floor; }
