// @portcullis/client browser bundle: built by sdk/typescript (npm run build), do not edit.

// dist/errors.js
var PortcullisError = class _PortcullisError extends Error {
  name = "PortcullisError";
  /** The error code: branch on this, never on `message`. */
  code;
  /** The earliest useful moment to retry, in milliseconds, when the server gave one. */
  retryAfterMs;
  /** Machine-readable details for some codes (e.g. `{"reason":"step_up_required"}`). */
  details;
  /** The command that was refused, when known. */
  command;
  constructor(code, message, options = {}) {
    super(message, options.cause === void 0 ? void 0 : { cause: options.cause });
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
    this.details = options.details;
    this.command = options.command;
  }
  /** The error a failed response envelope stands for. */
  static fromResponse(response) {
    const e = response.error;
    if (e === null) {
      return new _PortcullisError("CLIENT_PROTOCOL", "a failed response without an error object");
    }
    return new _PortcullisError(e.code, e.message, {
      retryAfterMs: e.retry_after_ms,
      details: e.details,
      command: response.command ?? void 0
    });
  }
};

// dist/envelope.js
function isResponse(value) {
  if (typeof value !== "object" || value === null || Array.isArray(value))
    return false;
  const v = value;
  if (typeof v.ok !== "boolean")
    return false;
  if (!(v.command === null || typeof v.command === "string"))
    return false;
  if (!("id" in v) || !("data" in v) || !("error" in v))
    return false;
  if (v.ok)
    return v.error === null;
  const e = v.error;
  return typeof e === "object" && e !== null && typeof e.code === "string" && typeof e.message === "string";
}

// dist/http.js
var HttpTransport = class {
  #url;
  #fetch;
  #headers;
  #inflight = /* @__PURE__ */ new Set();
  #closed = false;
  constructor(options) {
    this.#url = `${options.baseUrl.replace(/\/+$/, "")}/api/v1/execute`;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#headers = options.headers ?? {};
  }
  async send(request) {
    if (this.#closed)
      throw new PortcullisError("CLIENT_CLOSED", "the client is closed");
    const { token, ...body } = request;
    const headers = {
      ...this.#headers,
      "content-type": "application/json",
      accept: "application/json"
    };
    if (token !== void 0)
      headers.authorization = `Bearer ${token}`;
    const abort = new AbortController();
    this.#inflight.add(abort);
    let text;
    try {
      const res = await this.#fetch(this.#url, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: abort.signal
      });
      text = await res.text();
    } catch (cause) {
      if (this.#closed)
        throw new PortcullisError("CLIENT_CLOSED", "the client was closed", { cause });
      throw new PortcullisError("CLIENT_TRANSPORT", "the server could not be reached", { cause });
    } finally {
      this.#inflight.delete(abort);
    }
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (cause) {
      throw new PortcullisError("CLIENT_PROTOCOL", "the answer is not JSON", { cause });
    }
    if (!isResponse(parsed)) {
      throw new PortcullisError("CLIENT_PROTOCOL", "the answer is not a response envelope");
    }
    return parsed;
  }
  async close() {
    this.#closed = true;
    for (const abort of this.#inflight)
      abort.abort();
    this.#inflight.clear();
  }
};

// dist/client.js
var Client = class {
  transport;
  /** The default credential of calls that give none. */
  token;
  #nextId = 1;
  constructor(options) {
    if (options.transport !== void 0) {
      this.transport = options.transport;
    } else if (options.baseUrl !== void 0) {
      this.transport = new HttpTransport({ baseUrl: options.baseUrl });
    } else {
      throw new TypeError("a Client needs a transport or a baseUrl");
    }
    this.token = options.token;
  }
  /**
   * Runs `command` and resolves to the response's `data`; rejects with a `PortcullisError`
   * carrying the server's error code when the command is refused.
   */
  async execute(command, params = {}, options = {}) {
    const request = { id: this.#nextId++, command, params };
    const token = options.token ?? this.token;
    if (token !== void 0)
      request.token = token;
    const response = await this.transport.send(request);
    if (!response.ok)
      throw PortcullisError.fromResponse(response);
    return response.data;
  }
  /** Closes the transport. */
  async close() {
    await this.transport.close();
  }
};

// dist/browser/base64url.js
var ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
var LOOKUP = {};
for (let i = 0; i < ALPHABET.length; i++)
  LOOKUP[ALPHABET.charAt(i)] = i;
function encodeBase64url(input) {
  const bytes2 = input instanceof ArrayBuffer ? new Uint8Array(input) : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  let out = "";
  let i = 0;
  for (; i + 2 < bytes2.length; i += 3) {
    const n = (bytes2[i] ?? 0) << 16 | (bytes2[i + 1] ?? 0) << 8 | (bytes2[i + 2] ?? 0);
    out += ALPHABET.charAt(n >> 18 & 63) + ALPHABET.charAt(n >> 12 & 63) + ALPHABET.charAt(n >> 6 & 63) + ALPHABET.charAt(n & 63);
  }
  const rest = bytes2.length - i;
  if (rest === 1) {
    const n = (bytes2[i] ?? 0) << 16;
    out += ALPHABET.charAt(n >> 18 & 63) + ALPHABET.charAt(n >> 12 & 63);
  } else if (rest === 2) {
    const n = (bytes2[i] ?? 0) << 16 | (bytes2[i + 1] ?? 0) << 8;
    out += ALPHABET.charAt(n >> 18 & 63) + ALPHABET.charAt(n >> 12 & 63) + ALPHABET.charAt(n >> 6 & 63);
  }
  return out;
}
function decodeBase64url(text) {
  const s = text.replace(/=+$/, "");
  if (s.length % 4 === 1)
    throw new TypeError("not base64url: impossible length");
  const out = new Uint8Array(Math.floor(s.length * 3 / 4));
  let bits = 0;
  let value = 0;
  let j = 0;
  for (let i = 0; i < s.length; i++) {
    const v = LOOKUP[s.charAt(i)];
    if (v === void 0)
      throw new TypeError("not base64url: unexpected character");
    value = value << 6 | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[j++] = value >> bits & 255;
    }
  }
  if ((value & (1 << bits) - 1) !== 0)
    throw new TypeError("not base64url: non-zero padding bits");
  return out;
}

// dist/browser/pkce.js
function subtle() {
  const c = globalThis.crypto;
  if (c === void 0 || c.subtle === void 0) {
    throw new TypeError("Web Crypto is not available (a secure context is needed)");
  }
  return c.subtle;
}
async function pkceChallenge(verifier) {
  const digest = await subtle().digest("SHA-256", new TextEncoder().encode(verifier));
  return encodeBase64url(digest);
}
async function createPkce() {
  const bytes2 = new Uint8Array(32);
  globalThis.crypto.getRandomValues(bytes2);
  const verifier = encodeBase64url(bytes2);
  return { verifier, challenge: await pkceChallenge(verifier) };
}

// dist/browser/webauthn.js
function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
function bytes(v, what) {
  if (typeof v !== "string")
    throw new TypeError(`${what} is not a base64url string`);
  return decodeBase64url(v);
}
function descriptors(list, what) {
  if (list === void 0 || list === null)
    return void 0;
  if (!Array.isArray(list))
    throw new TypeError(`${what} is not a list`);
  return list.map((d, i) => {
    if (!isObject(d))
      throw new TypeError(`${what}[${i}] is not an object`);
    const out = {
      ...d,
      type: "public-key",
      id: bytes(d.id, `${what}[${i}].id`)
    };
    return out;
  });
}
function decodeCreationOptions(json) {
  if (!isObject(json))
    throw new TypeError("creation options are not an object");
  const user = json.user;
  if (!isObject(user))
    throw new TypeError("creation options have no user");
  const out = {
    ...json,
    challenge: bytes(json.challenge, "challenge"),
    user: { ...user, id: bytes(user.id, "user.id") }
  };
  const exclude = descriptors(json.excludeCredentials, "excludeCredentials");
  if (exclude !== void 0)
    out.excludeCredentials = exclude;
  return out;
}
function decodeRequestOptions(json) {
  if (!isObject(json))
    throw new TypeError("request options are not an object");
  const out = {
    ...json,
    challenge: bytes(json.challenge, "challenge")
  };
  const allow = descriptors(json.allowCredentials, "allowCredentials");
  if (allow !== void 0)
    out.allowCredentials = allow;
  return out;
}
function b64(v) {
  if (v instanceof ArrayBuffer || ArrayBuffer.isView(v))
    return encodeBase64url(v);
  return void 0;
}
function credentialToJSON(credential) {
  if (typeof credential.toJSON === "function")
    return credential.toJSON();
  const r = credential.response;
  const response = { clientDataJSON: b64(r.clientDataJSON) };
  if (r.attestationObject !== void 0) {
    response.attestationObject = b64(r.attestationObject);
    if (typeof r.getTransports === "function")
      response.transports = r.getTransports();
  }
  if (r.authenticatorData !== void 0) {
    response.authenticatorData = b64(r.authenticatorData);
    response.signature = b64(r.signature);
    response.userHandle = r.userHandle === null ? null : b64(r.userHandle);
  }
  const out = {
    id: credential.id,
    rawId: encodeBase64url(credential.rawId),
    type: credential.type,
    response,
    clientExtensionResults: typeof credential.getClientExtensionResults === "function" ? credential.getClientExtensionResults() : {}
  };
  if (credential.authenticatorAttachment !== void 0 && credential.authenticatorAttachment !== null) {
    out.authenticatorAttachment = credential.authenticatorAttachment;
  }
  return out;
}

// dist/browser/types.js
function mfaChallengeOf(error) {
  if (!(error instanceof PortcullisError) || error.code !== "MFA_REQUIRED")
    return void 0;
  const d = error.details ?? {};
  const token = d.mfa_token;
  if (typeof token !== "string")
    return void 0;
  const methods = Array.isArray(d.methods) ? d.methods.filter((m) => typeof m === "string") : [];
  return {
    mfaToken: token,
    methods,
    expiresIn: typeof d.expires_in === "number" ? d.expires_in : void 0
  };
}
function callOptions(o) {
  return o?.token === void 0 ? {} : { token: o.token };
}
function object(v, what) {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new PortcullisError("CLIENT_PROTOCOL", `${what}: the answer is not an object`);
  }
  return v;
}

// dist/browser/passkeys.js
function ceremony(data, what) {
  const d = object(data, what);
  const options = object(d.options, what);
  if (typeof d.ceremony_id !== "string")
    throw new TypeError(`${what}: no ceremony_id`);
  return { ceremony_id: d.ceremony_id, publicKey: options.publicKey };
}
function pkc() {
  return globalThis.PublicKeyCredential;
}
function creationOptions(json) {
  const parse = pkc()?.parseCreationOptionsFromJSON;
  return parse !== void 0 ? parse(json) : decodeCreationOptions(json);
}
function requestOptions(json) {
  const parse = pkc()?.parseRequestOptionsFromJSON;
  return parse !== void 0 ? parse(json) : decodeRequestOptions(json);
}
function credentials() {
  const c = globalThis.navigator?.credentials;
  if (c === void 0 || pkc() === void 0) {
    throw new DOMException("this browser has no WebAuthn", "NotSupportedError");
  }
  return c;
}
async function get(publicKey, extra = {}) {
  const cred = await credentials().get({ publicKey: requestOptions(publicKey), ...extra });
  if (cred === null)
    throw new DOMException("no passkey was chosen", "NotAllowedError");
  return credentialToJSON(cred);
}
var Passkeys = class _Passkeys {
  #client;
  constructor(client) {
    this.#client = client;
  }
  /** Whether this browser can create and use passkeys at all. */
  static supported() {
    return pkc() !== void 0 && globalThis.navigator?.credentials !== void 0;
  }
  /** Whether the browser can offer passkeys in an input's autofill (conditional UI). */
  static async autofillSupported() {
    const check = pkc()?.isConditionalMediationAvailable;
    if (check === void 0)
      return false;
    try {
      return await check.call(pkc());
    } catch {
      return false;
    }
  }
  /**
   * Registers a new passkey for the signed-in user: `PASSKEY.REGISTER.BEGIN` →
   * `navigator.credentials.create` → `PASSKEY.REGISTER.FINISH`. Resolves to the new passkey.
   * Rejects with the browser's `DOMException` (`NotAllowedError` when the user cancels) or a
   * `PortcullisError`.
   */
  async register(options = {}) {
    const params = {};
    if (options.name !== void 0)
      params.name = options.name;
    const c = ceremony(await this.#client.execute("PASSKEY.REGISTER.BEGIN", params, callOptions(options)), "PASSKEY.REGISTER.BEGIN");
    const created = await credentials().create({
      publicKey: creationOptions(c.publicKey),
      ...options.signal === void 0 ? {} : { signal: options.signal }
    });
    if (created === null)
      throw new DOMException("no passkey was created", "NotAllowedError");
    const credential = credentialToJSON(created);
    return await this.#client.execute("PASSKEY.REGISTER.FINISH", { ceremony_id: c.ceremony_id, credential }, callOptions(options));
  }
  /**
   * Signs in with a passkey: with `email`, one of that account's passkeys; without, any
   * discoverable passkey the browser has for this site (usernameless). Resolves to the new
   * session (at AAL2: a user-verified passkey never needs a second factor).
   */
  async signIn(options = {}) {
    const params = {};
    if (options.email !== void 0 && options.email !== "")
      params.email = options.email;
    const c = ceremony(await this.#client.execute("PASSKEY.LOGIN.BEGIN", params), "PASSKEY.LOGIN.BEGIN");
    const credential = await get(c.publicKey, options.signal === void 0 ? {} : { signal: options.signal });
    return await this.#client.execute("PASSKEY.LOGIN.FINISH", {
      ceremony_id: c.ceremony_id,
      credential
    });
  }
  /**
   * Conditional UI: offers the site's passkeys in the autofill of an
   * `<input autocomplete="username webauthn">` and resolves to the session once the user picks
   * one. Start it when the sign-in form shows; abort `signal` before starting any other
   * ceremony (the browser allows one at a time). `onWaiting` is called once the browser holds
   * the request (the autofill can offer passkeys from then on). Rejects with an `AbortError`
   * when aborted and a `NotSupportedError` when the browser has no conditional mediation.
   */
  async autofill(options = {}) {
    if (!await _Passkeys.autofillSupported()) {
      throw new DOMException("this browser has no passkey autofill", "NotSupportedError");
    }
    options.signal?.throwIfAborted();
    const c = ceremony(await this.#client.execute("PASSKEY.LOGIN.BEGIN", {}), "PASSKEY.LOGIN.BEGIN");
    options.signal?.throwIfAborted();
    const pending = get(c.publicKey, {
      mediation: "conditional",
      ...options.signal === void 0 ? {} : { signal: options.signal }
    });
    options.onWaiting?.();
    const credential = await pending;
    return await this.#client.execute("PASSKEY.LOGIN.FINISH", {
      ceremony_id: c.ceremony_id,
      credential
    });
  }
  /**
   * Completes a sign-in that answered `MFA_REQUIRED` with `"passkey"` among its methods:
   * `PASSKEY.LOGIN.BEGIN {mfa_token}` → `navigator.credentials.get` → `MFA.VERIFY` (method
   * `passkey`). Resolves to the new session at AAL2.
   */
  async verifyMfa(options) {
    const c = ceremony(await this.#client.execute("PASSKEY.LOGIN.BEGIN", { mfa_token: options.mfaToken }), "PASSKEY.LOGIN.BEGIN");
    const credential = await get(c.publicKey, options.signal === void 0 ? {} : { signal: options.signal });
    return await this.#client.execute("MFA.VERIFY", {
      mfa_token: options.mfaToken,
      method: "passkey",
      ceremony_id: c.ceremony_id,
      credential
    });
  }
  /**
   * Step-up of the signed-in session to AAL2 with one of the account's passkeys:
   * `PASSKEY.LOGIN.BEGIN {email}` → `navigator.credentials.get` → `MFA.VERIFY` (method
   * `passkey`, no `mfa_token`) with the session's token. Resolves to the new access token (no
   * refresh token: the session keeps its own).
   */
  async stepUp(options) {
    const c = ceremony(await this.#client.execute("PASSKEY.LOGIN.BEGIN", { email: options.email }), "PASSKEY.LOGIN.BEGIN");
    const credential = await get(c.publicKey, options.signal === void 0 ? {} : { signal: options.signal });
    return await this.#client.execute("MFA.VERIFY", { method: "passkey", ceremony_id: c.ceremony_id, credential }, callOptions(options));
  }
};

// dist/browser/magic.js
var PREFIX = "portcullis.magic.";
var MemoryStorage = class {
  #map = /* @__PURE__ */ new Map();
  getItem(key) {
    return this.#map.get(key) ?? null;
  }
  setItem(key, value) {
    this.#map.set(key, value);
  }
  removeItem(key) {
    this.#map.delete(key);
  }
};
function defaultStorage() {
  try {
    const s = globalThis.localStorage;
    if (s !== void 0)
      return s;
  } catch {
  }
  return new MemoryStorage();
}
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
var MagicLinks = class {
  #client;
  #storage;
  #now;
  /**
   * `storage` keeps each flow's verifier until the flow completes or expires (default:
   * `localStorage`, so that the landing page opened in another tab of this browser finds it).
   */
  constructor(client, options = {}) {
    this.#client = client;
    this.#storage = options.storage ?? defaultStorage();
    this.#now = options.now ?? Date.now;
  }
  /** Mails a sign-in link bound to this device, and keeps the verifier for the flow. */
  async send(options) {
    const pkce = await createPkce();
    const params = { email: options.email, code_challenge: pkce.challenge };
    if (options.createUser !== void 0)
      params.create_user = options.createUser;
    if (options.redirectUrl !== void 0)
      params.redirect_url = options.redirectUrl;
    if (options.locale !== void 0)
      params.locale = options.locale;
    const d = object(await this.#client.execute("MAGIC.SEND", params), "MAGIC.SEND");
    if (typeof d.flow_id !== "string" || typeof d.expires_in !== "number") {
      throw new PortcullisError("CLIENT_PROTOCOL", "MAGIC.SEND: no flow_id or expires_in");
    }
    this.#forgetExpired();
    const kept = { verifier: pkce.verifier, expiresAt: this.#now() + d.expires_in * 1e3 };
    this.#storage.setItem(PREFIX + d.flow_id, JSON.stringify(kept));
    return { flowId: d.flow_id, expiresIn: d.expires_in };
  }
  /** Whether this device holds the verifier of `flowId` (it asked for that link). */
  hasFlow(flowId) {
    return this.#kept(flowId) !== void 0;
  }
  /**
   * The waiting tab: polls `MAGIC.POLL` until the link is approved on another device, then
   * resolves to the new session. Rejects with the `PortcullisError` of the first refusal
   * (`MFA_REQUIRED` carries the `mfa_token`: finish with MFA.VERIFY; `EXPIRED`,
   * `ALREADY_USED`, …), waits out `RATE_LIMITED`, and rejects with the signal's reason when
   * aborted or a `TimeoutError` after `timeoutMs`.
   */
  async waitForSignIn(options) {
    const kept = this.#kept(options.flowId);
    if (kept === void 0) {
      throw new PortcullisError("CLIENT_PROTOCOL", "this device did not ask for that link");
    }
    const interval = Math.max(500, options.intervalMs ?? 2e3);
    const deadline = this.#now() + (options.timeoutMs ?? Math.max(0, kept.expiresAt - this.#now()));
    for (; ; ) {
      options.signal?.throwIfAborted();
      let wait = interval;
      try {
        const d = object(await this.#client.execute("MAGIC.POLL", {
          flow_id: options.flowId,
          code_verifier: kept.verifier
        }), "MAGIC.POLL");
        if (d.status === "complete") {
          this.forget(options.flowId);
          const { status: _status, ...pair } = d;
          return pair;
        }
      } catch (e) {
        if (!(e instanceof PortcullisError))
          throw e;
        if (e.code === "RATE_LIMITED") {
          wait = Math.max(interval, e.retryAfterMs ?? interval);
        } else if (e.code === "UNAVAILABLE" || e.code === "CLIENT_TRANSPORT") {
          wait = Math.max(interval, e.retryAfterMs ?? interval);
        } else {
          this.forget(options.flowId);
          throw e;
        }
      }
      const left = deadline - this.#now();
      if (left <= 0)
        throw new DOMException("the link was not approved in time", "TimeoutError");
      await sleep(Math.min(wait, left), options.signal);
    }
  }
  /**
   * The landing page on the device that asked: signs in with the link's `token` and the kept
   * verifier of `flowId` (`MAGIC.VERIFY`). Without a kept verifier (another device, or a link
   * sent unbound) the token goes alone, which a bound link refuses. Rejects with
   * `MFA_REQUIRED` when the account has a second factor.
   */
  async verify(options) {
    const kept = options.flowId === void 0 ? void 0 : this.#kept(options.flowId);
    const params = { token: options.token };
    if (kept !== void 0)
      params.code_verifier = kept.verifier;
    try {
      return await this.#client.execute("MAGIC.VERIFY", params);
    } finally {
      if (kept !== void 0 && options.flowId !== void 0)
        this.forget(options.flowId);
    }
  }
  /**
   * The landing page on another device: approves the sign-in of the device that asked
   * (`MAGIC.APPROVE`); that device's `waitForSignIn` then completes.
   */
  async approve(options) {
    return await this.#client.execute("MAGIC.APPROVE", { token: options.token });
  }
  /** Drops the kept verifier of a flow. */
  forget(flowId) {
    this.#storage.removeItem(PREFIX + flowId);
  }
  #kept(flowId) {
    const raw = this.#storage.getItem(PREFIX + flowId);
    if (raw === null)
      return void 0;
    try {
      const k = JSON.parse(raw);
      if (typeof k.verifier !== "string" || typeof k.expiresAt !== "number")
        return void 0;
      if (k.expiresAt <= this.#now()) {
        this.forget(flowId);
        return void 0;
      }
      return { verifier: k.verifier, expiresAt: k.expiresAt };
    } catch {
      return void 0;
    }
  }
  #forgetExpired() {
    const s = this.#storage;
    if (typeof s.length !== "number" || typeof s.key !== "function")
      return;
    const stale = [];
    for (let i = 0; i < s.length; i++) {
      const key = s.key(i);
      if (key?.startsWith(PREFIX) === true)
        stale.push(key.slice(PREFIX.length));
    }
    for (const flowId of stale)
      this.#kept(flowId);
  }
};
export {
  Client,
  HttpTransport,
  MagicLinks,
  Passkeys,
  PortcullisError,
  createPkce,
  credentialToJSON,
  decodeBase64url,
  decodeCreationOptions,
  decodeRequestOptions,
  encodeBase64url,
  isResponse,
  mfaChallengeOf,
  pkceChallenge
};
