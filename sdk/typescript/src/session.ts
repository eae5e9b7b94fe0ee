import type { CallOptions, Client, ExecuteArgs, ResultOf, UnknownCommandName } from "./client.js";
import type { CommandName } from "./generated/commands.js";
import { PortcullisError, isTokenPair } from "./errors.js";
import type { TokenPair } from "./errors.js";

/** The tokens a `Session` holds (kept in its storage as JSON). */
export interface SessionTokens {
  userId: string;
  sessionId: string;
  accessToken: string;
  refreshToken: string;
  /** When the access token expires, in milliseconds since the epoch (by this client's clock). */
  expiresAt: number;
}

/** Where a session keeps its tokens: memory, `localStorage`, or anything alike. */
export interface TokenStorage {
  get(key: string): string | null | Promise<string | null>;
  set(key: string, value: string): void | Promise<void>;
  remove(key: string): void | Promise<void>;
}

/** Keeps tokens in memory (the default where there is no `localStorage`). */
export class MemoryStorage implements TokenStorage {
  readonly #map = new Map<string, string>();
  get(key: string): string | null {
    return this.#map.get(key) ?? null;
  }
  set(key: string, value: string): void {
    this.#map.set(key, value);
  }
  remove(key: string): void {
    this.#map.delete(key);
  }
}

interface WebStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Keeps tokens in a Web Storage (`localStorage`), shared by every tab of the origin. */
export class WebStorage implements TokenStorage {
  readonly #storage: WebStorageLike;
  constructor(storage: WebStorageLike) {
    this.#storage = storage;
  }
  get(key: string): string | null {
    return this.#storage.getItem(key);
  }
  set(key: string, value: string): void {
    this.#storage.setItem(key, value);
  }
  remove(key: string): void {
    this.#storage.removeItem(key);
  }
}

/** A lock held across tabs (or across sessions sharing a storage). */
export interface Lock {
  /** Runs `fn` while holding the lock `name`; one holder at a time. */
  run<T>(name: string, fn: () => Promise<T>): Promise<T>;
}

interface LockManagerLike {
  request<T>(name: string, options: { mode: "exclusive" }, fn: () => Promise<T>): Promise<T>;
}

/** The Web Locks API (`navigator.locks`): exact, and released when a tab dies. */
export class WebLocksLock implements Lock {
  readonly #locks: LockManagerLike;
  constructor(locks: LockManagerLike) {
    this.#locks = locks;
  }
  run<T>(name: string, fn: () => Promise<T>): Promise<T> {
    return this.#locks.request(name, { mode: "exclusive" }, fn);
  }
}

interface LockMessage {
  type: "want" | "held" | "release";
  name: string;
  owner: string;
  clock: number;
}

interface ChannelLike {
  postMessage(message: unknown): void;
  addEventListener(type: "message", listener: (event: { data: unknown }) => void): void;
  removeEventListener(type: "message", listener: (event: { data: unknown }) => void): void;
  close(): void;
}

/**
 * A lock over a `BroadcastChannel`, for browsers without `navigator.locks`. A contender
 * announces itself and waits `settleMs`; of contenders that hear each other the one with the
 * lowest (Lamport clock, id) goes first, the others wait for its release (or `maxHoldMs`, in
 * case its tab died). Best effort: two tabs whose messages take longer than `settleMs` may both
 * proceed, which for a refresh is harmless (the server's grace window returns the same pair).
 */
export class BroadcastChannelLock implements Lock {
  readonly #channel: ChannelLike;
  readonly #id = randomId();
  readonly #settleMs: number;
  readonly #maxHoldMs: number;
  readonly #recheckMs: number;
  #clock = 0;
  /** Names this instance holds now. */
  readonly #held = new Set<string>();
  /** Local callers queue here, so only one of them contends at a time. */
  #local: Promise<unknown> = Promise.resolve();

  constructor(options: { channel?: ChannelLike; channelName?: string; settleMs?: number; maxHoldMs?: number } = {}) {
    this.#channel = options.channel ?? (unref(new BroadcastChannel(options.channelName ?? "portcullis-lock")) as unknown as ChannelLike);
    this.#settleMs = options.settleMs ?? 40;
    this.#maxHoldMs = options.maxHoldMs ?? 15_000;
    this.#recheckMs = Math.max(this.#settleMs * 5, 200);
    this.#channel.addEventListener("message", (event) => {
      const m = event.data as LockMessage;
      if (m === null || typeof m !== "object" || typeof m.clock !== "number") return;
      this.#clock = Math.max(this.#clock, m.clock) + 1;
      if (m.type === "want" && this.#held.has(m.name)) this.#post("held", m.name);
    });
  }

  /** Stops listening. */
  close(): void {
    this.#channel.close();
  }

  #post(type: LockMessage["type"], name: string): number {
    this.#clock++;
    const message: LockMessage = { type, name, owner: this.#id, clock: this.#clock };
    this.#channel.postMessage(message);
    return this.#clock;
  }

  run<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const turn = this.#local.then(() => this.#runExclusive(name, fn));
    this.#local = turn.catch(() => undefined);
    return turn;
  }

  async #runExclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
    await this.#acquire(name);
    this.#held.add(name);
    try {
      return await fn();
    } finally {
      this.#held.delete(name);
      this.#post("release", name);
    }
  }

  async #acquire(name: string): Promise<void> {
    const deadline = Date.now() + this.#maxHoldMs;
    for (;;) {
      const mine = this.#post("want", name);
      const blocked = await new Promise<boolean>((resolve) => {
        let lost = false;
        const listener = (event: { data: unknown }) => {
          const m = event.data as LockMessage;
          if (m === null || typeof m !== "object" || m.name !== name || m.owner === this.#id) return;
          if (m.type === "held") lost = true;
          if (m.type === "want" && (m.clock < mine || (m.clock === mine && m.owner < this.#id))) lost = true;
        };
        this.#channel.addEventListener("message", listener);
        setTimeout(() => {
          this.#channel.removeEventListener("message", listener);
          resolve(lost);
        }, this.#settleMs);
      });
      if (!blocked || Date.now() >= deadline) return;
      // Wait for a release, then contend again; contend again after a while anyway, in case
      // the release went by while this tab was still settling (a holder answers `held` again).
      await new Promise<void>((resolve) => {
        const listener = (event: { data: unknown }) => {
          const m = event.data as LockMessage;
          if (m !== null && typeof m === "object" && m.name === name && m.type === "release") done();
        };
        const timer = setTimeout(() => done(), Math.max(0, Math.min(this.#recheckMs, deadline - Date.now())));
        const done = () => {
          clearTimeout(timer);
          this.#channel.removeEventListener("message", listener);
          resolve();
        };
        this.#channel.addEventListener("message", listener);
      });
    }
  }
}

/** A lock for one JavaScript realm only (several sessions in one process). */
export class LocalLock implements Lock {
  readonly #tails = new Map<string, Promise<unknown>>();
  run<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#tails.get(name) ?? Promise.resolve();
    const turn = before.then(fn);
    const tail = turn.catch(() => undefined);
    this.#tails.set(name, tail);
    void tail.then(() => {
      if (this.#tails.get(name) === tail) this.#tails.delete(name);
    });
    return turn;
  }
}

/** Why a session's tokens changed. */
export type SessionChange =
  | "signed_in"
  | "refreshed"
  /** Another tab (or session sharing the storage) refreshed or signed in. */
  | "updated_elsewhere"
  | "signed_out"
  /** The server refused the refresh token (session revoked or expired, token reused). */
  | "refresh_refused"
  /** Cleared in another tab. */
  | "cleared_elsewhere";

/** Told when the session's tokens change; `tokens` is `null` once signed out. */
export type SessionListener = (tokens: SessionTokens | null, change: SessionChange) => void;

/** Options of a `Session`. */
export interface SessionOptions {
  /** Where the tokens live (default: `localStorage` where there is one, else memory). */
  storage?: TokenStorage;
  /** The storage key (default `"portcullis.session"`). */
  key?: string;
  /** The cross-tab lock around a refresh (default: `navigator.locks` where present, else a `BroadcastChannel` lock, else one for this realm only). */
  lock?: Lock;
  /** The channel on which sessions sharing the storage tell each other of new tokens (default: a `BroadcastChannel` named after the key, where there is one; `null` for none). */
  channel?: ChannelLike | null;
  /** Refresh this long before the access token expires (default 60000 ms). */
  refreshMarginMs?: number;
  /** The clock, in milliseconds (tests step it). */
  now?: () => number;
  /** Told of every change of the tokens. */
  onChange?: SessionListener;
}

/** A sign-in result: any command answer that holds a token pair. */
export type SignInResult = TokenPair | { access_token: string; refresh_token?: string | null | undefined; expires_in: number; user_id: string; session_id: string };

interface ChannelMessage {
  type: "tokens" | "cleared";
  key: string;
}

/**
 * Holds a signed-in user's tokens: attaches the access token to calls, refreshes it shortly
 * before it expires (`AUTH.REFRESH`, one refresh shared by concurrent callers and, through the
 * lock and the shared storage, by other tabs), and clears itself on `AUTH.LOGOUT` or when a
 * refresh is refused. Works in browsers and in Node.
 */
export class Session {
  readonly client: Client;
  readonly #storage: TokenStorage;
  readonly #key: string;
  readonly #lock: Lock;
  readonly #channel: ChannelLike | null;
  readonly #margin: number;
  readonly #now: () => number;
  readonly #listeners = new Set<SessionListener>();
  #tokens: SessionTokens | null = null;
  #loaded: Promise<void> | null = null;
  #refreshing: Promise<SessionTokens | null> | null = null;

  constructor(client: Client, options: SessionOptions = {}) {
    this.client = client;
    this.#key = options.key ?? "portcullis.session";
    this.#storage = options.storage ?? defaultStorage();
    this.#lock = options.lock ?? defaultLock(`${this.#key}.lock`);
    this.#margin = options.refreshMarginMs ?? 60_000;
    this.#now = options.now ?? (() => Date.now());
    if (options.onChange !== undefined) this.#listeners.add(options.onChange);
    this.#channel = options.channel === undefined ? defaultChannel(`${this.#key}.channel`) : options.channel;
    this.#channel?.addEventListener("message", (event) => {
      const m = event.data as ChannelMessage;
      if (m === null || typeof m !== "object" || m.key !== this.#key) return;
      void this.#reload(m.type === "cleared" ? "cleared_elsewhere" : "updated_elsewhere");
    });
  }

  /** Adds a listener; returns a function that removes it. */
  onChange(listener: SessionListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The tokens held now (read from the storage on first use), or `null`. */
  async tokens(): Promise<SessionTokens | null> {
    await this.#load();
    return this.#tokens;
  }

  /** Whether the session holds tokens. */
  async signedIn(): Promise<boolean> {
    return (await this.tokens()) !== null;
  }

  /**
   * Takes the tokens of a sign-in (`AUTH.LOGIN`, `AUTH.SIGNUP`, `MFA.VERIFY`,
   * `MAGIC.VERIFY`, `PASSKEY.LOGIN.FINISH`, an `MfaRequiredError`'s enrolment session, …).
   * A step-up result (`MFA.VERIFY` without a refresh token) replaces the access token only.
   */
  async setTokens(result: SignInResult): Promise<SessionTokens> {
    await this.#load();
    const refreshToken = result.refresh_token ?? this.#tokens?.refreshToken;
    if (typeof refreshToken !== "string") throw new TypeError("a sign-in result without a refresh token");
    const tokens = this.#held(result, refreshToken);
    await this.#save(tokens, "signed_in");
    return tokens;
  }

  /**
   * Runs a command with the session's access token, refreshing it first when it is about to
   * expire. An `UNAUTHENTICATED` answer (the token expired or was refused before the command
   * ran) triggers one refresh and one retry; a refused refresh clears the session and the
   * call rejects with `UNAUTHENTICATED`. A successful `AUTH.LOGOUT` clears the session.
   */
  execute<C extends CommandName>(command: C, ...args: ExecuteArgs<C>): Promise<ResultOf<C>>;
  execute<S extends string>(command: UnknownCommandName<S>, params?: Record<string, unknown>, options?: CallOptions): Promise<unknown>;
  async execute(command: string, params?: object, options: CallOptions = {}): Promise<unknown> {
    const run = (token: string) => this.client.executeUntyped(command, params as Record<string, unknown> | undefined, { ...options, token });
    const tokens = await this.#fresh();
    if (tokens === null) throw new PortcullisError("UNAUTHENTICATED", "not signed in", { command });
    let result: unknown;
    try {
      result = await run(tokens.accessToken);
    } catch (error) {
      if (!(error instanceof PortcullisError) || error.code !== "UNAUTHENTICATED") throw error;
      // The server refused the token before running the command: refresh once and retry.
      const renewed = await this.refresh(tokens.accessToken);
      if (renewed === null || renewed.accessToken === tokens.accessToken) throw error;
      result = await run(renewed.accessToken);
    }
    if (command === "AUTH.LOGOUT") await this.#clear("signed_out");
    return result;
  }

  /** `AUTH.LOGOUT` (ends the session on the server), then clears the tokens. */
  async logout(): Promise<void> {
    const tokens = await this.tokens();
    if (tokens === null) return;
    try {
      await this.client.execute("AUTH.LOGOUT", {}, { token: tokens.accessToken });
    } catch (error) {
      // A token the server no longer accepts means the session is over anyway.
      if (!(error instanceof PortcullisError) || error.code !== "UNAUTHENTICATED") throw error;
    }
    await this.#clear("signed_out");
  }

  /** Forgets the tokens without telling the server. */
  async clear(): Promise<void> {
    await this.#clear("signed_out");
  }

  /**
   * Refreshes the tokens (`AUTH.REFRESH`) unless someone else already did: concurrent callers
   * share one refresh, and sessions sharing the storage take turns under the lock, the later
   * ones picking up the first one's tokens. With `staleAccessToken`, refreshes only while that
   * is still the access token held. Resolves to the tokens, or `null` when the server refused
   * the refresh (the session is then cleared).
   */
  refresh(staleAccessToken?: string): Promise<SessionTokens | null> {
    if (this.#refreshing === null) {
      this.#refreshing = this.#lock
        .run(`${this.#key}.refresh`, () => this.#refreshLocked(staleAccessToken))
        .finally(() => {
          this.#refreshing = null;
        });
    }
    return this.#refreshing;
  }

  async #refreshLocked(staleAccessToken: string | undefined): Promise<SessionTokens | null> {
    // Another tab may have refreshed (or signed out) while this one waited for the lock.
    const stored = await this.#read();
    if (stored === null) {
      if (this.#tokens !== null) await this.#clear("cleared_elsewhere", false);
      return null;
    }
    if (this.#tokens === null || stored.refreshToken !== this.#tokens.refreshToken) {
      this.#set(stored, "updated_elsewhere");
    }
    const due = stored.expiresAt - this.#margin <= this.#now();
    const stale = staleAccessToken !== undefined && stored.accessToken === staleAccessToken;
    if (!due && !stale) return stored;
    let result: unknown;
    try {
      result = await this.client.execute("AUTH.REFRESH", { refresh_token: stored.refreshToken }, { token: null });
    } catch (error) {
      if (error instanceof PortcullisError && (error.code === "INVALID_CREDENTIALS" || error.code === "EXPIRED")) {
        await this.#clear("refresh_refused");
        return null;
      }
      throw error;
    }
    if (!isTokenPair(result)) throw new PortcullisError("CLIENT_PROTOCOL", "AUTH.REFRESH answered without a token pair");
    const tokens = this.#held(result, result.refresh_token);
    await this.#save(tokens, "refreshed");
    return tokens;
  }

  /** The tokens as held, from an answer's token pair, the access token's expiry counted from now. */
  #held(result: { user_id: string; session_id: string; access_token: string; expires_in: number }, refreshToken: string): SessionTokens {
    return {
      userId: result.user_id,
      sessionId: result.session_id,
      accessToken: result.access_token,
      refreshToken,
      expiresAt: this.#now() + result.expires_in * 1000,
    };
  }

  /** The tokens, refreshed first when the access token is about to expire. */
  async #fresh(): Promise<SessionTokens | null> {
    await this.#load();
    const tokens = this.#tokens;
    if (tokens === null) return null;
    if (tokens.expiresAt - this.#margin > this.#now()) return tokens;
    return this.refresh();
  }

  #load(): Promise<void> {
    if (this.#loaded === null) {
      this.#loaded = this.#read().then((tokens) => {
        if (this.#tokens === null) this.#tokens = tokens;
      });
    }
    return this.#loaded;
  }

  async #read(): Promise<SessionTokens | null> {
    const text = await this.#storage.get(this.#key);
    if (text === null) return null;
    try {
      const value = JSON.parse(text) as SessionTokens;
      if (typeof value.accessToken === "string" && typeof value.refreshToken === "string" && typeof value.expiresAt === "number") {
        return value;
      }
    } catch {
      // An unreadable entry is no session.
    }
    return null;
  }

  async #reload(change: SessionChange): Promise<void> {
    const stored = await this.#read();
    if (stored === null) {
      if (this.#tokens !== null) this.#set(null, change);
    } else if (this.#tokens === null || stored.accessToken !== this.#tokens.accessToken) {
      this.#set(stored, change);
    }
  }

  async #save(tokens: SessionTokens, change: SessionChange): Promise<void> {
    await this.#storage.set(this.#key, JSON.stringify(tokens));
    this.#set(tokens, change);
    this.#broadcast("tokens");
  }

  async #clear(change: SessionChange, broadcast = true): Promise<void> {
    await this.#load();
    await this.#storage.remove(this.#key);
    const had = this.#tokens !== null;
    this.#tokens = null;
    if (had) this.#emit(null, change);
    if (broadcast) this.#broadcast("cleared");
  }

  #set(tokens: SessionTokens | null, change: SessionChange): void {
    this.#tokens = tokens;
    this.#emit(tokens, change);
  }

  #emit(tokens: SessionTokens | null, change: SessionChange): void {
    for (const listener of this.#listeners) {
      try {
        listener(tokens, change);
      } catch {
        // A failing listener must not break the session.
      }
    }
  }

  #broadcast(type: ChannelMessage["type"]): void {
    const message: ChannelMessage = { type, key: this.#key };
    this.#channel?.postMessage(message);
  }

  /** Stops listening to other tabs. */
  close(): void {
    this.#channel?.close();
  }
}

function defaultStorage(): TokenStorage {
  const g = globalThis as { localStorage?: WebStorageLike };
  try {
    if (g.localStorage !== undefined) return new WebStorage(g.localStorage);
  } catch {
    // Access to localStorage can throw (privacy settings): fall back to memory.
  }
  return new MemoryStorage();
}

function defaultLock(channelName: string): Lock {
  const nav = (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator;
  if (nav?.locks !== undefined) return new WebLocksLock(nav.locks);
  if (typeof BroadcastChannel === "function") return new BroadcastChannelLock({ channelName });
  return new LocalLock();
}

function defaultChannel(name: string): ChannelLike | null {
  if (typeof BroadcastChannel !== "function") return null;
  return unref(new BroadcastChannel(name)) as unknown as ChannelLike;
}

/** In Node an open channel keeps the process alive; a session should not. */
function unref<T>(channel: T): T {
  const c = channel as { unref?: () => void };
  if (typeof c.unref === "function") c.unref();
  return channel;
}

function randomId(): string {
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
