//! The named workloads: how each prepares its connections (accounts, sessions, log events) and
//! what each request and answer looks like.

use crate::conn::LineConn;
use crate::stats::{Shard, Window};
use anyhow::{anyhow, bail, Context, Result};
use portcullis_client::TlsConnector;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one answer meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A success: its latency is recorded.
    Ok,
    /// A failure, by code.
    Err(String),
    /// Housekeeping of the load generator (token renewal, a replacement session): not counted.
    Skip,
}

/// Produces batches of requests and judges their answers. One per connection.
pub trait Driver: Send {
    /// Requests per batch (the pipeline depth).
    fn depth(&self) -> usize;
    /// Appends the next batch, exactly [`Driver::depth`] request lines.
    fn fill(&mut self, out: &mut Vec<u8>);
    /// Judges the answer to request `slot` of the batch.
    fn response(&mut self, slot: usize, line: &[u8]) -> Outcome;
}

/// Runs a closed loop on one connection until the window ends: write a batch of `depth`
/// requests, then read `depth` answers, timing each from the start of the batch's write. With
/// `pace`, waits that long between batches (a probe rather than a load).
pub async fn drive(
    mut conn: LineConn,
    mut driver: Box<dyn Driver>,
    shard: Arc<Shard>,
    window: Window,
    pace: Option<Duration>,
) -> Result<()> {
    let depth = driver.depth();
    let mut out = Vec::with_capacity(256 * depth);
    let mut lat = Vec::with_capacity(depth);
    let mut errs = Vec::new();
    while !window.over() {
        out.clear();
        driver.fill(&mut out);
        let t0 = Instant::now();
        if let Err(e) = conn.write_all(&out).await {
            shard.error(&format!("io: {}", e.kind()));
            return Ok(());
        }
        for slot in 0..depth {
            let line = match conn.read_line().await {
                Ok(l) => l,
                Err(e) => {
                    shard.commit(&lat, &errs);
                    shard.error(&format!("io: {}", e.kind()));
                    return Ok(());
                }
            };
            let t = Instant::now();
            let outcome = driver.response(slot, line);
            if !window.contains(t) {
                continue;
            }
            match outcome {
                Outcome::Ok => lat.push(micros(t.duration_since(t0))),
                Outcome::Err(code) => errs.push(code),
                Outcome::Skip => {}
            }
        }
        shard.commit(&lat, &errs);
        lat.clear();
        errs.clear();
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
    }
    Ok(())
}

/// A duration in whole microseconds (at least 1).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

#[derive(Deserialize)]
struct ErrLite {
    code: String,
}

#[derive(Deserialize)]
struct Lite<T> {
    ok: bool,
    #[serde(default = "none")]
    data: Option<T>,
    #[serde(default)]
    error: Option<ErrLite>,
}

fn none<T>() -> Option<T> {
    None
}

/// The tokens of a sign-in or refresh.
#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    /// Bearer token.
    pub access_token: String,
    /// Refresh token.
    pub refresh_token: String,
    /// Access-token lifetime, seconds.
    pub expires_in: u64,
}

/// Every answer of the bench's requests starts like this when it succeeded (the bench sends no
/// `id`, and the server writes the envelope members in a fixed order).
const OK_PREFIX: &[u8] = br#"{"id":null,"ok":true,"#;

/// Success or the error code of an answer line, parsing it only when the fast check fails.
pub fn judge(line: &[u8]) -> Outcome {
    if line.starts_with(OK_PREFIX) {
        return Outcome::Ok;
    }
    match serde_json::from_slice::<Lite<serde::de::IgnoredAny>>(line) {
        Ok(r) if r.ok => Outcome::Ok,
        Ok(r) => Outcome::Err(r.error.map_or_else(|| "UNKNOWN".to_owned(), |e| e.code)),
        Err(_) => Outcome::Err("bad_response".to_owned()),
    }
}

/// Decodes the data of a successful answer, or names the failure.
pub fn data_of<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, String> {
    match serde_json::from_slice::<Lite<T>>(line) {
        Ok(Lite {
            ok: true,
            data: Some(d),
            ..
        }) => Ok(d),
        Ok(Lite {
            ok: false,
            error: Some(e),
            ..
        }) => Err(e.code),
        _ => Err("bad_response".to_owned()),
    }
}

/// One request line (with its `\n`).
pub fn request_line(command: &str, params: Value, token: Option<&str>) -> Vec<u8> {
    let mut v = json!({ "command": command, "params": params });
    if let (Some(t), Value::Object(m)) = (token, &mut v) {
        m.insert("token".into(), Value::String(t.to_owned()));
    }
    let mut out = serde_json::to_vec(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn token_safe(t: &str) -> bool {
    t.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn push_refresh(out: &mut Vec<u8>, refresh_token: &str) {
    if token_safe(refresh_token) {
        let _ = writeln!(
            out,
            r#"{{"command":"AUTH.REFRESH","params":{{"refresh_token":"{refresh_token}"}}}}"#
        );
    } else {
        out.extend_from_slice(&request_line(
            "AUTH.REFRESH",
            json!({ "refresh_token": refresh_token }),
            None,
        ));
    }
}

/// Unique addresses for the accounts a run creates.
#[derive(Debug, Clone)]
pub struct Emails {
    run: String,
    conn: usize,
    n: u64,
}

impl Emails {
    /// Addresses of connection `conn` in run `run`.
    pub fn new(run: &str, conn: usize) -> Emails {
        Emails {
            run: run.to_owned(),
            conn,
            n: 0,
        }
    }

    fn next_addr(&mut self) -> String {
        self.n += 1;
        format!("bench-{}-c{}-{}@example.com", self.run, self.conn, self.n)
    }
}

fn signup_line(email: &str, password: Option<&str>) -> Vec<u8> {
    let mut params = json!({ "email": email });
    if let (Some(p), Value::Object(m)) = (password, &mut params) {
        m.insert("password".into(), Value::String(p.to_owned()));
    }
    request_line("AUTH.SIGNUP", params, None)
}

/// Sign-up attempts of the setup when the server answers `UNAVAILABLE`.
const SIGNUP_ATTEMPTS: u64 = 6;

/// Creates an account (passwordless unless `password`) and returns its session's tokens.
///
/// Setup is not measured: a sign-up answered `UNAVAILABLE` (on PostgreSQL, concurrent
/// sign-ups into near-empty tables can exhaust the store's serialization retries) is tried
/// again after a short pause, a few times, before the run gives up.
pub async fn signup(conn: &mut LineConn, email: &str, password: Option<&str>) -> Result<Tokens> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let answer = conn.call(&signup_line(email, password)).await?;
        match data_of::<Tokens>(&answer) {
            Ok(t) => return Ok(t),
            Err(code) if code == "UNAVAILABLE" && attempt < SIGNUP_ATTEMPTS => {
                let pause = 20 * attempt + rand::random::<u64>() % 50;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(code) => bail!("AUTH.SIGNUP failed: {code}{}", hint(&code)),
        }
    }
}

/// Advice for an error code seen during setup.
pub fn hint(code: &str) -> &'static str {
    if code == "RATE_LIMITED" {
        " (the target's rate limits are on: set rate_limits.enabled = false in its config)"
    } else {
        ""
    }
}

/// The same request over and over, judged by `check`.
pub struct Fixed {
    line: Vec<u8>,
    depth: usize,
    check: fn(&[u8]) -> Outcome,
}

impl Fixed {
    /// A driver that repeats `line` (one request, with its `\n`).
    pub fn new(line: Vec<u8>, depth: usize, check: fn(&[u8]) -> Outcome) -> Fixed {
        Fixed { line, depth, check }
    }
}

impl Driver for Fixed {
    fn depth(&self) -> usize {
        self.depth
    }

    fn fill(&mut self, out: &mut Vec<u8>) {
        for _ in 0..self.depth {
            out.extend_from_slice(&self.line);
        }
    }

    fn response(&mut self, _slot: usize, line: &[u8]) -> Outcome {
        (self.check)(line)
    }
}

/// `SYS.PING`.
pub fn ping_line() -> Vec<u8> {
    b"{\"command\":\"SYS.PING\"}\n".to_vec()
}

/// `USER.ME` with a bearer token; renews the token (by `AUTH.REFRESH`, not counted) once half
/// its lifetime has passed.
pub struct Me {
    depth: usize,
    line: Vec<u8>,
    refresh: String,
    renew_at: Instant,
    renewing: bool,
}

impl Me {
    /// A driver for the session `t`.
    pub fn new(t: Tokens, depth: usize) -> Me {
        Me {
            depth,
            line: request_line("USER.ME", json!({}), Some(&t.access_token)),
            refresh: t.refresh_token,
            renew_at: Instant::now() + Duration::from_secs(t.expires_in / 2),
            renewing: false,
        }
    }
}

impl Driver for Me {
    fn depth(&self) -> usize {
        self.depth
    }

    fn fill(&mut self, out: &mut Vec<u8>) {
        let mut n = self.depth;
        if Instant::now() >= self.renew_at {
            self.renewing = true;
            push_refresh(out, &self.refresh);
            n -= 1;
        }
        for _ in 0..n {
            out.extend_from_slice(&self.line);
        }
    }

    fn response(&mut self, slot: usize, line: &[u8]) -> Outcome {
        if slot == 0 && self.renewing {
            self.renewing = false;
            return match data_of::<Tokens>(line) {
                Ok(t) => {
                    self.line = request_line("USER.ME", json!({}), Some(&t.access_token));
                    self.refresh = t.refresh_token;
                    self.renew_at = Instant::now() + Duration::from_secs(t.expires_in / 2);
                    Outcome::Skip
                }
                Err(code) => Outcome::Err(code),
            };
        }
        judge(line)
    }
}

/// Refresh-token chains: every request presents a chain's newest refresh token, which the
/// server consumes (one compare-and-swap `Active → Rotated`, durable before the answer) and
/// replaces. `depth` chains per connection, one request of each per batch. A chain that fails
/// is replaced by a new passwordless account (not counted).
pub struct Chains {
    slots: Vec<Option<String>>,
    signing_up: Vec<bool>,
    emails: Emails,
}

impl Chains {
    /// Chains starting at the given refresh tokens.
    pub fn new(refresh_tokens: Vec<String>, emails: Emails) -> Chains {
        let n = refresh_tokens.len();
        Chains {
            slots: refresh_tokens.into_iter().map(Some).collect(),
            signing_up: vec![false; n],
            emails,
        }
    }
}

impl Driver for Chains {
    fn depth(&self) -> usize {
        self.slots.len()
    }

    fn fill(&mut self, out: &mut Vec<u8>) {
        for (i, slot) in self.slots.iter().enumerate() {
            match slot {
                Some(t) => {
                    self.signing_up[i] = false;
                    push_refresh(out, t);
                }
                None => {
                    self.signing_up[i] = true;
                    out.extend_from_slice(&signup_line(&self.emails.next_addr(), None));
                }
            }
        }
    }

    fn response(&mut self, slot: usize, line: &[u8]) -> Outcome {
        match data_of::<Tokens>(line) {
            Ok(t) => {
                self.slots[slot] = Some(t.refresh_token);
                if self.signing_up[slot] {
                    Outcome::Skip
                } else {
                    Outcome::Ok
                }
            }
            Err(code) => {
                self.slots[slot] = None;
                Outcome::Err(code)
            }
        }
    }
}

/// The Redis anchor's request and check.
pub fn redis_check(line: &[u8]) -> Outcome {
    if line == b"+PONG" {
        Outcome::Ok
    } else {
        Outcome::Err(format!("redis: {}", String::from_utf8_lossy(line)))
    }
}

/// What the workloads that need accounts start from, per connection.
pub enum Setup {
    /// Nothing.
    None,
    /// One passwordless session.
    Session,
    /// `depth` passwordless sessions.
    Sessions,
    /// One account with a password.
    Password,
}

/// A connection ready to run.
pub struct Prepared {
    /// The connection.
    pub conn: LineConn,
    /// Its driver.
    pub driver: Box<dyn Driver>,
}

/// Password of the accounts of `login` and `mixed`. Unique per run, yet free of the words of
/// the accounts' addresses (`bench`, the run id), which the password policy refuses: the run
/// id's hex digits are spelt with the letters `g` to `v`.
pub fn bench_password(run: &str) -> String {
    let spelt: String = run
        .chars()
        .map(
            |c| match c.to_digit(16).and_then(|d| char::from_digit(d + 16, 32)) {
                Some(letter) => letter,
                None => c,
            },
        )
        .collect();
    format!("login-pass-{spelt}")
}

/// Builds a connection's driver from its session (if any), depth, address generator and address.
pub type MakeDriver = fn(Tokens, usize, Emails, &str) -> Box<dyn Driver>;

/// Opens `connections` connections and prepares each with `make`, concurrently. Connection
/// `i` goes to `addrs[i % addrs.len()]` (round-robin over the nodes); with several nodes its
/// accounts are signed up through the next node, so every session it then uses was created on
/// another node than the one it is used on.
pub async fn prepare(
    addrs: &[String],
    tls: Option<TlsConnector>,
    connections: usize,
    depth: usize,
    run: &str,
    setup: Setup,
    make: MakeDriver,
) -> Result<Vec<Prepared>> {
    if addrs.is_empty() {
        bail!("no server address");
    }
    let setup = Arc::new(setup);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let addr = addrs[i % addrs.len()].clone();
        let setup_addr = addrs[(i + 1) % addrs.len()].clone();
        let run = run.to_owned();
        let setup = Arc::clone(&setup);
        let tls = tls.clone();
        tasks.spawn(async move {
            let conn = LineConn::connect_with(&addr, tls.as_ref())
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let mut emails = Emails::new(&run, i);
            let email = emails.next_addr();
            let password = bench_password(&run);
            let needs_setup = !matches!(*setup, Setup::None);
            let mut via = if needs_setup && setup_addr != addr {
                Some(
                    LineConn::connect_with(&setup_addr, tls.as_ref())
                        .await
                        .with_context(|| format!("connecting to {setup_addr}"))?,
                )
            } else {
                None
            };
            let mut conn = conn;
            let sc: &mut LineConn = match via.as_mut() {
                Some(c) => c,
                None => &mut conn,
            };
            let driver: Box<dyn Driver> = match *setup {
                Setup::None => make(empty_tokens(), depth, emails, &email),
                Setup::Session => {
                    let t = signup(sc, &email, None).await?;
                    make(t, depth, emails, &email)
                }
                Setup::Password => {
                    let t = signup(sc, &email, Some(&password)).await?;
                    make(t, depth, emails, &email)
                }
                Setup::Sessions => {
                    let mut tokens = Vec::with_capacity(depth);
                    tokens.push(signup(sc, &email, None).await?.refresh_token);
                    for _ in 1..depth {
                        let e = emails.next_addr();
                        tokens.push(signup(sc, &e, None).await?.refresh_token);
                    }
                    Box::new(Chains::new(tokens, emails))
                }
            };
            drop(via);
            Ok::<_, anyhow::Error>((i, Prepared { conn, driver }))
        });
    }
    let mut out: Vec<Option<Prepared>> = (0..connections).map(|_| None).collect();
    while let Some(r) = tasks.join_next().await {
        let (i, p) = r.map_err(|e| anyhow!("setup task failed: {e}"))??;
        out[i] = Some(p);
    }
    Ok(out.into_iter().flatten().collect())
}

fn empty_tokens() -> Tokens {
    Tokens {
        access_token: String::new(),
        refresh_token: String::new(),
        expires_in: 0,
    }
}

/// `AUTH.LOGIN` of the connection's account.
pub fn login_driver(_t: Tokens, depth: usize, emails: Emails, email: &str) -> Box<dyn Driver> {
    let line = request_line(
        "AUTH.LOGIN",
        json!({ "email": email, "password": bench_password(&emails.run) }),
        None,
    );
    Box::new(Fixed::new(line, depth, judge))
}

/// `SYS.PING`.
pub fn ping_driver(_t: Tokens, depth: usize, _e: Emails, _email: &str) -> Box<dyn Driver> {
    Box::new(Fixed::new(ping_line(), depth, judge))
}

/// `USER.ME`.
pub fn me_driver(t: Tokens, depth: usize, _e: Emails, _email: &str) -> Box<dyn Driver> {
    Box::new(Me::new(t, depth))
}

/// One refresh chain.
pub fn chain_driver(t: Tokens, _depth: usize, emails: Emails, _email: &str) -> Box<dyn Driver> {
    Box::new(Chains::new(vec![t.refresh_token], emails))
}

/// `SYS.INFO`'s `log_head_seq`.
pub async fn log_head(conn: &mut LineConn) -> Result<u64> {
    #[derive(Deserialize)]
    struct Info {
        log_head_seq: u64,
    }
    let line = conn.call(b"{\"command\":\"SYS.INFO\"}\n").await?;
    data_of::<Info>(&line)
        .map(|i| i.log_head_seq)
        .map_err(|code| anyhow!("SYS.INFO failed: {code}{}", hint(&code)))
}

/// Appends events with pipelined `SYS.INFO` (each one is logged) until the log holds at least
/// `events`. Returns (events appended, seconds taken).
pub async fn build_log(
    addr: &str,
    tls: Option<TlsConnector>,
    events: u64,
    connections: usize,
) -> Result<(u64, f64)> {
    const DEPTH: u64 = 64;
    let mut first = LineConn::connect_with(addr, tls.as_ref())
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let head = log_head(&mut first).await?;
    if head >= events {
        return Ok((0, 0.0));
    }
    let missing = events - head;
    let started = Instant::now();
    let per_conn = missing.div_ceil(connections as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let addr = addr.to_owned();
        let tls = tls.clone();
        tasks.spawn(async move {
            let mut conn = LineConn::connect_with(&addr, tls.as_ref()).await?;
            let mut left = per_conn;
            let mut batch = Vec::new();
            while left > 0 {
                let n = left.min(DEPTH);
                batch.clear();
                for _ in 0..n {
                    batch.extend_from_slice(b"{\"command\":\"SYS.INFO\"}\n");
                }
                conn.write_all(&batch).await?;
                for _ in 0..n {
                    let line = conn.read_line().await?;
                    if let Outcome::Err(code) = judge(line) {
                        bail!(
                            "SYS.INFO failed while building the log: {code}{}",
                            hint(&code)
                        );
                    }
                }
                left -= n;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| anyhow!("log build task failed: {e}"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let now = log_head(&mut first).await?;
    Ok((now.saturating_sub(head), secs))
}

/// `LOG.VERIFY` of the whole durable log: (events checked, valid).
pub async fn verify_once(conn: &mut LineConn, token: &str) -> Result<(u64, bool)> {
    #[derive(Deserialize)]
    struct Report {
        valid: bool,
        checked: u64,
    }
    let line = conn
        .call(&request_line("LOG.VERIFY", json!({}), Some(token)))
        .await?;
    let r = data_of::<Report>(&line)
        .map_err(|code| anyhow!("LOG.VERIFY failed: {code}{}", hint(&code)))?;
    Ok((r.checked, r.valid))
}

const TAIL_EVENT_PREFIX: &[u8] = br#"{"id":null,"ok":true,"command":"LOG.TAIL","data":{"event":"#;

/// `LOG.TAIL` from seq 1 without follow, read to its `end` marker: events received.
pub async fn replay_once(conn: &mut LineConn, token: &str) -> Result<u64> {
    conn.write_all(&request_line(
        "LOG.TAIL",
        json!({ "from_seq": 1, "follow": false }),
        Some(token),
    ))
    .await?;
    let mut events = 0u64;
    loop {
        let line = conn.read_line().await?;
        if line.starts_with(TAIL_EVENT_PREFIX) {
            events += 1;
            continue;
        }
        let v: Value =
            data_of(line).map_err(|code| anyhow!("LOG.TAIL failed: {code}{}", hint(&code)))?;
        if v.get("event").is_some() {
            events += 1;
        } else if v.get("end").is_some() {
            return Ok(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accounts of a run sign up under the server's password policy, which refuses the
    /// words of their addresses.
    #[test]
    fn bench_passwords_pass_the_policy_for_bench_addresses() {
        use portcullis_core::identity::passwords::{check_policy, PolicyContext};
        for run in ["1a2b3c4d", "00000000", "ffffffff", "deadbeef"] {
            let email = format!("bench-{run}-c3-17@example.com");
            let pw = bench_password(run);
            assert!(!pw.contains(run) && !pw.contains("bench"), "{pw}");
            let context = PolicyContext {
                product_name: "Portcullis",
                email: Some(&email),
                display_name: None,
            };
            assert!(
                check_policy(&portcullis_protocol::Secret::new(pw.as_str()), &context).is_ok(),
                "{pw}"
            );
        }
    }

    #[test]
    fn answers_are_judged_without_and_with_parsing() {
        assert_eq!(
            judge(
                br#"{"id":null,"ok":true,"command":"SYS.PING","data":{"pong":true},"error":null}"#
            ),
            Outcome::Ok
        );
        assert_eq!(
            judge(br#"{"ok":true,"id":null,"command":"SYS.PING","data":{},"error":null}"#),
            Outcome::Ok
        );
        assert_eq!(
            judge(br#"{"id":null,"ok":false,"command":"X","data":null,"error":{"code":"RATE_LIMITED","message":"slow down"}}"#),
            Outcome::Err("RATE_LIMITED".into())
        );
        assert_eq!(judge(b"nope"), Outcome::Err("bad_response".into()));
    }

    #[test]
    fn chains_replace_tokens_and_sessions() {
        let mut c = Chains::new(vec!["prt_a".into(), "prt_b".into()], Emails::new("r", 0));
        let mut out = Vec::new();
        c.fill(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains(r#""refresh_token":"prt_a""#));
        let ok = br#"{"id":null,"ok":true,"command":"AUTH.REFRESH","data":{"user_id":"u","session_id":"s","access_token":"a","refresh_token":"prt_c","token_type":"Bearer","expires_in":900},"error":null}"#;
        assert_eq!(c.response(0, ok), Outcome::Ok);
        let bad = br#"{"id":null,"ok":false,"command":"AUTH.REFRESH","data":null,"error":{"code":"INVALID_CREDENTIALS","message":"x"}}"#;
        assert_eq!(
            c.response(1, bad),
            Outcome::Err("INVALID_CREDENTIALS".into())
        );
        let mut out = Vec::new();
        c.fill(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("prt_c"));
        assert!(text.contains("AUTH.SIGNUP"));
        assert_eq!(c.response(1, ok), Outcome::Skip);
    }
}
