import { connect as netConnect } from "node:net";
import type { Socket } from "node:net";
import { isResponse } from "./envelope.js";
import { PortcullisError } from "./errors.js";
import type { ClientErrorCode, ErrorCode, PortcullisErrorOptions } from "./errors.js";
import type { ResultOf } from "./client.js";
import { LineSplitter } from "./lines.js";
import { backoffDelay } from "./tcp.js";

/** One event of the audit log (protocol/events.md), as `LOG.TAIL` and `LOG.QUERY` give it. */
export type LogEvent = Extract<ResultOf<"LOG.TAIL">, { event: unknown }>["event"];

/** Options of `client.log.tail(...)`. */
export interface LogTailOptions {
  /** The first seq to send (default: only new events when following, nothing when not). */
  fromSeq?: number;
  /** Keep following new events after the replay (default `false`: end after the replay). */
  follow?: boolean;
  /** The credential (default: the client's token): the operator token, an API key with `log:read`, a superadmin's access token. */
  token?: string;
  /**
   * When the stream ends early with a `resume_from_seq` (the follower `lagged`, the server is
   * stopping: `shutdown`, `pruned`, `storage`) or the connection drops, open a new connection
   * and continue from there without a gap or a duplicate, at most `maxResumes` times in a row
   * (default: `false`, the iterator throws a `LogTailError`).
   */
  resume?: boolean;
  /** Resumes in a row without an event in between before giving up (default 10). */
  maxResumes?: number;
  /** Called when the replay has reached the head (`caught_up`) with the next seq to come. */
  onCaughtUp?: (nextSeq: number) => void;
  /** The longest line read, in bytes (default 16 MiB). */
  maxLineBytes?: number;
}

/** A tail that ended early: resume it with `fromSeq: error.resumeFromSeq`. */
export class LogTailError extends PortcullisError {
  override readonly name: string = "LogTailError";
  /** The first seq not received; a new tail from here has no gap and no duplicate. */
  readonly resumeFromSeq: number | undefined;

  constructor(code: ErrorCode | ClientErrorCode, message: string, resumeFromSeq: number | undefined, options: PortcullisErrorOptions = {}) {
    super(code, message, options);
    this.resumeFromSeq = resumeFromSeq;
  }

  /** Whether resuming makes sense (the stream did not end because an event is unreadable). */
  get resumable(): boolean {
    return this.resumeFromSeq !== undefined && this.reason !== "unreadable";
  }
}

/** Where the tail connects. */
export interface TailAddress {
  host: string;
  port: number;
}

function connectSocket(address: TailAddress): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: address.host, port: address.port });
    socket.once("error", reject);
    socket.once("connect", () => {
      socket.off("error", reject);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

/**
 * `LOG.TAIL` on a connection of its own, as an async iterator of events. Ends when the stream's
 * last line is `end` (without `follow`); breaking out of the loop closes the connection.
 */
export async function* tailLog(address: TailAddress, token: string | undefined, options: LogTailOptions = {}): AsyncGenerator<LogEvent, void, undefined> {
  let fromSeq = options.fromSeq;
  let resumes = 0;
  const maxResumes = options.maxResumes ?? 10;
  for (;;) {
    let nextSeq = fromSeq;
    let socket: Socket | undefined;
    try {
      try {
        socket = await connectSocket(address);
      } catch (cause) {
        throw new LogTailError("CLIENT_TRANSPORT", `could not connect to ${address.host}:${address.port}`, nextSeq, { cause });
      }
      const params: Record<string, unknown> = { follow: options.follow ?? false };
      if (fromSeq !== undefined) params["from_seq"] = fromSeq;
      const request: Record<string, unknown> = { id: 1, command: "LOG.TAIL", params };
      if (token !== undefined) request["token"] = token;
      socket.write(`${JSON.stringify(request)}\n`);
      const splitter = new LineSplitter(options.maxLineBytes ?? 16 * 1024 * 1024);
      for await (const chunk of socket as AsyncIterable<Buffer>) {
        const lines = splitter.push(chunk);
        if (lines === null) throw new LogTailError("CLIENT_PROTOCOL", "a log line exceeds the size limit", nextSeq);
        for (const line of lines) {
          if (line.trim() === "") continue;
          let value: unknown;
          try {
            value = JSON.parse(line);
          } catch (cause) {
            throw new LogTailError("CLIENT_PROTOCOL", "a log line is not JSON", nextSeq, { cause });
          }
          if (!isResponse(value) || value.id !== 1) {
            throw new LogTailError("CLIENT_PROTOCOL", "a log line is not this tail's response", nextSeq);
          }
          if (!value.ok) {
            const e = PortcullisError.fromResponse(value);
            const resume = e.details?.["resume_from_seq"];
            throw new LogTailError(e.code, e.message, typeof resume === "number" ? resume : undefined, {
              retryAfterMs: e.retryAfterMs,
              details: e.details,
              command: "LOG.TAIL",
            });
          }
          const data = value.data as Record<string, unknown> | null;
          if (data !== null && typeof data === "object" && "event" in data) {
            const event = data["event"] as LogEvent;
            nextSeq = event.seq + 1;
            resumes = 0;
            yield event;
          } else if (data !== null && typeof data === "object" && data["caught_up"] === true) {
            if (typeof data["next_seq"] === "number") nextSeq = data["next_seq"];
            options.onCaughtUp?.(data["next_seq"] as number);
          } else if (data !== null && typeof data === "object" && data["end"] === true) {
            return;
          } else {
            throw new LogTailError("CLIENT_PROTOCOL", "a log line of an unknown kind", nextSeq);
          }
        }
      }
      throw new LogTailError("CLIENT_CLOSED", "the connection closed before the tail's last line", nextSeq);
    } catch (error) {
      if (!(error instanceof LogTailError)) {
        // A socket error while reading: the same as a close.
        const wrapped = new LogTailError("CLIENT_CLOSED", "the connection failed during the tail", nextSeq, { cause: error });
        if (!(options.resume === true && resumes < maxResumes)) throw wrapped;
        error = wrapped;
      }
      const e = error as LogTailError;
      const canResume =
        options.resume === true && resumes < maxResumes && (e.resumable || e.code === "CLIENT_TRANSPORT" || e.code === "CLIENT_CLOSED");
      if (!canResume) throw e;
      resumes++;
      if (e.resumeFromSeq !== undefined) fromSeq = e.resumeFromSeq;
      await new Promise((r) => setTimeout(r, backoffDelay(resumes, 100, 5000)));
    } finally {
      socket?.destroy();
    }
  }
}
