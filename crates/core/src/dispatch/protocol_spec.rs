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
use std::collections::BTreeSet;
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
