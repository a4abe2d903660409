#!/usr/bin/env bash
# A plexus cluster on 127.0.0.1 for plexus-redis3.sh: a redis-server on PORT+100 and NODES
# `plexus serve --engine redis://…` nodes on PORT, PORT+1, …; stops them all on SIGTERM.
# Redis runs daemonized, outside this script's process tree, so the generator's server CPU
# (this process and its children) is the nodes' alone; its own CPU is written to
# OUT_DIR/broker-cpu.log when it stops.
#   cluster.sh PORT PLEXUS_BINARY CONFIG NODES
set -euo pipefail
port=$1 bin=$2 config=$3 nodes=$4
redis_port=$((port + 100))
dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
for _ in $(seq 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
pids=()
stop() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  if [ -f "$dir/redis.pid" ]; then
    local pid; pid=$(cat "$dir/redis.pid")
    # utime + stime of the broker, in clock ticks, for the record.
    awk -v t="$(getconf CLK_TCK)" '{ printf "redis-server cpu: %.2f s\n", ($14 + $15) / t }' \
      "/proc/$pid/stat" >&2 || true
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap 'stop; exit 0' TERM INT
for n in $(seq 0 $((nodes - 1))); do
  "$bin" serve --listen "127.0.0.1:$((port + n))" --config "$config" \
    --engine "redis://127.0.0.1:$redis_port" --node-id "bench-$n" &
  pids+=($!)
done
wait
