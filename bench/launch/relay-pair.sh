#!/usr/bin/env bash
# `plexus relay` on 127.0.0.1:PORT with one provider of the service Bench (`plexus provide`),
# for plexus-relay.sh. The relay replaces this script's process (exec), so the driver
# measures the relay alone; the provider runs beside it, unpinned, and stops when it does.
#   relay-pair.sh PORT PLEXUS_BINARY CONFIG
set -euo pipefail
port=$1 bin=$2 config=$3
relay_pid=$$
(
  # Retries until the relay listens, then provides; provides again if the relay restarts.
  taskset -c "0-$(($(nproc) - 1))" "$bin" provide "ws://127.0.0.1:$port/ws" --node bench --service Bench &
  provider=$!
  tail --pid="$relay_pid" -f /dev/null
  kill "$provider" 2>/dev/null || true
) </dev/null &
exec "$bin" relay --listen "127.0.0.1:$port" --config "$config"
