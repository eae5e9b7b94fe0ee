// The pure parts of the browser helpers, checked against independent computations: Node's
// Buffer for base64url, node:crypto's SHA-256 for PKCE, and RFC 7636's own example.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { decodeBase64url, encodeBase64url } from "../dist/browser/base64url.js";
import { createPkce, pkceChallenge } from "../dist/browser/pkce.js";

test("base64url agrees with Node's Buffer on every length and byte", () => {
  for (let len = 0; len < 70; len++) {
    const bytes = randomBytes(len);
    const ours = encodeBase64url(bytes);
    assert.equal(ours, bytes.toString("base64url"), `length ${len}`);
    assert.ok(!ours.includes("=") && !ours.includes("+") && !ours.includes("/"));
    assert.deepEqual(Buffer.from(decodeBase64url(ours)), bytes, `round trip of length ${len}`);
  }
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  assert.equal(encodeBase64url(all), Buffer.from(all).toString("base64url"));
  assert.equal(encodeBase64url(all.buffer), Buffer.from(all).toString("base64url"), "an ArrayBuffer");
  assert.equal(encodeBase64url(all.subarray(250)), Buffer.from(all.subarray(250)).toString("base64url"), "a view");
});

test("base64url decoding accepts padding and refuses what is not base64url", () => {
  assert.deepEqual(Buffer.from(decodeBase64url("aGk=")), Buffer.from("hi"));
  assert.deepEqual(Buffer.from(decodeBase64url("aGk")), Buffer.from("hi"));
  assert.throws(() => decodeBase64url("aG+k"), TypeError, "standard alphabet");
  assert.throws(() => decodeBase64url("aG/k"), TypeError);
  assert.throws(() => decodeBase64url("a"), TypeError, "impossible length");
  assert.throws(() => decodeBase64url("aGl"), TypeError, "non-zero trailing bits");
  assert.throws(() => decodeBase64url("aG k"), TypeError);
});

test("the PKCE challenge is BASE64URL(SHA-256(verifier)): RFC 7636's example and node:crypto", async () => {
  // RFC 7636, Appendix B.
  assert.equal(
    await pkceChallenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
    "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
  );
  const seen = new Set();
  for (let i = 0; i < 20; i++) {
    const { verifier, challenge } = await createPkce();
    assert.match(verifier, /^[A-Za-z0-9_-]{43}$/, "32 random bytes, 43 characters");
    assert.equal(challenge, createHash("sha256").update(verifier).digest("base64url"));
    assert.match(challenge, /^[A-Za-z0-9_-]{43}$/, "what MAGIC.SEND accepts");
    assert.ok(!seen.has(verifier), "verifiers are fresh");
    seen.add(verifier);
  }
});
