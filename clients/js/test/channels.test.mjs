// Channels on a real `plexus serve` (its demo:* namespace: history 100, presence, client
// publish): publications, presence, history, recovery after the server drops the
// connection, and a slow reader that lags and catches up from the history.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client } from "../dist/index.js";
import { api, connectTo, options, startServer, within } from "./helpers.mjs";

const KEY = "a-test-api-key";
let server;
before(async () => {
  server = await startServer({ args: ["--api-key", KEY] });
});
after(async () => {
  await server.stop();
});

/** The next `count` events of `sub` that are publications, and every other event seen. */
async function publications(sub, count) {
  const offsets = [];
  const data = [];
  const others = [];
  while (offsets.length < count) {
    const { value, done } = await within(`publication ${offsets.length + 1} of ${count}`, sub.next());
    assert.ok(!done, "the subscription ended");
    if (value.type === "publication") {
      offsets.push(value.offset);
      data.push(value.data);
    } else others.push(value);
  }
  return { offsets, data, others };
}

test("a publication reaches every subscriber, with its offset, and presence is told", async () => {
  const alice = await connectTo(server.url);
  const bob = await connectTo(server.url);
  const room = await alice.join("demo:room-1");
  const bobs = await bob.join("demo:room-1");
  const joined = await within("alice to see bob join", room.next());
  assert.equal(joined.value.type, "join");
  assert.equal(joined.value.member.conn, bob.conn);

  const position = await bob.publish("demo:room-1", { text: "hi" });
  for (const sub of [room, bobs]) {
    const { offsets, data } = await publications(sub, 1);
    assert.deepEqual(offsets, [position.offset]);
    assert.deepEqual(data, [{ text: "hi" }]);
  }
  const members = await alice.presence("demo:room-1");
  assert.deepEqual(members.map((m) => m.conn).sort(), [alice.conn, bob.conn].sort());
  const history = await alice.history("demo:room-1");
  assert.deepEqual(history.pubs, [{ o: position.offset, d: { text: "hi" } }]);

  await bobs.leave();
  const left = await within("alice to see bob leave", room.next());
  assert.equal(left.value.type, "leave");
  const forbidden = await alice.join("nowhere:1").catch((e) => e);
  assert.equal(forbidden.code, "NOT_FOUND");
  alice.close();
  bob.close();
});

test("after the server drops the connection, the client joins again and recovers what it missed", async () => {
  const carol = await connectTo(server.url, { reconnect: { initialDelay: 50, maxDelay: 200 } });
  const sub = await carol.join("demo:recover");
  await api(server.http, KEY, "/api/publish", { channel: "demo:recover", data: 1 });
  assert.deepEqual((await publications(sub, 1)).data, [1]);

  const statuses = [];
  carol.onStatus((status) => statuses.push(status));
  const firstConn = carol.conn;
  await api(server.http, KEY, "/api/disconnect", { conn: firstConn });
  // Published while carol is away (or just back: recovery covers both).
  for (const n of [2, 3, 4]) await api(server.http, KEY, "/api/publish", { channel: "demo:recover", data: n });
  const { data, others } = await publications(sub, 3);
  assert.deepEqual(data, [2, 3, 4], "each exactly once, in order");
  assert.ok(
    others.some((e) => e.type === "resubscribed" && e.recovered === true),
    JSON.stringify(others),
  );
  assert.notEqual(carol.conn, firstConn);
  assert.deepEqual(statuses.slice(0, 2), ["reconnecting", "connected"]);
  carol.close();
});

test("a reader that falls behind lags, then catches up from the history without gaps", async () => {
  const dave = await connectTo(server.url, { channelBuffer: 4 });
  const sub = await dave.join("demo:lag");
  for (let n = 1; n <= 30; n++) await dave.publish("demo:lag", n);
  const { data, others } = await publications(sub, 30);
  assert.deepEqual(data, Array.from({ length: 30 }, (_, i) => i + 1));
  // It did fall behind: what did not fit came back through a join from its position.
  assert.ok(others.some((e) => e.type === "resubscribed" && e.recovered), JSON.stringify(others));
  dave.close();
});

test("a join made before the session opens is sent when it does", async () => {
  const erin = new Client(server.url, options());
  const joining = erin.join("demo:early");
  assert.equal(erin.status, "connecting");
  const sub = await within("the early join", joining);
  await erin.publish("demo:early", "first");
  assert.deepEqual((await publications(sub, 1)).data, ["first"]);
  erin.close();
  await assert.rejects(erin.join("demo:late"), (e) => e.code === "CLOSED");
});

test("a join with a filter receives only the publications that match it", async () => {
  const frank = await connectTo(server.url);
  const sub = await frank.join("demo:filtered", { filter: { kind: "chat" } });
  for (const data of [{ kind: "chat", n: 1 }, { kind: "other", n: 2 }, { kind: "chat", n: 3 }]) {
    await frank.publish("demo:filtered", data);
  }
  const { data, offsets } = await publications(sub, 2);
  assert.deepEqual(data, [{ kind: "chat", n: 1 }, { kind: "chat", n: 3 }]);
  assert.deepEqual(offsets, [1, 3]);
  const refused = await frank.join("demo:filtered-badly", { filter: "not an object" }).catch((e) => e);
  assert.equal(refused.code, "VALIDATION_ERROR");
  frank.close();
});

test("channels the server subscribes the connection to arrive on serverSubscriptions()", async () => {
  const gina = await connectTo(server.url);
  const events = gina.serverSubscriptions();
  await api(server.http, KEY, "/api/subscribe", { conn: gina.conn, channel: "demo:news" });
  const subscribed = (await within("joined", events.next())).value;
  assert.equal(subscribed.channel, "demo:news");
  assert.equal(subscribed.event.type, "subscribed");
  await api(server.http, KEY, "/api/publish", { channel: "demo:news", data: { headline: "hi" } });
  const published = (await within("the publication", events.next())).value;
  assert.deepEqual(published, {
    channel: "demo:news",
    event: { type: "publication", offset: published.event.offset, data: { headline: "hi" } },
  });
  assert.ok(published.event.offset > subscribed.event.position.offset);
  await api(server.http, KEY, "/api/unsubscribe", { conn: gina.conn, channel: "demo:news" });
  assert.deepEqual((await within("left", events.next())).value, { channel: "demo:news", event: { type: "closed" } });
  gina.close();
  assert.equal((await events.next()).done, true, "the stream ends with the client");
});
