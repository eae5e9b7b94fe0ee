// The generated command types: in sync with protocol/commands.json, correct for each schema
// construct of the contract, and strict enough that wrong params do not compile.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { defaultInput, defaultOutput, generate, generateFile } from "../scripts/gen-commands.mjs";

const root = fileURLToPath(new URL("..", import.meta.url));
const fixture = JSON.parse(readFileSync(`${root}test/fixtures/commands.json`, "utf8"));

test("src/generated/commands.ts is what the generator makes from protocol/commands.json", () => {
  const committed = readFileSync(defaultOutput, "utf8");
  assert.ok(
    committed === generateFile(defaultInput),
    "src/generated/commands.ts is stale: run `npm run generate` in sdk/typescript (protocol/commands.json changed)",
  );
});

test("every command of protocol/commands.json has params and result types, and the error codes are the closed set", async () => {
  const doc = JSON.parse(readFileSync(defaultInput, "utf8"));
  const { COMMANDS, ERROR_CODES } = await import("../dist/index.js");
  assert.deepEqual(Object.keys(COMMANDS).sort(), doc.commands.map((c) => c.name).sort());
  for (const c of doc.commands) {
    assert.equal(COMMANDS[c.name].caller, c.caller, c.name);
    assert.equal(COMMANDS[c.name].rateClass, c.rate_class, c.name);
    assert.equal(COMMANDS[c.name].logged, c.logged, c.name);
    assert.equal(COMMANDS[c.name].readOnly, c.read_only, c.name);
  }
  assert.deepEqual([...ERROR_CODES], doc.error_codes);
});

test("schemas become TypeScript: $ref, nullable, optional, oneOf/anyOf/allOf, enum, closed params, maps", () => {
  const ts = generate(fixture);
  // A $ref is the definition's name; every definition is exported.
  assert.match(ts, /"AUTH\.LOGIN": \{\n    params: LoginParams;\n    result: SessionTokens;\n  \};/);
  // Required members are required, others optional; a nullable type admits null.
  assert.match(ts, /export type SignupParams = \{[^}]*\n  email: string;[^}]*\n  password\?: string \| null;/);
  // oneOf of consts is a union of literals; a $ref inside a property keeps its name.
  assert.match(ts, /export type Method = "totp" \| "recovery_code" \| "passkey";/);
  assert.match(ts, /\n  method: Method;\n/);
  // anyOf: a union of object types.
  assert.match(ts, /export type TailFrame = \{\n  event: Event;\n\} \| \{\n  caught_up: boolean;/);
  // allOf: an intersection; enum with null.
  assert.match(ts, /export type Mixed = Pong & \{\n  extra\?: "a" \| 1 \| null;\n\};/);
  // Params without members and without additional ones accept only {}.
  assert.match(ts, /export type NoParams = Record<string, never>;/);
  // A map.
  assert.match(ts, /export type Labels = Record<string, string>;/);
  // Arrays and integers.
  assert.match(ts, /\n  amr: Array<string>;\n/);
  assert.match(ts, /\n  aal: number;\n/);
  // Descriptions become doc comments.
  assert.match(ts, /\/\*\* From the `MFA_REQUIRED` error's details\. \*\/\n  mfa_token\?: string \| null;/);
  // The error codes.
  assert.match(ts, /export const ERROR_CODES = \[\n  "ALREADY_USED",/);
  // Deterministic.
  assert.equal(generate(fixture), ts);
});

test("the generator refuses what the contract does not allow", () => {
  const bad = (mutate) => {
    const doc = structuredClone(fixture);
    mutate(doc);
    return () => generate(doc);
  };
  assert.throws(bad((d) => (d.$defs.Pong.patternProperties = {})), /unsupported keyword "patternProperties"/);
  assert.throws(bad((d) => (d.commands[0].params = { $ref: "#/definitions/LoginParams" })), /unsupported \$ref/);
  assert.throws(bad((d) => (d.commands[0].params = { $ref: "#/$defs/Missing" })), /missing definition "Missing"/);
  assert.throws(bad((d) => d.commands.push(d.commands[0])), /listed twice/);
  assert.throws(bad((d) => (d.$defs.Pong.required = ["nope"])), /required member "nope" has no schema/);
});

test("definition names that clash with the module's own names are renamed", () => {
  const doc = structuredClone(fixture);
  doc.$defs.Commands = { type: "object", properties: { a: { type: "string" } }, required: ["a"] };
  doc.commands.push({ ...doc.commands[0], name: "ZZ.CLASH", result: { $ref: "#/$defs/Commands" } });
  const ts = generate(doc);
  assert.match(ts, /export type CommandsSchema = \{/);
  assert.match(ts, /"ZZ\.CLASH": \{\n    params: LoginParams;\n    result: CommandsSchema;/);
});

test("wrong params and wrong result use fail to compile (tsc --noEmit on test/types/usage.ts)", () => {
  const tsc = `${root}node_modules/typescript/bin/tsc`;
  try {
    execFileSync(process.execPath, [tsc, "--noEmit", "-p", `${root}test/types`], { encoding: "utf8", stdio: "pipe" });
  } catch (error) {
    assert.fail(`type test failed:\n${error.stdout}${error.stderr}`);
  }
});
