#!/usr/bin/env bash
# `plexus relay` on 127.0.0.1:PORT with one provider of the service Bench (`plexus provide`),
# for plexus-relay.sh. The relay replaces this script's process (exec), so the driver
# measures the relay alone; the provider runs beside it (outside the relay's process tree)
# and stops when it does. When the driver pinned this script to one core (the server's),
# the provider runs on the others: a provider is another machine in a mesh, and sharing
# the relay's core would charge the relay for their contention. (`nproc` counts only the
# cores a process may use.)
#   relay-pair.sh PORT PLEXUS_BINARY CONFIG
set -euo pipefail
port=$1 bin=$2 config=$3
relay_pid=$$
all=$(nproc --all)
provider_cores=0-$((all - 1))
if [ "$(nproc)" = 1 ] && [ "$all" -ge 2 ] && command -v taskset >/dev/null; then
  mine=$(taskset -cp $$ | awk '{print $NF}')
  provider_cores=$(seq 0 $((all - 1)) | grep -vx "$mine" | paste -sd,)
fi
# Started from a subshell that ends at once, the provider is nobody's child: the driver
# counts the server's CPU over its process tree, which must hold the relay alone.
pidfile=$(mktemp)
(
  # Retries until the relay listens, then provides; provides again if the relay restarts.
  taskset -c "$provider_cores" "$bin" provide "ws://127.0.0.1:$port/ws" --node bench --service Bench </dev/null &
  echo $! >"$pidfile"
)
(
  tail --pid="$relay_pid" -f /dev/null
  kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
) </dev/null &
exec "$bin" relay --listen "127.0.0.1:$port" --config "$config"
