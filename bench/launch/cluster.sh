#!/usr/bin/env bash
# A plexus cluster on 127.0.0.1 for plexus-redis3.sh and plexus-nats3.sh: a broker
# (redis-server, or nats-server with JetStream) on PORT+100 and NODES `plexus serve --engine …`
# nodes on PORT, PORT+1, …; stops them all on SIGTERM. The broker runs outside this script's
# process tree, so the generator's server CPU (this process and its children) is the nodes'
# alone; the broker's own CPU is written to stderr (the server log) when it stops.
#   cluster.sh PORT PLEXUS_BINARY CONFIG NODES redis|nats
set -euo pipefail
port=$1 bin=$2 config=$3 nodes=$4 broker=$5
broker_port=$((port + 100))
dir=$(mktemp -d)
case $broker in
  redis)
    redis-server --port "$broker_port" --bind 127.0.0.1 --save "" --appendonly no \
      --daemonize yes --pidfile "$dir/broker.pid" --logfile "$dir/broker.log" ;;
  nats)
    # A subshell that exits at once leaves nats-server to init, out of this tree.
    ( setsid nats-server -js -a 127.0.0.1 -p "$broker_port" -sd "$dir/store" -P "$dir/broker.pid" \
        >"$dir/broker.log" 2>&1 & ) ;;
  *) echo "cluster.sh: unknown broker $broker" >&2; exit 2 ;;
esac
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$broker_port") 2>/dev/null && break
  sleep 0.05
done
pids=()
stop() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  if [ -f "$dir/broker.pid" ]; then
    local pid; pid=$(cat "$dir/broker.pid")
    # utime + stime of the broker, in clock ticks, for the record.
    awk -v t="$(getconf CLK_TCK)" -v b="$broker" '{ printf "%s cpu: %.2f s\n", b, ($14 + $15) / t }' \
      "/proc/$pid/stat" >&2 || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$dir"
}
trap 'stop; exit 0' TERM INT
for n in $(seq 0 $((nodes - 1))); do
  "$bin" serve --listen "127.0.0.1:$((port + n))" --config "$config" \
    --engine "$broker://127.0.0.1:$broker_port" --node-id "bench-$n" &
  pids+=($!)
done
wait
