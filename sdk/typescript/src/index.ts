// The universal entry (browsers and Node): no `node:*` imports here, the browser bundle is
// built from it.
export { Client } from "./client.js";
export type {
  CallOptions,
  ClientOptions,
  ExecuteArgs,
  ParamsOf,
  ResultOf,
  SecondFactor,
  UnknownCommandName,
} from "./client.js";
export { MfaRequiredError, PortcullisError, isErrorCode, isTokenPair } from "./errors.js";
export type { ClientErrorCode, ErrorCode, MfaMethod, PortcullisErrorOptions, TokenPair } from "./errors.js";
export { COMMANDS, ERROR_CODES, PROTOCOL_VERSION } from "./generated/commands.js";
export type { CommandInfo, CommandName, Commands } from "./generated/commands.js";
export { HttpTransport } from "./http.js";
export type { HttpTransportOptions } from "./http.js";
export type { ForwardedClient, Request, RequestId, Response, WireError } from "./envelope.js";
export { isResponse } from "./envelope.js";
export type { Transport } from "./transport.js";
export { BroadcastChannelLock, LocalLock, MemoryStorage, Session, WebLocksLock, WebStorage } from "./session.js";
export type {
  Lock,
  SessionChange,
  SessionListener,
  SessionOptions,
  SessionTokens,
  SignInResult,
  TokenStorage,
} from "./session.js";
