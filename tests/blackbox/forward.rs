//! Trusted backends that speak for their end users: the envelope's `client` member and the API
//! key scope `client:forward`, over both transports.

use crate::harness::{all_events, as_user, http, signup, Server};
use crate::mail::Inbox;
use portcullis_client::Client;
use portcullis_protocol::{ErrorCode, ForwardedClient, Request, RequestId, Response, Secret};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};

const PW: &str = "correct horse battery staple";

/// A fresh API key with `scopes`, and its id.
async fn key(server: &Server, scopes: &[&str]) -> (String, String) {
    let mut op = server.operator_client().await;
    let k: Value = op
        .call_ok(
            "APIKEY.CREATE",
            json!({"name": "app backend", "scopes": scopes}),
        )
        .await
        .unwrap();
    (
        k["key"].as_str().unwrap().to_owned(),
        k["id"].as_str().unwrap().to_owned(),
    )
}

fn end_user(ip: &str) -> ForwardedClient {
    ForwardedClient::new(ip.parse::<IpAddr>().unwrap())
}

/// One request over TCP with `token` and, when given, the end user's `client`.
async fn tcp(
    c: &mut Client,
    token: Option<&str>,
    client: Option<ForwardedClient>,
    command: &str,
    params: Value,
) -> Response {
    let mut req = Request::new(command).params(params);
    if let Some(t) = token {
        req = req.token(Secret::new(t));
    }
    if let Some(client) = client {
        req = req.client(client);
    }
    c.send(req).await.unwrap()
}

/// One `POST /api/v1/execute` with the token in the `Authorization` header, the `client` member
/// in the body, and a `User-Agent` header of the backend's own.
async fn over_http(addr: SocketAddr, token: Option<&str>, body: Value) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("User-Agent", "backend-http/1.0"),
    ];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = http(
        addr,
        "POST",
        "/api/v1/execute",
        &headers,
        body.to_string().as_bytes(),
    )
    .await;
    serde_json::from_value(r.json()).unwrap()
}

/// A credential-class command that costs the server no password hash.
fn bogus_refresh() -> Value {
    json!({"refresh_token": "prt_not-a-real-refresh-token"})
}

#[track_caller]
fn assert_code(r: &Response, code: Option<ErrorCode>, what: &str) {
    assert_eq!(r.error_code(), code, "{what}: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backend_speaks_for_many_end_users_each_limited_alone() {
    let server = Server::start_config("[rate_limits]\ncredential = \"5/min\"\n", &[]);
    let (fwd, _) = key(&server, &["client:forward"]).await;
    let mut c = server.client().await;
    // 200 end users behind one backend address, each signing in a few times: none is limited.
    for i in 0..200u32 {
        let ip = format!("198.51.{}.{}", 100 + i / 100, i % 100 + 1);
        for attempt in 0..2 {
            let r = if (i + attempt) % 2 == 0 {
                tcp(
                    &mut c,
                    Some(&fwd),
                    Some(end_user(&ip)),
                    "AUTH.REFRESH",
                    bogus_refresh(),
                )
                .await
            } else {
                over_http(
                    server.http,
                    Some(&fwd),
                    json!({"command": "AUTH.REFRESH", "params": bogus_refresh(), "client": {"ip": ip}}),
                )
                .await
            };
            assert_code(
                &r,
                Some(ErrorCode::InvalidCredentials),
                &format!("end user {ip}, attempt {attempt}"),
            );
        }
    }
    // One end user is held to the per-address limit like any client, on both transports.
    let one = "203.0.113.9";
    for n in 0..5 {
        let r = tcp(
            &mut c,
            Some(&fwd),
            Some(end_user(one)),
            "AUTH.REFRESH",
            bogus_refresh(),
        )
        .await;
        assert_code(&r, Some(ErrorCode::InvalidCredentials), &format!("try {n}"));
    }
    let r = tcp(
        &mut c,
        Some(&fwd),
        Some(end_user(&format!("::ffff:{one}"))),
        "AUTH.REFRESH",
        bogus_refresh(),
    )
    .await;
    assert_code(
        &r,
        Some(ErrorCode::RateLimited),
        "the sixth try over TCP, written as IPv4-mapped IPv6",
    );
    assert!(r.error.as_ref().unwrap().retry_after_ms.unwrap() >= 1);
    let r = over_http(
        server.http,
        Some(&fwd),
        json!({"command": "AUTH.REFRESH", "params": bogus_refresh(), "client": {"ip": one}}),
    )
    .await;
    assert_code(
        &r,
        Some(ErrorCode::RateLimited),
        "the seventh try over HTTP",
    );
    // The backend's own address kept its own budget, and it still applies without `client`.
    for n in 0..5 {
        let r = tcp(&mut c, Some(&fwd), None, "AUTH.REFRESH", bogus_refresh()).await;
        assert_code(
            &r,
            Some(ErrorCode::InvalidCredentials),
            &format!("own try {n}"),
        );
    }
    let r = tcp(&mut c, Some(&fwd), None, "AUTH.REFRESH", bogus_refresh()).await;
    assert_code(
        &r,
        Some(ErrorCode::RateLimited),
        "the backend's own sixth try",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_has_a_forwarding_budget_of_its_own() {
    let server = Server::start_config("[rate_limits]\nforward = \"3/min\"\n", &[]);
    let (fwd, _) = key(&server, &["client:forward"]).await;
    let (other, _) = key(&server, &["client:forward"]).await;
    let mut c = server.client().await;
    for i in 0..3 {
        let r = tcp(
            &mut c,
            Some(&fwd),
            Some(end_user(&format!("192.0.2.{i}"))),
            "SYS.INFO",
            json!({}),
        )
        .await;
        assert!(r.ok, "{r:?}");
    }
    let r = over_http(
        server.http,
        Some(&fwd),
        json!({"command": "SYS.INFO", "client": {"ip": "192.0.2.77"}}),
    )
    .await;
    assert_code(&r, Some(ErrorCode::RateLimited), "the key's fourth forward");
    assert!(r.error.as_ref().unwrap().retry_after_ms.unwrap() >= 1);
    // The budget is the key's: its own requests and another key's forwards still pass.
    let r = tcp(&mut c, Some(&fwd), None, "SYS.INFO", json!({})).await;
    assert!(r.ok, "{r:?}");
    let r = tcp(
        &mut c,
        Some(&other),
        Some(end_user("192.0.2.77")),
        "SYS.INFO",
        json!({}),
    )
    .await;
    assert!(r.ok, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_key_with_the_scope_speaks_for_someone_and_nothing_counts_against_them() {
    let server = Server::start_config("[rate_limits]\ncredential = \"4/min\"\n", &[]);
    let (fwd, fwd_id) = key(&server, &["client:forward"]).await;
    let (reader, reader_id) = key(&server, &["users:read", "log:read"]).await;
    let operator = server.operator_token();
    let mut c = server.client().await;
    // One credential-class request from the backend's address: 3 left there.
    let user = signup(&mut c, "someone@example.org", Some(PW)).await;
    let claimed = "203.0.113.50";
    let body = |token_in_body: Option<&str>| {
        let mut b = json!({"id": "r", "command": "AUTH.REFRESH", "params": bogus_refresh(), "client": {"ip": claimed}});
        if let Some(t) = token_in_body {
            b["token"] = json!(t);
        }
        b
    };
    // A key without the scope, the operator token, a user's access token: FORBIDDEN, each
    // counted against the sender's own address.
    let r = tcp(
        &mut c,
        Some(&reader),
        Some(end_user(claimed)),
        "AUTH.REFRESH",
        bogus_refresh(),
    )
    .await;
    assert_code(&r, Some(ErrorCode::Forbidden), "a key without the scope");
    let r = over_http(server.http, Some(operator.expose()), body(None)).await;
    assert_code(&r, Some(ErrorCode::Forbidden), "the operator token");
    let r = tcp(
        &mut c,
        Some(user.access_token.expose()),
        Some(end_user(claimed)),
        "AUTH.REFRESH",
        bogus_refresh(),
    )
    .await;
    assert_code(&r, Some(ErrorCode::Forbidden), "a user's access token");
    // The sender's own budget is spent now: the next refusal is RATE_LIMITED.
    let r = over_http(server.http, None, body(None)).await;
    assert_code(
        &r,
        Some(ErrorCode::RateLimited),
        "no token, over the sender's budget",
    );
    // A key that is not valid is UNAUTHENTICATED (here: still over the sender's budget, which
    // it cannot dodge either).
    let r = tcp(
        &mut c,
        Some("pk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some(end_user(claimed)),
        "AUTH.REFRESH",
        bogus_refresh(),
    )
    .await;
    assert_code(&r, Some(ErrorCode::RateLimited), "an unknown key");

    // Nothing was counted against the claimed address: its whole budget is there.
    for n in 0..4 {
        let r = over_http(server.http, Some(&fwd), body(None)).await;
        assert_code(
            &r,
            Some(ErrorCode::InvalidCredentials),
            &format!("forwarded try {n}"),
        );
    }
    let r = tcp(
        &mut c,
        Some(&fwd),
        Some(end_user(claimed)),
        "AUTH.REFRESH",
        bogus_refresh(),
    )
    .await;
    assert_code(&r, Some(ErrorCode::RateLimited), "the fifth forwarded try");

    // The refusals are recorded with the sender's address, never the claimed one.
    let events = all_events(&server).await;
    let refresh: Vec<&Value> = events
        .iter()
        .filter(|e| e["command"] == "AUTH.REFRESH")
        .collect();
    assert_eq!(refresh.len(), 10, "{refresh:#?}");
    for e in &refresh[..5] {
        let client = e["client"].as_str().unwrap();
        assert!(client.starts_with("127.0.0.1:"), "{e}");
        assert!(e["summary"].get("forwarded_by").is_none(), "{e}");
    }
    assert_eq!(refresh[0]["outcome"], "FORBIDDEN");
    assert_eq!(refresh[0]["actor"], format!("apikey:{reader_id}"));
    assert_eq!(
        refresh[1]["actor"], "anonymous",
        "the operator token is not examined"
    );
    assert_eq!(refresh[2]["actor"], "anonymous", "nor is an access token");
    for e in &refresh[5..] {
        assert_eq!(e["client"], format!("{claimed}:0"), "{e}");
        assert_eq!(e["actor"], format!("apikey:{fwd_id}"), "{e}");
        assert_eq!(e["summary"]["forwarded_by"], fwd_id.as_str(), "{e}");
        assert_eq!(e["summary"]["forwarded_from"], "127.0.0.1", "{e}");
    }
    // A key without the scope is refused even for commands its scopes open.
    let mut c2 = server.client().await;
    let r = tcp(
        &mut c2,
        Some(&reader),
        Some(end_user(claimed)),
        "ADMIN.USER.GET",
        json!({"user_id": user.user_id}),
    )
    .await;
    assert_code(&r, Some(ErrorCode::Forbidden), "users:read with client");
    let r = tcp(
        &mut c2,
        Some(&reader),
        None,
        "ADMIN.USER.GET",
        json!({"user_id": user.user_id}),
    )
    .await;
    assert!(r.ok, "without client the key works: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_events_and_links_show_the_end_user() {
    let server = Server::start();
    let (fwd, fwd_id) = key(&server, &["client:forward"]).await;
    let mut c = server.client().await;
    // A sign-up over TCP for an IPv4 end user, a sign-in over HTTP for an IPv6 one.
    let r = tcp(
        &mut c,
        Some(&fwd),
        Some(end_user("203.0.113.9").user_agent("Mozilla/5.0 (end user one)")),
        "AUTH.SIGNUP",
        json!({"email": "one@example.org", "password": PW}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let one = Secret::new(r.data["access_token"].as_str().unwrap());
    let r = over_http(
        server.http,
        Some(&fwd),
        json!({"command": "AUTH.LOGIN", "params": {"email": "one@example.org", "password": PW},
               "client": {"ip": "2001:db8::7", "user_agent": "Mozilla/5.0 (end user two)"}}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let r = as_user(&mut c, &one, "SESSION.LIST", json!({})).await;
    assert!(r.ok, "{r:?}");
    let sessions = r.data["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    let by_agent = |agent: &str| {
        sessions
            .iter()
            .find(|s| s["user_agent"] == agent)
            .unwrap_or_else(|| panic!("no session with agent {agent}: {sessions:#?}"))
            .clone()
    };
    assert_eq!(
        by_agent("Mozilla/5.0 (end user one)")["client"],
        "203.0.113.9:0"
    );
    assert_eq!(
        by_agent("Mozilla/5.0 (end user two)")["client"],
        "[2001:db8::7]:0"
    );
    // A forwarded client without an agent leaves the agent unknown, not the backend's.
    let r = over_http(
        server.http,
        Some(&fwd),
        json!({"command": "AUTH.LOGIN", "params": {"email": "one@example.org", "password": PW},
               "client": {"ip": "192.0.2.5"}}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let r = as_user(&mut c, &one, "SESSION.LIST", json!({})).await;
    let third = r.data["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["client"] == "192.0.2.5:0")
        .cloned()
        .unwrap_or_else(|| panic!("{r:?}"));
    assert!(third["user_agent"].is_null(), "{third}");

    // A link asked for on behalf of an end user names that end user on its landing page.
    let mut inbox = Inbox::outbox(&server.data_dir);
    let r = tcp(
        &mut c,
        Some(&fwd),
        Some(end_user("198.51.100.23").user_agent("EndUserBrowser/9")),
        "MAGIC.SEND",
        json!({"email": "one@example.org"}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let mail = inbox.next_to("one@example.org").await;
    let link = mail.link();
    let after_scheme = link.split_once("://").map_or(link.as_str(), |(_, r)| r);
    let path = &after_scheme[after_scheme.find('/').unwrap()..];
    let page = http(server.http, "GET", path, &[], b"").await;
    let body = String::from_utf8_lossy(&page.body);
    assert!(body.contains("198.51.100.23"), "{body}");
    assert!(body.contains("EndUserBrowser/9"), "{body}");
    assert!(!body.contains("127.0.0.1"), "{body}");

    // Events carry the end user's address and name the key.
    let events = all_events(&server).await;
    for (command, client) in [
        ("AUTH.SIGNUP", "203.0.113.9:0"),
        ("AUTH.LOGIN", "[2001:db8::7]:0"),
        ("MAGIC.SEND", "198.51.100.23:0"),
    ] {
        let e = events
            .iter()
            .find(|e| e["command"] == command && e["outcome"] == "ok")
            .unwrap_or_else(|| panic!("no {command} event"));
        assert_eq!(e["client"], client, "{e}");
        assert_eq!(e["actor"], format!("apikey:{fwd_id}"), "{e}");
        assert_eq!(e["summary"]["forwarded_by"], fwd_id.as_str(), "{e}");
        assert_eq!(e["summary"]["forwarded_from"], "127.0.0.1", "{e}");
        assert_eq!(
            e["transport"],
            if command == "AUTH.LOGIN" {
                "http"
            } else {
                "tcp"
            }
        );
    }
    // The operator's own LOG.QUERY went without `client`: its events keep the peer address.
    let q = events
        .iter()
        .find(|e| e["command"] == "APIKEY.CREATE")
        .unwrap();
    assert!(
        q["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{q}"
    );
    assert!(q["summary"].get("forwarded_by").is_none(), "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_members_are_bad_requests_on_both_transports() {
    let server = Server::start();
    let (fwd, _) = key(&server, &["client:forward"]).await;
    let long = "a".repeat(1025);
    let bad = [
        json!({}),
        json!("203.0.113.9"),
        json!(["203.0.113.9"]),
        json!({"ip": 3405803785u64}),
        json!({"ip": "203.0.113.9:443"}),
        json!({"ip": "[2001:db8::1]"}),
        json!({"ip": "fe80::1%eth0"}),
        json!({"ip": "203.0.113"}),
        json!({"ip": "localhost"}),
        json!({"ip": "203.0.113.9", "port": 1}),
        json!({"ip": "203.0.113.9", "user_agent": 7}),
        json!({"ip": "203.0.113.9", "user_agent": "two\r\nlines"}),
        json!({"ip": "203.0.113.9", "user_agent": long}),
        json!({"user_agent": "no address"}),
    ];
    let mut c = server.client().await;
    for client in &bad {
        let body = json!({"id": 5, "command": "SYS.INFO", "token": fwd, "client": client});
        c.send_raw(format!("{body}\n").as_bytes()).await.unwrap();
        let r = c.read_response().await.unwrap();
        assert_code(&r, Some(ErrorCode::BadRequest), &format!("tcp {client}"));
        assert_eq!(r.command, None);
        assert_eq!(r.id, Some(RequestId::from(5u64)), "{r:?}");
        let mut http_body = body.clone();
        http_body.as_object_mut().unwrap().remove("token");
        let r = over_http(server.http, Some(&fwd), http_body).await;
        assert_code(&r, Some(ErrorCode::BadRequest), &format!("http {client}"));
    }
    // A repeated member is refused too (written by hand: a JSON map cannot hold it).
    let line = format!(
        r#"{{"id":6,"command":"SYS.INFO","token":"{fwd}","client":{{"ip":"192.0.2.1","ip":"203.0.113.9"}}}}"#
    );
    c.send_raw(format!("{line}\n").as_bytes()).await.unwrap();
    let r = c.read_response().await.unwrap();
    assert_code(&r, Some(ErrorCode::BadRequest), "a repeated ip");
    // `null` is no client at all; the longest agent is accepted and kept cut to 256 characters.
    let r = over_http(
        server.http,
        Some(&fwd),
        json!({"command": "SYS.INFO", "client": null}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let longest = "b".repeat(1024);
    let r = tcp(
        &mut c,
        Some(&fwd),
        Some(end_user("::1").user_agent(longest)),
        "SYS.INFO",
        json!({}),
    )
    .await;
    assert!(r.ok, "{r:?}");
}
