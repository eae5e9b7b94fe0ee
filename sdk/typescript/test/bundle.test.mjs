// The server embeds the browser bundle (crates/server/assets/portcullis-client.js) so that the
// demo page runs on exactly this SDK. A fresh build must equal the embedded copy.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

test("the bundle the server embeds is this build", () => {
  const fresh = readFileSync(`${root}dist/portcullis.browser.js`, "utf8");
  const embedded = readFileSync(`${root}../../crates/server/assets/portcullis-client.js`, "utf8");
  assert.ok(fresh.includes("PortcullisError"), "the bundle holds the client");
  assert.equal(
    embedded,
    fresh,
    "crates/server/assets/portcullis-client.js is stale: run `npm run build -- --write-asset` in sdk/typescript, or `node scripts/bundle.mjs --write-asset`",
  );
});
