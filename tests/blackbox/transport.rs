//! Transports: NDJSON framing over TCP (pipelining, unreadable lines, frame limits, timeouts,
//! the connection cap, shutdown) and the HTTP gateway (parity with TCP, statuses, streaming),
//! as specified in `protocol/framing.md` and `protocol/envelope.md`.

// The helpers below are assertions: failing loudly is their job.
#![allow(clippy::panic, clippy::expect_used)]

use crate::harness::{execute_http, http, HttpResponse, Server};
use portcullis_client::{Client, ClientError};
use portcullis_protocol::codec::FrameError;
use portcullis_protocol::{Request, RequestId, Response};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
        assert_eq!(
            r.command.as_deref(),
            command,
            "command of {self:?} #{id}: {r:?}"
        );
        assert_eq!(code_of(r), code, "outcome of {self:?} #{id}: {r:?}");
        assert_eq!(r.ok, code.is_none(), "ok of {self:?} #{id}: {r:?}");
        match self {
            Kind::Ping => assert_eq!(r.data, json!({"pong": true}), "PING data #{id}"),
            Kind::Info => assert_eq!(r.data["name"], "portcullis", "INFO data #{id}: {r:?}"),
            _ => assert_eq!(
                r.data,
                Value::Null,
                "failed response carries data #{id}: {r:?}"
            ),
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
    assert_eq!(
        r.command, None,
        "{what}: BAD_REQUEST must have command null: {r:?}"
    );
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

/// Reads like a slow client (small reads with a short pause between them) until EOF or reset,
/// within [`WAIT`]. Returns the bytes and whether the connection ended with a reset.
async fn slow_read_to_close(rd: &mut OwnedReadHalf, what: &str) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rd.read(&mut buf)).await {
            Ok(Ok(0)) => return (got, false),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
            Ok(Err(e)) => panic!("{what}: read failed after {} bytes: {e}", got.len()),
            Err(_) => panic!(
                "{what}: not closed within {WAIT:?} ({} bytes read)",
                got.len()
            ),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Parses the complete response lines of a byte stream; returns them and whatever follows the
/// last `\n` (empty unless the stream was cut in the middle of a line).
fn response_lines(bytes: &[u8], what: &str) -> (Vec<Response>, String) {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let partial = lines.pop().unwrap_or_default().to_owned();
    let resps = lines
        .iter()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not an envelope ({e}): {l}"))
        })
        .collect();
    (resps, partial)
}

/// Writes `bytes` on a task of its own (the server may stop reading, so the write may never
/// complete; its failure is expected then).
fn write_in_background(mut wr: OwnedWriteHalf, bytes: Vec<u8>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        // Keep the write half open until the task is aborted: a close would be an EOF.
        std::future::pending::<()>().await;
    })
}

/// Stops the server (SIGTERM) from async code and returns (exit status, time taken).
fn stop_server(server: &mut Server) -> std::process::ExitStatus {
    tokio::task::block_in_place(|| server.stop())
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

    let reqs: Vec<Request> = (0..300)
        .map(|i| Kind::for_index(i, false).request(i))
        .collect();
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
    let r = raw_call(
        &mut c,
        b"{\"id\":\"a\xc3\",\"command\":\"SYS.PING\"}\n",
        "bad UTF-8 in a string",
    )
    .await;
    assert_bad_request(&r, None, "bad UTF-8 in a string");

    let r = raw_call(&mut c, b"[1,2,3]\n", "JSON array").await;
    assert_bad_request(&r, None, "a JSON array instead of an object");

    let r = raw_call(
        &mut c,
        b"{\"id\":\"u1\",\"command\":\"SYS.PING\",\"extra\":true}\n",
        "unknown top-level member",
    )
    .await;
    assert_bad_request(&r, Some(RequestId::from("u1")), "unknown top-level member");

    let r = raw_call(&mut c, b"{\"id\":5,\"params\":{}}\n", "missing command").await;
    assert_bad_request(&r, Some(RequestId::from(5)), "missing command");

    let r = raw_call(
        &mut c,
        b"{\"id\":6,\"command\":7}\n",
        "command not a string",
    )
    .await;
    assert_bad_request(&r, Some(RequestId::from(6)), "command not a string");

    let r = raw_call(
        &mut c,
        b"{\"id\":[1],\"command\":\"SYS.PING\"}\n",
        "compound id",
    )
    .await;
    assert_bad_request(&r, None, "array id");

    let r = raw_call(
        &mut c,
        b"{\"id\":8,\"command\":\"SYS.PING\",\"token\":5}\n",
        "numeric token",
    )
    .await;
    assert_bad_request(&r, Some(RequestId::from(8)), "token not a string");

    let r = raw_call(
        &mut c,
        b"{\"id\":9,\"command\":\"SYS.PING\",\"command\":\"SYS.INFO\"}\n",
        "repeated member",
    )
    .await;
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
    let r = raw_call(
        &mut c,
        b"{\"id\":10,\"command\":\"SYS.PING\",\"params\":null}\n",
        "null params",
    )
    .await;
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
    let r = raw_call(
        &mut c,
        format!("{deep}\n").as_bytes(),
        "deeply nested params",
    )
    .await;
    assert_eq!(code_of(&r), Some("BAD_REQUEST"), "deep nesting: {r:?}");
    assert_ping_works(&mut c, "deeply nested params").await;

    // Deep nesting of objects as the whole frame.
    let deep_obj = format!("{}{}", r#"{"a":"#.repeat(5000), "}".repeat(5000));
    let r = raw_call(
        &mut c,
        format!("{deep_obj}\n").as_bytes(),
        "deeply nested objects",
    )
    .await;
    assert_eq!(
        code_of(&r),
        Some("BAD_REQUEST"),
        "deep object nesting: {r:?}"
    );
    assert_ping_works(&mut c, "deeply nested objects").await;

    // A number literal outside the double range cannot be read.
    let r = raw_call(
        &mut c,
        b"{\"id\":1e400,\"command\":\"SYS.PING\"}\n",
        "id 1e400",
    )
    .await;
    assert_bad_request(&r, None, "id 1e400");
    let r = raw_call(
        &mut c,
        b"{\"id\":2,\"command\":\"SYS.PING\",\"params\":{\"n\":1e999}}\n",
        "1e999 in params",
    )
    .await;
    assert!(
        matches!(code_of(&r), Some("BAD_REQUEST") | Some("INVALID_PARAMS")),
        "1e999 in params: {r:?}"
    );
    assert_ping_works(&mut c, "out-of-range numbers").await;

    // An integer beyond u64 is refused, not echoed as the double it reads as (envelope.md).
    let r = raw_call(
        &mut c,
        b"{\"id\":18446744073709551616,\"command\":\"SYS.PING\"}\n",
        "id 2^64",
    )
    .await;
    assert_bad_request(&r, None, "id 2^64");
    // u64::MAX is exact.
    let r = raw_call(
        &mut c,
        b"{\"id\":18446744073709551615,\"command\":\"SYS.PING\"}\n",
        "id u64::MAX",
    )
    .await;
    assert_eq!(r.id, Some(RequestId::from(u64::MAX)), "u64::MAX id: {r:?}");
    // A number with an exponent is not an integer id.
    let r = raw_call(&mut c, b"{\"id\":1e2,\"command\":\"SYS.PING\"}\n", "id 1e2").await;
    assert_bad_request(&r, None, "id 1e2");
    assert_ping_works(&mut c, "refused numeric ids").await;

    // A lone surrogate escape is not a valid JSON string.
    let r = raw_call(
        &mut c,
        b"{\"id\":\"\\ud800\",\"command\":\"SYS.PING\"}\n",
        "lone surrogate",
    )
    .await;
    assert_bad_request(&r, None, "id with a lone surrogate escape");
    assert_ping_works(&mut c, "a lone surrogate").await;

    // An escaped surrogate pair is one character, echoed as such.
    let r = raw_call(
        &mut c,
        b"{\"id\":\"\\ud83e\\udd80\",\"command\":\"SYS.PING\"}\n",
        "surrogate pair",
    )
    .await;
    assert!(r.ok, "escaped surrogate pair: {r:?}");
    assert_eq!(
        r.id,
        Some(RequestId::from("\u{1f980}")),
        "escaped surrogate pair: {r:?}"
    );

    // Raw multi-byte UTF-8 and an escaped NUL in ids are echoed unchanged.
    for id in ["\u{1f980} crab \u{2713} \u{e9}", "nul\u{0}inside", ""] {
        let req = json!({"id": id, "command": "SYS.PING"});
        let r = raw_call(&mut c, &line(&req), "unicode id").await;
        assert!(r.ok, "id {id:?}: {r:?}");
        assert_eq!(
            r.id,
            Some(RequestId::from(id)),
            "id {id:?} must be echoed unchanged"
        );
    }

    // The id limit is 128 bytes, not 128 characters: 32 four-byte emoji fit, 33 do not.
    let fits = "\u{1f980}".repeat(32);
    assert_eq!(fits.len(), 128);
    let r = raw_call(
        &mut c,
        &line(&json!({"id": fits, "command": "SYS.PING"})),
        "128-byte id",
    )
    .await;
    assert!(r.ok, "a 128-byte id must be accepted: {r:?}");
    assert_eq!(r.id, Some(RequestId::from(fits.as_str())));
    let too_long = "\u{1f980}".repeat(33);
    let r = raw_call(
        &mut c,
        &line(&json!({"id": too_long, "command": "SYS.PING"})),
        "132-byte id",
    )
    .await;
    assert_bad_request(&r, None, "a 132-byte (33-character) id");

    // A command name with non-ASCII characters is unknown and echoed as sent.
    let r = raw_call(
        &mut c,
        &line(&json!({"id": 1, "command": "SYS.P\u{130}NG"})),
        "unicode command",
    )
    .await;
    assert_eq!(code_of(&r), Some("UNKNOWN_COMMAND"), "{r:?}");
    assert_eq!(r.command.as_deref(), Some("SYS.P\u{130}NG"), "{r:?}");
    assert_ping_works(&mut c, "unicode edge cases").await;
}

// ---------------------------------------------------------------------------------------------
// 3. Frame size limit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_line_is_refused_with_frame_too_large_and_the_connection_closed() {
    let server = Server::start();
    let mut c = server.client().await;
    let mut big = padded_ping("big", 70_000);
    big.push(b'\n');
    c.send_raw(&big).await.expect("write 70000-byte line");
    let r = next_response(&mut c, "70000-byte line").await;
    assert_eq!(code_of(&r), Some("FRAME_TOO_LARGE"), "{r:?}");
    assert_eq!((r.id.clone(), r.command.clone()), (None, None), "{r:?}");
    let rest = read_until_closed(&mut c, WAIT, "after FRAME_TOO_LARGE").await;
    assert!(
        rest.is_empty(),
        "nothing may follow FRAME_TOO_LARGE: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_line_is_refused_without_waiting_for_its_newline() {
    let server = Server::start();
    let mut c = server.client().await;
    // No `\n`, and the socket stays open: the server must answer as soon as it has read more
    // than the limit.
    c.send_raw(&padded_ping("big", 70_000))
        .await
        .expect("write");
    let r = tokio::time::timeout(Duration::from_secs(10), c.read_response())
        .await
        .expect("FRAME_TOO_LARGE must arrive without the line's newline, within 10 s")
        .expect("a response before the close");
    assert_eq!(code_of(&r), Some("FRAME_TOO_LARGE"), "{r:?}");
    assert_eq!((r.id.clone(), r.command.clone()), (None, None), "{r:?}");
    let rest = read_until_closed(&mut c, WAIT, "after FRAME_TOO_LARGE without newline").await;
    assert!(
        rest.is_empty(),
        "nothing may follow FRAME_TOO_LARGE: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_limit_counts_bytes_exactly() {
    let server = Server::start_with(&["--max-frame-bytes", "2048"]);

    // Exactly the limit: accepted, with either line end ending (`\r` counted for `\r\n`).
    let mut c = server.client().await;
    let mut l = padded_ping("exact", 2048);
    l.push(b'\n');
    let r = raw_call(&mut c, &l, "2048-byte line").await;
    assert!(
        r.ok,
        "a line of exactly max_frame_bytes must be accepted: {r:?}"
    );
    assert_eq!(r.id, Some(RequestId::from("exact")));
    let mut l = padded_ping("crlf", 2047);
    l.extend_from_slice(b"\r\n");
    let r = raw_call(&mut c, &l, "2047-byte line + CRLF").await;
    assert!(r.ok, "2047 bytes + \\r\\n must be accepted: {r:?}");

    // One byte over: refused, even though requests before it on the same write are answered
    // first, and nothing after it is executed.
    let mut burst = line(&json!({"id": 1, "command": "SYS.PING"}));
    burst.extend(line(&json!({"id": 2, "command": "SYS.PING"})));
    burst.extend(padded_ping("over", 2049));
    burst.push(b'\n');
    burst.extend(line(&json!({"id": 3, "command": "SYS.PING"})));
    c.send_raw(&burst).await.expect("write");
    let got = read_until_closed(&mut c, WAIT, "2049-byte line").await;
    let summary: Vec<(Option<RequestId>, Option<&str>)> =
        got.iter().map(|r| (r.id.clone(), code_of(r))).collect();
    assert_eq!(
        summary,
        vec![
            (Some(RequestId::from(1)), None),
            (Some(RequestId::from(2)), None),
            (None, Some("FRAME_TOO_LARGE")),
        ],
        "answers before the oversized line, then FRAME_TOO_LARGE, then the close"
    );

    // Much bigger than a read chunk and without a newline.
    let mut c = server.client().await;
    c.send_raw(&padded_ping("huge", 40_000))
        .await
        .expect("write");
    let r = tokio::time::timeout(Duration::from_secs(10), c.read_response())
        .await
        .expect("FRAME_TOO_LARGE within 10 s without a newline")
        .expect("a response");
    assert_eq!(code_of(&r), Some("FRAME_TOO_LARGE"), "{r:?}");

    // The same limit applies to HTTP bodies.
    let body = padded_ping("exact", 2048);
    let ct = [("Content-Type", "application/json")];
    let r = http(server.http, "POST", "/api/v1/execute", &ct, &body).await;
    assert_http_envelope(&r, 200, None, "2048-byte HTTP body");
    let body = padded_ping("over", 2049);
    let r = http(server.http, "POST", "/api/v1/execute", &ct, &body).await;
    let env = assert_http_envelope(&r, 413, Some("FRAME_TOO_LARGE"), "2049-byte HTTP body");
    assert_eq!(
        (&env["id"], &env["command"]),
        (&Value::Null, &Value::Null),
        "{env}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_every_answer_before_frame_too_large_and_the_close() {
    let server = Server::start();
    let (mut rd, wr) = TcpStream::connect(server.tcp)
        .await
        .expect("connect")
        .into_split();
    // 2000 requests, then a line far over the limit (most of it is never read by the server).
    let mut bytes: Vec<u8> = (0..2000u64)
        .flat_map(|i| line(&json!({"id": i, "command": "SYS.PING"})))
        .collect();
    bytes.extend(padded_ping("big", 300_000));
    let writer = write_in_background(wr, bytes);
    // A slow client: the answers pile up unread for a while, then are read in small pieces.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (got, reset) = slow_read_to_close(&mut rd, "pipeline then oversized line").await;
    writer.abort();
    let what = format!("pipeline then oversized line (ended by reset: {reset})");
    let (resps, partial) = response_lines(&got, &what);
    // Closing a socket with unread input sends a reset that would discard answers still in
    // flight; the server must linger on its input so a slow reader gets every answer
    // (framing.md: "Responses to requests read before the oversized line are written first").
    assert!(
        partial.is_empty(),
        "{what}: the stream was cut in the middle of a line after {} answers: {partial:?}",
        resps.len()
    );
    assert_eq!(
        resps.len(),
        2001,
        "{what}: 2000 answers and FRAME_TOO_LARGE expected, got {} (last: {:?})",
        resps.len(),
        resps.last()
    );
    for (i, r) in resps[..2000].iter().enumerate() {
        Kind::Ping.check(r, i as u64);
    }
    assert_eq!(
        code_of(&resps[2000]),
        Some("FRAME_TOO_LARGE"),
        "{:?}",
        resps[2000]
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_half_line_is_closed_after_the_frame_timeout() {
    let server = Server::start_with(&["--frame-timeout-s", "1"]);
    let mut s = TcpStream::connect(server.tcp).await.expect("connect");
    s.write_all(br#"{"command":"SYS."#)
        .await
        .expect("write half a line");
    let (took, got) = wait_for_close(&mut s, Duration::from_secs(10), "stalled half line").await;
    assert!(
        took >= Duration::from_millis(500),
        "closed after {took:?}, well before the 1 s frame timeout"
    );
    assert!(
        got.is_empty(),
        "a timeout has no response line of its own, got {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_half_line_still_gets_the_answers_to_complete_lines_before_it() {
    let server = Server::start_with(&["--frame-timeout-s", "1"]);
    let mut s = TcpStream::connect(server.tcp).await.expect("connect");
    let mut bytes = line(&json!({"id": "before", "command": "SYS.INFO"}));
    bytes.extend_from_slice(br#"{"id":"after","comm"#);
    s.write_all(&bytes).await.expect("write");
    let (_, got) =
        wait_for_close(&mut s, Duration::from_secs(10), "half line after a request").await;
    let text = String::from_utf8(got).expect("UTF-8 answers");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each answer is JSON"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly the complete request is answered: {text:?}"
    );
    assert_eq!(
        (&lines[0]["id"], &lines[0]["ok"]),
        (&json!("before"), &json!(true)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_timeout_runs_from_the_start_of_each_line() {
    // A client that streams requests steadily, each read ending in the middle of the next line,
    // never has a line outstanding for long: every line completes within 250 ms.
    let server = Server::start_with(&["--frame-timeout-s", "1"]);
    let mut c = server.client().await;
    let lines: Vec<Vec<u8>> = (0..13u64)
        .map(|i| line(&json!({"id": i, "command": "SYS.PING"})))
        .collect();
    let half = |l: &Vec<u8>| l.len() / 2;
    c.send_raw(&lines[0][..half(&lines[0])])
        .await
        .expect("write");
    for i in 0..12usize {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut chunk = lines[i][half(&lines[i])..].to_vec();
        chunk.extend_from_slice(&lines[i + 1][..half(&lines[i + 1])]);
        if let Err(e) = c.send_raw(&chunk).await {
            panic!("write #{i} failed after {} ms: {e}", (i + 1) * 250);
        }
        let r = tokio::time::timeout(WAIT, c.read_response())
            .await
            .expect("answer in time");
        // Every read ends inside the next line: the frame timeout must restart with each line
        // (framing.md: "once the first byte of a line has arrived, the whole line must arrive
        // within frame_timeout_s"), not run across complete lines.
        let r = r.unwrap_or_else(|e| {
            panic!(
                "request #{i} (every line complete within 250 ms) was not answered, the \
                 connection was closed after ~{} ms: {e}",
                (i + 1) * 250
            )
        });
        assert_eq!(r.id, Some(RequestId::from(i as u64)), "{r:?}");
        assert!(r.ok, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start_with(&["--idle-timeout-s", "1"]);
    let mut s = TcpStream::connect(server.tcp).await.expect("connect");
    let (took, got) = wait_for_close(&mut s, Duration::from_secs(10), "idle connection").await;
    assert!(
        took >= Duration::from_millis(500),
        "closed after {took:?}, well before the 1 s idle timeout"
    );
    assert!(
        got.is_empty(),
        "no response line on idle close: {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_idle_after_requests_is_closed_after_the_idle_timeout() {
    // Idleness counts from the last request, not only from the connection's start.
    let server = Server::start_with(&["--idle-timeout-s", "1"]);
    let mut s = TcpStream::connect(server.tcp).await.expect("connect");
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(&line(&json!({"id": i, "command": "SYS.PING"})))
            .await
            .expect("write");
    }
    let (_, got) = wait_for_close(&mut s, WAIT, "connection idle after three requests").await;
    let text = String::from_utf8(got).expect("UTF-8 answers");
    assert_eq!(
        text.lines().count(),
        3,
        "the three requests are answered before the close: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connection_outlives_the_idle_timeout() {
    let server = Server::start_with(&["--idle-timeout-s", "1"]);
    let mut c = server.client().await;
    let started = Instant::now();
    // A PING every 300 ms for more than 2 s: never idle for a second.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_ping_works(
            &mut c,
            &format!("{i} pings at 300 ms intervals ({:?} in)", started.elapsed()),
        )
        .await;
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// 5. Connection cap
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_unavailable_and_are_closed() {
    let server = Server::start_with(&["--max-connections", "2"]);
    let mut a = server.client().await;
    let mut b = server.client().await;
    assert_ping_works(&mut a, "opening connection 1 of 2").await;
    assert_ping_works(&mut b, "opening connection 2 of 2").await;

    let mut third = server.client().await;
    let got = read_until_closed(&mut third, WAIT, "third connection").await;
    assert_eq!(got.len(), 1, "exactly one line before the close: {got:?}");
    let r = &got[0];
    assert_eq!(code_of(r), Some("UNAVAILABLE"), "{r:?}");
    assert_eq!((r.id.clone(), r.command.clone()), (None, None), "{r:?}");
    assert!(!r.ok && r.data.is_null(), "{r:?}");

    // The served connections are not disturbed.
    assert_ping_works(&mut a, "a refused third connection").await;
    assert_ping_works(&mut b, "a refused third connection").await;

    // Freeing a slot lets a new connection in (the slot is released asynchronously).
    drop(a);
    let mut admitted = false;
    for _ in 0..50 {
        let mut c = server.client().await;
        match tokio::time::timeout(WAIT, c.call("SYS.PING", json!({}))).await {
            Ok(Ok(r)) if r.ok => {
                admitted = true;
                break;
            }
            Ok(Ok(r)) => assert_eq!(
                code_of(&r),
                Some("UNAVAILABLE"),
                "while waiting for the slot: {r:?}"
            ),
            Ok(Err(e)) => assert!(is_closed(&e), "while waiting for the slot: {e}"),
            Err(_) => panic!("no answer on a new connection within {WAIT:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        admitted,
        "no connection was admitted within 50 tries after one of two was closed"
    );
    assert_ping_works(&mut b, "the freed slot was reused").await;
}

// ---------------------------------------------------------------------------------------------
// 6. HTTP gateway
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_execute_answers_the_same_envelopes_as_tcp() {
    let server = Server::start();
    let token = server.operator_token();
    let token = token.expose();
    let mut c = server.client().await;

    // (request without token, whether to present the operator token, expected code)
    let cases: Vec<(Value, bool, Option<&str>)> = vec![
        (json!({"id": 1, "command": "SYS.PING"}), false, None),
        (json!({"id": "info", "command": "SYS.INFO"}), false, None),
        (
            json!({"id": 3, "command": "NOPE.NOPE"}),
            false,
            Some("UNKNOWN_COMMAND"),
        ),
        (
            json!({"id": 4, "command": "SYS.PING", "params": {"x": 1}}),
            false,
            Some("INVALID_PARAMS"),
        ),
        (
            json!({"id": 5, "command": "SYS.INFO", "params": [1]}),
            false,
            Some("INVALID_PARAMS"),
        ),
        (
            json!({"id": 6, "command": "LOG.VERIFY"}),
            false,
            Some("UNAUTHENTICATED"),
        ),
        (json!({"id": 7, "command": "LOG.VERIFY"}), true, None),
        (json!({"id": 8, "command": "SYS.COMMANDS"}), false, None),
    ];
    for (req, with_token, code) in &cases {
        let what = format!("{req} (operator token: {with_token})");
        let mut tcp_req = req.clone();
        if *with_token {
            tcp_req["token"] = json!(token);
        }
        let tcp = raw_call(&mut c, &line(&tcp_req), &what).await;
        assert_eq!(code_of(&tcp), *code, "TCP {what}: {tcp:?}");
        let tcp = serde_json::to_value(&tcp).expect("envelope as JSON");

        // Over HTTP the token travels in the Authorization header.
        let h = execute_http(server.http, req, with_token.then_some(token)).await;
        let body = assert_http_envelope(&h, 200, *code, &format!("HTTP {what}"));
        assert_eq!(
            envelope_shape(&body),
            envelope_shape(&tcp),
            "{what}: HTTP and TCP envelopes differ\n  http: {body}\n  tcp:  {tcp}"
        );
        assert_eq!(body["id"], req["id"], "HTTP {what}: id must be echoed");
    }

    // The Authorization scheme name is case-insensitive.
    let auth = format!("bearer {token}");
    let h = http(
        server.http,
        "POST",
        "/api/v1/execute",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ],
        json!({"id": 9, "command": "LOG.VERIFY"})
            .to_string()
            .as_bytes(),
    )
    .await;
    let body = assert_http_envelope(&h, 200, None, "lower-case bearer scheme");
    assert_eq!(body["data"]["valid"], true, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_statuses_follow_the_framing_spec() {
    let server = Server::start();
    let token = server.operator_token();
    let token = token.expose();
    let ct = ("Content-Type", "application/json");
    let post = |headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let addr = server.http;
        async move {
            let mut hs: Vec<(&str, &str)> = vec![ct];
            hs.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            http(addr, "POST", "/api/v1/execute", &hs, &body).await
        }
    };

    // A handled failure is still 200.
    let r = post(vec![], br#"{"id":1,"command":"NOPE"}"#.to_vec()).await;
    assert_http_envelope(&r, 200, Some("UNKNOWN_COMMAND"), "unknown command");

    // Unreadable bodies are 400 BAD_REQUEST envelopes.
    let r = post(vec![], b"{nope".to_vec()).await;
    let env = assert_http_envelope(&r, 400, Some("BAD_REQUEST"), "invalid JSON body");
    assert_eq!(
        (&env["id"], &env["command"]),
        (&Value::Null, &Value::Null),
        "{env}"
    );
    let r = post(vec![], b"\xff\xfe{}".to_vec()).await;
    assert_http_envelope(&r, 400, Some("BAD_REQUEST"), "non-UTF-8 body");
    let r = post(
        vec![],
        br#"{"id":"x","command":"SYS.PING","extra":1}"#.to_vec(),
    )
    .await;
    let env = assert_http_envelope(&r, 400, Some("BAD_REQUEST"), "unknown member");
    assert_eq!(env["id"], "x", "BAD_REQUEST echoes a valid id: {env}");
    let r = post(vec![], Vec::new()).await;
    assert_http_envelope(&r, 400, Some("BAD_REQUEST"), "empty body");

    // A token both in the body and in the header is 400, even when they are equal.
    let body = json!({"id": 2, "command": "LOG.VERIFY", "token": token})
        .to_string()
        .into_bytes();
    let r = post(vec![("Authorization", format!("Bearer {token}"))], body).await;
    let env = assert_http_envelope(&r, 400, Some("BAD_REQUEST"), "token in body and header");
    assert_eq!(
        (&env["id"], &env["command"]),
        (&json!(2), &Value::Null),
        "{env}"
    );

    // A malformed Authorization header is 400 with id null (the body is not read).
    for bad in ["Basic x", "Bearer", "Bearer   ", "Token abc"] {
        let body = br#"{"id":3,"command":"SYS.PING"}"#.to_vec();
        let r = post(vec![("Authorization", bad.to_owned())], body).await;
        let env = assert_http_envelope(
            &r,
            400,
            Some("BAD_REQUEST"),
            &format!("Authorization {bad:?}"),
        );
        assert_eq!(
            (&env["id"], &env["command"]),
            (&Value::Null, &Value::Null),
            "{bad:?}: {env}"
        );
    }

    // Over the frame limit: 413 FRAME_TOO_LARGE.
    let r = post(vec![], padded_ping("big", 70_000)).await;
    let env = assert_http_envelope(&r, 413, Some("FRAME_TOO_LARGE"), "70000-byte body");
    assert_eq!(
        (&env["id"], &env["command"]),
        (&Value::Null, &Value::Null),
        "{env}"
    );

    // Other methods: 405.
    let r = http(server.http, "GET", "/api/v1/execute", &[], b"").await;
    assert_eq!(r.status, 405, "GET on the execute endpoint: {r:?}");
    let r = http(
        server.http,
        "PUT",
        "/api/v1/execute",
        &[ct],
        br#"{"command":"SYS.PING"}"#,
    )
    .await;
    assert_eq!(r.status, 405, "PUT on the execute endpoint: {r:?}");

    // Health check.
    let r = http(server.http, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_json_content_type(&r, "healthz");
    assert_eq!(r.json(), json!({"status": "ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_log_tail_streams_ndjson_envelopes() {
    let server = Server::start();
    let token = server.operator_token();
    let token = token.expose();
    // Some events from both transports.
    let mut c = server.client().await;
    for i in 0..5u64 {
        let r = raw_call(
            &mut c,
            &line(&Kind::for_index(i, true).request_json(i)),
            "seed",
        )
        .await;
        Kind::for_index(i, true).check(&r, i);
    }
    for i in 0..3u64 {
        let h = execute_http(server.http, &json!({"id": i, "command": "SYS.INFO"}), None).await;
        assert_http_envelope(&h, 200, None, "seed SYS.INFO over HTTP");
    }
    // SYS.PING outcomes (even INVALID_PARAMS) are not logged: 3 TCP events (INFO, unknown
    // command, bad envelope) and 3 HTTP ones.
    let expected_events = 6u64;

    let h = execute_http(
        server.http,
        &json!({"id": "t", "command": "LOG.TAIL", "params": {"from_seq": 1}}),
        Some(token),
    )
    .await;
    assert_eq!(h.status, 200, "{h:?}");
    let ct = h.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/x-ndjson"),
        "LOG.TAIL content-type {ct:?}"
    );
    let text = String::from_utf8(h.body.clone()).expect("UTF-8 body");
    assert!(text.ends_with('\n'), "every line ends with \\n: {text:?}");
    let lines: Vec<Response> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an envelope ({e}): {l}")))
        .collect();
    let (last, events) = lines.split_last().expect("at least the end line");
    for (i, r) in events.iter().enumerate() {
        assert!(r.ok, "{r:?}");
        assert_eq!(r.id, Some(RequestId::from("t")), "{r:?}");
        assert_eq!(r.command.as_deref(), Some("LOG.TAIL"), "{r:?}");
        assert_eq!(
            r.data["event"]["seq"],
            json!(i + 1),
            "events must have consecutive seqs from 1: {r:?}"
        );
    }
    assert_eq!(
        events.len() as u64,
        expected_events,
        "one line per event so far: {text}"
    );
    let transports: Vec<&str> = events
        .iter()
        .filter_map(|r| r.data["event"]["transport"].as_str())
        .collect();
    assert_eq!(
        transports.iter().filter(|t| **t == "tcp").count(),
        3,
        "{transports:?}"
    );
    assert_eq!(
        transports.iter().filter(|t| **t == "http").count(),
        3,
        "{transports:?}"
    );
    assert_eq!(last.id, Some(RequestId::from("t")), "{last:?}");
    assert_eq!(
        last.data,
        json!({"end": true, "next_seq": expected_events + 1}),
        "the last line ends the stream: {last:?}"
    );

    // A tail that fails before streaming is an ordinary JSON envelope.
    let h = execute_http(
        server.http,
        &json!({"command": "LOG.TAIL", "params": {"from_seq": 1}}),
        None,
    )
    .await;
    assert_http_envelope(&h, 200, Some("UNAUTHENTICATED"), "LOG.TAIL without token");
    let h = execute_http(
        server.http,
        &json!({"command": "LOG.TAIL", "params": {"nope": 1}}),
        Some(token),
    )
    .await;
    assert_http_envelope(&h, 200, Some("INVALID_PARAMS"), "LOG.TAIL with bad params");
}

// ---------------------------------------------------------------------------------------------
// 7. Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_completely_and_in_order_and_logs_every_acknowledged_command() {
    let mut server = Server::start();
    let mut c = server.client().await;
    assert_ping_works(&mut c, "connecting").await;

    let burst: Vec<u8> = (0..200u64)
        .flat_map(|i| line(&json!({"id": i, "command": "SYS.INFO"})))
        .collect();
    c.send_raw(&burst).await.expect("write 200 requests");
    let status = stop_server(&mut server);

    let got = read_until_closed(&mut c, WAIT, "after SIGTERM").await;
    let mut acknowledged = 0u64;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(
            r.id,
            Some(RequestId::from(i as u64)),
            "answers after SIGTERM out of order: {r:?}"
        );
        assert_eq!(r.command.as_deref(), Some("SYS.INFO"), "{r:?}");
        if r.ok {
            assert_eq!(r.data["name"], "portcullis", "{r:?}");
            acknowledged += 1;
        } else {
            assert_eq!(
                code_of(r),
                Some("UNAVAILABLE"),
                "only UNAVAILABLE may replace an answer: {r:?}"
            );
        }
    }
    assert!(
        got.len() <= 200,
        "more answers than requests: {}",
        got.len()
    );
    assert!(status.success(), "exit status after SIGTERM: {status:?}");

    server.restart();
    let mut op = server.operator_client().await;
    let v = tokio::time::timeout(WAIT, op.call("LOG.VERIFY", json!({})))
        .await
        .expect("LOG.VERIFY in time")
        .expect("LOG.VERIFY");
    assert!(v.ok, "{v:?}");
    assert_eq!(
        v.data["valid"], true,
        "the log must verify after a graceful stop: {v:?}"
    );
    let q = tokio::time::timeout(
        WAIT,
        op.call("LOG.QUERY", json!({"command": "SYS.INFO", "limit": 1000})),
    )
    .await
    .expect("LOG.QUERY in time")
    .expect("LOG.QUERY");
    assert!(q.ok, "{q:?}");
    let logged_ok = q.data["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["outcome"] == "ok")
        .count() as u64;
    assert!(
        logged_ok >= acknowledged,
        "{acknowledged} SYS.INFO were acknowledged before the stop but only {logged_ok} are in \
         the log ({} answers read)",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_following_tail_with_its_last_line() {
    // A grace far longer than stop()'s 20 s wait: a follower that held up shutdown would make
    // the process outlive the wait, and stop() would fail the test.
    let mut server = Server::start_with(&["--shutdown-grace-s", "600"]);
    let token = server.operator_token();
    let mut c = server.client().await;
    let r = raw_call(
        &mut c,
        &line(&json!({"id": 1, "command": "SYS.INFO"})),
        "seed",
    )
    .await;
    assert!(r.ok, "{r:?}");

    let tail = json!({"id": "f", "command": "LOG.TAIL", "params": {"from_seq": 1, "follow": true},
                      "token": token.expose()});
    c.send_raw(&line(&tail)).await.expect("write LOG.TAIL");
    let mut caught_up = false;
    for _ in 0..100 {
        let r = next_response(&mut c, "tail before caught_up").await;
        assert!(r.ok, "{r:?}");
        if r.data.get("caught_up").is_some() {
            caught_up = true;
            break;
        }
    }
    assert!(caught_up, "no caught_up line");

    let status = stop_server(&mut server);
    assert!(
        status.success(),
        "exit status with a follower connected: {status:?}"
    );

    let rest = read_until_closed(&mut c, WAIT, "tail after SIGTERM").await;
    // Live events may still arrive (the tail's own); the last line is the shutdown one.
    for r in &rest {
        assert_eq!(r.id, Some(RequestId::from("f")), "{r:?}");
        assert_eq!(r.command.as_deref(), Some("LOG.TAIL"), "{r:?}");
    }
    let (last, events) = rest
        .split_last()
        .expect("the stream ends with a last line, not a bare EOF");
    for e in events {
        assert!(e.ok && e.data.get("event").is_some(), "{e:?}");
    }
    assert_eq!(code_of(last), Some("UNAVAILABLE"), "{last:?}");
    let details = last
        .error
        .as_ref()
        .and_then(|e| e.details.clone())
        .unwrap_or_default();
    assert_eq!(details["reason"], "shutdown", "{last:?}");
    assert!(details["resume_from_seq"].is_u64(), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_the_answer_of_every_command_it_executed() {
    let server = Server::start();
    let (mut rd, wr) = TcpStream::connect(server.tcp)
        .await
        .expect("connect")
        .into_split();
    let mut bytes: Vec<u8> = (0..3000u64)
        .flat_map(|i| line(&json!({"id": i, "command": "SYS.INFO"})))
        .collect();
    // Then a megabyte of blank lines (ignored, never answered): input the server will still
    // have unread when it stops.
    bytes.resize(bytes.len() + 1_000_000, b'\n');
    let writer = write_in_background(wr, bytes);
    // Let the answers pile up unread (a slow client), then stop the server and read slowly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopper = tokio::task::spawn_blocking(move || {
        let mut server = server;
        let status = server.stop();
        (server, status)
    });
    let (got, reset) = slow_read_to_close(&mut rd, "answers during shutdown").await;
    writer.abort();
    let (mut server, status) = stopper.await.expect("stop");
    assert!(status.success(), "exit status after SIGTERM: {status:?}");

    let what = format!("answers during shutdown (ended by reset: {reset})");
    let (resps, partial) = response_lines(&got, &what);
    let mut acknowledged = 0u64;
    for (i, r) in resps.iter().enumerate() {
        assert_eq!(
            r.id,
            Some(RequestId::from(i as u64)),
            "{what}: out of order: {r:?}"
        );
        assert_eq!(r.command.as_deref(), Some("SYS.INFO"), "{what}: {r:?}");
        if r.ok {
            acknowledged += 1;
        } else {
            // The burst may outrun the `cheap` rate limit; refusals are answers too.
            assert!(
                matches!(code_of(r), Some("UNAVAILABLE" | "RATE_LIMITED")),
                "{what}: {r:?}"
            );
        }
    }

    server.restart();
    let mut op = server.operator_client().await;
    let v = op.call("LOG.VERIFY", json!({})).await.expect("LOG.VERIFY");
    assert_eq!(
        v.data["valid"], true,
        "the log must verify after a graceful stop: {v:?}"
    );
    let mut logged = 0u64;
    let mut from = 1u64;
    for _ in 0..10 {
        let params = json!({"command": "SYS.INFO", "limit": 1000, "from_seq": from});
        let q = op.call("LOG.QUERY", params).await.expect("LOG.QUERY");
        assert!(q.ok, "{q:?}");
        logged += q.data["events"].as_array().expect("events").len() as u64;
        match q.data["next_seq"].as_u64() {
            Some(n) => from = n,
            None => break,
        }
    }
    assert!(
        logged >= acknowledged,
        "{what}: {acknowledged} acknowledged but only {logged} logged"
    );
    // On shutdown the reader stops with unread input in the socket; every command the server
    // executed (and logged) must still get its complete answer (framing.md: shutdown "finishes
    // the commands that are executing, writes their responses, and closes").
    assert!(
        partial.is_empty(),
        "{what}: the stream was cut in the middle of a line after {} answers: {partial:?}",
        resps.len()
    );
    assert_eq!(
        logged,
        resps.len() as u64,
        "{what}: the server executed and logged {logged} SYS.INFO but the client received only \
         {} answers",
        resps.len()
    );
}
