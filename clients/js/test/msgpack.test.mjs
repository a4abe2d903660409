// plexus.v1.msgpack from TypeScript (with @msgpack/msgpack), against a real `plexus serve`
// and `plexus relay`: binary values keep their bytes, and a MessagePack client shares
// channels and calls with a JSON one.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { decode, encode } from "@msgpack/msgpack";

import { connectTo, startServer, within } from "./helpers.mjs";

const msgpack = { encode, decode };
let server;
let relay;
before(async () => {
  server = await startServer();
  relay = await startServer({ command: "relay" });
});
after(async () => {
  await server.stop();
  await relay.stop();
});

test("requests and streams in MessagePack; bytes stay bytes", async () => {
  const client = await connectTo(server.url, { msgpack });
  const bytes = new Uint8Array([0, 1, 2, 254, 255]);
  const echoed = await client.request("sys.echo", { bytes, n: 1.5, big: 2 ** 40 });
  assert.deepEqual(echoed, { bytes, n: 1.5, big: 2 ** 40 });
  const items = [];
  for await (const item of client.stream("sys.count", { n: 100 })) items.push(item);
  assert.deepEqual(items, Array.from({ length: 100 }, (_, i) => i));
  const missing = await client.request("no.such").catch((e) => e);
  assert.equal(missing.code, "NOT_FOUND");
  client.close();
});

test("a MessagePack subscriber and a JSON publisher share a channel", async () => {
  const packed = await connectTo(server.url, { msgpack });
  const plain = await connectTo(server.url);
  const sub = await packed.join("demo:mixed");
  const position = await plain.publish("demo:mixed", { text: "from JSON", list: [1, 2] });
  const { value } = await within("the publication", sub.next());
  assert.deepEqual(value, { type: "publication", offset: position.offset, data: { text: "from JSON", list: [1, 2] } });
  packed.close();
  plain.close();
});

test("a MessagePack provider serves a JSON caller through the relay", async () => {
  const provider = await connectTo(relay.url, { msgpack, provide: { node: "mp-1", services: ["Pack"] } });
  provider.handle("Pack.sum", (numbers) => numbers.reduce((a, b) => a + b, 0));
  const caller = await connectTo(relay.url);
  await caller.waitForService("Pack", { timeout: 5000 });
  assert.equal(await caller.request("Pack.sum", [1, 2, 3.5]), 6.5);
  provider.close();
  caller.close();
});
