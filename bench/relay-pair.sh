#!/usr/bin/env bash
# `plexus relay` on 127.0.0.1:PORT with one provider of the service Bench (`plexus provide`),
# for bench/plexus-relay.sh. The relay replaces this script's process (exec), so the harness
# measures the relay alone; the provider runs beside it, unpinned, and stops when it does.
#   bench/relay-pair.sh PORT
set -euo pipefail
port=$1
bin="$PLEXUS_TARGET/release/plexus"
relay_pid=$$
(
  # Retries until the relay listens, then provides; re-provides if the relay restarts.
  taskset -c 0-1 "$bin" provide "ws://127.0.0.1:$port/ws" --node bench --service Bench &
  provider=$!
  tail --pid="$relay_pid" -f /dev/null
  kill "$provider" 2>/dev/null || true
) </dev/null &
exec "$bin" relay --listen "127.0.0.1:$port" --config "$PLEXUS_ROOT/bench/plexus-bench.toml"
