//! Single-use artifacts redeemed on several nodes at once: exactly one redemption wins.

use crate::harness::{signup, Server};
use crate::inbox::Inbox;
use portcullis_client::Client;
use portcullis_protocol::commands::log::VerifyReport;
use portcullis_protocol::Response;
use serde_json::{json, Value};

/// No rate limits (60 redemptions from one address), no refresh grace (a second use of a
/// refresh token is a reuse, refused), and cheap password hashing.
const CONFIG: &str = "send_cooldown_s = 0\n\n[rate_limits]\nenabled = false\n";
const FLAGS: &[&str] = &[
    "--refresh-grace-s",
    "0",
    "--argon2-m-kib",
    "64",
    "--argon2-t",
    "1",
];
const RACERS: usize = 60;

/// Sends `command` with `params` from `RACERS` connections spread over the nodes, all at once.
async fn race(nodes: &[Server], command: &str, params: Value) -> Vec<Response> {
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..RACERS {
        clients.push(nodes[i % nodes.len()].client().await);
    }
    let calls = clients.iter_mut().map(|c| {
        let params = params.clone();
        async move { c.call(command, params).await.unwrap() }
    });
    futures::future::join_all(calls).await
}

/// The winning answer; fails unless exactly one answer is a success.
fn one_winner<'a>(answers: &'a [Response], what: &str) -> &'a Response {
    let won: Vec<&Response> = answers.iter().filter(|r| r.ok).collect();
    let codes: Vec<_> = answers
        .iter()
        .filter_map(|r| r.error.as_ref())
        .map(|e| e.code)
        .collect();
    assert_eq!(won.len(), 1, "{what}: refusals {codes:?}");
    won[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_a_code_and_a_refresh_token_raced_over_three_nodes_each_win_once() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), CONFIG).unwrap();
    let mut flags = vec!["--config", config.path().to_str().unwrap()];
    flags.extend_from_slice(FLAGS);
    let nodes = Server::cluster(3, &flags);
    let email = "race@example.com";
    let mut a = nodes[0].client().await;
    signup(&mut a, email, None).await;
    let mut outbox = Inbox::outbox(&nodes[0].data_dir);

    a.call_ok::<Value>("MAGIC.SEND", json!({"email": email}))
        .await
        .unwrap();
    let token = outbox.next_to(email).await.link_token();
    let answers = race(&nodes, "MAGIC.VERIFY", json!({"token": token})).await;
    one_winner(&answers, "the link");

    let sent: Value = a
        .call_ok("OTP.SEND", json!({"email": email}))
        .await
        .unwrap();
    let code = outbox.next_to(email).await.code();
    let params = json!({"flow_id": sent["flow_id"], "code": code});
    let answers = race(&nodes, "OTP.VERIFY", params).await;
    // The session the code started: its refresh token is raced next.
    let session = one_winner(&answers, "the code").data.clone();

    // A refresh token rotates once: concurrent uses within the grace all get the one successor
    // pair back (the refresh contract), whichever node they reach.
    let params = json!({"refresh_token": session["refresh_token"]});
    let answers = race(&nodes, "AUTH.REFRESH", params).await;
    let successors: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|r| {
            assert!(r.ok, "{:?}", r.error);
            r.data["refresh_token"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        successors.len(),
        1,
        "the refresh token rotated more than once"
    );

    for node in &nodes {
        let mut op = node.operator_client().await;
        let report: VerifyReport = op.call_ok("LOG.VERIFY", json!({})).await.unwrap();
        assert!(report.valid, "{report:?}");
    }
}
