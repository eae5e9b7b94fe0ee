//! `protocol/` checked against the registry: the machine-readable description
//! `protocol/commands.json` is exactly what [`Registry::describe`] writes, its schemas use only
//! the keywords the description promises, the examples in `protocol/commands/*.md` fit those
//! schemas, and every list of commands in the prose (the README's table, the `SYS.COMMANDS`
//! example, the caller and rate classes of envelope.md) is the registry's.
//!
//! `PORTCULLIS_BLESS=1 cargo test -p portcullis-core commands_json` rewrites
//! `protocol/commands.json` from the registry.

use super::registry;
use crate::testkit::Bench;
use crate::{CommandError, CommandSpec, Ctx, RateClass, Registry, Requirement};
use portcullis_protocol::commands::sys::CommandInfo;
use portcullis_protocol::ErrorCode;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const BLESS: &str = "PORTCULLIS_BLESS=1 cargo test -p portcullis-core commands_json";

fn protocol_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protocol")
}

fn read(relative: &str) -> String {
    let path = protocol_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The document as committed: pretty-printed with two-space indents, keys sorted, a final
/// newline.
fn render(doc: &Value) -> String {
    let mut text = serde_json::to_string_pretty(doc).unwrap();
    text.push('\n');
    text
}

fn describe(registry: &Registry) -> Value {
    registry.describe().unwrap_or_else(|e| panic!("{e}"))
}

/// Where the committed document differs from `expected`: `None` when it does not.
fn difference(committed: &str, expected: &str) -> Option<String> {
    if committed == expected {
        return None;
    }
    let line = committed
        .lines()
        .zip(expected.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| committed.lines().count().min(expected.lines().count()));
    Some(format!(
        "protocol/commands.json is not what the registry describes (first difference at line \
         {}: committed {:?}, generated {:?}); regenerate it with `{BLESS}` and commit it",
        line + 1,
        committed.lines().nth(line).unwrap_or("<end of file>"),
        expected.lines().nth(line).unwrap_or("<end of file>"),
    ))
}

#[test]
fn commands_json_is_what_the_registry_describes() {
    let expected = render(&describe(&registry()));
    let path = protocol_dir().join("commands.json");
    if std::env::var_os("PORTCULLIS_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if let Some(diff) = difference(&committed, &expected) {
        panic!("{diff}");
    }
}

/// The check can fail: one more command, or one fewer, is a different document.
#[test]
fn commands_json_differs_when_the_registry_does() {
    let served = render(&describe(&registry()));
    let more = registry().with([CommandSpec::new(
        "SYS.EXTRA",
        Requirement::Anyone,
        RateClass::Cheap,
        extra,
    )]);
    let diff = difference(&served, &render(&describe(&more))).expect("an extra command shows");
    assert!(diff.contains(BLESS), "{diff}");
    let doc = describe(&more);
    let extra = doc["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "SYS.EXTRA")
        .expect("listed");
    assert_eq!(extra["result"], json!({"$ref": "#/$defs/ExtraResult"}));
    assert_eq!(
        doc["$defs"]["ExtraResult"]["properties"]["n"]["type"],
        "integer"
    );
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct ExtraResult {
    n: u64,
}

async fn extra(
    _: Ctx,
    _: portcullis_protocol::commands::sys::NoParams,
) -> Result<ExtraResult, CommandError> {
    Ok(ExtraResult { n: 1 })
}

mod first {
    /// One `Clash`.
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    pub struct Clash {
        #[allow(dead_code)]
        pub a: u64,
    }
}

mod second {
    /// Another `Clash`.
    #[derive(serde::Serialize, schemars::JsonSchema)]
    pub struct Clash {
        pub b: String,
    }
}

async fn clash(_: Ctx, _: first::Clash) -> Result<second::Clash, CommandError> {
    Ok(second::Clash { b: String::new() })
}

async fn clash_twice(_: Ctx, _: first::Clash) -> Result<first_again::Wrapper, CommandError> {
    Ok(first_again::Wrapper {
        one: None,
        other: None,
    })
}

mod first_again {
    #[derive(serde::Serialize, schemars::JsonSchema)]
    pub struct Wrapper {
        pub one: Option<super::third::Clash>,
        pub other: Option<super::fourth::Clash>,
    }
}

mod third {
    #[derive(serde::Serialize, schemars::JsonSchema)]
    pub struct Clash {
        pub c: bool,
    }
}

mod fourth {
    #[derive(serde::Serialize, schemars::JsonSchema)]
    pub struct Clash {
        pub d: bool,
    }
}

/// Two different types under one definition name are refused, whether one is a params type and
/// the other a result type, or both are reached from one result.
#[test]
fn commands_json_refuses_two_types_with_one_name() {
    let across = Registry::default().with([CommandSpec::new(
        "X.CLASH",
        Requirement::Anyone,
        RateClass::Cheap,
        clash,
    )]);
    let e = across
        .describe()
        .expect_err("params and result share a name");
    assert!(e.contains("Clash"), "{e}");
    let within = Registry::default().with([CommandSpec::new(
        "X.CLASH",
        Requirement::Anyone,
        RateClass::Cheap,
        clash_twice,
    )]);
    let e = within
        .describe()
        .expect_err("two result types share a name");
    assert!(e.contains("Clash"), "{e}");
    assert!(registry().describe().is_ok());
}

/// The document lists exactly what `SYS.COMMANDS` answers, with the same strings.
#[tokio::test]
async fn commands_json_lists_what_sys_commands_answers() {
    let b = Bench::new(|_| {}).await;
    let listed: Vec<CommandInfo> =
        serde_json::from_value(b.ok("SYS.COMMANDS", json!({}), None).await["commands"].clone())
            .unwrap();
    let doc: Value = serde_json::from_str(&read("commands.json")).unwrap();
    let described: Vec<CommandInfo> = doc["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| CommandInfo {
            name: c["name"].as_str().unwrap().to_owned(),
            caller: c["caller"].as_str().unwrap().to_owned(),
            rate_class: c["rate_class"].as_str().unwrap().to_owned(),
            logged: c["logged"].as_bool().unwrap(),
            read_only: c["read_only"].as_bool().unwrap(),
        })
        .collect();
    assert_eq!(described, listed);
    let mut codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    codes.sort_unstable();
    assert_eq!(doc["error_codes"], json!(codes));
    assert_eq!(
        doc["protocol"],
        json!(portcullis_protocol::PROTOCOL_VERSION)
    );
    let streaming: Vec<&str> = doc["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["streaming"] == true)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(streaming, ["LOG.TAIL"]);
}

/// The keywords contract section 1 (protocol/README.md, "Machine-readable description") allows.
const KEYWORDS: &[&str] = &[
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
];

/// Every schema in `schema` (itself included), with its JSON pointer-ish path.
fn schemas<'a>(schema: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), schema));
    let Value::Object(m) = schema else { return };
    for (k, child) in m {
        match k.as_str() {
            "properties" => {
                for (name, p) in child.as_object().into_iter().flatten() {
                    schemas(p, format!("{path}/properties/{name}"), out);
                }
            }
            "items" | "additionalProperties" => schemas(child, format!("{path}/{k}"), out),
            "oneOf" | "anyOf" | "allOf" => {
                for (i, s) in child.as_array().into_iter().flatten().enumerate() {
                    schemas(s, format!("{path}/{k}/{i}"), out);
                }
            }
            _ => {}
        }
    }
}

/// The schemas use only the promised keywords, every `$ref` points to a top-level definition,
/// every definition is used, and params refuse unknown members.
#[test]
fn commands_json_schemas_use_only_the_contract_keywords() {
    let doc = describe(&registry());
    let defs = doc["$defs"].as_object().unwrap();
    let mut all = Vec::new();
    for c in doc["commands"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        schemas(&c["params"], format!("{name}/params"), &mut all);
        schemas(&c["result"], format!("{name}/result"), &mut all);
        let params = resolve(defs, &c["params"]);
        assert_eq!(params["type"], "object", "{name}: params are an object");
        assert_eq!(
            params["additionalProperties"], false,
            "{name}: params deny unknown members"
        );
    }
    for (name, def) in defs {
        schemas(def, format!("$defs/{name}"), &mut all);
    }
    let mut used = BTreeSet::new();
    for (path, schema) in &all {
        match schema {
            Value::Bool(_) => {}
            Value::Object(m) => {
                for (k, v) in m {
                    assert!(KEYWORDS.contains(&k.as_str()), "{path}: keyword {k}");
                    match k.as_str() {
                        "$ref" => {
                            let target = v.as_str().and_then(|r| r.strip_prefix("#/$defs/"));
                            let target = target.unwrap_or_else(|| panic!("{path}: $ref {v}"));
                            assert!(defs.contains_key(target), "{path}: $ref to nothing: {v}");
                            used.insert(target.to_owned());
                        }
                        // protocol/README.md names these.
                        "format" => assert!(
                            ["uint8", "uint32", "uint64", "uint"].iter().any(|f| v == f),
                            "{path}: format {v}"
                        ),
                        "type" => {
                            let names: Vec<&Value> = match v {
                                Value::Array(a) => a.iter().collect(),
                                one => vec![one],
                            };
                            for t in names {
                                assert!(
                                    [
                                        "null", "boolean", "object", "array", "number", "string",
                                        "integer"
                                    ]
                                    .iter()
                                    .any(|n| t == n),
                                    "{path}: type {t}"
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
            other => panic!("{path}: not a schema: {other}"),
        }
    }
    let defined: BTreeSet<String> = defs.keys().cloned().collect();
    assert_eq!(used, defined, "every definition is referenced");
}

/// The schema `s` with a top-level `$ref` followed.
fn resolve<'a>(defs: &'a Map<String, Value>, mut s: &'a Value) -> &'a Value {
    while let Some(r) = s.get("$ref").and_then(Value::as_str) {
        s = r
            .strip_prefix("#/$defs/")
            .and_then(|name| defs.get(name))
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    s
}

/// A validator for the schema subset above: enough to check the examples of the docs.
struct Validator<'a> {
    defs: &'a Map<String, Value>,
}

impl Validator<'_> {
    fn check(&self, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        let m = match schema {
            Value::Bool(true) => return,
            Value::Object(m) => m,
            other => {
                errors.push(format!("{at}: schema {other}"));
                return;
            }
        };
        let mut fail = |msg: String| errors.push(format!("{at}: {msg}"));
        if let Some(r) = m.get("$ref").and_then(Value::as_str) {
            let target = resolve(self.defs, schema);
            let _ = r;
            let mut inner = Vec::new();
            self.check(target, v, at, &mut inner);
            inner
                .into_iter()
                .for_each(|e| fail(e.replacen(&format!("{at}: "), "", 1)));
        }
        if let Some(t) = m.get("type") {
            let types: Vec<&str> = match t {
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                one => one.as_str().into_iter().collect(),
            };
            let fits = types.iter().any(|t| match *t {
                "null" => v.is_null(),
                "boolean" => v.is_boolean(),
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "number" => v.is_number(),
                "integer" => v.is_i64() || v.is_u64(),
                _ => false,
            });
            if !fits {
                fail(format!("{v} is not of type {t}"));
            }
        }
        if let Some(c) = m.get("const") {
            if c != v {
                fail(format!("{v} is not {c}"));
            }
        }
        if let Some(e) = m.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                fail(format!("{v} is not one of {}", Value::Array(e.clone())));
            }
        }
        if let (Some(min), Some(n)) = (m.get("minimum").and_then(Value::as_f64), v.as_f64()) {
            if n < min {
                fail(format!("{v} < {min}"));
            }
        }
        if let (Some(max), Some(n)) = (m.get("maximum").and_then(Value::as_f64), v.as_f64()) {
            if n > max {
                fail(format!("{v} > {max}"));
            }
        }
        if let Some(obj) = v.as_object() {
            let props = m.get("properties").and_then(Value::as_object);
            for req in m
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !req.as_str().is_some_and(|r| obj.contains_key(r)) {
                    fail(format!("missing member {req}"));
                }
            }
            for (k, child) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => self.check(s, child, &format!("{at}.{k}"), errors),
                    None => match m.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            errors.push(format!("{at}: unknown member {k:?}"))
                        }
                        Some(s @ Value::Object(_)) => {
                            self.check(s, child, &format!("{at}.{k}"), errors)
                        }
                        _ => {}
                    },
                }
            }
        }
        if let (Some(items), Some(a)) = (m.get("items"), v.as_array()) {
            for (i, child) in a.iter().enumerate() {
                self.check(items, child, &format!("{at}[{i}]"), errors);
            }
        }
        let passing = |key: &str| -> Option<(usize, usize, Vec<String>)> {
            let list = m.get(key)?.as_array()?;
            let mut why = Vec::new();
            let ok = list
                .iter()
                .filter(|s| {
                    let mut e = Vec::new();
                    self.check(s, v, at, &mut e);
                    why.extend(e.iter().cloned());
                    e.is_empty()
                })
                .count();
            Some((ok, list.len(), why))
        };
        if let Some((ok, _, why)) = passing("oneOf") {
            if ok != 1 {
                errors.push(format!("{at}: fits {ok} of oneOf, not exactly 1 ({why:?})"));
            }
        }
        if let Some((ok, _, why)) = passing("anyOf") {
            if ok == 0 {
                errors.push(format!("{at}: fits none of anyOf ({why:?})"));
            }
        }
        if let Some((ok, n, why)) = passing("allOf") {
            if ok != n {
                errors.push(format!("{at}: fails allOf ({why:?})"));
            }
        }
    }
}

/// The validator itself can say no: wrong types, missing and unknown members, consts.
#[test]
fn commands_json_validator_refuses_what_does_not_fit() {
    let doc = describe(&registry());
    let defs = doc["$defs"].as_object().unwrap();
    let v = Validator { defs };
    let errors = |schema: &Value, value: Value| {
        let mut e = Vec::new();
        v.check(schema, &value, "$", &mut e);
        e
    };
    let login = json!({"$ref": "#/$defs/AuthLoginParams"});
    assert!(errors(&login, json!({"email": "a@example.com", "password": "x"})).is_empty());
    assert!(!errors(&login, json!({"email": "a@example.com"})).is_empty());
    assert!(!errors(&login, json!({"email": 1, "password": "x"})).is_empty());
    assert!(!errors(&login, json!({"email": "a", "password": "x", "extra": 1})).is_empty());
    let frame = json!({"$ref": "#/$defs/LogTailFrame"});
    assert!(errors(&frame, json!({"end": true, "next_seq": 3})).is_empty());
    assert!(!errors(&frame, json!({"end": false, "next_seq": 3})).is_empty());
    assert!(!errors(&frame, json!({"end": true, "next_seq": -1})).is_empty());
    let report = json!({"$ref": "#/$defs/LogVerifyReport"});
    let without_checkpoint = json!({"valid":true,"checked":3,"head_seq":3,
        "first_broken_seq":null,"reason":null});
    assert!(!errors(&report, without_checkpoint).is_empty());
}

/// One example found in a command's document.
struct Example {
    file: String,
    line: usize,
    /// The command whose schema applies.
    command: String,
    /// `params` or `result`.
    part: &'static str,
    value: Value,
}

/// The JSON examples of `protocol/commands/*.md`: request lines (their `params`), response
/// lines that succeeded (their `data`), and the bare objects of the ```json blocks under the
/// "Params" and "Result" headings. Lines that are not JSON are returned apart, except those
/// abbreviated with a `…` outside a string, which are skipped.
fn doc_examples() -> (Vec<Example>, Vec<String>) {
    let mut examples = Vec::new();
    let mut unreadable = Vec::new();
    let dir = protocol_dir().join("commands");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(command) = file.strip_suffix(".md") else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let mut heading = String::new();
        let mut block: Option<(String, usize, Vec<&str>)> = None;
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if let Some(fence) = trimmed.strip_prefix("```") {
                match block.take() {
                    None => block = Some((fence.trim().to_owned(), n + 1, Vec::new())),
                    Some((lang, start, lines)) => {
                        let mut values = Vec::new();
                        let whole = lines.join("\n");
                        if let Ok(v) = serde_json::from_str::<Value>(&whole) {
                            values.push((start + 1, v));
                        } else {
                            for (i, l) in lines.iter().enumerate() {
                                let l = l.trim();
                                if !l.starts_with('{') {
                                    continue;
                                }
                                match serde_json::from_str::<Value>(l) {
                                    Ok(v) => values.push((start + 1 + i, v)),
                                    // Abbreviated on purpose (`[{…},…]`): not checkable.
                                    Err(_) if l.contains('…') => {}
                                    Err(_) => unreadable.push(format!("{file}:{}", start + 1 + i)),
                                }
                            }
                        }
                        for (line, v) in values {
                            let found = |command: &str, part, value: &Value| Example {
                                file: file.clone(),
                                line,
                                command: command.to_owned(),
                                part,
                                value: value.clone(),
                            };
                            match (v.get("command").and_then(Value::as_str), v.get("ok")) {
                                (Some(c), Some(ok)) if ok == true => {
                                    examples.push(found(c, "result", &v["data"]));
                                }
                                (Some(_), Some(_)) => {}
                                (Some(c), None) => {
                                    let params = v.get("params").cloned().unwrap_or(Value::Null);
                                    let params = if params.is_null() { json!({}) } else { params };
                                    examples.push(found(c, "params", &params));
                                }
                                (None, _) if lang == "json" && v.is_object() => {
                                    if heading == "Result" {
                                        examples.push(found(command, "result", &v));
                                    } else if heading == "Params" {
                                        examples.push(found(command, "params", &v));
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
                continue;
            }
            match block.as_mut() {
                Some((_, _, lines)) => lines.push(line),
                None => {
                    // The innermost heading: a `### Second factor` under `## Result` is not the
                    // result.
                    if line.starts_with('#') {
                        heading = line.trim_start_matches('#').trim().to_owned();
                    }
                }
            }
        }
    }
    (examples, unreadable)
}

/// Every request and response in `protocol/commands/*.md` fits the schemas of
/// `protocol/commands.json`: a documented member the server does not send, or a member the
/// docs forget, shows here.
#[test]
fn command_doc_examples_fit_commands_json() {
    let doc = describe(&registry());
    let defs = doc["$defs"].as_object().unwrap();
    let by_name: BTreeMap<&str, &Value> = doc["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c))
        .collect();
    let v = Validator { defs };
    let (examples, unreadable) = doc_examples();
    let mut errors = Vec::new();
    let mut checked = BTreeMap::<&str, usize>::new();
    for ex in &examples {
        let Some(c) = by_name.get(ex.command.as_str()) else {
            continue;
        };
        let mut e = Vec::new();
        v.check(&c[ex.part], &ex.value, ex.part, &mut e);
        errors.extend(
            e.into_iter()
                .map(|e| format!("{}:{} ({} {}): {e}", ex.file, ex.line, ex.command, ex.part)),
        );
        *checked.entry(ex.part).or_default() += 1;
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(
        unreadable.is_empty(),
        "examples that are not JSON: {unreadable:?}"
    );
    // Every command shows at least one request and one successful answer.
    for name in by_name.keys() {
        for part in ["params", "result"] {
            assert!(
                examples
                    .iter()
                    .any(|e| e.command == *name && e.part == part),
                "{name}.md has no example of its {part}"
            );
        }
    }
    assert!(
        checked["result"] > 50 && checked["params"] > 50,
        "{checked:?}"
    );
}

/// The registry as `SYS.COMMANDS` lists it.
fn listed() -> Vec<CommandInfo> {
    registry().list()
}

/// Command names written as code (`` `LOG.PRUNE` ``) in a piece of Markdown, in order.
fn command_names(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.contains('.')
                && s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c == '.' || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// The cells of the rows of the Markdown table whose header row starts with `| first |`.
fn table<'a>(doc: &'a str, first: &str) -> Vec<Vec<&'a str>> {
    let header = format!("| {first} |");
    let mut lines = doc
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&header));
    assert!(lines.next().is_some(), "no table headed {header:?}");
    lines
        .skip(1) // |---|---|
        .map(str::trim)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// protocol/README.md's table of commands has one row per command of the registry, in its
/// order, with its caller, rate class and `logged`.
#[test]
fn readme_command_table_is_the_registry() {
    let doc = read("README.md");
    let rows: Vec<(String, String, String, bool)> = table(&doc, "Command")
        .into_iter()
        .map(|cells| {
            let name = cells[0]
                .strip_prefix('[')
                .and_then(|s| s.split_once(']'))
                .map(|(n, link)| {
                    assert_eq!(link, format!("(commands/{n}.md)"), "{cells:?}");
                    n.to_owned()
                })
                .unwrap_or_else(|| panic!("not a command link: {cells:?}"));
            let code = |s: &str| s.trim_matches('`').to_owned();
            (name, code(cells[1]), code(cells[2]), cells[3] == "`true`")
        })
        .collect();
    let registry: Vec<(String, String, String, bool)> = listed()
        .into_iter()
        .map(|c| (c.name, c.caller, c.rate_class, c.logged))
        .collect();
    let missing: Vec<_> = registry.iter().filter(|r| !rows.contains(r)).collect();
    let extra: Vec<_> = rows.iter().filter(|r| !registry.contains(r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "protocol/README.md's command table lacks {missing:?} and has {extra:?}"
    );
    assert_eq!(
        rows, registry,
        "protocol/README.md's command table is sorted by name"
    );
}

/// The registry shown in SYS.COMMANDS.md (the result block and the example response) is the
/// registry.
#[test]
fn sys_commands_doc_shows_the_registry() {
    let doc = read("commands/SYS.COMMANDS.md");
    let registry = json!({ "commands": listed() });
    let result = doc
        .split("## Result")
        .nth(1)
        .and_then(|s| s.split("```json").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a ```json block under ## Result");
    let result: Value = serde_json::from_str(result).unwrap();
    let names = |v: &Value| -> Vec<String> {
        v["commands"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        names(&result),
        names(&registry),
        "SYS.COMMANDS.md, ## Result"
    );
    assert_eq!(result, registry, "SYS.COMMANDS.md, ## Result");
    let response: Value = doc
        .lines()
        .find(|l| l.starts_with(r#"{"id":2,"ok":true"#))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("the example response");
    assert_eq!(
        names(&response["data"]),
        names(&registry),
        "SYS.COMMANDS.md, ## Example"
    );
    assert_eq!(response["data"], registry, "SYS.COMMANDS.md, ## Example");
}

/// envelope.md's table of rate classes names, for each class, exactly the commands it guards.
#[test]
fn envelope_rate_classes_list_the_registry() {
    let doc = read("envelope.md");
    let mut documented = BTreeMap::<String, BTreeSet<String>>::new();
    for cells in table(&doc, "Rate class") {
        let class = cells[0].trim_matches('`').to_owned();
        let names = command_names(cells[1]).into_iter().collect();
        assert!(documented.insert(class, names).is_none(), "{cells:?}");
    }
    let mut registry = BTreeMap::<String, BTreeSet<String>>::new();
    for c in listed() {
        registry.entry(c.rate_class).or_default().insert(c.name);
    }
    for (class, commands) in &registry {
        let shown = documented.get(class).cloned().unwrap_or_default();
        let missing: Vec<_> = commands.difference(&shown).collect();
        let extra: Vec<_> = shown.difference(commands).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "envelope.md, rate class `{class}`: lacks {missing:?}, wrongly lists {extra:?}"
        );
    }
    assert_eq!(documented, registry, "envelope.md, ## Rate classes");
}

/// envelope.md's table of caller classes has a row for every class the registry uses, and
/// says which commands have each class: exactly, for `operator`, `superadmin` and the
/// `admin:*` classes; and every `user_step_up` command among those it lists.
#[test]
fn envelope_caller_classes_list_the_registry() {
    let doc = read("envelope.md");
    let mut registry = BTreeMap::<String, BTreeSet<String>>::new();
    for c in listed() {
        registry.entry(c.caller).or_default().insert(c.name);
    }
    let rows = table(&doc, "Caller class");
    let mut classes = BTreeSet::new();
    let mut admin = BTreeMap::<String, BTreeSet<String>>::new();
    for cells in &rows {
        let row_classes: Vec<String> = cells[0]
            .split(',')
            .map(|c| c.trim().trim_matches('`').to_owned())
            .collect();
        let who = cells[1];
        match row_classes.as_slice() {
            [one] if one == "operator" || one == "superadmin" => {
                let named: BTreeSet<String> = command_names(who).into_iter().collect();
                assert_eq!(
                    Some(&named),
                    registry.get(one),
                    "envelope.md: the commands of caller class `{one}`"
                );
            }
            [one] if one == "user_step_up" => {
                let named: BTreeSet<String> = command_names(who).into_iter().collect();
                let missing: Vec<_> = registry[one].difference(&named).collect();
                assert!(
                    missing.is_empty(),
                    "envelope.md, `user_step_up`: {missing:?}"
                );
            }
            many if many.len() > 1 => {
                // "The commands of each class: [`A`](…) and [`B`](…) (`admin:users:read`); …"
                let list = who
                    .split("The commands of each class:")
                    .nth(1)
                    .expect("the admin row lists the commands of each class");
                for part in list.split(';') {
                    let class = part
                        .rsplit_once("(`")
                        .and_then(|(_, c)| c.split_once('`'))
                        .map(|(c, _)| c.to_owned())
                        .unwrap_or_else(|| panic!("no class in {part:?}"));
                    let names = command_names(part).into_iter().collect();
                    assert!(admin.insert(class, names).is_none());
                }
                let listed: BTreeSet<String> = admin.keys().cloned().collect();
                assert_eq!(
                    listed,
                    many.iter().cloned().collect(),
                    "the admin row names the commands of each of its classes"
                );
            }
            _ => {}
        }
        classes.extend(row_classes);
    }
    for (class, commands) in &admin {
        assert_eq!(
            Some(commands),
            registry.get(class),
            "envelope.md: the commands of caller class `{class}`"
        );
    }
    let used: BTreeSet<String> = registry.keys().cloned().collect();
    let missing: Vec<_> = used.difference(&classes).collect();
    assert!(
        missing.is_empty(),
        "caller classes without a row: {missing:?}"
    );
}

/// Runs commands through the dispatcher and checks each request's params and each successful
/// answer's `data` against the command's schemas.
struct Checked<'a> {
    bench: &'a Bench,
    doc: &'a Value,
    ran: BTreeSet<String>,
}

impl Checked<'_> {
    fn schema(&self, command: &str, part: &str) -> Value {
        self.doc["commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == command)
            .unwrap_or_else(|| panic!("{command} is not described"))[part]
            .clone()
    }

    fn fits(&self, command: &str, part: &str, value: &Value) {
        let v = Validator {
            defs: self.doc["$defs"].as_object().unwrap(),
        };
        let mut errors = Vec::new();
        v.check(&self.schema(command, part), value, part, &mut errors);
        assert!(errors.is_empty(), "{command} {part} {value}: {errors:?}");
    }

    /// The answer of a command that must succeed: its `data`.
    async fn ok(&mut self, command: &str, params: Value, token: Option<&str>) -> Value {
        self.fits(command, "params", &params);
        let r = self.bench.call(command, params, token).await;
        assert!(r.ok, "{command}: {r:?}");
        self.fits(command, "result", &r.data);
        self.ran.insert(command.to_owned());
        r.data
    }
}

/// What the server really answers fits the schemas of `protocol/commands.json`: a walk through
/// nearly every command (all but the passkey finishes, which need an authenticator, and
/// `LOG.TAIL`, whose lines the doc examples cover), checking each request and each answer.
#[tokio::test]
async fn commands_json_describes_what_the_server_answers() {
    let b = Bench::new(|_| {}).await;
    let doc = describe(&registry());
    let mut c = Checked {
        bench: &b,
        doc: &doc,
        ran: BTreeSet::new(),
    };
    let op = b.operator_token();
    let op = Some(op.as_str());
    let pw = "correct horse battery staple";
    for cmd in ["SYS.PING", "SYS.INFO", "SYS.COMMANDS"] {
        c.ok(cmd, json!({}), None).await;
    }
    // Mail first, so that the n-th mail is the one asked for: a link (same device, then
    // device-bound and approved elsewhere) and a code.
    c.ok(
        "MAGIC.SEND",
        json!({"email": "b@example.org", "create_user": true}),
        None,
    )
    .await;
    let link = b.link_token(1).await;
    let verified_by_mail = c.ok("MAGIC.VERIFY", json!({"token": link}), None).await;
    b.advance(3600);
    let verifier = "v".repeat(64);
    let challenge = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(crate::base::crypto::sha256(verifier.as_bytes()))
    };
    let flow = c
        .ok(
            "MAGIC.SEND",
            json!({"email": "b@example.org", "code_challenge": challenge}),
            None,
        )
        .await;
    let poll = json!({"flow_id": flow["flow_id"], "code_verifier": verifier});
    assert_eq!(
        c.ok("MAGIC.POLL", poll.clone(), None).await["status"],
        "pending"
    );
    let link = b.link_token(2).await;
    c.ok("MAGIC.APPROVE", json!({"token": link}), None).await;
    assert_eq!(c.ok("MAGIC.POLL", poll, None).await["status"], "complete");
    b.advance(3600);
    let code = c
        .ok(
            "OTP.SEND",
            json!({"email": "c@example.org", "create_user": true}),
            None,
        )
        .await;
    let otp = b.otp_code(3).await;
    c.ok(
        "OTP.VERIFY",
        json!({"flow_id": code["flow_id"], "code": otp}),
        None,
    )
    .await;

    let admin = c
        .ok("ADMIN.BOOTSTRAP", json!({"email": "root@example.org"}), op)
        .await;
    let signed = c
        .ok(
            "AUTH.SIGNUP",
            json!({"email": "a@example.org", "password": pw, "display_name": "A"}),
            None,
        )
        .await;
    let user_id = signed["user_id"].clone();
    let refreshed = c
        .ok(
            "AUTH.REFRESH",
            json!({"refresh_token": signed["refresh_token"]}),
            None,
        )
        .await;
    let access = refreshed["access_token"].as_str().unwrap().to_owned();
    let at = Some(access.as_str());
    c.ok("USER.ME", json!({}), at).await;
    c.ok("USER.UPDATE", json!({"display_name": "Alice"}), at)
        .await;
    c.ok("SESSION.LIST", json!({}), at).await;
    c.ok("PASSKEY.LIST", json!({}), at).await;
    c.ok("PASSKEY.REGISTER.BEGIN", json!({"name": "Laptop"}), at)
        .await;
    c.ok(
        "PASSKEY.LOGIN.BEGIN",
        json!({"email": "a@example.org"}),
        None,
    )
    .await;
    c.ok("PASSKEY.LOGIN.BEGIN", json!({}), None).await;
    let enrolment = c.ok("TOTP.ENROLL", json!({}), at).await;
    let secret = totp_rs::Secret::try_from_base32(enrolment["secret"].as_str().unwrap())
        .unwrap()
        .as_ref()
        .to_vec();
    let confirm =
        json!({"enrollment_id": enrolment["enrollment_id"], "code": b.totp_code(&secret)});
    c.ok("TOTP.CONFIRM", confirm, at).await;
    b.advance(30);
    let login = b
        .call(
            "AUTH.LOGIN",
            json!({"email": "a@example.org", "password": pw}),
            None,
        )
        .await;
    let mfa_token = login.error.and_then(|e| e.details).unwrap()["mfa_token"].clone();
    let verified = c
        .ok(
            "MFA.VERIFY",
            json!({"mfa_token": mfa_token, "method": "totp", "code": b.totp_code(&secret)}),
            None,
        )
        .await;
    let aal2 = verified["access_token"].as_str().unwrap().to_owned();
    let aal2 = Some(aal2.as_str());
    c.ok("RECOVERY.REGENERATE", json!({}), aal2).await;
    c.ok(
        "USER.CHANGE_EMAIL",
        json!({"new_email": "a2@example.org"}),
        aal2,
    )
    .await;
    c.ok("TOTP.DISABLE", json!({}), aal2).await;
    c.ok(
        "USER.SET_PASSWORD",
        json!({"current_password": pw, "new_password": "another long passphrase"}),
        aal2,
    )
    .await;
    c.ok("SESSION.REVOKE_ALL", json!({"keep_current": true}), aal2)
        .await;
    let other = c
        .ok(
            "AUTH.LOGIN",
            json!({"email": "a@example.org", "password": "another long passphrase"}),
            None,
        )
        .await;
    c.ok(
        "SESSION.REVOKE",
        json!({"session_id": other["session_id"]}),
        aal2,
    )
    .await;
    c.ok("AUTH.LOGOUT", json!({}), aal2).await;

    // Administration, with the operator token.
    c.ok("ADMIN.USER.GET", json!({"user_id": user_id}), op)
        .await;
    c.ok("ADMIN.USER.LIST", json!({"limit": 2}), op).await;
    c.ok("ADMIN.USER.DISABLE", json!({"user_id": user_id}), op)
        .await;
    c.ok("ADMIN.USER.ENABLE", json!({"user_id": user_id}), op)
        .await;
    c.ok("ADMIN.SESSION.REVOKE_ALL", json!({"user_id": user_id}), op)
        .await;
    c.ok("ADMIN.SESSION.REVOKE_EVERYONE", json!({}), op).await;
    c.ok(
        "ADMIN.USER.RECOVER",
        json!({"user_id": verified_by_mail["user_id"], "reason": "lost every factor"}),
        op,
    )
    .await;
    let key = c
        .ok(
            "APIKEY.CREATE",
            json!({"name": "backend", "scopes": ["log:read"], "expires_in": 3600}),
            op,
        )
        .await;
    c.ok("APIKEY.LIST", json!({}), op).await;
    c.ok("LOG.QUERY", json!({"limit": 5}), key["key"].as_str())
        .await;
    c.ok("APIKEY.REVOKE", json!({"id": key["id"]}), op).await;
    c.ok("KEYS.ROTATE", json!({}), op).await;
    c.ok("KEYS.LIST", json!({}), op).await;
    c.ok("LOG.PRUNE", json!({"through_seq": 3}), op).await;
    c.ok("LOG.VERIFY", json!({}), op).await;
    c.ok(
        "ADMIN.USER.DELETE",
        json!({"user_id": admin["user_id"]}),
        op,
    )
    .await;
    let fresh = c
        .ok(
            "AUTH.SIGNUP",
            json!({"email": "d@example.org", "password": pw}),
            None,
        )
        .await;
    c.ok("USER.DELETE", json!({}), fresh["access_token"].as_str())
        .await;

    let not_run: Vec<String> = registry()
        .list()
        .into_iter()
        .map(|i| i.name)
        .filter(|n| !c.ran.contains(n))
        .collect();
    assert_eq!(
        not_run,
        [
            "LOG.TAIL",
            "PASSKEY.LOGIN.FINISH",
            "PASSKEY.REGISTER.FINISH",
            "PASSKEY.REMOVE",
            "PASSKEY.RENAME"
        ]
    );
}
