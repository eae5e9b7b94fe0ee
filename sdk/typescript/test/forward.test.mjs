// A backend speaking for its end users: the per-call `client` option, sent as the envelope's
// `client` member, against the real server over both transports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { Client, PortcullisError } from "../dist/node.js";
import { startServer } from "./support/server.mjs";

const PASSWORD = "correct horse battery staple 42";

for (const transport of ["http", "tcp"]) {
  test(`a key holding client:forward signs end users in under their own address (${transport})`, async (t) => {
    const server = await startServer();
    t.after(() => server.stop());
    const connect = (token) =>
      transport === "http" ? new Client({ baseUrl: server.httpUrl, token }) : new Client({ tcp: server.tcp, token });
    const operator = connect(server.operatorToken);
    t.after(() => operator.close());
    const forwarding = await operator.execute("APIKEY.CREATE", { name: "app backend", scopes: ["client:forward"] });
    const reading = await operator.execute("APIKEY.CREATE", { name: "reader", scopes: ["users:read"] });
    const backend = connect(forwarding.key);
    t.after(() => backend.close());

    const email = `${randomUUID()}@example.com`;
    const endUser = { ip: "203.0.113.9", userAgent: "Mozilla/5.0 (SDK end user)" };
    const signup = await backend.execute("AUTH.SIGNUP", { email, password: PASSWORD }, { client: endUser });
    await backend.execute("AUTH.LOGIN", { email, password: PASSWORD }, { client: { ip: "2001:db8::7" } });

    const sessions = (await operator.execute("SESSION.LIST", {}, { token: signup.access_token })).sessions;
    const first = sessions.find((s) => s.session_id === signup.session_id);
    assert.equal(first.client, "203.0.113.9:0");
    assert.equal(first.user_agent, endUser.userAgent);
    const second = sessions.find((s) => s.session_id !== signup.session_id);
    assert.equal(second.client, "[2001:db8::7]:0");
    assert.equal(second.user_agent, null, "no agent given: none recorded, not the backend's");

    // Only a key with the scope may speak for someone; the refusal is a typed error.
    for (const token of [reading.key, server.operatorToken, signup.access_token]) {
      await assert.rejects(
        operator.execute("SYS.INFO", {}, { token, client: endUser }),
        (e) => e instanceof PortcullisError && e.code === "FORBIDDEN",
      );
    }
    // Without the option nothing is sent: the same key runs as itself.
    await backend.execute("SYS.INFO");

    const log = await operator.execute("LOG.QUERY", { command: "AUTH.SIGNUP" });
    const event = log.events.find((e) => e.outcome === "ok");
    assert.equal(event.client, "203.0.113.9:0");
    assert.equal(event.actor, `apikey:${forwarding.id}`);
    assert.equal(event.summary.forwarded_by, forwarding.id);
  });
}
