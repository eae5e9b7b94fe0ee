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

/// Reads exactly one response from a keep-alive connection (bodies with a `content-length`).
async fn read_one_response(s: &mut TcpStream, what: &str) -> RawResponse {
    let mut buf = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((resp, rest)) = parse_response(&buf) {
            if resp.header("content-length").is_some() || resp.status == 204 {
                assert!(
                    rest.is_empty(),
                    "{what}: bytes after the response: {rest:?}"
                );
                return resp;
            }
        }
        let mut chunk = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{what}: no complete response within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
        assert!(
            n > 0,
            "{what}: EOF before a complete response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
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
    let mut sock = TcpStream::connect(server.http).await.expect("connect");
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
