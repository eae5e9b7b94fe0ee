import { PortcullisError } from "../errors.js";

/**
 * What the browser helpers need of a client: `execute(command, params, {token})` resolving to
 * the answer's `data` and rejecting with a `PortcullisError`. The SDK's `Client` is one.
 */
export interface Executor {
  execute(
    command: string,
    params?: Record<string, unknown>,
    options?: { token?: string },
  ): Promise<unknown>;
}

/** Options of a helper call made on behalf of a signed-in user. */
export interface AuthOptions {
  /** The user's access token (default: the client's own). */
  token?: string;
}

/** A new session: the answer of a completed sign-in. */
export interface TokenPair {
  user_id: string;
  session_id: string;
  access_token: string;
  refresh_token: string;
  token_type: "Bearer";
  expires_in: number;
  [member: string]: unknown;
}

/** What an `MFA_REQUIRED` answer carries. */
export interface MfaChallenge {
  mfaToken: string;
  methods: string[];
  expiresIn: number | undefined;
}

/**
 * The second-factor challenge of an `MFA_REQUIRED` refusal, or `undefined` for any other error.
 */
export function mfaChallengeOf(error: unknown): MfaChallenge | undefined {
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

export function callOptions(o: AuthOptions | undefined): { token?: string } {
  return o?.token === undefined ? {} : { token: o.token };
}

export function object(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new PortcullisError("CLIENT_PROTOCOL", `${what}: the answer is not an object`);
  }
  return v as Record<string, unknown>;
}
