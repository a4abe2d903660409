# plexus.sh with its Prometheus metrics off (--metrics off): beside the `plexus` column of
# the same run, what counting costs.
source "$BENCH/servers/plexus.sh"
DESC="plexus (release build): plexus serve --metrics off, otherwise as plexus.sh"
SERVER_CMD+=(--metrics off)
