// The client's size as a browser loads it: bundled and minified (esbuild), then gzipped.
// Goal: at most 12 KiB (centrifuge-js is about 20 KiB, socket.io-client about 15 KiB).

import assert from "node:assert/strict";
import { test } from "node:test";
import { gzipSync } from "node:zlib";

import { build } from "esbuild";

test("the minified, gzipped bundle stays under 12 KiB", async () => {
  const result = await build({
    entryPoints: [new URL("../src/index.ts", import.meta.url).pathname],
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    write: false,
  });
  const bytes = gzipSync(result.outputFiles[0].contents, { level: 9 }).length;
  console.log(`# bundle: ${result.outputFiles[0].contents.length} bytes minified, ${bytes} gzipped`);
  assert.ok(bytes <= 12 * 1024, `${bytes} bytes`);
});
