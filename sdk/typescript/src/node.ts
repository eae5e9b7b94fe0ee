// Node-only parts of the SDK (NDJSON over TCP, the operator's log tail).
export * from "./index.js";
