import type { Request, Response } from "./envelope.js";
import { isResponse } from "./envelope.js";
import { PortcullisError } from "./errors.js";
import type { Transport } from "./transport.js";

/** Options of the HTTP transport. */
export interface HttpTransportOptions {
  /** The gateway's base URL, e.g. `http://127.0.0.1:7421`; `""` means the page's own origin. */
  baseUrl: string;
  /** `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
}

/** `POST /api/v1/execute` with the token in the `Authorization` header. */
export class HttpTransport implements Transport {
  readonly #url: string;
  readonly #fetch: typeof fetch;
  readonly #headers: Record<string, string>;
  readonly #inflight = new Set<AbortController>();
  #closed = false;

  constructor(options: HttpTransportOptions) {
    this.#url = `${options.baseUrl.replace(/\/+$/, "")}/api/v1/execute`;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#headers = options.headers ?? {};
  }

  async send(request: Request): Promise<Response> {
    if (this.#closed) throw new PortcullisError("CLIENT_CLOSED", "the client is closed");
    const { token, ...body } = request;
    const headers: Record<string, string> = {
      ...this.#headers,
      "content-type": "application/json",
      accept: "application/json",
    };
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    const abort = new AbortController();
    this.#inflight.add(abort);
    let text: string;
    try {
      const res = await this.#fetch(this.#url, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: abort.signal,
      });
      text = await res.text();
    } catch (cause) {
      if (this.#closed) throw new PortcullisError("CLIENT_CLOSED", "the client was closed", { cause });
      throw new PortcullisError("CLIENT_TRANSPORT", "the server could not be reached", { cause });
    } finally {
      this.#inflight.delete(abort);
    }
    let parsed: unknown;
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

  async close(): Promise<void> {
    this.#closed = true;
    for (const abort of this.#inflight) abort.abort();
    this.#inflight.clear();
  }
}
