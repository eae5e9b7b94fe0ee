import type { Request, Response } from "./envelope.js";

/** Carries one request to the server and brings its response back. */
export interface Transport {
  /** Sends `request` and resolves to its response; rejects with a `PortcullisError` with a
   * `CLIENT_*` code when no response could be read. */
  send(request: Request): Promise<Response>;
  /** Releases the transport's resources. Calls in flight are rejected with `CLIENT_CLOSED`. */
  close(): Promise<void>;
}
