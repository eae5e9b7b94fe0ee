// The Node entry: everything of the universal entry, plus NDJSON over TCP and the operator's
// log tail. Its `Client` is the universal one with `log.tail` and a `tcp` option.
import { Client as BaseClient } from "./client.js";
import type { ClientOptions } from "./client.js";
import { tailLog } from "./logtail.js";
import type { LogEvent, LogTailOptions } from "./logtail.js";
import { TcpTransport } from "./tcp.js";
import type { TcpTransportOptions } from "./tcp.js";

export * from "./index.js";
export { LogTailError } from "./logtail.js";
export type { LogEvent, LogTailOptions } from "./logtail.js";
export { TcpTransport, backoffDelay } from "./tcp.js";
export type { ReconnectOptions, TcpTransportOptions } from "./tcp.js";

/** Options of the Node client: those of the universal one, or a TCP address. */
export interface NodeClientOptions extends ClientOptions {
  /** Speak NDJSON over TCP to this address (pipelined; see `TcpTransport`). */
  tcp?: TcpTransportOptions;
}

/** The client for Node: HTTP or NDJSON over TCP, and `log.tail`. */
export class Client extends BaseClient {
  readonly #tcp: { host: string; port: number } | undefined;

  /** The audit log, for operators. */
  readonly log: {
    /**
     * `LOG.TAIL` on a TCP connection of its own:
     * `for await (const event of client.log.tail({ fromSeq: 1, follow: true })) { … }`.
     * Breaking out of the loop closes the connection. Needs the `tcp` option.
     */
    tail(options?: LogTailOptions): AsyncGenerator<LogEvent, void, undefined>;
  };

  constructor(options: NodeClientOptions) {
    const tcp = options.tcp;
    super(options.transport === undefined && options.baseUrl === undefined && tcp !== undefined ? { ...options, transport: new TcpTransport(tcp) } : options);
    this.#tcp = tcp === undefined ? undefined : { host: tcp.host ?? "127.0.0.1", port: tcp.port };
    this.log = {
      tail: (tailOptions = {}) => {
        const address = this.#tcp;
        if (address === undefined) throw new TypeError("log.tail needs the client's `tcp` option (the server's TCP address)");
        return tailLog(address, tailOptions.token ?? this.token, tailOptions);
      },
    };
  }
}
