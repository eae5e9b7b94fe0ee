// The session helper against a real server: one refresh for many concurrent callers, one for
// two "tabs" sharing storage, a lock and a BroadcastChannel, and clearing on a revoked session.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { BroadcastChannelLock, Client, MemoryStorage, PortcullisError, Session } from "../dist/node.js";
import { startServer } from "./support/server.mjs";

const PASSWORD = "correct horse battery staple 42";

/** Counts the AUTH.REFRESH events in the server's log (LOG.QUERY). */
async function refreshes(client, server) {
  const page = await client.execute("LOG.QUERY", { command: "AUTH.REFRESH", limit: 1000 }, { token: server.operatorToken });
  return page.events.length;
}

async function signUp(client) {
  return client.execute("AUTH.SIGNUP", { email: `${randomUUID()}@example.com`, password: PASSWORD });
}

/** A clock the test moves forward. */
function clock() {
  let offset = 0;
  return { now: () => Date.now() + offset, advance: (ms) => (offset += ms) };
}

test("20 concurrent calls at expiry make one AUTH.REFRESH", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ baseUrl: server.httpUrl });
  const time = clock();
  const changes = [];
  const session = new Session(client, { storage: new MemoryStorage(), channel: null, now: time.now, key: randomUUID(), onChange: (_, c) => changes.push(c) });
  t.after(() => session.close());
  const first = await session.setTokens(await signUp(client));
  assert.equal(await refreshes(client, server), 0);
  // The access token is now past its expiry by the session's clock.
  time.advance(16 * 60 * 1000);
  const results = await Promise.all(Array.from({ length: 20 }, () => session.execute("USER.ME")));
  for (const me of results) assert.equal(me.user_id, first.userId);
  assert.equal(await refreshes(client, server), 1);
  const now = await session.tokens();
  assert.notEqual(now.accessToken, first.accessToken);
  assert.notEqual(now.refreshToken, first.refreshToken);
  assert.deepEqual(changes, ["signed_in", "refreshed"]);
  // Fresh tokens: no further refresh.
  await session.execute("USER.ME");
  assert.equal(await refreshes(client, server), 1);
});

test("two tabs sharing storage, a lock and a BroadcastChannel refresh once; the other picks up the tokens", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ baseUrl: server.httpUrl });
  const time = clock();
  const key = `tabs-${randomUUID()}`;
  const storage = new MemoryStorage();
  const tab = (name) => {
    const changes = [];
    const lock = new BroadcastChannelLock({ channelName: `${key}.lock` });
    const channel = new BroadcastChannel(`${key}.channel`);
    const session = new Session(client, { storage, lock, channel, key, now: time.now, onChange: (_, c) => changes.push(c) });
    t.after(() => {
      session.close();
      lock.close();
    });
    return { name, session, changes };
  };
  const a = tab("a");
  const b = tab("b");
  await a.session.setTokens(await signUp(client));
  // Tab b reads the same storage.
  const start = await b.session.tokens();
  assert.equal(start.accessToken, (await a.session.tokens()).accessToken);
  time.advance(16 * 60 * 1000);
  const calls = [];
  for (let i = 0; i < 10; i++) calls.push(a.session.execute("USER.ME"), b.session.execute("USER.ME"));
  const results = await Promise.all(calls);
  for (const me of results) assert.equal(me.user_id, start.userId);
  assert.equal(await refreshes(client, server), 1, "one tab refreshed");
  const ta = await a.session.tokens();
  const tb = await b.session.tokens();
  assert.equal(ta.refreshToken, tb.refreshToken);
  assert.notEqual(ta.refreshToken, start.refreshToken);
  // One tab saw its own refresh, the other the tokens from elsewhere.
  const seen = [...a.changes, ...b.changes];
  assert.equal(seen.filter((c) => c === "refreshed").length, 1);
  assert.ok(seen.includes("updated_elsewhere"));
});

test("a revoked session clears the helper and tells the app", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ baseUrl: server.httpUrl });
  const changes = [];
  const session = new Session(client, { storage: new MemoryStorage(), channel: null, key: randomUUID(), onChange: (tokens, c) => changes.push([tokens === null, c]) });
  t.after(() => session.close());
  const tokens = await session.setTokens(await signUp(client));
  assert.equal((await session.execute("USER.ME")).user_id, tokens.userId);
  // The session ends elsewhere (here: its own token signs it out behind the helper's back).
  await client.execute("AUTH.LOGOUT", {}, { token: tokens.accessToken });
  await assert.rejects(session.execute("USER.ME"), (e) => e instanceof PortcullisError && e.code === "UNAUTHENTICATED");
  assert.equal(await session.tokens(), null);
  assert.deepEqual(changes.at(-1), [true, "refresh_refused"]);
  await assert.rejects(session.execute("USER.ME"), (e) => e.code === "UNAUTHENTICATED" && e.message === "not signed in");
});

test("logout ends the session on the server and clears the helper", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ baseUrl: server.httpUrl });
  const changes = [];
  const storage = new MemoryStorage();
  const key = randomUUID();
  const session = new Session(client, { storage, channel: null, key, onChange: (_, c) => changes.push(c) });
  t.after(() => session.close());
  const tokens = await session.setTokens(await signUp(client));
  await session.logout();
  assert.equal(await session.tokens(), null);
  assert.equal(storage.get(key), null);
  assert.deepEqual(changes, ["signed_in", "signed_out"]);
  await assert.rejects(client.execute("USER.ME", {}, { token: tokens.accessToken }), (e) => e.code === "UNAUTHENTICATED");
  await assert.rejects(client.execute("AUTH.REFRESH", { refresh_token: tokens.refreshToken }, { token: null }), (e) => e.code === "INVALID_CREDENTIALS");
});

test("the BroadcastChannel lock lets one holder in at a time", async (t) => {
  const name = `lock-${randomUUID()}`;
  const locks = Array.from({ length: 3 }, () => new BroadcastChannelLock({ channelName: name, settleMs: 20 }));
  t.after(() => locks.forEach((l) => l.close()));
  let inside = 0;
  let most = 0;
  const order = [];
  await Promise.all(
    locks.flatMap((lock, i) =>
      [0, 1].map((j) =>
        lock.run("x", async () => {
          inside++;
          most = Math.max(most, inside);
          await new Promise((r) => setTimeout(r, 30));
          order.push(`${i}.${j}`);
          inside--;
        }),
      ),
    ),
  );
  assert.equal(most, 1);
  assert.equal(order.length, 6);
});
