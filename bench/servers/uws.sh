# uWebSockets.js (npm @btc-vision/uwebsockets.js, bench/peers/uws) with its native pub/sub
# topics, installed from npm on first use. Its prebuilt addon needs glibc 2.38; on an older
# glibc, setup() builds a loadable copy in bench/peers/uws/build (git-ignored). run.sh runs
# setup() in a subshell of its own and sources this file afresh for each server, so its
# verdict travels on disk: the copy is used when it exists, and setup() deletes it wherever
# the plain addon loads.
UWS=$BENCH/peers/uws
DESC="Node.js $(node --version 2>/dev/null) + uWebSockets.js 20.57.0 (bench/peers/uws), native topics, compression off"
SERVER_CMD=(node "$UWS/server.js" '{port}')
if [ -f "$UWS/build/uws.node" ]; then
  SERVER_ENV=("UWS_ADDON=$UWS/build/uws.node" "LD_PRELOAD=$UWS/build/libisoc23.so")
  DESC="$DESC; glibc compat copy of the addon (bench/peers/uws/compat)"
fi
URL_PATH='/'
SCENARIOS='rpc fanout conns'
RPC_REQUEST='{"id":{seq},"action":"echo","data":{"ts":{ts},"pad":"{pad}"}}'
RPC_REPLY_CONTAINS='"id":{seq},'
SUBSCRIBE='{"action":"subscribe","channel":"{channel}"}'
SUBSCRIBE_ACK='"subscribed"'
PUBLISH='{"action":"publish","channel":"{channel}","data":{"seq":{seq},"ts":{ts},"pad":"{pad}"}}'
setup() {
  command -v node >/dev/null || { echo "node is not installed" >&2; return 1; }
  [ -d "$UWS/node_modules/@btc-vision/uwebsockets.js" ] ||
    (cd "$UWS" && npm install --no-audit --no-fund --silent >/dev/null) || return 1
  rm -rf "$UWS/build"
  local err
  err=$(cd "$UWS" && node -e "require('@btc-vision/uwebsockets.js')" 2>&1) && return 0
  case $err in
    *GLIBC_2.38*) ;;
    *) echo "uws: the addon does not load: $(grep -m1 'Error: /' <<<"$err" || tail -1 <<<"$err")" >&2
       return 1 ;;
  esac
  echo "uws: the prebuilt addon needs GLIBC_2.38, this is $(ldd --version | head -1);" \
       "building a compat copy in bench/peers/uws/build" >&2
  command -v gcc >/dev/null || { echo "uws: building the compat copy needs gcc" >&2; return 1; }
  local addon
  addon=$(cd "$UWS" && node -p "require('path').join(require('path').dirname(
    require.resolve('@btc-vision/uwebsockets.js')),
    'uws_' + process.platform + '_' + process.arch + '_' + process.versions.modules + '.node')")
  mkdir -p "$UWS/build"
  if gcc -shared -fPIC -O2 -Wl,--version-script="$UWS/compat/isoc23.map" \
       -o "$UWS/build/libisoc23.so" "$UWS/compat/isoc23.c" &&
     node "$UWS/compat/weak-version.js" "$addon" "$UWS/build/uws.node.tmp" GLIBC_2.38 &&
     mv "$UWS/build/uws.node.tmp" "$UWS/build/uws.node" &&
     LD_PRELOAD="$UWS/build/libisoc23.so" node -e 'require(process.argv[1])' "$UWS/build/uws.node"
  then
    return 0
  fi
  echo "uws: the compat copy does not load either" >&2
  rm -rf "$UWS/build"
  return 1
}
