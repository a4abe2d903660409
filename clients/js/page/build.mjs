// Builds the script of the page `plexus serve` shows at `/` into crates/plexus/assets, where
// the binary embeds it beside the page's HTML (written there by hand): page.ts bundled with
// the client and minified.
// `node page/build.mjs --check` fails when the committed assets differ from a fresh build.

import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const assets = here("../../../crates/plexus/assets/");

export async function bundle() {
  const result = await build({
    entryPoints: [here("./page.ts")],
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    legalComments: "none",
  });
  return { "plexus-page.js": result.outputFiles[0].text };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const built = await bundle();
  const check = process.argv.includes("--check");
  let stale = false;
  for (const [name, text] of Object.entries(built)) {
    if (check) {
      let current = "";
      try {
        current = readFileSync(assets + name, "utf8");
      } catch {}
      if (current !== text) {
        console.error(`crates/plexus/assets/${name} is not what page/ builds: run npm run build:page`);
        stale = true;
      }
    } else writeFileSync(assets + name, text);
  }
  if (stale) process.exit(1);
}
