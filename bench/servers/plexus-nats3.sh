# Three `plexus serve` nodes on one nats-server with JetStream (launch/cluster.sh),
# subscribers spread over the nodes in turn and the publisher on the first: each publication
# is kept by the stream, republished to the nodes (once per node) and encoded once per node.
# The server CPU is the three nodes' together (the broker's is logged apart); compare with
# the `plexus` column (one node, memory engine) of the same run.
DESC="plexus (release build): 3 plexus serve nodes on one nats-server -js (--engine nats://), bench:* channels"
SERVER_CMD=("$BENCH/launch/cluster.sh" '{port}' "$TARGET/release/plexus" "$BENCH/plexus-bench.toml" 3 nats)
SERVER_ENV=(RUST_LOG=warn)
URL_PATH='/ws'
NODES=3
HANDSHAKE=('expect:"welcome"')
SCENARIOS='fanout'
SUBSCRIBE='{"t":"join","id":1,"ch":"bench:{channel}"}'
SUBSCRIBE_ACK='"recovered"'
PUBLISH='{"t":"pub","id":{seq},"ch":"bench:{channel}","d":{"seq":{seq},"ts":{ts},"pad":"{pad}"}}'
setup() {
  command -v nats-server >/dev/null || { echo "plexus-nats3 needs nats-server" >&2; return 1; }
  cargo build --release -q -p plexus --features cli --bin plexus
}
