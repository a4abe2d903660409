# The same echo as plexus.sh, relayed: the generator calls Bench.echo on `plexus relay`,
# which routes each call to a provider process (`plexus provide`, started by
# launch/relay-pair.sh) and the answer back. The server figures are the relay's alone; compare them
# with the `plexus` column of the same run. Only an answer (`res`) counts: a SERVICE_OFFLINE
# would stall its connection rather than pass for a reply.
DESC="plexus (release build): plexus relay + one plexus provide process, Bench.echo relayed, compression off"
SERVER_CMD=("$BENCH/launch/relay-pair.sh" '{port}' "$TARGET/release/plexus" "$BENCH/plexus-bench.toml")
SERVER_ENV=(RUST_LOG=warn)
URL_PATH='/ws'
HANDSHAKE=('expect:"welcome"')
SCENARIOS='rpc'
RPC_REQUEST='{"t":"req","id":{seq},"m":"Bench.echo","d":{"ts":{ts},"pad":"{pad}"}}'
RPC_REPLY_CONTAINS='{"t":"res","id":{seq},'
setup() { cargo build --release -q -p plexus --features cli --bin plexus; }
# Ready once the provider is in: the relay lists the service.
ready() { "$TARGET/release/plexus" services "$1" 2>/dev/null | grep -q '"Bench"'; }
