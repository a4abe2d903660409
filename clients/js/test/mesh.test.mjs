// The relay mesh from TypeScript, against real `plexus relay` processes: a provider that
// provides again by itself after the relay comes back, waiting for a service, watching the
// providers, and a node id another connection holds.

import assert from "node:assert/strict";
import { test } from "node:test";

import { connectTo, startServer, within } from "./helpers.mjs";

const fast = { initialDelay: 20, maxDelay: 100 };

test("a provider provides again after each reconnect; callers wait for the service", async (t) => {
  const relay = await startServer({ command: "relay" });
  const provider = await connectTo(relay.url, {
    provide: { node: "js-prov", services: ["Mesh"] },
    reconnect: fast,
  });
  t.after(() => provider.close());
  provider.handle("Mesh.hi", (name) => `hi, ${name}`);
  const caller = await connectTo(relay.url, { reconnect: fast });
  t.after(() => caller.close());

  await caller.waitForService("Mesh", { timeout: 5000 });
  assert.equal(await caller.request("Mesh.hi", "Ada"), "hi, Ada");
  assert.deepEqual(await caller.services(), [{ node: "js-prov", services: ["Mesh"] }]);

  await relay.kill();
  const again = await startServer({ command: "relay", listen: `127.0.0.1:${relay.port}` });
  t.after(() => again.stop());
  // Nobody asked the provider to: it provided again after its new `welcome`.
  await caller.waitForService("Mesh", { timeout: 10_000 });
  assert.equal(await caller.request("Mesh.hi", "Bob"), "hi, Bob");
});

test("waiting for a service nobody provides times out; a signal cancels it", async (t) => {
  const relay = await startServer({ command: "relay" });
  t.after(() => relay.stop());
  const caller = await connectTo(relay.url);
  t.after(() => caller.close());
  await assert.rejects(caller.waitForService("Nobody", { timeout: 200 }), (e) => e.code === "TIMEOUT");
  const abort = new AbortController();
  const waiting = caller.waitForService("Nobody", { timeout: 5000, signal: abort.signal });
  abort.abort();
  await assert.rejects(waiting, (e) => e.code === "CANCELLED");
});

test("watching the providers: the list, then each one online and offline", async (t) => {
  const relay = await startServer({ command: "relay" });
  t.after(() => relay.stop());
  const watcher = await connectTo(relay.url);
  t.after(() => watcher.close());
  const watch = watcher.watchServices();
  assert.deepEqual((await within("the first list", watch.next())).value, []);

  const provider = await connectTo(relay.url, { provide: { node: "w-1", services: ["Watched"] } });
  assert.deepEqual((await within("online", watch.next())).value, {
    online: { node: "w-1", services: ["Watched"] },
  });
  provider.close();
  assert.deepEqual((await within("offline", watch.next())).value, { offline: { node: "w-1" } });
  watch.cancel();
});

test("a node id another live connection holds is refused with CONFLICT", async (t) => {
  const relay = await startServer({ command: "relay" });
  t.after(() => relay.stop());
  const first = await connectTo(relay.url, { provide: { node: "same", services: ["A"] } });
  t.after(() => first.close());
  await first.waitForService("A", { timeout: 5000 });
  const second = await connectTo(relay.url);
  t.after(() => second.close());
  const conflict = await second.request("$provide", { node: "same", services: ["B"] }).catch((e) => e);
  assert.equal(conflict.code, "CONFLICT");
  // The same through the option, reported to onProvided (registered before the answer can
  // come: `connectTo` resolves at `welcome`, the `$provide` goes out after it).
  const third = await connectTo(relay.url, { provide: { node: "same", services: ["C"] } });
  t.after(() => third.close());
  const outcome = await within("the refusal", new Promise((resolve) => third.onProvided(resolve)));
  assert.equal(outcome.code, "CONFLICT");
});
