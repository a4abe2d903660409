# plexus.sh with its Prometheus metrics off (--metrics off): beside the `plexus` column of
# the same run, what counting costs.
DESC="plexus (release build): plexus serve --metrics off, otherwise as plexus.sh"
SERVER_CMD=("$TARGET/release/plexus" serve --listen '127.0.0.1:{port}' --config "$BENCH/plexus-bench.toml" --metrics off)
SERVER_ENV=(RUST_LOG=warn)
URL_PATH='/ws'
HANDSHAKE=('expect:"welcome"')
SCENARIOS='rpc fanout conns'
RPC_REQUEST='{"t":"req","id":{seq},"m":"sys.echo","d":{"ts":{ts},"pad":"{pad}"}}'
RPC_REPLY_CONTAINS='"id":{seq},'
SUBSCRIBE='{"t":"join","id":1,"ch":"bench:{channel}"}'
SUBSCRIBE_ACK='"recovered"'
PUBLISH='{"t":"pub","id":{seq},"ch":"bench:{channel}","d":{"seq":{seq},"ts":{ts},"pad":"{pad}"}}'
setup() { cargo build --release -q -p plexus --features cli --bin plexus; }
