// Real plexus servers for the tests: the repository's `plexus` binary (built with cargo when
// it is missing, or taken from PLEXUS_BIN), started on a free loopback port per test.

import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { connect } from "../dist/index.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The `plexus` binary: PLEXUS_BIN, or the workspace's debug build (built if missing). */
export function plexusBinary() {
  if (process.env.PLEXUS_BIN) return process.env.PLEXUS_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? join(root, "target");
  const bin = join(target, "debug", "plexus");
  if (!existsSync(bin)) {
    execFileSync("cargo", ["build", "-q", "-p", "plexus", "--features", "cli", "--bin", "plexus"], {
      cwd: root,
      stdio: "inherit",
    });
  }
  return bin;
}

/** Node 20 has no global WebSocket: the tests hand the client `ws`'s. */
export const options = (extra = {}) => ({ WebSocket, ...extra });

export const connectTo = (url, extra = {}) => connect(url, options(extra));

/** Waits for `predicate()` to hold, polling every 10 ms, at most `ms`. */
export async function until(what, predicate, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((wake) => setTimeout(wake, 10));
  }
}

/** Rejects after `ms` unless `promise` settles first. */
export function within(what, promise, ms = 5000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * `plexus serve` (or `relay`) with `args` and, given `config`, a TOML file: resolves once it
 * listens, with its URL, its HTTP base and a `stop()`.
 */
export async function startServer({ command = "serve", args = [], config, listen = "127.0.0.1:0" } = {}) {
  const all = [command, "--listen", listen, ...args];
  if (config !== undefined) {
    const file = join(mkdtempSync(join(tmpdir(), "plexus-js-")), "plexus.toml");
    writeFileSync(file, config);
    all.push("--config", file);
  }
  const child = spawn(plexusBinary(), all, {
    env: { ...process.env, RUST_LOG: "info", PLEXUS_LOG_FORMAT: "text" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const url = await new Promise((resolveUrl, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new Error(`plexus ${command} did not start:\n${seen}`)), 60_000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      seen += chunk;
      const found = seen.match(/ws:\/\/[^\s\u001b]+/);
      if (found) {
        clearTimeout(timer);
        resolveUrl(found[0]);
      }
    });
    child.on("exit", (code) => reject(new Error(`plexus ${command} exited (${code}):\n${seen}`)));
  });
  child.stderr.resume();
  const http = url.replace("ws://", "http://").replace(/\/ws$/, "");
  const stopped = new Promise((done) => child.on("exit", done));
  return {
    url,
    http,
    port: Number(new URL(url).port),
    child,
    /** SIGKILL: no close frame, as a crash. */
    async kill() {
      child.kill("SIGKILL");
      await stopped;
    },
    async stop() {
      child.kill("SIGTERM");
      await stopped;
    },
  };
}

/** One sample of the server's /metrics, or 0 when it has none yet. */
export async function metric(http, key) {
  const body = await (await fetch(`${http}/metrics`)).text();
  for (const line of body.split("\n")) {
    if (line.startsWith(`${key} `)) return Number(line.slice(key.length + 1));
  }
  return 0;
}

/** A backend's HTTP API call. */
export async function api(http, key, path, body) {
  const response = await fetch(`${http}${path}`, {
    method: "POST",
    headers: { authorization: `apikey ${key}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}
