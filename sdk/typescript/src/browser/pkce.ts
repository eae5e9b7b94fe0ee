import { encodeBase64url } from "./base64url.js";

/** A PKCE pair (RFC 7636, method S256). The verifier is a secret: keep it on this device only. */
export interface Pkce {
  /** 43 base64url characters: 32 random bytes. */
  verifier: string;
  /** `BASE64URL(SHA-256(verifier))`, what `MAGIC.SEND` takes as `code_challenge`. */
  challenge: string;
}

function subtle(): SubtleCrypto {
  const c = globalThis.crypto;
  if (c === undefined || c.subtle === undefined) {
    throw new TypeError("Web Crypto is not available (a secure context is needed)");
  }
  return c.subtle;
}

/** The S256 challenge of a verifier. */
export async function pkceChallenge(verifier: string): Promise<string> {
  const digest = await subtle().digest("SHA-256", new TextEncoder().encode(verifier));
  return encodeBase64url(digest);
}

/** A fresh verifier (32 bytes from the platform's CSPRNG) and its challenge. */
export async function createPkce(): Promise<Pkce> {
  const bytes = new Uint8Array(32);
  globalThis.crypto.getRandomValues(bytes);
  const verifier = encodeBase64url(bytes);
  return { verifier, challenge: await pkceChallenge(verifier) };
}
