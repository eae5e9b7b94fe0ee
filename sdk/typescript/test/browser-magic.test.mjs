// The magic-link helper against a scripted client: the challenge it sends is the S256 of the
// verifier it later polls and verifies with; polling stops on complete, on a refusal, on abort
// and at its deadline.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { MagicLinks } from "../dist/browser/magic.js";
import { MfaRequiredError, PortcullisError } from "../dist/errors.js";
import { mfaChallengeOf } from "../dist/browser/types.js";

const FLOW = "5d2c8e4f1a7b3c9d0e6f2a4b8c1d3e5f";
const PAIR = {
  user_id: "u",
  session_id: "s",
  access_token: "a",
  refresh_token: "prt_r",
  token_type: "Bearer",
  expires_in: 900,
};

class Storage {
  map = new Map();
  get length() { return this.map.size; }
  key(i) { return [...this.map.keys()][i] ?? null; }
  getItem(k) { return this.map.get(k) ?? null; }
  setItem(k, v) { this.map.set(k, String(v)); }
  removeItem(k) { this.map.delete(k); }
}

/** A client whose answers to MAGIC.POLL come from `polls`, one per call. */
function scripted(polls = []) {
  const calls = [];
  return {
    calls,
    async execute(command, params = {}) {
      calls.push({ command, params });
      if (command === "MAGIC.SEND") return { flow_id: FLOW, expires_in: 600 };
      if (command === "MAGIC.POLL") {
        const next = polls.shift();
        if (next instanceof Error) throw next;
        return next ?? { status: "pending" };
      }
      if (command === "MAGIC.VERIFY") return { ...PAIR, redirect_url: null };
      if (command === "MAGIC.APPROVE") return { flow_id: FLOW, approved: true };
      throw new Error(`unexpected ${command}`);
    },
  };
}

test("send binds the link with the S256 challenge of the verifier that poll then presents", async () => {
  const storage = new Storage();
  const client = scripted([{ status: "pending" }, { status: "complete", ...PAIR }]);
  const magic = new MagicLinks(client, { storage });
  const flow = await magic.send({ email: "alice@example.org", createUser: true, locale: "en" });
  assert.deepEqual(flow, { flowId: FLOW, expiresIn: 600 });
  const send = client.calls[0].params;
  assert.equal(send.email, "alice@example.org");
  assert.equal(send.create_user, true);
  assert.equal(send.locale, "en");
  assert.ok(magic.hasFlow(FLOW));

  const session = await magic.waitForSignIn({ flowId: FLOW, intervalMs: 500 });
  assert.deepEqual(session, PAIR, "the token pair, without status");
  const polls = client.calls.filter((c) => c.command === "MAGIC.POLL");
  assert.equal(polls.length, 2);
  for (const p of polls) {
    assert.equal(p.params.flow_id, FLOW);
    assert.equal(createHash("sha256").update(p.params.code_verifier).digest("base64url"), send.code_challenge);
  }
  assert.ok(!magic.hasFlow(FLOW), "the verifier is dropped once used");
  assert.equal(storage.length, 0);
  await assert.rejects(magic.waitForSignIn({ flowId: FLOW }), (e) => e.code === "CLIENT_PROTOCOL");
});

test("the landing page on the asking device verifies with the kept verifier; elsewhere without", async () => {
  const storage = new Storage();
  const client = scripted();
  const magic = new MagicLinks(client, { storage });
  await magic.send({ email: "alice@example.org" });
  const challenge = client.calls[0].params.code_challenge;
  // Another tab of the same browser: a second helper over the same storage.
  const landing = new MagicLinks(client, { storage });
  await landing.verify({ token: "tok", flowId: FLOW });
  const v = client.calls.at(-1);
  assert.equal(v.command, "MAGIC.VERIFY");
  assert.equal(v.params.token, "tok");
  assert.equal(createHash("sha256").update(v.params.code_verifier).digest("base64url"), challenge);
  assert.ok(!landing.hasFlow(FLOW));
  await landing.verify({ token: "tok2", flowId: FLOW });
  assert.deepEqual(client.calls.at(-1).params, { token: "tok2" }, "no verifier is invented");
  await landing.approve({ token: "tok3" });
  assert.deepEqual(client.calls.at(-1), { command: "MAGIC.APPROVE", params: { token: "tok3" } });
});

test("a refusal ends the wait: MFA_REQUIRED carries its mfa_token, the flow is forgotten", async () => {
  const mfa = new PortcullisError("MFA_REQUIRED", "a second factor is required", {
    details: { mfa_token: "pmt_x", methods: ["totp", "recovery_code"], expires_in: 300 },
  });
  const magic = new MagicLinks(scripted([{ status: "pending" }, mfa]), { storage: new Storage() });
  await magic.send({ email: "alice@example.org" });
  const err = await magic.waitForSignIn({ flowId: FLOW, intervalMs: 500 }).catch((e) => e);
  assert.equal(err, mfa);
  assert.deepEqual(mfaChallengeOf(err), { mfaToken: "pmt_x", methods: ["totp", "recovery_code"], expiresIn: 300 });
  assert.equal(mfaChallengeOf(new PortcullisError("EXPIRED", "x")), undefined);
  // The client's own MFA error keeps the token out of `details`; the helper reads it there.
  const typed = new MfaRequiredError("a second factor is required", { mfaToken: "pmt_y", methods: ["passkey"], expiresIn: 300 });
  assert.deepEqual(mfaChallengeOf(typed), { mfaToken: "pmt_y", methods: ["passkey"], expiresIn: 300 });
  assert.equal(mfaChallengeOf(new MfaRequiredError("enrol first", { mfaToken: null, methods: [], expiresIn: 1800 })), undefined);
  assert.ok(!magic.hasFlow(FLOW));
});

test("RATE_LIMITED is waited out, not fatal", async () => {
  const limited = new PortcullisError("RATE_LIMITED", "slow down", { retryAfterMs: 600 });
  const client = scripted([limited, { status: "complete", ...PAIR }]);
  const magic = new MagicLinks(client, { storage: new Storage() });
  await magic.send({ email: "alice@example.org" });
  assert.deepEqual(await magic.waitForSignIn({ flowId: FLOW, intervalMs: 500 }), PAIR);
});

test("the wait is abortable and bounded, and keeps the verifier for another try", async () => {
  const client = scripted();
  const magic = new MagicLinks(client, { storage: new Storage() });
  await magic.send({ email: "alice@example.org" });
  const abort = new AbortController();
  const waiting = magic.waitForSignIn({ flowId: FLOW, signal: abort.signal, intervalMs: 500 });
  setTimeout(() => abort.abort(), 50);
  await assert.rejects(waiting, (e) => e.name === "AbortError");
  assert.ok(magic.hasFlow(FLOW));

  // A clock that jumps: the deadline passes after the first pending answer.
  let now = 1_000_000;
  const timed = new MagicLinks(scripted(), { storage: new Storage(), now: () => now });
  await timed.send({ email: "alice@example.org" });
  const wait = timed.waitForSignIn({ flowId: FLOW, intervalMs: 500, timeoutMs: 400 });
  now += 1000;
  await assert.rejects(wait, (e) => e.name === "TimeoutError");
});

test("an expired kept verifier is not used", async () => {
  let now = 1_000_000;
  const magic = new MagicLinks(scripted(), { storage: new Storage(), now: () => now });
  await magic.send({ email: "alice@example.org" });
  now += 601_000;
  assert.ok(!magic.hasFlow(FLOW));
});
