import type { Response } from "./envelope.js";

/**
 * The closed set of error codes (protocol/errors.md). A server never answers another code;
 * `CLIENT_*` codes are the SDK's own, for failures that never reached a server's answer.
 */
export type ErrorCode =
  | "BAD_REQUEST"
  | "FRAME_TOO_LARGE"
  | "UNKNOWN_COMMAND"
  | "INVALID_PARAMS"
  | "UNAUTHENTICATED"
  | "FORBIDDEN"
  | "INVALID_CREDENTIALS"
  | "MFA_REQUIRED"
  | "EXPIRED"
  | "ALREADY_USED"
  | "TOO_MANY_ATTEMPTS"
  | "RATE_LIMITED"
  | "CONFLICT"
  | "NOT_FOUND"
  | "UNAVAILABLE"
  | "INTERNAL";

/** Failures of the client itself: no answer was read from the server. */
export type ClientErrorCode = "CLIENT_CLOSED" | "CLIENT_TRANSPORT" | "CLIENT_PROTOCOL";

/** A refused command, or a call that could not get an answer. */
export class PortcullisError extends Error {
  override readonly name: string = "PortcullisError";
  /** The error code: branch on this, never on `message`. */
  readonly code: ErrorCode | ClientErrorCode;
  /** The earliest useful moment to retry, in milliseconds, when the server gave one. */
  readonly retryAfterMs: number | undefined;
  /** Machine-readable details for some codes (e.g. `{"reason":"step_up_required"}`). */
  readonly details: Record<string, unknown> | undefined;
  /** The command that was refused, when known. */
  readonly command: string | undefined;

  constructor(
    code: ErrorCode | ClientErrorCode,
    message: string,
    options: {
      retryAfterMs?: number | undefined;
      details?: Record<string, unknown> | undefined;
      command?: string | undefined;
      cause?: unknown;
    } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
    this.details = options.details;
    this.command = options.command;
  }

  /** The error a failed response envelope stands for. */
  static fromResponse(response: Response): PortcullisError {
    const e = response.error;
    if (e === null) {
      return new PortcullisError("CLIENT_PROTOCOL", "a failed response without an error object");
    }
    return new PortcullisError(e.code as ErrorCode, e.message, {
      retryAfterMs: e.retry_after_ms,
      details: e.details,
      command: response.command ?? undefined,
    });
  }
}
