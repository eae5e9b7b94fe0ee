// The conformance runner's pieces: each placeholder matches what it should and fails otherwise,
// captures and references, TOTP (RFC 6238 vectors), reading a mail's secret; and whole
// transcripts that must fail do.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Bindings,
  TranscriptError,
  extractSecret,
  match,
  parseMessage,
  parseTranscript,
  replay,
  substitute,
  textPart,
  totp,
} from "./support/conformance.mjs";
import { startServer } from "./support/server.mjs";

const ok = (expected, actual, b = new Bindings("pco_op")) => match(expected, actual, b);
const bad = (expected, actual, b = new Bindings("pco_op")) => assert.throws(() => match(expected, actual, b), TranscriptError);

test("{{any}} matches everything, null included", () => {
  for (const v of [null, 1, "x", [], {}, false]) ok("{{any}}", v);
});

test("{{string}} matches strings only", () => {
  ok("{{string}}", "");
  for (const v of [null, 1, [], {}, true]) bad("{{string}}", v);
});

test("{{int}} matches non-negative integers only", () => {
  ok("{{int}}", 0);
  ok("{{int}}", 123456789);
  for (const v of [-1, 1.5, "1", null, 2 ** 60]) bad("{{int}}", v);
});

test("{{hash}} matches 64 lower-case hex digits only", () => {
  ok("{{hash}}", "a".repeat(64));
  for (const v of ["A".repeat(64), "a".repeat(63), "g".repeat(64), 1]) bad("{{hash}}", v);
});

test("{{time}} matches valid RFC 3339 UTC times with milliseconds only", () => {
  ok("{{time}}", "2026-12-04T20:15:01.042Z");
  for (const v of ["2026-12-04T20:15:01Z", "2026-02-30T00:00:00.000Z", "2026-12-04 20:15:01.042Z", "2026-12-04T20:15:01.042+00:00", 0]) {
    bad("{{time}}", v);
  }
});

test("objects need exactly the same members; arrays the same length; scalars equal", () => {
  ok({ a: 1, b: [1, 2] }, { b: [1, 2], a: 1 });
  bad({ a: 1 }, { a: 1, b: 2 });
  bad({ a: 1, b: 2 }, { a: 1 });
  bad([1, 2], [1, 2, 3]);
  bad([1, 2], [2, 1]);
  bad(1, "1");
  bad(null, false);
  bad("x", "y");
  bad({ a: 1 }, [1]);
});

test("{{capture:NAME}} binds any value but null; {{ref:NAME}} must equal it", () => {
  const b = new Bindings("pco_op");
  ok({ t: "{{capture:tok}}", n: "{{capture:num}}" }, { t: "abc", n: 7 }, b);
  assert.equal(b.get("tok"), "abc");
  ok("{{ref:num}}", 7, b);
  bad("{{ref:num}}", 8, b);
  bad("{{ref:num}}", "7", b);
  bad("{{capture:x}}", null, b);
  // Rebinding replaces.
  ok("{{capture:tok}}", "def", b);
  assert.equal(b.get("tok"), "def");
  // A step that fails binds nothing.
  bad({ a: "{{capture:q}}", b: 1 }, { a: "v", b: 2 }, b);
  assert.throws(() => b.get("q"), /not bound/);
  // A capture outside an expected value, or a bad name, fails.
  assert.throws(() => substitute({ a: "{{capture:x}}" }, b), /outside an expected value/);
  assert.throws(() => substitute({ a: "x {{ref:Bad}}" }, b), /\[a-z0-9_\]\+/);
  // An unbound reference fails.
  bad("{{ref:nope}}", "x", b);
  // Inside a longer string, textually.
  ok("Bearer {{ref:tok}}", "Bearer def", b);
  bad("Bearer {{ref:tok}}", "Bearer abc", b);
});

test("send placeholders: whole values keep their type, inside strings they are text", () => {
  const b = new Bindings("pco_op");
  b.set("n", 5);
  b.set("s", "tok");
  assert.deepEqual(substitute({ a: "{{ref:n}}", b: "x {{ref:s}} y", c: ["{{operator_token}}"], d: "Bearer {{operator_token}}" }, b), {
    a: 5,
    b: "x tok y",
    c: ["pco_op"],
    d: "Bearer pco_op",
  });
  assert.throws(() => substitute({ a: "x {{ref:n}}" }, b), /bound to a string/);
  assert.throws(() => substitute({ a: "{{ref:unbound}}" }, b), /not bound/);
});

test("TOTP follows RFC 6238 (SHA-1 vectors, 6 digits) and steps", () => {
  // The RFC's secret "12345678901234567890" in base32.
  const secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
  assert.equal(totp(secret, 59 * 1000), "287082");
  assert.equal(totp(secret, 1111111109 * 1000), "081804");
  assert.equal(totp(secret, 1234567890 * 1000), "005924");
  assert.equal(totp(secret, 2000000000 * 1000), "279037");
  assert.equal(totp(secret, 1111111109 * 1000 - 30_000, 1), "081804");
});

const mail = (cte, text) =>
  [
    "From: a@example.com",
    "X-Portcullis-Kind: magic_link",
    "X-Portcullis-Flow-Id: f1",
    'Content-Type: multipart/alternative;',
    ' boundary="BOUND"',
    "",
    "--BOUND",
    "Content-Type: text/plain; charset=utf-8",
    `Content-Transfer-Encoding: ${cte}`,
    "",
    text,
    "--BOUND",
    "Content-Type: text/html",
    "",
    '<a href="http://x/?token=WRONG">x</a>',
    "--BOUND--",
    "",
  ].join("\r\n");

test("a mail's secret: the token of the first link that has one, the first six-digit line", () => {
  const m = parseMessage(mail("7bit", "Hello\r\nhttp://example.com/help\r\nhttps://auth.example.com/magic?token=abc_DEF-1&x=2\r\nhttps://e/?token=second"));
  assert.equal(m.headers.get("x-portcullis-flow-id"), "f1");
  assert.equal(extractSecret("magic_link", textPart(m)), "abc_DEF-1");
  assert.equal(extractSecret("otp", "Your code:\n 1234567\n  042917  \n111111"), "042917");
  assert.equal(extractSecret("otp", "no code 123456 here"), null);
  assert.equal(extractSecret("magic_link", "http://example.com/no-token"), null);
  // A quoted-printable text part is refused, not misread.
  assert.throws(() => textPart(parseMessage(mail("quoted-printable", "https://e/?token=3Dabc"))), /quoted-printable/);
});

test("a transcript whose expectation does not hold fails, naming its line", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const steps = parseTranscript(
    [
      '{"send":{"id":1,"command":"SYS.PING"}}',
      '{"expect":{"id":1,"ok":true,"command":"SYS.PING","data":{"pong":false},"error":null}}',
    ].join("\n"),
    "bad.ndjson",
  );
  await assert.rejects(replay(steps, server), (e) => e instanceof TranscriptError && /bad\.ndjson:2/.test(e.message));
});

test("HTTP steps (status, headers, JSON and raw bodies) and captures across transports", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const steps = parseTranscript(
    [
      '{"http":{"body":{"id":"h1","command":"SYS.INFO"}}}',
      '{"expect_http":{"status":200,"headers":{"content-type":"application/json","x-no-such-header":null},"body":{"id":"h1","ok":true,"command":"SYS.INFO","data":{"name":"portcullis","version":"{{string}}","protocol":1,"node_id":"{{capture:node}}","started_at":"{{time}}","uptime_s":"{{int}}","log_head_seq":"{{int}}","log_first_seq":1},"error":null}}}',
      '{"send":{"id":"{{ref:node}}","command":"SYS.PING"}}',
      '{"expect":{"id":"{{ref:node}}","ok":true,"command":"SYS.PING","data":{"pong":true},"error":null}}',
      '{"http":{"headers":{"authorization":"Bearer {{operator_token}}"},"body":{"id":2,"command":"LOG.VERIFY"}}}',
      '{"expect_http":{"status":200,"body":{"id":2,"ok":true,"command":"LOG.VERIFY","data":"{{any}}","error":null}}}',
      '{"http":{"body_raw":"{not json"}}',
      '{"expect_http":{"status":400,"body":{"id":null,"ok":false,"command":null,"data":null,"error":{"code":"BAD_REQUEST","message":"{{string}}"}}}}',
    ].join("\n"),
    "http.ndjson",
  );
  const bindings = await replay(steps, server);
  assert.equal(typeof bindings.get("node"), "string");
  // A wrong status fails.
  const wrong = parseTranscript(['{"http":{"body_raw":"{not json"}}', '{"expect_http":{"status":200}}'].join("\n"), "s.ndjson");
  await assert.rejects(replay(wrong, server), /status 400, expected 200/);
});
