// The single-file browser bundle the server's demo page loads (scripts/bundle.mjs).
export * from "./browser/index.js";
