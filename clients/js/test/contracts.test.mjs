// Typed contracts across the Rust/TypeScript line, with the chat example (examples/chat): the
// TypeScript its server's `$contracts` generates (web/contracts.ts) compiles with the page and
// a small program that use it right, and refuses a program that uses it wrong, at every
// misuse; at run time, Node members and the page in real Chromium talk to the Rust room
// through the generated descriptors, in both directions.

import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

import { build } from "esbuild";
import { chromium } from "playwright-core";

import { connectTo, startServer, within } from "./helpers.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const out = join(here, "../test-output");
const tsc = join(here, "../node_modules/.bin/tsc");
const strict = ["--noEmit", "--strict", "--skipLibCheck", "--target", "ES2022", "--module", "NodeNext"];
const executablePath =
  process.env.PLEXUS_CHROMIUM ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));

/** The chat example's binary: CHAT_BIN, or the workspace's debug build (built if missing). */
function chatBinary() {
  if (process.env.CHAT_BIN) return process.env.CHAT_BIN;
  const bin = join(process.env.CARGO_TARGET_DIR ?? join(root, "target"), "debug", "chat");
  if (!existsSync(bin)) {
    execFileSync("cargo", ["build", "-q", "-p", "plexus-example-chat"], { cwd: root, stdio: "inherit" });
  }
  return bin;
}

let chat;
let Chat;
let Member;
before(async () => {
  mkdirSync(out, { recursive: true });
  const child = spawn(chatBinary(), ["serve", "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "inherit"] });
  const http = await new Promise((resolveUrl, reject) => {
    let seen = "";
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      seen += chunk;
      const found = seen.match(/http:\/\/[^\s/]+/);
      if (found) resolveUrl(found[0]);
    });
    child.on("exit", (code) => reject(new Error(`chat exited (${code}): ${seen}`)));
  });
  const stopped = new Promise((done) => child.on("exit", done));
  chat = {
    http,
    url: `${http.replace("http://", "ws://")}/ws`,
    stop: async () => {
      child.kill("SIGTERM");
      await stopped;
    },
  };
  // The generated module, as JavaScript (its imports are types only).
  const result = await build({ entryPoints: [join(root, "examples/chat/web/contracts.ts")], format: "esm", write: false });
  const file = join(out, "chat-contracts.mjs");
  writeFileSync(file, result.outputFiles[0].text);
  ({ Chat, Member } = await import(pathToFileURL(file).href));
});
after(() => chat?.stop());

test("the generated contracts compile with the page and programs that use them right", () => {
  const page = spawnSync(tsc, ["-p", join(root, "examples/chat/web/tsconfig.json")], { encoding: "utf8" });
  assert.equal(page.status, 0, page.stdout);
  // right.ts uses the chat's; shapes.ts is every serde shape the generator knows (its Rust
  // unit test keeps it current).
  const files = ["contracts/right.ts", "contracts/shapes.ts"].map((f) => join(here, f));
  const right = spawnSync(tsc, [...strict, ...files], { encoding: "utf8" });
  assert.equal(right.status, 0, right.stdout);
});

test("a program that uses them wrong fails to compile at each misuse, and only there", () => {
  const file = join(here, "contracts/wrong.ts");
  const expected = new Map();
  readFileSync(file, "utf8")
    .split("\n")
    .forEach((line, i) => {
      const marked = line.match(/\/\/ error (TS\d+)$/);
      if (marked) expected.set(i + 1, marked[1]);
    });
  assert.ok(expected.size >= 8, "the misuses are marked");
  const run = spawnSync(tsc, [...strict, file], { encoding: "utf8" });
  assert.notEqual(run.status, 0, "wrong.ts compiled");
  const found = new Map();
  for (const [, line, code] of run.stdout.matchAll(/wrong\.ts\((\d+),\d+\): error (TS\d+)/g)) {
    found.set(Number(line), code);
  }
  assert.deepEqual(found, expected, run.stdout);
});

test("a request's own timeout is its stub's default, and the caller's own timeout wins", async () => {
  const server = await startServer();
  const client = await connectTo(server.url);
  try {
    // As `plexus codegen ts` writes a method with `#[timeout_ms = 100]`.
    const Sys = {
      name: "sys",
      servedBy: "server",
      methods: { sleep: { kind: "request", name: "sys.sleep", timeout: 100 } },
    };
    const sys = client.contract(Sys);
    await assert.rejects(sys.sleep({ ms: 1000 }), (e) => e.code === "TIMEOUT");
    assert.deepEqual(await sys.sleep({ ms: 300 }, { timeout: 5000 }), { slept: 300 });
    assert.deepEqual(await sys.sleep({ ms: 1 }), { slept: 1 });
  } finally {
    client.close();
    await server.stop();
  }
});

/** A Node member: the typed `Member` handlers record what the server calls. */
async function member(name, status = "here") {
  const heard = [];
  const client = await connectTo(chat.url);
  client.serve(Member, {
    newMessage: (message) => void heard.push(message),
    typing: (who) => void heard.push({ typing: who }),
    areYouThere: () => status,
  });
  const room = client.contract(Chat);
  await room.join(name);
  return { client, room, heard };
}

test("Node members call the Rust room and serve what it calls on them", async () => {
  const ada = await member("ada");
  const bob = await member("bob", "away");
  try {
    const sent = await ada.room.send({ text: "hello bob" });
    assert.equal(sent.from, "ada");
    const arrived = (m) => m.id === sent.id && m.text === "hello bob";
    await within("bob's newMessage", waitFor(() => bob.heard.some(arrived)));
    await within("ada's own newMessage", waitFor(() => ada.heard.some(arrived)));
    bob.room.typing();
    await within("ada told bob types", waitFor(() => ada.heard.some((h) => h.typing === "bob")));
    assert.deepEqual(
      (await ada.room.who()).filter((p) => ["ada", "bob"].includes(p.name)),
      [
        { name: "ada", status: "here" },
        { name: "bob", status: "away" },
      ],
    );
    assert.equal(await bob.room.markRead({ upTo: sent.id }), 0);
    // A contract served twice on one client is refused, never a silent override.
    const again = { newMessage: () => {}, typing: () => {}, areYouThere: () => "here" };
    assert.throws(() => ada.client.serve(Member, again), /`member.newMessage` is served already/);
    // The contract's own error codes and data.
    await assert.rejects(bob.room.join("ada"), (e) => e.code === "CONFLICT" && e.data?.name === "ada");
    await assert.rejects(ada.room.send({ text: "" }), (e) => e.code === "VALIDATION_ERROR" && e.data?.max === 500);
    const later = [];
    for await (const message of ada.room.history(sent.id - 1)) later.push(message.text);
    assert.deepEqual(later.slice(0, 1), ["hello bob"]);
  } finally {
    ada.client.close();
    bob.client.close();
  }
});

test("the chat page in Chromium talks with a Node member through the same contracts", async () => {
  assert.ok(executablePath, "Chromium is needed: apt-get install chromium (or set PLEXUS_CHROMIUM)");
  const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
  const node = await member("node");
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 500 } });
    const errors = [];
    page.on("pageerror", (error) => errors.push(error.message));
    await page.goto(`${chat.http}/`);
    await page.waitForFunction(() => window.chat !== undefined, null, { timeout: 5000 });
    await page.fill("#name", "browser");
    await page.press("#name", "Enter");
    await page.waitForSelector("#compose", { state: "visible", timeout: 5000 });
    assert.equal(await page.isVisible("#join"), false);
    await node.room.send({ text: "hello page" });
    await page.waitForFunction(() => document.querySelector("#messages").innerText.includes("hello page"), null, {
      timeout: 5000,
    });
    await page.fill("#text", "hello node");
    await page.press("#text", "Enter");
    await within("the page's message at the Node member", waitFor(() => node.heard.some((m) => m.text === "hello node" && m.from === "browser")));
    // The server asks the page whether it is there; the page answers through its handler.
    const present = await node.room.who();
    assert.deepEqual(
      present.find((p) => p.name === "browser"),
      { name: "browser", status: "here" },
    );
    await page.click("#who-button");
    await page.waitForFunction(() => document.querySelector("#who").innerText.includes("node (here)"), null, {
      timeout: 5000,
    });
    await page.screenshot({ path: join(out, "chat.png") });
    assert.deepEqual(errors, []);
  } finally {
    node.client.close();
    await browser.close();
  }
});

/** Resolves once `predicate()` holds (checked as events arrive: every 10 ms). */
function waitFor(predicate) {
  return new Promise((done) => {
    const check = () => (predicate() ? done() : setTimeout(check, 10));
    check();
  });
}
