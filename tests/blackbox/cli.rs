//! The CLI as an operator uses it: `exec`, configuration precedence, startup errors.

use crate::harness::{run_cli, Server, BIN};
use serde_json::Value;
use std::process::Command;

fn exec(server: &Server, args: &[&str]) -> (i32, Value, String) {
    let addr = server.tcp.to_string();
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--addr", &addr]);
    let (code, out, err) = run_cli(&all);
    let v = serde_json::from_str(&out).unwrap_or(Value::Null);
    (code, v, format!("{out}{err}"))
}

#[test]
fn exec_prints_the_envelope_and_exits_by_outcome() {
    let server = Server::start();
    let (code, v, _) = exec(&server, &["SYS.PING"]);
    assert_eq!(code, 0);
    assert_eq!(v["data"]["pong"], true);

    let (code, out, _) = run_cli(&[
        "exec",
        "SYS.PING",
        "--raw",
        "--addr",
        &server.tcp.to_string(),
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "--raw prints one line: {out}");

    let (code, v, _) = exec(&server, &["NOPE.NOPE"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["code"], "UNKNOWN_COMMAND");

    let (code, v, _) = exec(&server, &["SYS.PING", r#"{"x":1}"#]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["code"], "INVALID_PARAMS");

    let (code, _, all) = exec(&server, &["SYS.PING", "not json"]);
    assert_eq!(code, 2, "unusable params are a usage error: {all}");

    let (code, v, _) = exec(&server, &["LOG.VERIFY"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (1, Some("UNAUTHENTICATED"))
    );

    let token = server.operator_token();
    let (code, v, _) = exec(&server, &["LOG.VERIFY", "--token", token.expose()]);
    assert_eq!(code, 0);
    assert_eq!(v["data"]["valid"], true);

    let out = Command::new(BIN)
        .args(["exec", "LOG.VERIFY", "--addr", &server.tcp.to_string()])
        .env("PORTCULLIS_TOKEN", token.expose())
        .output()
        .unwrap();
    assert!(out.status.success(), "PORTCULLIS_TOKEN is read");
}

/// Flag > environment > file > default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_file_env_and_flags_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, "max_frame_bytes = 2048\nmax_connections = 3\n").unwrap();
    let file = file.to_string_lossy().into_owned();

    let line = |n: usize| -> Vec<u8> {
        let pad = " ".repeat(n - r#"{"command":"SYS.PING"}"#.len());
        format!("{{\"command\":\"SYS.PING\"{pad}}}\n").into_bytes()
    };
    async fn answer(server: &Server, bytes: &[u8]) -> Option<String> {
        let mut c = server.client().await;
        c.send_raw(bytes).await.unwrap();
        c.read_response().await.ok().map(|r| {
            r.error_code()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_else(|| "ok".into())
        })
    }

    // File only: 2048.
    let s = Server::start_with(&["--config", &file]);
    assert_eq!(answer(&s, &line(2048)).await.as_deref(), Some("ok"));
    assert_eq!(
        answer(&s, &line(3000)).await.as_deref(),
        Some("FRAME_TOO_LARGE")
    );
    drop(s);

    // Environment beats the file.
    let s = Server::start_env(
        &["--config", &file],
        &[("PORTCULLIS_MAX_FRAME_BYTES", "4096")],
    );
    assert_eq!(answer(&s, &line(3000)).await.as_deref(), Some("ok"));
    assert_eq!(
        answer(&s, &line(5000)).await.as_deref(),
        Some("FRAME_TOO_LARGE")
    );
    drop(s);

    // A flag beats the environment.
    let s = Server::start_env(
        &["--config", &file, "--max-frame-bytes", "1024"],
        &[("PORTCULLIS_MAX_FRAME_BYTES", "4096")],
    );
    assert_eq!(
        answer(&s, &line(3000)).await.as_deref(),
        Some("FRAME_TOO_LARGE")
    );
}

#[test]
fn bad_configuration_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "max_frame_bytez = 1\n").unwrap();
    let data = dir.path().join("data");
    let (code, _, err) = run_cli(&[
        "serve",
        "--config",
        &file.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("max_frame_bytez"), "{err}");

    let (code, _, err) = run_cli(&[
        "serve",
        "--max-frame-bytes",
        "10",
        "--data-dir",
        &data.to_string_lossy(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("max_frame_bytes"), "{err}");

    // The store's cache: from the environment, refused outside its range.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--data-dir", &data.to_string_lossy()])
        .env("PORTCULLIS_STORE_CACHE_MB", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("store_cache_mb"), "{err}");

    let (code, _, err) = run_cli(&[
        "log",
        "verify",
        "--data-dir",
        &dir.path().join("nothing").to_string_lossy(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no Portcullis database"), "{err}");
}
