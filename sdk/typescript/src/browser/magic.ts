/**
 * Magic links bound to the device that asked (protocol/commands/MAGIC.*.md): `send` makes a
 * PKCE pair, calls `MAGIC.SEND` with its challenge and keeps the verifier for the flow; then
 * either the landing page on this device finishes with `verify` (MAGIC.VERIFY with the
 * verifier), or the waiting tab finishes with `waitForSignIn` (MAGIC.POLL) once the link was
 * approved on another device (`approve`, MAGIC.APPROVE).
 */
import { PortcullisError } from "../errors.js";
import { createPkce } from "./pkce.js";
import type { Executor, TokenPair } from "./types.js";
import { object } from "./types.js";

/** The part of the Web Storage API the helper uses (`localStorage` fits). */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** A flow started by `send`. */
export interface MagicFlow {
  flowId: string;
  /** Seconds until the link expires. */
  expiresIn: number;
}

/** Options of `send`. */
export interface MagicSendOptions {
  email: string;
  /** Create a passwordless account when the address has none. */
  createUser?: boolean;
  /** Where the landing page sends the browser (must be on the server's allow-list). */
  redirectUrl?: string;
  /** Language of the mail, e.g. `en`. */
  locale?: string;
}

/** Options of `waitForSignIn`. */
export interface MagicWaitOptions {
  flowId: string;
  /** Stops the wait; the promise rejects with the signal's reason (an `AbortError`). */
  signal?: AbortSignal;
  /** Milliseconds between polls (default 2000, at least 500). */
  intervalMs?: number;
  /** Gives up after this many milliseconds with a `TimeoutError` (default: the link's life). */
  timeoutMs?: number;
}

const PREFIX = "portcullis.magic.";

class MemoryStorage implements KeyValueStorage {
  readonly #map = new Map<string, string>();
  getItem(key: string): string | null {
    return this.#map.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.#map.set(key, value);
  }
  removeItem(key: string): void {
    this.#map.delete(key);
  }
}

function defaultStorage(): KeyValueStorage {
  try {
    const s = (globalThis as { localStorage?: KeyValueStorage }).localStorage;
    if (s !== undefined) return s;
  } catch {
    // Storage disabled by the browser: fall back to this page's memory.
  }
  return new MemoryStorage();
}

interface Kept {
  verifier: string;
  expiresAt: number;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The magic-link helpers of one client. */
export class MagicLinks {
  readonly #client: Executor;
  readonly #storage: KeyValueStorage;
  readonly #now: () => number;

  /**
   * `storage` keeps each flow's verifier until the flow completes or expires (default:
   * `localStorage`, so that the landing page opened in another tab of this browser finds it).
   */
  constructor(client: Executor, options: { storage?: KeyValueStorage; now?: () => number } = {}) {
    this.#client = client;
    this.#storage = options.storage ?? defaultStorage();
    this.#now = options.now ?? Date.now;
  }

  /** Mails a sign-in link bound to this device, and keeps the verifier for the flow. */
  async send(options: MagicSendOptions): Promise<MagicFlow> {
    const pkce = await createPkce();
    const params: Record<string, unknown> = { email: options.email, code_challenge: pkce.challenge };
    if (options.createUser !== undefined) params.create_user = options.createUser;
    if (options.redirectUrl !== undefined) params.redirect_url = options.redirectUrl;
    if (options.locale !== undefined) params.locale = options.locale;
    const d = object(await this.#client.execute("MAGIC.SEND", params), "MAGIC.SEND");
    if (typeof d.flow_id !== "string" || typeof d.expires_in !== "number") {
      throw new PortcullisError("CLIENT_PROTOCOL", "MAGIC.SEND: no flow_id or expires_in");
    }
    this.#forgetExpired();
    const kept: Kept = { verifier: pkce.verifier, expiresAt: this.#now() + d.expires_in * 1000 };
    this.#storage.setItem(PREFIX + d.flow_id, JSON.stringify(kept));
    return { flowId: d.flow_id, expiresIn: d.expires_in };
  }

  /** Whether this device holds the verifier of `flowId` (it asked for that link). */
  hasFlow(flowId: string): boolean {
    return this.#kept(flowId) !== undefined;
  }

  /**
   * The waiting tab: polls `MAGIC.POLL` until the link is approved on another device, then
   * resolves to the new session. Rejects with the `PortcullisError` of the first refusal
   * (`MFA_REQUIRED` carries the `mfa_token`: finish with MFA.VERIFY; `EXPIRED`,
   * `ALREADY_USED`, …), waits out `RATE_LIMITED`, and rejects with the signal's reason when
   * aborted or a `TimeoutError` after `timeoutMs`.
   */
  async waitForSignIn(options: MagicWaitOptions): Promise<TokenPair> {
    const kept = this.#kept(options.flowId);
    if (kept === undefined) {
      throw new PortcullisError("CLIENT_PROTOCOL", "this device did not ask for that link");
    }
    const interval = Math.max(500, options.intervalMs ?? 2000);
    const deadline = this.#now() + (options.timeoutMs ?? Math.max(0, kept.expiresAt - this.#now()));
    for (;;) {
      options.signal?.throwIfAborted();
      let wait = interval;
      try {
        const d = object(
          await this.#client.execute("MAGIC.POLL", {
            flow_id: options.flowId,
            code_verifier: kept.verifier,
          }),
          "MAGIC.POLL",
        );
        if (d.status === "complete") {
          this.forget(options.flowId);
          const { status: _status, ...pair } = d;
          return pair as unknown as TokenPair;
        }
      } catch (e) {
        if (!(e instanceof PortcullisError)) throw e;
        if (e.code === "RATE_LIMITED") {
          wait = Math.max(interval, e.retryAfterMs ?? interval);
        } else if (e.code === "UNAVAILABLE" || e.code === "CLIENT_TRANSPORT") {
          wait = Math.max(interval, e.retryAfterMs ?? interval);
        } else {
          // Completed with MFA_REQUIRED, expired, used elsewhere, …: the flow is over.
          this.forget(options.flowId);
          throw e;
        }
      }
      const left = deadline - this.#now();
      if (left <= 0) throw new DOMException("the link was not approved in time", "TimeoutError");
      await sleep(Math.min(wait, left), options.signal);
    }
  }

  /**
   * The landing page on the device that asked: signs in with the link's `token` and the kept
   * verifier of `flowId` (`MAGIC.VERIFY`). Without a kept verifier (another device, or a link
   * sent unbound) the token goes alone, which a bound link refuses. Rejects with
   * `MFA_REQUIRED` when the account has a second factor.
   */
  async verify(options: { token: string; flowId?: string }): Promise<TokenPair> {
    const kept = options.flowId === undefined ? undefined : this.#kept(options.flowId);
    const params: Record<string, unknown> = { token: options.token };
    if (kept !== undefined) params.code_verifier = kept.verifier;
    try {
      return (await this.#client.execute("MAGIC.VERIFY", params)) as TokenPair;
    } finally {
      if (kept !== undefined && options.flowId !== undefined) this.forget(options.flowId);
    }
  }

  /**
   * The landing page on another device: approves the sign-in of the device that asked
   * (`MAGIC.APPROVE`); that device's `waitForSignIn` then completes.
   */
  async approve(options: { token: string }): Promise<{ flow_id: string; approved: true }> {
    return (await this.#client.execute("MAGIC.APPROVE", { token: options.token })) as {
      flow_id: string;
      approved: true;
    };
  }

  /** Drops the kept verifier of a flow. */
  forget(flowId: string): void {
    this.#storage.removeItem(PREFIX + flowId);
  }

  #kept(flowId: string): Kept | undefined {
    const raw = this.#storage.getItem(PREFIX + flowId);
    if (raw === null) return undefined;
    try {
      const k = JSON.parse(raw) as Partial<Kept>;
      if (typeof k.verifier !== "string" || typeof k.expiresAt !== "number") return undefined;
      if (k.expiresAt <= this.#now()) {
        this.forget(flowId);
        return undefined;
      }
      return { verifier: k.verifier, expiresAt: k.expiresAt };
    } catch {
      return undefined;
    }
  }

  #forgetExpired(): void {
    const s = this.#storage as Partial<Storage>;
    if (typeof s.length !== "number" || typeof s.key !== "function") return;
    const stale: string[] = [];
    for (let i = 0; i < s.length; i++) {
      const key = s.key(i);
      if (key?.startsWith(PREFIX) === true) stale.push(key.slice(PREFIX.length));
    }
    for (const flowId of stale) this.#kept(flowId);
  }
}
