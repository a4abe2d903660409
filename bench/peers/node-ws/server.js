// A Node.js server on the `ws` library, speaking the plain JSON bench protocol (see
// bench/floor/src/main.rs): echo, subscribe, publish. A publication is serialised once and
// sent to every subscriber. Usage: node server.js PORT (listens on 127.0.0.1).
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 9002);
const channels = new Map(); // channel -> Set of sockets
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });

wss.on('connection', (ws) => {
  const joined = new Set();
  ws.on('message', (data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.action === 'echo') {
      ws.send(JSON.stringify({ id: msg.id, result: msg.data }));
    } else if (msg.action === 'subscribe') {
      if (!channels.has(msg.channel)) channels.set(msg.channel, new Set());
      channels.get(msg.channel).add(ws);
      joined.add(msg.channel);
      ws.send(JSON.stringify({ action: 'subscribed', channel: msg.channel }));
    } else if (msg.action === 'publish') {
      const subscribers = channels.get(msg.channel);
      if (!subscribers) return;
      const out = JSON.stringify({ action: 'message', channel: msg.channel, data: msg.data });
      for (const s of subscribers) s.send(out);
    }
  });
  ws.on('close', () => {
    for (const channel of joined) channels.get(channel)?.delete(ws);
  });
});
