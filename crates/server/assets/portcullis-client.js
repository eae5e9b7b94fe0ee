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
export {
  Client,
  HttpTransport,
  PortcullisError,
  isResponse
};
