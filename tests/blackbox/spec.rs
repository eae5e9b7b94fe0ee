//! The language-neutral spec in `protocol/` against the real server: conformance transcripts,
//! the command list, and the error-code table.
//!
//! The transcript runner follows `protocol/conformance/README.md` (format version 2): steps over
//! one TCP connection, HTTP requests to the gateway, mail read from the outbox, TOTP codes, and
//! values captured from one answer and used in later steps.

use crate::harness::{HttpResponse, Server};
use mailparse::MailHeaderMap;
use portcullis_protocol::ErrorCode;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn protocol_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol")
}

/// How long a runner waits for a response, a close or a mail.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A `{{capture:NAME}}` / `{{ref:NAME}}` name: `[a-z0-9_]+`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The NAME of a whole-string `{{<prefix>NAME}}`, if `s` is one (checked to be valid).
fn placeholder_name<'a>(s: &'a str, prefix: &str) -> Result<Option<&'a str>, String> {
    let Some(name) = s
        .strip_prefix("{{")
        .and_then(|r| r.strip_prefix(prefix))
        .and_then(|r| r.strip_suffix("}}"))
    else {
        return Ok(None);
    };
    if valid_name(name) {
        Ok(Some(name))
    } else {
        Err(format!("{s:?}: a name is [a-z0-9_]+"))
    }
}

/// The state of one replay: the operator token and the values bound by captures.
struct Bindings {
    operator_token: String,
    values: HashMap<String, Value>,
}

impl Bindings {
    fn new(operator_token: &str) -> Bindings {
        Bindings {
            operator_token: operator_token.to_owned(),
            values: HashMap::new(),
        }
    }

    fn get(&self, name: &str) -> Result<&Value, String> {
        self.values
            .get(name)
            .ok_or_else(|| format!("{{{{ref:{name}}}}}: {name} is not bound"))
    }

    /// Replaces `{{ref:NAME}}` and `{{operator_token}}` in a string: as a whole string, by the
    /// bound value (any JSON type); inside a longer string, textually (the value must be a
    /// string). `{{capture:NAME}}` is left for the matcher when `in_expect`, else refused.
    fn resolve_str(&self, s: &str, in_expect: bool) -> Result<Value, String> {
        if s == "{{operator_token}}" {
            return Ok(Value::String(self.operator_token.clone()));
        }
        if let Some(name) = placeholder_name(s, "ref:")? {
            return self.get(name).cloned();
        }
        if placeholder_name(s, "capture:")?.is_some() {
            return if in_expect {
                Ok(Value::String(s.to_owned()))
            } else {
                Err(format!("{s:?}: captures only in expect"))
            };
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(at) = rest.find("{{") {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{{operator_token}}") {
                out.push_str(&self.operator_token);
                rest = after;
            } else if let Some(r) = tail.strip_prefix("{{ref:") {
                let end = r
                    .find("}}")
                    .ok_or_else(|| format!("{s:?}: unterminated {{{{ref:"))?;
                let name = &r[..end];
                if !valid_name(name) {
                    return Err(format!("{s:?}: a name is [a-z0-9_]+"));
                }
                match self.get(name)? {
                    Value::String(v) => out.push_str(v),
                    other => {
                        return Err(format!(
                            "{s:?}: {name} is bound to {other}, not a string, so it cannot be part of a longer string"
                        ))
                    }
                }
                rest = &r[end + 2..];
            } else {
                out.push_str("{{");
                rest = &tail[2..];
            }
        }
        out.push_str(rest);
        Ok(Value::String(out))
    }

    /// [`Bindings::resolve_str`] on every string value at any depth (never on keys).
    fn resolve(&self, v: &Value, in_expect: bool) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => self.resolve_str(s, in_expect)?,
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.resolve(x, in_expect))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| Ok((k.clone(), self.resolve(x, in_expect)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Resolves `expected`, matches `actual` against it, and binds its captures.
    fn expect(&mut self, expected: &Value, actual: &Value) -> Result<(), String> {
        let expected = self.resolve(expected, true)?;
        let mut captured = Vec::new();
        matches(&expected, actual, "$", &mut captured)?;
        self.values.extend(captured);
        Ok(())
    }
}

/// Whether `actual` matches `expected` under the transcript rules of
/// `protocol/conformance/README.md` (after references are resolved). On mismatch, returns the
/// JSON path where it fails; on a match, `captured` holds what the `{{capture:NAME}}`s bound.
fn matches(
    expected: &Value,
    actual: &Value,
    path: &str,
    captured: &mut Vec<(String, Value)>,
) -> Result<(), String> {
    let fail = || Err(format!("at {path}: expected {expected}, got {actual}"));
    match expected {
        Value::String(p) if p == "{{any}}" => Ok(()),
        Value::String(p) if p == "{{string}}" => {
            if actual.is_string() {
                Ok(())
            } else {
                fail()
            }
        }
        // A number without fraction or exponent that fits u64 (serde_json reads `1.0` and
        // `1e0` as floats).
        Value::String(p) if p == "{{int}}" => {
            if actual.as_u64().is_some() {
                Ok(())
            } else {
                fail()
            }
        }
        Value::String(p) if p == "{{hash}}" => match actual.as_str() {
            Some(s)
                if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Ok(())
            }
            _ => fail(),
        },
        Value::String(p) if p == "{{time}}" => match actual.as_str() {
            Some(s) if is_event_time(s) => Ok(()),
            _ => fail(),
        },
        Value::String(p) if placeholder_name(p, "capture:")?.is_some() => {
            let name = placeholder_name(p, "capture:")?.unwrap_or_default();
            if actual.is_null() {
                return fail();
            }
            captured.push((name.to_owned(), actual.clone()));
            Ok(())
        }
        Value::Object(e) => {
            let Some(a) = actual.as_object() else {
                return fail();
            };
            let ek: BTreeSet<&String> = e.keys().collect();
            let ak: BTreeSet<&String> = a.keys().collect();
            if ek != ak {
                return Err(format!("at {path}: keys {ek:?} != {ak:?} in {actual}"));
            }
            for (k, ev) in e {
                matches(ev, &a[k], &format!("{path}.{k}"), captured)?;
            }
            Ok(())
        }
        Value::Array(e) => {
            let Some(a) = actual.as_array() else {
                return fail();
            };
            if e.len() != a.len() {
                return fail();
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                matches(ev, av, &format!("{path}[{i}]"), captured)?;
            }
            Ok(())
        }
        Value::Number(n) => match (n.as_f64(), actual.as_f64()) {
            (Some(x), Some(y)) if x == y => Ok(()),
            _ => fail(),
        },
        _ if expected == actual => Ok(()),
        _ => fail(),
    }
}

fn is_event_time(s: &str) -> bool {
    let shape = s.len() == 24
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    shape && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// An `http` step: the request to send, after placeholders are resolved.
struct HttpStep {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpStep {
    fn parse(arg: &Value, b: &Bindings) -> Result<HttpStep, String> {
        let obj = arg.as_object().ok_or("http: not an object")?;
        for k in obj.keys() {
            if !["method", "path", "headers", "body", "body_raw"].contains(&k.as_str()) {
                return Err(format!("http: unknown member {k}"));
            }
        }
        let text = |name: &str, default: &str| -> Result<String, String> {
            match obj.get(name) {
                None => Ok(default.to_owned()),
                Some(v) => match b.resolve(v, false)? {
                    Value::String(s) => Ok(s),
                    other => Err(format!("http: {name} is {other}, not a string")),
                },
            }
        };
        let method = text("method", "POST")?;
        let path = text("path", "/api/v1/execute")?;
        let mut headers = Vec::new();
        if let Some(h) = obj.get("headers") {
            let h = h.as_object().ok_or("http: headers is not an object")?;
            for (k, v) in h {
                match b.resolve(v, false)? {
                    Value::String(s) => headers.push((k.clone(), s)),
                    other => return Err(format!("http: header {k} is {other}, not a string")),
                }
            }
        }
        let body = match (obj.get("body"), obj.get("body_raw")) {
            (Some(_), Some(_)) => return Err("http: body and body_raw both given".into()),
            (Some(v), None) => {
                if !headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                serde_json::to_vec(&b.resolve(v, false)?).map_err(|e| e.to_string())?
            }
            (None, Some(Value::String(raw))) => raw.as_bytes().to_vec(),
            (None, Some(_)) => return Err("http: body_raw is not a string".into()),
            (None, None) => Vec::new(),
        };
        Ok(HttpStep {
            method,
            path,
            headers,
            body,
        })
    }
}

/// Checks an `expect_http` step against a response and binds its captures.
fn expect_http(arg: &Value, got: &HttpResponse, b: &mut Bindings) -> Result<(), String> {
    let obj = arg.as_object().ok_or("expect_http: not an object")?;
    for k in obj.keys() {
        if !["status", "headers", "body"].contains(&k.as_str()) {
            return Err(format!("expect_http: unknown member {k}"));
        }
    }
    let status = obj
        .get("status")
        .and_then(Value::as_u64)
        .ok_or("expect_http: status missing")?;
    if u64::from(got.status) != status {
        return Err(format!(
            "status {} (expected {status}); body {}",
            got.status,
            String::from_utf8_lossy(&got.body)
        ));
    }
    if let Some(h) = obj.get("headers") {
        let h = h
            .as_object()
            .ok_or("expect_http: headers is not an object")?;
        for (name, expected) in h {
            match (expected, got.header(name)) {
                (Value::Null, None) => {}
                (Value::Null, Some(v)) => {
                    return Err(format!("header {name} should be absent, is {v:?}"))
                }
                (_, None) => return Err(format!("header {name} missing")),
                (e, Some(v)) => b
                    .expect(e, &Value::String(v.to_owned()))
                    .map_err(|why| format!("header {name}: {why}"))?,
            }
        }
    }
    if let Some(expected) = obj.get("body") {
        let actual: Value = serde_json::from_slice(&got.body).map_err(|e| {
            format!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&got.body)
            )
        })?;
        b.expect(expected, &actual)?;
    }
    Ok(())
}

/// The newest complete message in `outbox` whose `X-Portcullis-Flow-Id` is `flow_id`, as
/// (file name, raw bytes); `protocol/outbox.md`.
fn newest_mail_of_flow(outbox: &Path, flow_id: &str) -> Option<(String, Vec<u8>)> {
    let mut names: Vec<String> = std::fs::read_dir(outbox)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && n.ends_with(".eml"))
        .collect();
    names.sort();
    names.into_iter().rev().find_map(|name| {
        let raw = std::fs::read(outbox.join(&name)).ok()?;
        let (headers, _) = mailparse::parse_headers(&raw).ok()?;
        let flow = headers.get_first_value("X-Portcullis-Flow-Id")?;
        (flow.trim() == flow_id).then_some((name, raw))
    })
}

/// The secret of a message of `kind` (`magic_link`: the `token` query parameter of the first
/// http(s) URL that has one; `otp`: the first line that is six digits), from its text/plain
/// part, which must be 7bit or 8bit.
fn mail_secret(raw: &[u8], kind: &str) -> Result<String, String> {
    let parsed = mailparse::parse_mail(raw).map_err(|e| format!("mail does not parse: {e}"))?;
    let got_kind = parsed
        .headers
        .get_first_value("X-Portcullis-Kind")
        .ok_or("no X-Portcullis-Kind header")?;
    if got_kind.trim() != kind {
        return Err(format!(
            "X-Portcullis-Kind is {got_kind:?}, expected {kind:?}"
        ));
    }
    let part = std::iter::once(&parsed)
        .chain(parsed.subparts.iter())
        .find(|p| p.ctype.mimetype == "text/plain")
        .ok_or("no text/plain part")?;
    let cte = part
        .headers
        .get_first_value("Content-Transfer-Encoding")
        .unwrap_or_else(|| "7bit".into())
        .to_ascii_lowercase();
    if cte != "7bit" && cte != "8bit" {
        return Err(format!("the text/plain part is {cte}, not 7bit or 8bit"));
    }
    let text = String::from_utf8(part.get_body_raw().map_err(|e| e.to_string())?)
        .map_err(|_| "the text/plain part is not UTF-8")?;
    match kind {
        "magic_link" => first_link_token(&text).ok_or_else(|| "no link with a token".into()),
        "otp" => text
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
            .ok_or_else(|| "no line of six digits".into()),
        other => Err(format!("mail: kind {other} has no secret")),
    }
}

/// The `token` query parameter of the first `http://` or `https://` URL in `text` that has one.
/// A URL ends at white space or at `<`, `>` or `"`.
fn first_link_token(text: &str) -> Option<String> {
    let mut rest = text;
    loop {
        let at = match (rest.find("http://"), rest.find("https://")) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let url_and_more = &rest[at..];
        let end = url_and_more
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
            .unwrap_or(url_and_more.len());
        let url = &url_and_more[..end];
        let query = url
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or(""));
        if let Some(token) = query.and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("token="))
                .map(percent_decode)
        }) {
            return Some(token);
        }
        rest = &url_and_more[end.max(1)..];
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap());
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `mail` step: waits up to `wait` for the flow's mail, checks its kind, returns its secret.
async fn mail_step(
    outbox: &Path,
    arg: &Value,
    b: &Bindings,
    wait: Duration,
) -> Result<(String, Value), String> {
    let obj = arg.as_object().ok_or("mail: not an object")?;
    let flow_id = match b.resolve(obj.get("flow_id").ok_or("mail: flow_id missing")?, false)? {
        Value::String(s) => s,
        other => return Err(format!("mail: flow_id is {other}, not a string")),
    };
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("mail: kind missing")?;
    let capture = obj
        .get("capture")
        .and_then(Value::as_str)
        .ok_or("mail: capture missing")?;
    if !valid_name(capture) {
        return Err(format!("mail: capture {capture:?} is not [a-z0-9_]+"));
    }
    let deadline = Instant::now() + wait;
    let (name, raw) = loop {
        if let Some(found) = newest_mail_of_flow(outbox, &flow_id) {
            break found;
        }
        if Instant::now() >= deadline {
            return Err(format!("no mail of flow {flow_id} within {wait:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let secret = mail_secret(&raw, kind).map_err(|e| format!("{name}: {e}"))?;
    Ok((capture.to_owned(), Value::String(secret)))
}

/// The RFC 6238 code (SHA-1, 6 digits, 30 s) of a base32 secret (no padding) at Unix time `t`.
fn totp_code(secret_b32: &str, t: u64) -> Result<String, String> {
    let secret = totp_rs::Secret::try_from_base32(secret_b32)
        .map_err(|_| format!("totp: {secret_b32:?} is not base32"))?;
    let g = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(secret.as_ref().to_vec())
        .build_noncompliant();
    Ok(g.generate(t).to_string())
}

/// The `totp` step at Unix time `now`: (capture name, code).
fn totp_step(arg: &Value, b: &Bindings, now: u64) -> Result<(String, Value), String> {
    let obj = arg.as_object().ok_or("totp: not an object")?;
    let secret = match b.resolve(obj.get("secret").ok_or("totp: secret missing")?, false)? {
        Value::String(s) => s,
        other => return Err(format!("totp: secret is {other}, not a string")),
    };
    let capture = obj
        .get("capture")
        .and_then(Value::as_str)
        .ok_or("totp: capture missing")?;
    if !valid_name(capture) {
        return Err(format!("totp: capture {capture:?} is not [a-z0-9_]+"));
    }
    let offset = match obj.get("step_offset") {
        None => 0,
        Some(v) => v.as_i64().ok_or("totp: step_offset is not an integer")?,
    };
    let t = i64::try_from(now).unwrap() + offset * 30;
    let t = u64::try_from(t).map_err(|_| "totp: before 1970")?;
    Ok((capture.to_owned(), Value::String(totp_code(&secret, t)?)))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn replay(file: &Path) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let server = Server::start();
    let token = server.operator_token();
    let mut b = Bindings::new(token.expose());
    let outbox = server.data_dir.join("outbox");
    let sock = TcpStream::connect(server.tcp).await.unwrap();
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    let text = std::fs::read_to_string(file).unwrap();
    let dump = std::env::var("PORTCULLIS_CONFORMANCE_DUMP").is_ok();
    let mut pending_http: Option<(String, HttpResponse)> = None;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = format!("{name}:{}", n + 1);
        let step: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{at}: {e}"));
        let step = step
            .as_object()
            .unwrap_or_else(|| panic!("{at}: not an object"));
        assert_eq!(step.len(), 1, "{at}: a step has exactly one member");
        let (kind, arg) = step.iter().next().unwrap();
        if let Some((from, _)) = &pending_http {
            assert_eq!(
                kind, "expect_http",
                "{at}: the http step at {from} must be followed by expect_http"
            );
        }
        let ok = |r: Result<(), String>| {
            if let Err(why) = r {
                panic!("{at}: {why}");
            }
        };
        match kind.as_str() {
            "comment" => {}
            "send" => {
                let req = b
                    .resolve(arg, false)
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                let mut bytes = serde_json::to_vec(&req).unwrap();
                bytes.push(b'\n');
                wr.write_all(&bytes).await.unwrap();
            }
            "send_raw" => wr
                .write_all(arg.as_str().unwrap().as_bytes())
                .await
                .unwrap(),
            "send_hex" => wr.write_all(&unhex(arg.as_str().unwrap())).await.unwrap(),
            "expect" => {
                let mut got = String::new();
                let n = tokio::time::timeout(STEP_TIMEOUT, rd.read_line(&mut got))
                    .await
                    .unwrap_or_else(|_| panic!("{at}: no response within 10 s"))
                    .unwrap();
                assert!(n > 0, "{at}: connection closed, expected {arg}");
                if dump {
                    eprintln!("{at}: {}", got.trim_end());
                }
                let actual: Value = serde_json::from_str(&got)
                    .unwrap_or_else(|e| panic!("{at}: response is not JSON ({e}): {got}"));
                ok(b.expect(arg, &actual));
            }
            "expect_closed" => {
                let mut rest = Vec::new();
                tokio::time::timeout(STEP_TIMEOUT, rd.read_to_end(&mut rest))
                    .await
                    .unwrap_or_else(|_| panic!("{at}: connection still open after 10 s"))
                    .unwrap();
                assert!(
                    rest.is_empty(),
                    "{at}: unexpected bytes before close: {:?}",
                    String::from_utf8_lossy(&rest)
                );
            }
            "http" => {
                let req = HttpStep::parse(arg, &b).unwrap_or_else(|e| panic!("{at}: {e}"));
                let headers: Vec<(&str, &str)> = req
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let got =
                    crate::harness::http(server.http, &req.method, &req.path, &headers, &req.body)
                        .await;
                if dump {
                    eprintln!(
                        "{at}: HTTP {} {:?} {}",
                        got.status,
                        got.headers,
                        String::from_utf8_lossy(&got.body)
                    );
                }
                pending_http = Some((at.clone(), got));
            }
            "expect_http" => {
                let (_, got) = pending_http
                    .take()
                    .unwrap_or_else(|| panic!("{at}: expect_http without an http step before it"));
                ok(expect_http(arg, &got, &mut b));
            }
            "mail" => {
                let (capture, secret) = mail_step(&outbox, arg, &b, STEP_TIMEOUT)
                    .await
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                b.values.insert(capture, secret);
            }
            "totp" => {
                let (capture, code) =
                    totp_step(arg, &b, unix_now()).unwrap_or_else(|e| panic!("{at}: {e}"));
                b.values.insert(capture, code);
            }
            other => panic!("{at}: unknown step {other}"),
        }
    }
    assert!(
        pending_http.is_none(),
        "{name}: the last http step has no expect_http"
    );
}

/// Matches `expected` against `actual` with no bindings beforehand.
fn matches_alone(expected: &Value, actual: &Value) -> Result<(), String> {
    Bindings::new("pco_test").expect(expected, actual)
}

#[test]
fn the_matcher_can_fail() {
    let e: Value = serde_json::json!({"a": "{{int}}", "b": "{{hash}}", "t": "{{time}}"});
    let good = serde_json::json!({"a": 3, "b": "0".repeat(64), "t": "2026-11-26T01:02:03.456Z"});
    assert!(matches_alone(&e, &good).is_ok());
    for bad in [
        serde_json::json!({"a": -1, "b": "0".repeat(64), "t": "2026-11-26T01:02:03.456Z"}),
        serde_json::json!({"a": 3, "b": "A".repeat(64), "t": "2026-11-26T01:02:03.456Z"}),
        serde_json::json!({"a": 3, "b": "0".repeat(64), "t": "2026-13-26T01:02:03.456Z"}),
        serde_json::json!({"a": 3, "b": "0".repeat(64), "t": "2026-11-26T01:02:03.456Z", "x": 1}),
    ] {
        assert!(matches_alone(&e, &bad).is_err(), "{bad}");
    }
}

/// `{{int}}` tells an integer from a number with a fraction or an exponent.
#[test]
fn int_refuses_fractions_and_exponents() {
    let e = serde_json::json!({"n": "{{int}}"});
    for good in ["0", "7", "18446744073709551615"] {
        let v: Value = serde_json::from_str(&format!("{{\"n\":{good}}}")).unwrap();
        assert!(matches_alone(&e, &v).is_ok(), "{good}");
    }
    for bad in ["1.0", "1e0", "-1", "0.5", "\"1\"", "null"] {
        let v: Value = serde_json::from_str(&format!("{{\"n\":{bad}}}")).unwrap();
        assert!(matches_alone(&e, &v).is_err(), "{bad}");
    }
}

/// A capture matches anything but `null`, binds, and rebinding replaces; a reference is the
/// bound value with its type, and must equal in an expect.
#[test]
fn captures_bind_and_references_must_equal() {
    let mut b = Bindings::new("pco_op");
    let e = serde_json::json!({"t": "{{capture:tok}}", "n": "{{capture:num}}"});
    assert!(b
        .expect(&e, &serde_json::json!({"t": null, "n": 1}))
        .is_err());
    assert!(b.values.is_empty(), "a failed step binds nothing");
    b.expect(&e, &serde_json::json!({"t": "abc", "n": 5}))
        .unwrap();
    assert_eq!(b.values["tok"], "abc");
    assert_eq!(b.values["num"], 5);
    // A whole-string reference keeps the JSON type; inside a longer string it is text.
    let sent = b
        .resolve(
            &serde_json::json!({"a": "{{ref:num}}", "h": "Bearer {{ref:tok}}", "o": "x{{operator_token}}y"}),
            false,
        )
        .unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"a": 5, "h": "Bearer abc", "o": "xpco_opy"})
    );
    // In an expect, the reference must equal.
    let r = serde_json::json!({"t": "{{ref:tok}}"});
    assert!(b.expect(&r, &serde_json::json!({"t": "abc"})).is_ok());
    assert!(b.expect(&r, &serde_json::json!({"t": "abd"})).is_err());
    let n = serde_json::json!({"n": "{{ref:num}}"});
    assert!(
        b.expect(&n, &serde_json::json!({"n": "5"})).is_err(),
        "the type counts"
    );
    // Rebinding.
    b.expect(
        &serde_json::json!({"t": "{{capture:tok}}"}),
        &serde_json::json!({"t": "new"}),
    )
    .unwrap();
    assert_eq!(b.values["tok"], "new");
    // Unbound names, non-string values inside strings, bad names, captures outside expect.
    assert!(b
        .resolve(&serde_json::json!("{{ref:nope}}"), false)
        .is_err());
    assert!(b
        .resolve(&serde_json::json!("Bearer {{ref:nope}}"), false)
        .is_err());
    assert!(b
        .resolve(&serde_json::json!("n={{ref:num}}"), false)
        .is_err());
    assert!(b.resolve(&serde_json::json!("{{ref:Tok}}"), false).is_err());
    assert!(b
        .resolve(&serde_json::json!("{{capture:x}}"), false)
        .is_err());
    assert!(b
        .expect(
            &serde_json::json!({"t": "{{capture:A-b}}"}),
            &serde_json::json!({"t": 1})
        )
        .is_err());
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

/// `expect_http` checks the status, listed headers (present and matching, or absent for
/// `null`, names in any case), and the body; it binds captures from headers and body.
#[test]
fn expect_http_can_fail() {
    let got = response(
        200,
        &[("Content-Type", "application/json"), ("X-Id", "r1")],
        r#"{"ok":true,"data":{"n":1}}"#,
    );
    let step = serde_json::json!({"status": 200, "headers": {"content-type": "application/json", "x-id": "{{capture:rid}}", "location": null}, "body": {"ok": true, "data": {"n": "{{capture:n}}"}}});
    let mut b = Bindings::new("pco");
    expect_http(&step, &got, &mut b).unwrap();
    assert_eq!(b.values["rid"], "r1");
    assert_eq!(b.values["n"], 1);
    for bad in [
        serde_json::json!({"status": 201}),
        serde_json::json!({"status": 200, "headers": {"content-type": "text/html"}}),
        serde_json::json!({"status": 200, "headers": {"x-missing": "{{any}}"}}),
        serde_json::json!({"status": 200, "headers": {"x-id": null}}),
        serde_json::json!({"status": 200, "body": {"ok": false, "data": "{{any}}"}}),
        serde_json::json!({"status": 200, "bogus": 1}),
    ] {
        assert!(expect_http(&bad, &got, &mut b).is_err(), "{bad}");
    }
    let not_json = response(200, &[], "<html>");
    assert!(expect_http(
        &serde_json::json!({"status": 200, "body": {}}),
        &not_json,
        &mut b
    )
    .is_err());
}

/// An `http` step defaults to `POST /api/v1/execute`, adds a JSON content type to a `body`
/// unless one is given, resolves references, and sends `body_raw` verbatim.
#[test]
fn http_steps_resolve_and_default() {
    let mut b = Bindings::new("pco_op");
    b.values
        .insert("access".into(), Value::String("ey.x.y".into()));
    let s = HttpStep::parse(
        &serde_json::json!({"headers": {"authorization": "Bearer {{ref:access}}"}, "body": {"command": "USER.ME", "token": "{{ref:access}}"}}),
        &b,
    )
    .unwrap();
    assert_eq!(
        (s.method.as_str(), s.path.as_str()),
        ("POST", "/api/v1/execute")
    );
    assert!(s
        .headers
        .contains(&("authorization".into(), "Bearer ey.x.y".into())));
    assert!(s
        .headers
        .contains(&("content-type".into(), "application/json".into())));
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(body["token"], "ey.x.y");
    let raw = HttpStep::parse(
        &serde_json::json!({"method": "GET", "path": "/healthz", "body_raw": "{{ref:access}}"}),
        &b,
    )
    .unwrap();
    assert_eq!(raw.body, b"{{ref:access}}");
    assert!(raw.headers.is_empty());
    for bad in [
        serde_json::json!({"body": {}, "body_raw": ""}),
        serde_json::json!({"path": "{{ref:nope}}"}),
        serde_json::json!({"bogus": 1}),
        serde_json::json!({"headers": {"x": 1}}),
    ] {
        assert!(HttpStep::parse(&bad, &b).is_err(), "{bad}");
    }
}

/// A message as the server writes it, for the mail step's tests.
fn eml(flow: &str, kind: &str, cte: &str, text: &str) -> String {
    format!(
        "From: a@localhost\r\nTo: b@example.org\r\nSubject: s\r\nX-Portcullis-Kind: {kind}\r\n\
         X-Portcullis-Flow-Id: {flow}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"B\"\r\n\r\n--B\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n\
         {text}\r\n--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html></html>\r\n--B--\r\n"
    )
}

/// The mail step takes the newest mail of the flow (by name, dot-files ignored), checks its
/// kind and encoding, and extracts the link token or the code as protocol/outbox.md says.
#[tokio::test]
async fn the_mail_step_can_fail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let put = |name: &str, body: String| std::fs::write(d.join(name), body).unwrap();
    let b = Bindings::new("pco");
    let step =
        |flow: &str, kind: &str| serde_json::json!({"flow_id": flow, "kind": kind, "capture": "s"});
    let short = Duration::from_millis(50);
    put("20261204T100000.000Z-00000001.eml", eml("f1", "magic_link", "7bit", "Open:\r\n\r\nhttps://x.example/about\r\nhttps://x.example/auth/magic?a=1&token=OLD%2D1&b=2\r\n"));
    put(
        "20261204T100000.001Z-00000002.eml",
        eml(
            "f2",
            "otp",
            "7bit",
            "Your code:\r\n\r\n  123456  \r\n654321\r\n",
        ),
    );
    let got = mail_step(d, &step("f1", "magic_link"), &b, short)
        .await
        .unwrap();
    assert_eq!(got, ("s".to_owned(), Value::String("OLD-1".into())));
    assert_eq!(
        mail_step(d, &step("f2", "otp"), &b, short).await.unwrap().1,
        "123456"
    );
    // The newest of the flow wins; a dot-file is never read.
    put(
        "20261204T100001.000Z-00000003.eml",
        eml(
            "f1",
            "magic_link",
            "7bit",
            "http://h/auth/magic?token=NEW\r\n",
        ),
    );
    put(
        ".20261204T100002.000Z-00000004.eml.tmp",
        eml(
            "f1",
            "magic_link",
            "7bit",
            "http://h/auth/magic?token=PARTIAL\r\n",
        ),
    );
    put(
        ".20261204T100002.000Z-00000005.eml",
        eml(
            "f1",
            "magic_link",
            "7bit",
            "http://h/auth/magic?token=HIDDEN\r\n",
        ),
    );
    assert_eq!(
        mail_step(d, &step("f1", "magic_link"), &b, short)
            .await
            .unwrap()
            .1,
        "NEW"
    );
    // Wrong kind, no mail of the flow, no secret, a quoted-printable text part.
    assert!(mail_step(d, &step("f1", "otp"), &b, short).await.is_err());
    assert!(mail_step(d, &step("f9", "magic_link"), &b, short)
        .await
        .is_err());
    put(
        "20261204T100003.000Z-00000006.eml",
        eml("f3", "otp", "7bit", "no code 12345 here\r\n1234567\r\n"),
    );
    assert!(mail_step(d, &step("f3", "otp"), &b, short).await.is_err());
    put(
        "20261204T100004.000Z-00000007.eml",
        eml(
            "f4",
            "magic_link",
            "quoted-printable",
            "http://h/auth/magic?token=3DQP\r\n",
        ),
    );
    assert!(mail_step(d, &step("f4", "magic_link"), &b, short)
        .await
        .is_err());
    assert!(mail_step(
        d,
        &serde_json::json!({"flow_id": "f1", "kind": "magic_link", "capture": "Bad"}),
        &b,
        short
    )
    .await
    .is_err());
    // The flow id may be a reference.
    let mut b2 = Bindings::new("pco");
    b2.values.insert("flow".into(), Value::String("f2".into()));
    let r = mail_step(
        d,
        &serde_json::json!({"flow_id": "{{ref:flow}}", "kind": "otp", "capture": "code"}),
        &b2,
        short,
    )
    .await;
    assert_eq!(
        r.unwrap(),
        ("code".to_owned(), Value::String("123456".into()))
    );
}

/// The totp step computes RFC 6238 codes (the RFC's SHA-1 vectors, 6 digits) from a base32
/// secret, `step_offset` steps from now.
#[test]
fn the_totp_step_can_fail() {
    // RFC 6238 appendix B: the ASCII secret "12345678901234567890".
    let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    assert_eq!(totp_code(secret, 59).unwrap(), "287082");
    assert_eq!(totp_code(secret, 1_111_111_109).unwrap(), "081804");
    assert_eq!(totp_code(secret, 2_000_000_000).unwrap(), "279037");
    let mut b = Bindings::new("pco");
    b.values.insert("sec".into(), Value::String(secret.into()));
    let at = |offset: i64| {
        totp_step(
            &serde_json::json!({"secret": "{{ref:sec}}", "capture": "c", "step_offset": offset}),
            &b,
            1_111_111_139,
        )
        .unwrap()
        .1
    };
    assert_eq!(
        at(-1),
        "081804",
        "one step back from 1111111139 is 1111111109"
    );
    assert_ne!(at(0), "081804");
    assert!(totp_step(
        &serde_json::json!({"secret": "not base32!", "capture": "c"}),
        &b,
        59
    )
    .is_err());
    assert!(totp_step(
        &serde_json::json!({"secret": "{{ref:nope}}", "capture": "c"}),
        &b,
        59
    )
    .is_err());
    assert!(totp_step(
        &serde_json::json!({"secret": secret, "capture": "C"}),
        &b,
        59
    )
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_transcripts_replay_against_the_server() {
    let dir = protocol_dir().join("conformance");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "transcripts missing in {}", dir.display());
    // PORTCULLIS_TRANSCRIPT=name replays only the transcripts whose file name contains it.
    let only = std::env::var("PORTCULLIS_TRANSCRIPT").ok();
    for f in &files {
        if only
            .as_deref()
            .is_some_and(|o| !f.file_name().unwrap().to_string_lossy().contains(o))
        {
            continue;
        }
        replay(f).await;
    }
}

/// `SYS.COMMANDS` and `protocol/commands/*.md` list the same commands, and each file states
/// the caller the registry enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_commands_and_protocol_docs_list_the_same_commands() {
    let server = Server::start();
    let mut c = server.client().await;
    let listed: portcullis_protocol::commands::sys::Commands = c
        .call_ok("SYS.COMMANDS", serde_json::json!({}))
        .await
        .unwrap();
    let served: BTreeSet<String> = listed.commands.iter().map(|c| c.name.clone()).collect();
    let dir = protocol_dir().join("commands");
    let documented: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".md").map(str::to_owned))
        .collect();
    assert_eq!(served, documented, "SYS.COMMANDS vs {}", dir.display());
    for cmd in &listed.commands {
        let doc = std::fs::read_to_string(dir.join(format!("{}.md", cmd.name))).unwrap();
        assert!(
            doc.lines()
                .next()
                .is_some_and(|l| l.trim() == format!("# {}", cmd.name)),
            "{}.md must start with its heading",
            cmd.name
        );
        assert!(
            doc.contains(&format!("`{}`", cmd.caller)),
            "{}.md must name its caller `{}`",
            cmd.name,
            cmd.caller
        );
    }
}

/// `protocol/errors.md` has one table row per code of the closed set, in order, and no other.
#[test]
fn errors_doc_lists_exactly_the_closed_set() {
    let doc = std::fs::read_to_string(protocol_dir().join("errors.md")).unwrap();
    let rows: Vec<String> = doc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(code, _)| code.to_owned()))
        .filter(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'))
        .collect();
    let codes: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(rows, codes);
}
