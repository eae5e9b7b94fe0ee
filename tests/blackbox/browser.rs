//! The demo account console in a real browser: Debian's headless Chromium, driven by
//! playwright-core over the DevTools protocol with a virtual WebAuthn authenticator, against a
//! real `portcullis serve`. Every flow of the console runs: sign-up; sign-in by password, by
//! magic link (the waiting tab completes by poll while a second tab approves), by email code and
//! by passkey (by address, usernameless, and from autofill); TOTP enrolment from its QR code;
//! recovery codes; the second-factor prompt (app code, recovery code, passkey); the session list
//! with revoke; sign-out. The script is tests/browser/console.mjs; it reads the mail from the
//! data directory's outbox and leaves a screenshot per step in
//! `target/browser-artifacts/console/NN-step.png`. `scripts/test` installs Chromium and the
//! driver.

use crate::harness::Server;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// The `summary.event` of every event, in order.
fn event_names(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "{} {} {}",
                        e["command"].as_str().unwrap_or(""),
                        e["outcome"].as_str().unwrap_or(""),
                        e["summary"]["event"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn count(names: &[String], command: &str, event_part: &str) -> usize {
    names
        .iter()
        .filter(|n| n.starts_with(&format!("{command} ")) && n.contains(event_part))
        .count()
}

#[test]
fn the_demo_console_runs_every_flow_in_chromium() {
    // The relying party's origin and the links in the mail must name the page's port, so choose
    // it before starting.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "rp_id = \"localhost\"\nrp_origins = [\"http://localhost:{port}\"]\n\
             public_url = \"http://localhost:{port}\"\n\
             send_cooldown_s = 0\nsends_per_address_per_hour = 100\n"
        ),
    )
    .unwrap();
    let http = format!("127.0.0.1:{port}");
    let server = Server::start_with(&["--config", &config.to_string_lossy(), "--http", &http]);
    assert_eq!(server.http.port(), port);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/console.mjs");
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .join("browser-artifacts/console");
    let _ = std::fs::remove_dir_all(&artifacts);
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://localhost:{port}"))
        .arg(&server.data_dir)
        .arg(&artifacts)
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed (screenshots in {}):\n{stdout}\n{stderr}",
        artifacts.display()
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let email = report["email"].as_str().unwrap().to_owned();

    // A screenshot per step, each a PNG, numbered in order.
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(steps.len() >= 20, "{steps:?}");
    for (i, step) in steps.iter().enumerate() {
        let file = artifacts.join(format!("{:02}-{step}.png", i + 1));
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", file.display());
    }

    // What the server recorded: every flow of the console, by command and event.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events: Value = rt.block_on(async {
        let mut op = server.operator_client().await;
        op.call_ok("LOG.QUERY", json!({"limit": 1000}))
            .await
            .unwrap()
    });
    let names = event_names(&events);
    let expect = [
        ("AUTH.SIGNUP", "session.created", 1),
        ("AUTH.LOGIN", "session.created", 1),
        ("MAGIC.SEND", "", 3),
        ("MAGIC.VERIFY", "session.created", 1),
        ("MAGIC.APPROVE", "", 2),
        ("MAGIC.POLL", "session.created", 1),
        ("MAGIC.POLL", "mfa.required", 1),
        ("OTP.SEND", "", 3),
        ("OTP.VERIFY", "session.created", 1),
        ("OTP.VERIFY", "mfa.required", 2),
        ("PASSKEY.REGISTER.FINISH", "passkey.registered", 1),
        ("PASSKEY.LOGIN.FINISH", "passkey.verified", 4),
        ("TOTP.ENROLL", "", 1),
        ("TOTP.CONFIRM", "", 1),
        ("RECOVERY.REGENERATE", "", 1),
        ("MFA.VERIFY", "", 3),
        ("SESSION.REVOKE", "", 1),
    ];
    for (command, event, n) in expect {
        let ok: Vec<&String> = names
            .iter()
            .filter(|e| e.starts_with(&format!("{command} ")))
            .collect();
        assert!(
            count(&names, command, event) >= n && !ok.is_empty(),
            "{command} {event}: expected at least {n}\n{names:#?}"
        );
    }
    // Nothing was refused but the deliberate: the MFA_REQUIRED answers, the waiting tab's poll
    // of the link the landing page used on the same device, and the revoked tab's last tries
    // (its access token, then its refresh token) before it showed "Signed out".
    let refused: Vec<&str> = names
        .iter()
        .filter(|n| !n.contains(" ok ") && !n.contains("MFA_REQUIRED"))
        .map(|n| n.trim_end())
        .collect();
    assert_eq!(
        refused,
        [
            "MAGIC.POLL ALREADY_USED magic.rejected",
            "USER.ME UNAUTHENTICATED",
            "AUTH.REFRESH INVALID_CREDENTIALS"
        ],
        "{names:#?}"
    );
    // The session revoked from the list is the one the second tab started.
    let revoked = report["revoked"].as_str().unwrap();
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["command"] == "SESSION.REVOKE" && e.to_string().contains(revoked)));
    // No secret reached the log: the codes, links and credentials stay out of it.
    let text = events.to_string();
    assert!(!text.contains("attestationObject") && !text.contains("clientDataJSON"));
    assert!(!text.contains("code_verifier") && !text.contains("prt_"));
    assert!(!text.contains(&email), "addresses are logged hashed");
}

#[tokio::test]
async fn the_console_and_its_scripts_come_from_the_server_under_a_strict_policy() {
    let server = Server::start();
    let page = crate::harness::http(server.http, "GET", "/demo", &[], b"").await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    // Scripts only from this origin, no inline script; the one addition for the console is
    // `data:` images (the TOTP QR code).
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(csp.contains("img-src data:;"), "{csp}");
    assert!(!csp.contains("unsafe-eval") && !csp.contains("script-src 'self' 'unsafe-inline'"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    // HSTS only over HTTPS (tls.rs checks it is there).
    assert_eq!(page.header("strict-transport-security"), None);
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains(r#"<script type="module" src="demo/demo.js"></script>"#));
    assert_eq!(html.matches("<script").count(), 1, "no inline script");

    // The console's module and the SDK bundle it imports: the bundle is the SDK's build, byte
    // for byte (sdk/typescript/test/bundle.test.mjs holds the asset to a fresh build).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle = std::fs::read(root.join("crates/server/assets/portcullis-client.js")).unwrap();
    for path in ["/demo/portcullis-client.js", "/auth/portcullis-client.js"] {
        let r = crate::harness::http(server.http, "GET", path, &[], b"").await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(r.body, bundle, "{path}");
    }
    let script = crate::harness::http(server.http, "GET", "/demo/demo.js", &[], b"").await;
    assert_eq!(script.status, 200);
    assert!(String::from_utf8_lossy(&script.body).contains("from \"./portcullis-client.js\""));

    // The landing page keeps the stricter policy (no images).
    let landing = crate::harness::http(server.http, "GET", "/auth/magic?token=x", &[], b"").await;
    assert_eq!(landing.status, 410);
    let csp = landing.header("content-security-policy").unwrap();
    assert!(!csp.contains("img-src"), "{csp}");
}
