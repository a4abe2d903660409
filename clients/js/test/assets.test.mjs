// The page the `plexus` binary embeds (crates/plexus/assets) is what clients/js/page builds
// today: a change to the page or the client without `npm run build:page` fails here.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { bundle } from "../page/build.mjs";

test("the embedded page is the one page/ builds", async () => {
  const built = await bundle();
  for (const [name, text] of Object.entries(built)) {
    const embedded = readFileSync(new URL(`../../../crates/plexus/assets/${name}`, import.meta.url), "utf8");
    assert.ok(embedded === text, `crates/plexus/assets/${name} is stale: run npm run build:page in clients/js`);
  }
});
