// WebAuthn's JSON forms: the options the server sends decode to the binary members the browser
// API wants, and a credential encodes to what PASSKEY.*.FINISH takes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import {
  credentialToJSON,
  decodeCreationOptions,
  decodeRequestOptions,
} from "../dist/browser/webauthn.js";

const b = (buf) => buf.toString("base64url");

test("creation options (PASSKEY.REGISTER.BEGIN's form) decode challenge, user.id and excludeCredentials", () => {
  const challenge = randomBytes(32);
  const userId = randomBytes(16);
  const excluded = randomBytes(20);
  const json = {
    attestation: "none",
    authenticatorSelection: { requireResidentKey: true, residentKey: "required", userVerification: "required" },
    challenge: b(challenge),
    excludeCredentials: [{ id: b(excluded), type: "public-key", transports: ["internal"] }],
    pubKeyCredParams: [{ alg: -7, type: "public-key" }],
    rp: { id: "localhost", name: "Portcullis" },
    timeout: 300000,
    user: { displayName: "Alice", id: b(userId), name: "alice@example.org" },
  };
  const o = decodeCreationOptions(json);
  assert.deepEqual(Buffer.from(o.challenge), challenge);
  assert.deepEqual(Buffer.from(o.user.id), userId);
  assert.equal(o.user.name, "alice@example.org");
  assert.deepEqual(Buffer.from(o.excludeCredentials[0].id), excluded);
  assert.deepEqual(o.excludeCredentials[0].transports, ["internal"]);
  assert.equal(o.rp.id, "localhost");
  assert.equal(o.authenticatorSelection.residentKey, "required");
  assert.equal(json.challenge, b(challenge), "the input is not changed");
  assert.throws(() => decodeCreationOptions({ ...json, user: undefined }), TypeError);
  assert.throws(() => decodeCreationOptions({ ...json, challenge: "a+b/" }), TypeError);
});

test("request options (PASSKEY.LOGIN.BEGIN's form) decode, with and without an allow-list", () => {
  const challenge = randomBytes(32);
  const id = randomBytes(16);
  const withList = decodeRequestOptions({
    allowCredentials: [{ id: b(id), transports: ["internal"], type: "public-key" }],
    challenge: b(challenge),
    rpId: "localhost",
    timeout: 300000,
    userVerification: "required",
  });
  assert.deepEqual(Buffer.from(withList.challenge), challenge);
  assert.deepEqual(Buffer.from(withList.allowCredentials[0].id), id);
  assert.equal(withList.userVerification, "required");
  const usernameless = decodeRequestOptions({ allowCredentials: [], challenge: b(challenge), rpId: "localhost" });
  assert.deepEqual(usernameless.allowCredentials, []);
  assert.throws(() => decodeRequestOptions({ challenge: 5 }), TypeError);
});

test("a registration credential without toJSON encodes as RegistrationResponseJSON", () => {
  const raw = randomBytes(16);
  const cdj = Buffer.from(JSON.stringify({ type: "webauthn.create" }));
  const att = randomBytes(40);
  const cred = {
    id: b(raw),
    rawId: raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length),
    type: "public-key",
    authenticatorAttachment: "platform",
    response: { clientDataJSON: cdj, attestationObject: att, getTransports: () => ["internal"] },
    getClientExtensionResults: () => ({ credProps: { rk: true } }),
  };
  assert.deepEqual(credentialToJSON(cred), {
    id: b(raw),
    rawId: b(raw),
    type: "public-key",
    authenticatorAttachment: "platform",
    response: { clientDataJSON: b(cdj), attestationObject: b(att), transports: ["internal"] },
    clientExtensionResults: { credProps: { rk: true } },
  });
});

test("an assertion without toJSON encodes as AuthenticationResponseJSON; toJSON wins when present", () => {
  const raw = randomBytes(16);
  const ad = randomBytes(37);
  const sig = randomBytes(70);
  const handle = randomBytes(16);
  const cdj = Buffer.from("{}");
  const cred = {
    id: b(raw),
    rawId: raw,
    type: "public-key",
    authenticatorAttachment: null,
    response: { clientDataJSON: cdj, authenticatorData: ad, signature: sig, userHandle: handle },
  };
  const json = credentialToJSON(cred);
  assert.deepEqual(json.response, {
    clientDataJSON: b(cdj),
    authenticatorData: b(ad),
    signature: b(sig),
    userHandle: b(handle),
  });
  assert.deepEqual(json.clientExtensionResults, {});
  assert.ok(!("authenticatorAttachment" in json));
  assert.equal(credentialToJSON({ ...cred, response: { ...cred.response, userHandle: null } }).response.userHandle, null);
  assert.deepEqual(credentialToJSON({ ...cred, toJSON: () => ({ from: "browser" }) }), { from: "browser" });
});
