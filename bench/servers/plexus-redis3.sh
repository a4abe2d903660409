# Three `plexus serve` nodes on one redis-server (launch/cluster.sh), subscribers spread over
# the nodes in turn and the publisher on the first: each publication crosses Redis once per
# node and is encoded once per node. The server CPU is the three nodes' together (the
# broker's is logged apart); compare with the `plexus` column (one node, memory engine) of
# the same run.
DESC="plexus (release build): 3 plexus serve nodes on one redis-server (--engine redis://), bench:* channels"
SERVER_CMD=("$BENCH/launch/cluster.sh" '{port}' "$TARGET/release/plexus" "$BENCH/plexus-bench.toml" 3 redis)
SERVER_ENV=(RUST_LOG=warn)
URL_PATH='/ws'
NODES=3
HANDSHAKE=('expect:"welcome"')
SCENARIOS='fanout'
SUBSCRIBE='{"t":"join","id":1,"ch":"bench:{channel}"}'
SUBSCRIBE_ACK='"recovered"'
PUBLISH='{"t":"pub","id":{seq},"ch":"bench:{channel}","d":{"seq":{seq},"ts":{ts},"pad":"{pad}"}}'
setup() {
  command -v redis-server >/dev/null || { echo "plexus-redis3 needs redis-server" >&2; return 1; }
  cargo build --release -q -p plexus --features cli --bin plexus
}
