#!/usr/bin/env bash
# plexus's benchmark: plexus beside the servers it is compared with, measured in one run by
# the same load generator (crates/plexus-loadgen), with the server on one core and the generator on
# the other. Everything it needs is in the repository; Node peers install from npm on first
# use.
#
#   bench/run.sh [--peers "plexus floor"] [--cases "rpc-c50 fan-5k-max conns-10k"]
#                [--reps 3] [--quick] [--no-pin] [--out DIR]
#   bench/run.sh --report DIR        # the table of an earlier run again
#
# Peers are the files in bench/servers/ (default: all of them): plexus, plexus-relay (the
# echo relayed through `plexus relay` to a provider process), plexus-nometrics (plexus with
# --metrics off), plexus-redis3 and plexus-nats3
# (three nodes on one redis-server or nats-server, fan-out only), floor (bare
# tokio-tungstenite), node-ws (Node.js `ws`) and uws (uWebSockets.js). Cases: rpc-c50 (50 closed-loop connections), fan-N-max (N
# subscribers, as fast as a window of 8 undelivered messages allows), fan-N-rateR (R
# messages/s), conns-N (N idle connections), conns-scale (as many idle connections as the
# open-file limit allows, up to 100,000). The reconnect storm is
# bench/storm.sh. Results go to bench/results/DATE/:
# results.jsonl, table.md, commands.log, meta.txt, server-*.log. Only 127.0.0.1 is ever a
# target, and every generator run ends by itself (--max-runtime).
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export BENCH ROOT TARGET
cd "$ROOT"

REPS=3 PEERS= CASES= OUT= PIN=1 REPORT=
RPC_SECS=10 FAN_SECS=6 FAN_SUBS="1000 5000" FAN_WINDOW=8 FAN_DELIVERIES=10000
CONNS_N=10000 CONNS_HOLD=5 WARMUP=2 PAD=0 BASE_PORT=19400 SCALE_WANT=100000
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --peers) PEERS=$2; shift 2 ;;
    --cases) CASES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --report) REPORT=$2; shift 2 ;;
    --quick) REPS=1 RPC_SECS=3 FAN_SECS=3 FAN_SUBS="200 1000" CONNS_N=2000 CONNS_HOLD=2 WARMUP=1; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

LG=$TARGET/release/plexus-loadgen
cargo build --release -q -p plexus-loadgen
if [ -n "$REPORT" ]; then
  "$LG" report "$REPORT/results.jsonl"
  exit 0
fi

# ---------------------------------------------------------------- cases
declare -A SCENARIO ARGS
short() { if [ $(($1 % 1000)) -eq 0 ]; then echo "$(($1 / 1000))k"; else echo "$1"; fi; }
ALL="rpc-c50"
SCENARIO[rpc-c50]=rpc ARGS[rpc-c50]="-c 50 -d $RPC_SECS --warmup $WARMUP"
for n in $FAN_SUBS; do
  rate=$((FAN_DELIVERIES / n))
  ALL="$ALL fan-$(short "$n")-max fan-$(short "$n")-rate$rate"
  SCENARIO[fan-$(short "$n")-max]=fanout ARGS[fan-$(short "$n")-max]="-n $n -d $FAN_SECS --warmup $WARMUP --rate 0 --window $FAN_WINDOW"
  SCENARIO[fan-$(short "$n")-rate$rate]=fanout ARGS[fan-$(short "$n")-rate$rate]="-n $n -d $FAN_SECS --warmup $WARMUP --rate $rate"
done
ALL="$ALL conns-$(short "$CONNS_N")"
SCENARIO[conns-$(short "$CONNS_N")]=conns ARGS[conns-$(short "$CONNS_N")]="-n $CONNS_N --hold $CONNS_HOLD"
# The scale case: as many idle connections as this machine's open-file limit lets one
# process hold, up to 100,000 (the server and the generator hold one file each per
# connection, each process under its own limit). The limit is raised as far as it may be;
# where it is capped the case is smaller and the run says so.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((SCALE_WANT + 1000)) ]; then
  ulimit -n "$((SCALE_WANT + 1000))" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
SCALE_N=$SCALE_WANT
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((SCALE_WANT + 1000)) ]; then
  SCALE_N=$(( $(ulimit -n) > 1100 ? $(ulimit -n) - 1000 : 100 ))
fi
ALL="$ALL conns-scale"
SCENARIO[conns-scale]=conns ARGS[conns-scale]="-n $SCALE_N --hold $CONNS_HOLD"
CASES=${CASES:-$ALL}
for c in $CASES; do
  [ -n "${SCENARIO[$c]:-}" ] || { echo "unknown case $c (known: $ALL)" >&2; exit 2; }
done
PEERS=${PEERS:-$(for f in "$BENCH"/servers/*.sh; do basename "$f" .sh; done | tr '\n' ' ')}

if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_SERVER=(taskset -c 0) PIN_GEN=(taskset -c 1)
else
  PIN_SERVER=() PIN_GEN=()
fi

OUT=${OUT:-$BENCH/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG=$OUT/run.log
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "machine: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
  echo "pinning: server ${PIN_SERVER[*]:-none}, generator ${PIN_GEN[*]:-none}"
  echo "reps $REPS; rpc ${RPC_SECS}s; fan-out ${FAN_SECS}s, window $FAN_WINDOW; conns $CONNS_N held ${CONNS_HOLD}s; warm-up ${WARMUP}s; pad $PAD"
  echo "conns-scale: $SCALE_N connections (open files: $(ulimit -n); wanted $((SCALE_WANT + 1000)))"
} >"$OUT/meta.txt"
if [ "$SCALE_N" -lt "$SCALE_WANT" ] && [[ " $CASES " == *" conns-scale "* ]]; then
  log "conns-scale is capped at $SCALE_N connections: open files are limited to $(ulimit -n) per process here"
fi

# A spec is sourced in a subshell: its variables and functions never leak between peers.
load_spec() {
  DESC= SERVER_CMD=() SERVER_ENV=() URL_PATH=/ NODES=1 HANDSHAKE=() SCENARIOS=
  RPC_REQUEST= RPC_REPLY_CONTAINS= SUBSCRIBE= SUBSCRIBE_ACK= PUBLISH=
  setup() { :; }
  ready() { :; }
  # shellcheck disable=SC1090
  source "$BENCH/servers/$1.sh"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_server() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

run_cell() {
  local rep=$1 case=$2 peer=$3 index=$4
  (
    load_spec "$peer"
    local scenario=${SCENARIO[$case]}
    case " $SCENARIOS " in *" $scenario "*) ;; *) exit 0 ;; esac
    local port=$((BASE_PORT + index * 10))
    while listening "$port"; do port=$((port + 1)); done
    # A cluster's nodes listen on port, port+1, ...: all must be up, subscribers go to all.
    local n others=()
    for n in $(seq 1 $((NODES - 1))); do others+=("ws://127.0.0.1:$((port + n))$URL_PATH"); done
    all_listening() {
      local k; for k in $(seq 0 $((NODES - 1))); do listening $(($1 + k)) || return 1; done
    }
    local cmd=("${SERVER_CMD[@]//\{port\}/$port}")
    env "${SERVER_ENV[@]}" "${PIN_SERVER[@]}" "${cmd[@]}" >>"$OUT/server-$peer.log" 2>&1 &
    local pid=$! url="ws://127.0.0.1:$port$URL_PATH"
    local waited=0
    until all_listening "$port" && ready "$url"; do
      if ! kill -0 "$pid" 2>/dev/null || [ $waited -ge 300 ]; then
        log "FAIL $peer did not get ready on port $port (see $OUT/server-$peer.log)"
        stop_server "$pid"; exit 1
      fi
      sleep 0.1; waited=$((waited + 1))
    done
    local args=(--url "$url" --server-pid "$pid" --server "$peer" --case "$case" --rep "$rep"
                --pad "$PAD" --json-out "$OUT/results.jsonl" --max-runtime 170)
    local step; for step in "${HANDSHAKE[@]}"; do args+=(--handshake "$step"); done
    case $scenario in
      rpc) args+=(--request "$RPC_REQUEST" --reply-contains "$RPC_REPLY_CONTAINS") ;;
      fanout) args+=(--subscribe "$SUBSCRIBE" --publish "$PUBLISH")
              for n in "${others[@]}"; do args+=(--also-url "$n"); done
              [ -n "$SUBSCRIBE_ACK" ] && args+=(--subscribe-ack "$SUBSCRIBE_ACK") ;;
    esac
    # shellcheck disable=SC2206
    local full=("${PIN_GEN[@]}" "$LG" "$scenario" ${ARGS[$case]} "${args[@]}")
    { printf '%q ' "${full[@]}"; echo; } >>"$OUT/commands.log"
    log "rep $rep $case $peer"
    timeout 200 "${full[@]}" >/dev/null 2>>"$OUT/loadgen.log" || log "the generator failed for $peer $case (see $OUT/loadgen.log)"
    stop_server "$pid"
  )
}

READY=()
for peer in $PEERS; do
  [ -f "$BENCH/servers/$peer.sh" ] || { echo "no spec bench/servers/$peer.sh" >&2; exit 2; }
  if (load_spec "$peer" && setup); then
    READY+=("$peer")
    (load_spec "$peer"; echo "- $peer: $DESC") >>"$OUT/peers.md"
  else
    log "skipping $peer: its setup failed"
  fi
done
log "peers: ${READY[*]}; cases: $CASES; output: $OUT"

for rep in $(seq "$REPS"); do
  for case in $CASES; do
    # A fresh order each repetition, so that no server always runs first or last.
    index=0
    for peer in $(printf '%s\n' "${READY[@]}" | shuf); do
      run_cell "$rep" "$case" "$peer" "$index"
      index=$((index + 1))
    done
  done
done

{
  cat "$OUT/peers.md"
  echo
  echo "Median over $REPS repetition(s), [min–max] when more than one; n/a: not run."
  echo
  "$LG" report "$OUT/results.jsonl"
} >"$OUT/table.md"
cat "$OUT/table.md"
