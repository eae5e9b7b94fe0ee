// The conformance runner (protocol/conformance/README.md, format version 2): replays one
// transcript against a running server over one TCP connection, plus HTTP, mail and TOTP steps.
// Lines are read with the SDK's own bounded line reader, and every answer must be a response
// envelope as the SDK reads it.
import { createHmac } from "node:crypto";
import { request as httpRequest } from "node:http";
import { connect } from "node:net";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { isResponse } from "../../dist/index.js";
import { LineSplitter } from "../../dist/lines.js";

const TIMEOUT_MS = 10_000;
const TIME = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$/;
const CAPTURE = /^\{\{capture:([a-z0-9_]+)\}\}$/;
const REF = /^\{\{ref:([a-z0-9_]+)\}\}$/;
const REF_ANYWHERE = /\{\{ref:([^}]*)\}\}|\{\{operator_token\}\}/g;
const NAME = /^[a-z0-9_]+$/;

/** A transcript failure: which step, and why. */
export class TranscriptError extends Error {}

/** Whether a string is a valid RFC 3339 UTC time with milliseconds, as `{{time}}` wants. */
export function isTime(s) {
  if (typeof s !== "string" || !TIME.test(s)) return false;
  const d = new Date(s);
  return !Number.isNaN(d.getTime()) && d.toISOString() === s;
}

/** The bindings of one transcript run (captures, and the operator token). */
export class Bindings {
  constructor(operatorToken) {
    this.operatorToken = operatorToken;
    this.values = new Map();
  }
  get(name, where) {
    if (!this.values.has(name)) throw new TranscriptError(`${where}: {{ref:${name}}} is not bound`);
    return this.values.get(name);
  }
  set(name, value) {
    this.values.set(name, value);
  }
  /** Replaces `{{ref:…}}` / `{{operator_token}}` inside a longer string, textually. */
  text(s, where) {
    return s.replace(REF_ANYWHERE, (whole, name) => {
      if (name === undefined) return this.operatorToken;
      if (!NAME.test(name)) throw new TranscriptError(`${where}: ${whole}: a name is [a-z0-9_]+`);
      const v = this.get(name, where);
      if (typeof v !== "string") throw new TranscriptError(`${where}: {{ref:${name}}} inside a string must be bound to a string`);
      return v;
    });
  }
}

/** Replaces placeholders in a `send` / `http` value. */
export function substitute(value, bindings, where = "$") {
  if (typeof value === "string") {
    if (value === "{{operator_token}}") return bindings.operatorToken;
    if (value.startsWith("{{capture:")) throw new TranscriptError(`${where}: ${value} outside an expected value`);
    const ref = REF.exec(value);
    if (ref) return bindings.get(ref[1], where);
    return bindings.text(value, where);
  }
  if (Array.isArray(value)) return value.map((v, i) => substitute(v, bindings, `${where}[${i}]`));
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = substitute(v, bindings, `${where}.${k}`);
    return out;
  }
  return value;
}

function deepEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return deepEqual(ka, kb) && ka.every((k) => deepEqual(a[k], b[k]));
}

/**
 * Compares an expected value (with placeholders) to an actual one; throws a TranscriptError
 * naming the path of the first difference. The step's captures are bound only when the whole
 * value matches; references see the bindings of earlier steps.
 */
export function match(expected, actual, bindings, where = "$") {
  const captures = new Map();
  matchValue(expected, actual, bindings, where, captures);
  for (const [name, value] of captures) bindings.set(name, value);
}

function matchValue(expected, actual, bindings, where, captures) {
  const fail = (why) => {
    throw new TranscriptError(`${where}: ${why} (expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)})`);
  };
  if (typeof expected === "string") {
    switch (expected) {
      case "{{any}}":
        return;
      case "{{string}}":
        if (typeof actual !== "string") fail("not a string");
        return;
      case "{{int}}":
        // JSON.parse cannot tell 1 from 1.0; the contract allows this check (17-contracts.md).
        if (!(typeof actual === "number" && Number.isSafeInteger(actual) && actual >= 0)) fail("not a non-negative integer");
        return;
      case "{{hash}}":
        if (!(typeof actual === "string" && /^[0-9a-f]{64}$/.test(actual))) fail("not a hash");
        return;
      case "{{time}}":
        if (!isTime(actual)) fail("not a time");
        return;
      default:
        break;
    }
    const capture = CAPTURE.exec(expected);
    if (capture) {
      if (actual === null || actual === undefined) fail(`nothing to capture as ${capture[1]}`);
      captures.set(capture[1], actual);
      return;
    }
    if (expected.startsWith("{{capture:")) throw new TranscriptError(`${where}: ${expected}: a name is [a-z0-9_]+`);
    const ref = REF.exec(expected);
    if (ref) {
      if (!deepEqual(bindings.get(ref[1], where), actual)) fail(`not the value bound to ${ref[1]}`);
      return;
    }
    if (expected === "{{operator_token}}") {
      if (actual !== bindings.operatorToken) fail("not the operator token");
      return;
    }
    if (actual !== bindings.text(expected, where)) fail("different string");
    return;
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual)) fail("not an array");
    if (actual.length !== expected.length) fail(`length ${actual.length}, expected ${expected.length}`);
    expected.forEach((e, i) => matchValue(e, actual[i], bindings, `${where}[${i}]`, captures));
    return;
  }
  if (expected !== null && typeof expected === "object") {
    if (actual === null || typeof actual !== "object" || Array.isArray(actual)) fail("not an object");
    const ek = Object.keys(expected).sort();
    const ak = Object.keys(actual).sort();
    if (!deepEqual(ek, ak)) fail(`members ${JSON.stringify(ak)}, expected ${JSON.stringify(ek)}`);
    for (const k of Object.keys(expected)) matchValue(expected[k], actual[k], bindings, `${where}.${k}`, captures);
    return;
  }
  if (expected !== actual) fail("different value");
}

/** RFC 4648 base32 (no padding needed) to bytes. */
export function base32Decode(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const clean = text.replace(/=+$/, "").toUpperCase();
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of clean) {
    const i = alphabet.indexOf(ch);
    if (i === -1) throw new TranscriptError(`not base32: ${JSON.stringify(ch)}`);
    value = (value << 5) | i;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((value >>> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

/** RFC 6238 TOTP: SHA-1, 6 digits, 30 s steps, at `timeMs` (+ `stepOffset` steps). */
export function totp(secretBase32, timeMs = Date.now(), stepOffset = 0) {
  const counter = Math.floor(timeMs / 1000 / 30) + stepOffset;
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const mac = createHmac("sha1", base32Decode(secretBase32)).update(msg).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const n = ((mac[offset] & 0x7f) << 24) | (mac[offset + 1] << 16) | (mac[offset + 2] << 8) | mac[offset + 3];
  return String(n % 1_000_000).padStart(6, "0");
}

/** Splits an RFC 5322 message into unfolded headers (lower-case names) and the body. */
export function parseMessage(text) {
  const sep = text.search(/\r?\n\r?\n/);
  const head = sep === -1 ? text : text.slice(0, sep);
  const body = sep === -1 ? "" : text.slice(sep).replace(/^\r?\n\r?\n/, "");
  const headers = new Map();
  const unfolded = head.replace(/\r?\n[ \t]+/g, " ");
  for (const line of unfolded.split(/\r?\n/)) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    if (!headers.has(name)) headers.set(name, line.slice(colon + 1).trim());
  }
  return { headers, body };
}

/** The raw text of the `text/plain` part of a message (7bit/8bit: no decoding). */
export function textPart(message) {
  const type = message.headers.get("content-type") ?? "text/plain";
  if (/^text\/plain/i.test(type)) return message.body;
  const boundary = /boundary="?([^";]+)"?/i.exec(type)?.[1];
  if (boundary === undefined) return null;
  for (const raw of message.body.split(`--${boundary}`).slice(1)) {
    if (raw.startsWith("--")) break;
    const part = parseMessage(raw.replace(/^\r?\n/, ""));
    const partType = part.headers.get("content-type") ?? "text/plain";
    if (/^multipart\//i.test(partType)) {
      const inner = textPart(part);
      if (inner !== null) return inner;
    } else if (/^text\/plain/i.test(partType)) {
      const cte = (part.headers.get("content-transfer-encoding") ?? "7bit").toLowerCase();
      if (cte !== "7bit" && cte !== "8bit") throw new TranscriptError(`text/plain part is ${cte}, not 7bit/8bit`);
      return part.body.replace(/\r?\n$/, "");
    }
  }
  return null;
}

/** The secret of a mail's text, by kind (protocol/outbox.md). */
export function extractSecret(kind, text) {
  if (kind === "magic_link") {
    for (const m of text.matchAll(/https?:\/\/[^\s<>"]+/g)) {
      try {
        const token = new URL(m[0]).searchParams.get("token");
        if (token !== null) return token;
      } catch {
        // not a URL after all
      }
    }
    return null;
  }
  if (kind === "otp") {
    for (const line of text.split(/\r?\n/)) if (/^[0-9]{6}$/.test(line.trim())) return line.trim();
    return null;
  }
  return null;
}

/** Waits for the newest mail of a flow in the outbox and returns its secret. */
export async function readMail(outbox, flowId, kind, timeoutMs = TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let names = [];
    try {
      names = readdirSync(outbox).filter((n) => !n.startsWith(".") && n.endsWith(".eml")).sort();
    } catch {
      // no outbox yet
    }
    for (const name of names.reverse()) {
      const message = parseMessage(readFileSync(join(outbox, name), "utf8"));
      if (message.headers.get("x-portcullis-flow-id") !== flowId) continue;
      const got = message.headers.get("x-portcullis-kind");
      if (got !== kind) throw new TranscriptError(`mail ${name}: kind ${got}, expected ${kind}`);
      const text = textPart(message);
      if (text === null) throw new TranscriptError(`mail ${name}: no text/plain part`);
      const secret = extractSecret(kind, text);
      if (secret === null) throw new TranscriptError(`mail ${name}: no ${kind} secret in the text part`);
      return secret;
    }
    if (Date.now() > deadline) throw new TranscriptError(`no mail for flow ${flowId} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One TCP connection read line by line. */
class Connection {
  constructor(socket) {
    this.socket = socket;
    this.lines = [];
    this.waiters = [];
    this.ended = false;
    this.extra = false;
    const splitter = new LineSplitter(64 * 1024 * 1024);
    socket.on("data", (chunk) => {
      const lines = splitter.push(chunk);
      if (lines === null) throw new TranscriptError("an answer line over 64 MiB");
      this.lines.push(...lines);
      if (splitter.buffered > 0) this.extra = true;
      this.#wake();
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      this.ended = true;
      this.#wake();
    });
  }
  #wake() {
    for (const w of this.waiters.splice(0)) w();
  }
  async #wait(where) {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new TranscriptError(`${where}: nothing read within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  async nextLine(where) {
    for (;;) {
      if (this.lines.length > 0) return this.lines.shift();
      if (this.ended) throw new TranscriptError(`${where}: the connection closed`);
      await this.#wait(where);
    }
  }
  async closed(where) {
    for (;;) {
      if (this.lines.length > 0) throw new TranscriptError(`${where}: expected the connection closed, read ${this.lines[0]}`);
      if (this.ended) {
        if (this.extra) throw new TranscriptError(`${where}: bytes after the last line`);
        return;
      }
      await this.#wait(where);
    }
  }
  write(data) {
    this.socket.write(data);
  }
  close() {
    this.socket.destroy();
  }
}

function open(tcp) {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: tcp.host, port: tcp.port });
    socket.once("error", reject);
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve(new Connection(socket));
    });
  });
}

const HTTP_MEMBERS = new Set(["method", "path", "headers", "body", "body_raw"]);

function sendHttp(url, step, where) {
  for (const k of Object.keys(step)) if (!HTTP_MEMBERS.has(k)) throw new TranscriptError(`${where}: unknown http member ${JSON.stringify(k)}`);
  const { method = "POST", path = "/api/v1/execute", headers = {}, body, body_raw } = step;
  if (body !== undefined && body_raw !== undefined) throw new TranscriptError(`${where}: body and body_raw together`);
  const target = new URL(path, url);
  const outHeaders = { ...headers, connection: "close" };
  let payload;
  if (body !== undefined) {
    payload = Buffer.from(JSON.stringify(body), "utf8");
    if (!Object.keys(outHeaders).some((h) => h.toLowerCase() === "content-type")) outHeaders["content-type"] = "application/json";
  } else if (body_raw !== undefined) {
    payload = Buffer.from(body_raw, "utf8");
  }
  outHeaders["content-length"] = String(payload?.length ?? 0);
  return new Promise((resolve, reject) => {
    const req = httpRequest(target, { method, headers: outHeaders, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      // The first value of each header, by lower-case name.
      const first = {};
      for (let i = 0; i < res.rawHeaders.length; i += 2) {
        const name = res.rawHeaders[i].toLowerCase();
        if (!(name in first)) first[name] = res.rawHeaders[i + 1];
      }
      res.on("end", () => resolve({ status: res.statusCode, headers: first, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.setTimeout(TIMEOUT_MS, () => req.destroy(new TranscriptError(`HTTP ${method} ${path}: no answer within ${TIMEOUT_MS} ms`)));
    req.on("error", reject);
    req.end(payload);
  });
}

/** Parses a transcript file's text into steps (with their line numbers). */
export function parseTranscript(text, name = "transcript") {
  const steps = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let step;
    try {
      step = JSON.parse(line);
    } catch {
      throw new TranscriptError(`${name}:${i + 1}: not JSON`);
    }
    const keys = Object.keys(step);
    if (keys.length !== 1) throw new TranscriptError(`${name}:${i + 1}: a step has exactly one member`);
    steps.push({ kind: keys[0], value: step[keys[0]], where: `${name}:${i + 1}` });
  });
  return steps;
}

/**
 * Replays `steps` against `server` ({ tcp, httpUrl, outbox, operatorToken }). Resolves when
 * every step held; rejects with a TranscriptError naming the failing line.
 */
export async function replay(steps, server) {
  const bindings = new Bindings(server.operatorToken);
  const conn = await open(server.tcp);
  try {
    for (let i = 0; i < steps.length; i++) {
      const { kind, value, where } = steps[i];
      switch (kind) {
        case "comment":
          break;
        case "send":
          conn.write(`${JSON.stringify(substitute(value, bindings, where))}\n`);
          break;
        case "send_raw":
          conn.write(Buffer.from(value, "utf8"));
          break;
        case "send_hex":
          conn.write(Buffer.from(value, "hex"));
          break;
        case "expect": {
          const line = await conn.nextLine(where);
          let actual;
          try {
            actual = JSON.parse(line);
          } catch {
            throw new TranscriptError(`${where}: the answer is not JSON: ${line.slice(0, 200)}`);
          }
          if (!isResponse(actual)) throw new TranscriptError(`${where}: the answer is not a response envelope: ${line.slice(0, 200)}`);
          match(value, actual, bindings, where);
          break;
        }
        case "expect_closed":
          await conn.closed(where);
          break;
        case "http": {
          const next = steps[i + 1];
          if (next?.kind !== "expect_http") throw new TranscriptError(`${where}: an http step must be followed by expect_http`);
          const { body_raw: raw, ...rest } = value ?? {};
          const resolved = substitute(rest, bindings, where);
          if (raw !== undefined) resolved.body_raw = raw;
          const res = await sendHttp(server.httpUrl, resolved, where);
          const expected = next.value;
          if (res.status !== expected.status) {
            throw new TranscriptError(`${next.where}: status ${res.status}, expected ${expected.status} (body ${res.body.slice(0, 200)})`);
          }
          for (const [name, want] of Object.entries(expected.headers ?? {})) {
            const got = res.headers[name.toLowerCase()];
            if (want === null) {
              if (got !== undefined) throw new TranscriptError(`${next.where}: header ${name} present (${got}), expected absent`);
            } else {
              if (got === undefined) throw new TranscriptError(`${next.where}: header ${name} absent`);
              match(want, got, bindings, `${next.where} header ${name}`);
            }
          }
          if ("body" in expected) {
            let body;
            try {
              body = JSON.parse(res.body);
            } catch {
              throw new TranscriptError(`${next.where}: the body is not JSON: ${res.body.slice(0, 200)}`);
            }
            match(expected.body, body, bindings, `${next.where} body`);
          }
          i++;
          break;
        }
        case "expect_http":
          throw new TranscriptError(`${where}: expect_http without an http step before it`);
        case "mail": {
          const v = { ...value, flow_id: substitute(value.flow_id, bindings, where) };
          if (!/^[a-z0-9_]+$/.test(v.capture ?? "")) throw new TranscriptError(`${where}: mail needs a capture name`);
          bindings.set(v.capture, await readMail(server.outbox, v.flow_id, v.kind));
          break;
        }
        case "totp": {
          const v = { ...value, secret: substitute(value.secret, bindings, where) };
          if (!/^[a-z0-9_]+$/.test(v.capture ?? "")) throw new TranscriptError(`${where}: totp needs a capture name`);
          if (v.step_offset !== undefined && !Number.isInteger(v.step_offset)) throw new TranscriptError(`${where}: step_offset is an integer`);
          bindings.set(v.capture, totp(v.secret, Date.now(), v.step_offset ?? 0));
          break;
        }
        default:
          throw new TranscriptError(`${where}: unknown step ${JSON.stringify(kind)}`);
      }
    }
  } finally {
    conn.close();
  }
  return bindings;
}
