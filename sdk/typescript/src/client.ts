import type { Request } from "./envelope.js";
import { MfaRequiredError, PortcullisError } from "./errors.js";
import type { CommandName, Commands } from "./generated/commands.js";
import { COMMANDS } from "./generated/commands.js";
import { HttpTransport } from "./http.js";
import type { Transport } from "./transport.js";

/** Per-call options. */
export interface CallOptions {
  /**
   * The credential for this call: overrides the client's default token; `null` sends none
   * (e.g. `AUTH.REFRESH`, which must go without a token).
   */
  token?: string | null;
  /**
   * The end user this call is made for, sent as the envelope's `client` member: a backend whose
   * API key holds the scope `client:forward` states the end user's address (and user agent),
   * which the server then uses for rate limits, sessions, mails and events instead of the
   * backend's own. Any other credential gets `FORBIDDEN`.
   */
  client?: { ip: string; userAgent?: string };
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

/** The params of a command. */
export type ParamsOf<C extends CommandName> = Commands[C]["params"];
/** The result (`data`) of a command. */
export type ResultOf<C extends CommandName> = Commands[C]["result"];

// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- `{}` is what an empty object literal is
type RequiredKeys<T> = { [K in keyof T]-?: {} extends Pick<T, K> ? never : K }[keyof T];

/** `execute`'s arguments after the command: params may be left out when none is required. */
export type ExecuteArgs<C extends CommandName> = [RequiredKeys<ParamsOf<C>>] extends [never]
  ? [params?: ParamsOf<C>, options?: CallOptions]
  : [params: ParamsOf<C>, options?: CallOptions];

/** A command name this SDK does not know (a server newer than the SDK): untyped. */
export type UnknownCommandName<S extends string> = S extends CommandName ? never : S;

/** The second factor that answers an `MFA_REQUIRED` (or a step-up). */
export type SecondFactor =
  | { method: "totp"; code: string }
  | { method: "recovery_code"; code: string }
  | { method: "passkey"; ceremonyId: string; credential: Record<string, unknown> };

/** Runs commands: `await client.execute("AUTH.LOGIN", { email, password })`. */
export class Client {
  readonly transport: Transport;
  /** The default credential of calls that give none. */
  token: string | undefined;
  #nextId = 1;

  /** Second factors: finishing an `MFA_REQUIRED` sign-in, or stepping a session up. */
  readonly mfa: {
    /**
     * `MFA.VERIFY`. With an `MfaRequiredError` (or its `mfaToken`): finishes that sign-in and
     * resolves to the new session's tokens. With `null`: steps up the session of the call's
     * token (`options.token` or the client's) and resolves to its new access token.
     */
    verify(
      challenge: MfaRequiredError | string | null,
      factor: SecondFactor,
      options?: CallOptions,
    ): Promise<ResultOf<"MFA.VERIFY">>;
  };

  constructor(options: ClientOptions) {
    if (options.transport !== undefined) {
      this.transport = options.transport;
    } else if (options.baseUrl !== undefined) {
      this.transport = new HttpTransport({ baseUrl: options.baseUrl });
    } else {
      throw new TypeError("a Client needs a transport or a baseUrl");
    }
    this.token = options.token;
    this.mfa = {
      verify: async (challenge, factor, callOptions) => {
        let mfaToken: string | null;
        if (challenge instanceof MfaRequiredError) {
          if (challenge.mfaToken === null) {
            throw new TypeError("this MFA_REQUIRED has no mfa_token: the account must enrol a second factor first");
          }
          mfaToken = challenge.mfaToken;
        } else {
          mfaToken = challenge;
        }
        const params: ParamsOf<"MFA.VERIFY"> =
          factor.method === "passkey"
            ? { method: "passkey", ceremony_id: factor.ceremonyId, credential: factor.credential }
            : { method: factor.method, code: factor.code.replace(/\s+/g, "") };
        if (mfaToken !== null) params.mfa_token = mfaToken;
        return this.execute("MFA.VERIFY", params, callOptions ?? (mfaToken !== null ? { token: null } : {}));
      },
    };
  }

  /**
   * Runs `command` and resolves to the response's `data`; rejects with a `PortcullisError`
   * carrying the server's error code when the command is refused (an `MfaRequiredError` for
   * `MFA_REQUIRED`), or a `CLIENT_*` code when no answer could be read.
   *
   * Params and result are typed for every command this SDK knows; a name it does not know (a
   * command newer than the SDK) is accepted untyped.
   */
  execute<C extends CommandName>(command: C, ...args: ExecuteArgs<C>): Promise<ResultOf<C>>;
  execute<S extends string>(
    command: UnknownCommandName<S>,
    params?: Record<string, unknown>,
    options?: CallOptions,
  ): Promise<unknown>;
  async execute(command: string, params?: object, options?: CallOptions): Promise<unknown> {
    return this.executeUntyped(command, params as Record<string, unknown> | undefined, options);
  }

  /** `execute` without the types: any command name, any params object. */
  async executeUntyped(command: string, params: Record<string, unknown> = {}, options: CallOptions = {}): Promise<unknown> {
    if ((COMMANDS as Readonly<Record<string, { streaming: boolean }>>)[command]?.streaming === true) {
      // Its answer is many lines: over TCP they would be taken for the answers of later calls.
      throw new TypeError(`${command} streams its answer: use client.log.tail() (from @portcullis/client/node)`);
    }
    const request: Request = { id: this.#nextId++, command, params };
    const token = options.token === undefined ? this.token : options.token;
    if (token !== undefined && token !== null) request.token = token;
    if (options.client !== undefined) {
      request.client = { ip: options.client.ip };
      if (options.client.userAgent !== undefined) request.client.user_agent = options.client.userAgent;
    }
    const response = await this.transport.send(request);
    if (!response.ok) throw PortcullisError.fromResponse(response);
    return response.data;
  }

  /** Closes the transport. */
  async close(): Promise<void> {
    await this.transport.close();
  }
}
