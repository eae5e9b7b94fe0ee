//! Accounts, sessions and tokens through the real binary: the Bastionary quickstart over HTTP,
//! the lifecycle over TCP, refresh races and reuse, revocation, token forgeries, JWKS interop
//! with an independent JOSE library, and no secret in the log or the tracing output.

use crate::harness::{
    all_events, as_user, execute_http, http, login, refresh, signup, tokens, Server,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_client::Client;
use portcullis_protocol::{ErrorCode, Response, Secret};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const PASSWORD: &str = "correct horse battery staple";

fn code(r: &Response) -> Option<ErrorCode> {
    r.error_code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bastionary_quickstart_works_over_http() {
    let server = Server::start();
    let r = execute_http(
        server.http,
        &json!({"command": "AUTH.SIGNUP", "params": {"email": "dev@example.com", "password": "s3cure-Passw0rd!", "display_name": "Dev"}}),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ok"], true, "{}", r.json());
    let r = execute_http(
        server.http,
        &json!({"command": "AUTH.LOGIN", "params": {"email": "dev@example.com", "password": "s3cure-Passw0rd!"}}),
        None,
    )
    .await;
    let login = r.json();
    assert_eq!(login["ok"], true, "{login}");
    assert_eq!(login["data"]["token_type"], "Bearer");
    assert_eq!(login["data"]["expires_in"], 900);
    let access = login["data"]["access_token"].as_str().unwrap();
    let r = execute_http(server.http, &json!({"command": "USER.ME"}), Some(access)).await;
    let me = r.json();
    assert_eq!(me["ok"], true, "{me}");
    let keys: BTreeSet<&str> = me["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "user_id",
            "email",
            "display_name",
            "email_verified",
            "created_at",
            "aal",
            "amr",
            "session_id"
        ])
    );
    assert_eq!(me["data"]["email"], "dev@example.com");
    assert_eq!(me["data"]["display_name"], "Dev");
    assert_eq!(me["data"]["amr"], json!(["pwd"]));
    assert_eq!(me["data"]["aal"], 1);
    assert_eq!(me["data"]["session_id"], login["data"]["session_id"]);
    // A session remembers the user agent that created it.
    let r = http(
        server.http,
        "POST",
        "/api/v1/execute",
        &[("User-Agent", "QuickstartAgent/1.0")],
        br#"{"command":"AUTH.LOGIN","params":{"email":"dev@example.com","password":"s3cure-Passw0rd!"}}"#,
    )
    .await;
    let second = r.json();
    let r = execute_http(
        server.http,
        &json!({"command": "SESSION.LIST"}),
        Some(access),
    )
    .await;
    let list = r.json();
    let sessions = list["data"]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "signup, login, login");
    let s = sessions
        .iter()
        .find(|s| s["session_id"] == second["data"]["session_id"])
        .unwrap();
    assert_eq!(s["user_agent"], "QuickstartAgent/1.0");
    assert_eq!(s["current"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_over_tcp() {
    let server = Server::start();
    let mut c = server.client().await;
    let first = signup(&mut c, "  Ada.L@Example.ORG ", Some(PASSWORD)).await;

    // Duplicates, case-insensitively; bad input.
    for dup in ["ada.l@example.org", "ADA.L@EXAMPLE.ORG"] {
        let r = c
            .call("AUTH.SIGNUP", json!({"email": dup, "password": PASSWORD}))
            .await
            .unwrap();
        assert_eq!(code(&r), Some(ErrorCode::Conflict), "{dup}");
    }
    for (params, why) in [
        (
            json!({"email": "not-an-address", "password": PASSWORD}),
            "bad address",
        ),
        (
            json!({"email": "b@example.org", "password": "short"}),
            "short password",
        ),
        (
            json!({"email": "b@example.org", "password": "password123"}),
            "common password",
        ),
        (
            json!({"email": "b@example.org", "password": PASSWORD, "admin": true}),
            "unknown field",
        ),
    ] {
        let r = c.call("AUTH.SIGNUP", params).await.unwrap();
        assert_eq!(code(&r), Some(ErrorCode::InvalidParams), "{why}");
    }

    // Wrong password, unknown user and passwordless user: one answer.
    signup(&mut c, "nopass@example.org", None).await;
    for (email, pw) in [
        ("ada.l@example.org", "wrong password here"),
        ("nobody@example.org", PASSWORD),
        ("nopass@example.org", PASSWORD),
        ("garbage", PASSWORD),
    ] {
        let r = login(&mut c, email, pw).await;
        assert_eq!(code(&r), Some(ErrorCode::InvalidCredentials), "{email}");
        assert_eq!(r.error.unwrap().message, "email or password is wrong");
    }

    let second = tokens(login(&mut c, "ada.l@example.org", PASSWORD).await);
    assert_eq!(second.user_id, first.user_id);
    let me = as_user(&mut c, &second.access_token, "USER.ME", json!({})).await;
    assert_eq!(me.data["email"], "Ada.L@example.org");

    let upd = as_user(
        &mut c,
        &second.access_token,
        "USER.UPDATE",
        json!({"display_name": "Ada"}),
    )
    .await;
    assert_eq!(upd.data["display_name"], "Ada");

    let list = as_user(&mut c, &second.access_token, "SESSION.LIST", json!({})).await;
    let sessions = list.data["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);

    // Refresh: a new pair; the old refresh token is spent.
    let third = tokens(refresh(&mut c, &second.refresh_token).await);
    assert_eq!(third.session_id, second.session_id);
    assert_ne!(third.refresh_token.expose(), second.refresh_token.expose());
    assert!(
        as_user(&mut c, &third.access_token, "USER.ME", json!({}))
            .await
            .ok
    );

    // Someone else's session is not ours to revoke.
    let mut other_c = server.client().await;
    let other = signup(&mut other_c, "eve@example.org", Some(PASSWORD)).await;
    let r = as_user(
        &mut c,
        &third.access_token,
        "SESSION.REVOKE",
        json!({"session_id": other.session_id}),
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::NotFound));
    assert!(
        as_user(&mut other_c, &other.access_token, "USER.ME", json!({}))
            .await
            .ok
    );

    // Revoking the first session kills its token on the very next command.
    let r = as_user(
        &mut c,
        &third.access_token,
        "SESSION.REVOKE",
        json!({"session_id": first.session_id}),
    )
    .await;
    assert_eq!(r.data["revoked"], 1);
    let r = as_user(&mut c, &first.access_token, "USER.ME", json!({})).await;
    assert_eq!(code(&r), Some(ErrorCode::Unauthenticated));
    assert_eq!(
        code(&refresh(&mut c, &first.refresh_token).await),
        Some(ErrorCode::InvalidCredentials)
    );

    // Changing the password: the current one is checked, other sessions end.
    let fourth = tokens(login(&mut c, "ada.l@example.org", PASSWORD).await);
    let r = as_user(
        &mut c,
        &third.access_token,
        "USER.SET_PASSWORD",
        json!({"current_password": "not it at all", "new_password": "a brand new passphrase"}),
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidCredentials));
    let r = as_user(
        &mut c,
        &third.access_token,
        "USER.SET_PASSWORD",
        json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.data["sessions_revoked"], 1);
    assert_eq!(
        code(&as_user(&mut c, &fourth.access_token, "USER.ME", json!({})).await),
        Some(ErrorCode::Unauthenticated)
    );
    assert!(
        as_user(&mut c, &third.access_token, "USER.ME", json!({}))
            .await
            .ok
    );
    assert_eq!(
        code(&login(&mut c, "ada.l@example.org", PASSWORD).await),
        Some(ErrorCode::InvalidCredentials)
    );
    let fifth = tokens(login(&mut c, "ada.l@example.org", "a brand new passphrase").await);

    // Revoke all but the current one, then log out.
    let r = as_user(
        &mut c,
        &fifth.access_token,
        "SESSION.REVOKE_ALL",
        json!({"keep_current": true}),
    )
    .await;
    assert_eq!(r.data["revoked"], 1);
    assert_eq!(
        code(&as_user(&mut c, &third.access_token, "USER.ME", json!({})).await),
        Some(ErrorCode::Unauthenticated)
    );
    let r = as_user(&mut c, &fifth.access_token, "AUTH.LOGOUT", json!({})).await;
    assert!(r.ok);
    assert_eq!(
        code(&as_user(&mut c, &fifth.access_token, "USER.ME", json!({})).await),
        Some(ErrorCode::Unauthenticated)
    );
    assert_eq!(
        code(&refresh(&mut c, &fifth.refresh_token).await),
        Some(ErrorCode::InvalidCredentials)
    );
    // And without a token at all.
    assert_eq!(
        code(&c.call("USER.ME", json!({})).await.unwrap()),
        Some(ErrorCode::Unauthenticated)
    );

    // Decision points are in the log.
    let events = all_events(&server).await;
    let names: BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["summary"]["event"].as_str().map(str::to_owned))
        .collect();
    for n in [
        "session.created",
        "token.refreshed",
        "session.revoked",
        "password.changed",
        "login.failed",
    ] {
        assert!(names.contains(n), "no {n} event in {names:?}");
    }
    let me_event = events
        .iter()
        .find(|e| e["command"] == "USER.ME" && e["outcome"] == "ok")
        .unwrap();
    assert_eq!(me_event["actor"], format!("user:{}", first.user_id));
    assert_eq!(me_event["subject"], first.user_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_of_one_token_yield_one_pair() {
    let server = Server::start();
    let mut c = server.client().await;
    let t = signup(&mut c, "racer@example.org", Some(PASSWORD)).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (addr, rt, b) = (server.tcp, t.refresh_token.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                b.wait().await;
                refresh(&mut c, &rt).await
            })
        })
        .collect();
    let mut pairs = BTreeSet::new();
    for task in tasks {
        let r = task.await.unwrap();
        let t = tokens(r);
        pairs.insert((
            t.access_token.expose().to_owned(),
            t.refresh_token.expose().to_owned(),
        ));
    }
    assert_eq!(pairs.len(), 1, "every concurrent refresh got the same pair");
    let (access, next) = pairs.into_iter().next().unwrap();
    assert!(
        as_user(&mut c, &Secret::new(access), "USER.ME", json!({}))
            .await
            .ok
    );
    assert!(
        refresh(&mut c, &Secret::new(next)).await.ok,
        "the successor works once"
    );
    let sessions = as_user(&mut c, &t.access_token, "SESSION.LIST", json!({})).await;
    assert_eq!(
        sessions.data["sessions"].as_array().unwrap().len(),
        1,
        "no extra session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_after_the_grace_revokes_the_session() {
    let server = Server::start_with(&["--refresh-grace-s", "0"]);
    let mut c = server.client().await;
    let a = signup(&mut c, "victim@example.org", Some(PASSWORD)).await;
    let b = tokens(refresh(&mut c, &a.refresh_token).await);
    // A copy of the old token is used again: theft is assumed.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = refresh(&mut c, &a.refresh_token).await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidCredentials));
    assert_eq!(
        code(&refresh(&mut c, &b.refresh_token).await),
        Some(ErrorCode::InvalidCredentials)
    );
    assert_eq!(
        code(&as_user(&mut c, &b.access_token, "USER.ME", json!({})).await),
        Some(ErrorCode::Unauthenticated)
    );
    let events = all_events(&server).await;
    assert!(events
        .iter()
        .any(|e| e["summary"]["event"] == "refresh.reuse_detected"
            && e["session"] == a.session_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_the_grace_a_retry_gets_the_same_pair() {
    let server = Server::start();
    let mut c = server.client().await;
    let a = signup(&mut c, "retry@example.org", Some(PASSWORD)).await;
    let b1 = tokens(refresh(&mut c, &a.refresh_token).await);
    let b2 = tokens(refresh(&mut c, &a.refresh_token).await);
    assert_eq!(b1.refresh_token.expose(), b2.refresh_token.expose());
    assert_eq!(b1.access_token.expose(), b2.access_token.expose());
    assert!(
        as_user(&mut c, &b1.access_token, "USER.ME", json!({}))
            .await
            .ok
    );
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused_and_real_ones_verify_with_an_independent_jose_library() {
    let server = Server::start();
    let mut c = server.client().await;
    let t = signup(&mut c, "jose@example.org", Some(PASSWORD)).await;
    let real = t.access_token.expose().to_owned();
    let parts: Vec<&str> = real.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt", "RFC 9068");
    let kid = header["kid"].as_str().unwrap().to_owned();

    let jwks = http(server.http, "GET", "/.well-known/jwks.json", &[], b"")
        .await
        .json();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid in JWKS");
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["use"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("sig"), Some("EdDSA"))
    );
    let x = key["x"].as_str().unwrap();

    // An independent implementation verifies our token from the JWKS alone.
    let dk = jsonwebtoken::DecodingKey::from_ed_components(x).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_issuer(&["http://localhost:7421"]);
    v.set_audience(&["portcullis"]);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let data = jsonwebtoken::decode::<Value>(&real, &dk, &v)
        .expect("jsonwebtoken verifies the access token");
    assert_eq!(data.claims["sub"], t.user_id.as_str());
    assert_eq!(data.claims["sid"], t.session_id.as_str());
    assert_eq!(data.claims["amr"], json!(["pwd"]));
    let exp = data.claims["exp"].as_i64().unwrap();
    let iat = data.claims["iat"].as_i64().unwrap();
    assert_eq!(exp - iat, 900);

    // Forgeries, each refused with UNAUTHENTICATED.
    let mut claims = data.claims.clone();
    claims["aal"] = json!(2);
    let payload = b64(&serde_json::to_vec(&claims).unwrap());
    let hs256 = {
        // HS256 "keyed with the public key", the classic algorithm-confusion attack.
        let public = URL_SAFE_NO_PAD.decode(x).unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )
        .unwrap()
    };
    let hs256_raw_x = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
        )
        .unwrap()
    };
    let other_key = {
        let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_pem(pem).unwrap(),
        )
        .unwrap()
    };
    let forgeries = [
        (
            "alg none",
            format!(
                "{}.{payload}.",
                b64(format!(r#"{{"alg":"none","kid":"{kid}","typ":"JWT"}}"#).as_bytes())
            ),
        ),
        ("HS256 with the public key", hs256),
        ("HS256 with the x string", hs256_raw_x),
        (
            "unknown kid",
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"EdDSA","kid":"someone-else","typ":"JWT"}"#),
                parts[1],
                parts[2]
            ),
        ),
        (
            "edited claims",
            format!("{}.{payload}.{}", parts[0], parts[2]),
        ),
        ("signed by another key", other_key),
        (
            "truncated signature",
            format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]),
        ),
        ("not a token", "hello".to_owned()),
    ];
    for (what, token) in forgeries {
        let r = as_user(&mut c, &Secret::new(token), "USER.ME", json!({})).await;
        assert_eq!(code(&r), Some(ErrorCode::Unauthenticated), "{what}");
        // Even for a command anyone may call.
    }
    assert!(
        as_user(&mut c, &t.access_token, "USER.ME", json!({}))
            .await
            .ok
    );
}

/// `aud` comes from `--audience` / `PORTCULLIS_AUDIENCE` / the `audience` key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_carry_the_configured_audience() {
    for (flag, env, expected) in [
        (
            Some("https://api.example.com"),
            None,
            "https://api.example.com",
        ),
        (None, Some("orders-service"), "orders-service"),
    ] {
        let flags: Vec<&str> = flag.map(|a| vec!["--audience", a]).unwrap_or_default();
        let envs: Vec<(&str, &str)> = env
            .map(|a| vec![("PORTCULLIS_AUDIENCE", a)])
            .unwrap_or_default();
        let server = Server::start_env(&flags, &envs);
        let mut c = server.client().await;
        let t = signup(&mut c, "aud@example.org", Some(PASSWORD)).await;
        let payload = t
            .access_token
            .expose()
            .split('.')
            .nth(1)
            .unwrap()
            .to_owned();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["aud"], expected);
        assert!(
            as_user(&mut c, &t.access_token, "USER.ME", json!({}))
                .await
                .ok
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_signups_with_one_address_create_one_account() {
    let server = Server::start();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let addr = server.tcp;
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                c.call(
                    "AUTH.SIGNUP",
                    json!({"email": "same@example.org", "password": PASSWORD}),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.error_code() {
            None => ok += 1,
            Some(ErrorCode::Conflict) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok, 1);
}

/// After a full lifecycle, no password or token appears in the event log (online and on disk)
/// or in the debug-level tracing output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_or_tracing() {
    let mut server = Server::start();
    let mut c = server.client().await;
    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        "second passphrase here".into(),
        "wrong guess of mine".into(),
    ];
    let a = signup(&mut c, "secretive@example.org", Some(PASSWORD)).await;
    let _ = login(&mut c, "secretive@example.org", "wrong guess of mine").await;
    let b = tokens(login(&mut c, "secretive@example.org", PASSWORD).await);
    let r = tokens(refresh(&mut c, &b.refresh_token).await);
    let _ = refresh(&mut c, &b.refresh_token).await;
    as_user(
        &mut c,
        &r.access_token,
        "USER.SET_PASSWORD",
        json!({"current_password": PASSWORD, "new_password": "second passphrase here"}),
    )
    .await;
    as_user(&mut c, &a.access_token, "USER.ME", json!({})).await;
    let bad_token = format!("{}x", r.access_token.expose());
    as_user(
        &mut c,
        &Secret::new(bad_token.clone()),
        "USER.ME",
        json!({}),
    )
    .await;
    secrets.push(bad_token);
    as_user(&mut c, &r.access_token, "AUTH.LOGOUT", json!({})).await;
    for t in [&a, &b, &r] {
        secrets.push(t.access_token.expose().into());
        secrets.push(t.refresh_token.expose().into());
        // The signature part alone must not appear either.
        secrets.push(t.access_token.expose().rsplit('.').next().unwrap().into());
        secrets.push(t.refresh_token.expose().trim_start_matches("prt_").into());
    }
    secrets.push(server.operator_token().expose().into());

    let log = serde_json::to_string(&all_events(&server).await).unwrap();
    assert!(server.stop().success());
    let tracing = server.stderr_text();
    assert!(
        tracing.contains("DEBUG"),
        "tracing was captured at debug level"
    );
    let (_, offline, _) = server.cli(&[
        "log",
        "tail",
        "--data-dir",
        &server.data_dir.to_string_lossy(),
        "--json",
    ]);
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "secret in the event log");
        assert!(!offline.contains(s.as_str()), "secret in the stored log");
        assert!(!tracing.contains(s.as_str()), "secret in tracing output");
    }
    // The database keeps no plaintext password or refresh token either.
    for s in [PASSWORD, "second passphrase here", b.refresh_token.expose()] {
        assert!(!server.stored_contains(s), "plaintext secret stored");
    }
    // The check can see what is stored: the account's address is.
    assert!(server.stored_contains("secretive@example.org"));
}
