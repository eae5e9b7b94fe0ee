/**
 * The wire envelope (protocol/envelope.md): one request object in, one response object out.
 */

/** A correlation id: echoed unchanged in the response. */
export type RequestId = string | number | boolean | null;

/**
 * The end user a trusted backend speaks for (the envelope's `client` member): only with an API
 * key holding the scope `client:forward` (protocol/envelope.md, "Forwarded end users").
 */
export interface ForwardedClient {
  /** The end user's IPv4 or IPv6 address, without port, brackets or zone. */
  ip: string;
  /** The end user's `User-Agent`: at most 1024 bytes, no control characters. */
  user_agent?: string;
}

/** A request as it goes on the wire. */
export interface Request {
  id?: RequestId;
  command: string;
  params?: Record<string, unknown>;
  token?: string;
  client?: ForwardedClient;
}

/** The error object of a failed response. */
export interface WireError {
  code: string;
  message: string;
  retry_after_ms?: number;
  details?: Record<string, unknown>;
}

/** A response as it comes off the wire: exactly these five members. */
export interface Response {
  id: RequestId;
  ok: boolean;
  command: string | null;
  data: unknown;
  error: WireError | null;
}

/** Checks that a parsed JSON value has the shape of a response envelope. */
export function isResponse(value: unknown): value is Response {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const v = value as Record<string, unknown>;
  if (typeof v.ok !== "boolean") return false;
  if (!(v.command === null || typeof v.command === "string")) return false;
  if (!("id" in v) || !("data" in v) || !("error" in v)) return false;
  if (v.ok) return v.error === null;
  const e = v.error;
  return (
    typeof e === "object" &&
    e !== null &&
    typeof (e as Record<string, unknown>).code === "string" &&
    typeof (e as Record<string, unknown>).message === "string"
  );
}
