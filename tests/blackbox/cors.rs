//! CORS for browser applications on another origin (`cors_allowed_origins`; protocol/framing.md,
//! "CORS"): the exact headers on the wire for listed and unlisted origins, the refusal of a
//! wildcard at start, and real headless Chromium calling the gateway from pages served on two
//! other loopback origins, one listed and one not (tests/browser/cors.mjs).

use crate::harness::{http, run_cli, HttpResponse, Server};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

const LISTED: &str = "http://app.example.test:8080";
const UNLISTED: &str = "http://evil.example.test:8080";

fn cors_headers(r: &HttpResponse) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-"))
        .cloned()
        .collect()
}

async fn preflight(server: &Server, origin: &str) -> HttpResponse {
    http(
        server.http,
        "OPTIONS",
        "/api/v1/execute",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        b"",
    )
    .await
}

async fn ping_from(server: &Server, origin: Option<&str>) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    let body = json!({"command": "SYS.PING"}).to_string();
    http(
        server.http,
        "POST",
        "/api/v1/execute",
        &headers,
        body.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_go_to_listed_origins_only() {
    let server = Server::start_config(
        &format!("cors_allowed_origins = [\"{LISTED}\", \"http://other.example.test\"]\n"),
        &[],
    );

    // A preflight from a listed origin: 204, the origin itself (never `*`), POST, the two
    // headers a page needs, a max-age, `Vary: Origin`, and no credentials.
    let p = preflight(&server, LISTED).await;
    assert_eq!(p.status, 204, "{p:?}");
    assert_eq!(
        p.header("access-control-allow-origin"),
        Some(LISTED),
        "{p:?}"
    );
    assert_eq!(
        p.header("access-control-allow-methods"),
        Some("POST"),
        "{p:?}"
    );
    assert_eq!(
        p.header("access-control-allow-headers"),
        Some("authorization, content-type"),
        "{p:?}"
    );
    assert_eq!(p.header("access-control-max-age"), Some("600"), "{p:?}");
    assert_eq!(p.header("access-control-allow-credentials"), None, "{p:?}");
    assert_eq!(p.header("vary"), Some("origin"), "{p:?}");
    assert!(p.body.is_empty(), "{p:?}");

    // A preflight from an unlisted origin is answered as without CORS: 405, no CORS header.
    for origin in [
        UNLISTED,
        "null",
        "http://app.example.test:8081",
        "HTTP://APP.EXAMPLE.TEST:8080",
    ] {
        let p = preflight(&server, origin).await;
        assert_eq!(p.status, 405, "{origin}: {p:?}");
        assert_eq!(p.header("allow"), Some("POST"), "{origin}: {p:?}");
        assert!(cors_headers(&p).is_empty(), "{origin}: {p:?}");
    }
    // An OPTIONS that is not a preflight (no Access-Control-Request-Method) is not one.
    let plain = http(
        server.http,
        "OPTIONS",
        "/api/v1/execute",
        &[("Origin", LISTED)],
        b"",
    )
    .await;
    assert_eq!(plain.status, 405, "{plain:?}");
    assert!(cors_headers(&plain).is_empty(), "{plain:?}");

    // The answer to a listed origin's POST names that origin; it varies by origin.
    let r = ping_from(&server, Some(LISTED)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["ok"], true, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(LISTED),
        "{r:?}"
    );
    assert_eq!(r.header("access-control-allow-credentials"), None, "{r:?}");
    assert_eq!(r.header("vary"), Some("origin"), "{r:?}");
    // Error answers too (the page must be able to read the envelope).
    let bad = http(
        server.http,
        "POST",
        "/api/v1/execute",
        &[("Origin", LISTED)],
        b"not json",
    )
    .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(
        bad.header("access-control-allow-origin"),
        Some(LISTED),
        "{bad:?}"
    );

    // Unlisted origins and requests without Origin: the command runs (CORS is enforced by
    // browsers, not a server-side filter) but no CORS header is sent.
    for origin in [Some(UNLISTED), None] {
        let r = ping_from(&server, origin).await;
        assert_eq!(r.json()["ok"], true, "{origin:?}: {r:?}");
        assert!(cors_headers(&r).is_empty(), "{origin:?}: {r:?}");
        assert_eq!(r.header("vary"), Some("origin"), "{origin:?}: {r:?}");
    }

    // Other paths never answer CORS.
    let health = http(server.http, "GET", "/healthz", &[("Origin", LISTED)], b"").await;
    assert_eq!(health.status, 200);
    assert!(cors_headers(&health).is_empty(), "{health:?}");
}

#[test]
fn a_wildcard_or_a_non_origin_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (entry, says) in [
        ("*", "wildcards are not supported"),
        ("https://app.example.com/", "\"https://app.example.com\""),
    ] {
        let config = dir.path().join("c.toml");
        std::fs::write(&config, format!("cors_allowed_origins = [\"{entry}\"]\n")).unwrap();
        let data = dir.path().join("data");
        let (code, _, stderr) = run_cli(&[
            "serve",
            "--config",
            &config.to_string_lossy(),
            "--data-dir",
            &data.to_string_lossy(),
            "--tcp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ]);
        assert_ne!(code, 0, "{entry}: {stderr}");
        assert!(stderr.contains("cors_allowed_origins"), "{entry}: {stderr}");
        assert!(stderr.contains(says), "{entry}: {stderr}");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Headless Chromium loads a page from each of two loopback origins (small static servers in
/// the script, on their own ports) and calls the gateway from it: a sign-up (a JSON body, so a
/// preflight) and `USER.ME` with `Authorization: Bearer` (the header must be allowed). From the
/// listed origin both succeed; from the unlisted one the browser refuses (`TypeError`), and the
/// request the preflight would have allowed never reaches the server.
#[test]
fn chromium_calls_execute_from_a_listed_origin_and_is_refused_from_another() {
    let (listed_port, unlisted_port) = (free_port(), free_port());
    let listed = format!("http://localhost:{listed_port}");
    let server = Server::start_config(&format!("cors_allowed_origins = [\"{listed}\"]\n"), &[]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .arg(root.join("tests/browser/cors.mjs"))
        .arg(format!("http://127.0.0.1:{}", server.http.port()))
        .arg(listed_port.to_string())
        .arg(unlisted_port.to_string())
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();

    let ok = &report["listed"];
    assert_eq!(ok["origin"], listed.as_str(), "{report}");
    assert_eq!(ok["signup"]["ok"], true, "{report}");
    assert_eq!(ok["me"]["ok"], true, "{report}");
    assert_eq!(ok["me"]["data"]["email"], ok["email"], "{report}");

    let refused = &report["unlisted"];
    assert_eq!(
        refused["origin"],
        format!("http://localhost:{unlisted_port}").as_str(),
        "{report}"
    );
    assert_eq!(refused["signup"]["error"], "TypeError", "{report}");
    assert_eq!(refused["me"]["error"], "TypeError", "{report}");

    // The server saw one sign-up: the refused page's never got past the preflight.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let signups = rt.block_on(async {
        let mut op = server.operator_client().await;
        let r: Value = op
            .call_ok("LOG.QUERY", json!({"command": "AUTH.SIGNUP", "limit": 100}))
            .await
            .unwrap();
        r["events"].as_array().unwrap().len()
    });
    assert_eq!(signups, 1, "{report}");
}
