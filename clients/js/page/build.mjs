// Builds the scripts of the pages the repository's binaries embed beside their HTML (written
// by hand), each bundled with the client and minified: the page `plexus serve` shows at `/`
// (page.ts, into crates/plexus/assets) and the chat example's (examples/chat/web/chat.ts).
// `node page/build.mjs --check` fails when the committed scripts differ from a fresh build.

import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const root = here("../../../");

/** Each committed script (its path from the repository's root) and its source. */
const scripts = {
  "crates/plexus/assets/plexus-page.js": here("./page.ts"),
  "examples/chat/web/chat.js": here("../../../examples/chat/web/chat.ts"),
};

export async function bundle() {
  const built = {};
  for (const [path, source] of Object.entries(scripts)) built[path] = await bundleOne(source);
  return built;
}

async function bundleOne(source) {
  const result = await build({
    entryPoints: [source],
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    legalComments: "none",
  });
  return result.outputFiles[0].text;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const built = await bundle();
  const check = process.argv.includes("--check");
  let stale = false;
  for (const [name, text] of Object.entries(built)) {
    if (check) {
      let current = "";
      try {
        current = readFileSync(root + name, "utf8");
      } catch {}
      if (current !== text) {
        console.error(`${name} is not what page/build.mjs builds: run npm run build:page`);
        stale = true;
      }
    } else writeFileSync(root + name, text);
  }
  if (stale) process.exit(1);
}
