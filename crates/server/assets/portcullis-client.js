// @portcullis/client browser bundle: built by sdk/typescript (npm run build), do not edit.

// dist/generated/commands.js
var PROTOCOL_VERSION = 1;
var ERROR_CODES = [
  "ALREADY_USED",
  "BAD_REQUEST",
  "CONFLICT",
  "EXPIRED",
  "FORBIDDEN",
  "FRAME_TOO_LARGE",
  "INTERNAL",
  "INVALID_CREDENTIALS",
  "INVALID_PARAMS",
  "MFA_REQUIRED",
  "NOT_FOUND",
  "RATE_LIMITED",
  "TOO_MANY_ATTEMPTS",
  "UNAUTHENTICATED",
  "UNAVAILABLE",
  "UNKNOWN_COMMAND"
];
var COMMANDS = {
  "ADMIN.BOOTSTRAP": { caller: "operator", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "ADMIN.SESSION.REVOKE_ALL": { caller: "admin:sessions:write", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "ADMIN.SESSION.REVOKE_EVERYONE": { caller: "superadmin", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "ADMIN.USER.DELETE": { caller: "admin:users:write", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "ADMIN.USER.DISABLE": { caller: "admin:users:write", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "ADMIN.USER.ENABLE": { caller: "admin:users:write", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "ADMIN.USER.GET": { caller: "admin:users:read", rateClass: "operator", logged: true, readOnly: true, streaming: false },
  "ADMIN.USER.LIST": { caller: "admin:users:read", rateClass: "operator", logged: true, readOnly: true, streaming: false },
  "ADMIN.USER.RECOVER": { caller: "admin:users:write", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "APIKEY.CREATE": { caller: "admin:apikeys:write", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "APIKEY.LIST": { caller: "admin:apikeys:write", rateClass: "operator", logged: true, readOnly: true, streaming: false },
  "APIKEY.REVOKE": { caller: "admin:apikeys:write", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "AUTH.LOGIN": { caller: "anyone", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "AUTH.LOGOUT": { caller: "user", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "AUTH.REFRESH": { caller: "anyone", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "AUTH.SIGNUP": { caller: "anyone", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "KEYS.LIST": { caller: "admin:keys:write", rateClass: "operator", logged: true, readOnly: true, streaming: false },
  "KEYS.ROTATE": { caller: "admin:keys:write", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "LOG.PRUNE": { caller: "operator", rateClass: "operator", logged: true, readOnly: false, streaming: false },
  "LOG.QUERY": { caller: "admin:log:read", rateClass: "operator", logged: true, readOnly: true, streaming: false },
  "LOG.TAIL": { caller: "admin:log:read", rateClass: "operator", logged: true, readOnly: true, streaming: true },
  "LOG.VERIFY": { caller: "admin:log:read", rateClass: "operator", logged: true, readOnly: true, streaming: false },
  "MAGIC.APPROVE": { caller: "anyone", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "MAGIC.POLL": { caller: "anyone", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "MAGIC.SEND": { caller: "anyone", rateClass: "send", logged: true, readOnly: false, streaming: false },
  "MAGIC.VERIFY": { caller: "anyone", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "MFA.VERIFY": { caller: "anyone", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "OTP.SEND": { caller: "anyone", rateClass: "send", logged: true, readOnly: false, streaming: false },
  "OTP.VERIFY": { caller: "anyone", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "PASSKEY.LIST": { caller: "user", rateClass: "account", logged: true, readOnly: true, streaming: false },
  "PASSKEY.LOGIN.BEGIN": { caller: "anyone", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "PASSKEY.LOGIN.FINISH": { caller: "anyone", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "PASSKEY.REGISTER.BEGIN": { caller: "user_step_up", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "PASSKEY.REGISTER.FINISH": { caller: "user_step_up", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "PASSKEY.REMOVE": { caller: "user_step_up", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "PASSKEY.RENAME": { caller: "user", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "RECOVERY.REGENERATE": { caller: "user_step_up", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "SESSION.LIST": { caller: "user", rateClass: "account", logged: true, readOnly: true, streaming: false },
  "SESSION.REVOKE": { caller: "user_step_up", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "SESSION.REVOKE_ALL": { caller: "user_step_up", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "SYS.COMMANDS": { caller: "anyone", rateClass: "cheap", logged: true, readOnly: true, streaming: false },
  "SYS.INFO": { caller: "anyone", rateClass: "cheap", logged: true, readOnly: true, streaming: false },
  "SYS.PING": { caller: "anyone", rateClass: "cheap", logged: false, readOnly: false, streaming: false },
  "TOTP.CONFIRM": { caller: "user_step_up", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "TOTP.DISABLE": { caller: "user_step_up", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "TOTP.ENROLL": { caller: "user_step_up", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "USER.CHANGE_EMAIL": { caller: "user_step_up", rateClass: "send", logged: true, readOnly: false, streaming: false },
  "USER.DELETE": { caller: "user_step_up", rateClass: "account", logged: true, readOnly: false, streaming: false },
  "USER.ME": { caller: "user", rateClass: "account", logged: true, readOnly: true, streaming: false },
  "USER.SET_PASSWORD": { caller: "user_step_up", rateClass: "credential", logged: true, readOnly: false, streaming: false },
  "USER.UPDATE": { caller: "user", rateClass: "account", logged: true, readOnly: false, streaming: false }
};

// dist/errors.js
var SERVER_CODES = new Set(ERROR_CODES);
function isErrorCode(code) {
  return typeof code === "string" && SERVER_CODES.has(code);
}
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
  /** `details.reason`, when the server gave one (e.g. `step_up_required`, `lagged`). */
  get reason() {
    const reason = this.details?.["reason"];
    return typeof reason === "string" ? reason : void 0;
  }
  /**
   * The error a failed response envelope stands for: an `MfaRequiredError` for
   * `MFA_REQUIRED`, a `PortcullisError` otherwise. A code outside the closed set (a server
   * newer than this SDK) is reported as `CLIENT_PROTOCOL`, keeping the server's message.
   */
  static fromResponse(response) {
    const e = response.error;
    if (e === null) {
      return new _PortcullisError("CLIENT_PROTOCOL", "a failed response without an error object");
    }
    const options = {
      retryAfterMs: typeof e.retry_after_ms === "number" ? e.retry_after_ms : void 0,
      details: isObject(e.details) ? e.details : void 0,
      command: response.command ?? void 0
    };
    if (e.code === "MFA_REQUIRED") {
      const mfa = MfaRequiredError.fromDetails(e.message, options);
      if (mfa !== void 0)
        return mfa;
    }
    if (!isErrorCode(e.code)) {
      return new _PortcullisError("CLIENT_PROTOCOL", `unknown error code ${JSON.stringify(e.code)}: ${e.message}`, options);
    }
    return new _PortcullisError(e.code, e.message, options);
  }
};
var MfaRequiredError = class _MfaRequiredError extends PortcullisError {
  name = "MfaRequiredError";
  /** The second factors that can complete it (empty when the account has none yet). */
  methods;
  /** Seconds the ticket (or the enrolment session's access token) is valid. */
  expiresIn;
  constructor(message, challenge, options = {}) {
    super("MFA_REQUIRED", message, { ...options, details: withoutSecrets(options.details) });
    this.methods = challenge.methods;
    this.expiresIn = challenge.expiresIn;
    Object.defineProperty(this, "mfaToken", { value: challenge.mfaToken, enumerable: false });
    Object.defineProperty(this, "enrolmentSession", { value: challenge.enrolmentSession, enumerable: false });
  }
  /** Reads `details`; `undefined` when they do not have the documented shape. */
  static fromDetails(message, options) {
    const d = options.details;
    if (d === void 0)
      return void 0;
    const token = d["mfa_token"];
    const methods = d["methods"];
    const expiresIn = d["expires_in"];
    if (!(token === null || typeof token === "string"))
      return void 0;
    if (!Array.isArray(methods) || !methods.every((m) => typeof m === "string"))
      return void 0;
    if (typeof expiresIn !== "number")
      return void 0;
    const session = d["enrolment_session"];
    return new _MfaRequiredError(message, {
      mfaToken: token,
      methods,
      expiresIn,
      enrolmentSession: isTokenPair(session) ? session : void 0
    }, options);
  }
  /** Keeps the ticket out of `JSON.stringify` and logs. */
  toJSON() {
    return { name: this.name, code: this.code, message: this.message, methods: this.methods, expiresIn: this.expiresIn };
  }
};
function withoutSecrets(details) {
  if (details === void 0)
    return void 0;
  const { mfa_token: _token, enrolment_session: _session, ...rest } = details;
  return rest;
}
function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
function isTokenPair(value) {
  return isObject(value) && typeof value["access_token"] === "string" && typeof value["refresh_token"] === "string" && typeof value["expires_in"] === "number" && typeof value["session_id"] === "string" && typeof value["user_id"] === "string";
}

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
  /** Second factors: finishing an `MFA_REQUIRED` sign-in, or stepping a session up. */
  mfa;
  constructor(options) {
    if (options.transport !== void 0) {
      this.transport = options.transport;
    } else if (options.baseUrl !== void 0) {
      this.transport = new HttpTransport({ baseUrl: options.baseUrl });
    } else {
      throw new TypeError("a Client needs a transport or a baseUrl");
    }
    this.token = options.token;
    this.mfa = {
      verify: async (challenge, factor, callOptions2) => {
        let mfaToken;
        if (challenge instanceof MfaRequiredError) {
          if (challenge.mfaToken === null) {
            throw new TypeError("this MFA_REQUIRED has no mfa_token: the account must enrol a second factor first");
          }
          mfaToken = challenge.mfaToken;
        } else {
          mfaToken = challenge;
        }
        const params = factor.method === "passkey" ? { method: "passkey", ceremony_id: factor.ceremonyId, credential: factor.credential } : { method: factor.method, code: factor.code.replace(/\s+/g, "") };
        if (mfaToken !== null)
          params.mfa_token = mfaToken;
        return this.execute("MFA.VERIFY", params, callOptions2 ?? (mfaToken !== null ? { token: null } : {}));
      }
    };
  }
  async execute(command, params, options) {
    return this.executeUntyped(command, params, options);
  }
  /** `execute` without the types: any command name, any params object. */
  async executeUntyped(command, params = {}, options = {}) {
    if (COMMANDS[command]?.streaming === true) {
      throw new TypeError(`${command} streams its answer: use client.log.tail() (from @portcullis/client/node)`);
    }
    const request = { id: this.#nextId++, command, params };
    const token = options.token === void 0 ? this.token : options.token;
    if (token !== void 0 && token !== null)
      request.token = token;
    if (options.client !== void 0) {
      request.client = { ip: options.client.ip };
      if (options.client.userAgent !== void 0)
        request.client.user_agent = options.client.userAgent;
    }
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

// dist/session.js
var MemoryStorage = class {
  #map = /* @__PURE__ */ new Map();
  get(key) {
    return this.#map.get(key) ?? null;
  }
  set(key, value) {
    this.#map.set(key, value);
  }
  remove(key) {
    this.#map.delete(key);
  }
};
var WebStorage = class {
  #storage;
  constructor(storage) {
    this.#storage = storage;
  }
  get(key) {
    return this.#storage.getItem(key);
  }
  set(key, value) {
    this.#storage.setItem(key, value);
  }
  remove(key) {
    this.#storage.removeItem(key);
  }
};
var WebLocksLock = class {
  #locks;
  constructor(locks) {
    this.#locks = locks;
  }
  run(name, fn) {
    return this.#locks.request(name, { mode: "exclusive" }, fn);
  }
};
var BroadcastChannelLock = class {
  #channel;
  #id = randomId();
  #settleMs;
  #maxHoldMs;
  #recheckMs;
  #clock = 0;
  /** Names this instance holds now. */
  #held = /* @__PURE__ */ new Set();
  /** Local callers queue here, so only one of them contends at a time. */
  #local = Promise.resolve();
  constructor(options = {}) {
    this.#channel = options.channel ?? unref(new BroadcastChannel(options.channelName ?? "portcullis-lock"));
    this.#settleMs = options.settleMs ?? 40;
    this.#maxHoldMs = options.maxHoldMs ?? 15e3;
    this.#recheckMs = Math.max(this.#settleMs * 5, 200);
    this.#channel.addEventListener("message", (event) => {
      const m = event.data;
      if (m === null || typeof m !== "object" || typeof m.clock !== "number")
        return;
      this.#clock = Math.max(this.#clock, m.clock) + 1;
      if (m.type === "want" && this.#held.has(m.name))
        this.#post("held", m.name);
    });
  }
  /** Stops listening. */
  close() {
    this.#channel.close();
  }
  #post(type, name) {
    this.#clock++;
    const message = { type, name, owner: this.#id, clock: this.#clock };
    this.#channel.postMessage(message);
    return this.#clock;
  }
  run(name, fn) {
    const turn = this.#local.then(() => this.#runExclusive(name, fn));
    this.#local = turn.catch(() => void 0);
    return turn;
  }
  async #runExclusive(name, fn) {
    await this.#acquire(name);
    this.#held.add(name);
    try {
      return await fn();
    } finally {
      this.#held.delete(name);
      this.#post("release", name);
    }
  }
  async #acquire(name) {
    const deadline = Date.now() + this.#maxHoldMs;
    for (; ; ) {
      const mine = this.#post("want", name);
      const blocked = await new Promise((resolve) => {
        let lost = false;
        const listener = (event) => {
          const m = event.data;
          if (m === null || typeof m !== "object" || m.name !== name || m.owner === this.#id)
            return;
          if (m.type === "held")
            lost = true;
          if (m.type === "want" && (m.clock < mine || m.clock === mine && m.owner < this.#id))
            lost = true;
        };
        this.#channel.addEventListener("message", listener);
        setTimeout(() => {
          this.#channel.removeEventListener("message", listener);
          resolve(lost);
        }, this.#settleMs);
      });
      if (!blocked || Date.now() >= deadline)
        return;
      await new Promise((resolve) => {
        const listener = (event) => {
          const m = event.data;
          if (m !== null && typeof m === "object" && m.name === name && m.type === "release")
            done();
        };
        const timer = setTimeout(() => done(), Math.max(0, Math.min(this.#recheckMs, deadline - Date.now())));
        const done = () => {
          clearTimeout(timer);
          this.#channel.removeEventListener("message", listener);
          resolve();
        };
        this.#channel.addEventListener("message", listener);
      });
    }
  }
};
var LocalLock = class {
  #tails = /* @__PURE__ */ new Map();
  run(name, fn) {
    const before = this.#tails.get(name) ?? Promise.resolve();
    const turn = before.then(fn);
    const tail = turn.catch(() => void 0);
    this.#tails.set(name, tail);
    void tail.then(() => {
      if (this.#tails.get(name) === tail)
        this.#tails.delete(name);
    });
    return turn;
  }
};
var Session = class {
  client;
  #storage;
  #key;
  #lock;
  #channel;
  #margin;
  #now;
  #listeners = /* @__PURE__ */ new Set();
  #tokens = null;
  #loaded = null;
  #refreshing = null;
  constructor(client, options = {}) {
    this.client = client;
    this.#key = options.key ?? "portcullis.session";
    this.#storage = options.storage ?? defaultStorage();
    this.#lock = options.lock ?? defaultLock(`${this.#key}.lock`);
    this.#margin = options.refreshMarginMs ?? 6e4;
    this.#now = options.now ?? (() => Date.now());
    if (options.onChange !== void 0)
      this.#listeners.add(options.onChange);
    this.#channel = options.channel === void 0 ? defaultChannel(`${this.#key}.channel`) : options.channel;
    this.#channel?.addEventListener("message", (event) => {
      const m = event.data;
      if (m === null || typeof m !== "object" || m.key !== this.#key)
        return;
      void this.#reload(m.type === "cleared" ? "cleared_elsewhere" : "updated_elsewhere");
    });
  }
  /** Adds a listener; returns a function that removes it. */
  onChange(listener) {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
  /** The tokens held now (read from the storage on first use), or `null`. */
  async tokens() {
    await this.#load();
    return this.#tokens;
  }
  /** Whether the session holds tokens. */
  async signedIn() {
    return await this.tokens() !== null;
  }
  /**
   * Takes the tokens of a sign-in (`AUTH.LOGIN`, `AUTH.SIGNUP`, `MFA.VERIFY`,
   * `MAGIC.VERIFY`, `PASSKEY.LOGIN.FINISH`, an `MfaRequiredError`'s enrolment session, …).
   * A step-up result (`MFA.VERIFY` without a refresh token) replaces the access token only.
   */
  async setTokens(result) {
    await this.#load();
    const refreshToken = result.refresh_token ?? this.#tokens?.refreshToken;
    if (typeof refreshToken !== "string")
      throw new TypeError("a sign-in result without a refresh token");
    const tokens = this.#held(result, refreshToken);
    await this.#save(tokens, "signed_in");
    return tokens;
  }
  async execute(command, params, options = {}) {
    const run = (token) => this.client.executeUntyped(command, params, { ...options, token });
    const tokens = await this.#fresh();
    if (tokens === null)
      throw new PortcullisError("UNAUTHENTICATED", "not signed in", { command });
    let result;
    try {
      result = await run(tokens.accessToken);
    } catch (error) {
      if (!(error instanceof PortcullisError) || error.code !== "UNAUTHENTICATED")
        throw error;
      const renewed = await this.refresh(tokens.accessToken);
      if (renewed === null || renewed.accessToken === tokens.accessToken)
        throw error;
      result = await run(renewed.accessToken);
    }
    if (command === "AUTH.LOGOUT")
      await this.#clear("signed_out");
    return result;
  }
  /** `AUTH.LOGOUT` (ends the session on the server), then clears the tokens. */
  async logout() {
    const tokens = await this.tokens();
    if (tokens === null)
      return;
    try {
      await this.client.execute("AUTH.LOGOUT", {}, { token: tokens.accessToken });
    } catch (error) {
      if (!(error instanceof PortcullisError) || error.code !== "UNAUTHENTICATED")
        throw error;
    }
    await this.#clear("signed_out");
  }
  /** Forgets the tokens without telling the server. */
  async clear() {
    await this.#clear("signed_out");
  }
  /**
   * Refreshes the tokens (`AUTH.REFRESH`) unless someone else already did: concurrent callers
   * share one refresh, and sessions sharing the storage take turns under the lock, the later
   * ones picking up the first one's tokens. With `staleAccessToken`, refreshes only while that
   * is still the access token held. Resolves to the tokens, or `null` when the server refused
   * the refresh (the session is then cleared).
   */
  refresh(staleAccessToken) {
    if (this.#refreshing === null) {
      this.#refreshing = this.#lock.run(`${this.#key}.refresh`, () => this.#refreshLocked(staleAccessToken)).finally(() => {
        this.#refreshing = null;
      });
    }
    return this.#refreshing;
  }
  async #refreshLocked(staleAccessToken) {
    const stored = await this.#read();
    if (stored === null) {
      if (this.#tokens !== null)
        await this.#clear("cleared_elsewhere", false);
      return null;
    }
    if (this.#tokens === null || stored.refreshToken !== this.#tokens.refreshToken) {
      this.#set(stored, "updated_elsewhere");
    }
    const due = stored.expiresAt - this.#margin <= this.#now();
    const stale = staleAccessToken !== void 0 && stored.accessToken === staleAccessToken;
    if (!due && !stale)
      return stored;
    let result;
    try {
      result = await this.client.execute("AUTH.REFRESH", { refresh_token: stored.refreshToken }, { token: null });
    } catch (error) {
      if (error instanceof PortcullisError && (error.code === "INVALID_CREDENTIALS" || error.code === "EXPIRED")) {
        await this.#clear("refresh_refused");
        return null;
      }
      throw error;
    }
    if (!isTokenPair(result))
      throw new PortcullisError("CLIENT_PROTOCOL", "AUTH.REFRESH answered without a token pair");
    const tokens = this.#held(result, result.refresh_token);
    await this.#save(tokens, "refreshed");
    return tokens;
  }
  /** The tokens as held, from an answer's token pair, the access token's expiry counted from now. */
  #held(result, refreshToken) {
    return {
      userId: result.user_id,
      sessionId: result.session_id,
      accessToken: result.access_token,
      refreshToken,
      expiresAt: this.#now() + result.expires_in * 1e3
    };
  }
  /** The tokens, refreshed first when the access token is about to expire. */
  async #fresh() {
    await this.#load();
    const tokens = this.#tokens;
    if (tokens === null)
      return null;
    if (tokens.expiresAt - this.#margin > this.#now())
      return tokens;
    return this.refresh();
  }
  #load() {
    if (this.#loaded === null) {
      this.#loaded = this.#read().then((tokens) => {
        if (this.#tokens === null)
          this.#tokens = tokens;
      });
    }
    return this.#loaded;
  }
  async #read() {
    const text = await this.#storage.get(this.#key);
    if (text === null)
      return null;
    try {
      const value = JSON.parse(text);
      if (typeof value.accessToken === "string" && typeof value.refreshToken === "string" && typeof value.expiresAt === "number") {
        return value;
      }
    } catch {
    }
    return null;
  }
  async #reload(change) {
    const stored = await this.#read();
    if (stored === null) {
      if (this.#tokens !== null)
        this.#set(null, change);
    } else if (this.#tokens === null || stored.accessToken !== this.#tokens.accessToken) {
      this.#set(stored, change);
    }
  }
  async #save(tokens, change) {
    await this.#storage.set(this.#key, JSON.stringify(tokens));
    this.#set(tokens, change);
    this.#broadcast("tokens");
  }
  async #clear(change, broadcast = true) {
    await this.#load();
    await this.#storage.remove(this.#key);
    const had = this.#tokens !== null;
    this.#tokens = null;
    if (had)
      this.#emit(null, change);
    if (broadcast)
      this.#broadcast("cleared");
  }
  #set(tokens, change) {
    this.#tokens = tokens;
    this.#emit(tokens, change);
  }
  #emit(tokens, change) {
    for (const listener of this.#listeners) {
      try {
        listener(tokens, change);
      } catch {
      }
    }
  }
  #broadcast(type) {
    const message = { type, key: this.#key };
    this.#channel?.postMessage(message);
  }
  /** Stops listening to other tabs. */
  close() {
    this.#channel?.close();
  }
};
function defaultStorage() {
  const g = globalThis;
  try {
    if (g.localStorage !== void 0)
      return new WebStorage(g.localStorage);
  } catch {
  }
  return new MemoryStorage();
}
function defaultLock(channelName) {
  const nav = globalThis.navigator;
  if (nav?.locks !== void 0)
    return new WebLocksLock(nav.locks);
  if (typeof BroadcastChannel === "function")
    return new BroadcastChannelLock({ channelName });
  return new LocalLock();
}
function defaultChannel(name) {
  if (typeof BroadcastChannel !== "function")
    return null;
  return unref(new BroadcastChannel(name));
}
function unref(channel) {
  const c = channel;
  if (typeof c.unref === "function")
    c.unref();
  return channel;
}
function randomId() {
  const bytes2 = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes2);
  return Array.from(bytes2, (b) => b.toString(16).padStart(2, "0")).join("");
}

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
function isObject2(v) {
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
    if (!isObject2(d))
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
  if (!isObject2(json))
    throw new TypeError("creation options are not an object");
  const user = json.user;
  if (!isObject2(user))
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
  if (!isObject2(json))
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
  if (error instanceof MfaRequiredError) {
    if (error.mfaToken === null)
      return void 0;
    return { mfaToken: error.mfaToken, methods: [...error.methods], expiresIn: error.expiresIn };
  }
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
    const c = ceremony(await this.#client.execute("PASSKEY.LOGIN.BEGIN", { mfa_token: options.mfaToken }, { token: null }), "PASSKEY.LOGIN.BEGIN");
    const credential = await get(c.publicKey, options.signal === void 0 ? {} : { signal: options.signal });
    return await this.#client.execute("MFA.VERIFY", { mfa_token: options.mfaToken, method: "passkey", ceremony_id: c.ceremony_id, credential }, { token: null });
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
var MemoryStorage2 = class {
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
function defaultStorage2() {
  try {
    const s = globalThis.localStorage;
    if (s !== void 0)
      return s;
  } catch {
  }
  return new MemoryStorage2();
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
    this.#storage = options.storage ?? defaultStorage2();
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
  BroadcastChannelLock,
  COMMANDS,
  Client,
  ERROR_CODES,
  HttpTransport,
  LocalLock,
  MagicLinks,
  MemoryStorage,
  MfaRequiredError,
  PROTOCOL_VERSION,
  Passkeys,
  PortcullisError,
  Session,
  WebLocksLock,
  WebStorage,
  createPkce,
  credentialToJSON,
  decodeBase64url,
  decodeCreationOptions,
  decodeRequestOptions,
  encodeBase64url,
  isErrorCode,
  isResponse,
  isTokenPair,
  mfaChallengeOf,
  pkceChallenge
};
