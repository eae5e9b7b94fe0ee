//! The event log across nodes: one chain that every node follows live, and the schema
//! migrations an operator runs with `portcullis admin migrate`.

use crate::harness::{run_cli, run_cli_env, Server};
use portcullis_client::{Client, TailItem};
use portcullis_protocol::commands::log::{QueryResult, TailParams, VerifyReport};
use portcullis_protocol::{Event, Request};
use serde_json::json;
use std::time::Duration;

/// `n` rounds of a pipelined burst of `command` on a fresh connection to `addr`; the number of
/// commands answered.
async fn bursts(addr: std::net::SocketAddr, command: &'static str, n: usize) -> usize {
    let mut c = Client::connect(addr).await.unwrap();
    let mut done = 0;
    for _ in 0..n {
        let reqs = (0..5).map(|_| Request::new(command)).collect();
        let answers = c.pipeline(reqs).await.unwrap();
        assert!(
            answers.iter().all(|r| r.ok),
            "{command} failed: {answers:?}"
        );
        done += answers.len();
        tokio::task::yield_now().await;
    }
    done
}

/// Three nodes; a follower on C from the first event while A and B both write, concurrently:
/// C's stream has every one of A's and B's events, in one order (strictly increasing seq, no
/// gap, no duplicate, each linked to the one before), the same events as the database holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_one_node_sees_every_nodes_events_in_one_order() {
    let nodes = Server::cluster(3, &[]);
    let follower = nodes[2].operator_client().await;
    let mut tail = follower
        .tail(TailParams {
            from_seq: Some(1),
            follow: true,
        })
        .await
        .unwrap();
    // A answers SYS.INFO, B SYS.COMMANDS: each event names the node it came from.
    let mut writers = Vec::new();
    for _ in 0..3 {
        writers.push(tokio::spawn(bursts(nodes[0].tcp, "SYS.INFO", 20)));
        writers.push(tokio::spawn(bursts(nodes[1].tcp, "SYS.COMMANDS", 20)));
    }
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    assert_eq!(written, 600);
    let mut events: Vec<Event> = Vec::new();
    let count = |events: &[Event], command: &str| {
        events
            .iter()
            .filter(|e| e.command.as_deref() == Some(command))
            .count()
    };
    // A failure bound, not a speed requirement.
    let seen = tokio::time::timeout(Duration::from_secs(120), async {
        while count(&events, "SYS.INFO") < 300 || count(&events, "SYS.COMMANDS") < 300 {
            match tail.next().await.unwrap() {
                Some(TailItem::Event(e)) => events.push(*e),
                Some(TailItem::CaughtUp { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "C's follower saw {} of A's and {} of B's events, up to seq {:?}",
        count(&events, "SYS.INFO"),
        count(&events, "SYS.COMMANDS"),
        events.last().map(|e| e.seq)
    );
    assert_eq!(count(&events, "SYS.INFO"), 300);
    assert_eq!(count(&events, "SYS.COMMANDS"), 300);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gap or duplicate at index {i}");
        assert!(e.hash_is_valid(), "seq {} hash", e.seq);
        if i > 0 {
            assert_eq!(e.prev, events[i - 1].hash, "seq {} prev", e.seq);
        }
    }
    // The same events, in the same order, as A reads them from the database.
    let last = events.last().unwrap().seq;
    let mut a = nodes[0].operator_client().await;
    let mut stored = Vec::new();
    let mut from = Some(1);
    while let Some(f) = from {
        let page: QueryResult = a
            .call_ok("LOG.QUERY", json!({"from_seq": f, "to_seq": last}))
            .await
            .unwrap();
        stored.extend(page.events);
        from = page.next_seq;
    }
    let hashes = |v: &[Event]| v.iter().map(|e| e.hash.clone()).collect::<Vec<_>>();
    assert_eq!(hashes(&events), hashes(&stored));
    for node in &nodes {
        let mut op = node.operator_client().await;
        let report: VerifyReport = op.call_ok("LOG.VERIFY", json!({})).await.unwrap();
        assert!(report.valid, "{report:?}");
        assert!(report.checked >= last, "{report:?}");
    }
}

/// `admin migrate` brings an empty database to this build's schema and says from which
/// version; a second run (the URL from the environment) has nothing to do; a database newer
/// than the build is refused, and the URL's password is never printed.
#[test]
fn admin_migrate_applies_pending_migrations_once_and_refuses_a_newer_schema() {
    let cluster = portcullis_testdb::cluster();
    let url = cluster.fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let (code, out, err) = run_cli(&["admin", "migrate", "--database-url", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let version = cluster.psql(&db, "SELECT version FROM portcullis_schema");
    assert_eq!(
        out.trim(),
        format!("schema version 0 -> {version}: applied {version} migration(s)")
    );
    let (code, out, err) = run_cli_env(
        &["admin", "migrate"],
        &[("PORTCULLIS_DATABASE_URL", url.as_str())],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("schema version {version}: up to date, nothing to do")
    );
    cluster.psql(&db, "UPDATE portcullis_schema SET version = version + 1");
    let with_password = url.replacen("postgres@", "postgres:s3cret-pw@", 1);
    let (code, out, err) = run_cli(&["admin", "migrate", "--database-url", &with_password]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("newer than this build"), "{err}");
    assert!(
        !err.contains("s3cret-pw") && !out.contains("s3cret-pw"),
        "{err}"
    );
}

/// The TLS settings reach the connections: against a database that accepts TCP over TLS only,
/// `admin migrate` with `--database-tls verify-full` and the right CA succeeds; `serve` with a
/// CA that did not sign the server's certificate (from the environment) refuses to start,
/// saying why; with TLS disabled it is refused by the server.
#[test]
fn database_tls_settings_reach_the_connections() {
    let cluster = portcullis_testdb::tls_cluster();
    let url = cluster.fresh_database();
    let ca = cluster.ca_file();
    let (code, out, err) = run_cli(&[
        "admin",
        "migrate",
        "--database-url",
        &url,
        "--database-tls",
        "verify-full",
        "--database-ca-file",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("schema version 0 -> "), "{out}");
    let data = tempfile::tempdir().unwrap();
    let wrong = cluster.wrong_ca_file();
    let (code, out, err) = run_cli_env(
        &[
            "serve",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--tcp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
        &[
            ("PORTCULLIS_DATABASE_URL", url.as_str()),
            ("PORTCULLIS_DATABASE_TLS", "verify-full"),
            ("PORTCULLIS_DATABASE_CA_FILE", wrong.to_str().unwrap()),
        ],
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    let (code, out, err) = run_cli(&[
        "admin",
        "migrate",
        "--database-url",
        &url,
        "--database-tls",
        "disable",
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("no encryption"), "{err}");
}

/// A connection's pipelined requests share the appender's transactions: their events are not
/// committed one transaction each (each row's `xmin` names the transaction that inserted it).
#[tokio::test]
async fn pipelined_requests_share_append_transactions() {
    let nodes = Server::cluster(1, &[]);
    let node = &nodes[0];
    let mut c = node.client().await;
    let head: u64 = node.psql("SELECT seq FROM log_head").parse().unwrap();
    let reqs = (0..64).map(|_| Request::new("SYS.INFO")).collect();
    let answers = c.pipeline(reqs).await.unwrap();
    assert!(answers.iter().all(|r| r.ok), "{answers:?}");
    let events: u64 = node
        .psql(&format!("SELECT count(*) FROM events WHERE seq > {head}"))
        .parse()
        .unwrap();
    let transactions: u64 = node
        .psql(&format!(
            "SELECT count(DISTINCT xmin::text) FROM events WHERE seq > {head}"
        ))
        .parse()
        .unwrap();
    assert_eq!(events, 64);
    assert!(
        transactions <= 32,
        "64 pipelined events took {transactions} append transactions"
    );
}
