// Browser helpers (passkeys, magic links) built on the universal client.
export * from "../index.js";
