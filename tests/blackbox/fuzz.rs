//! Property and fuzz tests of the request path: NDJSON framing (through the real server and
//! through the client's decoder), the dispatcher in process and over TCP, memory under
//! maximum-size and oversized lines, and rate limits against spoofed `X-Forwarded-For`.
//!
//! Case counts are small by default so a normal run takes seconds. Every property reads
//! `PROPTEST_CASES` for a longer run, e.g.
//! `PROPTEST_CASES=100000 cargo test --test blackbox fuzz`, and `PROPTEST_RNG_SEED=<n>` fixes the
//! generator. A failure reports the smallest input found.

use crate::harness::{all_events, http, Server};
use portcullis_client::{Client, ClientError};
use portcullis_core::base::config::RateLimits;
use portcullis_core::{App, Config, ConnInfo, Dispatcher, Reply, SystemClock, Transport};
use portcullis_protocol::codec::FrameError;
use portcullis_protocol::{ErrorCode, Request, DEFAULT_MAX_FRAME_BYTES};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const PASSWORD: &str = "correct horse battery staple";
/// Cheap password hashing, so sign-ups do not dominate the run time.
const LIGHT_ARGON2: &[&str] = &["--argon2-m-kib", "64", "--argon2-t", "1"];
/// The frame limit of the framing properties (the smallest the server accepts).
const LIMIT: usize = 1024;
/// Liveness guard: an answer that takes longer than this is a hang, not slowness.
const HANG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Running properties.

/// Runs a property for `PROPTEST_CASES` cases (default `default_cases`); panics with the
/// smallest failing input.
fn check<S>(default_cases: u32, strategy: &S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let config = RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    };
    if let Err(e) = TestRunner::new(config).run(strategy, test) {
        panic!("{e}");
    }
}

fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// What every answer must look like.

/// Checks that `v` is a well-formed response envelope whose error, if any, is in the closed set
/// and is not `INTERNAL`; returns the error code.
fn envelope(v: &Value) -> Result<Option<ErrorCode>, String> {
    let o = v.as_object().ok_or_else(|| format!("not an object: {v}"))?;
    let keys: BTreeSet<&str> = o.keys().map(String::as_str).collect();
    if keys != BTreeSet::from(["command", "data", "error", "id", "ok"]) {
        return Err(format!("members {keys:?}: {v}"));
    }
    if o["id"].is_array() || o["id"].is_object() {
        return Err(format!("compound id: {v}"));
    }
    if !(o["command"].is_null() || o["command"].is_string()) {
        return Err(format!("command: {v}"));
    }
    match o["ok"] {
        Value::Bool(true) if o["error"].is_null() && o["command"].is_string() => Ok(None),
        Value::Bool(false) if o["data"].is_null() => {
            let e = o["error"]
                .as_object()
                .ok_or_else(|| format!("no error object: {v}"))?;
            if let Some(k) = e
                .keys()
                .find(|k| !["code", "message", "retry_after_ms", "details"].contains(&k.as_str()))
            {
                return Err(format!("error member {k}: {v}"));
            }
            let code = e
                .get("code")
                .and_then(Value::as_str)
                .and_then(ErrorCode::parse)
                .ok_or_else(|| format!("code outside the closed set: {v}"))?;
            if !e.get("message").is_some_and(Value::is_string) {
                return Err(format!("message: {v}"));
            }
            if e.get("retry_after_ms").is_some_and(|ms| !ms.is_u64()) {
                return Err(format!("retry_after_ms: {v}"));
            }
            if code == ErrorCode::RateLimited && e.get("retry_after_ms").is_none() {
                return Err(format!("RATE_LIMITED without retry_after_ms: {v}"));
            }
            if code == ErrorCode::Internal {
                return Err(format!("INTERNAL: {v}"));
            }
            Ok(Some(code))
        }
        _ => Err(format!("ok/data/error do not agree: {v}")),
    }
}

/// Checks an answer to `frame` (one whole line): a well-formed envelope that echoes the id and
/// command of a readable request, `UNKNOWN_COMMAND` exactly for unregistered names, and
/// `BAD_REQUEST` with `command` null for anything that is not a request.
fn answer_to(frame: &[u8], v: &Value, registered: &BTreeSet<String>) -> Result<(), String> {
    let code = envelope(v)?;
    let req = std::str::from_utf8(frame)
        .ok()
        .and_then(|t| serde_json::from_str::<Request>(t).ok());
    match req {
        Some(req) => {
            let id = req
                .id
                .as_ref()
                .map_or(Value::Null, |i| i.as_value().clone());
            if v["id"] != id {
                return Err(format!("id {id} not echoed: {v}"));
            }
            if v["command"] != json!(req.command) {
                return Err(format!("command {:?} not echoed: {v}", req.command));
            }
            let known = registered.contains(&req.command);
            if known == (code == Some(ErrorCode::UnknownCommand)) {
                return Err(format!("registered: {known}, answer {v}"));
            }
            if code == Some(ErrorCode::BadRequest) {
                return Err(format!("a readable request answered BAD_REQUEST: {v}"));
            }
        }
        None => {
            if code != Some(ErrorCode::BadRequest) || !v["command"].is_null() {
                return Err(format!("not a request, yet answered {v}"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Generated requests.

/// Raw JSON text that serde cannot produce from a value, or that is not JSON at all.
const RAW: &[&str] = &[
    r#""\ud800""#,
    r#""\udfff""#,
    r#""x\udc00\ud800y""#,
    r#""\ud83d\ude00""#,
    r#""a\u0000b""#,
    r#""\u202e\u200f""#,
    r#""\ufeff""#,
    "1e400",
    "-1e400",
    "1e-400",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890123456789012345678901234567890",
    "0.0000000000000000000000000000000000000001",
    "-0",
    "1E+2",
    "NaN",
    "Infinity",
    "01",
    "1.",
    ".5",
    "+1",
    "0x10",
    r#""\x41""#,
    "'single'",
    "tru",
    "nul",
    "[1,]",
    r#"{"a":1,}"#,
    r#""unterminated"#,
    r#"{"a":1,"a":2}"#,
];

/// Strings that tend to break parsers, validators and logs.
fn edge_string() -> impl Strategy<Value = String> {
    let fixed: Vec<String> = vec![
        String::new(),
        "\u{0}".into(),
        "a\u{0}b@example.org".into(),
        "\u{202e}gro.elpmaxe@evil".into(),
        "alice\u{200f}@example.org".into(),
        "\u{feff}bob@example.org".into(),
        "\u{ffff}\u{fffe}".into(),
        "😀".repeat(70),
        "𝕏𝕏@𝕏𝕏.org".into(),
        "e\u{301}\u{301}\u{301}".into(),
        "x".repeat(10_000),
        "alice@example.org".into(),
        " ALICE@EXAMPLE.ORG ".into(),
        format!("{}@example.org", "a".repeat(65)),
        format!("prt_{}", "A".repeat(43)),
        format!("op_{}", "A".repeat(43)),
        "eyJhbGciOiJFZERTQSJ9.e30.AAAA".into(),
        "000000".into(),
        "１２３４５６".into(),
        "12345\u{0}".into(),
        "https://evil.example/".into(),
        "javascript:alert(1)".into(),
        "../../etc/passwd".into(),
        "SYS.PING".into(),
        "totp".into(),
        "recovery_code".into(),
        "ok".into(),
        "operator".into(),
        "user:0000".into(),
        "2026-01-01T00:00:00Z".into(),
        "9999-99-99T99:99:99Z".into(),
        "en".into(),
        "pt-BR".into(),
        "%s%n%x".into(),
        "<script>".into(),
        "\r\n\t".into(),
    ];
    prop_oneof![
        3 => prop::sample::select(fixed),
        2 => any::<String>(),
        2 => "[ -~]{0,48}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        1 => prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e308),
            json!(-1e308),
            json!(f64::MIN_POSITIVE),
            json!(-0.0),
            json!(0.5),
        ]),
        4 => edge_string().prop_map(Value::from),
    ]
}

fn json_value(members: Vec<String>) -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, move |inner| {
        let key = prop_oneof![prop::sample::select(members.clone()), edge_string()];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// `[[[…]]]` or `{"a":{"a":…}}`, `depth` deep.
fn nested(depth: usize, objects: bool) -> String {
    if objects {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    } else {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }
}

/// The text of a JSON value: serialised, raw, or deeply nested.
fn value_text(members: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => json_value(members).prop_map(|v| v.to_string()),
        2 => prop::sample::select(RAW).prop_map(str::to_owned),
        1 => (1usize..400, any::<bool>()).prop_map(|(d, o)| nested(d, o)),
    ]
}

fn object_text(pairs: Vec<(String, String)>) -> String {
    let inner: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("{}:{v}", json!(k)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A request object as text, built member by member so that every part can be wrong: the id,
/// the command (mostly registered names), the params (mostly members the commands define), the
/// token (`@@USER@@` and `@@OPERATOR@@` are replaced by real tokens where the runner has them)
/// and unknown top-level members.
fn request_text(commands: Vec<String>, members: Vec<String>) -> BoxedStrategy<String> {
    let id = prop_oneof![
        6 => Just(None),
        8 => json_leaf().prop_map(|v| Some(v.to_string())),
        1 => value_text(members.clone()).prop_map(Some),
        1 => Just(Some(json!("i".repeat(129)).to_string())),
    ];
    let command = prop_oneof![
        8 => prop::sample::select(commands.clone()).prop_map(|c| json!(c).to_string()),
        1 => prop::sample::select(commands).prop_map(|c| json!(c.to_lowercase()).to_string()),
        2 => edge_string().prop_map(|s| json!(s).to_string()),
        1 => value_text(members.clone()),
    ];
    let member = prop_oneof![
        4 => prop::sample::select(members.clone()),
        1 => edge_string(),
    ];
    let params = prop_oneof![
        1 => Just(None),
        1 => Just(Some("null".to_owned())),
        2 => value_text(members.clone()).prop_map(Some),
        8 => prop::collection::vec((member, value_text(members.clone())), 0..6)
            .prop_map(|kv| Some(object_text(kv))),
    ];
    let token = prop_oneof![
        12 => token(),
        2 => edge_string().prop_map(|s| Some(json!(s).to_string())),
        1 => value_text(members.clone()).prop_map(Some),
    ];
    let extra = prop_oneof![
        16 => Just(None),
        1 => (edge_string(), value_text(members)).prop_map(Some),
    ];
    (id, command, params, token, extra)
        .prop_map(|(id, command, params, token, extra)| {
            let mut pairs = vec![("command".to_owned(), command)];
            for (k, v) in [("id", id), ("params", params), ("token", token)] {
                if let Some(v) = v {
                    pairs.push((k.to_owned(), v));
                }
            }
            pairs.extend(extra);
            let half = pairs.len() / 2;
            pairs.rotate_left(half);
            object_text(pairs)
        })
        .boxed()
}

/// A token member: none, or a placeholder for a real user or operator token.
fn token() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        5 => Just(None),
        4 => Just(Some("\"@@USER@@\"".to_owned())),
        1 => Just(Some("\"@@OPERATOR@@\"".to_owned())),
    ]
}

/// Valid-looking params for the commands that have any; each command not named here is
/// driven from `{}`.
fn valid_params() -> Vec<(&'static str, Value)> {
    let hex = "0123456789abcdef0123456789abcdef";
    let link = "A".repeat(43);
    vec![
        (
            "AUTH.SIGNUP",
            json!({"email": "new@example.org", "password": PASSWORD, "display_name": "New"}),
        ),
        (
            "AUTH.LOGIN",
            json!({"email": "new@example.org", "password": PASSWORD}),
        ),
        (
            "AUTH.REFRESH",
            json!({"refresh_token": format!("prt_{link}")}),
        ),
        (
            "MAGIC.SEND",
            json!({"email": "new@example.org", "create_user": true, "locale": "en"}),
        ),
        (
            "MAGIC.VERIFY",
            json!({"token": link, "code_verifier": "v".repeat(43)}),
        ),
        ("MAGIC.APPROVE", json!({"token": link})),
        (
            "MAGIC.POLL",
            json!({"flow_id": hex, "code_verifier": "v".repeat(43)}),
        ),
        (
            "OTP.SEND",
            json!({"email": "new@example.org", "create_user": true}),
        ),
        ("OTP.VERIFY", json!({"flow_id": hex, "code": "123456"})),
        (
            "LOG.QUERY",
            json!({"from_seq": 1, "to_seq": 100, "command": "AUTH.LOGIN",
            "outcome": "ok", "actor": "anonymous", "since": "2020-01-01T00:00:00Z", "limit": 10}),
        ),
        ("LOG.TAIL", json!({"from_seq": 1, "follow": false})),
        ("LOG.VERIFY", json!({"from_seq": 1, "to_seq": 10})),
        ("USER.UPDATE", json!({"display_name": "Renamed"})),
        (
            "USER.SET_PASSWORD",
            json!({"current_password": PASSWORD,
            "new_password": "another good passphrase"}),
        ),
        ("SESSION.REVOKE", json!({"session_id": hex})),
        ("SESSION.REVOKE_ALL", json!({"keep_current": true})),
        (
            "TOTP.CONFIRM",
            json!({"enrollment_id": hex, "code": "123456"}),
        ),
        ("TOTP.DISABLE", json!({"code": "123456"})),
        ("MFA.VERIFY", json!({"method": "totp", "code": "123456"})),
        ("PASSKEY.REGISTER.BEGIN", json!({"name": "laptop"})),
        ("PASSKEY.LOGIN.BEGIN", json!({"email": "new@example.org"})),
    ]
}

/// A registered command with valid-looking params, one member changed, removed or added.
fn near_valid(commands: Vec<String>, members: Vec<String>) -> impl Strategy<Value = String> {
    let table = valid_params();
    let starts: Vec<(String, Value)> = commands
        .into_iter()
        .map(|c| {
            let p = table
                .iter()
                .find(|(name, _)| *name == c)
                .map_or_else(|| json!({}), |(_, p)| p.clone());
            (c, p)
        })
        .collect();
    let name = prop_oneof![4 => prop::sample::select(members.clone()), 1 => edge_string()];
    (
        prop::sample::select(starts),
        0..4u8,
        any::<prop::sample::Index>(),
        name,
        json_value(members),
        token(),
    )
        .prop_map(|((command, params), op, at, name, value, token)| {
            let mut p = params.as_object().cloned().unwrap_or_default();
            let keys: Vec<String> = p.keys().cloned().collect();
            match op {
                1 if !keys.is_empty() => {
                    p.insert(keys[at.index(keys.len())].clone(), value);
                }
                2 if !keys.is_empty() => {
                    p.remove(&keys[at.index(keys.len())]);
                }
                3 => {
                    p.insert(name, value);
                }
                _ => {}
            }
            let mut req = json!({"command": command, "params": p});
            if let Some(t) = token {
                req["token"] = serde_json::from_str(&t).unwrap();
            }
            req.to_string()
        })
}

/// One frame: mostly requests (near valid, or built from parts that may each be wrong), whole or
/// cut short or with a byte changed; random bytes; deep nesting.
fn frames(commands: Vec<String>, members: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    let req = request_text(commands.clone(), members.clone());
    prop_oneof![
        8 => near_valid(commands, members).prop_map(String::into_bytes),
        5 => req.clone().prop_map(String::into_bytes),
        1 => (req.clone(), any::<prop::sample::Index>()).prop_map(|(t, i)| {
            let b = t.into_bytes();
            let cut = i.index(b.len() + 1);
            b[..cut].to_vec()
        }),
        1 => (req, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(t, i, x)| {
            let mut b = t.into_bytes();
            let at = i.index(b.len());
            b[at] = x;
            b
        }),
        1 => prop::collection::vec(any::<u8>(), 0..600),
        1 => (1usize..3_000, any::<bool>()).prop_map(|(d, o)| {
            format!("{{\"command\":\"SYS.INFO\",\"params\":{}}}", nested(d, o)).into_bytes()
        }),
    ]
}

/// Member names of each command's params table in `protocol/commands/<NAME>.md`.
fn documented_members(command: &str) -> Vec<String> {
    let path = format!(
        "{}/protocol/commands/{command}.md",
        env!("CARGO_MANIFEST_DIR")
    );
    let Ok(doc) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut in_params = false;
    for line in doc.lines() {
        if line.starts_with("## ") {
            in_params = line.trim() == "## Params";
            continue;
        }
        if !in_params {
            continue;
        }
        if let Some(rest) = line.strip_prefix("| `") {
            if let Some((name, _)) = rest.split_once('`') {
                if name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    out.push(name.to_owned());
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The dispatcher in process.

/// An app on a fresh data directory, driven through `Dispatcher::execute_frame`.
struct Bench {
    rt: Runtime,
    dispatcher: Dispatcher,
    operator: String,
    /// Command name → caller class, from `SYS.COMMANDS`.
    callers: BTreeMap<String, String>,
    registered: BTreeSet<String>,
    /// Command name → documented params members.
    members: BTreeMap<String, Vec<String>>,
    users: AtomicU64,
    _tmp: tempfile::TempDir,
}

impl Bench {
    fn open() -> Bench {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let data_dir = tmp.path().join("data");
        let config = Config {
            data_dir: data_dir.clone(),
            argon2_m_kib: 64,
            argon2_t: 1,
            rate_limits: RateLimits {
                enabled: false,
                ..RateLimits::default()
            },
            ..Config::default()
        };
        let app = rt
            .block_on(App::open(config, Arc::new(SystemClock)))
            .unwrap();
        let operator = std::fs::read_to_string(data_dir.join("operator.token"))
            .unwrap()
            .trim()
            .to_owned();
        let mut b = Bench {
            rt,
            dispatcher: Dispatcher::new(app),
            operator,
            callers: BTreeMap::new(),
            registered: BTreeSet::new(),
            members: BTreeMap::new(),
            users: AtomicU64::new(0),
            _tmp: tmp,
        };
        let listed = b.answers(br#"{"command":"SYS.COMMANDS"}"#);
        for c in listed[0]["data"]["commands"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap().to_owned();
            b.callers
                .insert(name.clone(), c["caller"].as_str().unwrap().to_owned());
            b.members.insert(name.clone(), documented_members(&name));
            b.registered.insert(name);
        }
        assert!(b.registered.contains("AUTH.SIGNUP"), "{:?}", b.registered);
        b
    }

    fn all_members(&self) -> Vec<String> {
        let set: BTreeSet<String> = self.members.values().flatten().cloned().collect();
        set.into_iter().collect()
    }

    /// Every line of the answer to `frame`: one, or a `LOG.TAIL` stream up to its end (or, when
    /// it follows, up to `caught_up`).
    fn answers(&self, frame: &[u8]) -> Vec<Value> {
        let conn = ConnInfo {
            transport: Transport::Internal,
            client: None,
            user_agent: None,
        };
        let run = async {
            match self.dispatcher.execute_frame(frame, None, &conn).await {
                Reply::Unary(p) => vec![p.resolve().await],
                Reply::Stream { mut stream, .. } => {
                    let mut out = Vec::new();
                    for _ in 0..1_000_000 {
                        let Some(r) = stream.next().await else { break };
                        let last = !r.ok || r.data.get("caught_up").is_some();
                        out.push(r);
                        if last {
                            break;
                        }
                    }
                    out
                }
            }
        };
        let answers = self
            .rt
            .block_on(async { tokio::time::timeout(HANG, run).await })
            .unwrap_or_else(|_| panic!("no answer within {HANG:?}"));
        answers
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect()
    }

    /// The access token of a new password account.
    fn user_token(&self) -> String {
        let n = self.users.fetch_add(1, Ordering::SeqCst);
        let frame = json!({"command": "AUTH.SIGNUP", "params": {
            "email": format!("fuzz-{n}@example.org"), "password": PASSWORD}});
        let a = self.answers(frame.to_string().as_bytes());
        a[0]["data"]["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("sign-up: {}", a[0]))
            .to_owned()
    }

    /// `frame` with its token placeholders replaced.
    fn fill(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = replace(frame, b"@@OPERATOR@@", self.operator.as_bytes());
        if contains(&out, b"@@USER@@") {
            out = replace(&out, b"@@USER@@", self.user_token().as_bytes());
        }
        out
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn replace(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn every_command_answers_wrongly_typed_params_within_the_closed_set() {
    let b = Bench::open();
    let bad = vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(u64::MAX),
        json!(1e300),
        json!(""),
        json!("x"),
        json!("😀\u{0}\u{202e}"),
        json!("y".repeat(70_000)),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({"a": {"b": [[[]]]}}),
    ];
    let mut token: Option<String> = None;
    let mut calls = 0u64;
    for (name, caller) in &b.callers {
        let mut members = b.members[name].clone();
        members.push("bogus".to_owned());
        let mut variants: Vec<Value> = bad.clone();
        for m in &members {
            variants.extend(bad.iter().map(|v| json!({ m.as_str(): v })));
        }
        for v in &bad {
            variants.push(Value::Object(
                members.iter().map(|m| (m.clone(), v.clone())).collect(),
            ));
        }
        for params in variants {
            let mut req = json!({"id": calls, "command": name, "params": params});
            match caller.as_str() {
                "anyone" => {}
                "operator" => req["token"] = json!(b.operator),
                _ => req["token"] = json!(token.get_or_insert_with(|| b.user_token())),
            }
            let frame = req.to_string();
            let answers = b.answers(frame.as_bytes());
            assert!(!answers.is_empty(), "{name}: no answer");
            for a in &answers {
                if let Err(e) = answer_to(frame.as_bytes(), a, &b.registered) {
                    let shown: String = frame.chars().take(300).collect();
                    panic!("{name} with {shown}: {e}");
                }
            }
            if answers[0]["ok"] == true {
                // The account may have changed (signed out, new password): use a new one.
                token = None;
            }
            calls += 1;
        }
    }
    assert!(calls > 100, "{calls} calls");
}

#[test]
fn the_dispatcher_answers_any_frame_with_an_envelope_of_the_closed_set() {
    let b = Bench::open();
    let commands: Vec<String> = b.registered.iter().cloned().collect();
    let strategy = frames(commands, b.all_members());
    let outcomes: RefCell<BTreeMap<String, u64>> = RefCell::default();
    check(512, &strategy, |frame| {
        let frame = b.fill(&frame);
        let answers = b.answers(&frame);
        if answers.is_empty() {
            return Err(fail("no answer"));
        }
        for a in &answers {
            answer_to(&frame, a, &b.registered).map_err(fail)?;
            let outcome = a["error"]["code"].as_str().unwrap_or("ok").to_owned();
            *outcomes.borrow_mut().entry(outcome).or_default() += 1;
        }
        Ok(())
    });
    let outcomes = outcomes.into_inner();
    println!("outcomes: {outcomes:?}");
    // The frames reach the handlers, not only the envelope parser.
    for reached in ["INVALID_PARAMS", "UNAUTHENTICATED", "ok"] {
        assert!(outcomes.contains_key(reached), "no {reached}: {outcomes:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The same frames over TCP.

struct Line {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Line {
    async fn open(addr: SocketAddr) -> Line {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (rd, wr) = s.into_split();
        Line {
            rd: BufReader::new(rd),
            wr,
        }
    }

    /// The next line, `None` at the end of the stream (or a reset).
    async fn next(&mut self) -> Option<Vec<u8>> {
        next_line(&mut self.rd).await
    }
}

async fn next_line(rd: &mut BufReader<OwnedReadHalf>) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let n = tokio::time::timeout(HANG, rd.read_until(b'\n', &mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer within {HANG:?}"))
        .ok()?;
    (n > 0).then_some(buf)
}

/// Every line until the end of the stream, as JSON (a line that is not JSON as a string).
async fn read_all(rd: OwnedReadHalf) -> Vec<Value> {
    let mut rd = BufReader::new(rd);
    let mut got = Vec::new();
    while let Some(raw) = next_line(&mut rd).await {
        got.push(
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&raw).into_owned())),
        );
    }
    got
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

#[test]
fn a_tcp_connection_keeps_answering_whatever_it_is_sent() {
    let rt = runtime();
    let server = Server::start_config("[rate_limits]\nenabled = false\n", LIGHT_ARGON2);
    let b = Bench::open();
    let commands: Vec<String> = b.registered.iter().cloned().collect();
    let huge = (DEFAULT_MAX_FRAME_BYTES + 1..DEFAULT_MAX_FRAME_BYTES + 100_000)
        .prop_map(|n| vec![b'a'; n]);
    let strategy = prop_oneof![30 => frames(commands, b.all_members()), 1 => huge];
    let slot: RefCell<Option<Line>> = RefCell::new(None);
    let probes = Cell::new(0u64);
    check(128, &strategy, |frame| {
        let taken = slot.borrow_mut().take();
        let n = probes.get();
        probes.set(n + 1);
        let (line, result) = rt.block_on(async {
            let mut line = match taken {
                Some(l) => l,
                None => Line::open(server.tcp).await,
            };
            let probe = format!("probe-{n}");
            let mut out = frame.clone();
            out.push(b'\n');
            out.extend_from_slice(
                json!({"id": probe, "command": "SYS.PING"})
                    .to_string()
                    .as_bytes(),
            );
            out.push(b'\n');
            // A refused oversized line closes the connection while it is still being written.
            let _ = line.wr.write_all(&out).await;
            let mut answers = Vec::new();
            for _ in 0..10_000 {
                let Some(raw) = line.next().await else {
                    return (None, Err("closed without FRAME_TOO_LARGE".to_owned()));
                };
                let v: Value = match serde_json::from_slice(&raw) {
                    Ok(v) => v,
                    Err(e) => return (None, Err(format!("unreadable answer ({e})"))),
                };
                if v["id"] == json!(probe) {
                    let ok = v["ok"] == true;
                    return (
                        Some(line),
                        if ok {
                            Ok(answers)
                        } else {
                            Err(format!("probe: {v}"))
                        },
                    );
                }
                match envelope(&v) {
                    Err(e) => return (None, Err(e)),
                    Ok(Some(ErrorCode::FrameTooLarge)) => {
                        let closed = line.next().await.is_none();
                        let r = if closed {
                            answers.push(v);
                            Ok(answers)
                        } else {
                            Err("still open after FRAME_TOO_LARGE".to_owned())
                        };
                        return (None, r);
                    }
                    Ok(_) => answers.push(v),
                }
            }
            (None, Err("endless answers".to_owned()))
        });
        *slot.borrow_mut() = line;
        let answers = result.map_err(fail)?;
        let oversized = frame.len() > DEFAULT_MAX_FRAME_BYTES;
        let whole_line = !frame.contains(&b'\n') && frame.last() != Some(&b'\r');
        if oversized {
            let code = answers.last().and_then(|v| v["error"]["code"].as_str());
            if answers.len() != 1 || code != Some("FRAME_TOO_LARGE") {
                return Err(fail(format!("oversized line answered {answers:?}")));
            }
        } else if whole_line && !is_blank(&frame) {
            if answers.len() != 1 {
                return Err(fail(format!("{} answers to one line", answers.len())));
            }
            answer_to(&frame, &answers[0], &b.registered).map_err(fail)?;
        }
        Ok(())
    });
}

/// Numeric ids (protocol/envelope.md): an integer from -2^63 to 2^64-1 comes back digit for
/// digit; any other number (here: 1000 doubles with a fraction spread over the whole range, each
/// sent in its shortest form, and 1000 integers just beyond the 64-bit range) is refused with
/// `BAD_REQUEST` and id `null` rather than echoed as a double that a client reading numbers
/// exactly would take for another id. Interleaved with 2000 random 64-bit integers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_ids_come_back_digit_for_digit_and_other_numbers_are_refused() {
    let server = Server::start();
    let mut line = Line::open(server.tcp).await;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // (text sent, whether it is echoed)
    let mut sent: Vec<(String, bool)> = Vec::new();
    let mut floats = 0;
    while sent.len() < 4000 {
        let r = next();
        match sent.len() % 4 {
            0 => sent.push((r.to_string(), true)),
            1 => sent.push((i64::from_ne_bytes(r.to_ne_bytes()).to_string(), true)),
            2 if floats < 1000 => {
                let f = f64::from_bits(r);
                if f.is_finite() && f.fract() != 0.0 {
                    sent.push((format!("{f:e}"), false));
                    floats += 1;
                }
            }
            _ => {
                // Beyond u64 (positive) or i64 (negative).
                let big = u128::from(r) + u128::from(u64::MAX) + 1;
                let text = if r % 2 == 0 {
                    big.to_string()
                } else {
                    format!("-{}", big / 2 + 1)
                };
                sent.push((text, false));
            }
        }
    }
    let mut out = String::new();
    for (text, _) in &sent {
        out.push_str(&format!("{{\"id\":{text},\"command\":\"SYS.PING\"}}\n"));
    }
    let writer = tokio::spawn(async move {
        line.wr.write_all(out.as_bytes()).await.unwrap();
        line
    });
    let mut wrong = Vec::new();
    let mut line = writer.await.unwrap();
    for (text, echoed) in &sent {
        let raw = String::from_utf8(line.next().await.unwrap()).unwrap();
        let want = if *echoed {
            format!("{{\"id\":{text},\"ok\":true,\"command\":\"SYS.PING\",")
        } else {
            "{\"id\":null,\"ok\":false,\"command\":null,\"data\":null,\"error\":{\"code\":\"BAD_REQUEST\""
                .to_owned()
        };
        if !raw.starts_with(&want) {
            wrong.push(format!("{text}: {raw}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} ids answered wrongly, e.g. {:?}",
        wrong.len(),
        sent.len(),
        &wrong[..wrong.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------------
// Framing.

/// One line of a generated stream.
#[derive(Debug, Clone)]
enum Piece {
    /// A request padded by its command name to (at least) `len` bytes.
    Request { len: usize, crlf: bool },
    /// Only spaces, tabs, form feeds and `\r`.
    Blank { ws: Vec<u8>, crlf: bool },
    /// Bytes that are not a JSON object, with no line end, not all white space.
    Junk { bytes: Vec<u8>, crlf: bool },
}

fn piece() -> impl Strategy<Value = Piece> {
    let len = prop_oneof![
        3 => 30usize..200,
        3 => (LIMIT - 4)..(LIMIT + 4),
        1 => 200usize..(2 * LIMIT),
    ];
    let ws = prop::collection::vec(prop::sample::select(b" \t\x0c\r".to_vec()), 0..6);
    let first = prop::sample::select(b"x1-\"[]}tn\\".to_vec());
    let rest = prop::collection::vec(
        any::<u8>().prop_filter("no line end", |b| *b != b'\n' && *b != b'\r'),
        0..(LIMIT + 8),
    );
    prop_oneof![
        5 => (len, any::<bool>()).prop_map(|(len, crlf)| Piece::Request { len, crlf }),
        2 => (ws, any::<bool>()).prop_map(|(ws, crlf)| Piece::Blank { ws, crlf }),
        2 => (first, rest, any::<bool>()).prop_map(|(f, mut bytes, crlf)| {
            bytes.insert(0, f);
            Piece::Junk { bytes, crlf }
        }),
    ]
}

/// What a line must be answered with.
#[derive(Debug)]
enum Expect {
    Echo { id: usize, command: String },
    BadRequest,
    TooLarge,
}

/// A request line `{"id":i,"command":"X.<pad>"}` of about `len` bytes.
fn request_line(i: usize, len: usize) -> (Vec<u8>, String) {
    let head = format!("{{\"id\":{i},\"command\":\"");
    let fixed = head.len() + "X.".len() + "\"}".len();
    let pad: String = (0..len.saturating_sub(fixed))
        .map(|k| char::from(b'a' + ((i * 7 + k) % 26) as u8))
        .collect();
    let command = format!("X.{pad}");
    (format!("{head}{command}\"}}").into_bytes(), command)
}

/// The bytes of a stream of pieces (the last one without its line end when `open_end`), and
/// what the server must answer, per `protocol/framing.md`.
fn stream_of(
    pieces: &[Piece],
    open_end: bool,
    limit: usize,
    line: fn(usize, usize) -> (Vec<u8>, String),
) -> (Vec<u8>, Vec<Expect>) {
    let mut bytes = Vec::new();
    let mut expect = Vec::new();
    let mut refused = false;
    for (i, p) in pieces.iter().enumerate() {
        let (content, crlf, e) = match p {
            Piece::Request { len, crlf } => {
                let (bytes, command) = line(i, *len);
                (bytes, *crlf, Some(Expect::Echo { id: i, command }))
            }
            Piece::Blank { ws, crlf } => (ws.clone(), *crlf, None),
            Piece::Junk { bytes, crlf } => (bytes.clone(), *crlf, Some(Expect::BadRequest)),
        };
        let terminated = !(open_end && i + 1 == pieces.len());
        let len = content.len();
        bytes.extend_from_slice(&content);
        if terminated {
            bytes.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        if refused {
            continue;
        }
        if len > limit {
            expect.push(Expect::TooLarge);
            refused = true;
        } else if let Some(e) = e {
            expect.push(e);
        }
    }
    (bytes, expect)
}

fn matches(e: &Expect, v: &Value) -> bool {
    let code = v["error"]["code"].as_str();
    match e {
        Expect::Echo { id, command } => {
            v["id"] == json!(id)
                && v["command"] == json!(command)
                && code == Some("UNKNOWN_COMMAND")
        }
        Expect::BadRequest => {
            v["id"].is_null() && v["command"].is_null() && code == Some("BAD_REQUEST")
        }
        Expect::TooLarge => {
            v["id"].is_null() && v["command"].is_null() && code == Some("FRAME_TOO_LARGE")
        }
    }
}

/// Writes `bytes` in chunks of the given sizes (cycled), yielding between writes.
async fn write_chunked(wr: &mut OwnedWriteHalf, bytes: &[u8], sizes: &[usize]) {
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        if wr.write_all(&bytes[at..end]).await.is_err() {
            // Refused: the server closed after FRAME_TOO_LARGE.
            return;
        }
        at = end;
        tokio::task::yield_now().await;
    }
}

#[test]
fn the_server_frames_any_chunking_of_lines_per_the_spec() {
    let rt = runtime();
    let config = format!("max_frame_bytes = {LIMIT}\n\n[rate_limits]\nenabled = false\n");
    let server = Server::start_config(&config, &[]);
    let strategy = (
        prop::collection::vec(piece(), 1..24),
        any::<bool>(),
        prop::collection::vec(1usize..1500, 1..40),
    );
    check(64, &strategy, |(pieces, open_end, sizes)| {
        let (bytes, expect) = stream_of(&pieces, open_end, LIMIT, request_line);
        let got: Vec<Value> = rt.block_on(async {
            let s = TcpStream::connect(server.tcp).await.unwrap();
            s.set_nodelay(true).unwrap();
            let (rd, mut wr) = s.into_split();
            // Read while writing: answers must not wait for the whole stream.
            let reader = tokio::spawn(read_all(rd));
            write_chunked(&mut wr, &bytes, &sizes).await;
            let _ = wr.shutdown().await;
            reader.await.unwrap()
        });
        if got.len() != expect.len() || !expect.iter().zip(&got).all(|(e, v)| matches(e, v)) {
            return Err(fail(format!("expected {expect:?}, got {got:?}")));
        }
        for v in &got {
            envelope(v).map_err(fail)?;
        }
        Ok(())
    });
}

/// A line is at most `max_frame_bytes` long, also when it is the last one and unterminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_lines_over_the_limit_whether_or_not_they_end() {
    let config = format!("max_frame_bytes = {LIMIT}\n\n[rate_limits]\nenabled = false\n");
    let server = Server::start_config(&config, &[]);

    // Refused before the end of the line arrives: the connection stays open meanwhile.
    let mut line = Line::open(server.tcp).await;
    line.wr.write_all(&vec![b'a'; LIMIT + 2]).await.unwrap();
    let v: Value = serde_json::from_slice(&line.next().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "FRAME_TOO_LARGE", "{v}");
    assert!(line.next().await.is_none(), "the connection is closed");

    // At the limit with `\r\n`, and at the limit unterminated at EOF: answered.
    for end in [&b"\r\n"[..], b""] {
        let (bytes, command) = request_line(1, LIMIT);
        assert_eq!(bytes.len(), LIMIT);
        let s = TcpStream::connect(server.tcp).await.unwrap();
        let (rd, mut wr) = s.into_split();
        wr.write_all(&bytes).await.unwrap();
        wr.write_all(end).await.unwrap();
        wr.shutdown().await.unwrap();
        let got = read_all(rd).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["command"], json!(command));
    }

    // One byte over the limit, unterminated at EOF: refused like any line over the limit
    // (protocol/framing.md: "A line may be at most `max_frame_bytes` bytes").
    let (bytes, _) = request_line(2, LIMIT + 1);
    assert_eq!(bytes.len(), LIMIT + 1);
    let s = TcpStream::connect(server.tcp).await.unwrap();
    let (rd, mut wr) = s.into_split();
    wr.write_all(&bytes).await.unwrap();
    wr.shutdown().await.unwrap();
    let got = read_all(rd).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["error"]["code"],
        "FRAME_TOO_LARGE",
        "a {}-byte line with a limit of {LIMIT}: {}",
        LIMIT + 1,
        got[0]
    );
}

/// A response line `{"id":i,"ok":true,"command":"X.<pad>",…}` of about `len` bytes.
fn response_line(i: usize, len: usize) -> (Vec<u8>, String) {
    let (req, command) = request_line(i, len);
    let head = format!("{{\"id\":{i},\"ok\":true,\"data\":null,\"error\":null,");
    // `{"id":i,` of the request becomes the response's members before `"command"`.
    let skip = format!("{{\"id\":{i},").len();
    let mut out = head.into_bytes();
    out.extend_from_slice(&req[skip..]);
    (out, command)
}

/// The client's decoder (the same `FrameCodec`, with the client's 16 MiB limit) over a real
/// socket: any chunking of responses, blank lines, `\r\n` and junk yields the responses in
/// order, a protocol error for each junk line, and the end of the stream.
#[test]
fn the_client_decodes_any_chunking_of_lines() {
    let rt = runtime();
    let strategy = (
        prop::collection::vec(piece(), 1..24),
        any::<bool>(),
        prop::collection::vec(1usize..1500, 1..40),
    );
    check(128, &strategy, |(pieces, open_end, sizes)| {
        let (bytes, expect) = stream_of(&pieces, open_end, usize::MAX, response_line);
        let got = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let feeder = tokio::spawn(async move {
                let (s, _) = listener.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                let (rd, mut wr) = s.into_split();
                write_chunked(&mut wr, &bytes, &sizes).await;
                let _ = wr.shutdown().await;
                rd
            });
            let mut c = Client::connect(addr).await.unwrap();
            let mut got = Vec::new();
            for _ in 0..1_000 {
                let r = tokio::time::timeout(HANG, c.read_response())
                    .await
                    .unwrap_or_else(|_| panic!("no line within {HANG:?}"));
                match r {
                    Ok(r) => got.push(Ok(r)),
                    Err(ClientError::Closed) => break,
                    Err(ClientError::Protocol(e)) => got.push(Err(e)),
                    Err(e) => {
                        got.push(Err(e.to_string()));
                        break;
                    }
                }
            }
            drop(feeder.await);
            got
        });
        let ok = got.len() == expect.len()
            && expect.iter().zip(&got).all(|(e, r)| match (e, r) {
                (Expect::Echo { id, command }, Ok(r)) => {
                    r.ok && r.id.as_ref().map(|i| i.as_value().clone()) == Some(json!(id))
                        && r.command.as_deref() == Some(command.as_str())
                }
                (Expect::BadRequest, Err(_)) => true,
                _ => false,
            });
        if !ok {
            return Err(fail(format!("expected {expect:?}, got {got:?}")));
        }
        Ok(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_an_oversized_line_before_it_ends() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let feeder = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let chunk = vec![b'a'; 1 << 20];
        // 17 MiB and no line end; then hold the connection open until the client leaves.
        for _ in 0..17 {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let mut one = [0u8; 1];
        let _ = s.read(&mut one).await;
    });
    let mut c = Client::connect(addr).await.unwrap();
    let r = tokio::time::timeout(HANG, c.read_response())
        .await
        .expect("the client waits for the end of an oversized line");
    assert!(
        matches!(r, Err(ClientError::Frame(FrameError::TooLarge { .. }))),
        "{r:?}"
    );
    drop(c);
    feeder.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Memory.

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmRSS:`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Writes every line on one connection while reading the answers; returns the answers.
async fn exchange(addr: SocketAddr, lines: &[Vec<u8>]) -> Vec<Value> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let reader = tokio::spawn(read_all(rd));
    for l in lines {
        wr.write_all(l).await.unwrap();
        wr.write_all(b"\n").await.unwrap();
    }
    wr.shutdown().await.unwrap();
    reader.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_maximum_size_and_oversized_lines() {
    const BOUND_KIB: u64 = 64 * 1024;
    let server = Server::start();
    let pid = server.pid();
    let max = DEFAULT_MAX_FRAME_BYTES;
    {
        let mut c = server.client().await;
        for _ in 0..20 {
            assert!(c.call("SYS.INFO", json!({})).await.unwrap().ok);
        }
    }
    let before = status_kib(pid, "VmRSS:");

    // 200 lines of exactly the limit: 150 requests (each answered with its 64 KiB name) and
    // 50 of junk.
    let requests: Vec<Vec<u8>> = (0..150).map(|i| request_line(i, max).0).collect();
    assert!(requests.iter().all(|l| l.len() == max));
    let got = exchange(server.tcp, &requests).await;
    assert_eq!(got.len(), 150);
    for (i, v) in got.iter().enumerate() {
        assert_eq!(envelope(v), Ok(Some(ErrorCode::UnknownCommand)), "line {i}");
        assert_eq!(v["id"], i);
    }
    let junk = vec![vec![b'x'; max]; 50];
    let got = exchange(server.tcp, &junk).await;
    assert_eq!(got.len(), 50);
    assert!(got
        .iter()
        .all(|v| envelope(v) == Ok(Some(ErrorCode::BadRequest))));

    // 32 connections at once, each sending a 4 MiB line that never ends.
    let floods: Vec<_> = (0..32)
        .map(|_| {
            let addr = server.tcp;
            tokio::spawn(async move {
                let s = TcpStream::connect(addr).await.unwrap();
                let (rd, mut wr) = s.into_split();
                let reader = tokio::spawn(read_all(rd));
                let chunk = vec![b'y'; 64 * 1024];
                for _ in 0..64 {
                    if wr.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
                reader.await.unwrap()
            })
        })
        .collect();
    for f in floods {
        let got = f.await.unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(envelope(&got[0]), Ok(Some(ErrorCode::FrameTooLarge)));
    }

    // 32 connections each holding a partial line of the limit while the server keeps serving.
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut s = TcpStream::connect(server.tcp).await.unwrap();
        s.write_all(&vec![b'z'; max]).await.unwrap();
        held.push(s);
    }
    let mut c = server.client().await;
    assert!(c.call("SYS.PING", json!({})).await.unwrap().ok);
    let during = status_kib(pid, "VmRSS:");
    drop(held);
    assert!(c.call("SYS.PING", json!({})).await.unwrap().ok);

    let after = status_kib(pid, "VmRSS:");
    let peak = status_kib(pid, "VmHWM:");
    println!("RSS KiB: before {before}, holding {during}, after {after}, peak {peak}");
    for (what, kib) in [("holding", during), ("after", after), ("peak", peak)] {
        assert!(
            kib < before + BOUND_KIB,
            "RSS {what} {kib} KiB, {} KiB over the {before} KiB at the start",
            kib.saturating_sub(before)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limits and X-Forwarded-For.

/// A failed `AUTH.LOGIN` for a distinct address (so no per-account delay interferes) over HTTP,
/// claiming to come from `forwarded`.
async fn login_from(addr: SocketAddr, n: usize, forwarded: &str) -> Value {
    let body = json!({"command": "AUTH.LOGIN", "params": {
        "email": format!("nobody-{n}@example.org"), "password": "not the password"}});
    let fwd = format!("for={forwarded}");
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Forwarded-For", forwarded),
        ("X-Real-IP", forwarded),
        ("Forwarded", fwd.as_str()),
    ];
    let r = http(
        addr,
        "POST",
        "/api/v1/execute",
        &headers,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    r.json()
}

/// Six wrong sign-ins (accounts `first`.. `first + 5`) with `forwarded(i)` as the header: the
/// first five are refused as wrong, the sixth is rate-limited (a `credential` limit of 5/min).
async fn sixth_is_limited(
    http: SocketAddr,
    first: usize,
    forwarded: impl Fn(usize) -> String,
    what: &str,
) {
    for i in 0..6 {
        let v = login_from(http, first + i, &forwarded(i)).await;
        if i < 5 {
            assert_eq!(
                v["error"]["code"],
                "INVALID_CREDENTIALS",
                "request {}: {v}",
                i + 1
            );
        } else {
            assert_rate_limited(&v, what);
        }
    }
}

#[track_caller]
fn assert_rate_limited(v: &Value, what: &str) {
    assert_eq!(v["error"]["code"], "RATE_LIMITED", "{what}: {v}");
    assert!(
        v["error"]["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0),
        "{what}: {v}"
    );
}

async fn login_clients(server: &Server) -> Vec<String> {
    all_events(server)
        .await
        .iter()
        .filter(|e| e["command"] == "AUTH.LOGIN")
        .map(|e| e["client"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_still_rate_limited() {
    let server = Server::start_config("[rate_limits]\ncredential = \"5/min\"\n", LIGHT_ARGON2);
    sixth_is_limited(
        server.http,
        0,
        |i| format!("198.51.100.{}, 203.0.113.{}", i + 1, i + 1),
        "the 6th request from one peer",
    )
    .await;
    let clients = login_clients(&server).await;
    assert_eq!(clients.len(), 6);
    assert!(
        clients.iter().all(|c| c.starts_with("127.0.0.1:")),
        "the log names the peer, not the header: {clients:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_proxy_gets_a_bucket_per_client() {
    let config = "trusted_proxies = [\"127.0.0.1/32\"]\n\n[rate_limits]\ncredential = \"5/min\"\n";
    let server = Server::start_config(config, LIGHT_ARGON2);
    for i in 0..6 {
        let v = login_from(server.http, i, &format!("198.51.100.{}", i + 1)).await;
        assert_eq!(
            v["error"]["code"],
            "INVALID_CREDENTIALS",
            "client {}: {v}",
            i + 1
        );
    }
    // One forwarded client is limited on its own.
    sixth_is_limited(
        server.http,
        100,
        |_| "203.0.113.9".to_owned(),
        "the 6th request from one forwarded client",
    )
    .await;
    let v = login_from(server.http, 200, "198.51.100.77").await;
    assert_eq!(v["error"]["code"], "INVALID_CREDENTIALS", "{v}");
    let clients = login_clients(&server).await;
    for i in 1..=6 {
        let ip = format!("198.51.100.{i}:");
        assert!(
            clients.iter().any(|c| c.starts_with(&ip)),
            "{ip} in {clients:?}"
        );
    }
    assert!(
        clients.iter().all(|c| !c.starts_with("127.0.0.1:")),
        "{clients:?}"
    );
}
