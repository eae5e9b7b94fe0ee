//! In-process test bench: a real app (sled, dispatcher, mail to the outbox) on a temporary data
//! directory, with a manual clock, driven through the dispatcher exactly as a transport would.

use crate::{App, Config, ConnInfo, Dispatcher, ManualClock, Transport};
use async_trait::async_trait;
use portcullis_protocol::{Actor, ErrorCode, Event, Request, Response};
use portcullis_store::{Applied, Batch, Cas, Store, StoreError, SyncTicket, Table};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::macros::datetime;

pub struct Bench {
    pub app: Arc<App>,
    pub clock: ManualClock,
    pub dispatcher: Dispatcher,
    /// Outbox files in the order the bench first saw them (see [`Bench::mail_text`]).
    mails: Mutex<Vec<std::path::PathBuf>>,
    _dir: tempfile::TempDir,
}

impl Bench {
    /// A bench with fast password hashing and `tweak` applied to the configuration.
    pub async fn new(tweak: impl FnOnce(&mut Config)) -> Bench {
        Self::layered(tweak, |s| s).await
    }

    /// A bench whose commands use the store through `layer` (see [`Faults`]).
    pub async fn layered(
        tweak: impl FnOnce(&mut Config),
        layer: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    ) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            argon2_m_kib: 64,
            argon2_t: 1,
            ..Config::default()
        };
        tweak(&mut config);
        let clock = ManualClock::new(datetime!(2026-11-26 12:00 UTC));
        let app = App::open_layered(config, Arc::new(clock.clone()), layer)
            .await
            .unwrap();
        let dispatcher = Dispatcher::new(Arc::clone(&app));
        Bench {
            app,
            clock,
            dispatcher,
            mails: Mutex::new(Vec::new()),
            _dir: dir,
        }
    }

    /// A bench whose store is wrapped in [`Faults`], and the handle to arm them.
    pub async fn faulty() -> (Bench, Arc<Faults>) {
        Self::faulty_with(Faults::wrap).await
    }

    /// A bench whose app runs as one node of several on a shared store (see
    /// [`Faults::wrap_shared`]); the store underneath is `bench.app.store`'s inner store.
    pub async fn shared() -> (Bench, Arc<Faults>) {
        Self::faulty_with(Faults::wrap_shared).await
    }

    async fn faulty_with(wrap: fn(Arc<dyn Store>) -> Arc<Faults>) -> (Bench, Arc<Faults>) {
        let mut faults = None;
        let b = Self::layered(
            |_| {},
            |s| {
                let f = wrap(s);
                faults = Some(Arc::clone(&f));
                f
            },
        )
        .await;
        (b, faults.unwrap())
    }

    pub fn advance(&self, seconds: i64) {
        self.clock.advance(time::Duration::seconds(seconds));
    }

    pub async fn call(&self, command: &str, params: Value, token: Option<&str>) -> Response {
        let mut req = Request::new(command).params(params);
        if let Some(t) = token {
            req = req.token(t);
        }
        let conn = ConnInfo {
            transport: Transport::Internal,
            client: Some("127.0.0.1:40000".parse().unwrap()),
            user_agent: Some("bench".into()),
        };
        self.dispatcher
            .execute(req, &conn)
            .await
            .into_response()
            .await
            .unwrap()
    }

    pub async fn ok(&self, command: &str, params: Value, token: Option<&str>) -> Value {
        let r = self.call(command, params, token).await;
        assert!(r.ok, "{command}: {r:?}");
        r.data
    }

    pub async fn code(
        &self,
        command: &str,
        params: Value,
        token: Option<&str>,
    ) -> Option<ErrorCode> {
        self.call(command, params, token).await.error_code()
    }

    /// The TOTP code for `secret` at the bench's clock.
    pub fn totp_code(&self, secret: &[u8]) -> String {
        use crate::Clock;
        let t = u64::try_from(self.clock.now().unix_timestamp()).unwrap();
        crate::factors::totp::totp(secret, "p", "u")
            .unwrap()
            .generate(t)
            .to_string()
    }

    /// Starts an authenticator-app enrolment for the session of `access`: the `TOTP.CONFIRM`
    /// params with the current code, and the secret.
    pub async fn pending_totp(&self, access: &str) -> (Value, Vec<u8>) {
        let e = self
            .ok("TOTP.ENROLL", serde_json::json!({}), Some(access))
            .await;
        let secret = totp_rs::Secret::try_from_base32(e["secret"].as_str().unwrap())
            .unwrap()
            .as_ref()
            .to_vec();
        let confirm = serde_json::json!({
            "enrollment_id": e["enrollment_id"],
            "code": self.totp_code(&secret),
        });
        (confirm, secret)
    }

    /// Enrols an authenticator app for the session of `access`; returns its secret. The clock
    /// moves on a step, so the next code is fresh.
    pub async fn enrol_totp(&self, access: &str) -> Vec<u8> {
        let (confirm, secret) = self.pending_totp(access).await;
        self.ok("TOTP.CONFIRM", confirm, Some(access)).await;
        self.advance(30);
        secret
    }

    /// The operator token of the bench's data directory.
    pub fn operator_token(&self) -> String {
        std::fs::read_to_string(
            self.app
                .config
                .data_dir
                .join(crate::infra::node::OPERATOR_TOKEN_FILE),
        )
        .unwrap()
        .trim()
        .to_owned()
    }

    /// The text part of the `n`-th mail written to the outbox (1-based), waiting for delivery.
    /// A file the transport is still writing (no complete HTML part yet) is waited for too.
    pub async fn mail_text(&self, n: usize) -> String {
        let outbox = self.app.config.data_dir.join("outbox");
        for _ in 0..500 {
            let file = {
                // Order by first sight, then by modification time among files first seen
                // together: two mails written within one tick of the file system's clock have
                // the same time, and tests read each mail after the command that sent it.
                let mut seen = self.mails.lock().unwrap();
                let mut new: Vec<_> = std::fs::read_dir(&outbox)
                    .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                    .unwrap_or_default();
                new.retain(|p| p.extension().is_some_and(|x| x == "eml") && !seen.contains(p));
                new.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
                seen.extend(new);
                seen.get(n - 1).cloned()
            };
            if let Some(file) = file {
                let raw = std::fs::read(&file).unwrap_or_default();
                if let Some(text) = complete_text(&raw) {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("mail {n} never reached the outbox");
    }

    /// The magic-link token of the `n`-th mail.
    pub async fn link_token(&self, n: usize) -> String {
        let text = self.mail_text(n).await;
        let at = text.find("token=").expect("a link in the mail") + "token=".len();
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    }

    /// The code of the `n`-th mail.
    pub async fn otp_code(&self, n: usize) -> String {
        let text = self.mail_text(n).await;
        text.split_whitespace()
            .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
            .expect("a code in the mail")
            .to_owned()
    }
}

/// The text part of a whole message; `None` while the file is still being written (the HTML
/// part comes last).
fn complete_text(raw: &[u8]) -> Option<String> {
    let parsed = mailparse::parse_mail(raw).ok()?;
    let part = |t: &str| {
        parsed
            .subparts
            .iter()
            .find(|p| p.ctype.mimetype == t)
            .and_then(|p| p.get_body().ok())
    };
    part("text/html")
        .filter(|h| h.contains("</html>"))
        .and(part("text/plain"))
}

/// An event as the dispatcher hands it to the log (seq, `prev` and `hash` still unset): a
/// `SYS.INFO` answered `ok`.
pub fn unsealed_event() -> Event {
    Event {
        seq: 0,
        time: "2026-11-26T12:00:00.000Z".into(),
        command: Some("SYS.INFO".into()),
        outcome: "ok".into(),
        actor: Actor::Anonymous,
        subject: None,
        session: None,
        client: None,
        transport: "internal".into(),
        duration_us: 0,
        summary: Default::default(),
        prev: String::new(),
        hash: String::new(),
    }
}

/// A store that fails on command: once [`Faults::fail_next_write`] names a table, the next
/// write touching it (a put, remove, compare-and-swap or batch) fails as a disk error would,
/// writing nothing. Everything else passes through.
pub struct Faults {
    inner: Arc<dyn Store>,
    /// The table, and how many of its writes still pass before one fails.
    armed: Mutex<Option<(Table, u32)>>,
    /// Reads (and scans) of this table wait until this many readers have arrived (or a second
    /// passes).
    meet: Mutex<Option<(Table, usize, usize)>>,
    met: tokio::sync::Notify,
    /// The next read of this table waits until [`Faults::release`].
    held: Mutex<Option<Table>>,
    reached: tokio::sync::Notify,
    released: tokio::sync::watch::Sender<bool>,
    /// Reads so far, per table (in [`Table::ALL`] order).
    reads: [std::sync::atomic::AtomicU64; Table::ALL.len()],
    /// Whether the store says other nodes write it too.
    shared: bool,
}

impl Faults {
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<Faults> {
        Self::build(inner, false)
    }

    /// Wraps `inner` as a store shared with other nodes: the app on it runs as one node of
    /// several (other nodes are simulated by writing to `inner` directly).
    pub fn wrap_shared(inner: Arc<dyn Store>) -> Arc<Faults> {
        Self::build(inner, true)
    }

    fn build(inner: Arc<dyn Store>, shared: bool) -> Arc<Faults> {
        Arc::new(Faults {
            shared,
            inner,
            armed: Mutex::new(None),
            meet: Mutex::new(None),
            met: tokio::sync::Notify::new(),
            held: Mutex::new(None),
            reached: tokio::sync::Notify::new(),
            released: tokio::sync::watch::channel(false).0,
            reads: Default::default(),
        })
    }

    /// The store underneath, as another node writes it.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// Makes the next write touching `table` fail.
    pub fn fail_next_write(&self, table: Table) {
        self.fail_write(table, 1);
    }

    /// Makes the `nth` write (1-based) from now touching `table` fail.
    pub fn fail_write(&self, table: Table, nth: u32) {
        *self.armed.lock().unwrap() = Some((table, nth - 1));
    }

    /// Makes reads of `table` wait for each other until `parties` of them have read (at most a
    /// second), so racing commands all read before any of them writes.
    pub fn meet_on_read(&self, table: Table, parties: usize) {
        *self.meet.lock().unwrap() = Some((table, parties, 0));
    }

    async fn rendezvous(&self, table: Table) {
        let notified = self.met.notified();
        {
            let mut meet = self.meet.lock().unwrap();
            match meet.as_mut() {
                Some((t, parties, arrived)) if *t == table => {
                    *arrived += 1;
                    if *arrived >= *parties {
                        *meet = None;
                        self.met.notify_waiters();
                        return;
                    }
                }
                _ => return,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
    }

    /// Reads of `table` so far.
    pub fn reads(&self, table: Table) -> u64 {
        Table::ALL.iter().position(|t| *t == table).map_or(0, |i| {
            self.reads[i].load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// Holds the next read of `table` until [`Faults::release`]: it has read, so what it
    /// returns is what the store held before anything written while it waits.
    pub fn hold_next_read(&self, table: Table) {
        self.released.send_replace(false);
        *self.held.lock().unwrap() = Some(table);
    }

    /// Waits until a held read has arrived.
    pub async fn read_held(&self) {
        self.reached.notified().await;
    }

    /// Lets the held read go on.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    async fn hold(&self, table: Table) {
        let hold = {
            let mut held = self.held.lock().unwrap();
            let hit = *held == Some(table);
            if hit {
                *held = None;
            }
            hit
        };
        if hold {
            let mut released = self.released.subscribe();
            self.reached.notify_one();
            let _ = released.wait_for(|r| *r).await;
        }
    }

    /// Cancels an armed failure.
    pub fn disarm(&self) {
        *self.armed.lock().unwrap() = None;
    }

    /// Whether the armed failure is still waiting.
    pub fn armed(&self) -> bool {
        self.armed.lock().unwrap().is_some()
    }

    fn trip(&self, tables: &[Table]) -> Result<(), StoreError> {
        let mut armed = self.armed.lock().unwrap();
        match *armed {
            Some((t, 0)) if tables.contains(&t) => {
                *armed = None;
                Err(StoreError::Backend("injected write failure".into()))
            }
            Some((t, n)) if tables.contains(&t) => {
                *armed = Some((t, n - 1));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Store for Faults {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(i) = Table::ALL.iter().position(|t| *t == table) {
            self.reads[i].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        // Read first, then wait: every party has read before any of them goes on to write,
        // and a held read returns what was there before.
        let value = self.inner.get(table, key).await;
        self.hold(table).await;
        self.rendezvous(table).await;
        value
    }

    async fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.trip(&[table])?;
        self.inner.put(table, key, value).await
    }

    async fn remove(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.trip(&[table])?;
        self.inner.remove(table, key).await
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<Cas, StoreError> {
        self.trip(&[table])?;
        self.inner.compare_and_swap(table, key, expected, new).await
    }

    async fn apply(&self, batch: Batch) -> Result<Applied, StoreError> {
        let written: Vec<Table> = batch.writes().iter().map(|w| w.table).collect();
        self.trip(&written)?;
        self.inner.apply(batch).await
    }

    async fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        // A scan is a read: it meets the other readers after reading, as `get` does.
        let found = self.inner.scan_prefix(table, prefix, limit).await;
        self.rendezvous(table).await;
        found
    }

    fn sync(&self) -> SyncTicket {
        self.inner.sync()
    }

    fn sync_state(&self) -> Option<SyncTicket> {
        self.inner.sync_state()
    }

    fn shared(&self) -> bool {
        self.shared || self.inner.shared()
    }

    fn close(&self) {
        self.inner.close();
    }
}
