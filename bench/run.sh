#!/usr/bin/env bash
# Runs the neutral harness in ../shared/bench with plexus as one more server, beside the peers.
# The harness folder is read-only, so it is copied to $BENCH_DIR (default /tmp/plexus-bench)
# and plexus.sh is added to its servers/. Every argument goes to the harness's run.sh, e.g.
#   bench/run.sh --peers "plexus rust-tungstenite-rb4k uws" --cases "rpc-c50 conns-10k" --reps 3
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
dir=${BENCH_DIR:-/tmp/plexus-bench}
mkdir -p "$dir"
# Keep an earlier copy's target/ and node_modules/ (slow to rebuild); refresh everything else.
(cd "$shared" && tar --exclude=./target --exclude=./results -cf - .) | (cd "$dir" && tar -xf -)
chmod -R u+w "$dir"
cp "$root/bench/plexus.sh" "$dir/servers/plexus.sh"
cp "$root/bench/plexus-relay.sh" "$dir/servers/plexus-relay.sh"
export PLEXUS_ROOT="$root"
export PLEXUS_TARGET="${PLEXUS_TARGET:-$root/target}"
exec "$dir/run.sh" "$@"
