// The universal entry (dist/index.js, from which the browser bundle is built) must not reach any
// `node:*` module; the Node-only parts (TCP, log tail) are only in dist/node.js.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const dist = fileURLToPath(new URL("../dist/", import.meta.url));

/** Every module `entry` imports, transitively, with the bare specifiers it uses. */
function graph(entry) {
  const seen = new Set();
  const external = new Set();
  const visit = (file) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/(?:import|export)\s[^"']*?from\s*["']([^"']+)["']|import\s*\(\s*["']([^"']+)["']\s*\)/g)) {
      const spec = m[1] ?? m[2];
      if (spec.startsWith(".")) visit(join(dirname(file), spec));
      else external.add(spec);
    }
  };
  visit(join(dist, entry));
  return { modules: [...seen].map((f) => f.slice(dist.length)), external: [...external] };
}

test("the universal entry imports no node:* module and no package", () => {
  const { modules, external } = graph("index.js");
  assert.deepEqual(external, []);
  assert.ok(!modules.includes("tcp.js") && !modules.includes("logtail.js"), modules.join(", "));
  assert.ok(modules.includes("session.js"));
});

test("the Node entry adds TCP and the log tail", () => {
  const { modules, external } = graph("node.js");
  assert.ok(modules.includes("tcp.js") && modules.includes("logtail.js"));
  assert.ok(external.every((s) => s.startsWith("node:")), external.join(", "));
});

test("the browser bundle holds the session helper and no node:* import", () => {
  const bundle = readFileSync(join(dist, "portcullis.browser.js"), "utf8");
  assert.ok(!/from\s*["']node:/.test(bundle) && !/require\(["']node:/.test(bundle));
  assert.ok(bundle.includes("BroadcastChannelLock"));
});
