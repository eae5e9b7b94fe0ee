import type { Request } from "./envelope.js";
import { PortcullisError } from "./errors.js";
import { HttpTransport } from "./http.js";
import type { Transport } from "./transport.js";

/** Per-call options. */
export interface CallOptions {
  /** The credential for this call (overrides the client's default token). */
  token?: string;
}

/** Options of a client. */
export interface ClientOptions {
  /** How requests travel; give either this or `baseUrl`. */
  transport?: Transport;
  /** The HTTP gateway's base URL (an `HttpTransport` is made for it). */
  baseUrl?: string;
  /** The default credential: an access token, an API key or the operator token. */
  token?: string;
}

/** Runs commands: `await client.execute("AUTH.LOGIN", { email, password })`. */
export class Client {
  readonly transport: Transport;
  /** The default credential of calls that give none. */
  token: string | undefined;
  #nextId = 1;

  constructor(options: ClientOptions) {
    if (options.transport !== undefined) {
      this.transport = options.transport;
    } else if (options.baseUrl !== undefined) {
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
  async execute(
    command: string,
    params: Record<string, unknown> = {},
    options: CallOptions = {},
  ): Promise<unknown> {
    const request: Request = { id: this.#nextId++, command, params };
    const token = options.token ?? this.token;
    if (token !== undefined) request.token = token;
    const response = await this.transport.send(request);
    if (!response.ok) throw PortcullisError.fromResponse(response);
    return response.data;
  }

  /** Closes the transport. */
  async close(): Promise<void> {
    await this.transport.close();
  }
}
