//! The operator surface through the real binary: bootstrap, scoped API keys, disabling,
//! emergency recovery, signing-key rotation.

use crate::harness::{all_events, as_user, login, signup, tokens, Server};
use crate::mail::Inbox;
use portcullis_client::Client;
use portcullis_protocol::{ErrorCode, Request, Response, Secret};
use serde_json::{json, Value};
use std::time::Duration;

const PW: &str = "correct horse battery staple";

async fn call(c: &mut Client, token: &str, command: &str, params: Value) -> Response {
    as_user(c, &Secret::new(token), command, params).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_once_then_administer_with_the_link_session() {
    let mut server = Server::start();
    assert!(server.stop().success());
    let dir = server.data_dir.to_string_lossy().into_owned();
    let (code, out, err) = server.cli(&[
        "admin",
        "bootstrap",
        "--email",
        "root@example.org",
        "--data-dir",
        &dir,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/auth/magic?token="), "{out}");
    let (code, _, err) = server.cli(&[
        "admin",
        "bootstrap",
        "--email",
        "other@example.org",
        "--data-dir",
        &dir,
    ]);
    assert_eq!(code, 1, "a second bootstrap is refused: {err}");
    assert!(err.contains("CONFLICT"), "{err}");

    server.restart();
    let token = out
        .lines()
        .find_map(|l| l.split("token=").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    let mut c = server.client().await;
    let s: Value = c
        .call_ok("MAGIC.VERIFY", json!({"token": token}))
        .await
        .unwrap();
    let admin = s["access_token"].as_str().unwrap().to_owned();
    signup(&mut c, "member@example.org", Some(PW)).await;
    let page = call(
        &mut c,
        &admin,
        "ADMIN.USER.LIST",
        json!({"email_prefix": "MEM"}),
    )
    .await;
    assert!(page.ok, "{page:?}");
    assert_eq!(page.data["users"].as_array().unwrap().len(), 1);
    assert_eq!(page.data["users"][0]["email"], "member@example.org");
    assert_eq!(page.data["users"][0]["has_password"], true);
    // A non-admin user is refused.
    let member = tokens(login(&mut c, "member@example.org", PW).await);
    let r = as_user(&mut c, &member.access_token, "ADMIN.USER.LIST", json!({})).await;
    assert_eq!(r.error_code(), Some(ErrorCode::Forbidden));
    // Online bootstrap is refused too.
    let r = server
        .operator_client()
        .await
        .call("ADMIN.BOOTSTRAP", json!({"email": "x@example.org"}))
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::Conflict));
}

/// Someone signs up with the operator's address before the bootstrap. Bootstrapping that
/// address evicts whatever they set up (password, session), and only the mailbox's owner,
/// through the bootstrap link, can administer. Before the fix the squatter's session created
/// an API key with every scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_evicts_a_squatter_and_only_the_proven_mailbox_administers() {
    let server = Server::start();
    let mut c = server.client().await;
    let squatter = signup(&mut c, "root@example.org", Some(PW)).await;
    let boot: Value = server
        .operator_client()
        .await
        .call_ok("ADMIN.BOOTSTRAP", json!({"email": "root@example.org"}))
        .await
        .unwrap();
    assert_eq!(boot["user_id"], squatter.user_id.as_str());
    let everything = json!({
        "name": "backdoor",
        "scopes": ["users:read", "users:write", "sessions:write", "log:read", "keys:write", "apikeys:write"],
    });
    let r = as_user(
        &mut c,
        &squatter.access_token,
        "APIKEY.CREATE",
        everything.clone(),
    )
    .await;
    assert!(!r.ok, "the squatter's session administers: {r:?}");
    let r = c
        .call(
            "AUTH.LOGIN",
            json!({"email": "root@example.org", "password": PW}),
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::InvalidCredentials));

    let link = boot["link"].as_str().unwrap();
    let token = link.split("token=").nth(1).unwrap();
    let s: Value = c
        .call_ok("MAGIC.VERIFY", json!({"token": token}))
        .await
        .unwrap();
    let admin = s["access_token"].as_str().unwrap();
    let r = call(&mut c, admin, "APIKEY.CREATE", everything).await;
    assert!(r.ok, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_held_to_their_scopes() {
    let server = Server::start();
    let mut op = server.operator_client().await;
    let mut c = server.client().await;
    let u = signup(&mut c, "someone@example.org", Some(PW)).await;
    let mk = |scopes: Value| json!({"name": "backend", "scopes": scopes});
    let reader: Value = op
        .call_ok("APIKEY.CREATE", mk(json!(["users:read"])))
        .await
        .unwrap();
    let key = reader["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pk_live_") && key.len() >= 8 + 43);
    let get = json!({"user_id": u.user_id});
    let r = call(&mut c, &key, "ADMIN.USER.GET", get.clone()).await;
    assert!(r.ok, "{r:?}");
    for (cmd, params) in [
        ("ADMIN.USER.DISABLE", get.clone()),
        ("ADMIN.SESSION.REVOKE_ALL", get.clone()),
        ("LOG.QUERY", json!({})),
        ("KEYS.LIST", json!({})),
        ("APIKEY.LIST", json!({})),
    ] {
        assert_eq!(
            call(&mut c, &key, cmd, params).await.error_code(),
            Some(ErrorCode::Forbidden),
            "{cmd}"
        );
    }
    let logs: Value = op
        .call_ok("APIKEY.CREATE", mk(json!(["log:read"])))
        .await
        .unwrap();
    assert!(
        call(
            &mut c,
            logs["key"].as_str().unwrap(),
            "LOG.QUERY",
            json!({})
        )
        .await
        .ok
    );
    // Listing never shows keys; revocation takes effect on the next request.
    let list: Value = op.call_ok("APIKEY.LIST", json!({})).await.unwrap();
    assert!(!list.to_string().contains(&key));
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
    op.call_ok::<Value>("APIKEY.REVOKE", json!({"id": reader["id"]}))
        .await
        .unwrap();
    assert_eq!(
        call(&mut c, &key, "ADMIN.USER.GET", get).await.error_code(),
        Some(ErrorCode::Unauthenticated)
    );
    let r = op
        .call("APIKEY.CREATE", mk(json!(["root:everything"])))
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::InvalidParams));
    // The log names the key, never the key itself.
    let events = serde_json::to_string(&all_events(&server).await).unwrap();
    assert!(!events.contains(&key));
    assert!(events.contains(&format!("apikey:{}", logs["id"].as_str().unwrap())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_out_at_once_and_back_when_enabled() {
    let server = Server::start();
    let mut op = server.operator_client().await;
    let mut c = server.client().await;
    let u = signup(&mut c, "disable@example.org", Some(PW)).await;
    let r: Value = op
        .call_ok("ADMIN.USER.DISABLE", json!({"user_id": u.user_id}))
        .await
        .unwrap();
    assert_eq!(r["sessions_revoked"], 1);
    let me = as_user(&mut c, &u.access_token, "USER.ME", json!({})).await;
    assert_eq!(
        me.error_code(),
        Some(ErrorCode::Unauthenticated),
        "the live token is refused on the next command"
    );
    assert_eq!(
        login(&mut c, "disable@example.org", PW).await.error_code(),
        Some(ErrorCode::InvalidCredentials)
    );
    let r = c
        .send(
            Request::new("AUTH.REFRESH").params(json!({"refresh_token": u.refresh_token.expose()})),
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::InvalidCredentials));
    op.call_ok::<Value>("ADMIN.USER.ENABLE", json!({"user_id": u.user_id}))
        .await
        .unwrap();
    assert!(login(&mut c, "disable@example.org", PW).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_recovery_mails_a_link_that_skips_the_lost_factor_and_is_audited() {
    let server = Server::start();
    let mut inbox = Inbox::outbox(&server.data_dir);
    let mut op = server.operator_client().await;
    let mut c = server.client().await;
    // A proven account with an authenticator app the user then loses.
    c.call_ok::<Value>(
        "MAGIC.SEND",
        json!({"email": "lost@example.org", "create_user": true}),
    )
    .await
    .unwrap();
    let s: Value = c
        .call_ok(
            "MAGIC.VERIFY",
            json!({"token": inbox.next_to("lost@example.org").await.link_token()}),
        )
        .await
        .unwrap();
    let access = s["access_token"].as_str().unwrap().to_owned();
    let user_id = s["user_id"].as_str().unwrap().to_owned();
    let e = call(&mut c, &access, "TOTP.ENROLL", json!({})).await;
    assert!(e.ok, "{e:?}");
    let secret = totp_rs::Secret::try_from_base32(e.data["secret"].as_str().unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let g = totp_rs::Builder::new()
        .with_secret(secret.as_ref().to_vec())
        .build()
        .unwrap();
    let r = call(
        &mut c,
        &access,
        "TOTP.CONFIRM",
        json!({"enrollment_id": e.data["enrollment_id"], "code": g.generate(now).to_string()}),
    )
    .await;
    assert!(r.ok, "{r:?}");

    let r = op
        .call(
            "ADMIN.USER.RECOVER",
            json!({"user_id": user_id, "reason": ""}),
        )
        .await
        .unwrap();
    assert_eq!(
        r.error_code(),
        Some(ErrorCode::InvalidParams),
        "a reason is required"
    );
    let r: Value = op
        .call_ok("ADMIN.USER.RECOVER", json!({"user_id": user_id, "reason": "ticket 4711: phone lost, identity checked by video call"}))
        .await
        .unwrap();
    assert_eq!(r["sessions_revoked"], 1);
    assert!(
        !r.to_string().contains("token="),
        "the operator never sees the link"
    );
    assert_eq!(
        call(&mut c, &access, "USER.ME", json!({}))
            .await
            .error_code(),
        Some(ErrorCode::Unauthenticated)
    );
    let link = inbox.next_to("lost@example.org").await.link_token();
    let s: Value = c
        .call_ok("MAGIC.VERIFY", json!({"token": link}))
        .await
        .unwrap();
    let me = call(
        &mut c,
        s["access_token"].as_str().unwrap(),
        "USER.ME",
        json!({}),
    )
    .await;
    assert_eq!(me.data["amr"], json!(["email", "operator_recovery"]));
    // Nothing was removed: the app is still enrolled.
    let view: Value = op
        .call_ok("ADMIN.USER.GET", json!({"user_id": user_id}))
        .await
        .unwrap();
    assert_eq!(view["has_totp"], true);
    let events = all_events(&server).await;
    let initiated = events
        .iter()
        .find(|e| e["summary"]["event"] == "recovery.operator_initiated")
        .unwrap();
    assert_eq!(initiated["actor"], "operator");
    assert_eq!(initiated["subject"], user_id.as_str());
    assert!(initiated["summary"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("ticket 4711"));
    assert!(events.iter().any(|e| e["summary"]["event"]
        .as_str()
        .is_some_and(|n| n.contains("recovery.completed"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_tokens_valid_and_the_jwks_matches() {
    let server = Server::start();
    let mut op = server.operator_client().await;
    let mut c = server.client().await;
    let before = signup(&mut c, "rot@example.org", Some(PW)).await;
    let kid_of = crate::harness::kid_of;
    let old_kid = kid_of(&before.access_token);
    let keys: Value = op.call_ok("KEYS.ROTATE", json!({})).await.unwrap();
    let states: Vec<(String, String)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states.len(), 2);
    assert_eq!(states[0].1, "active");
    assert_eq!(states[1], (old_kid.clone(), "verifying".to_owned()));
    assert!(
        as_user(&mut c, &before.access_token, "USER.ME", json!({}))
            .await
            .ok,
        "old tokens keep verifying"
    );
    let after = tokens(login(&mut c, "rot@example.org", PW).await);
    assert_eq!(kid_of(&after.access_token), states[0].0);
    let jwks = crate::harness::http(server.http, "GET", "/.well-known/jwks.json", &[], b"")
        .await
        .json();
    let mut published: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    published.sort();
    let mut expected = vec![old_kid, states[0].0.clone()];
    expected.sort();
    assert_eq!(published, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_key_rotation_reseals_every_secret_and_the_server_carries_on() {
    let mut server = Server::start();
    let mut c = server.client().await;
    let t = signup(&mut c, "rekey@example.org", Some(PW)).await;
    let e = as_user(&mut c, &t.access_token, "TOTP.ENROLL", json!({})).await;
    let secret = totp_rs::Secret::try_from_base32(e.data["secret"].as_str().unwrap()).unwrap();
    let g = totp_rs::Builder::new()
        .with_secret(secret.as_ref().to_vec())
        .build()
        .unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let r = as_user(
        &mut c,
        &t.access_token,
        "TOTP.CONFIRM",
        json!({"enrollment_id": e.data["enrollment_id"], "code": g.generate(now()).to_string()}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let rotated = tokens(crate::harness::refresh(&mut c, &t.refresh_token).await);
    drop(c);
    assert!(server.stop().success());

    let dir = server.data_dir.clone();
    let before = std::fs::read(dir.join("master.key")).unwrap();
    let (code, out, err) = server.cli(&[
        "admin",
        "rotate-master-key",
        "--data-dir",
        &dir.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 signing keys, 1 TOTP secrets, 1 refresh successors"),
        "{out}"
    );
    let after = std::fs::read(dir.join("master.key")).unwrap();
    assert_ne!(before, after);
    assert_eq!(
        std::fs::read(dir.join("master.key.previous")).unwrap(),
        before
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.join("master.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    server.restart();
    let mut c = server.client().await;
    // The signing key is the same key, re-sealed: tokens issued before still verify.
    assert!(
        as_user(&mut c, &rotated.access_token, "USER.ME", json!({}))
            .await
            .ok
    );
    // The TOTP secret opens under the new key: a sign-in completes with a fresh code.
    let r = login(&mut c, "rekey@example.org", PW).await;
    let d = r.error.unwrap().details.unwrap();
    let mut code = g.generate(now()).to_string();
    let mut v = c
        .call(
            "MFA.VERIFY",
            json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code}),
        )
        .await
        .unwrap();
    if !v.ok {
        // The enrolment's step was used at confirmation: wait for the next one (bounded).
        tokio::time::sleep(Duration::from_secs(31)).await;
        code = g.generate(now()).to_string();
        let r = login(&mut c, "rekey@example.org", PW).await;
        let d = r.error.unwrap().details.unwrap();
        v = c
            .call(
                "MFA.VERIFY",
                json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code}),
            )
            .await
            .unwrap();
    }
    assert!(v.ok, "{v:?}");
    let report: Value = server
        .operator_client()
        .await
        .call_ok("LOG.VERIFY", json!({}))
        .await
        .unwrap();
    assert_eq!(report["valid"], true);
}

/// Every scope opens exactly its family of commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_opens_only_its_command_family() {
    let server = Server::start();
    let mut op = server.operator_client().await;
    let mut c = server.client().await;
    let u = signup(&mut c, "scoped@example.org", Some(PW)).await;
    let who = json!({"user_id": u.user_id});
    // One harmless call per family (a refusal other than FORBIDDEN still proves the gate opened).
    let families: [(&str, &str, Value); 6] = [
        ("users:read", "ADMIN.USER.GET", who.clone()),
        ("users:write", "ADMIN.USER.ENABLE", who.clone()),
        (
            "sessions:write",
            "ADMIN.SESSION.REVOKE_ALL",
            json!({"user_id": "00000000000000000000000000000000"}),
        ),
        ("log:read", "LOG.VERIFY", json!({})),
        ("keys:write", "KEYS.LIST", json!({})),
        ("apikeys:write", "APIKEY.LIST", json!({})),
    ];
    for (scope, _, _) in &families {
        let k: Value = op
            .call_ok("APIKEY.CREATE", json!({"name": scope, "scopes": [scope]}))
            .await
            .unwrap();
        let key = k["key"].as_str().unwrap().to_owned();
        for (other, cmd, params) in &families {
            let r = call(&mut c, &key, cmd, params.clone()).await;
            if other == scope {
                assert_ne!(
                    r.error_code(),
                    Some(ErrorCode::Forbidden),
                    "{scope} must open {cmd}: {r:?}"
                );
                assert_ne!(
                    r.error_code(),
                    Some(ErrorCode::Unauthenticated),
                    "{scope}: {r:?}"
                );
            } else {
                assert_eq!(
                    r.error_code(),
                    Some(ErrorCode::Forbidden),
                    "{scope} must not open {cmd}"
                );
            }
        }
        // No scope opens the user's own commands or the operator's bootstrap.
        assert_eq!(
            call(&mut c, &key, "USER.ME", json!({})).await.error_code(),
            Some(ErrorCode::Forbidden)
        );
        let r = call(
            &mut c,
            &key,
            "ADMIN.BOOTSTRAP",
            json!({"email": "z@example.org"}),
        )
        .await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden));
    }
    // An API key cannot mint a broader key.
    let narrow: Value = op
        .call_ok(
            "APIKEY.CREATE",
            json!({"name": "n", "scopes": ["apikeys:write"]}),
        )
        .await
        .unwrap();
    let r = call(
        &mut c,
        narrow["key"].as_str().unwrap(),
        "APIKEY.CREATE",
        json!({"name": "x", "scopes": ["users:write"]}),
    )
    .await;
    assert_eq!(r.error_code(), Some(ErrorCode::Forbidden));
}
