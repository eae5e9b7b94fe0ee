//! Second factors through the real binary, checked against independent TOTP implementations:
//! Debian's `oathtool` and Python's `pyotp` reading the enrolment's otpauth URI.

use crate::harness::Server;
use portcullis_client::Client;
use portcullis_protocol::{ErrorCode, Request, Response, Secret};
use serde_json::{json, Value};
use std::process::Command;

const PW: &str = "correct horse battery staple";

async fn as_user(c: &mut Client, token: &str, command: &str, params: Value) -> Response {
    c.send(
        Request::new(command)
            .params(params)
            .token(Secret::new(token)),
    )
    .await
    .unwrap()
}

fn oathtool(secret_b32: &str) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", secret_b32])
        .output()
        .expect("oathtool is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn pyotp_now(uri: &str) -> String {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, pyotp; print(pyotp.parse_uri(sys.argv[1]).now())",
            uri,
        ])
        .output()
        .expect("python3 with pyotp is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Waits (bounded) until the next 30 s step begins, so two codes from independent tools fall in
/// distinct steps.
async fn next_step() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = now.as_millis() % 30_000;
    tokio::time::sleep(std::time::Duration::from_millis(
        u64::try_from(30_000 - into).unwrap() + 50,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_codes_from_oathtool_and_pyotp_are_accepted_once() {
    let server = Server::start();
    let mut c = server.client().await;
    let s: Value = c
        .call_ok(
            "AUTH.SIGNUP",
            json!({"email": "otp@example.org", "password": PW}),
        )
        .await
        .unwrap();
    let access = s["access_token"].as_str().unwrap().to_owned();
    let e = as_user(&mut c, &access, "TOTP.ENROLL", json!({})).await;
    assert!(e.ok, "{e:?}");
    let secret = e.data["secret"].as_str().unwrap().to_owned();
    let uri = e.data["otpauth_uri"].as_str().unwrap().to_owned();
    // SHA-1, 6 digits and 30 s are the otpauth defaults: absent, or stated as such.
    for (k, v) in [("algorithm", "SHA1"), ("digits", "6"), ("period", "30")] {
        assert!(
            !uri.contains(&format!("{k}=")) || uri.contains(&format!("{k}={v}")),
            "{uri}"
        );
    }
    assert!(
        uri.starts_with("otpauth://totp/Portcullis:otp%40example.org?")
            && uri.contains("issuer=Portcullis"),
        "{uri}"
    );

    // Confirm with oathtool's code.
    let code = oathtool(&secret);
    let r = as_user(
        &mut c,
        &access,
        "TOTP.CONFIRM",
        json!({"enrollment_id": e.data["enrollment_id"], "code": code}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let recovery = r_codes(&r);
    assert_eq!(recovery.len(), 10);

    // Sign in with pyotp's code (from the URI alone), in the next step.
    next_step().await;
    let r = c
        .call(
            "AUTH.LOGIN",
            json!({"email": "otp@example.org", "password": PW}),
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::MfaRequired));
    let d = r.error.unwrap().details.unwrap();
    let code = pyotp_now(&uri);
    assert_eq!(
        code,
        oathtool(&secret),
        "two independent implementations agree"
    );
    let v = c
        .call(
            "MFA.VERIFY",
            json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code}),
        )
        .await
        .unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.data["amr"], json!(["pwd", "otp", "mfa"]));

    // The same code again, on a fresh sign-in: refused (the step was used).
    let r = c
        .call(
            "AUTH.LOGIN",
            json!({"email": "otp@example.org", "password": PW}),
        )
        .await
        .unwrap();
    let d = r.error.unwrap().details.unwrap();
    let again = c
        .call(
            "MFA.VERIFY",
            json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code}),
        )
        .await
        .unwrap();
    assert_eq!(again.error_code(), Some(ErrorCode::InvalidCredentials));

    // Nothing secret in the log: the TOTP secret, codes and recovery codes never appear.
    let mut op = server.operator_client().await;
    let log: Value = op
        .call_ok("LOG.QUERY", json!({"limit": 1000}))
        .await
        .unwrap();
    let text = log.to_string();
    assert!(!text.contains(&secret));
    assert!(!text.contains(&code));
    for rc in &recovery {
        assert!(!text.contains(rc.as_str()));
    }
    let names: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["summary"]["event"].as_str())
        .collect();
    for n in [
        "totp.enrolled",
        "totp.confirmed",
        "mfa.required",
        "mfa.verified",
        "totp.replay_refused",
    ] {
        assert!(
            names.iter().any(|x| x.split(' ').any(|w| w == n)),
            "no {n} in {names:?}"
        );
    }
    assert!(
        !server.stderr_text().contains(&secret),
        "TOTP secret in tracing output"
    );
}

fn r_codes(r: &Response) -> Vec<String> {
    r.data["recovery_codes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_commands_are_gated_for_unproven_sessions() {
    let server = Server::start();
    let mut c = server.client().await;
    let s: Value = c
        .call_ok("AUTH.SIGNUP", json!({"email": "aal0@example.org"}))
        .await
        .unwrap();
    let access = s["access_token"].as_str().unwrap();
    for cmd in ["TOTP.ENROLL", "USER.SET_PASSWORD"] {
        let params = if cmd == "USER.SET_PASSWORD" {
            json!({"new_password": "a fine passphrase"})
        } else {
            json!({})
        };
        let r = as_user(&mut c, access, cmd, params).await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden), "{cmd}");
    }
    let r = as_user(&mut c, access, "TOTP.DISABLE", json!({})).await;
    assert_eq!(
        r.error_code(),
        Some(ErrorCode::Forbidden),
        "aal 0 is not a step-up"
    );
}
