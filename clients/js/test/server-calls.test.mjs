// Calls the server makes to this client, served by its handlers: through a real
// `plexus relay`, a second client's calls of `Js.*` become the relay's calls to the client
// that provides the service (requests, errors, notifications, streams paced by credit, and
// `cancel` when the caller gives up).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PlexusError } from "../dist/index.js";
import { connectTo, startServer, within } from "./helpers.mjs";

let relay;
let provider;
let caller;
let noted;
let started;
let cancelled;

before(async () => {
  relay = await startServer({ command: "relay" });
  provider = await connectTo(relay.url);
  let onCancel;
  let onStart;
  let onNote;
  cancelled = new Promise((resolve) => (onCancel = resolve));
  started = new Promise((resolve) => (onStart = resolve));
  noted = new Promise((resolve) => (onNote = resolve));
  provider
    .handle("Js.greet", (name) => `hello, ${name}`)
    .handle("Js.fail", () => {
      throw new PlexusError("VALIDATION_ERROR", "no such name", { path: "name" });
    })
    .handle("Js.crash", () => {
      throw new Error("a secret the caller must not see");
    })
    .handle("Js.unencodable", () => ({ n: 1n }))
    .handle(
      "Js.slow",
      (_, ctx) =>
        new Promise((resolve) => {
          onStart();
          ctx.signal.addEventListener("abort", () => {
            onCancel(ctx.signal.reason);
            resolve(null);
          });
        }),
    )
    .handleStream("Js.count", async function* ({ n }) {
      for (let i = 0; i < n; i++) yield i;
    })
    .onNotification("Js.note", (params) => onNote(params));
  const provided = await provider.request("$provide", { node: "js-1", services: ["Js"] });
  assert.deepEqual(provided, { node: "js-1" });
  caller = await connectTo(relay.url, { streamWindow: 8 });
});

after(async () => {
  caller.close();
  provider.close();
  await relay.stop();
});

test("a request from the server is answered by the client's handler", async () => {
  assert.equal(await caller.request("Js.greet", "Ada"), "hello, Ada");
  assert.equal(await caller.request("Js.greet", "Bob", { node: "js-1" }), "hello, Bob");
});

test("a handler's PlexusError reaches the caller as it was thrown; other failures are INTERNAL", async () => {
  const failed = await caller.request("Js.fail", null).catch((e) => e);
  assert.equal(failed.code, "VALIDATION_ERROR");
  assert.equal(failed.message, "no such name");
  assert.deepEqual(failed.data, { path: "name" });
  const crashed = await caller.request("Js.crash", null).catch((e) => e);
  assert.equal(crashed.code, "INTERNAL");
  assert.doesNotMatch(crashed.message, /secret/);
  const unencodable = await caller.request("Js.unencodable", null).catch((e) => e);
  assert.equal(unencodable.code, "INTERNAL");
  const unknown = await caller.request("Js.nope", null).catch((e) => e);
  assert.equal(unknown.code, "NOT_FOUND");
});

test("a notification reaches the client's handler", async () => {
  caller.notify("Js.note", { text: "fyi" });
  assert.deepEqual(await within("the notification", noted), { text: "fyi" });
});

test("a stream served by the client arrives in order through the relay's credit", async () => {
  const items = [];
  for await (const item of caller.stream("Js.count", { n: 500 })) items.push(item);
  assert.deepEqual(items, Array.from({ length: 500 }, (_, i) => i));
});

test("a caller that gives up cancels the handler's call: its AbortSignal fires", async () => {
  const abort = new AbortController();
  const call = caller.request("Js.slow", null, { signal: abort.signal }).catch((e) => e);
  await within("the call to reach the provider", started);
  abort.abort();
  assert.equal((await call).code, "CANCELLED");
  const reason = await within("the provider's call to be cancelled", cancelled);
  assert.equal(reason.code, "CANCELLED");
});
