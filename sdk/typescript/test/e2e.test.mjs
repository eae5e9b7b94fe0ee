// End to end through the SDK against a real server: accounts and the session helper, TOTP and
// MFA_REQUIRED, a magic link read from the outbox. (Pipelining, a connection killed mid-call and
// reconnecting after a restart are in tcp.test.mjs.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { Client, MemoryStorage, MfaRequiredError, PortcullisError, Session } from "../dist/node.js";
import { readMail, totp } from "./support/conformance.mjs";
import { startServer } from "./support/server.mjs";

const PASSWORD = "correct horse battery staple 42";

test("sign-up, sign-in, refresh and logout through the session helper (HTTP)", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ baseUrl: server.httpUrl });
  const email = `${randomUUID()}@example.com`;
  const signup = await client.execute("AUTH.SIGNUP", { email, password: PASSWORD });
  assert.equal(signup.token_type, "Bearer");

  const session = new Session(client, { storage: new MemoryStorage(), channel: null, key: randomUUID() });
  t.after(() => session.close());
  const signedIn = await session.setTokens(await client.execute("AUTH.LOGIN", { email, password: PASSWORD }));
  assert.notEqual(signedIn.sessionId, signup.session_id, "a sign-in is a new session");
  const me = await session.execute("USER.ME");
  assert.equal(me.user_id, signup.user_id);
  assert.equal(me.email, email);

  const refreshed = await session.refresh(signedIn.accessToken);
  assert.equal(refreshed.sessionId, signedIn.sessionId);
  assert.notEqual(refreshed.refreshToken, signedIn.refreshToken);
  assert.equal((await session.execute("USER.ME")).user_id, signup.user_id);

  const sessions = await session.execute("SESSION.LIST");
  assert.ok(sessions.sessions.some((s) => s.session_id === signedIn.sessionId));

  await session.logout();
  assert.equal(await session.tokens(), null);
  await assert.rejects(client.execute("USER.ME", {}, { token: refreshed.accessToken }), (e) => e.code === "UNAUTHENTICATED");
  // A wrong password is a typed error with the closed code.
  await assert.rejects(client.execute("AUTH.LOGIN", { email, password: "wrong password 123" }), (e) => e instanceof PortcullisError && e.code === "INVALID_CREDENTIALS");
});

test("TOTP enrolment, then MFA_REQUIRED is a typed error that client.mfa.verify completes (TCP)", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ tcp: server.tcp });
  t.after(() => client.close());
  const email = `${randomUUID()}@example.com`;
  await client.execute("AUTH.SIGNUP", { email, password: PASSWORD });
  const login = await client.execute("AUTH.LOGIN", { email, password: PASSWORD });

  const enrolment = await client.execute("TOTP.ENROLL", {}, { token: login.access_token });
  const codes = await client.execute("TOTP.CONFIRM", { enrollment_id: enrolment.enrollment_id, code: totp(enrolment.secret) }, { token: login.access_token });
  assert.equal(codes.recovery_codes.length, 10);

  let challenge;
  try {
    await client.execute("AUTH.LOGIN", { email, password: PASSWORD });
    assert.fail("a sign-in with a second factor enrolled answers MFA_REQUIRED");
  } catch (error) {
    challenge = error;
  }
  assert.ok(challenge instanceof MfaRequiredError);
  assert.ok(challenge instanceof PortcullisError);
  assert.equal(challenge.code, "MFA_REQUIRED");
  assert.deepEqual(challenge.methods, ["totp", "recovery_code"]);
  assert.equal(challenge.expiresIn, 300);
  assert.match(challenge.mfaToken, /^pmt_/);
  assert.equal(challenge.enrolmentSession, undefined);
  // The ticket is not printed with the error.
  assert.ok(!JSON.stringify(challenge).includes(challenge.mfaToken));
  assert.ok(!JSON.stringify(challenge.details ?? {}).includes(challenge.mfaToken));

  // A wrong code keeps the ticket usable; the next step's code (the confirm used this step's).
  const now = Date.now();
  const wrong = ["000000", "111111", "222222", "333333"].find((c) => ![-1, 0, 1, 2].some((o) => totp(enrolment.secret, now, o) === c));
  await assert.rejects(client.mfa.verify(challenge, { method: "totp", code: wrong }), (e) => e.code === "INVALID_CREDENTIALS");
  const verified = await client.mfa.verify(challenge, { method: "totp", code: totp(enrolment.secret, Date.now(), 1) });
  assert.equal(verified.aal, 2);
  assert.deepEqual(verified.amr, ["pwd", "otp", "mfa"]);
  assert.match(verified.refresh_token, /^prt_/);
  // The ticket is single use.
  await assert.rejects(client.mfa.verify(challenge, { method: "recovery_code", code: codes.recovery_codes[0] }), (e) => e.code === "ALREADY_USED");

  // The session helper takes the MFA result like any sign-in.
  const session = new Session(client, { storage: new MemoryStorage(), channel: null, key: randomUUID() });
  t.after(() => session.close());
  await session.setTokens(verified);
  assert.equal((await session.execute("USER.ME")).email, email);
});

test("under mfa_policy = \"required\", MFA_REQUIRED carries an enrolment-only session the helper can hold", async (t) => {
  const server = await startServer({ config: 'mfa_policy = "required"\n' });
  t.after(() => server.stop());
  const client = new Client({ baseUrl: server.httpUrl });
  const email = `${randomUUID()}@example.com`;
  await client.execute("AUTH.SIGNUP", { email, password: PASSWORD }).catch((e) => {
    if (!(e instanceof MfaRequiredError)) throw e;
  });
  const error = await client.execute("AUTH.LOGIN", { email, password: PASSWORD }).then(
    () => assert.fail("MFA_REQUIRED expected"),
    (e) => e,
  );
  assert.ok(error instanceof MfaRequiredError, String(error));
  assert.equal(error.mfaToken, null);
  assert.deepEqual(error.methods, []);
  assert.match(error.enrolmentSession.refresh_token, /^prt_/);
  await assert.rejects(client.mfa.verify(error, { method: "totp", code: "123456" }), /enrol a second factor first/);
  const session = new Session(client, { storage: new MemoryStorage(), channel: null, key: randomUUID() });
  t.after(() => session.close());
  await session.setTokens(error.enrolmentSession);
  assert.equal((await session.execute("USER.ME")).email, email);
  // The enrolment-only session may not do anything else.
  await assert.rejects(session.execute("SESSION.LIST"), (e) => e.code === "FORBIDDEN" && e.reason === "mfa_enrolment_required");
});

test("a magic link read from the outbox signs in (MAGIC.SEND → mail → MAGIC.VERIFY)", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ baseUrl: server.httpUrl });
  const email = `${randomUUID()}@example.com`;
  const sent = await client.execute("MAGIC.SEND", { email, create_user: true });
  assert.match(sent.flow_id, /^[0-9a-f]{32}$/);
  const token = await readMail(server.outbox, sent.flow_id, "magic_link");
  const result = await client.execute("MAGIC.VERIFY", { token });
  const session = new Session(client, { storage: new MemoryStorage(), channel: null, key: randomUUID() });
  t.after(() => session.close());
  await session.setTokens(result);
  assert.equal((await session.execute("USER.ME")).email, email);
  await assert.rejects(client.execute("MAGIC.VERIFY", { token }), (e) => e instanceof PortcullisError && e.code === "ALREADY_USED");
});
