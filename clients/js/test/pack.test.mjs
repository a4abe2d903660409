// The package as a user gets it: `npm pack`, installed into an empty folder with nothing
// beside it, then a plain Node script imports it by name and talks to a real `plexus serve`.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import { startServer } from "./helpers.mjs";

const here = fileURLToPath(new URL("..", import.meta.url));

test("the packed tarball installs into an empty folder and works from a Node script", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const out = mkdtempSync(join(tmpdir(), "plexus-pack-"));
  execFileSync("npm", ["pack", "--silent", "--pack-destination", out], { cwd: here, stdio: "ignore" });
  const tarball = readdirSync(out).find((name) => name.endsWith(".tgz"));
  assert.ok(tarball, "npm pack made a tarball");
  const app = mkdtempSync(join(tmpdir(), "plexus-app-"));
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  execFileSync(
    "npm",
    ["install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error", join(out, tarball), "ws@8"],
    { cwd: app, stdio: "ignore" },
  );
  writeFileSync(
    join(app, "main.js"),
    `import { connect } from "@plexus/client";
     const client = await connect(process.argv[2]);
     console.log(JSON.stringify(await client.request("sys.echo", { from: "a packed client" })));
     client.close();`,
  );
  const printed = execFileSync(process.execPath, ["main.js", server.url], { cwd: app, encoding: "utf8" });
  assert.deepEqual(JSON.parse(printed), { from: "a packed client" });
});
