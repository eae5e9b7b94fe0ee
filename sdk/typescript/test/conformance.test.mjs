// Replays every transcript of protocol/conformance/ against a freshly started server each
// (protocol/conformance/README.md), with the runner in test/support/conformance.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseTranscript, replay } from "./support/conformance.mjs";
import { startServer } from "./support/server.mjs";

const dir = fileURLToPath(new URL("../../../protocol/conformance/", import.meta.url));
const files = readdirSync(dir).filter((f) => f.endsWith(".ndjson")).sort();

test("there are transcripts to replay", (t) => {
  assert.ok(files.length >= 4, `only ${files.length} transcripts in ${dir}`);
});

for (const file of files) {
  test(`conformance: ${file}`, async (t) => {
    const steps = parseTranscript(readFileSync(`${dir}${file}`, "utf8"), file);
    const server = await startServer();
    t.after(() => server.stop());
    await replay(steps, server);
  });
}
