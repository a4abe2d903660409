// The page `plexus serve` shows at `/`, in real headless Chromium (Debian's `chromium`, driven
// by playwright-core; nothing downloaded): two tabs chat, a tab whose connection is cut comes
// back and shows what it missed, a stream in the page is cancelled by an AbortSignal and the
// server sees it, and the dashboard's numbers move and list the node. Screenshots go to
// test-output/.

import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { after, before, test } from "node:test";

import { chromium } from "playwright-core";

import { api, metric, startServer } from "./helpers.mjs";

const KEY = "a-browser-test-key";
const out = new URL("../test-output/", import.meta.url).pathname;
const executablePath =
  process.env.PLEXUS_CHROMIUM ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));

let server;
let browser;
before(async () => {
  assert.ok(executablePath, "Chromium is needed: apt-get install chromium (or set PLEXUS_CHROMIUM)");
  mkdirSync(out, { recursive: true });
  server = await startServer({ args: ["--api-key", KEY] });
  browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

async function open() {
  const page = await browser.newPage({ viewport: { width: 1200, height: 640 } });
  page.on("pageerror", (error) => console.error(`# page error: ${error.message}`));
  await page.goto(`${server.http}/`);
  await page.evaluate(() => window.plexus.ready);
  return page;
}

const say = async (page, text) => {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
};
const shows = (page, text) =>
  page.waitForFunction((t) => document.querySelector("#messages").innerText.includes(t), text, {
    timeout: 5000,
  });

test("two tabs chat, see each other, and a cut tab comes back with what it missed", async () => {
  // Anyone may publish anything to demo:chat: what is not a chat line must not break a page.
  for (const data of [null, { who: 1 }, "just text", { who: "<b>x</b>", text: "<img src=x onerror=alert(1)>" }]) {
    await api(server.http, KEY, "/api/publish", { channel: "demo:chat", data });
  }
  const alice = await open();
  await shows(alice, "<img src=x onerror=alert(1)>"); // shown as text, not run
  assert.equal(await alice.evaluate(() => document.querySelectorAll("#messages img").length), 0);
  const bob = await open();
  await say(alice, "hello from alice");
  await shows(bob, "hello from alice");
  await say(bob, "hi alice");
  await shows(alice, "hi alice");
  const bobConn = await bob.evaluate(() => window.plexus.client.conn);
  await alice.waitForFunction((conn) => document.querySelector("#members").innerText.includes(conn.slice(-6)), bobConn, {
    timeout: 5000,
  });

  await api(server.http, KEY, "/api/disconnect", { conn: bobConn });
  await say(alice, "said while bob was cut off");
  await shows(bob, "said while bob was cut off");
  await bob.waitForFunction(() => document.querySelector("#status").textContent === "connected", null, {
    timeout: 5000,
  });
  const count = await bob.evaluate(
    () => document.querySelector("#messages").innerText.split("said while bob was cut off").length - 1,
  );
  assert.equal(count, 1, "shown exactly once");
  assert.notEqual(await bob.evaluate(() => window.plexus.client.conn), bobConn, "a new connection");
  await alice.screenshot({ path: `${out}chat.png` });
  await alice.close();
  await bob.close();
});

test("a stream in the page is cancelled by an AbortSignal and the server sees the cancel", async () => {
  const page = await open();
  const key = 'plexus_calls_total{method="sys.count",outcome="cancelled"}';
  const before = await metric(server.http, key);
  const seen = await page.evaluate(async () => {
    const abort = new AbortController();
    const items = [];
    try {
      for await (const n of window.plexus.client.stream("sys.count", { n: 1000000, interval_ms: 1 }, { signal: abort.signal })) {
        items.push(n);
        if (n === 2) abort.abort();
      }
    } catch {}
    return items;
  });
  assert.deepEqual(seen.slice(0, 3), [0, 1, 2]);
  const deadline = Date.now() + 5000;
  while ((await metric(server.http, key)) !== before + 1) {
    assert.ok(Date.now() < deadline, "the server did not count the cancel");
    await new Promise((wake) => setTimeout(wake, 20));
  }
  await page.close();
});

test("the dashboard's numbers move", async () => {
  const page = await open();
  const other = await open();
  await page.waitForFunction(() => Number(document.querySelector("#connections").textContent) >= 2, null, {
    timeout: 5000,
  });
  for (let i = 0; i < 20; i++) await other.evaluate(() => window.plexus.client.request("sys.echo", 1));
  await page.waitForFunction(() => Number(document.querySelector("#calls").textContent) > 0, null, {
    timeout: 5000,
  });
  // The node list: this server, marked as the one the page came from.
  const nodes = await page.waitForFunction(() => document.querySelector("#nodes .self")?.textContent, null, {
    timeout: 5000,
  });
  const cluster = await (await fetch(`${server.http}/health/cluster`)).json();
  assert.equal(await nodes.jsonValue(), cluster.node);
  await page.screenshot({ path: `${out}dashboard.png` });
  await other.close();
  await page.close();
});
