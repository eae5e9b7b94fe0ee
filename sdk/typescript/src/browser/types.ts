import { MfaRequiredError, PortcullisError } from "../errors.js";
import type { TokenPair } from "../errors.js";

export type { TokenPair };

/**
 * What the browser helpers need of a client: `execute(command, params, {token})` resolving to
 * the answer's `data` and rejecting with a `PortcullisError`. The SDK's `Client` is one. (A
 * `Session` is one too, but it sends every call with its access token and refuses calls when
 * signed out: give the helpers the `Client`, and the user's token where a call needs it.)
 */
export interface Executor {
  execute(
    command: string,
    params?: Record<string, unknown>,
    options?: { token?: string | null },
  ): Promise<unknown>;
}

/** Options of a helper call made on behalf of a signed-in user. */
export interface AuthOptions {
  /** The user's access token (default: the client's own). */
  token?: string;
}

/** What an `MFA_REQUIRED` answer carries. */
export interface MfaChallenge {
  mfaToken: string;
  methods: string[];
  expiresIn: number | undefined;
}

/**
 * The second-factor challenge of an `MFA_REQUIRED` refusal (an `MfaRequiredError`, or a
 * `PortcullisError` with `details.mfa_token`), or `undefined` for any other error and for an
 * `MFA_REQUIRED` without an `mfa_token` (an account that must enrol a factor first).
 */
export function mfaChallengeOf(error: unknown): MfaChallenge | undefined {
  if (error instanceof MfaRequiredError) {
    if (error.mfaToken === null) return undefined;
    return { mfaToken: error.mfaToken, methods: [...error.methods], expiresIn: error.expiresIn };
  }
  if (!(error instanceof PortcullisError) || error.code !== "MFA_REQUIRED") return undefined;
  const d = error.details ?? {};
  const token = d.mfa_token;
  if (typeof token !== "string") return undefined;
  const methods = Array.isArray(d.methods) ? d.methods.filter((m): m is string => typeof m === "string") : [];
  return {
    mfaToken: token,
    methods,
    expiresIn: typeof d.expires_in === "number" ? d.expires_in : undefined,
  };
}

export function callOptions(o: AuthOptions | undefined): { token?: string | null } {
  return o?.token === undefined ? {} : { token: o.token };
}

export function object(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new PortcullisError("CLIENT_PROTOCOL", `${what}: the answer is not an object`);
  }
  return v as Record<string, unknown>;
}
