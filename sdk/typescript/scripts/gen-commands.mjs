// Generates src/generated/commands.ts from protocol/commands.json (the machine-readable command
// description the server's own tests keep in sync with its Rust types): one TypeScript type per
// JSON Schema definition, the `Commands` map (params and result of every command), the command
// metadata and the `ErrorCode` union.
//
//   node scripts/gen-commands.mjs            write src/generated/commands.ts
//   node scripts/gen-commands.mjs --check    exit 1 when the committed file is stale
//   node scripts/gen-commands.mjs IN OUT     another input / output (tests use a fixture)
//
// test/generate.test.mjs fails when the committed file differs from what this script makes.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
export const defaultInput = `${root}../../protocol/commands.json`;
export const defaultOutput = `${root}src/generated/commands.ts`;

/** Names the generated module defines itself; a definition with one of them gets a suffix. */
const RESERVED = new Set([
  "Commands",
  "COMMANDS",
  "CommandName",
  "CommandInfo",
  "ErrorCode",
  "ERROR_CODES",
  "PROTOCOL_VERSION",
  "Array",
  "Record",
  "Object",
  "String",
  "Number",
  "Boolean",
  "Date",
  "Error",
  "Promise",
  "Map",
  "Set",
]);

/** The keywords the contract allows (17-contracts.md section 1); anything else is refused. */
const KEYWORDS = new Set([
  "type",
  "properties",
  "required",
  "additionalProperties",
  "items",
  "enum",
  "const",
  "oneOf",
  "anyOf",
  "allOf",
  "$ref",
  "description",
  "format",
  "minimum",
  "maximum",
  "default",
  // Annotations a generator may add and that do not change the type.
  "title",
  "$schema",
  "examples",
  "deprecated",
  "readOnly",
  "writeOnly",
]);

const IDENT = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

class Generator {
  /** @param {any} doc */
  constructor(doc) {
    if (typeof doc !== "object" || doc === null) throw new Error("commands.json is not an object");
    if (!Array.isArray(doc.commands)) throw new Error("commands.json has no `commands` array");
    if (!Array.isArray(doc.error_codes)) throw new Error("commands.json has no `error_codes` array");
    this.doc = doc;
    this.defs = doc.$defs ?? {};
    /** @type {Map<string, string>} definition name → TypeScript name */
    this.names = new Map();
    const used = new Set();
    for (const name of Object.keys(this.defs).sort()) {
      let ts = name.replace(/[^A-Za-z0-9_$]/g, "_");
      if (!/^[A-Za-z_$]/.test(ts)) ts = `T${ts}`;
      if (RESERVED.has(ts)) ts = `${ts}Schema`;
      let candidate = ts;
      for (let n = 2; used.has(candidate); n++) candidate = `${ts}${n}`;
      used.add(candidate);
      this.names.set(name, candidate);
    }
  }

  ref(ref) {
    const prefix = "#/$defs/";
    if (typeof ref !== "string" || !ref.startsWith(prefix)) {
      throw new Error(`unsupported $ref ${JSON.stringify(ref)}: only ${prefix}<Name> is allowed`);
    }
    const name = decodeURIComponent(ref.slice(prefix.length)).replace(/~1/g, "/").replace(/~0/g, "~");
    const ts = this.names.get(name);
    if (ts === undefined) throw new Error(`$ref to a missing definition ${JSON.stringify(name)}`);
    return ts;
  }

  /** The TypeScript type of a schema, written at indentation `indent`. */
  type(schema, indent, where) {
    if (schema === true || schema === undefined) return "unknown";
    if (schema === false) return "never";
    if (typeof schema !== "object" || schema === null || Array.isArray(schema)) {
      throw new Error(`${where}: a schema must be an object or a boolean`);
    }
    for (const key of Object.keys(schema)) {
      if (!KEYWORDS.has(key)) throw new Error(`${where}: unsupported keyword ${JSON.stringify(key)}`);
    }
    const parts = [];
    if (schema.$ref !== undefined) parts.push(this.ref(schema.$ref));
    if (schema.const !== undefined) parts.push(literal(schema.const));
    else if (schema.enum !== undefined) {
      if (!Array.isArray(schema.enum) || schema.enum.length === 0) throw new Error(`${where}: empty enum`);
      parts.push(union(schema.enum.map(literal)));
    }
    if (schema.oneOf !== undefined) parts.push(union(schema.oneOf.map((s, i) => this.type(s, indent, `${where}.oneOf[${i}]`))));
    if (schema.anyOf !== undefined) parts.push(union(schema.anyOf.map((s, i) => this.type(s, indent, `${where}.anyOf[${i}]`))));
    if (schema.allOf !== undefined) {
      parts.push(schema.allOf.map((s, i) => paren(this.type(s, indent, `${where}.allOf[${i}]`))).join(" & "));
    }
    // An enum or const is narrower than its `type`; a composition carries its own types, and a
    // `type` beside it can only add `null`.
    const structural =
      schema.properties !== undefined || schema.items !== undefined || schema.additionalProperties !== undefined;
    const literalGiven = schema.const !== undefined || schema.enum !== undefined;
    let nullable = false;
    if (schema.type !== undefined) {
      const types = Array.isArray(schema.type) ? schema.type : [schema.type];
      if (!literalGiven) {
        if (parts.length === 0 || structural) {
          parts.push(union(types.map((t) => this.single(t, schema, indent, where))));
        } else if (types.includes("null")) {
          nullable = true;
        }
      }
    } else if (structural) {
      parts.push(this.single("object", schema, indent, where));
    }
    if (parts.length === 0) return "unknown";
    const core = parts.length === 1 ? parts[0] : parts.map(paren).join(" & ");
    return nullable ? `${paren(core)} | null` : core;
  }

  single(t, schema, indent, where) {
    switch (t) {
      case "string":
        return "string";
      case "integer":
      case "number":
        return "number";
      case "boolean":
        return "boolean";
      case "null":
        return "null";
      case "array":
        return `Array<${this.type(schema.items, indent, `${where}.items`)}>`;
      case "object":
        return this.object(schema, indent, where);
      default:
        throw new Error(`${where}: unsupported type ${JSON.stringify(t)}`);
    }
  }

  object(schema, indent, where) {
    const props = schema.properties ?? {};
    const required = new Set(schema.required ?? []);
    const names = Object.keys(props);
    const extra = schema.additionalProperties;
    if (names.length === 0) {
      if (extra === false) return "Record<string, never>";
      if (extra === undefined || extra === true) return "Record<string, unknown>";
      return `Record<string, ${this.type(extra, indent, `${where}.additionalProperties`)}>`;
    }
    const inner = `${indent}  `;
    const lines = ["{"];
    for (const name of names) {
      const prop = props[name];
      const doc = comment(prop?.description, inner);
      if (doc) lines.push(doc);
      const key = IDENT.test(name) ? name : JSON.stringify(name);
      const optional = required.has(name) ? "" : "?";
      lines.push(`${inner}${key}${optional}: ${this.type(prop, inner, `${where}.${name}`)};`);
    }
    for (const name of required) {
      if (!(name in props)) throw new Error(`${where}: required member ${JSON.stringify(name)} has no schema`);
    }
    if (extra !== undefined && extra !== false) {
      lines.push(`${inner}[key: string]: unknown;`);
    }
    lines.push(`${indent}}`);
    return lines.join("\n");
  }

  generate() {
    const doc = this.doc;
    const out = [];
    out.push("// Generated by scripts/gen-commands.mjs from protocol/commands.json: do not edit.");
    out.push("// Regenerate with `npm run generate` in sdk/typescript.");
    out.push("/* eslint-disable */");
    out.push("");
    out.push(`/** The wire protocol version these types describe. */`);
    out.push(`export const PROTOCOL_VERSION = ${JSON.stringify(doc.protocol ?? null)} as const;`);
    out.push("");
    const codes = [...doc.error_codes];
    for (const c of codes) if (typeof c !== "string") throw new Error("error_codes must be strings");
    out.push("/** The closed set of error codes a server answers (protocol/errors.md). */");
    out.push(`export const ERROR_CODES = [\n${codes.map((c) => `  ${JSON.stringify(c)},`).join("\n")}\n] as const;`);
    out.push("");
    out.push("/** One code of the closed set: branch on it, never on the message. */");
    out.push("export type ErrorCode = (typeof ERROR_CODES)[number];");
    for (const [name, ts] of this.names) {
      const schema = this.defs[name];
      out.push("");
      const doc = comment(schema?.description, "");
      if (doc) out.push(doc);
      out.push(`export type ${ts} = ${this.type(schema, "", `$defs.${name}`)};`);
    }
    const commands = [...doc.commands].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const seen = new Set();
    out.push("");
    out.push("/** Every command of the protocol: its params and its result (for `LOG.TAIL`, one frame). */");
    out.push("export interface Commands {");
    for (const c of commands) {
      if (typeof c.name !== "string") throw new Error("a command without a name");
      if (seen.has(c.name)) throw new Error(`command ${c.name} is listed twice`);
      seen.add(c.name);
      const inner = "    ";
      out.push(`  ${JSON.stringify(c.name)}: {`);
      out.push(`${inner}params: ${this.type(c.params, inner, `${c.name}.params`)};`);
      out.push(`${inner}result: ${this.type(c.result, inner, `${c.name}.result`)};`);
      out.push("  };");
    }
    out.push("}");
    out.push("");
    out.push("/** The name of a command this SDK knows. */");
    out.push("export type CommandName = keyof Commands;");
    out.push("");
    out.push("/** What `SYS.COMMANDS` says of a command. */");
    out.push("export interface CommandInfo {");
    out.push("  readonly caller: string;");
    out.push("  readonly rateClass: string;");
    out.push("  readonly logged: boolean;");
    out.push("  readonly readOnly: boolean;");
    out.push("  readonly streaming: boolean;");
    out.push("}");
    out.push("");
    out.push("/** The registry, as `SYS.COMMANDS` lists it. */");
    out.push("export const COMMANDS: { readonly [C in CommandName]: CommandInfo } = {");
    for (const c of commands) {
      const info = {
        caller: String(c.caller),
        rateClass: String(c.rate_class),
        logged: c.logged === true,
        readOnly: c.read_only === true,
        streaming: c.streaming === true,
      };
      out.push(
        `  ${JSON.stringify(c.name)}: { caller: ${JSON.stringify(info.caller)}, rateClass: ${JSON.stringify(info.rateClass)}, logged: ${info.logged}, readOnly: ${info.readOnly}, streaming: ${info.streaming} },`,
      );
    }
    out.push("};");
    out.push("");
    return out.join("\n");
  }
}

function literal(value) {
  if (value === null || typeof value === "string" || typeof value === "boolean") return JSON.stringify(value);
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  throw new Error(`unsupported literal ${JSON.stringify(value)}`);
}

function union(members) {
  const unique = [...new Set(members)];
  if (unique.includes("unknown")) return "unknown";
  return unique.length === 1 ? unique[0] : unique.map((m) => (m.includes(" & ") ? `(${m})` : m)).join(" | ");
}

function paren(t) {
  return /[|&]/.test(t) && !t.startsWith("{") ? `(${t})` : t;
}

function comment(text, indent) {
  if (typeof text !== "string" || text.trim() === "") return "";
  const lines = text.replace(/\*\//g, "*\\/").trim().split("\n");
  if (lines.length === 1) return `${indent}/** ${lines[0]} */`;
  return [`${indent}/**`, ...lines.map((l) => `${indent} *${l === "" ? "" : ` ${l}`}`), `${indent} */`].join("\n");
}

/** The TypeScript module for a parsed commands.json. */
export function generate(doc) {
  return new Generator(doc).generate();
}

/** The TypeScript module for the commands.json at `path`. */
export function generateFile(path = defaultInput) {
  return generate(JSON.parse(readFileSync(path, "utf8")));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const check = args.includes("--check");
  const [input = defaultInput, output = defaultOutput] = args.filter((a) => a !== "--check");
  const text = generateFile(input);
  if (check) {
    let current = "";
    try {
      current = readFileSync(output, "utf8");
    } catch {}
    if (current !== text) {
      console.error(`${output} is stale: run \`npm run generate\` in sdk/typescript`);
      process.exit(1);
    }
  } else {
    mkdirSync(dirname(output), { recursive: true });
    writeFileSync(output, text);
  }
}
