//! Slow and greedy clients (protocol/framing.md, "Timeouts and connection limits"): senders that
//! stall or trickle a request on either transport are cut off after the (lowered) timeout;
//! one client address cannot hold more than its share of connections, while another address
//! still gets in; and the timeouts leave alone what is legitimately quiet (a `LOG.TAIL`
//! follower).
//!
//! Every wait is bounded; bounds are generous ("closed within 20 s" for a 1 s timeout), and
//! only a lower bound is ever asserted about timing (never closed *before* the timeout).

// The helpers below are assertions: failing loudly is their job.
#![allow(clippy::panic, clippy::expect_used)]

use crate::harness::Server;
use portcullis_client::TailItem;
use portcullis_protocol::commands::log::TailParams;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Upper bound on any wait for the server.
const WAIT: Duration = Duration::from_secs(20);

/// A second loopback address: Linux routes all of 127.0.0.0/8 to `lo`, so a socket bound to it
/// reaches a server on 127.0.0.1 as a different client address.
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Connects to `addr` from `from` (a local address to bind the client socket to).
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(IpAddr::V4(from), 0))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    sock.connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect from {from}: {e}"))
}

/// Reads until EOF or reset, within [`WAIT`]; returns the bytes and how long it took.
async fn read_to_close(s: &mut TcpStream, what: &str) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = WAIT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "{what}: the server did not close the connection within {WAIT:?} (received {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Sends one NDJSON request line and reads one response line, within [`WAIT`].
async fn ndjson_call(s: &mut TcpStream, request: &Value, what: &str) -> Value {
    let mut line = serde_json::to_vec(request).expect("encode");
    line.push(b'\n');
    s.write_all(&line)
        .await
        .unwrap_or_else(|e| panic!("{what}: write failed: {e}"));
    let mut reader = BufReader::new(s);
    let mut answer = String::new();
    match tokio::time::timeout(WAIT, reader.read_line(&mut answer)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) => panic!("{what}: the connection was closed without an answer"),
        Ok(Err(e)) => panic!("{what}: read failed: {e}"),
        Err(_) => panic!("{what}: no answer within {WAIT:?}"),
    }
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {answer}"))
}

async fn assert_tcp_ping(s: &mut TcpStream, what: &str) {
    let r = ndjson_call(s, &json!({"id": 1, "command": "SYS.PING"}), what).await;
    assert_eq!(r["ok"], json!(true), "{what}: {r}");
}

/// An HTTP/1.1 response read off a raw socket: status and the JSON body.
struct RawHttp {
    status: u16,
    head: String,
    body: Value,
}

fn parse_http(raw: &[u8], what: &str) -> RawHttp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no complete HTTP response in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no status line in {head:?}"));
    let body = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body:?}"));
    RawHttp {
        status,
        head: head.to_ascii_lowercase(),
        body,
    }
}

/// A keep-alive `GET /healthz` on an open connection; returns the raw response (read up to its
/// body, which is short and sent with a length).
async fn http_keepalive_healthz(s: &mut TcpStream, what: &str) -> RawHttp {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{what}: write failed: {e}"));
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    // Bounded by WAIT; the answer is `{"status":"ok"}`, so it ends with `}`.
    while !raw.ends_with(b"}") {
        let left = WAIT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("{what}: closed after {:?}", String::from_utf8_lossy(&raw)),
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{what}: read failed: {e}"),
            Err(_) => panic!("{what}: no answer within {WAIT:?}"),
        }
    }
    parse_http(&raw, what)
}

// ---------------------------------------------------------------------------------------------
// Slow senders
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_line_trickled_byte_by_byte_is_cut_at_the_frame_timeout() {
    // The frame timeout runs from a line's first byte, not from the last byte received: a
    // client that keeps a line alive with a byte every 100 ms is still cut after 1 s.
    let server = Server::start_with(&["--frame-timeout-s", "1"]);
    let s = TcpStream::connect(server.tcp).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let trickler = tokio::spawn(async move {
        let started = Instant::now();
        // 400 bytes at one per 100 ms would take 40 s; the server must stop it long before.
        for _ in 0..400 {
            if wr.write_all(b"x").await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let got = tokio::time::timeout(WAIT, rd.read(&mut buf))
        .await
        .expect("the trickled line was not cut within 20 s");
    let took = started.elapsed();
    assert!(
        matches!(got, Ok(0) | Err(_)),
        "no answer on a frame timeout, only the close: {got:?}"
    );
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the 1 s frame timeout"
    );
    trickler.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stalled_body_is_answered_408_and_closed() {
    let server = Server::start_with(&["--frame-timeout-s", "1"]);
    let mut s = TcpStream::connect(server.http).await.expect("connect");
    // Headers promise 100 bytes; 10 arrive, then nothing.
    s.write_all(
        b"POST /api/v1/execute HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"command\"",
    )
    .await
    .expect("write");
    let (raw, took) = read_to_close(&mut s, "stalled body").await;
    let r = parse_http(&raw, "stalled body");
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&raw));
    assert!(r.head.contains("connection: close"), "{}", r.head);
    assert_eq!(r.body["ok"], json!(false), "{}", r.body);
    assert_eq!(r.body["error"]["code"], json!("BAD_REQUEST"), "{}", r.body);
    assert_eq!(r.body["command"], Value::Null, "{}", r.body);
    assert!(
        took >= Duration::from_millis(800),
        "answered after {took:?}, before the 1 s frame timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_body_trickled_byte_by_byte_is_cut_at_the_frame_timeout() {
    let server = Server::start_with(&["--frame-timeout-s", "1"]);
    let s = TcpStream::connect(server.http).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"POST /api/v1/execute HTTP/1.1\r\nHost: test\r\nContent-Length: 400\r\n\r\n")
        .await
        .expect("write headers");
    let trickler = tokio::spawn(async move {
        // 400 bytes at one per 100 ms would take 40 s.
        for _ in 0..400 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, rd.read_to_end(&mut raw)).await;
    trickler.abort();
    // A reset after the answer is fine; the answer must have come.
    let _ = read.expect("the trickled body was not cut within 20 s");
    let r = parse_http(&raw, "trickled body");
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(r.body["error"]["code"], json!("BAD_REQUEST"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stalled_headers_are_closed_after_the_header_timeout() {
    let server = Server::start_with(&["--http-header-timeout-s", "1"]);
    let mut s = TcpStream::connect(server.http).await.expect("connect");
    s.write_all(b"POST /api/v1/execute HTTP/1.1\r\nHost: test\r\nContent-Le")
        .await
        .expect("write half the headers");
    let (_, took) = read_to_close(&mut s, "stalled headers").await;
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the 1 s header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = Server::start_with(&["--http-header-timeout-s", "1"]);
    let mut s = TcpStream::connect(server.http).await.expect("connect");
    let r = http_keepalive_healthz(&mut s, "first request").await;
    assert_eq!(r.status, 200);
    let (rest, took) = read_to_close(&mut s, "idle keep-alive connection").await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the 1 s header timeout"
    );
}

// ---------------------------------------------------------------------------------------------
// What the timeouts leave alone
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_follow_stream_outlives_the_idle_timeout() {
    // A follower only reads: its connection is client-idle by design and must not be closed
    // for idleness.
    let server = Server::start_with(&["--idle-timeout-s", "1"]);
    let follower = server.operator_client().await;
    let mut tail = follower
        .tail(TailParams {
            from_seq: None,
            follow: true,
        })
        .await
        .expect("LOG.TAIL");
    // Wait past twice the idle timeout, reading whatever comes (the caught-up marker, the
    // tail's own event), so the follower is idle from the client's side.
    let quiet_until = Instant::now() + Duration::from_millis(2500);
    loop {
        let left = quiet_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, tail.next()).await {
            Err(_) => break,
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("the follow stream was closed while the client was idle"),
            Ok(Err(e)) => panic!("the follow stream failed while the client was idle: {e}"),
        }
    }
    // A new event still reaches it.
    let mut c = server.client().await;
    let r = c.call("SYS.INFO", json!({})).await.expect("SYS.INFO");
    assert!(r.ok, "{r:?}");
    let started = Instant::now();
    loop {
        let left = WAIT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tail.next()).await {
            Ok(Ok(Some(TailItem::Event(e)))) if e.command.as_deref() == Some("SYS.INFO") => break,
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("the follow stream was closed for idleness"),
            Ok(Err(e)) => panic!("the follow stream failed: {e}"),
            Err(_) => panic!("the SYS.INFO event did not reach the follower within {WAIT:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-address connection cap
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_one_address_over_its_cap_is_refused_while_another_gets_in() {
    let server = Server::start_with(&["--max-connections-per-ip", "3"]);
    let mut held = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(server.tcp).await.expect("connect");
        assert_tcp_ping(&mut s, &format!("connection {} of 3", i + 1)).await;
        held.push(s);
    }
    // The fourth from the same address: one RATE_LIMITED line, then the close.
    let mut fourth = TcpStream::connect(server.tcp).await.expect("connect");
    let (raw, _) = read_to_close(&mut fourth, "fourth connection").await;
    let text = String::from_utf8(raw).expect("UTF-8");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one line before the close: {text:?}"
    );
    let r = &lines[0];
    assert_eq!(r["error"]["code"], json!("RATE_LIMITED"), "{r}");
    assert_eq!(
        (&r["id"], &r["command"], &r["ok"]),
        (&Value::Null, &Value::Null, &json!(false))
    );
    assert!(r["error"]["retry_after_ms"].as_u64().is_some(), "{r}");

    // Another address is not affected.
    let mut other = connect_from(OTHER, server.tcp).await;
    assert_tcp_ping(&mut other, "a connection from 127.0.0.2").await;
    // Nor are the connections already served.
    for (i, s) in held.iter_mut().enumerate() {
        assert_tcp_ping(s, &format!("held connection {} after the refusal", i + 1)).await;
    }

    // Closing one frees the address's slot (released asynchronously: retry a bounded number of
    // times).
    drop(held.pop());
    let mut admitted = false;
    for _ in 0..50 {
        let mut s = TcpStream::connect(server.tcp).await.expect("connect");
        let mut line = Vec::new();
        s.write_all(b"{\"command\":\"SYS.PING\"}\n")
            .await
            .expect("write");
        let _ = tokio::time::timeout(WAIT, BufReader::new(&mut s).read_until(b'\n', &mut line))
            .await
            .expect("an answer or a close");
        let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
        if v["ok"] == json!(true) {
            admitted = true;
            break;
        }
        assert!(
            line.is_empty() || v["error"]["code"] == json!("RATE_LIMITED"),
            "while waiting for the slot: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        admitted,
        "no connection was admitted after one of three was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_one_address_over_its_cap_gets_429_while_another_gets_in() {
    let server = Server::start_with(&["--max-connections-per-ip", "2"]);
    // Two keep-alive connections, each proven admitted by an answered request.
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(server.http).await.expect("connect");
        let r = http_keepalive_healthz(&mut s, &format!("connection {} of 2", i + 1)).await;
        assert_eq!(r.status, 200);
        held.push(s);
    }
    // The third from the same address is answered 429 with an envelope and closed.
    let mut third = TcpStream::connect(server.http).await.expect("connect");
    third
        .write_all(b"POST /api/v1/execute HTTP/1.1\r\nHost: test\r\nContent-Length: 22\r\n\r\n{\"command\":\"SYS.PING\"}")
        .await
        .expect("write");
    let (raw, _) = read_to_close(&mut third, "third connection").await;
    let r = parse_http(&raw, "third connection");
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&raw));
    assert!(r.head.contains("retry-after:"), "{}", r.head);
    assert_eq!(r.body["error"]["code"], json!("RATE_LIMITED"), "{}", r.body);
    assert_eq!(r.body["ok"], json!(false), "{}", r.body);

    // Another address gets in.
    let mut other = connect_from(OTHER, server.http).await;
    let r = http_keepalive_healthz(&mut other, "a connection from 127.0.0.2").await;
    assert_eq!(r.status, 200);
    // The held connections still work.
    for (i, s) in held.iter_mut().enumerate() {
        let r = http_keepalive_healthz(s, &format!("held connection {}", i + 1)).await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_per_address_cap_refuses_a_65th_connection() {
    // Loopback is not exempt by default: with no settings, one address gets 64 connections.
    let server = Server::start();
    let mut held = Vec::new();
    for i in 0..64 {
        let mut s = TcpStream::connect(server.tcp).await.expect("connect");
        assert_tcp_ping(&mut s, &format!("connection {} of 64", i + 1)).await;
        held.push(s);
    }
    let mut over = TcpStream::connect(server.tcp).await.expect("connect");
    let (raw, _) = read_to_close(&mut over, "65th connection").await;
    let v: Value = serde_json::from_slice(raw.split(|b| *b == b'\n').next().unwrap_or(&[]))
        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {:?}", String::from_utf8_lossy(&raw)));
    assert_eq!(v["error"]["code"], json!("RATE_LIMITED"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// Slowloris: slow senders on one address, and oversized headers
// ---------------------------------------------------------------------------------------------

/// Writes one byte every 100 ms until the server ends the connection (a write or a read fails
/// or sees EOF), within [`WAIT`]; returns whether the server ended it.
async fn trickle_until_cut(mut s: TcpStream, byte: u8) -> bool {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < WAIT {
        if s.write_all(&[byte]).await.is_err() {
            return true;
        }
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Whatever the server says, keep trickling until it closes.
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    false
}

/// Slowloris on loopback, on both transports: one address holding every connection it may have
/// with requests that never finish (headers, or a TCP line, trickled a byte at a time) gets no
/// more, while another address is served at once; the timeouts then cut the trickled
/// connections, and the address is served again. Liveness only: no time is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_one_address_cannot_take_the_slots_of_others() {
    let server = Server::start_with(&[
        "--max-connections-per-ip",
        "3",
        "--http-header-timeout-s",
        "1",
        "--frame-timeout-s",
        "1",
        "--idle-timeout-s",
        "1",
    ]);
    let mut http_trickles = Vec::new();
    let mut tcp_trickles = Vec::new();
    for _ in 0..3 {
        let mut h = TcpStream::connect(server.http).await.expect("connect");
        h.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            .await
            .expect("write");
        http_trickles.push(tokio::spawn(trickle_until_cut(h, b'a')));
        let mut t = TcpStream::connect(server.tcp).await.expect("connect");
        t.write_all(b"{\"command\":\"SYS.PING\",\"id\":\"")
            .await
            .expect("write");
        tcp_trickles.push(tokio::spawn(trickle_until_cut(t, b'a')));
    }
    // The slow address is at its cap on both listeners (the trickled connections were admitted
    // first: each is accepted before the next is opened, and the server reads them at once).
    let mut refused_http = false;
    let mut refused_tcp = false;
    for _ in 0..50 {
        if !refused_http {
            let mut s = TcpStream::connect(server.http).await.expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let (raw, _) = read_to_close(&mut s, "HTTP from the slow address").await;
            refused_http = raw.starts_with(b"HTTP/1.1 429");
        }
        if !refused_tcp {
            let mut s = TcpStream::connect(server.tcp).await.expect("connect");
            let (raw, _) = read_to_close(&mut s, "TCP from the slow address").await;
            refused_tcp = String::from_utf8_lossy(&raw).contains("RATE_LIMITED");
        }
        if refused_http && refused_tcp {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused_http && refused_tcp,
        "http {refused_http}, tcp {refused_tcp}"
    );

    // Another address is served at once, on both.
    let mut other = connect_from(OTHER, server.http).await;
    assert_eq!(
        http_keepalive_healthz(&mut other, "HTTP from 127.0.0.2")
            .await
            .status,
        200
    );
    let mut other = connect_from(OTHER, server.tcp).await;
    assert_tcp_ping(&mut other, "TCP from 127.0.0.2").await;

    // The timeouts cut every trickled connection, however steadily it sends.
    for t in http_trickles.into_iter().chain(tcp_trickles) {
        assert!(
            t.await.expect("trickle task"),
            "a trickled connection was still open after {WAIT:?}"
        );
    }
    // And the slow address is served again (slots free asynchronously: bounded retries).
    let mut served = false;
    for _ in 0..50 {
        let mut s = TcpStream::connect(server.tcp).await.expect("connect");
        s.write_all(b"{\"command\":\"SYS.PING\"}\n")
            .await
            .expect("write");
        let mut line = Vec::new();
        let _ = tokio::time::timeout(WAIT, BufReader::new(&mut s).read_until(b'\n', &mut line))
            .await
            .expect("an answer or a close");
        let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
        if v["ok"] == json!(true) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "127.0.0.1 was not served again after its slow connections were cut"
    );
    let mut again = TcpStream::connect(server.http).await.expect("connect");
    assert_eq!(
        http_keepalive_healthz(&mut again, "HTTP from 127.0.0.1 again")
            .await
            .status,
        200
    );
}

/// Request headers are bounded (32 KiB, request line included): a client that keeps sending
/// header lines is answered `431` and closed as soon as it passes the bound, long before the
/// header timeout, so a slow sender cannot make the server hold more than that per connection.
/// Headers just under the bound are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_headers_over_the_bound_are_refused_before_they_end() {
    // A header timeout far beyond WAIT: only the size bound can end the connection in time.
    let server = Server::start_with(&["--http-header-timeout-s", "120"]);
    let line = format!("X-Pad: {}\r\n", "p".repeat(1000));

    // 30 KiB of headers: served.
    let mut ok = TcpStream::connect(server.http).await.expect("connect");
    let mut req = String::from("GET /healthz HTTP/1.1\r\nHost: test\r\n");
    while req.len() + line.len() < 30 * 1024 {
        req.push_str(&line);
    }
    req.push_str("Connection: close\r\n\r\n");
    ok.write_all(req.as_bytes()).await.expect("write");
    let (raw, _) = read_to_close(&mut ok, "30 KiB of headers").await;
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(200)])
    );

    // Header lines that never end, sent a line at a time: 431 and the close, before 64 KiB.
    for path in ["/healthz", "/api/v1/execute"] {
        let mut s = TcpStream::connect(server.http).await.expect("connect");
        let head = format!("POST {path} HTTP/1.1\r\nHost: test\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        let mut sent = head.len();
        // The server stops reading at the bound; a write may then fail.
        while sent < 64 * 1024 {
            if s.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            sent += line.len();
            tokio::task::yield_now().await;
        }
        let (raw, _) = read_to_close(&mut s, path).await;
        // The answer may be lost to the reset of a close with unread input; if it arrived,
        // it is the 431.
        assert!(
            raw.is_empty() || raw.starts_with(b"HTTP/1.1 431"),
            "{path}: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Slow readers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    // A client that asks for far more than the socket buffers hold and never reads: once the
    // server's writes make no progress for idle_timeout_s, it gives the connection up instead of
    // holding it (and its queued answers) forever.
    let server = server_with_events_to_replay().await;
    // 100 full replays (~45 MB of answers, more than loopback buffers hold), written at once,
    // from a client that then reads nothing.
    const TAILS: usize = 100;
    let token = server.operator_token();
    let mut requests = Vec::new();
    for i in 0..TAILS {
        let line = json!({"id": i, "command": "LOG.TAIL", "params": {"from_seq": 1}, "token": token.expose()});
        requests.extend_from_slice(line.to_string().as_bytes());
        requests.push(b'\n');
    }
    let mut s = TcpStream::connect(server.tcp).await.expect("connect");
    tokio::time::timeout(WAIT, s.write_all(&requests))
        .await
        .expect("requests written in time")
        .expect("write");
    // Not reading, until the server says it gave the connection up (or 20 s have passed: the
    // test then goes on and fails on the count below).
    wait_for_server_line(&server, "closing a connection whose client stopped reading").await;
    // Now read what was delivered before the server gave up: the stream ends before the last
    // replay is complete.
    let (raw, _) = read_to_close(&mut s, "a client that stopped reading").await;
    let ends = replays_completed(&raw);
    assert!(
        ends < TAILS,
        "every one of the {TAILS} replays was delivered ({} bytes): the connection was kept \
         while its client read nothing",
        raw.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    // The HTTP counterpart: pipelined requests for far more than the socket buffers hold, and
    // no reading. The gateway's writes wait at most idle_timeout_s.
    let server = server_with_events_to_replay().await;
    const TAILS: usize = 100;
    let token = server.operator_token();
    let body = json!({"command": "LOG.TAIL", "params": {"from_seq": 1}}).to_string();
    let mut requests = Vec::new();
    for _ in 0..TAILS {
        requests.extend_from_slice(
            format!(
                "POST /api/v1/execute HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                token.expose(),
                body.len()
            )
            .as_bytes(),
        );
    }
    let s = TcpStream::connect(server.http).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    // The server reads one request at a time, so the writes may block: write on the side.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&requests).await;
        // Keep the write half open (a close would be an EOF).
        std::future::pending::<()>().await;
    });
    // Not reading, until the server says it gave the connection up (or 20 s have passed: the
    // test then goes on and fails on the count below).
    wait_for_server_line(
        &server,
        "closing an HTTP connection whose client stopped reading",
    )
    .await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, rd.read_to_end(&mut raw)).await;
    writer.abort();
    // A reset at the end is fine; the connection must have ended.
    let _ = read.expect("the connection did not end within 20 s");
    let ends = replays_completed(&raw);
    assert!(
        ends < TAILS,
        "every one of the {TAILS} replays was delivered ({} bytes): the connection was kept \
         while its client read nothing",
        raw.len()
    );
}

/// A server with an idle timeout of 1 s and 1,000 events in its log to replay.
async fn server_with_events_to_replay() -> Server {
    let server = Server::start_with(&["--idle-timeout-s", "1"]);
    let mut c = server.client().await;
    let infos: Vec<_> = (0..1000u64)
        .map(|i| portcullis_protocol::Request::new("SYS.INFO").id(i))
        .collect();
    let answers = tokio::time::timeout(WAIT, c.pipeline(infos))
        .await
        .expect("requests answered in time")
        .expect("SYS.INFO");
    assert!(answers.iter().all(|r| r.ok));
    server
}

/// Waits (at most 200 × 100 ms) until the server's log holds `needle`.
async fn wait_for_server_line(server: &Server, needle: &str) {
    for _ in 0..200 {
        if server.stderr_text().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many `LOG.TAIL` replays in `raw` (NDJSON lines or HTTP bodies) reached their end line.
fn replays_completed(raw: &[u8]) -> usize {
    raw.split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l.trim_ascii()).ok())
        .filter(|v| v["data"]["end"] == json!(true))
        .count()
}
