/**
 * Passkey ceremonies in the browser: register, sign in (by address or usernameless), autofill
 * (conditional UI), and a passkey as second factor or step-up. Each is BEGIN → the browser's
 * `navigator.credentials` → FINISH, with the options and the credential in the JSON forms the
 * server speaks (protocol/commands/PASSKEY.*.md).
 */
import type { AuthOptions, Executor, TokenPair } from "./types.js";
import { callOptions, object } from "./types.js";
import { credentialToJSON, decodeCreationOptions, decodeRequestOptions } from "./webauthn.js";

/** A passkey as `PASSKEY.LIST` shows it. */
export interface PasskeyInfo {
  credential_id: string;
  name: string;
  created_at: string;
  last_used_at: string | null;
  backup_eligible: boolean;
  backup_state: boolean;
}

/** The answer of `MFA.VERIFY`. */
export interface MfaResult {
  user_id: string;
  session_id: string;
  access_token: string;
  /** Absent after a step-up. */
  refresh_token?: string;
  expires_in: number;
  aal: number;
  amr: string[];
  [member: string]: unknown;
}

interface Ceremony {
  ceremony_id: string;
  publicKey: unknown;
}

function ceremony(data: unknown, what: string): Ceremony {
  const d = object(data, what);
  const options = object(d.options, what);
  if (typeof d.ceremony_id !== "string") throw new TypeError(`${what}: no ceremony_id`);
  return { ceremony_id: d.ceremony_id, publicKey: options.publicKey };
}

type Parse = {
  parseCreationOptionsFromJSON?: (json: unknown) => PublicKeyCredentialCreationOptions;
  parseRequestOptionsFromJSON?: (json: unknown) => PublicKeyCredentialRequestOptions;
  isConditionalMediationAvailable?: () => Promise<boolean>;
};

function pkc(): Parse | undefined {
  return (globalThis as { PublicKeyCredential?: Parse }).PublicKeyCredential;
}

function creationOptions(json: unknown): PublicKeyCredentialCreationOptions {
  const parse = pkc()?.parseCreationOptionsFromJSON;
  return parse !== undefined ? parse(json) : decodeCreationOptions(json);
}

function requestOptions(json: unknown): PublicKeyCredentialRequestOptions {
  const parse = pkc()?.parseRequestOptionsFromJSON;
  return parse !== undefined ? parse(json) : decodeRequestOptions(json);
}

function credentials(): CredentialsContainer {
  const c = globalThis.navigator?.credentials;
  if (c === undefined || pkc() === undefined) {
    throw new DOMException("this browser has no WebAuthn", "NotSupportedError");
  }
  return c;
}

async function get(
  publicKey: unknown,
  extra: { mediation?: CredentialMediationRequirement; signal?: AbortSignal } = {},
): Promise<Record<string, unknown>> {
  const cred = await credentials().get({ publicKey: requestOptions(publicKey), ...extra });
  if (cred === null) throw new DOMException("no passkey was chosen", "NotAllowedError");
  return credentialToJSON(cred as unknown as Parameters<typeof credentialToJSON>[0]);
}

/** The passkey helpers of one client. */
export class Passkeys {
  readonly #client: Executor;

  constructor(client: Executor) {
    this.#client = client;
  }

  /** Whether this browser can create and use passkeys at all. */
  static supported(): boolean {
    return pkc() !== undefined && globalThis.navigator?.credentials !== undefined;
  }

  /** Whether the browser can offer passkeys in an input's autofill (conditional UI). */
  static async autofillSupported(): Promise<boolean> {
    const check = pkc()?.isConditionalMediationAvailable;
    if (check === undefined) return false;
    try {
      return await check.call(pkc());
    } catch {
      return false;
    }
  }

  /**
   * Registers a new passkey for the signed-in user: `PASSKEY.REGISTER.BEGIN` →
   * `navigator.credentials.create` → `PASSKEY.REGISTER.FINISH`. Resolves to the new passkey.
   * Rejects with the browser's `DOMException` (`NotAllowedError` when the user cancels) or a
   * `PortcullisError`.
   */
  async register(options: AuthOptions & { name?: string; signal?: AbortSignal } = {}): Promise<PasskeyInfo> {
    const params: Record<string, unknown> = {};
    if (options.name !== undefined) params.name = options.name;
    const c = ceremony(
      await this.#client.execute("PASSKEY.REGISTER.BEGIN", params, callOptions(options)),
      "PASSKEY.REGISTER.BEGIN",
    );
    const created = await credentials().create({
      publicKey: creationOptions(c.publicKey),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
    if (created === null) throw new DOMException("no passkey was created", "NotAllowedError");
    const credential = credentialToJSON(created as unknown as Parameters<typeof credentialToJSON>[0]);
    return (await this.#client.execute(
      "PASSKEY.REGISTER.FINISH",
      { ceremony_id: c.ceremony_id, credential },
      callOptions(options),
    )) as PasskeyInfo;
  }

  /**
   * Signs in with a passkey: with `email`, one of that account's passkeys; without, any
   * discoverable passkey the browser has for this site (usernameless). Resolves to the new
   * session (at AAL2: a user-verified passkey never needs a second factor).
   */
  async signIn(options: { email?: string; signal?: AbortSignal } = {}): Promise<TokenPair> {
    const params: Record<string, unknown> = {};
    if (options.email !== undefined && options.email !== "") params.email = options.email;
    const c = ceremony(await this.#client.execute("PASSKEY.LOGIN.BEGIN", params), "PASSKEY.LOGIN.BEGIN");
    const credential = await get(c.publicKey, options.signal === undefined ? {} : { signal: options.signal });
    return (await this.#client.execute("PASSKEY.LOGIN.FINISH", {
      ceremony_id: c.ceremony_id,
      credential,
    })) as TokenPair;
  }

  /**
   * Conditional UI: offers the site's passkeys in the autofill of an
   * `<input autocomplete="username webauthn">` and resolves to the session once the user picks
   * one. Start it when the sign-in form shows; abort `signal` before starting any other
   * ceremony (the browser allows one at a time). `onWaiting` is called once the browser holds
   * the request (the autofill can offer passkeys from then on). Rejects with an `AbortError`
   * when aborted and a `NotSupportedError` when the browser has no conditional mediation.
   */
  async autofill(options: { signal?: AbortSignal; onWaiting?: () => void } = {}): Promise<TokenPair> {
    if (!(await Passkeys.autofillSupported())) {
      throw new DOMException("this browser has no passkey autofill", "NotSupportedError");
    }
    options.signal?.throwIfAborted();
    const c = ceremony(await this.#client.execute("PASSKEY.LOGIN.BEGIN", {}), "PASSKEY.LOGIN.BEGIN");
    options.signal?.throwIfAborted();
    const pending = get(c.publicKey, {
      mediation: "conditional",
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
    options.onWaiting?.();
    const credential = await pending;
    return (await this.#client.execute("PASSKEY.LOGIN.FINISH", {
      ceremony_id: c.ceremony_id,
      credential,
    })) as TokenPair;
  }

  /**
   * Completes a sign-in that answered `MFA_REQUIRED` with `"passkey"` among its methods:
   * `PASSKEY.LOGIN.BEGIN {mfa_token}` → `navigator.credentials.get` → `MFA.VERIFY` (method
   * `passkey`). Resolves to the new session at AAL2.
   */
  async verifyMfa(options: { mfaToken: string; signal?: AbortSignal }): Promise<MfaResult> {
    const c = ceremony(
      await this.#client.execute("PASSKEY.LOGIN.BEGIN", { mfa_token: options.mfaToken }, { token: null }),
      "PASSKEY.LOGIN.BEGIN",
    );
    const credential = await get(c.publicKey, options.signal === undefined ? {} : { signal: options.signal });
    return (await this.#client.execute(
      "MFA.VERIFY",
      { mfa_token: options.mfaToken, method: "passkey", ceremony_id: c.ceremony_id, credential },
      { token: null },
    )) as MfaResult;
  }

  /**
   * Step-up of the signed-in session to AAL2 with one of the account's passkeys:
   * `PASSKEY.LOGIN.BEGIN {email}` → `navigator.credentials.get` → `MFA.VERIFY` (method
   * `passkey`, no `mfa_token`) with the session's token. Resolves to the new access token (no
   * refresh token: the session keeps its own).
   */
  async stepUp(options: AuthOptions & { email: string; signal?: AbortSignal }): Promise<MfaResult> {
    const c = ceremony(
      await this.#client.execute("PASSKEY.LOGIN.BEGIN", { email: options.email }),
      "PASSKEY.LOGIN.BEGIN",
    );
    const credential = await get(c.publicKey, options.signal === undefined ? {} : { signal: options.signal });
    return (await this.#client.execute(
      "MFA.VERIFY",
      { method: "passkey", ceremony_id: c.ceremony_id, credential },
      callOptions(options),
    )) as MfaResult;
  }
}
