//! Sessions, signing keys and failure delays across nodes.

use crate::harness::{as_user, kid_of, login, signup, tokens, Server};
use portcullis_protocol::ErrorCode;
use serde_json::{json, Value};

const PW: &str = "correct horse battery";

#[tokio::test]
async fn a_session_revoked_on_one_node_is_refused_by_the_others_on_the_next_command() {
    let nodes = Server::cluster(3, &[]);
    let mut a = nodes[0].client().await;
    let mut b = nodes[1].client().await;
    let mut c = nodes[2].client().await;
    signup(&mut a, "ada@example.com", Some(PW)).await;
    let t = tokens(login(&mut b, "ada@example.com", PW).await);
    // Every node has served the session (and may remember it as live).
    for client in [&mut a, &mut b, &mut c] {
        let me = as_user(client, &t.access_token, "USER.ME", json!({})).await;
        assert!(me.ok, "{me:?}");
    }
    let out = as_user(&mut a, &t.access_token, "AUTH.LOGOUT", json!({})).await;
    assert!(out.ok, "{out:?}");
    for client in [&mut b, &mut c, &mut a] {
        let me = as_user(client, &t.access_token, "USER.ME", json!({})).await;
        assert_eq!(
            me.error.map(|e| e.code),
            Some(ErrorCode::Unauthenticated),
            "a revoked session still served"
        );
    }
}

#[tokio::test]
async fn a_key_rotated_on_one_node_signs_verifies_and_is_published_on_every_node() {
    let nodes = Server::cluster(3, &[]);
    let mut a = nodes[0].client().await;
    let mut b = nodes[1].client().await;
    let mut c = nodes[2].client().await;
    let before = signup(&mut b, "rot@example.com", Some(PW)).await;
    let mut op = nodes[0].operator_client().await;
    let keys: Value = op.call_ok("KEYS.ROTATE", json!({})).await.unwrap();
    let active = keys["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert_ne!(active, kid_of(&before.access_token));
    // B signs with the key A made active; A's and B's new tokens verify on C.
    let on_b = tokens(login(&mut b, "rot@example.com", PW).await);
    assert_eq!(kid_of(&on_b.access_token), active);
    let on_a = tokens(login(&mut a, "rot@example.com", PW).await);
    for t in [&on_a.access_token, &on_b.access_token, &before.access_token] {
        let me = as_user(&mut c, t, "USER.ME", json!({})).await;
        assert!(me.ok, "{me:?}");
    }
    let jwks = crate::harness::http(nodes[2].http, "GET", "/.well-known/jwks.json", &[], b"")
        .await
        .json();
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(published.contains(&active.as_str()), "{published:?}");
}

/// Password guesses spread over the nodes meet one failure delay.
#[tokio::test]
async fn password_guesses_spread_over_the_nodes_meet_one_failure_delay() {
    let nodes = Server::cluster(3, &[]);
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await);
    }
    signup(&mut clients[0], "target@example.com", Some(PW)).await;
    for i in 0..5 {
        let r = login(&mut clients[i % 3], "target@example.com", "wrong guess").await;
        assert_eq!(r.error.map(|e| e.code), Some(ErrorCode::InvalidCredentials));
    }
    for c in &mut clients {
        let r = login(c, "target@example.com", PW).await;
        assert_eq!(
            r.error.map(|e| e.code),
            Some(ErrorCode::RateLimited),
            "every node knows the delay"
        );
    }
}

/// An account disabled by an operator on one node is signed out on every node at once, and
/// cannot sign in or refresh anywhere.
#[tokio::test]
async fn an_account_disabled_on_one_node_is_refused_by_every_node() {
    let nodes = Server::cluster(3, &[]);
    let mut b = nodes[1].client().await;
    let mut c = nodes[2].client().await;
    let s = signup(&mut b, "gone@example.com", Some(PW)).await;
    let me = as_user(&mut c, &s.access_token, "USER.ME", json!({})).await;
    assert!(me.ok, "{me:?}");
    let mut op = nodes[0].operator_client().await;
    let disabled: Value = op
        .call_ok("ADMIN.USER.DISABLE", json!({"user_id": s.user_id}))
        .await
        .unwrap();
    assert_eq!(disabled["sessions_revoked"], 1);
    for client in [&mut b, &mut c] {
        let me = as_user(client, &s.access_token, "USER.ME", json!({})).await;
        assert_eq!(me.error.map(|e| e.code), Some(ErrorCode::Unauthenticated));
        let again = login(client, "gone@example.com", PW).await;
        assert_eq!(
            again.error.map(|e| e.code),
            Some(ErrorCode::InvalidCredentials)
        );
        let refreshed = crate::harness::refresh(client, &s.refresh_token).await;
        assert_eq!(
            refreshed.error.map(|e| e.code),
            Some(ErrorCode::InvalidCredentials)
        );
    }
}
