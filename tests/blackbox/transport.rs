//! Transports: NDJSON framing over TCP (pipelining, unreadable lines, frame limits, timeouts,
//! the connection cap, shutdown) and the HTTP gateway (parity with TCP, statuses, streaming),
//! as specified in `protocol/framing.md` and `protocol/envelope.md`.

use crate::harness::{execute_http, http, HttpResponse, Server};
use portcullis_client::{Client, ClientError};
use portcullis_protocol::codec::FrameError;
use portcullis_protocol::{Request, RequestId, Response};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single wait for the server; generous so a loaded machine does not flake.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The kinds of request mixed into the pipelining tests, with the answer each must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ping,
    Info,
    Unknown,
    BadParams,
    /// An unknown top-level member: `BAD_REQUEST`, id still echoed (raw lines only).
    BadEnvelope,
}

impl Kind {
    fn for_index(i: u64, with_bad_envelope: bool) -> Kind {
        match i % if with_bad_envelope { 5 } else { 4 } {
            0 => Kind::Ping,
            1 => Kind::Info,
            2 => Kind::Unknown,
            3 => Kind::BadParams,
            _ => Kind::BadEnvelope,
        }
    }

    /// The request as JSON, with `id`.
    fn request_json(self, id: u64) -> Value {
        match self {
            Kind::Ping => json!({"id": id, "command": "SYS.PING"}),
            Kind::Info => json!({"id": id, "command": "SYS.INFO", "params": {}}),
            Kind::Unknown => json!({"id": id, "command": "NOPE.NOPE"}),
            Kind::BadParams => json!({"id": id, "command": "SYS.PING", "params": {"x": 1}}),
            Kind::BadEnvelope => json!({"id": id, "command": "SYS.PING", "bogus": true}),
        }
    }

    fn request(self, id: u64) -> Request {
        serde_json::from_value(self.request_json(id)).expect("a valid request")
    }

    /// `(command, error code)` the response must carry (`None` code means `ok: true`).
    fn expected(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Kind::Ping => (Some("SYS.PING"), None),
            Kind::Info => (Some("SYS.INFO"), None),
            Kind::Unknown => (Some("NOPE.NOPE"), Some("UNKNOWN_COMMAND")),
            Kind::BadParams => (Some("SYS.PING"), Some("INVALID_PARAMS")),
            Kind::BadEnvelope => (None, Some("BAD_REQUEST")),
        }
    }

    fn check(self, r: &Response, id: u64) {
        let (command, code) = self.expected();
        assert_eq!(
            r.id,
            Some(RequestId::from(id)),
            "response out of order: expected id {id} ({self:?}), got {r:?}"
        );
        assert_eq!(r.command.as_deref(), command, "command of {self:?} #{id}: {r:?}");
        assert_eq!(code_of(r), code, "outcome of {self:?} #{id}: {r:?}");
        assert_eq!(r.ok, code.is_none(), "ok of {self:?} #{id}: {r:?}");
        match self {
            Kind::Ping => assert_eq!(r.data, json!({"pong": true}), "PING data #{id}"),
            Kind::Info => assert_eq!(r.data["name"], "portcullis", "INFO data #{id}: {r:?}"),
            _ => assert_eq!(r.data, Value::Null, "failed response carries data #{id}: {r:?}"),
        }
    }
}

/// The wire name of a response's error code, if it failed.
fn code_of(r: &Response) -> Option<&'static str> {
    r.error_code().map(|c| c.as_str())
}

/// One request object as a `\n`-terminated line.
fn line(v: &Value) -> Vec<u8> {
    let mut s = v.to_string().into_bytes();
    s.push(b'\n');
    s
}

/// A `SYS.PING` line (without its `\n`) of exactly `len` bytes, padded with spaces inside the
/// object (ids are limited to 128 bytes, so the padding cannot go there).
fn padded_ping(id: &str, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"id":"{id}","command":"SYS.PING""#);
    assert!(len > head.len() + 1, "{len} bytes cannot hold a request");
    let mut out = head.into_bytes();
    out.resize(len - 1, b' ');
    out.push(b'}');
    assert_eq!(out.len(), len);
    out
}

/// Whether a client error means the server closed (FIN or reset) the connection.
fn is_closed(e: &ClientError) -> bool {
    let io_closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
        )
    };
    match e {
        ClientError::Closed => true,
        ClientError::Io(e) => io_closed(e),
        ClientError::Frame(FrameError::Io(e)) => io_closed(e),
        _ => false,
    }
}

/// Reads the next response, failing the test on a timeout or any error.
async fn next_response(c: &mut Client, what: &str) -> Response {
    match tokio::time::timeout(WAIT, c.read_response()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("{what}: no response, the connection failed: {e}"),
        Err(_) => panic!("{what}: no response within {WAIT:?}"),
    }
}

/// Writes raw bytes and reads one response.
async fn raw_call(c: &mut Client, bytes: &[u8], what: &str) -> Response {
    c.send_raw(bytes)
        .await
        .unwrap_or_else(|e| panic!("{what}: write failed: {e}"));
    next_response(c, what).await
}

/// Sends a `SYS.PING` and asserts it succeeds: the connection is still usable.
async fn assert_ping_works(c: &mut Client, after: &str) {
    let r = tokio::time::timeout(WAIT, c.call("SYS.PING", json!({})))
        .await
        .unwrap_or_else(|_| panic!("PING after {after}: no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("PING after {after}: the connection is gone: {e}"));
    assert!(r.ok, "PING after {after} failed: {r:?}");
    assert_eq!(r.data, json!({"pong": true}), "PING after {after}");
}

/// Asserts a `BAD_REQUEST` envelope with the given id and a `null` command.
fn assert_bad_request(r: &Response, id: Option<RequestId>, what: &str) {
    assert_eq!(code_of(r), Some("BAD_REQUEST"), "{what}: {r:?}");
    assert!(!r.ok, "{what}: {r:?}");
    assert_eq!(r.command, None, "{what}: BAD_REQUEST must have command null: {r:?}");
    assert_eq!(r.id, id, "{what}: id of the BAD_REQUEST answer: {r:?}");
    assert_eq!(r.data, Value::Null, "{what}: {r:?}");
}

/// Reads responses until the server closes the connection; fails if that takes longer than
/// `limit`. Returns the responses that arrived first.
async fn read_until_closed(c: &mut Client, limit: Duration, what: &str) -> Vec<Response> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    // Bounded: one iteration per response, and no connection here sends more than a few hundred.
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read_response()).await {
            Ok(Ok(r)) => got.push(r),
            Ok(Err(e)) if is_closed(&e) => return got,
            Ok(Err(e)) => panic!("{what}: broken response after {} good ones: {e}", got.len()),
            Err(_) => panic!(
                "{what}: the connection was not closed within {limit:?} ({} responses read)",
                got.len()
            ),
        }
    }
    panic!("{what}: endless stream of responses");
}

/// Reads a raw socket until EOF or reset, within `limit`; returns how long that took and the
/// bytes that arrived.
async fn wait_for_close(s: &mut TcpStream, limit: Duration, what: &str) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "{what}: the server did not close the connection within {limit:?} (received {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Stops the server (SIGTERM) from async code and returns (exit status, time taken).
fn stop_server(server: &mut Server) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| server.stop());
    (status, started.elapsed())
}

/// A comparable view of an envelope: everything but volatile data values (for objects, only
/// the set of keys is kept).
fn envelope_shape(v: &Value) -> Value {
    let data = match &v["data"] {
        Value::Object(m) => json!(m.keys().cloned().collect::<BTreeSet<_>>()),
        other => other.clone(),
    };
    json!({
        "members": v.as_object().map(|m| m.keys().cloned().collect::<BTreeSet<_>>()),
        "id": v["id"],
        "ok": v["ok"],
        "command": v["command"],
        "error_code": v["error"]["code"],
        "data": data,
    })
}

fn assert_json_content_type(r: &HttpResponse, what: &str) {
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "{what}: content-type {ct:?}, expected application/json"
    );
}

/// Asserts an HTTP answer's status and that its body is an envelope with the given code.
fn assert_http_envelope(r: &HttpResponse, status: u16, code: Option<&str>, what: &str) -> Value {
    let body = r.json();
    assert_eq!(r.status, status, "{what}: HTTP status; body {body}");
    assert_json_content_type(r, what);
    assert_eq!(body["ok"], json!(code.is_none()), "{what}: {body}");
    assert_eq!(body["error"]["code"].as_str(), code, "{what}: {body}");
    body
}

// ---------------------------------------------------------------------------------------------
// 1. Pipelining
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_with_their_own_outcomes() {
    let server = Server::start();
    let mut c = server.client().await;

    let reqs: Vec<Request> = (0..300).map(|i| Kind::for_index(i, false).request(i)).collect();
    let resps = tokio::time::timeout(WAIT, c.pipeline(reqs))
        .await
        .expect("300 pipelined answers in time")
        .expect("pipeline");
    assert_eq!(resps.len(), 300);
    for (i, r) in (0..300u64).zip(&resps) {
        Kind::for_index(i, false).check(r, i);
    }

    // The same in one raw write, with BAD_REQUEST lines, blank lines and `\r\n` ends mixed in:
    // blank lines get no answer, the rest are answered in order on the same connection.
    let mut burst = Vec::new();
    for i in 0..300u64 {
        let mut l = line(&Kind::for_index(i, true).request_json(i));
        if i % 7 == 0 {
            l.pop();
            l.extend_from_slice(b"\r\n");
        }
        if i % 11 == 0 {
            burst.extend_from_slice(b"  \t\r\n\n");
        }
        burst.extend_from_slice(&l);
    }
    c.send_raw(&burst).await.expect("write burst");
    for i in 0..300u64 {
        let r = next_response(&mut c, &format!("raw burst response #{i}")).await;
        Kind::for_index(i, true).check(&r, i);
    }
    assert_ping_works(&mut c, "two bursts of 300").await;
}

// ---------------------------------------------------------------------------------------------
// 2. Unreadable and unusual frames
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_lines_get_bad_request_and_the_connection_keeps_working() {
    let server = Server::start();
    let mut c = server.client().await;

    let r = raw_call(&mut c, b"{nope\n", "invalid JSON").await;
    assert_bad_request(&r, None, "invalid JSON");
    assert_ping_works(&mut c, "invalid JSON").await;

    let r = raw_call(&mut c, b"\xff\xfe{}\n", "non-UTF-8 bytes").await;
    assert_bad_request(&r, None, "non-UTF-8 bytes");
    assert_ping_works(&mut c, "non-UTF-8 bytes").await;

    // Valid UTF-8 JSON strings around an invalid byte inside a string.
    let r = raw_call(&mut c, b"{\"id\":\"a\xc3\",\"command\":\"SYS.PING\"}\n", "bad UTF-8 in a string").await;
    assert_bad_request(&r, None, "bad UTF-8 in a string");

    let r = raw_call(&mut c, b"[1,2,3]\n", "JSON array").await;
    assert_bad_request(&r, None, "a JSON array instead of an object");

    let r = raw_call(&mut c, b"{\"id\":\"u1\",\"command\":\"SYS.PING\",\"extra\":true}\n", "unknown top-level member").await;
    assert_bad_request(&r, Some(RequestId::from("u1")), "unknown top-level member");

    let r = raw_call(&mut c, b"{\"id\":5,\"params\":{}}\n", "missing command").await;
    assert_bad_request(&r, Some(RequestId::from(5)), "missing command");

    let r = raw_call(&mut c, b"{\"id\":6,\"command\":7}\n", "command not a string").await;
    assert_bad_request(&r, Some(RequestId::from(6)), "command not a string");

    let r = raw_call(&mut c, b"{\"id\":[1],\"command\":\"SYS.PING\"}\n", "compound id").await;
    assert_bad_request(&r, None, "array id");

    let r = raw_call(&mut c, b"{\"id\":8,\"command\":\"SYS.PING\",\"token\":5}\n", "numeric token").await;
    assert_bad_request(&r, Some(RequestId::from(8)), "token not a string");

    let r = raw_call(&mut c, b"{\"id\":9,\"command\":\"SYS.PING\",\"command\":\"SYS.INFO\"}\n", "repeated member").await;
    assert_eq!(code_of(&r), Some("BAD_REQUEST"), "a repeated member: {r:?}");
    assert_eq!(r.command, None, "repeated member: {r:?}");
    assert_ping_works(&mut c, "a series of BAD_REQUEST lines").await;

    // Params problems are INVALID_PARAMS, with the command and id echoed.
    for (params, what) in [
        (json!({"x": 1}), "unknown params member"),
        (json!([1]), "params is an array"),
        (json!("x"), "params is a string"),
        (json!(3), "params is a number"),
    ] {
        let req = json!({"id": what, "command": "SYS.PING", "params": params});
        let r = raw_call(&mut c, &line(&req), what).await;
        assert_eq!(code_of(&r), Some("INVALID_PARAMS"), "{what}: {r:?}");
        assert_eq!(r.command.as_deref(), Some("SYS.PING"), "{what}: {r:?}");
        assert_eq!(r.id, Some(RequestId::from(what)), "{what}: {r:?}");
    }
    // Absent and null params both mean {}.
    let r = raw_call(&mut c, b"{\"id\":10,\"command\":\"SYS.PING\",\"params\":null}\n", "null params").await;
    assert!(r.ok, "params null must mean {{}}: {r:?}");
    assert_ping_works(&mut c, "INVALID_PARAMS answers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_gets_an_answer_and_never_drops_the_connection() {
    let server = Server::start();
    let mut c = server.client().await;

    // 5000 levels of nesting inside params: about 10 KB, within the 64 KiB frame limit.
    let deep = format!(
        r#"{{"command":"SYS.PING","params":{{"a":{}{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert!(deep.len() < 65536);
    let r = raw_call(&mut c, format!("{deep}\n").as_bytes(), "deeply nested params").await;
    assert_eq!(code_of(&r), Some("BAD_REQUEST"), "deep nesting: {r:?}");
    assert_ping_works(&mut c, "deeply nested params").await;

    // Deep nesting of objects as the whole frame.
    let deep_obj = format!("{}{}", r#"{"a":"#.repeat(5000), "}".repeat(5000));
    let r = raw_call(&mut c, format!("{deep_obj}\n").as_bytes(), "deeply nested objects").await;
    assert_eq!(code_of(&r), Some("BAD_REQUEST"), "deep object nesting: {r:?}");
    assert_ping_works(&mut c, "deeply nested objects").await;

    // A number literal outside the double range cannot be read.
    let r = raw_call(&mut c, b"{\"id\":1e400,\"command\":\"SYS.PING\"}\n", "id 1e400").await;
    assert_bad_request(&r, None, "id 1e400");
    let r = raw_call(&mut c, b"{\"id\":2,\"command\":\"SYS.PING\",\"params\":{\"n\":1e999}}\n", "1e999 in params").await;
    assert!(
        matches!(code_of(&r), Some("BAD_REQUEST") | Some("INVALID_PARAMS")),
        "1e999 in params: {r:?}"
    );
    assert_ping_works(&mut c, "out-of-range numbers").await;

    // An integer beyond u64 is echoed as the double it reads as.
    let r = raw_call(&mut c, b"{\"id\":18446744073709551616,\"command\":\"SYS.PING\"}\n", "id 2^64").await;
    assert!(r.ok, "id 2^64: {r:?}");
    let id = r.id.as_ref().map(|i| i.as_value().clone()).unwrap_or(Value::Null);
    assert!(id.is_f64(), "id 2^64 must come back as a double: {id}");
    assert_eq!(id.as_f64(), Some(18_446_744_073_709_551_616.0), "id 2^64: {id}");
    // u64::MAX is exact.
    let r = raw_call(&mut c, b"{\"id\":18446744073709551615,\"command\":\"SYS.PING\"}\n", "id u64::MAX").await;
    assert_eq!(r.id, Some(RequestId::from(u64::MAX)), "u64::MAX id: {r:?}");
    // 1e2 comes back as 100.0.
    let r = raw_call(&mut c, b"{\"id\":1e2,\"command\":\"SYS.PING\"}\n", "id 1e2").await;
    let id = r.id.as_ref().map(|i| i.as_value().clone()).unwrap_or(Value::Null);
    assert_eq!(id.as_f64(), Some(100.0), "id 1e2: {r:?}");

