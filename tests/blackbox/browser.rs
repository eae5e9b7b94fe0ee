//! Passkeys in a real browser: Debian's headless Chromium, driven by playwright-core over the
//! DevTools protocol with a virtual WebAuthn authenticator, against a real `portcullis serve`,
//! through the demo page. The script is tests/browser/passkey.mjs; `scripts/test` installs
//! Chromium and the driver.

use crate::harness::Server;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

#[test]
fn the_demo_page_signs_up_registers_a_passkey_and_signs_in_with_it() {
    // The relying party's origin must name the page's port, so choose it before starting.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!("rp_id = \"localhost\"\nrp_origins = [\"http://localhost:{port}\"]\n"),
    )
    .unwrap();
    let http = format!("127.0.0.1:{port}");
    let server = Server::start_with(&["--config", &config.to_string_lossy(), "--http", &http]);
    assert_eq!(server.http.port(), port);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/passkey.mjs");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("passkey-demo-signed-in.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://localhost:{port}"))
        .arg(&shot)
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(report["ok"], true);
    let png = std::fs::read(&shot).expect("a screenshot of the signed-in page");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // The server saw it all: registration and both passkey sign-ins are in the log, and no
    // credential private material or full attestation blob is.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events: serde_json::Value = rt.block_on(async {
        let mut op = server.operator_client().await;
        op.call_ok("LOG.QUERY", serde_json::json!({"limit": 1000}))
            .await
            .unwrap()
    });
    let names: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["summary"]["event"].as_str())
        .collect();
    assert!(
        names.iter().any(|n| n.contains("passkey.registered")),
        "{names:?}"
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| n.contains("passkey.verified"))
            .count(),
        2,
        "{names:?}"
    );
    let text = events.to_string();
    assert!(!text.contains("attestationObject") && !text.contains("clientDataJSON"));
}
