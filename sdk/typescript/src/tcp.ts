import { connect as netConnect } from "node:net";
import type { Socket } from "node:net";
import type { Request, RequestId, Response } from "./envelope.js";
import { isResponse } from "./envelope.js";
import { PortcullisError, isErrorCode } from "./errors.js";
import { LineSplitter } from "./lines.js";
import type { Transport } from "./transport.js";

/** How a dropped connection is reopened. */
export interface ReconnectOptions {
  /** Connection attempts per call before it fails with `CLIENT_TRANSPORT` (default 6). */
  attempts?: number;
  /** The pause before the second attempt, in milliseconds (default 100); it doubles each time. */
  initialDelayMs?: number;
  /** The longest pause between attempts, in milliseconds (default 5000). */
  maxDelayMs?: number;
}

/** Options of the NDJSON-over-TCP transport. */
export interface TcpTransportOptions {
  host?: string;
  port: number;
  /** The longest answer line read, in bytes (default 16 MiB); a longer one closes the connection. */
  maxLineBytes?: number;
  /** Give up a connection attempt after this many milliseconds (default 10000). */
  connectTimeoutMs?: number;
  /**
   * Calls written and not yet answered, at most (default 1024). Further calls wait their turn
   * in the client instead of piling up in the socket's buffer while the server is not reading.
   */
  maxInFlight?: number;
  reconnect?: ReconnectOptions;
}

interface Pending {
  readonly id: RequestId;
  readonly command: string;
  resolve(response: Response): void;
  reject(error: PortcullisError): void;
}

/** One open connection and the calls waiting for its answers, in the order they were written. */
interface Connection {
  readonly socket: Socket;
  readonly pending: Pending[];
  readonly lines: LineSplitter;
  /** Lines written in this tick, flushed together. */
  out: string[];
  closed: boolean;
}

/** The pause before connection attempt `n` (n ≥ 1 failures so far): exponential, with jitter. */
export function backoffDelay(failures: number, initialDelayMs: number, maxDelayMs: number, random: () => number = Math.random): number {
  if (failures <= 0) return 0;
  const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(failures - 1, 30));
  // "Equal jitter": at least half the ceiling, so attempts never bunch up at zero.
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * NDJSON over TCP (protocol/framing.md): one connection, many calls in flight (pipelining),
 * answers matched to calls in order and checked against their ids.
 *
 * When the connection drops, every call in flight fails with `CLIENT_CLOSED` (the command may
 * have run: it is never retried); the next call opens a new connection, with exponential
 * backoff and jitter between failed attempts.
 */
export class TcpTransport implements Transport {
  readonly host: string;
  readonly port: number;
  readonly #maxLineBytes: number;
  readonly #connectTimeoutMs: number;
  readonly #attempts: number;
  readonly #initialDelayMs: number;
  readonly #maxDelayMs: number;
  readonly #maxInFlight: number;
  /** Calls waiting for a slot, in call order. */
  readonly #slots: Array<() => void> = [];
  #writing = 0;
  #conn: Connection | null = null;
  #connecting: Promise<Connection> | null = null;
  #failures = 0;
  #closed = false;

  constructor(options: TcpTransportOptions) {
    this.host = options.host ?? "127.0.0.1";
    this.port = options.port;
    this.#maxLineBytes = options.maxLineBytes ?? 16 * 1024 * 1024;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.#attempts = Math.max(1, options.reconnect?.attempts ?? 6);
    this.#initialDelayMs = options.reconnect?.initialDelayMs ?? 100;
    this.#maxDelayMs = options.reconnect?.maxDelayMs ?? 5000;
    this.#maxInFlight = Math.max(1, options.maxInFlight ?? 1024);
  }

  /** Calls written and not answered yet. */
  get inFlight(): number {
    return this.#conn?.pending.length ?? 0;
  }

  /** Calls waiting for one of the `maxInFlight` slots. */
  get queued(): number {
    return this.#slots.length;
  }

  async send(request: Request): Promise<Response> {
    if (this.#closed) throw new PortcullisError("CLIENT_CLOSED", "the client is closed");
    if (this.#writing >= this.#maxInFlight || this.#slots.length > 0) {
      await new Promise<void>((resolve) => this.#slots.push(resolve));
    } else {
      this.#writing++;
    }
    try {
      return await this.#sendInSlot(request);
    } finally {
      const next = this.#slots.shift();
      if (next !== undefined) next();
      else this.#writing--;
    }
  }

  async #sendInSlot(request: Request): Promise<Response> {
    if (this.#closed) throw new PortcullisError("CLIENT_CLOSED", "the client is closed");
    const line = JSON.stringify(request);
    const conn = this.#conn !== null && !this.#conn.closed ? this.#conn : await this.#open();
    if (this.#closed) throw new PortcullisError("CLIENT_CLOSED", "the client is closed");
    if (conn.closed) {
      // Dropped between the connect and this call's turn: nothing was written, so try again.
      return this.#sendInSlot(request);
    }
    return new Promise<Response>((resolve, reject) => {
      conn.pending.push({ id: request.id ?? null, command: request.command, resolve, reject });
      conn.out.push(line);
      if (conn.out.length === 1) queueMicrotask(() => this.#flush(conn));
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const conn = this.#conn;
    this.#conn = null;
    if (conn !== null) this.#drop(conn, new PortcullisError("CLIENT_CLOSED", "the client was closed before the answer arrived; the command may have run"));
  }

  #flush(conn: Connection): void {
    if (conn.closed || conn.out.length === 0) return;
    const text = `${conn.out.join("\n")}\n`;
    conn.out = [];
    conn.socket.write(text);
  }

  /** Opens the connection (one attempt at a time for all callers), with backoff. */
  #open(): Promise<Connection> {
    if (this.#connecting === null) {
      this.#connecting = this.#openWithRetries().finally(() => {
        this.#connecting = null;
      });
    }
    return this.#connecting;
  }

  async #openWithRetries(): Promise<Connection> {
    let lastError: unknown;
    for (let attempt = 0; attempt < this.#attempts; attempt++) {
      if (this.#closed) throw new PortcullisError("CLIENT_CLOSED", "the client is closed");
      const delay = backoffDelay(this.#failures, this.#initialDelayMs, this.#maxDelayMs);
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
      try {
        const conn = await this.#connectOnce();
        if (this.#closed) {
          // Closed while connecting: do not leave the socket open.
          conn.closed = true;
          conn.socket.destroy();
          throw new PortcullisError("CLIENT_CLOSED", "the client is closed");
        }
        this.#conn = conn;
        return conn;
      } catch (cause) {
        if (cause instanceof PortcullisError) throw cause;
        lastError = cause;
        this.#failures++;
      }
    }
    throw new PortcullisError("CLIENT_TRANSPORT", `could not connect to ${this.host}:${this.port}`, { cause: lastError });
  }

  #connectOnce(): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const socket = netConnect({ host: this.host, port: this.port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error("connect timed out"));
      }, this.#connectTimeoutMs);
      const onError = (err: Error) => {
        clearTimeout(timer);
        reject(err);
      };
      socket.once("error", onError);
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.off("error", onError);
        socket.setNoDelay(true);
        const conn: Connection = { socket, pending: [], lines: new LineSplitter(this.#maxLineBytes), out: [], closed: false };
        socket.on("data", (chunk: Buffer) => this.#onData(conn, chunk));
        socket.on("error", () => {
          // "close" follows and rejects the calls in flight.
        });
        socket.on("close", () => {
          this.#drop(conn, new PortcullisError("CLIENT_CLOSED", "the connection closed before the answer arrived; the command may have run"));
        });
        resolve(conn);
      });
    });
  }

  #onData(conn: Connection, chunk: Buffer): void {
    const lines = conn.lines.push(chunk);
    if (lines === null) {
      this.#fail(conn, new PortcullisError("CLIENT_PROTOCOL", `an answer line exceeds ${this.#maxLineBytes} bytes; the connection was closed`));
      return;
    }
    for (const line of lines) {
      if (conn.closed) return;
      if (line.trim() === "") continue;
      this.#onLine(conn, line);
    }
  }

  #onLine(conn: Connection, line: string): void {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (cause) {
      this.#fail(conn, new PortcullisError("CLIENT_PROTOCOL", "an answer line is not JSON", { cause }));
      return;
    }
    if (!isResponse(value)) {
      this.#fail(conn, new PortcullisError("CLIENT_PROTOCOL", "an answer line is not a response envelope"));
      return;
    }
    // The connection-cap refusal (framing.md): one line with id and command null, sent before
    // any request was read, then the server closes. None of the calls in flight ran, so each
    // gets the server's code (UNAVAILABLE, or RATE_LIMITED for the per-address cap).
    if (
      !value.ok &&
      value.command === null &&
      value.id === null &&
      value.error !== null &&
      (value.error.code === "UNAVAILABLE" || value.error.code === "RATE_LIMITED")
    ) {
      const e = value.error;
      this.#failures = Math.max(this.#failures, 1);
      this.#drop(
        conn,
        new PortcullisError(isErrorCode(e.code) ? e.code : "CLIENT_PROTOCOL", e.message, {
          retryAfterMs: e.retry_after_ms,
          details: e.details,
        }),
      );
      return;
    }
    const call = conn.pending.shift();
    if (call === undefined) {
      this.#fail(conn, new PortcullisError("CLIENT_PROTOCOL", "an answer arrived with no call waiting for it"));
      return;
    }
    // A valid request's id is always echoed; `null` comes back only for frames the server could
    // not read as a request (BAD_REQUEST, FRAME_TOO_LARGE), which answer that request too.
    const idMatches = value.id === call.id || (value.id === null && value.command === null);
    if (!idMatches) {
      const error = new PortcullisError("CLIENT_PROTOCOL", "an answer's id does not match its call; the connection was closed");
      call.reject(error);
      this.#fail(conn, error);
      return;
    }
    this.#failures = 0;
    call.resolve(value);
  }

  /** Closes the connection because its stream cannot be trusted any more. */
  #fail(conn: Connection, error: PortcullisError): void {
    this.#drop(conn, error);
  }

  /** Marks the connection closed and rejects every call still waiting on it. */
  #drop(conn: Connection, error: PortcullisError): void {
    if (!conn.closed) {
      conn.closed = true;
      conn.out = [];
      conn.socket.destroy();
      if (this.#conn === conn) this.#conn = null;
    }
    const waiting = conn.pending.splice(0);
    for (const call of waiting) call.reject(error);
  }
}
