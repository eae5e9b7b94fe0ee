//! Failures of a node and of the database, with real processes: `portcullis serve` nodes on one
//! PostgreSQL database under a load of acknowledged writes (sign-ups, refresh-token rotations,
//! sign-outs), then
//!
//! - one node is SIGKILLed mid-load: the other nodes' clients see no error, every acknowledged
//!   write is there afterwards (read through the surviving nodes), the chain verifies and holds
//!   the event of every acknowledged command, and the killed node restarts on its data
//!   directory and serves again;
//! - the database itself is SIGKILLed mid-load (a cluster of the test's own) and restarted:
//!   while it is down every command answers `UNAVAILABLE` promptly (never `INTERNAL`, never a
//!   dropped connection); once it is back the same nodes serve again by themselves (a log
//!   follower on one node sees the other's events live again); nothing acknowledged before or
//!   after is lost;
//! - the database stops answering (SIGSTOP) mid-load and then goes on (SIGCONT): the same, the
//!   nodes' deadline turning the silence into `UNAVAILABLE` answers.

use crate::harness::{all_events, Server};
use portcullis_client::{Client, TailItem};
use portcullis_protocol::commands::auth::SessionTokens;
use portcullis_protocol::commands::log::{TailParams, VerifyReport};
use portcullis_protocol::{ErrorCode, Request, Response, Secret};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// No per-address rate limits: every client of the load comes from 127.0.0.1.
const CONFIG: &str = "[rate_limits]\nenabled = false\n";
/// Longest any single answer may take: far above the database timeouts the nodes run with
/// (`--database-timeout-ms`), so only a hang reaches it.
const HANG: Duration = Duration::from_secs(30);
/// The nodes' flags: the configuration above (kept in `dir`) and the database timeout
/// (statement, connection, pool wait), milliseconds.
fn flags(dir: &tempfile::TempDir, db_timeout_ms: u64) -> Vec<String> {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, CONFIG).unwrap();
    vec![
        "--config".into(),
        path.to_string_lossy().into_owned(),
        "--database-timeout-ms".into(),
        db_timeout_ms.to_string(),
    ]
}

// ---------------------------------------------------------------------------------------------
// What the clients know was acknowledged.

#[derive(Debug)]
struct Session {
    user_id: String,
    access: Secret,
    /// The newest refresh token; `None` once a rotation's outcome is unknown (no answer, or
    /// `UNAVAILABLE`: it may have taken effect).
    refresh: Option<Secret>,
    /// An acknowledged `AUTH.LOGOUT`.
    logged_out: bool,
    /// A sign-out whose outcome is unknown.
    logout_unknown: bool,
}

#[derive(Default)]
struct Model {
    sessions: BTreeMap<String, Session>,
    /// `(command, session id)` of every acknowledged write.
    acked: Vec<(&'static str, String)>,
    /// Answers that break a rule of the test.
    failures: Vec<String>,
}

type Shared = Arc<Mutex<Model>>;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What became of one request.
enum Answer {
    Ok(Value),
    Err(ErrorCode),
    /// The connection failed (the node died), or no answer within [`HANG`].
    Lost(String),
}

/// Decides whether an error answer is allowed at this moment (a failure is recorded
/// otherwise), given the command.
type Judge = Arc<dyn Fn(&str, ErrorCode) -> bool + Send + Sync>;

async fn send(c: &mut Client, req: Request) -> Answer {
    match tokio::time::timeout(HANG, c.send(req)).await {
        Err(_) => Answer::Lost("no answer in time (a hang)".into()),
        Ok(Err(e)) => Answer::Lost(format!("connection failed: {e}")),
        Ok(Ok(Response { ok: true, data, .. })) => Answer::Ok(data),
        Ok(Ok(r)) => Answer::Err(r.error_code().unwrap_or(ErrorCode::Internal)),
    }
}

/// [`send`], and a failure recorded if the request was sent and answered `ok` while the
/// database was down (it cannot have succeeded).
async fn checked(
    c: &mut Client,
    req: Request,
    phase: &AtomicU8,
    model: &Shared,
    name: &str,
) -> Answer {
    let command = req.command.clone();
    let sent = phase.load(Ordering::SeqCst);
    let a = send(c, req).await;
    if matches!(a, Answer::Ok(_)) && sent == DOWN && phase.load(Ordering::SeqCst) == DOWN {
        lock(model).failures.push(format!(
            "{name}: {command} answered ok while the database was down"
        ));
    }
    a
}

/// One load worker on one node: iterations of sign-up (passwordless), two refresh-token
/// rotations and, every other time, a sign-out; until `stop` (or `max` iterations). Every
/// acknowledged write goes into the model; `judge` says which errors the moment allows, and
/// `on_lost` whether a lost connection ends the worker quietly (its node was killed) or is a
/// failure.
#[allow(clippy::too_many_arguments)]
async fn worker(
    node: std::net::SocketAddr,
    name: String,
    model: Shared,
    stop: Arc<AtomicBool>,
    max: usize,
    acked: Arc<AtomicUsize>,
    ok_streak: Arc<AtomicUsize>,
    judge: Judge,
    lost_is_failure: bool,
    phase: Arc<AtomicU8>,
) {
    let Ok(mut c) = Client::connect(node).await else {
        lock(&model)
            .failures
            .push(format!("{name}: cannot connect"));
        return;
    };
    let judge = judge.as_ref();
    // Handles an answer that is not `ok`: `true` to go on with the next iteration, `false` to
    // end the worker.
    let refused = |model: &Shared, what: &str, a: Answer| -> bool {
        ok_streak.store(0, Ordering::SeqCst);
        match a {
            Answer::Ok(_) => true,
            Answer::Err(code) => {
                if !judge(what, code) {
                    lock(model)
                        .failures
                        .push(format!("{name}: {what} answered {code:?}"));
                }
                true
            }
            Answer::Lost(why) => {
                if lost_is_failure {
                    lock(model).failures.push(format!("{name}: {what}: {why}"));
                }
                false
            }
        }
    };
    for i in 0..max {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let email = format!("{name}-{i}@example.org");
        let tokens: SessionTokens = match checked(
            &mut c,
            Request::new("AUTH.SIGNUP").params(json!({"email": email})),
            &phase,
            &model,
            &name,
        )
        .await
        {
            Answer::Ok(data) => serde_json::from_value(data).unwrap(),
            other => {
                if !refused(&model, "AUTH.SIGNUP", other) {
                    return;
                }
                // Not too fast while the database is away.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let sid = tokens.session_id.clone();
        {
            let mut m = lock(&model);
            m.acked.push(("AUTH.SIGNUP", sid.clone()));
            m.sessions.insert(
                sid.clone(),
                Session {
                    user_id: tokens.user_id.clone(),
                    access: tokens.access_token.clone(),
                    refresh: Some(tokens.refresh_token.clone()),
                    logged_out: false,
                    logout_unknown: false,
                },
            );
        }
        acked.fetch_add(1, Ordering::SeqCst);
        let mut complete = true;
        let mut refresh = tokens.refresh_token.clone();
        let mut access = tokens.access_token.clone();
        for _ in 0..2 {
            let a = checked(
                &mut c,
                Request::new("AUTH.REFRESH").params(json!({"refresh_token": refresh.expose()})),
                &phase,
                &model,
                &name,
            )
            .await;
            match a {
                Answer::Ok(data) => {
                    let t: SessionTokens = serde_json::from_value(data).unwrap();
                    let mut m = lock(&model);
                    m.acked.push(("AUTH.REFRESH", sid.clone()));
                    let s = m.sessions.get_mut(&sid).unwrap();
                    s.refresh = Some(t.refresh_token.clone());
                    s.access = t.access_token.clone();
                    refresh = t.refresh_token;
                    access = t.access_token;
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                other => {
                    lock(&model).sessions.get_mut(&sid).unwrap().refresh = None;
                    if !refused(&model, "AUTH.REFRESH", other) {
                        return;
                    }
                    complete = false;
                    break;
                }
            }
        }
        if complete && i % 2 == 1 {
            match checked(
                &mut c,
                Request::new("AUTH.LOGOUT").token(access.clone()),
                &phase,
                &model,
                &name,
            )
            .await
            {
                Answer::Ok(_) => {
                    let mut m = lock(&model);
                    m.acked.push(("AUTH.LOGOUT", sid.clone()));
                    m.sessions.get_mut(&sid).unwrap().logged_out = true;
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                other => {
                    lock(&model).sessions.get_mut(&sid).unwrap().logout_unknown = true;
                    if !refused(&model, "AUTH.LOGOUT", other) {
                        return;
                    }
                    complete = false;
                }
            }
        }
        if complete {
            ok_streak.fetch_add(1, Ordering::SeqCst);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits (bounded) until `done()`; panics with `what` if that does not happen, and with the
/// failures as soon as any is recorded.
async fn until(model: &Shared, what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        {
            let m = lock(model);
            assert!(m.failures.is_empty(), "{:#?}", m.failures);
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything acknowledged is there, read through `readers` (in turn): every account; every
/// session signed out stays signed out; every other session whose newest refresh token is
/// known rotates it once more; every acknowledged write has its `ok` event; the chain verifies.
async fn acknowledged_writes_survived(model: &mut Model, readers: &[&Server]) {
    assert!(model.failures.is_empty(), "{:#?}", model.failures);
    let mut ops = Vec::new();
    for r in readers {
        ops.push(r.operator_client().await);
    }
    let mut users = Vec::new();
    for (n, (sid, s)) in model.sessions.iter_mut().enumerate() {
        let c = &mut ops[n % readers.len()];
        let r = c
            .call("ADMIN.USER.GET", json!({"user_id": s.user_id}))
            .await
            .unwrap();
        assert!(r.ok, "the account of session {sid} is gone: {r:?}");
        users.push(&s.user_id);
        if s.logged_out {
            let r = c
                .send(Request::new("USER.ME").token(s.access.clone()))
                .await
                .unwrap();
            assert_eq!(
                r.error_code(),
                Some(ErrorCode::Unauthenticated),
                "signed-out session {sid} still works"
            );
        } else if let (Some(refresh), false) = (&s.refresh, s.logout_unknown) {
            let r = c
                .call("AUTH.REFRESH", json!({"refresh_token": refresh.expose()}))
                .await
                .unwrap();
            assert!(r.ok, "session {sid} lost its newest refresh token: {r:?}");
            let t: SessionTokens = serde_json::from_value(r.data).unwrap();
            s.refresh = Some(t.refresh_token);
            s.access = t.access_token;
        }
    }
    assert!(!users.is_empty());
    // The event of every acknowledged write, as often as it was acknowledged.
    let events = all_events(readers[0]).await;
    let mut logged: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &events {
        if e["outcome"] == "ok" {
            if let (Some(c), Some(s)) = (e["command"].as_str(), e["session"].as_str()) {
                *logged.entry((c.to_owned(), s.to_owned())).or_default() += 1;
            }
        }
    }
    // (The rotations of this check are not in `acked`.)
    let mut wanted: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (c, s) in &model.acked {
        *wanted.entry(((*c).to_owned(), s.clone())).or_default() += 1;
    }
    for (k, n) in &wanted {
        let have = logged.get(k).copied().unwrap_or(0);
        assert!(have >= *n, "{k:?} acknowledged {n} times, logged {have}");
    }
    let last = readers[readers.len() - 1];
    let report: VerifyReport = last
        .operator_client()
        .await
        .call_ok("LOG.VERIFY", json!({}))
        .await
        .unwrap();
    assert!(report.valid, "{report:?}");
    assert!(
        report.checked >= u64::try_from(events.len()).unwrap(),
        "{report:?}, {} events read, the last {:?}",
        events.len(),
        events.last().map(|e| &e["seq"])
    );
}

/// A fresh sign-up and rotation on `node`.
async fn serves(node: &Server) {
    let mut c = node.client().await;
    let t: SessionTokens = c
        .call_ok(
            "AUTH.SIGNUP",
            json!({"email": format!("after-{}@example.org", node.pid())}),
        )
        .await
        .unwrap();
    let r = c
        .call(
            "AUTH.REFRESH",
            json!({"refresh_token": t.refresh_token.expose()}),
        )
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
}

/// Three nodes under load; node 0 is SIGKILLed once its clients have had 30 writes
/// acknowledged. The clients of nodes 1 and 2 see no error at all; afterwards everything
/// acknowledged by any node (node 0 included) is there, with its event in a chain that
/// verifies; node 0 restarts on its data directory and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_node_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let flags = flags(&dir, 2_000);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut nodes = Server::cluster(3, &flags);
    let model: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU8::new(UP));
    let acked: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let after_kill = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for w in 0..2 {
            // Nothing but `ok` is expected from any node: the victim's clients lose their
            // connection instead.
            let judge: Judge = Arc::new(|_, _| false);
            // Survivors count complete iterations after the kill.
            let streak = if n == 0 {
                Arc::default()
            } else {
                Arc::clone(&after_kill)
            };
            workers.push(tokio::spawn(worker(
                node.tcp,
                format!("n{n}w{w}"),
                Arc::clone(&model),
                Arc::clone(&stop),
                if n == 0 { 1_000 } else { 400 },
                Arc::clone(&acked[n]),
                streak,
                judge,
                n != 0,
                Arc::clone(&phase),
            )));
        }
    }
    until(
        &model,
        "node 0 acknowledged 30 writes",
        Duration::from_secs(120),
        || acked[0].load(Ordering::SeqCst) >= 30,
    )
    .await;
    nodes[0].kill();
    after_kill.store(0, Ordering::SeqCst);
    let before = acked[1].load(Ordering::SeqCst) + acked[2].load(Ordering::SeqCst);
    // The survivors go on serving: 20 more complete iterations between them.
    until(
        &model,
        "the other nodes kept serving after the kill",
        Duration::from_secs(120),
        || after_kill.load(Ordering::SeqCst) >= 20,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let mut m = std::mem::take(&mut *lock(&model));
    eprintln!(
        "acknowledged writes: {} by node 0 before its kill, {} by the others ({} after it)",
        acked[0].load(Ordering::SeqCst),
        acked[1].load(Ordering::SeqCst) + acked[2].load(Ordering::SeqCst),
        acked[1].load(Ordering::SeqCst) + acked[2].load(Ordering::SeqCst) - before,
    );
    assert!(m.failures.is_empty(), "{:#?}", m.failures);
    assert!(acked[1].load(Ordering::SeqCst) + acked[2].load(Ordering::SeqCst) > before);
    acknowledged_writes_survived(&mut m, &[&nodes[1], &nodes[2]]).await;
    nodes[0].restart();
    serves(&nodes[0]).await;
    acknowledged_writes_survived(&mut m, &[&nodes[0], &nodes[2], &nodes[1]]).await;
}

/// Phases of the database in the test below.
const UP: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;

/// Two nodes on a PostgreSQL cluster of the test's own, under load. The cluster is SIGKILLed
/// (postmaster, then its backends as they notice) and, after every client has been answered
/// `UNAVAILABLE` a few times, restarted on the same data directory and port. Every answer of
/// the whole run is `ok` or `UNAVAILABLE`, and comes well within the timeouts (no hang, no
/// dropped connection); every answer given while the database was down is `UNAVAILABLE`; after
/// the restart each client completes ten full iterations in a row without any node being
/// restarted; everything acknowledged, before and after, is there; a `LOG.TAIL` follower on
/// node 1 sees node 0's next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_database_mid_load_then_restarting_it() {
    database_outage(Outage::Crash).await;
}

/// The same with a database that stops answering (every server process SIGSTOPped: nothing is
/// refused or closed, and `statement_timeout` cannot fire) and then goes on (SIGCONT): the
/// nodes' own deadline turns the silence into `UNAVAILABLE` answers instead of hung commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_stops_answering_mid_load_then_goes_on() {
    database_outage(Outage::Silence).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// SIGKILL, then a restart on the same data directory.
    Crash,
    /// SIGSTOP, then SIGCONT.
    Silence,
}

async fn database_outage(outage: Outage) {
    let db = portcullis_testdb::Cluster::start_private();
    let url = db.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    // A short timeout where only the nodes' deadline ends the wait.
    let flags = flags(&dir, if outage == Outage::Crash { 2_000 } else { 500 });
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let nodes = Server::cluster_on(url, 2, &flags);
    let model: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU8::new(UP));
    let acked = Arc::new(AtomicUsize::new(0));
    let unavailable: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
    let streaks: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
    let mut workers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for w in 0..2 {
            let k = n * 2 + w;
            let judge: Judge = {
                let phase = Arc::clone(&phase);
                let unavailable = Arc::clone(&unavailable[k]);
                Arc::new(move |_, code| {
                    // Only UNAVAILABLE, at any time (a request in flight at the kill or the
                    // restart may go either way).
                    if code != ErrorCode::Unavailable {
                        return false;
                    }
                    if phase.load(Ordering::SeqCst) == DOWN {
                        unavailable.fetch_add(1, Ordering::SeqCst);
                    }
                    true
                })
            };
            workers.push(tokio::spawn(worker(
                node.tcp,
                format!("n{n}w{w}"),
                Arc::clone(&model),
                Arc::clone(&stop),
                100_000,
                Arc::clone(&acked),
                Arc::clone(&streaks[k]),
                judge,
                true,
                Arc::clone(&phase),
            )));
        }
    }
    until(
        &model,
        "30 writes acknowledged",
        Duration::from_secs(120),
        || acked.load(Ordering::SeqCst) >= 30,
    )
    .await;
    match outage {
        Outage::Crash => db.kill(),
        Outage::Silence => db.pause(),
    }
    phase.store(DOWN, Ordering::SeqCst);
    until(
        &model,
        "every client was answered UNAVAILABLE while the database was down",
        Duration::from_secs(120),
        || unavailable.iter().all(|u| u.load(Ordering::SeqCst) >= 3),
    )
    .await;
    let acked_while_down = lock(&model).acked.len();
    phase.store(BACK, Ordering::SeqCst);
    for s in &streaks {
        s.store(0, Ordering::SeqCst);
    }
    match outage {
        Outage::Crash => db.restart(),
        Outage::Silence => db.resume(),
    }
    until(
        &model,
        "service resumed by itself after the database restarted",
        Duration::from_secs(120),
        || streaks.iter().all(|s| s.load(Ordering::SeqCst) >= 10),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let mut m = std::mem::take(&mut *lock(&model));
    eprintln!(
        "acknowledged writes: {acked_while_down} before the restart, {} in all; UNAVAILABLE \
         answers while down, by client: {:?}",
        m.acked.len(),
        unavailable
            .iter()
            .map(|u| u.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
    assert!(m.failures.is_empty(), "{:#?}", m.failures);
    // Writes were acknowledged again after the restart.
    assert!(m.acked.len() > acked_while_down);
    acknowledged_writes_survived(&mut m, &[&nodes[0], &nodes[1]]).await;
    other_nodes_events_are_followed(&nodes[1], &nodes[0]).await;
}

/// A follower on `reader` sees the next event `writer` appends, live: `reader`'s log watcher
/// (LISTEN, and polling behind it) works again after the outage.
async fn other_nodes_events_are_followed(reader: &Server, writer: &Server) {
    let mut tail = reader
        .operator_client()
        .await
        .tail(TailParams {
            from_seq: None,
            follow: true,
        })
        .await
        .unwrap();
    // Live once caught up (the tail's own event may come first).
    let live = tokio::time::timeout(HANG, async {
        loop {
            match tail.next().await.unwrap() {
                Some(TailItem::CaughtUp { .. }) => return,
                Some(TailItem::Event(_)) => {}
                other => panic!("the follower did not start: {other:?}"),
            }
        }
    })
    .await;
    assert!(live.is_ok(), "the follower never caught up");
    let t: SessionTokens = writer
        .client()
        .await
        .call_ok("AUTH.SIGNUP", json!({"email": "followed@example.org"}))
        .await
        .unwrap();
    let seen = tokio::time::timeout(HANG, async {
        loop {
            match tail.next().await.unwrap() {
                Some(TailItem::Event(e)) if e.session.as_deref() == Some(&t.session_id) => {
                    return;
                }
                Some(_) => {}
                None => panic!("the follow ended"),
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "a follower did not see another node's event after the outage"
    );
}
