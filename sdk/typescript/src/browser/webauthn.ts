/**
 * The JSON forms of WebAuthn options and credentials, as the server sends and expects them
 * (binary members as base64url without padding). Browsers with
 * `PublicKeyCredential.parseCreationOptionsFromJSON` and `credential.toJSON()` do this
 * themselves; these functions are the same conversion for browsers without them, and the part
 * of the ceremonies that unit tests can check.
 */
import { decodeBase64url, encodeBase64url } from "./base64url.js";

/** A JSON object as it came off the wire. */
export type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function bytes(v: unknown, what: string): Uint8Array<ArrayBuffer> {
  if (typeof v !== "string") throw new TypeError(`${what} is not a base64url string`);
  return decodeBase64url(v);
}

function descriptors(list: unknown, what: string): PublicKeyCredentialDescriptor[] | undefined {
  if (list === undefined || list === null) return undefined;
  if (!Array.isArray(list)) throw new TypeError(`${what} is not a list`);
  return list.map((d: unknown, i) => {
    if (!isObject(d)) throw new TypeError(`${what}[${i}] is not an object`);
    const out: PublicKeyCredentialDescriptor = {
      ...(d as object),
      type: "public-key",
      id: bytes(d.id, `${what}[${i}].id`),
    };
    return out;
  });
}

/**
 * `PublicKeyCredentialCreationOptionsJSON` (what `PASSKEY.REGISTER.BEGIN` returns as
 * `options.publicKey`) → the options `navigator.credentials.create({publicKey})` takes.
 */
export function decodeCreationOptions(json: unknown): PublicKeyCredentialCreationOptions {
  if (!isObject(json)) throw new TypeError("creation options are not an object");
  const user = json.user;
  if (!isObject(user)) throw new TypeError("creation options have no user");
  const out = {
    ...json,
    challenge: bytes(json.challenge, "challenge"),
    user: { ...user, id: bytes(user.id, "user.id") },
  } as unknown as PublicKeyCredentialCreationOptions;
  const exclude = descriptors(json.excludeCredentials, "excludeCredentials");
  if (exclude !== undefined) out.excludeCredentials = exclude;
  return out;
}

/**
 * `PublicKeyCredentialRequestOptionsJSON` (what `PASSKEY.LOGIN.BEGIN` returns as
 * `options.publicKey`) → the options `navigator.credentials.get({publicKey})` takes.
 */
export function decodeRequestOptions(json: unknown): PublicKeyCredentialRequestOptions {
  if (!isObject(json)) throw new TypeError("request options are not an object");
  const out = {
    ...json,
    challenge: bytes(json.challenge, "challenge"),
  } as unknown as PublicKeyCredentialRequestOptions;
  const allow = descriptors(json.allowCredentials, "allowCredentials");
  if (allow !== undefined) out.allowCredentials = allow;
  return out;
}

interface CredentialLike {
  id: string;
  rawId: ArrayBuffer;
  type: string;
  authenticatorAttachment?: string | null;
  response: object;
  getClientExtensionResults?: () => unknown;
  toJSON?: () => unknown;
}

function b64(v: unknown): string | undefined {
  if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return encodeBase64url(v);
  return undefined;
}

/**
 * A `PublicKeyCredential` → its JSON form (`RegistrationResponseJSON` or
 * `AuthenticationResponseJSON`), what `PASSKEY.REGISTER.FINISH`, `PASSKEY.LOGIN.FINISH` and
 * `MFA.VERIFY` take as `credential`. Uses the browser's `toJSON()` when there is one.
 */
export function credentialToJSON(credential: CredentialLike): Json {
  if (typeof credential.toJSON === "function") return credential.toJSON() as Json;
  const r = credential.response as Record<string, unknown> & {
    getTransports?: () => string[];
  };
  const response: Json = { clientDataJSON: b64(r.clientDataJSON) };
  if (r.attestationObject !== undefined) {
    response.attestationObject = b64(r.attestationObject);
    if (typeof r.getTransports === "function") response.transports = r.getTransports();
  }
  if (r.authenticatorData !== undefined) {
    response.authenticatorData = b64(r.authenticatorData);
    response.signature = b64(r.signature);
    response.userHandle = r.userHandle === null ? null : b64(r.userHandle);
  }
  const out: Json = {
    id: credential.id,
    rawId: encodeBase64url(credential.rawId),
    type: credential.type,
    response,
    clientExtensionResults:
      typeof credential.getClientExtensionResults === "function"
        ? credential.getClientExtensionResults()
        : {},
  };
  if (credential.authenticatorAttachment !== undefined && credential.authenticatorAttachment !== null) {
    out.authenticatorAttachment = credential.authenticatorAttachment;
  }
  return out;
}
