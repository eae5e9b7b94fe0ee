//! OIDC discovery for token verifiers (docs/tokens.md, "Verifying tokens elsewhere"): an
//! independent JOSE library — Python's PyJWT with `cryptography` (Debian's `python3-jwt`,
//! `python3-cryptography`) — is given only the issuer and verifies a Portcullis access token
//! the way JWT middleware does: the discovery document, then its `jwks_uri`, then the token with
//! the advertised algorithm, issuer and audience.

use crate::harness::{http, signup, Server};
use portcullis_protocol::Secret;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::Command;

/// Given an issuer, an audience and a token: discovery, JWKS, verification. Prints one JSON
/// line: `{"ok": true, "claims": …}` or `{"ok": false, "error": "<exception class>"}`.
const VERIFIER: &str = r#"
import json, sys, urllib.request
import jwt

issuer, audience, token = sys.argv[1], sys.argv[2], sys.stdin.read().strip()
with urllib.request.urlopen(issuer.rstrip("/") + "/.well-known/openid-configuration") as r:
    doc = json.load(r)
if doc["issuer"] != issuer:
    print(json.dumps({"ok": False, "error": "IssuerMismatch"}))
    sys.exit(0)
try:
    key = jwt.PyJWKClient(doc["jwks_uri"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=doc["id_token_signing_alg_values_supported"],
        issuer=doc["issuer"],
        audience=audience,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    print(json.dumps({"ok": True, "claims": claims, "kid": key.key_id, "doc": doc}))
except Exception as e:
    print(json.dumps({"ok": False, "error": type(e).__name__, "message": str(e)}))
"#;

fn verify(issuer: &str, audience: &str, token: &str) -> Value {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", VERIFIER, issuer, audience])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 with python3-jwt and python3-cryptography");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verifier failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_an_access_token_found_through_discovery() {
    // The issuer is the gateway's own URL, as in production, so choose the port first.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let server = Server::start_config(
        &format!("issuer = \"{issuer}\"\npublic_url = \"{issuer}/\"\naudience = \"api.example\"\n"),
        &["--http", &format!("127.0.0.1:{port}")],
    );

    // The document: what exists, nothing that does not.
    let d = http(
        server.http,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        b"",
    )
    .await;
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(d.header("content-type"), Some("application/json"));
    let doc = d.json();
    assert_eq!(doc["issuer"], issuer.as_str(), "{doc}");
    assert_eq!(
        doc["jwks_uri"],
        format!("{issuer}/.well-known/jwks.json"),
        "{doc}"
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["EdDSA"])
    );
    assert_eq!(doc["subject_types_supported"], json!(["public"]));
    for absent in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
    ] {
        assert!(doc.get(absent).is_none(), "{absent}: {doc}");
    }

    let mut c = server.client().await;
    let t = signup(
        &mut c,
        "discovery@example.org",
        Some("correct horse battery staple 42"),
    )
    .await;
    let token: &Secret = &t.access_token;
    let v = verify(&issuer, "api.example", token.expose());
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["claims"]["iss"], issuer.as_str(), "{v}");
    assert_eq!(v["claims"]["sub"], t.user_id.as_str(), "{v}");
    assert_eq!(v["kid"], crate::harness::kid_of(token).as_str(), "{v}");

    // The same library refuses what it must: a changed signature, another audience.
    // (A character well inside the signature: the last one also carries padding bits.)
    let mut forged: Vec<char> = token.expose().chars().collect();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let v = verify(&issuer, "api.example", &forged);
    assert_eq!(v["error"], "InvalidSignatureError", "{v}");
    let v = verify(&issuer, "another-api", token.expose());
    assert_eq!(v["error"], "InvalidAudienceError", "{v}");
}
