// A uWebSockets.js server speaking the plain JSON bench protocol (see
// bench/floor/src/main.rs): echo, subscribe, publish. Channels are uWS's own topics, so a
// publication is serialised once and uWS sends it to every subscriber. Usage: node server.js
// PORT (listens on 127.0.0.1). UWS_ADDON, when set, is the path of the addon to load in
// place of the package's (the glibc compat copy that bench/servers/uws.sh builds).
'use strict';
const uWS = process.env.UWS_ADDON
  ? require(require('path').resolve(process.env.UWS_ADDON))
  : require('@btc-vision/uwebsockets.js');

const port = Number(process.argv[2] || 9003);

const app = uWS.App().ws('/*', {
  compression: uWS.DISABLED,
  // Limits well above anything a case sends or queues, so none of them shapes a result:
  // uWS skips a subscriber whose queue is over maxBackpressure, which would count as lost.
  maxPayloadLength: 16 * 1024 * 1024,
  maxBackpressure: 64 * 1024 * 1024,
  idleTimeout: 0, // conns-* holds idle connections; nothing may close them
  message: (ws, data) => {
    let msg;
    try {
      // The ArrayBuffer lives only for this call: Buffer.from views it, toString copies.
      msg = JSON.parse(Buffer.from(data).toString());
    } catch {
      return;
    }
    if (msg.action === 'echo') {
      ws.send(JSON.stringify({ id: msg.id, result: msg.data }));
    } else if (msg.action === 'subscribe') {
      ws.subscribe(String(msg.channel));
      ws.send(JSON.stringify({ action: 'subscribed', channel: msg.channel }));
    } else if (msg.action === 'publish') {
      const out = JSON.stringify({ action: 'message', channel: msg.channel, data: msg.data });
      app.publish(String(msg.channel), out);
    }
  },
  // A closed socket leaves its topics by itself: no bookkeeping here.
});

app.listen('127.0.0.1', port, (listening) => {
  if (!listening) {
    console.error(`uws: cannot listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
});
