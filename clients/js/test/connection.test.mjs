// The connection's life against real servers: a server that dies and comes back on the same
// port, credentials fetched for every attempt, close codes that say not to come back, and
// the server's `$refresh` answered from the credentials hook.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";

import WebSocket from "ws";

import { Client, connect } from "../dist/index.js";
import { connectTo, options, plexusBinary, startServer, until, within } from "./helpers.mjs";

const SECRET = "a-js-test-secret-of-at-least-32-bytes";

function token(sub, ttl = "1h") {
  return execFileSync(plexusBinary(), ["token", "--secret", SECRET, "--sub", sub, "--ttl", ttl], {
    encoding: "utf8",
  }).trim();
}

test("a server that dies and comes back: calls in flight fail, the client reconnects and rejoins", async (t) => {
  const first = await startServer();
  const client = await connectTo(first.url, { reconnect: { initialDelay: 20, maxDelay: 100 } });
  t.after(() => client.close());
  const sub = await client.join("demo:restart");
  const statuses = [];
  client.onStatus((status) => statuses.push(status));

  const inFlight = client.request("sys.sleep", { ms: 10000 }).catch((e) => e);
  await first.kill();
  const lost = await within("the call in flight to fail", inFlight);
  assert.equal(lost.code, "UNAVAILABLE", "never resent on its own");
  assert.equal(client.status, "reconnecting");

  // A join made while reconnecting is answered once the client is back.
  const late = client.join("demo:late");
  const second = await startServer({ listen: `127.0.0.1:${first.port}` });
  await until("the client to reconnect", () => client.status === "connected", 10_000);
  assert.equal(await client.request("sys.echo", "back"), "back");
  assert.equal((await within("the late join", late)).channel, "demo:late");
  // A new server: a new epoch, so nothing could be recovered, and the client says so.
  const { value } = await within("the resubscription", sub.next());
  assert.equal(value.type, "resubscribed");
  assert.equal(value.recovered, false);
  assert.equal(statuses[0], "reconnecting");
  assert.equal(statuses.at(-1), "connected");
  await second.stop();
});

test("the credentials hook is asked before every attempt; a refused token stops the client", async () => {
  const server = await startServer({ args: ["--jwt-secret", SECRET] });
  let asked = 0;
  const client = await connectTo(server.url, {
    credentials: async () => {
      asked += 1;
      return token(`user-${asked}`);
    },
  });
  assert.equal(asked, 1);
  assert.equal(await client.request("sys.echo", 1), 1);
  client.close();

  const refused = await connectTo(server.url, { token: "not-a-token" }).catch((e) => e);
  assert.equal(refused.name, "ConnectError");
  assert.equal(refused.closeCode, 4001);
  assert.equal(refused.error?.code, "NOT_AUTHORIZED");

  const anonymous = new Client(server.url, options({ reconnect: { maxAttempts: 3, initialDelay: 10 } }));
  await anonymous.ready.catch(() => {});
  assert.equal(anonymous.status, "closed", "4001 without a credentials hook: no retry");
  assert.equal(anonymous.closeReason?.closeCode, 4001);
  await server.stop();
});

test("the server's $refresh is answered with a fresh token from the hook", async () => {
  const server = await startServer({ args: ["--jwt-secret", SECRET] });
  let asked = 0;
  const client = await connectTo(server.url, {
    // Short-lived tokens: the server asks for the next one half-way through.
    credentials: async () => {
      asked += 1;
      return token("refreshing", "4s");
    },
  });
  const conn = client.conn;
  await until("the server to ask for a refresh", () => asked >= 2, 10_000);
  // The connection lives past the first token's expiry, on the refreshed one.
  await new Promise((wake) => setTimeout(wake, 4500));
  assert.equal(client.conn, conn);
  assert.equal(client.status, "connected");
  assert.equal(await client.request("sys.echo", "still here"), "still here");
  client.close();
  await server.stop();
});

test("a server gone silent (half-open) is dropped after its heartbeat and the grace, then rejoined", async (t) => {
  const server = await startServer({ args: ["--heartbeat", "1s"] });
  const client = await connectTo(server.url, {
    heartbeatGrace: 500,
    reconnect: { initialDelay: 20, maxDelay: 100 },
  });
  t.after(() => client.close());
  const statuses = [];
  client.onStatus((status) => statuses.push(status));
  const silentSince = Date.now();
  server.child.kill("SIGSTOP"); // the process stays, its socket open: nothing answers
  t.after(() => server.child.kill("SIGCONT"));
  await until("the client to give the connection up", () => client.status === "reconnecting", 5000);
  assert.ok(Date.now() - silentSince >= 1000, "not before a heartbeat has passed");
  server.child.kill("SIGCONT");
  await until("the client to be back", () => client.status === "connected", 10_000);
  assert.equal(await client.request("sys.echo", "awake"), "awake");
  assert.deepEqual(statuses.slice(0, 1), ["reconnecting"]);
  await server.stop();
});

test("under Node the credential can go in a header; a refused one is HTTP 401, which stops the client", async (t) => {
  const server = await startServer({ args: ["--jwt-secret", SECRET] });
  t.after(() => server.stop());
  const client = await connectTo(server.url, { token: token("in-a-header"), tokenIn: "header" });
  assert.equal(await client.request("sys.echo", "authorized"), "authorized");
  client.close();
  const refused = await connectTo(server.url, { token: "not-a-token", tokenIn: "header" }).catch((e) => e);
  assert.equal(refused.name, "ConnectError");
  assert.match(refused.message, /HTTP 401/);
  assert.equal(refused.closeCode, 4001, "the same as a refusal in band");
  const inQuery = await connectTo(server.url, { token: token("in-the-query"), tokenIn: "query" });
  assert.equal(await inQuery.request("sys.echo", "by query"), "by query");
  inQuery.close();
});

test("by default the credential goes in a header where the WebSocket takes one, else in the hello", async (t) => {
  const server = await startServer({ args: ["--jwt-secret", SECRET] });
  t.after(() => server.stop());
  const opened = [];
  class Recording extends WebSocket {
    constructor(url, protocols, options) {
      opened.push({ url, headers: options?.headers });
      super(url, protocols, options);
    }
  }
  // Node's `ws`, passed: a header.
  const inHeader = await connect(server.url, { WebSocket: Recording, token: token("header") });
  assert.equal(await inHeader.request("sys.echo", "h"), "h");
  inHeader.close();
  assert.match(opened[0].headers?.authorization ?? "", /^Bearer /);
  // A WebSocket that is not `ws` (a browser's, a wrapper): no header, the hello carries it.
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = class Browserish {
    constructor(url, protocols, options) {
      opened.push({ url, headers: options?.headers });
      return new WebSocket(url, protocols);
    }
  };
  try {
    const inHello = await connect(server.url, { token: token("hello") });
    assert.equal(await inHello.request("sys.echo", "w"), "w");
    inHello.close();
  } finally {
    if (saved === undefined) delete globalThis.WebSocket;
    else globalThis.WebSocket = saved;
  }
  assert.equal(opened.length, 2);
  assert.equal(opened[1].headers, undefined);
  assert.doesNotMatch(opened[1].url, /token=/);
});

test("a header credential with a WebSocket that takes no headers is refused at once", () => {
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = class {}; // as in a browser or Node 22+
  try {
    assert.throws(
      () => new Client("ws://127.0.0.1:1/ws", { token: "t", tokenIn: "header" }),
      (e) => e.code === "VALIDATION_ERROR" && /takes headers/.test(e.message),
    );
  } finally {
    if (saved === undefined) delete globalThis.WebSocket;
    else globalThis.WebSocket = saved;
  }
});
