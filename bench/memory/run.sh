#!/usr/bin/env bash
# Where an idle connection's memory goes, measured: `plexus serve` (release build, the
# benchmark's configuration) under heaptrack holds N idle connections from the load
# generator; the live heap at its peak is grouped by who allocated it, per connection.
#
#   bench/memory/run.sh [-n 5000] [--depth 2] [--out DIR]
#
# Needs heaptrack and c++filt (Debian: apt-get install heaptrack binutils). The per-
# connection RSS the generator reports is printed too: the heap figure leaves out what the
# allocator holds but has not handed out. Only 127.0.0.1 is a target; the generator ends by
# itself, and the server is stopped whatever happens.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
N=5000 DEPTH=2 OUT=
while [ $# -gt 0 ]; do
  case $1 in
    -n) N=$2; shift 2 ;;
    --depth) DEPTH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in heaptrack heaptrack_print c++filt; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install heaptrack binutils)" >&2; exit 1; }
done
# Both processes hold a descriptor per connection.
ulimit -n "$((N + 1000))" 2>/dev/null || true
if [ "$(ulimit -n)" -lt "$((N + 100))" ]; then
  echo "open files are limited to $(ulimit -n) here: use -n $(($(ulimit -n) - 100)) or less" >&2
  exit 1
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
cd "$ROOT"
cargo build --release -q -p plexus --features cli --bin plexus
cargo build --release -q -p plexus-loadgen
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn heaptrack -o "$OUT/heap" "$TARGET/release/plexus" serve \
  --listen "127.0.0.1:$PORT" --config "$BENCH/plexus-bench.toml" >"$OUT/serve.log" 2>&1 &
HEAPTRACK=$!
PID=
stop() {
  [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null
  wait "$HEAPTRACK" 2>/dev/null || true
}
trap stop EXIT
healthy=
for _ in $(seq 100); do
  PID=$(pgrep -P "$HEAPTRACK" -f "release/plexus serve" || true)
  if [ -n "$PID" ] && curl -sf "http://127.0.0.1:$PORT/health/live" >/dev/null; then
    healthy=1
    break
  fi
  sleep 0.1
done
[ -n "$healthy" ] || { echo "plexus serve did not start (see $OUT/serve.log)" >&2; exit 1; }
"$TARGET/release/plexus-loadgen" conns --url "ws://127.0.0.1:$PORT/ws" --handshake 'expect:"welcome"' \
  -n "$N" --hold 2 --server-pid "$PID" --max-runtime 120 >"$OUT/conns.json"
stop
trap - EXIT
HEAP=$(ls "$OUT"/heap.*)
heaptrack_print -f "$HEAP" --print-peaks 0 --print-allocators 0 --print-temporary 0 \
  --print-leaks 0 --print-flamegraph "$OUT/stacks.txt" --flamegraph-cost-type peak >/dev/null
HELD=$(python3 - "$OUT/conns.json" <<'PY'
import json, sys
record = json.load(open(sys.argv[1]))
print(f"RSS {record['rss_kib_per_conn']} KiB per connection, server CPU "
      f"{record['server_cpu_us_per_op']} us per connection set up "
      f"({record['connections']} held, {record['connect_failed']} failed)", file=sys.stderr)
print(record["connections"])
PY
)
[ "$HELD" -gt 0 ] || { echo "no connection was held" >&2; exit 1; }
python3 "$BENCH/memory/breakdown.py" "$OUT/stacks.txt" "$HELD" "$DEPTH"
echo "(files in $OUT)"
