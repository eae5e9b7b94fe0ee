// Bundles the browser entry into one ES module, and copies it to where the server embeds it
// (crates/server/assets/portcullis-client.js) when run with --write-asset. The test
// test/bundle.test.mjs fails when the embedded copy differs from a fresh bundle.
import { build } from "esbuild";
import { copyFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
export const bundlePath = `${root}dist/portcullis.browser.js`;
export const assetPath = `${root}../../crates/server/assets/portcullis-client.js`;

await build({
  entryPoints: [`${root}dist/bundle.js`],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  legalComments: "none",
  banner: { js: "// @portcullis/client browser bundle: built by sdk/typescript (npm run build), do not edit." },
  outfile: bundlePath,
  logLevel: "warning",
});
if (process.argv.includes("--write-asset")) copyFileSync(bundlePath, assetPath);
