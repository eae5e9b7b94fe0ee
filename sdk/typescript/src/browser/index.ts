// Browser helpers (passkeys, magic links) built on the universal client.
export * from "../index.js";
export { decodeBase64url, encodeBase64url } from "./base64url.js";
export { createPkce, pkceChallenge } from "./pkce.js";
export type { Pkce } from "./pkce.js";
export { credentialToJSON, decodeCreationOptions, decodeRequestOptions } from "./webauthn.js";
export { Passkeys } from "./passkeys.js";
export type { MfaResult, PasskeyInfo } from "./passkeys.js";
export { MagicLinks } from "./magic.js";
export type { KeyValueStorage, MagicFlow, MagicSendOptions, MagicWaitOptions } from "./magic.js";
export { mfaChallengeOf } from "./types.js";
export type { AuthOptions, Executor, MfaChallenge } from "./types.js";
