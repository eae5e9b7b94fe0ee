import type { Response } from "./envelope.js";
import type { ErrorCode } from "./generated/commands.js";
import { ERROR_CODES } from "./generated/commands.js";

export type { ErrorCode };

/**
 * Failures of the client itself, when no answer was read from the server:
 * - `CLIENT_CLOSED`: the connection closed (or the client was closed) while the call was in
 *   flight. The command may or may not have run; it is never retried silently.
 * - `CLIENT_TRANSPORT`: the server could not be reached; the request was not sent.
 * - `CLIENT_PROTOCOL`: the server's answer could not be read (not JSON, not an envelope, an id
 *   that does not match, a line over the size limit).
 */
export type ClientErrorCode = "CLIENT_CLOSED" | "CLIENT_TRANSPORT" | "CLIENT_PROTOCOL";

/** A second factor that can complete a sign-in (`MFA_REQUIRED`'s `details.methods`). */
export type MfaMethod = "totp" | "recovery_code" | "passkey";

/** A token pair as every sign-in and `AUTH.REFRESH` return it. */
export interface TokenPair {
  user_id: string;
  session_id: string;
  access_token: string;
  refresh_token: string;
  token_type: string;
  expires_in: number;
}

/** Options of a `PortcullisError`. */
export interface PortcullisErrorOptions {
  retryAfterMs?: number | undefined;
  details?: Record<string, unknown> | undefined;
  command?: string | undefined;
  cause?: unknown;
}

const SERVER_CODES: ReadonlySet<string> = new Set(ERROR_CODES);

/** Whether `code` is one of the server's closed set of codes. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === "string" && SERVER_CODES.has(code);
}

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

  constructor(code: ErrorCode | ClientErrorCode, message: string, options: PortcullisErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
    this.details = options.details;
    this.command = options.command;
  }

  /** `details.reason`, when the server gave one (e.g. `step_up_required`, `lagged`). */
  get reason(): string | undefined {
    const reason = this.details?.["reason"];
    return typeof reason === "string" ? reason : undefined;
  }

  /**
   * The error a failed response envelope stands for: an `MfaRequiredError` for
   * `MFA_REQUIRED`, a `PortcullisError` otherwise. A code outside the closed set (a server
   * newer than this SDK) is reported as `CLIENT_PROTOCOL`, keeping the server's message.
   */
  static fromResponse(response: Response): PortcullisError {
    const e = response.error;
    if (e === null) {
      return new PortcullisError("CLIENT_PROTOCOL", "a failed response without an error object");
    }
    const options: PortcullisErrorOptions = {
      retryAfterMs: typeof e.retry_after_ms === "number" ? e.retry_after_ms : undefined,
      details: isObject(e.details) ? e.details : undefined,
      command: response.command ?? undefined,
    };
    if (e.code === "MFA_REQUIRED") {
      const mfa = MfaRequiredError.fromDetails(e.message, options);
      if (mfa !== undefined) return mfa;
    }
    if (!isErrorCode(e.code)) {
      return new PortcullisError("CLIENT_PROTOCOL", `unknown error code ${JSON.stringify(e.code)}: ${e.message}`, options);
    }
    return new PortcullisError(e.code, e.message, options);
  }
}

/**
 * `MFA_REQUIRED`: the first factor was right, and a second one must complete the sign-in
 * (`client.mfa.verify(error, { method: "totp", code })`). No session was started.
 */
export class MfaRequiredError extends PortcullisError {
  override readonly name: string = "MfaRequiredError";
  declare readonly code: "MFA_REQUIRED";
  /**
   * The single-use ticket for `MFA.VERIFY`; `null` when the account must first enrol a factor.
   * Not enumerable, and left out of `details`, so logging the error does not print it.
   */
  declare readonly mfaToken: string | null;
  /** The second factors that can complete it (empty when the account has none yet). */
  readonly methods: readonly MfaMethod[];
  /** Seconds the ticket (or the enrolment session's access token) is valid. */
  readonly expiresIn: number;
  /**
   * When the server requires a second factor and the account has none (`mfa_policy`
   * `"required"`): the token pair of a session that may only enrol one.
   */
  declare readonly enrolmentSession: TokenPair | undefined;

  constructor(
    message: string,
    challenge: { mfaToken: string | null; methods: readonly MfaMethod[]; expiresIn: number; enrolmentSession?: TokenPair | undefined },
    options: PortcullisErrorOptions = {},
  ) {
    super("MFA_REQUIRED", message, { ...options, details: withoutSecrets(options.details) });
    this.methods = challenge.methods;
    this.expiresIn = challenge.expiresIn;
    Object.defineProperty(this, "mfaToken", { value: challenge.mfaToken, enumerable: false });
    Object.defineProperty(this, "enrolmentSession", { value: challenge.enrolmentSession, enumerable: false });
  }

  /** Reads `details`; `undefined` when they do not have the documented shape. */
  static fromDetails(message: string, options: PortcullisErrorOptions): MfaRequiredError | undefined {
    const d = options.details;
    if (d === undefined) return undefined;
    const token = d["mfa_token"];
    const methods = d["methods"];
    const expiresIn = d["expires_in"];
    if (!(token === null || typeof token === "string")) return undefined;
    if (!Array.isArray(methods) || !methods.every((m) => typeof m === "string")) return undefined;
    if (typeof expiresIn !== "number") return undefined;
    const session = d["enrolment_session"];
    return new MfaRequiredError(
      message,
      {
        mfaToken: token,
        methods: methods as MfaMethod[],
        expiresIn,
        enrolmentSession: isTokenPair(session) ? session : undefined,
      },
      options,
    );
  }

  /** Keeps the ticket out of `JSON.stringify` and logs. */
  toJSON(): Record<string, unknown> {
    return { name: this.name, code: this.code, message: this.message, methods: this.methods, expiresIn: this.expiresIn };
  }
}

function withoutSecrets(details: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  if (details === undefined) return undefined;
  const { mfa_token: _token, enrolment_session: _session, ...rest } = details;
  return rest;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Whether a value has the shape of a token pair. */
export function isTokenPair(value: unknown): value is TokenPair {
  return (
    isObject(value) &&
    typeof value["access_token"] === "string" &&
    typeof value["refresh_token"] === "string" &&
    typeof value["expires_in"] === "number" &&
    typeof value["session_id"] === "string" &&
    typeof value["user_id"] === "string"
  );
}
