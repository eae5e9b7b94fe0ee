//! Crash consistency under SIGKILL: the real binary runs concurrent sign-ups, sign-ins, refresh
//! token rotations and link and code consumptions, is killed at pseudo-random moments, and is
//! restarted on the same data directory. After every restart:
//!
//! - nothing acknowledged as consumed can be used again (rotated refresh tokens, used links and
//!   codes);
//! - nothing acknowledged as created is lost (accounts can sign in, sessions are listed and
//!   refresh);
//! - the event log chain verifies, online and (at the end) offline;
//! - every acknowledged command has its `ok` event.
//!
//! The kill moments come from a small PRNG seeded from the clock. The seed is printed (shown
//! with the output of a failed test) and `PORTCULLIS_CRASH_SEED=<seed>` replays the same plan
//! (kill moments and replay choices; the interleaving of the load still varies).

use crate::harness::{as_user, Server};
use crate::mail::Inbox;
use portcullis_client::Client;
use portcullis_protocol::commands::auth::SessionTokens;
use portcullis_protocol::commands::log::{QueryResult, VerifyReport};
use portcullis_protocol::{ErrorCode, Response, Secret};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PASSWORD: &str = "correct horse battery staple";
const ROUNDS: usize = 4;
/// Sends without cooldown or hourly caps, and no rate limits, so the load is not refused.
const CONFIG: &str = "send_cooldown_s = 0\nsends_per_address_per_hour = 1000\n\
                      sends_per_client_per_hour = 100000\n\n[rate_limits]\nenabled = false\n";
/// No refresh grace (a replay a second later is reuse), and cheap password hashing for load.
const FLAGS: &[&str] = &[
    "--refresh-grace-s",
    "0",
    "--argon2-m-kib",
    "64",
    "--argon2-t",
    "1",
];
/// Most operations one load worker runs in one round (the kill normally comes long before).
const MAX_OPS: usize = 5_000;
/// Commands whose `ok` answers create a session whose `ok` event must exist.
const CREATING: [&str; 4] = ["AUTH.SIGNUP", "AUTH.LOGIN", "MAGIC.VERIFY", "OTP.VERIFY"];

// ---------------------------------------------------------------------------------------------
// A small PRNG (xorshift64*), so a failing plan can be replayed from its seed.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    if let Some(s) = std::env::var("PORTCULLIS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return s;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs() ^ u64::from(now.subsec_nanos()) ^ u64::from(std::process::id())
}

// ---------------------------------------------------------------------------------------------
// What the test knows was acknowledged.

struct Account {
    email: String,
    user_id: String,
    password: bool,
    /// Whether a link or code sign-in was acknowledged (the first proof revokes the sessions
    /// that came before it).
    proven: bool,
}

struct Session {
    user_id: String,
    access: Secret,
    /// The newest refresh token; `None` once a rotation was cut short by a crash.
    refresh: Option<Secret>,
    /// Refresh tokens whose rotation was acknowledged.
    rotated: Vec<Secret>,
    /// Ended on purpose (replayed refresh token, first proof of the address).
    revoked: bool,
}

#[derive(Default)]
struct Model {
    accounts: Vec<Account>,
    sessions: BTreeMap<String, Session>,
    /// Link tokens whose `MAGIC.VERIFY` was acknowledged.
    used_links: Vec<String>,
    /// `(flow_id, code)` whose `OTP.VERIFY` was acknowledged.
    used_codes: Vec<(String, String)>,
    /// Session ids of acknowledged session-creating commands, by command.
    created: BTreeMap<&'static str, BTreeSet<String>>,
    /// Acknowledged rotations by session.
    refreshes: BTreeMap<String, u64>,
    last_rotation: Option<Instant>,
    /// Answers during the load that no crash explains.
    failures: Vec<String>,
}

impl Model {
    /// An acknowledged `AUTH.SIGNUP`: the account and the session it started.
    fn signed_up(&mut self, email: String, password: bool, t: &SessionTokens) {
        self.accounts.push(Account {
            email,
            user_id: t.user_id.clone(),
            password,
            proven: false,
        });
        self.add_session("AUTH.SIGNUP", t);
    }

    fn add_session(&mut self, command: &'static str, t: &SessionTokens) {
        self.created
            .entry(command)
            .or_default()
            .insert(t.session_id.clone());
        self.sessions.insert(
            t.session_id.clone(),
            Session {
                user_id: t.user_id.clone(),
                access: t.access_token.clone(),
                refresh: Some(t.refresh_token.clone()),
                rotated: Vec::new(),
                revoked: false,
            },
        );
    }

    fn rotated(&mut self, old: &Secret, t: &SessionTokens) {
        let s = self
            .sessions
            .get_mut(&t.session_id)
            .expect("a refresh of a known session");
        s.rotated.push(old.clone());
        s.refresh = Some(t.refresh_token.clone());
        s.access = t.access_token.clone();
        *self.refreshes.entry(t.session_id.clone()).or_default() += 1;
        self.last_rotation = Some(Instant::now());
    }

    /// The first proof of an address revokes every session of the account started before it.
    fn proven(&mut self, user_id: &str) {
        for s in self.sessions.values_mut() {
            if s.user_id == user_id {
                s.revoked = true;
            }
        }
        for a in self.accounts.iter_mut().filter(|a| a.user_id == user_id) {
            a.proven = true;
        }
    }
}

type Shared = Arc<Mutex<Model>>;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One call; `None` when the connection failed (the server died).
async fn call(c: &mut Client, command: &str, params: Value) -> Option<Response> {
    c.call(command, params).await.ok()
}

fn session_of(r: &Response) -> Option<SessionTokens> {
    if !r.ok {
        return None;
    }
    serde_json::from_value(r.data.clone()).ok()
}

fn unexpected(m: &Shared, what: &str, r: &Response) {
    lock(m)
        .failures
        .push(format!("{what}: unexpected answer {r:?}"));
}

// ---------------------------------------------------------------------------------------------
// Load workers. Each stops at its first failed connection: the request then in flight is
// unacknowledged and the model does not count on it.

/// Signs up new accounts, with a password or without.
async fn signups(server_tcp: std::net::SocketAddr, m: Shared, tag: String, password: bool) {
    let Ok(mut c) = Client::connect(server_tcp).await else {
        return;
    };
    for i in 0..MAX_OPS {
        let email = format!("{tag}-{i}@crash.example");
        let mut p = json!({"email": email});
        if password {
            p["password"] = json!(PASSWORD);
        }
        let Some(r) = call(&mut c, "AUTH.SIGNUP", p).await else {
            return;
        };
        let Some(t) = session_of(&r) else {
            return unexpected(&m, "AUTH.SIGNUP", &r);
        };
        lock(&m).signed_up(email, password, &t);
    }
}

/// Signs in to a password account, then rotates that session's refresh token over and over.
async fn rotations(server_tcp: std::net::SocketAddr, m: Shared, email: String) {
    let Ok(mut c) = Client::connect(server_tcp).await else {
        return;
    };
    let p = json!({"email": email, "password": PASSWORD});
    let Some(r) = call(&mut c, "AUTH.LOGIN", p).await else {
        return;
    };
    let Some(mut t) = session_of(&r) else {
        return unexpected(&m, "AUTH.LOGIN", &r);
    };
    lock(&m).add_session("AUTH.LOGIN", &t);
    for _ in 0..MAX_OPS {
        let old = t.refresh_token.clone();
        let p = json!({"refresh_token": old.expose()});
        let Some(r) = call(&mut c, "AUTH.REFRESH", p).await else {
            // The rotation may or may not have happened: the newest token is unknown.
            if let Some(s) = lock(&m).sessions.get_mut(&t.session_id) {
                s.refresh = None;
            }
            return;
        };
        let Some(next) = session_of(&r) else {
            return unexpected(&m, "AUTH.REFRESH", &r);
        };
        lock(&m).rotated(&old, &next);
        t = next;
    }
}

/// Signs in to a passwordless account by link (`code: false`) or by code, over and over.
async fn email_sign_ins(
    server_tcp: std::net::SocketAddr,
    data_dir: PathBuf,
    m: Shared,
    email: String,
    code: bool,
    stop: Arc<AtomicBool>,
) {
    let Ok(mut c) = Client::connect(server_tcp).await else {
        return;
    };
    let mut outbox = Inbox::outbox_from_now(&data_dir);
    for _ in 0..MAX_OPS {
        match email_sign_in(&mut c, &mut outbox, &m, &email, code, &stop).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(r) => return unexpected(&m, if code { "OTP" } else { "MAGIC" }, &r),
        }
    }
}

/// One `MAGIC.SEND` → `MAGIC.VERIFY` (or `OTP.SEND` → `OTP.VERIFY`) through the outbox.
/// `Ok(None)`: the connection failed or the mail never came (the server died).
async fn email_sign_in(
    c: &mut Client,
    outbox: &mut Inbox,
    m: &Shared,
    email: &str,
    code: bool,
    stop: &AtomicBool,
) -> Result<Option<SessionTokens>, Response> {
    let send = if code { "OTP.SEND" } else { "MAGIC.SEND" };
    let Some(sent) = call(c, send, json!({"email": email})).await else {
        return Ok(None);
    };
    if !sent.ok {
        return Err(sent);
    }
    let Some(mail) = outbox.next_to_unless(email, stop).await else {
        return Ok(None);
    };
    let (verify, params, used) = if code {
        let flow = sent.data["flow_id"].as_str().unwrap_or_default().to_owned();
        let code = mail.code();
        let p = json!({"flow_id": flow, "code": code});
        ("OTP.VERIFY", p, Err((flow, code)))
    } else {
        let token = mail.link_token();
        ("MAGIC.VERIFY", json!({"token": token}), Ok(token))
    };
    let Some(r) = call(c, verify, params).await else {
        return Ok(None);
    };
    let Some(t) = session_of(&r) else {
        return Err(r);
    };
    let mut model = lock(m);
    match used {
        Ok(link) => model.used_links.push(link),
        Err(code) => model.used_codes.push(code),
    }
    model.add_session(verify, &t);
    if !model
        .accounts
        .iter()
        .any(|a| a.user_id == t.user_id && a.proven)
    {
        model.proven(&t.user_id);
        // The session this sign-in started is not affected by its own first proof.
        if let Some(s) = model.sessions.get_mut(&t.session_id) {
            s.revoked = false;
        }
    }
    Ok(Some(t))
}

// ---------------------------------------------------------------------------------------------
// Checks after a restart.

/// Every event with `command` and outcome `ok`, through `LOG.QUERY` pages.
async fn ok_events(c: &mut Client, command: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = 1;
    for _ in 0..100_000 {
        let p = json!({"from_seq": from, "command": command, "outcome": "ok", "limit": 1000});
        let page: QueryResult = c.call_ok("LOG.QUERY", p).await.unwrap();
        out.extend(page.events.iter().map(|e| serde_json::to_value(e).unwrap()));
        match page.next_seq {
            Some(n) => from = n,
            None => return out,
        }
    }
    panic!("LOG.QUERY did not finish");
}

/// (c) the chain verifies; (d) every acknowledged command has its `ok` event.
async fn check_log(server: &Server, m: &Shared, ctx: &str) {
    let mut op = server.operator_client().await;
    let report: VerifyReport = op.call_ok("LOG.VERIFY", json!({})).await.unwrap();
    assert!(report.valid, "{ctx}: the chain does not verify: {report:?}");
    assert_eq!(report.checked, report.head_seq, "{ctx}: {report:?}");

    let (created, refreshes) = {
        let model = lock(m);
        (model.created.clone(), model.refreshes.clone())
    };
    for command in CREATING {
        let events = ok_events(&mut op, command).await;
        let logged: BTreeSet<String> = events
            .iter()
            .filter_map(|e| e["session"].as_str().map(str::to_owned))
            .collect();
        let acked = created.get(command).cloned().unwrap_or_default();
        let missing: Vec<&String> = acked.difference(&logged).collect();
        assert!(
            missing.is_empty(),
            "{ctx}: {} acknowledged {command} without an ok event, e.g. session {:?}",
            missing.len(),
            missing.first()
        );
        assert!(events.len() >= acked.len(), "{ctx}: {command} events");
    }
    let events = ok_events(&mut op, "AUTH.REFRESH").await;
    let mut logged: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        if let Some(s) = e["session"].as_str() {
            *logged.entry(s.to_owned()).or_default() += 1;
        }
    }
    for (sid, n) in &refreshes {
        let got = logged.get(sid).copied().unwrap_or(0);
        assert!(
            got >= *n,
            "{ctx}: session {sid}: {n} acknowledged AUTH.REFRESH, {got} ok events"
        );
    }
    let acked: u64 = refreshes.values().sum();
    assert!(events.len() as u64 >= acked, "{ctx}: AUTH.REFRESH events");
}

/// (b) every acknowledged account still signs in; every acknowledged session that was not
/// ended on purpose is listed, and refreshes when its newest token is known.
async fn check_created(server: &Server, m: &Shared, ctx: &str) {
    let mut c = server.client().await;
    let accounts: Vec<(String, String, bool)> = lock(m)
        .accounts
        .iter()
        .map(|a| (a.email.clone(), a.user_id.clone(), a.password && !a.proven))
        .collect();
    for (email, user_id, has_password) in &accounts {
        if !has_password {
            continue;
        }
        let r = call(
            &mut c,
            "AUTH.LOGIN",
            json!({"email": email, "password": PASSWORD}),
        )
        .await
        .unwrap();
        let t = session_of(&r)
            .unwrap_or_else(|| panic!("{ctx}: acknowledged account {email} cannot sign in: {r:?}"));
        assert_eq!(&t.user_id, user_id, "{ctx}: {email}");
        lock(m).add_session("AUTH.LOGIN", &t);
    }

    // Live sessions, by account.
    let mut by_user: BTreeMap<String, Vec<(String, Secret, Option<Secret>)>> = BTreeMap::new();
    for (sid, s) in lock(m).sessions.iter().filter(|(_, s)| !s.revoked) {
        by_user.entry(s.user_id.clone()).or_default().push((
            sid.clone(),
            s.access.clone(),
            s.refresh.clone(),
        ));
    }
    for (user_id, sessions) in &by_user {
        let r = as_user(&mut c, &sessions[0].1, "SESSION.LIST", json!({})).await;
        assert!(r.ok, "{ctx}: SESSION.LIST of {user_id}: {r:?}");
        let listed: BTreeSet<&str> = r.data["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["session_id"].as_str())
            .collect();
        for (sid, _, _) in sessions {
            assert!(
                listed.contains(sid.as_str()),
                "{ctx}: acknowledged session {sid} of {user_id} is not listed: {listed:?}"
            );
        }
        for (sid, _, refresh) in sessions {
            let Some(old) = refresh else { continue };
            let r = call(
                &mut c,
                "AUTH.REFRESH",
                json!({"refresh_token": old.expose()}),
            )
            .await
            .unwrap();
            let t = session_of(&r).unwrap_or_else(|| {
                panic!("{ctx}: the newest refresh token of session {sid} is refused: {r:?}")
            });
            assert_eq!(&t.session_id, sid);
            lock(m).rotated(old, &t);
        }
    }
}

/// Proves every passwordless account not yet proven (by link or, alternately, by code): the
/// account acknowledged by `AUTH.SIGNUP` exists and is the one the mail signs in to.
async fn prove_new_accounts(server: &Server, m: &Shared, ctx: &str) {
    let mut c = server.client().await;
    let mut outbox = Inbox::outbox_from_now(&server.data_dir);
    let todo: Vec<(String, String)> = lock(m)
        .accounts
        .iter()
        .filter(|a| !a.password && !a.proven)
        .map(|a| (a.email.clone(), a.user_id.clone()))
        .collect();
    let never = AtomicBool::new(false);
    for (i, (email, user_id)) in todo.iter().enumerate() {
        let t = email_sign_in(&mut c, &mut outbox, m, email, i % 2 == 1, &never)
            .await
            .unwrap_or_else(|r| panic!("{ctx}: sign-in by mail of {email}: {r:?}"))
            .unwrap_or_else(|| panic!("{ctx}: no mail to {email}, or the connection failed"));
        assert_eq!(
            &t.user_id, user_id,
            "{ctx}: {email} signed in to another account"
        );
    }
}

/// (a) nothing acknowledged as consumed works again. Replays the rotated refresh tokens of
/// about half the sessions (all of them when `all`), which revokes those sessions.
async fn check_no_replay(server: &Server, m: &Shared, rng: &mut Rng, all: bool, ctx: &str) {
    // With no grace, a rotated token used in a later second is reuse.
    let last = lock(m).last_rotation;
    if let Some(last) = last {
        let ready = last + Duration::from_millis(1200);
        let now = Instant::now();
        if ready > now {
            tokio::time::sleep(ready - now).await;
        }
    }
    let mut c = server.client().await;
    let replays: Vec<(String, Vec<Secret>)> = lock(m)
        .sessions
        .iter()
        .filter(|(_, s)| !s.rotated.is_empty())
        .map(|(sid, s)| (sid.clone(), s.rotated.clone()))
        .collect();
    for (sid, tokens) in replays {
        if !all && rng.next() & 1 == 0 {
            continue;
        }
        for old in &tokens {
            let r = call(
                &mut c,
                "AUTH.REFRESH",
                json!({"refresh_token": old.expose()}),
            )
            .await
            .unwrap();
            assert_eq!(
                r.error_code(),
                Some(ErrorCode::InvalidCredentials),
                "{ctx}: a refresh token of session {sid} acknowledged as rotated works again: {r:?}"
            );
        }
        if let Some(s) = lock(m).sessions.get_mut(&sid) {
            // Reuse detection ended the session.
            s.revoked = true;
        }
    }
    let (links, codes) = {
        let model = lock(m);
        (model.used_links.clone(), model.used_codes.clone())
    };
    for token in &links {
        let r = call(&mut c, "MAGIC.VERIFY", json!({"token": token}))
            .await
            .unwrap();
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::AlreadyUsed),
            "{ctx}: a link acknowledged as used: {r:?}"
        );
    }
    for (flow, code) in &codes {
        let r = call(&mut c, "OTP.VERIFY", json!({"flow_id": flow, "code": code}))
            .await
            .unwrap();
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::AlreadyUsed),
            "{ctx}: a code acknowledged as used: {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_outcomes_survive_sigkill_under_load() {
    let seed = seed();
    println!("crash plan seed {seed} (replay with PORTCULLIS_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let mut server = Server::start_config(CONFIG, FLAGS);
    let m: Shared = Arc::default();

    // Accounts for the rotation and mail workers, the mail ones proven once already.
    {
        let mut c = server.client().await;
        for (tag, password) in [
            ("rotate-0", true),
            ("rotate-1", true),
            ("link", false),
            ("code", false),
        ] {
            let email = format!("{tag}@crash.example");
            let mut p = json!({"email": email});
            if password {
                p["password"] = json!(PASSWORD);
            }
            let t = session_of(&call(&mut c, "AUTH.SIGNUP", p).await.unwrap()).unwrap();
            lock(&m).signed_up(email, password, &t);
        }
        prove_new_accounts(&server, &m, &format!("seed {seed}, setup")).await;
    }

    for round in 0..ROUNDS {
        let ctx = format!("seed {seed}, round {round}");
        let stop = Arc::new(AtomicBool::new(false));
        let tcp = server.tcp;
        let dir = server.data_dir.clone();
        let mut workers = vec![
            tokio::spawn(signups(tcp, m.clone(), format!("pw-{round}-a"), true)),
            tokio::spawn(signups(tcp, m.clone(), format!("pw-{round}-b"), true)),
            tokio::spawn(signups(tcp, m.clone(), format!("nopw-{round}"), false)),
            tokio::spawn(email_sign_ins(
                tcp,
                dir.clone(),
                m.clone(),
                "link@crash.example".into(),
                false,
                stop.clone(),
            )),
            tokio::spawn(email_sign_ins(
                tcp,
                dir,
                m.clone(),
                "code@crash.example".into(),
                true,
                stop.clone(),
            )),
        ];
        for w in 0..2 {
            let email = format!("rotate-{w}@crash.example");
            workers.push(tokio::spawn(rotations(tcp, m.clone(), email)));
        }

        let load_ms = rng.range(50, 400);
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        server.kill();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .unwrap_or_else(|_| panic!("{ctx}: a load worker did not stop after the kill"))
                .unwrap();
        }
        {
            let model = lock(&m);
            assert!(model.failures.is_empty(), "{ctx}: {:?}", model.failures);
            println!(
                "{ctx}: killed after {load_ms} ms; acknowledged so far: {} accounts, {} sessions, \
                 {} rotations, {} links, {} codes",
                model.accounts.len(),
                model.sessions.len(),
                model.refreshes.values().sum::<u64>(),
                model.used_links.len(),
                model.used_codes.len()
            );
        }

        server.restart();
        check_log(&server, &m, &ctx).await;
        check_created(&server, &m, &ctx).await;
        prove_new_accounts(&server, &m, &ctx).await;
        check_no_replay(&server, &m, &mut rng, round + 1 == ROUNDS, &ctx).await;
    }

    // The checks' own commands are acknowledged too; then offline, after a clean stop.
    let ctx = format!("seed {seed}, end");
    check_log(&server, &m, &ctx).await;
    assert!(server.stop().success(), "{ctx}: unclean stop");
    let dir = server.data_dir.to_string_lossy().into_owned();
    let (code, out, err) = server.cli(&["log", "verify", "--data-dir", &dir]);
    assert_eq!(code, 0, "{ctx}: offline verify: {out}{err}");
    let report: VerifyReport = serde_json::from_str(&out).unwrap();
    assert!(report.valid, "{ctx}: {report:?}");
    assert_eq!(report.checked, report.head_seq, "{ctx}: {report:?}");
    let model = lock(&m);
    assert!(
        !model.used_links.is_empty() && !model.used_codes.is_empty() && !model.refreshes.is_empty(),
        "{ctx}: the run exercised nothing"
    );
}
