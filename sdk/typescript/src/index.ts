export { Client } from "./client.js";
export type { CallOptions, ClientOptions } from "./client.js";
export { PortcullisError } from "./errors.js";
export type { ClientErrorCode, ErrorCode } from "./errors.js";
export { HttpTransport } from "./http.js";
export type { HttpTransportOptions } from "./http.js";
export type { Request, RequestId, Response, WireError } from "./envelope.js";
export { isResponse } from "./envelope.js";
export type { Transport } from "./transport.js";
