#!/usr/bin/env bash
# A reconnect storm: N subscribers of one channel (real Rust clients, their own backoff,
# jitter and recovery) on a `plexus serve` node whose engine is a redis-server of this
# script's own, while 100 publications a second continue; the server is then killed
# (SIGKILL: no close frame reaches anyone) and started again at once, and every client must
# come back and recover what it missed from the history Redis kept. Prints one JSON object per
# repetition (`plexus bench storm`'s figures): time until all are back, the new server's peak
# CPU and memory, publications lost and delivered twice.
#
#   bench/storm.sh [-n 10000] [--rate 100] [--reps 1] [--port 8799]
#
# Loopback only; every step is bounded in time. The generator and the server each hold N
# sockets: the script raises the open-file limit as far as it may and says so when capped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
n=10000 rate=100 reps=1 port=8799
while [ $# -gt 0 ]; do
  case $1 in
    -n) n=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    *) echo "usage: bench/storm.sh [-n N] [--rate R] [--reps K] [--port P]" >&2; exit 2 ;;
  esac
done
for tool in redis-server curl; do
  command -v "$tool" >/dev/null || { echo "storm.sh needs $tool" >&2; exit 1; }
done
want=$((n + 1000))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
  ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
have=$(ulimit -n)
if [ "$have" != unlimited ] && [ "$have" -lt "$want" ]; then
  echo "storm.sh: open files are capped at $have per process here (wanted $want)" >&2
  exit 1
fi

target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --release -q -p plexus --features cli --bin plexus
bin=$target/release/plexus
work=$(mktemp -d)
cleanup() {
  [ -f "$work/server.pid" ] && kill -KILL "$(cat "$work/server.pid")" 2>/dev/null || true
  [ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
broker_port=$((port + 100))
redis-server --port "$broker_port" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
cat >"$work/plexus.toml" <<TOML
# One address opens every connection; nothing limits the rates of a storm.
[limits]
call_rate = "off"
publish_rate = "off"
max_connections_per_ip = 200000

[namespaces."bench:*"]
client_publish = true
history_size = 10000                 # 100 s of publications at 100/s: the outage fits
history_ttl = "10m"
TOML

# Starts the server in the background (its pid in $work/server.pid) and waits until it
# answers, at most 10 s.
start() {
  RUST_LOG=warn setsid "$bin" serve --listen "127.0.0.1:$port" --config "$work/plexus.toml" \
    --engine "redis://127.0.0.1:$broker_port" >>"$work/server.log" 2>&1 &
  echo $! >"$work/server.pid"
  disown  # killed on purpose: no job notice
  for _ in $(seq 200); do
    curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "storm.sh: the server did not start (see $work/server.log)" >&2
  return 1
}
# The cut: kill -9, start again. The clients see their sockets close and reconnect to a
# port that refuses them until the new process listens.
cat >"$work/cut.sh" <<CUT
#!/usr/bin/env bash
kill -KILL "\$(cat "$work/server.pid")"
for _ in \$(seq 500); do kill -0 "\$(cat "$work/server.pid")" 2>/dev/null || break; sleep 0.01; done
RUST_LOG=warn setsid "$bin" serve --listen "127.0.0.1:$port" --config "$work/plexus.toml" \\
  --engine "redis://127.0.0.1:$broker_port" >>"$work/server.log" 2>&1 &
echo \$! >"$work/server.pid"
CUT
chmod +x "$work/cut.sh"

for rep in $(seq "$reps"); do
  start
  timeout 300 "$bin" bench storm --url "ws://127.0.0.1:$port/ws" -n "$n" --rate "$rate" \
    --cut "$work/cut.sh" --server-pid-file "$work/server.pid" --max-runtime 280s
  pid=$(cat "$work/server.pid")
  kill -KILL "$pid" 2>/dev/null || true
  # Gone, so that the next one can listen on the port.
  for _ in $(seq 500); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
  echo "storm.sh: rep $rep done" >&2
done
