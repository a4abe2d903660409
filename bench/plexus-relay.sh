# Server spec for ../shared/bench (copied into its servers/ folder by bench/run.sh): the same
# echo as bench/plexus.sh, relayed: the generator calls Bench.echo on `plexus relay`, which
# routes each call to a provider process (`plexus provide`, started by bench/relay-pair.sh)
# and the answer back. The server figures are the relay's alone; compare them with the
# `plexus` column of the same run. Only an answer (`res`) counts: a SERVICE_OFFLINE would
# stall its connection rather than pass for a reply.
DESC="plexus 0.1 (release build), plexus relay + one provider process, Bench.echo relayed, compression off"
SERVER_CMD=("$PLEXUS_ROOT/bench/relay-pair.sh" '{port}')
SERVER_ENV=(RUST_LOG=warn "PLEXUS_ROOT=$PLEXUS_ROOT" "PLEXUS_TARGET=$PLEXUS_TARGET")
URL_PATH='/ws'
HANDSHAKE=('expect:"welcome"')
SCENARIOS='rpc'
RPC_REQUEST='{"t":"req","id":{seq},"m":"Bench.echo","d":{"ts":{ts},"pad":"{pad}"}}'
RPC_REPLY_CONTAINS='{"t":"res","id":{seq},'
setup() { (cd "$PLEXUS_ROOT" && CARGO_TARGET_DIR="$PLEXUS_TARGET" cargo build --release -q -p plexus --features cli --bin plexus); }
