//! The protocol's corners: how a following `LOG.TAIL` ends when the server shuts down (both
//! transports), which request ids the server echoes or refuses, the HTTP gateway's handling of
//! paths, methods, keep-alive, chunked bodies, `Content-Type` and the body limit, and when a
//! closed connection stops counting against `max_connections`. Specified in
//! `protocol/framing.md` and `protocol/envelope.md`.

use crate::harness::Server;
use portcullis_protocol::Secret;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single wait for the server; generous so a loaded machine does not flake.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------------------------

/// Reads until the peer closes its side. `Ok` only for a clean EOF; a reset is an error.
async fn read_to_eof(s: &mut TcpStream, buf: &mut Vec<u8>, what: &str) -> std::io::Result<()> {
    match tokio::time::timeout(WAIT, s.read_to_end(buf)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => panic!("{what}: the server did not close the connection within {WAIT:?}"),
    }
}

/// Reads until `buf` contains `needle`; panics on EOF or after [`WAIT`].
async fn read_until_contains(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8], what: &str) {
    let deadline = Instant::now() + WAIT;
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
        assert!(
            n > 0,
            "{what}: EOF before {:?}; got {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Splits NDJSON into parsed lines; every line must be JSON.
fn ndjson_lines(bytes: &[u8], what: &str) -> Vec<Value> {
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "{what}: the stream ends inside a line: {:?}",
        String::from_utf8_lossy(bytes)
    );
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).unwrap_or_else(|e| {
                panic!("{what}: not JSON ({e}): {:?}", String::from_utf8_lossy(l))
            })
        })
        .collect()
}

/// A parsed HTTP/1.1 response head and its (de-chunked) body.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Parses one complete response from the front of `raw`; returns it and the bytes after it.
/// A chunked body must end with its last chunk (`0\r\n\r\n`): a stream cut off is an error.
fn parse_response(raw: &[u8]) -> Result<(RawResponse, &[u8]), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let mut rest = &raw[split + 4..];
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("a chunked body cut off before its last chunk")?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .map_err(|e| format!("chunk size: {e}"))?;
            let start = eol + 2;
            if size == 0 {
                if rest.get(start..start + 2) != Some(b"\r\n".as_slice()) {
                    return Err("the last chunk is not followed by CRLF".into());
                }
                rest = &rest[start + 2..];
                break;
            }
            let data = rest
                .get(start..start + size)
                .ok_or("a chunk cut off in the middle")?;
            resp.body.extend_from_slice(data);
            if rest.get(start + size..start + size + 2) != Some(b"\r\n".as_slice()) {
                return Err("a chunk not followed by CRLF".into());
            }
            rest = &rest[start + size + 2..];
        }
    } else {
        let len: usize = resp
            .header("content-length")
            .map(|v| v.parse().map_err(|e| format!("content-length: {e}")))
            .transpose()?
            .unwrap_or(rest.len());
        let body = rest
            .get(..len)
            .ok_or("a body shorter than its content-length")?;
        resp.body = body.to_vec();
        rest = &rest[len..];
    }
    Ok((resp, rest))
}

/// A client connection to the HTTP gateway that keeps what it read beyond one response.
struct Http {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Http {
        Http {
            sock: TcpStream::connect(addr).await.expect("connect http"),
            buf: Vec::new(),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sock.write_all(bytes).await
    }

    /// Everything up to the server's close (what was already read included), and how the
    /// stream ended.
    async fn until_eof(&mut self, what: &str) -> (Vec<u8>, std::io::Result<()>) {
        let mut buf = std::mem::take(&mut self.buf);
        let end = read_to_eof(&mut self.sock, &mut buf, what).await;
        (buf, end)
    }
}

/// Reads exactly one response from a keep-alive connection (bodies with a `content-length`).
async fn read_one_response(s: &mut Http, what: &str) -> RawResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((resp, rest)) = parse_response(&s.buf) {
            if resp.header("content-length").is_some() {
                let used = s.buf.len() - rest.len();
                s.buf.drain(..used);
                return resp;
            }
        }
        let mut chunk = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.sock.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{what}: no complete response within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
        assert!(
            n > 0,
            "{what}: EOF before a complete response: {:?}",
            String::from_utf8_lossy(&s.buf)
        );
        s.buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head of a `POST /api/v1/execute` with a `content-length` body.
fn post(body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut req = format!(
        "POST /api/v1/execute HTTP/1.1\r\nHost: portcullis\r\n{extra_headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

// ---------------------------------------------------------------------------------------------
// 1. Shutdown with followers attached
// ---------------------------------------------------------------------------------------------

/// A `LOG.TAIL` follower over raw TCP, attached and caught up.
struct TcpFollower {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl TcpFollower {
    async fn attach(addr: SocketAddr, token: &Secret) -> TcpFollower {
        let mut sock = TcpStream::connect(addr).await.expect("connect tcp");
        let req = json!({"id": "f", "command": "LOG.TAIL", "params": {"follow": true},
                         "token": token.expose()});
        sock.write_all(format!("{req}\n").as_bytes())
            .await
            .expect("write LOG.TAIL");
        let mut buf = Vec::new();
        read_until_contains(&mut sock, &mut buf, b"caught_up", "tcp follower").await;
        TcpFollower { sock, buf }
    }

    /// Everything the server sends until it closes, then closes our side at once.
    async fn finish(mut self) -> Vec<Value> {
        let end = read_to_eof(&mut self.sock, &mut self.buf, "tcp follower after SIGTERM").await;
        if let Err(e) = end {
            panic!(
                "tcp follower: the stream did not end with EOF but with {e}; received {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
        ndjson_lines(&self.buf, "tcp follower")
    }
}

/// A `LOG.TAIL` follower over the HTTP gateway, attached and caught up.
struct HttpFollower {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl HttpFollower {
    async fn attach(addr: SocketAddr, token: &Secret) -> HttpFollower {
        let mut sock = TcpStream::connect(addr).await.expect("connect http");
        let body = json!({"id": "f", "command": "LOG.TAIL", "params": {"follow": true}});
        let auth = format!(
            "Content-Type: application/json\r\nAuthorization: Bearer {}\r\n",
            token.expose()
        );
        sock.write_all(&post(body.to_string().as_bytes(), &auth))
            .await
            .expect("write LOG.TAIL");
        let mut buf = Vec::new();
        read_until_contains(&mut sock, &mut buf, b"caught_up", "http follower").await;
        HttpFollower { sock, buf }
    }

    async fn finish(mut self) -> Vec<Value> {
        let end = read_to_eof(&mut self.sock, &mut self.buf, "http follower after SIGTERM").await;
        if let Err(e) = end {
            panic!(
                "http follower: the connection did not end with EOF but with {e}; received {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
        let (resp, rest) = parse_response(&self.buf).unwrap_or_else(|e| {
            panic!(
                "http follower: {e}; received {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        });
        assert!(rest.is_empty(), "http follower: bytes after the response");
        assert_eq!(resp.status, 200, "http follower: {resp:?}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/x-ndjson"),
            "http follower: {resp:?}"
        );
        ndjson_lines(&resp.body, "http follower")
    }
}

/// A followed stream that the server ended by shutting down: `caught_up`, then events without
/// a gap, then exactly one last line, `UNAVAILABLE` with `reason` `shutdown` and the seq to
/// resume from (the one after the last event sent).
fn assert_ended_by_shutdown(lines: &[Value], what: &str) {
    let (last, before) = lines
        .split_last()
        .unwrap_or_else(|| panic!("{what}: no lines at all"));
    for l in lines {
        assert_eq!(l["id"], "f", "{what}: {l}");
        assert_eq!(l["command"], "LOG.TAIL", "{what}: {l}");
    }
    assert_eq!(
        last["ok"], false,
        "{what}: the stream ended without the shutdown line; its last line is {last} (after {} more)",
        before.len()
    );
    // Events (the tail's own may come before `caught_up`), one `caught_up`, more events: the
    // seqs follow each other without a gap.
    let mut next: Option<u64> = None;
    let mut caught_up = 0;
    for l in before {
        assert_eq!(
            l["ok"], true,
            "{what}: only the last line may fail: {lines:?}"
        );
        let (seq, after) = if l["data"]["caught_up"] == true {
            caught_up += 1;
            let n = l["data"]["next_seq"].as_u64();
            (n, n)
        } else {
            let s = l["data"]["event"]["seq"].as_u64();
            (s, s.map(|s| s + 1))
        };
        let seq = seq.unwrap_or_else(|| panic!("{what}: neither an event nor caught_up: {l}"));
        if let Some(n) = next {
            assert_eq!(seq, n, "{what}: events in order without a gap: {lines:?}");
        }
        next = after;
    }
    assert_eq!(caught_up, 1, "{what}: one caught_up line: {lines:?}");
    let next = next.unwrap_or_default();
    assert_eq!(last["data"], Value::Null, "{what}: {last}");
    assert_eq!(last["error"]["code"], "UNAVAILABLE", "{what}: {last}");
    assert_eq!(
        last["error"]["details"]["reason"], "shutdown",
        "{what}: {last}"
    );
    assert_eq!(
        last["error"]["details"]["resume_from_seq"].as_u64(),
        Some(next),
        "{what}: resume_from_seq names the first event not sent: {last}"
    );
}

/// Twenty shutdowns, each with a follower attached over TCP and one over HTTP: every stream
/// ends with the shutdown line and then a clean EOF (framing.md, Shutdown; LOG.TAIL.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shutdown_ends_each_following_tail_with_the_shutdown_line_then_eof() {
    const ROUNDS: usize = 20;
    let mut server = Server::start_with(&["--shutdown-grace-s", "15"]);
    let mut took = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        if round > 0 {
            server.restart();
        }
        let token = server.operator_token();
        let tcp = TcpFollower::attach(server.tcp, &token).await;
        let http = HttpFollower::attach(server.http, &token).await;
        let started = Instant::now();
        let stopping = tokio::task::spawn_blocking(move || {
            let status = server.stop();
            (server, status)
        });
        let (tcp_lines, http_lines) = tokio::join!(tcp.finish(), http.finish());
        let (stopped, status) = stopping.await.expect("stop");
        took.push(started.elapsed());
        server = stopped;
        assert!(status.success(), "round {round}: exit status {status:?}");
        assert_ended_by_shutdown(&tcp_lines, &format!("round {round}, tcp"));
        assert_ended_by_shutdown(&http_lines, &format!("round {round}, http"));
    }
    // Reported, not asserted: speed is never asserted.
    took.sort();
    eprintln!(
        "shutdown with a TCP and an HTTP follower attached: median {:?}, max {:?}",
        took[ROUNDS / 2],
        took[ROUNDS - 1]
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Request ids
// ---------------------------------------------------------------------------------------------

/// Ids the server echoes, as sent; the answer's `id` is the same JSON text.
const ECHOED_IDS: &[&str] = &[
    "0",
    "7",
    "-1",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "18446744073709551615",
    "true",
    "false",
    "\"\"",
    "\"req-1\"",
];

/// Ids the server refuses with `BAD_REQUEST` (id `null`, command `null`).
fn refused_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "18446744073709551616",
        "-9223372036854775809",
        "340282366920938463463374607431768211456",
        "1.5",
        "1.0",
        "1e2",
        "1E+2",
        "-0",
        "0.1",
        "1E400",
        "-1e400",
        "[1]",
        "{}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // 129 bytes, and a string of 60 000 bytes (within the frame limit).
    ids.push(format!("\"{}\"", "x".repeat(129)));
    ids.push(format!("\"{}\"", "é".repeat(65)));
    ids.push(format!("\"{}\"", "y".repeat(60_000)));
    ids
}

/// A 128-byte id (the longest) and a multi-byte one within the limit are echoed unchanged.
fn long_echoed_ids() -> Vec<String> {
    vec![
        format!("\"{}\"", "x".repeat(128)),
        format!("\"{}\"", "é".repeat(64)),
    ]
}

/// Over TCP: 64-bit integers (signed or unsigned), strings up to 128 bytes and booleans come
/// back exactly as sent; other numbers (fractions, exponents, beyond 64 bits, out of the double
/// range) and longer strings are refused with `BAD_REQUEST`, id `null`, and the connection
/// keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echoes_integer_string_and_boolean_ids_exactly_and_refuses_other_numbers() {
    let server = Server::start();
    let mut sock = TcpStream::connect(server.tcp).await.expect("connect");
    let echoed: Vec<String> = ECHOED_IDS
        .iter()
        .map(|s| s.to_string())
        .chain(long_echoed_ids())
        .collect();
    let refused = refused_ids();
    let mut out = String::new();
    for id in echoed.iter().chain(&refused) {
        out.push_str(&format!("{{\"id\":{id},\"command\":\"SYS.PING\"}}\n"));
    }
    out.push_str("{\"command\":\"SYS.PING\"}\n");
    sock.write_all(out.as_bytes()).await.expect("write");
    sock.shutdown().await.expect("shutdown write");
    let mut buf = Vec::new();
    read_to_eof(&mut sock, &mut buf, "ids over tcp")
        .await
        .expect("clean EOF");
    let lines: Vec<&[u8]> = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        echoed.len() + refused.len() + 1,
        "one answer each"
    );
    for (id, raw) in echoed.iter().zip(&lines) {
        let want = format!("{{\"id\":{id},\"ok\":true,\"command\":\"SYS.PING\",");
        assert!(
            raw.starts_with(want.as_bytes()),
            "id {id} not echoed exactly: {}",
            String::from_utf8_lossy(raw)
        );
    }
    for (id, raw) in refused.iter().zip(&lines[echoed.len()..]) {
        let v: Value = serde_json::from_slice(raw).expect("json");
        let shown: String = id.chars().take(40).collect();
        assert_eq!(v["error"]["code"], "BAD_REQUEST", "id {shown}: {v}");
        assert_eq!(v["id"], Value::Null, "id {shown}: {v}");
        assert_eq!(v["command"], Value::Null, "id {shown}: {v}");
    }
    let last: Value = serde_json::from_slice(lines[lines.len() - 1]).expect("json");
    assert_eq!(last["ok"], true, "the connection still works: {last}");
    assert_eq!(
        last["id"],
        Value::Null,
        "an absent id is echoed as null: {last}"
    );
}

/// Over HTTP the same ids are echoed (200) or refused (400 `BAD_REQUEST`, id `null`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_echoes_and_refuses_the_same_ids_as_tcp() {
    let server = Server::start();
    let mut sock = Http::connect(server.http).await;
    let echoed: Vec<String> = ECHOED_IDS
        .iter()
        .map(|s| s.to_string())
        .chain(long_echoed_ids())
        .collect();
    for id in &echoed {
        let body = format!("{{\"id\":{id},\"command\":\"SYS.PING\"}}");
        sock.write_all(&post(body.as_bytes(), "Content-Type: application/json\r\n"))
            .await
            .expect("write");
        let resp = read_one_response(&mut sock, id).await;
        assert_eq!(resp.status, 200, "id {id}: {resp:?}");
        let want = format!("{{\"id\":{id},\"ok\":true,\"command\":\"SYS.PING\",");
        assert!(
            resp.body.starts_with(want.as_bytes()),
            "id {id} not echoed exactly: {}",
            String::from_utf8_lossy(&resp.body)
        );
    }
    for id in refused_ids() {
        let shown: String = id.chars().take(40).collect();
        let body = format!("{{\"id\":{id},\"command\":\"SYS.PING\"}}");
        sock.write_all(&post(body.as_bytes(), "Content-Type: application/json\r\n"))
            .await
            .expect("write");
        let resp = read_one_response(&mut sock, &shown).await;
        assert_eq!(resp.status, 400, "id {shown}: {resp:?}");
        let v = resp.json();
        assert_eq!(v["error"]["code"], "BAD_REQUEST", "id {shown}: {v}");
        assert_eq!(v["id"], Value::Null, "id {shown}: {v}");
        assert_eq!(v["command"], Value::Null, "id {shown}: {v}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The HTTP gateway's corners
// ---------------------------------------------------------------------------------------------

const PING: &[u8] = br#"{"id":1,"command":"SYS.PING"}"#;
const JSON: &str = "Content-Type: application/json\r\n";

/// Asserts a handled `SYS.PING` answer (200, JSON envelope, `ok`).
fn assert_pong(resp: &RawResponse, what: &str) {
    assert_eq!(resp.status, 200, "{what}: {resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{what}: {resp:?}"
    );
    let v = resp.json();
    assert_eq!(v["ok"], true, "{what}: {v}");
    assert_eq!(v["data"], json!({"pong": true}), "{what}: {v}");
}

/// Other paths are 404 and other methods on the execute endpoint 405 with `Allow: POST`, both
/// with an empty body; no CORS preflight is answered (the default, empty
/// `cors_allowed_origins`; listed origins are tested in cors.rs). Without a request body the connection is
/// kept; a request body the server does not read ends the connection, announced by
/// `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_other_paths_are_404_and_other_methods_405_with_allow() {
    let server = Server::start();
    let mut sock = Http::connect(server.http).await;
    for path in [
        "/",
        "/api/v1",
        "/api/v2/execute",
        "/api/v1/execute/",
        "/API/V1/EXECUTE",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: portcullis\r\n\r\n");
        sock.write_all(req.as_bytes()).await.expect("write");
        let resp = read_one_response(&mut sock, path).await;
        assert_eq!(resp.status, 404, "{path}: {resp:?}");
        assert!(resp.body.is_empty(), "{path}: {resp:?}");
        assert_eq!(resp.header("connection"), None, "{path}: kept: {resp:?}");
    }
    for method in ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let req = format!(
            "{method} /api/v1/execute HTTP/1.1\r\nHost: portcullis\r\nOrigin: https://elsewhere.example\r\nAccess-Control-Request-Method: POST\r\nContent-Length: 0\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.expect("write");
        let resp = read_one_response(&mut sock, method).await;
        assert_eq!(resp.status, 405, "{method}: {resp:?}");
        assert_eq!(resp.header("allow"), Some("POST"), "{method}: {resp:?}");
        assert!(resp.body.is_empty(), "{method}: {resp:?}");
        assert_eq!(resp.header("connection"), None, "{method}: kept: {resp:?}");
        assert!(
            !resp
                .headers
                .iter()
                .any(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-")),
            "{method}: no CORS: {resp:?}"
        );
    }
    sock.write_all(&post(PING, JSON)).await.expect("write");
    assert_pong(
        &read_one_response(&mut sock, "after 404s and 405s").await,
        "kept",
    );

    // With a body that is not read (headers first, the body never sent or sent later).
    for (head, status) in [
        ("POST /nope HTTP/1.1\r\nHost: portcullis\r\n", 404),
        ("PUT /api/v1/execute HTTP/1.1\r\nHost: portcullis\r\n", 405),
        (
            "POST /nope HTTP/1.1\r\nHost: portcullis\r\nTransfer-Encoding: chunked\r\n",
            404,
        ),
    ] {
        let mut sock = Http::connect(server.http).await;
        let req = format!("{head}Content-Length: {}\r\n\r\n", PING.len());
        let req = if head.contains("chunked") {
            format!("{head}\r\n")
        } else {
            req
        };
        sock.write_all(req.as_bytes()).await.expect("write");
        let (buf, end) = sock.until_eof(head).await;
        end.expect("a clean close");
        let (resp, rest) = parse_response(&buf).expect("a response");
        assert!(rest.is_empty(), "{head}: one response");
        assert_eq!(resp.status, status, "{head}: {resp:?}");
        assert_eq!(
            resp.header("connection").map(str::to_ascii_lowercase),
            Some("close".to_owned()),
            "{head}: {resp:?}"
        );
    }
}

/// Keep-alive: requests one after another and pipelined on one connection are all answered, in
/// order; `Connection: close` ends the connection after its answer; an HTTP/1.0 request gets
/// its answer and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_keep_alive_serves_many_requests_per_connection_in_order() {
    let server = Server::start();
    let mut sock = Http::connect(server.http).await;
    for i in 0..5 {
        sock.write_all(&post(PING, JSON)).await.expect("write");
        assert_pong(
            &read_one_response(&mut sock, "sequential").await,
            &format!("request {i}"),
        );
    }
    // Pipelined: three requests written at once, answered in order.
    let mut three = Vec::new();
    for id in 10..13 {
        three.extend(post(
            format!(r#"{{"id":{id},"command":"SYS.PING"}}"#).as_bytes(),
            JSON,
        ));
    }
    sock.write_all(&three).await.expect("write");
    for id in 10..13 {
        let resp = read_one_response(&mut sock, "pipelined").await;
        assert_pong(&resp, "pipelined");
        assert_eq!(resp.json()["id"], id, "pipelined answers in order");
    }
    // An error answer does not end the connection either.
    sock.write_all(&post(b"{", JSON)).await.expect("write");
    assert_eq!(read_one_response(&mut sock, "400").await.status, 400);
    sock.write_all(&post(PING, "Connection: close\r\n"))
        .await
        .expect("write");
    let (buf, end) = sock.until_eof("Connection: close").await;
    end.expect("clean close");
    let (resp, rest) = parse_response(&buf).expect("one response");
    assert_pong(&resp, "Connection: close");
    assert!(rest.is_empty(), "nothing after the last answer");

    let mut old = TcpStream::connect(server.http).await.expect("connect");
    old.write_all(
        format!(
            "POST /api/v1/execute HTTP/1.0\r\nContent-Length: {}\r\n\r\n",
            PING.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    old.write_all(PING).await.expect("write");
    let mut buf = Vec::new();
    read_to_eof(&mut old, &mut buf, "HTTP/1.0")
        .await
        .expect("clean close");
    assert_pong(&parse_response(&buf).expect("response").0, "HTTP/1.0");
}

/// A chunked request body is read like any other, and its decoded length is held to
/// `max_frame_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_chunked_request_bodies_are_read_and_held_to_the_frame_limit() {
    let server = Server::start();
    let chunked = |body: &[u8], piece: usize| {
        let mut req =
            b"POST /api/v1/execute HTTP/1.1\r\nHost: portcullis\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for part in body.chunks(piece) {
            req.extend(format!("{:x}\r\n", part.len()).as_bytes());
            req.extend_from_slice(part);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        req
    };
    let mut sock = Http::connect(server.http).await;
    sock.write_all(&chunked(PING, 5)).await.expect("write");
    assert_pong(&read_one_response(&mut sock, "chunked").await, "chunked");
    // Exactly the limit, in 1000-byte chunks: read.
    let at_limit = padded_ping(65_536);
    sock.write_all(&chunked(&at_limit, 1000))
        .await
        .expect("write");
    assert_pong(
        &read_one_response(&mut sock, "chunked, at the limit").await,
        "at the limit",
    );
    // One byte over: 413, and the connection closes.
    let over = padded_ping(65_537);
    sock.write_all(&chunked(&over, 1000)).await.expect("write");
    assert_too_large_then_closed(&mut sock, "chunked, one byte over").await;
}

/// A `SYS.PING` request of exactly `len` bytes, padded with spaces.
fn padded_ping(len: usize) -> Vec<u8> {
    let mut out = br#"{"id":1,"command":"SYS.PING""#.to_vec();
    out.resize(len - 1, b' ');
    out.push(b'}');
    out
}

/// Reads a 413 `FRAME_TOO_LARGE` answer with `Connection: close`, then EOF.
async fn assert_too_large_then_closed(sock: &mut Http, what: &str) {
    // The server may close before reading everything sent: a reset after the answer is
    // acceptable only once the answer has been read completely.
    let (buf, end) = sock.until_eof(what).await;
    let (resp, _) = parse_response(&buf).unwrap_or_else(|e| panic!("{what}: {e} ({end:?})"));
    assert_eq!(resp.status, 413, "{what}: {resp:?}");
    assert_eq!(
        resp.header("connection").map(str::to_ascii_lowercase),
        Some("close".to_owned()),
        "{what}: {resp:?}"
    );
    let v = resp.json();
    assert_eq!(v["error"]["code"], "FRAME_TOO_LARGE", "{what}: {v}");
    assert_eq!(v["id"], Value::Null, "{what}: {v}");
    assert_eq!(v["command"], Value::Null, "{what}: {v}");
}

/// `Content-Type` is not consulted: the body is read as UTF-8 JSON whatever the header says
/// (missing, `text/plain`, a form type, a charset parameter). Bytes that are not UTF-8 are
/// `BAD_REQUEST` whatever charset is declared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_content_type_is_not_consulted_and_bodies_are_always_utf8_json() {
    let server = Server::start();
    let mut sock = Http::connect(server.http).await;
    for ctype in [
        "",
        "Content-Type: application/json\r\n",
        "Content-Type: application/json; charset=utf-8\r\n",
        "Content-Type: application/json; charset=UTF-8\r\n",
        "Content-Type: application/json; charset=iso-8859-1\r\n",
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
    ] {
        sock.write_all(&post(PING, ctype)).await.expect("write");
        assert_pong(&read_one_response(&mut sock, ctype).await, ctype);
    }
    let latin1 = b"{\"id\":\"caf\xe9\",\"command\":\"SYS.PING\"}";
    for ctype in [
        "Content-Type: application/json; charset=iso-8859-1\r\n",
        "Content-Type: application/json\r\n",
    ] {
        sock.write_all(&post(latin1, ctype)).await.expect("write");
        let resp = read_one_response(&mut sock, "latin-1").await;
        assert_eq!(resp.status, 400, "{ctype}: {resp:?}");
        assert_eq!(resp.json()["error"]["code"], "BAD_REQUEST", "{ctype}");
    }
    // A compressed body is not decoded.
    sock.write_all(&post(
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00",
        "Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
    ))
    .await
    .expect("write");
    let resp = read_one_response(&mut sock, "gzip").await;
    assert_eq!(resp.status, 400, "gzip: {resp:?}");
    // UTF-8 beyond ASCII is read as such.
    sock.write_all(&post(
        "{\"id\":\"café\",\"command\":\"SYS.PING\"}".as_bytes(),
        JSON,
    ))
    .await
    .expect("write");
    let resp = read_one_response(&mut sock, "utf-8").await;
    assert_pong(&resp, "utf-8");
    assert_eq!(resp.json()["id"], "café");
}

/// The body limit and unreadable bodies: a body of exactly `max_frame_bytes` is read, one byte
/// more is 413 and closes the connection; an empty body, a body that is not JSON, or JSON that
/// is not a request object is 400 `BAD_REQUEST` on a connection that stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_body_limit_and_unreadable_bodies() {
    let server = Server::start();
    let mut sock = Http::connect(server.http).await;
    sock.write_all(&post(&padded_ping(65_536), JSON))
        .await
        .expect("write");
    assert_pong(
        &read_one_response(&mut sock, "at the limit").await,
        "at the limit",
    );
    for (body, what) in [
        (&b""[..], "empty body"),
        (b"hello", "not JSON"),
        (b"[1,2]", "an array"),
        (b"\"SYS.PING\"", "a string"),
        (b"{\"id\":3}", "no command"),
        (
            b"\xef\xbb\xbf{\"id\":1,\"command\":\"SYS.PING\"}",
            "a byte-order mark",
        ),
        (b"{\"id\":1,\"command\":\"SYS.PING\"}{}", "two objects"),
    ] {
        sock.write_all(&post(body, JSON)).await.expect("write");
        let resp = read_one_response(&mut sock, what).await;
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let v = resp.json();
        assert_eq!(v["error"]["code"], "BAD_REQUEST", "{what}: {v}");
        assert_eq!(v["command"], Value::Null, "{what}: {v}");
    }
    // A POST without a body (no Content-Length, not chunked) has an empty body.
    sock.write_all(b"POST /api/v1/execute HTTP/1.1\r\nHost: portcullis\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_one_response(&mut sock, "no body").await.status, 400);
    sock.write_all(&post(&padded_ping(65_537), JSON))
        .await
        .expect("write");
    assert_too_large_then_closed(&mut sock, "one byte over the limit").await;
    // With a declared length far beyond the limit, whose body is never sent.
    let mut sock = Http::connect(server.http).await;
    sock.write_all(
        b"POST /api/v1/execute HTTP/1.1\r\nHost: portcullis\r\nContent-Length: 10000000\r\n\r\n{",
    )
    .await
    .expect("write");
    assert_too_large_then_closed(&mut sock, "a declared length over the limit").await;
}

// ---------------------------------------------------------------------------------------------
// 4. When a closed connection stops counting against max_connections
// ---------------------------------------------------------------------------------------------

const CAP: usize = 4;
/// Attempts to get a connection admitted again; each refused attempt is answered and closed by
/// the server before the next, which paces the loop without a sleep.
const ATTEMPTS: usize = 500;

/// A TCP connection that answered a `SYS.PING` (admitted), or `None` when it was refused with
/// `UNAVAILABLE` and closed.
async fn tcp_admitted(addr: SocketAddr) -> Option<TcpStream> {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    // A refused connection may be closed before this arrives: the write may fail.
    let _ = sock
        .write_all(b"{\"id\":1,\"command\":\"SYS.PING\"}\n")
        .await;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\n") {
        let n = tokio::time::timeout(WAIT, sock.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read the answer");
        assert!(n > 0, "closed without an answer");
        buf.push(byte[0]);
    }
    let v: Value = serde_json::from_slice(&buf).expect("json");
    if v["ok"] == true {
        return Some(sock);
    }
    assert_eq!(v["error"]["code"], "UNAVAILABLE", "{v}");
    let mut rest = Vec::new();
    read_to_eof(&mut sock, &mut rest, "refused connection")
        .await
        .expect("closed after the refusal");
    None
}

/// An HTTP connection whose first request was answered 200 (admitted, kept alive), or `None`
/// when it was refused with 503 and closed.
async fn http_admitted(addr: SocketAddr) -> Option<TcpStream> {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    let _ = sock.write_all(&post(PING, JSON)).await;
    let mut buf = Vec::new();
    loop {
        if let Ok((resp, _)) = parse_response(&buf) {
            if resp.status == 200 {
                assert_pong(&resp, "admitted");
                return Some(sock);
            }
            if resp.body.len()
                >= resp
                    .header("content-length")
                    .map_or(0, |l| l.parse().unwrap_or(0))
            {
                assert_eq!(resp.status, 503, "{resp:?}");
                assert_eq!(resp.json()["error"]["code"], "UNAVAILABLE");
                let mut rest = Vec::new();
                read_to_eof(&mut sock, &mut rest, "refused connection")
                    .await
                    .expect("closed after the refusal");
                return None;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, sock.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read the answer");
        assert!(n > 0, "closed without a complete answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Fills the cap with `CAP` admitted connections (retrying refused attempts) and checks that
/// one more is refused.
async fn fill_cap<F, Fut>(admit: F, what: &str) -> Vec<TcpStream>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<TcpStream>>,
{
    let mut held = Vec::new();
    let mut refused = 0;
    while held.len() < CAP {
        match admit().await {
            Some(s) => held.push(s),
            None => {
                refused += 1;
                assert!(
                    refused < ATTEMPTS,
                    "{what}: {refused} attempts refused while only {} connections are open",
                    held.len()
                );
            }
        }
    }
    assert!(
        admit().await.is_none(),
        "{what}: a connection over the cap of {CAP} was admitted"
    );
    held
}

/// TCP: connections closed by the client at the cap free their slots; new connections are
/// admitted again (retrying, as the slot frees once the server has seen the close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_closed_at_the_cap_free_their_slots() {
    let server = Server::start_with(&["--max-connections", &CAP.to_string()]);
    let addr = server.tcp;
    for round in 0..3 {
        let held = fill_cap(|| tcp_admitted(addr), &format!("tcp round {round}")).await;
        drop(held);
    }
    // Half-closing (shutdown of the client's write side) and reading to the end frees the slot
    // as well: the server answers, closes, and sees the client's close.
    let held = fill_cap(|| tcp_admitted(addr), "tcp, half-close").await;
    for mut s in held {
        s.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        read_to_eof(&mut s, &mut rest, "half-closed")
            .await
            .expect("eof");
    }
    drop(fill_cap(|| tcp_admitted(addr), "tcp after half-closes").await);
}

/// HTTP: kept-alive connections closed by the client at the cap free their slots, and so do
/// connections the server closes after `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_closed_at_the_cap_free_their_slots() {
    let server = Server::start_with(&["--max-connections", &CAP.to_string()]);
    let addr = server.http;
    for round in 0..3 {
        let held = fill_cap(|| http_admitted(addr), &format!("http round {round}")).await;
        drop(held);
    }
    let held = fill_cap(|| http_admitted(addr), "http, Connection: close").await;
    for mut s in held {
        s.write_all(&post(PING, "Connection: close\r\n"))
            .await
            .expect("write");
        let mut rest = Vec::new();
        read_to_eof(&mut s, &mut rest, "Connection: close")
            .await
            .expect("eof");
    }
    drop(fill_cap(|| http_admitted(addr), "http after Connection: close").await);
}
