//! The event log through the real binary: chain and tamper detection, offline tools, tail
//! replay-to-live under concurrent writers, lagging followers, restarts and crashes.

use crate::harness::{run_cli, run_cli_env, Server};
use portcullis_client::{Client, TailItem};
use portcullis_protocol::commands::log::{
    Checkpoint, PruneResult, QueryResult, TailParams, VerifyReport,
};
use portcullis_protocol::{ErrorCode, Event, Request, Secret};
use serde_json::json;
use std::time::Duration;

async fn info_burst(c: &mut Client, n: usize) -> usize {
    let reqs = (0..n).map(|_| Request::new("SYS.INFO")).collect();
    let answers = c.pipeline(reqs).await.unwrap();
    assert!(answers.iter().all(|r| r.ok), "SYS.INFO failed: {answers:?}");
    answers.len()
}

async fn verify(server: &Server) -> VerifyReport {
    let mut c = server.operator_client().await;
    c.call_ok("LOG.VERIFY", json!({})).await.unwrap()
}

async fn query_all(server: &Server, params: serde_json::Value) -> Vec<Event> {
    let mut c = server.operator_client().await;
    let mut out = Vec::new();
    let mut params = params;
    for _ in 0..1000 {
        let page: QueryResult = c.call_ok("LOG.QUERY", params.clone()).await.unwrap();
        out.extend(page.events);
        match page.next_seq {
            Some(n) => params["from_seq"] = json!(n),
            None => return out,
        }
    }
    panic!("LOG.QUERY did not finish in 1000 pages");
}

fn assert_contiguous(events: &[Event], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, first + i as u64, "gap or duplicate at index {i}");
        assert!(e.hash_is_valid(), "seq {} hash", e.seq);
        if i > 0 {
            assert_eq!(e.prev, events[i - 1].hash, "seq {} prev", e.seq);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_verify_detects_an_edited_event() {
    let mut server = Server::start();
    let mut c = server.client().await;
    info_burst(&mut c, 5).await;
    drop(c);
    assert!(server.stop().success());
    let dir = server.data_dir.to_string_lossy().into_owned();

    let (code, out, err) = server.cli(&["log", "verify", "--data-dir", &dir]);
    assert_eq!(code, 0, "{out}{err}");
    let report: VerifyReport = serde_json::from_str(&out).unwrap();
    assert!(report.valid);
    assert_eq!((report.checked, report.head_seq), (5, 5));

    let (code, out, _) = server.cli(&["log", "tail", "--data-dir", &dir, "--json"]);
    assert_eq!(code, 0);
    let events: Vec<Event> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 5);
    assert_contiguous(&events, 1);

    // Tamper: rewrite event 3's outcome straight in the database.
    tamper_outcome(&server, 3);
    let (code, out, _) = server.cli(&["log", "verify", "--data-dir", &dir]);
    assert_eq!(code, 1, "a broken chain must exit 1: {out}");
    let report: VerifyReport = serde_json::from_str(&out).unwrap();
    assert!(!report.valid);
    assert_eq!(report.first_broken_seq, Some(3));
    assert_eq!(report.reason.as_deref(), Some("hash_mismatch"));

    // Online too, after a restart.
    server.restart();
    let report = verify(&server).await;
    assert_eq!((report.valid, report.first_broken_seq), (false, Some(3)));
    let (code, _, _) = run_cli(&[
        "log",
        "verify",
        "--addr",
        &server.tcp.to_string(),
        "--token",
        server.operator_token().expose(),
    ]);
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_switches_from_replay_to_live_without_gap_or_duplicate() {
    let server = Server::start();
    let mut c = server.client().await;
    info_burst(&mut c, 50).await;

    let follower = server.operator_client().await;
    let mut tail = follower
        .tail(TailParams {
            from_seq: Some(1),
            follow: true,
        })
        .await
        .unwrap();
    // Writers start before the follower has read anything, so replay and live overlap.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.tcp;
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                let mut n = 0;
                for _ in 0..10 {
                    n += info_burst(&mut c, 10).await;
                }
                n
            })
        })
        .collect();
    let mut written = 50;
    for w in writers {
        written += w.await.unwrap();
    }
    // The tail's own event is logged too.
    let expected = written as u64 + 1;
    let mut events = Vec::new();
    let mut caught_up = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while events.len() < expected as usize {
            match tail.next().await.unwrap() {
                Some(TailItem::Event(e)) => events.push(*e),
                Some(TailItem::CaughtUp { .. }) => caught_up += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("follower saw every event within 60 s");
    assert_eq!(caught_up, 1, "exactly one switch-over marker");
    assert_contiguous(&events, 1);
    // And it keeps following: one more event arrives live.
    info_burst(&mut c, 1).await;
    let next = tokio::time::timeout(Duration::from_secs(10), tail.next())
        .await
        .unwrap()
        .unwrap();
    match next {
        Some(TailItem::Event(e)) => assert_eq!(e.seq, expected + 1),
        other => panic!("expected the next event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_is_told_where_to_resume_and_dropped() {
    let server = Server::start_with(&["--tail-max-lag", "1"]);
    // Four producers at once: events arrive in batches, faster than one follower reads (on
    // PostgreSQL one connection's pipeline commits one event at a time).
    let mut producers = Vec::new();
    for _ in 0..4 {
        producers.push(server.client().await);
    }
    let follower = server.operator_client().await;
    let mut tail = follower
        .tail(TailParams {
            from_seq: None,
            follow: true,
        })
        .await
        .unwrap();
    let mut lagged = None;
    for _ in 0..20 {
        let bursts = producers.iter_mut().map(|p| info_burst(p, 200));
        futures::future::join_all(bursts).await;
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match tail.next().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(e) => return Some(e),
                }
            }
        })
        .await;
        if let Ok(Some(e)) = drained {
            lagged = Some(e);
            break;
        }
    }
    let err = match lagged.expect("a follower 1 event behind under bursts of 200 must be dropped") {
        portcullis_client::ClientError::Server(body) => body,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(err.code, portcullis_protocol::ErrorCode::Unavailable);
    let details = err.details.unwrap();
    assert_eq!(details["reason"], "lagged");
    let resume = details["resume_from_seq"].as_u64().unwrap();
    // The connection is closed after the error.
    let end = tokio::time::timeout(Duration::from_secs(10), tail.next())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    // Resuming from the given seq continues exactly there.
    let mut again = server
        .operator_client()
        .await
        .tail(TailParams {
            from_seq: Some(resume),
            follow: false,
        })
        .await
        .unwrap();
    match again.next().await.unwrap() {
        Some(TailItem::Event(e)) => assert_eq!(e.seq, resume),
        other => panic!("expected event {resume}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_crashes_keep_every_acknowledged_event_and_the_chain() {
    let mut server = Server::start();
    let mut acknowledged = 0;
    for round in 0..3 {
        let mut c = server.client().await;
        acknowledged += info_burst(&mut c, 40).await;
        // SYS.INFO only reads, so its answer does not wait for its event to reach the disk; a
        // later command that is not read-only does wait, and its flush covers every event
        // appended before it (envelope.md, "Durability of answers").
        let r = c
            .call("AUTH.REFRESH", json!({"refresh_token": "not-a-token"}))
            .await
            .unwrap();
        assert!(!r.ok, "{r:?}");
        drop(c);
        if round % 2 == 0 {
            server.kill();
        } else {
            assert!(server.stop().success());
        }
        server.restart();
        let report = verify(&server).await;
        assert!(report.valid, "round {round}: {report:?}");
        let infos = query_all(&server, json!({"command": "SYS.INFO", "limit": 1000})).await;
        assert_eq!(
            infos.len(),
            acknowledged,
            "round {round}: acknowledged SYS.INFO without an event"
        );
    }
    let all = query_all(&server, json!({"limit": 1000})).await;
    assert_contiguous(&all, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_and_rejects_bad_filters() {
    let server = Server::start();
    let mut c = server.client().await;
    info_burst(&mut c, 3).await;
    let unknown = c.call("NOPE.NOPE", json!({})).await.unwrap();
    assert!(!unknown.ok);
    let mut op = server.operator_client().await;
    let page: QueryResult = op
        .call_ok("LOG.QUERY", json!({"outcome": "UNKNOWN_COMMAND"}))
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].command.as_deref(), Some("NOPE.NOPE"));
    let page: QueryResult = op
        .call_ok(
            "LOG.QUERY",
            json!({"actor": "anonymous", "command": "SYS.INFO", "limit": 2}),
        )
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.next_seq, Some(3));
    let past: QueryResult = op
        .call_ok("LOG.QUERY", json!({"until": "2000-01-01T00:00:00Z"}))
        .await
        .unwrap();
    assert!(past.events.is_empty());
    let since: QueryResult = op
        .call_ok(
            "LOG.QUERY",
            json!({"since": "2000-01-01T00:00:00+02:00", "limit": 1000}),
        )
        .await
        .unwrap();
    assert!(since.events.len() >= 4);
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 1001}),
        json!({"since": "yesterday"}),
        json!({"outcome": "MAYBE"}),
        json!({"actor": "root"}),
        json!({"colour": "red"}),
    ] {
        let r = op.call("LOG.QUERY", bad.clone()).await.unwrap();
        assert_eq!(
            r.error_code(),
            Some(portcullis_protocol::ErrorCode::InvalidParams),
            "{bad}"
        );
    }
    // Not for anonymous callers.
    let r = c.call("LOG.QUERY", json!({})).await.unwrap();
    assert_eq!(
        r.error_code(),
        Some(portcullis_protocol::ErrorCode::Unauthenticated)
    );
}

/// The backup procedure of docs/operations.md: a copy of a stopped server's data directory (and,
/// on PostgreSQL, of its database) verifies and serves the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_stopped_data_directory_restores() {
    let mut server = Server::start();
    let mut c = server.client().await;
    info_burst(&mut c, 7).await;
    drop(c);
    assert!(server.stop().success());
    let backup = tempfile::tempdir().unwrap();
    let copy = backup.path().join("restore");
    let status = std::process::Command::new("cp")
        .args([
            "-a",
            &server.data_dir.to_string_lossy(),
            &copy.to_string_lossy(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let envs: Vec<(String, String)> = server
        .copy_database()
        .map(|url| ("PORTCULLIS_DATABASE_URL".to_owned(), url))
        .into_iter()
        .collect();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let run_cli = |args: &[&str]| run_cli_env(args, &envs);
    let (code, out, _) = run_cli(&["log", "verify", "--data-dir", &copy.to_string_lossy()]);
    assert_eq!(code, 0, "{out}");
    let report: VerifyReport = serde_json::from_str(&out).unwrap();
    assert_eq!(report.head_seq, 7);
    let (code, out, _) = run_cli(&[
        "log",
        "tail",
        "--data-dir",
        &copy.to_string_lossy(),
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 7, "every event is in the copy");
    // The original keeps working too, from the same head.
    server.restart();
    let info: serde_json::Value = server
        .client()
        .await
        .call_ok("SYS.INFO", json!({}))
        .await
        .unwrap();
    assert_eq!(info["log_head_seq"], 7);
}

/// Tampers with event `seq` of a stopped server's log (its outcome), straight in the database.
fn tamper_outcome(server: &Server, seq: u64) {
    if server.database_url.is_some() {
        server.psql(&format!(
            "UPDATE events SET record = convert_to(replace(convert_from(record, 'UTF8'), \
             '\"outcome\":\"ok\"', '\"outcome\":\"FORBIDDEN\"'), 'UTF8') WHERE seq = {seq}"
        ));
        return;
    }
    let db = sled::open(server.data_dir.join("db")).unwrap();
    let tree = db.open_tree("events").unwrap();
    let key = seq.to_be_bytes();
    let raw = tree.get(key).unwrap().unwrap().to_vec();
    let text = String::from_utf8(raw[1..].to_vec()).unwrap();
    let mut edited = vec![raw[0]];
    edited.extend(
        text.replacen("\"outcome\":\"ok\"", "\"outcome\":\"FORBIDDEN\"", 1)
            .bytes(),
    );
    tree.insert(key, edited).unwrap();
    db.flush().unwrap();
}

/// The error code of a `LOG.PRUNE` that must be refused.
async fn prune_refusal(op: &mut Client, through: u64) -> ErrorCode {
    let r = op
        .call("LOG.PRUNE", json!({"through_seq": through}))
        .await
        .unwrap();
    r.error_code()
        .unwrap_or_else(|| panic!("pruning through {through} succeeded: {r:?}"))
}

/// Retention as an operator runs it: archive the log with `log tail`, check the archive with
/// `log verify --file`, prune through its last event with `log prune`; the kept log chains to
/// the checkpoint online, offline and after a restart, and the prune is itself logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_archived_then_pruned_and_still_verifies() {
    let mut server = Server::start();
    let mut c = server.client().await;
    info_burst(&mut c, 40).await;
    let addr = server.tcp.to_string();
    let token = server.operator_token();
    let remote = ["--addr", addr.as_str(), "--token", token.expose()];

    let (code, archive, err) =
        run_cli(&[&["log", "tail", "--from", "1", "--json"], &remote[..]].concat());
    assert_eq!(code, 0, "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("archive.ndjson");
    std::fs::write(&file, &archive).unwrap();
    let file_arg = file.to_string_lossy().into_owned();
    let (code, out, err) = run_cli(&["log", "verify", "--file", &file_arg]);
    assert_eq!(code, 0, "{out}{err}");
    let checked: serde_json::Value = serde_json::from_str(&out).unwrap();
    let last_seq = checked["last"]["seq"].as_u64().unwrap();
    let last_hash = checked["last"]["hash"].as_str().unwrap().to_owned();
    assert!(last_seq >= 40, "{out}");
    assert_eq!(checked["checked"].as_u64(), Some(last_seq), "{out}");

    let through = last_seq.to_string();
    let (code, out, err) =
        run_cli(&[&["log", "prune", "--through", &through], &remote[..]].concat());
    assert_eq!(code, 0, "{err}");
    let pruned: PruneResult = serde_json::from_str(&out).unwrap();
    let checkpoint = Checkpoint {
        seq: last_seq,
        hash: last_hash.clone(),
    };
    assert_eq!(
        (pruned.pruned, pruned.first_seq, &pruned.checkpoint),
        (last_seq, last_seq + 1, &checkpoint)
    );

    let report = verify(&server).await;
    assert!(report.valid, "{report:?}");
    assert_eq!(report.first_seq, last_seq + 1);
    assert_eq!(report.checkpoint.as_ref(), Some(&checkpoint));
    let events = query_all(&server, json!({"from_seq": 1})).await;
    assert_eq!(events[0].seq, last_seq + 1);
    assert_eq!(
        events[0].prev, last_hash,
        "the kept log chains to the archive"
    );
    assert_contiguous(&events, last_seq + 1);
    let logged = events
        .iter()
        .find(|e| e.command.as_deref() == Some("LOG.PRUNE"))
        .expect("the prune is logged");
    assert_eq!(logged.outcome, "ok");
    assert_eq!(logged.summary["event"], "log.pruned");
    assert_eq!(logged.summary["pruned"], last_seq);
    assert_eq!(logged.summary["through_seq"], last_seq);
    assert_eq!(logged.summary["checkpoint_hash"], last_hash.as_str());
    let mut op = server.operator_client().await;
    let info: serde_json::Value = op.call_ok("SYS.INFO", json!({})).await.unwrap();
    assert_eq!(info["log_first_seq"], last_seq + 1);

    // Retries change nothing; the newest durable event and seq 0 are refused.
    let again: PruneResult = op
        .call_ok("LOG.PRUNE", json!({"through_seq": last_seq}))
        .await
        .unwrap();
    assert_eq!((again.pruned, &again.checkpoint), (0, &checkpoint));
    for through in [0, info["log_head_seq"].as_u64().unwrap() + 10] {
        assert_eq!(
            prune_refusal(&mut op, through).await,
            ErrorCode::InvalidParams
        );
    }
    // Only the operator: an API key that reads the log may not prune it.
    let key: serde_json::Value = op
        .call_ok(
            "APIKEY.CREATE",
            json!({"name": "siem", "scopes": ["log:read"]}),
        )
        .await
        .unwrap();
    let mut req = Request::new("LOG.PRUNE");
    req.params = Some(json!({"through_seq": last_seq + 1}));
    req.token = Some(Secret::new(key["key"].as_str().unwrap()));
    let r = c.send(req).await.unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::Forbidden), "{r:?}");

    // The next archive starts where the first ended; the two together verify from seq 1.
    info_burst(&mut c, 5).await;
    let (code, second, err) =
        run_cli(&[&["log", "tail", "--from", "1", "--json"], &remote[..]].concat());
    assert_eq!(code, 0, "{err}");
    let opening: Event = serde_json::from_str(second.lines().next().unwrap()).unwrap();
    assert_eq!((opening.seq, &opening.prev), (last_seq + 1, &last_hash));
    let both = tmp.path().join("both.ndjson");
    for (path, text) in [
        (&file, second.clone()),
        (&both, format!("{archive}{second}")),
    ] {
        std::fs::write(path, &text).unwrap();
        let (code, out, _) = run_cli(&["log", "verify", "--file", &path.to_string_lossy()]);
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["checked"].as_u64(),
            Some(text.lines().count() as u64),
            "{out}"
        );
    }

    // Offline and after a restart, the checkpoint holds.
    drop((c, op));
    assert!(server.stop().success());
    let dir = server.data_dir.to_string_lossy().into_owned();
    let (code, out, err) = server.cli(&["log", "verify", "--data-dir", &dir]);
    assert_eq!(code, 0, "{out}{err}");
    let offline: VerifyReport = serde_json::from_str(&out).unwrap();
    assert_eq!(offline.checkpoint.as_ref(), Some(&checkpoint));
    server.restart();
    assert!(verify(&server).await.valid);

    // An edited archive does not verify.
    let edited = archive.replacen("\"outcome\":\"ok\"", "\"outcome\":\"FORBIDDEN\"", 1);
    std::fs::write(&file, edited).unwrap();
    let (code, out, _) = run_cli(&["log", "verify", "--file", &file_arg]);
    assert_eq!(code, 1, "{out}");
}

/// Pruning never destroys the evidence of tampering: a break among the events to remove (or at
/// the first one kept) refuses the prune and removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chain_is_not_pruned() {
    let mut server = Server::start();
    let mut c = server.client().await;
    info_burst(&mut c, 10).await;
    drop(c);
    assert!(server.stop().success());
    tamper_outcome(&server, 6);
    server.restart();
    let mut op = server.operator_client().await;
    for through in [5, 8] {
        assert_eq!(prune_refusal(&mut op, through).await, ErrorCode::Conflict);
    }
    let report = verify(&server).await;
    assert_eq!((report.first_seq, report.first_broken_seq), (1, Some(6)));
    // Below the break it may go: the kept log then still shows the break.
    let r: PruneResult = op
        .call_ok("LOG.PRUNE", json!({"through_seq": 4}))
        .await
        .unwrap();
    assert_eq!(r.first_seq, 5);
    let report = verify(&server).await;
    assert_eq!((report.first_seq, report.first_broken_seq), (5, Some(6)));
}

/// Automatic retention through the real binary: with `log_retain_events` and
/// `log_archive_dir`, a server that starts with too long a log archives the oldest events
/// (a file `log verify --file` accepts, ending at the checkpoint) and removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_retention_archives_then_removes_the_oldest_events() {
    let archives = tempfile::tempdir().unwrap();
    let config = format!(
        "log_retain_events = 100\nlog_archive_dir = \"{}\"\n",
        archives.path().display()
    );
    let mut server = Server::start_config(&config, &[]);
    let mut c = server.client().await;
    info_burst(&mut c, 300).await;
    drop(c);
    // A pass runs at start (then every 5 minutes).
    assert!(server.stop().success());
    server.restart();
    let mut report = verify(&server).await;
    for _ in 0..100 {
        if report.checkpoint.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        report = verify(&server).await;
    }
    assert!(report.valid, "{report:?}");
    let checkpoint = report.checkpoint.clone().expect("old events were removed");
    assert!(checkpoint.seq >= 190, "{report:?}");
    assert!(report.head_seq + 1 - report.first_seq <= 115, "{report:?}");

    let files: Vec<_> = std::fs::read_dir(archives.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let (code, out, err) = run_cli(&["log", "verify", "--file", &files[0].to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
    let archived: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(archived["checked"].as_u64(), Some(checkpoint.seq));
    assert_eq!(archived["last"]["seq"].as_u64(), Some(checkpoint.seq));
    assert_eq!(archived["last"]["hash"], checkpoint.hash.as_str());

    let retained = query_all(&server, json!({"command": "LOG.RETAIN"})).await;
    assert_eq!(retained.len(), 1, "{retained:?}");
    assert_eq!(retained[0].summary["event"], "log.pruned");
    assert_eq!(retained[0].summary["through_seq"], checkpoint.seq);

    // Without an archive directory the setting is refused.
    let (code, _, err) = run_cli(&[
        "serve",
        "--data-dir",
        &server.data_dir.to_string_lossy(),
        "--config",
        &{
            let f = archives.path().join("bad.toml");
            std::fs::write(&f, "log_retain_events = 1000\n").unwrap();
            f.to_string_lossy().into_owned()
        },
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("log_archive_dir"), "{err}");
}
