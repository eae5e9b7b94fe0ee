import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, PortcullisError } from "../dist/index.js";
import { startServer } from "./support/server.mjs";

test("execute over HTTP resolves to data and rejects with the server's error code", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ baseUrl: server.httpUrl });
  assert.deepEqual(await client.execute("SYS.PING"), { pong: true });
  await assert.rejects(client.execute("NOPE.NOPE"), (e) => e instanceof PortcullisError && e.code === "UNKNOWN_COMMAND");
  await assert.rejects(client.execute("LOG.VERIFY"), (e) => e instanceof PortcullisError && e.code === "UNAUTHENTICATED");
  const report = await client.execute("LOG.VERIFY", {}, { token: server.operatorToken });
  assert.equal(report.valid, true);
});
