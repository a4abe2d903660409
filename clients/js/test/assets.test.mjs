// The page scripts the binaries embed (the `plexus` page in crates/plexus/assets, the chat
// example's in examples/chat/web) are what clients/js/page/build.mjs builds today: a change to
// a page or the client without `npm run build:page` fails here.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { bundle } from "../page/build.mjs";

test("the embedded pages are the ones page/build.mjs builds", async () => {
  const built = await bundle();
  for (const [name, text] of Object.entries(built)) {
    const embedded = readFileSync(new URL(`../../../${name}`, import.meta.url), "utf8");
    assert.ok(embedded === text, `${name} is stale: run npm run build:page in clients/js`);
  }
});
