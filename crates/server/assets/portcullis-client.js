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
      verify: async (challenge, factor, callOptions) => {
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
        return this.execute("MFA.VERIFY", params, callOptions ?? (mfaToken !== null ? { token: null } : {}));
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
    const tokens = {
      userId: result.user_id,
      sessionId: result.session_id,
      accessToken: result.access_token,
      refreshToken,
      expiresAt: this.#now() + result.expires_in * 1e3
    };
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
    const tokens = {
      userId: result.user_id,
      sessionId: result.session_id,
      accessToken: result.access_token,
      refreshToken: result.refresh_token,
      expiresAt: this.#now() + result.expires_in * 1e3
    };
    await this.#save(tokens, "refreshed");
    return tokens;
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
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
export {
  BroadcastChannelLock,
  COMMANDS,
  Client,
  ERROR_CODES,
  HttpTransport,
  LocalLock,
  MemoryStorage,
  MfaRequiredError,
  PROTOCOL_VERSION,
  PortcullisError,
  Session,
  WebLocksLock,
  WebStorage,
  isErrorCode,
  isResponse,
  isTokenPair
};
