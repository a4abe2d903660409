#!/usr/bin/env bash
# wscat against a real `plexus serve`, used as a person would: connect with no subprotocol,
# wait for `welcome`, type a JSON request, expect its `res`; then a stream, two windows on a
# channel, and a wscat piped to that channel (`--pipe`) talking with them.
# Usage: scripts/wscat-smoke.sh PATH/TO/plexus
# Prints "wscat: N passed, N failed"; exit 1 on failures, 2 on setup errors.
set -uo pipefail
bin=${1:?usage: wscat-smoke.sh PATH/TO/plexus}
tools=${PLEXUS_TOOLS_DIR:-${TMPDIR:-/tmp}/plexus-tools}
wscat=${WSCAT:-$(command -v wscat || true)}
if [ -z "$wscat" ]; then
  wscat=$tools/wscat/node_modules/.bin/wscat
  if [ ! -x "$wscat" ]; then
    mkdir -p "$tools/wscat"
    npm install --prefix "$tools/wscat" --no-save --no-audit --no-fund wscat@6 >/dev/null 2>&1 \
      || { echo "wscat-smoke: npm install wscat failed" >&2; exit 2; }
  fi
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
"$bin" serve --listen "127.0.0.1:$port" --pipe '/pipe/*=demo' >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "listening" "$log" && break; sleep 0.1; done
grep -q "listening" "$log" || { echo "wscat-smoke: server did not start" >&2; cat "$log" >&2; exit 2; }

passed=0; failed=0
# Reads the output of the wscat on fd $2 (default: the protocol one) until a line contains
# $1 (at most 10 s); prints that line.
await_line() {
  local line fd=${2:-${WS[0]}}
  while IFS= read -t 10 -r line <&"$fd"; do
    case "$line" in *"$1"*) printf '%s\n' "$line"; return 0 ;; esac
  done
  return 1
}
check() { # name, got-line, expected substring
  if [[ "$2" == *"$3"* ]]; then passed=$((passed+1)); echo "ok   $1"
  else failed=$((failed+1)); echo "FAIL $1: expected $3, got: ${2:-<nothing>}"; fi
}

coproc WS { exec "$wscat" --no-color -c "ws://127.0.0.1:$port/ws" 2>&1; }
welcome=$(await_line '"t":"welcome"') || true
check "welcome on connect" "$welcome" '"heartbeat":25000'
echo '{"t":"req","id":1,"m":"sys.echo","d":{"typed":"by a person","n":[1,2,3]}}' >&"${WS[1]}"
res=$(await_line '"id":1') || true
check "sys.echo answered" "$res" '{"t":"res","id":1,"d":{"typed":"by a person","n":[1,2,3]}}'
echo '{"t":"sub","id":2,"m":"sys.count","d":{"n":3}}' >&"${WS[1]}"
end=$(await_line '"t":"end"') || true
check "sys.count stream ends" "$end" '{"t":"end","id":2}'
echo 'this is not json' >&"${WS[1]}"
bad=$(await_line 'BAD_FRAME') || true
check "typo answered with BAD_FRAME" "$bad" '"code":"BAD_FRAME"'
# Two windows chatting: this one joins demo:smoke, a second wscat publishes to it.
echo '{"t":"join","id":3,"ch":"demo:smoke"}' >&"${WS[1]}"
joined=$(await_line '"id":3') || true
check "join demo:smoke" "$joined" '"recovered":false'
sleep 2 | timeout 15 "$wscat" --no-color -c "ws://127.0.0.1:$port/ws" \
  -x '{"t":"pub","id":1,"ch":"demo:smoke","d":{"text":"hi from window 2"}}' -w 1 >/dev/null 2>&1
msg=$(await_line '"t":"msg"') || true
check "publication from the other window" "$msg" '{"t":"msg","ch":"demo:smoke","o":1,"d":{"text":"hi from window 2"}}'
# A wscat with no protocol at /pipe/smoke is on demo:smoke: what it types is published as a
# JSON string, and publications come to it as their JSON text. Its own line coming back
# shows it is subscribed.
# (bash warns that the first coproc still runs: it is meant to.)
{ coproc PIPE { exec "$wscat" --no-color -c "ws://127.0.0.1:$port/pipe/smoke" 2>&1; }; } 2>/dev/null
await_line 'Connected' "${PIPE[0]}" >/dev/null || true
echo 'plain words' >&"${PIPE[1]}"
back=$(await_line 'plain words' "${PIPE[0]}") || true
check "the piped window gets its own line back" "$back" 'plain words'
msg=$(await_line '"t":"msg"') || true
check "the protocol window gets the piped line" "$msg" '"d":"plain words"'
sleep 2 | timeout 15 "$wscat" --no-color -c "ws://127.0.0.1:$port/ws" \
  -x '{"t":"pub","id":1,"ch":"demo:smoke","d":{"text":"to the pipe"}}' -w 1 >/dev/null 2>&1
piped=$(await_line 'to the pipe' "${PIPE[0]}") || true
check "the piped window gets a publication as JSON text" "$piped" '{"text":"to the pipe"}'
kill "$PIPE_PID" "$WS_PID" 2>/dev/null; wait "$PIPE_PID" "$WS_PID" 2>/dev/null

echo "wscat: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
