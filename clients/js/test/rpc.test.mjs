// Calls to a real `plexus serve`: requests, errors as the server sent them, deadlines,
// AbortSignal, notifications, streams with credit and cancel, the offline queue.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";

import { Client, PlexusError } from "../dist/index.js";
import { connectTo, metric, options, startServer, until, within } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.stop();
});

test("a request is answered with the value it sent", async () => {
  const client = await connectTo(server.url);
  assert.deepEqual(await client.request("sys.echo", { text: "hi", n: [1, 2] }), { text: "hi", n: [1, 2] });
  assert.equal(await client.request("sys.echo"), null);
  assert.match(client.conn, /.+/);
  client.close();
});

test("errors keep the server's code, message and data", async () => {
  const client = await connectTo(server.url);
  const missing = await client.request("no.such").catch((e) => e);
  assert.ok(missing instanceof PlexusError);
  assert.equal(missing.code, "NOT_FOUND");
  const invalid = await client.request("sys.sleep", { ms: "soon" }).catch((e) => e);
  assert.equal(invalid.code, "VALIDATION_ERROR");
  assert.deepEqual(invalid.data, { path: "ms" });
  client.close();
});

test("a deadline fails the call with TIMEOUT and cancels it on the server", async () => {
  const client = await connectTo(server.url);
  const before = await metric(server.http, 'plexus_calls_total{method="sys.sleep",outcome="cancelled"}');
  const late = await client.request("sys.sleep", { ms: 5000 }, { timeout: 50 }).catch((e) => e);
  assert.equal(late.code, "TIMEOUT");
  await until("the server to count the cancel", async () =>
    (await metric(server.http, 'plexus_calls_total{method="sys.sleep",outcome="cancelled"}')) === before + 1,
  );
  client.close();
});

test("an AbortSignal cancels a request", async () => {
  const client = await connectTo(server.url);
  const abort = new AbortController();
  const call = client.request("sys.sleep", { ms: 5000 }, { signal: abort.signal });
  abort.abort();
  const error = await call.catch((e) => e);
  assert.equal(error.code, "CANCELLED");
  // The connection serves on.
  assert.equal(await client.request("sys.echo", 1), 1);
  client.close();
});

test("a notification of an unknown method is reported without an id", async () => {
  const client = await connectTo(server.url);
  const reported = new Promise((resolve) => client.onError(resolve));
  client.notify("no.such", { x: 1 });
  const error = await within("the error", reported);
  assert.equal(error.code, "NOT_FOUND");
  client.close();
});

test("a stream's items arrive in order, paced by credit", async () => {
  const client = await connectTo(server.url, { streamWindow: 8 });
  const items = [];
  for await (const item of client.stream("sys.count", { n: 300 })) items.push(item);
  assert.deepEqual(items, Array.from({ length: 300 }, (_, i) => i));
  client.close();
});

test("leaving a stream early, or aborting it, cancels it on the server", async () => {
  const client = await connectTo(server.url);
  const key = 'plexus_calls_total{method="sys.count",outcome="cancelled"}';
  const before = await metric(server.http, key);
  for await (const item of client.stream("sys.count", { n: 1000000, interval_ms: 1 })) {
    if (item === 3) break;
  }
  await until("the first cancel", async () => (await metric(server.http, key)) === before + 1);

  const abort = new AbortController();
  const seen = [];
  const stream = client.stream("sys.count", { n: 1000000, interval_ms: 1 }, { signal: abort.signal });
  for await (const item of stream) {
    seen.push(item);
    if (item === 2) abort.abort();
  }
  assert.deepEqual(seen.slice(0, 3), [0, 1, 2]);
  await until("the second cancel", async () => (await metric(server.http, key)) === before + 2);
  client.close();
});

test("calls made before the session opens wait in the offline queue, which is bounded", async () => {
  const client = new Client(server.url, options({ offlineQueue: 2 }));
  const first = client.request("sys.echo", "queued");
  client.notify("sys.echo", "also queued");
  const third = await client.request("sys.echo", "one too many").catch((e) => e);
  assert.equal(third.code, "QUEUE_FULL");
  assert.throws(() => client.notify("sys.echo", "full"), (e) => e.code === "QUEUE_FULL");
  assert.equal(await first, "queued");
  assert.equal(client.status, "connected");
  client.close();
  assert.equal(client.status, "closed");
  await assert.rejects(client.request("sys.echo", 1), (e) => e.code === "CLOSED");
});

test("params JSON cannot hold fail the call at once, before anything is sent", async () => {
  const client = await connectTo(server.url);
  const error = await client.request("sys.echo", { n: 1n }).catch((e) => e);
  assert.equal(error.code, "VALIDATION_ERROR");
  assert.throws(() => client.notify("sys.echo", { n: 1n }), (e) => e.code === "VALIDATION_ERROR");
  assert.equal(await client.request("sys.echo", "fine"), "fine");
  client.close();
});

test("a stream whose signal is already aborted is cancelled without being sent", async () => {
  const client = await connectTo(server.url);
  const key = 'plexus_calls_total{method="sys.count",outcome="ok"}';
  const before = await metric(server.http, key);
  const abort = new AbortController();
  abort.abort();
  const stream = client.stream("sys.count", { n: 3 }, { signal: abort.signal });
  await assert.rejects(stream.next(), (e) => e.code === "CANCELLED");
  // The next stream is the server's next one: nothing ran for the first.
  const items = [];
  for await (const item of client.stream("sys.count", { n: 3 })) items.push(item);
  assert.deepEqual(items, [0, 1, 2]);
  assert.equal(await metric(server.http, key), before + 1);
  client.close();
});

test("close() stops everything: a client backing off lets Node exit at once", async () => {
  const script = `
    import WebSocket from "ws";
    import { Client } from "./dist/index.js";
    const client = new Client("ws://127.0.0.1:1/ws", {
      WebSocket,
      reconnect: { maxAttempts: 100, initialDelay: 60000, maxDelay: 60000 },
    });
    client.ready.catch(() => {});
    setTimeout(() => client.close(), 300);
  `;
  const started = Date.now();
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    cwd: new URL("..", import.meta.url),
    stdio: "inherit",
  });
  const code = await within("the script to exit", new Promise((done) => child.on("exit", done)), 10_000);
  assert.equal(code, 0);
  assert.ok(Date.now() - started < 5000, `exited after ${Date.now() - started} ms`);
});
