//! Outgoing mail: templates and a bounded, retrying, durable delivery queue over lettre.
//!
//! Commands never wait for delivery: they enqueue and answer. Enqueueing stores the message,
//! sealed with the master key (it holds a sign-in link or code), in the `mail_queue` table, so
//! the command's durable answer covers it; the record goes once the message is delivered or
//! given up on, and a server that starts finds what a crash left and delivers it (at least once:
//! a crash between delivery and removal sends it again). A worker delivers with retries and
//! backoff; a message that cannot be delivered (or cannot be queued) is recorded as a
//! `mail.failed` event, without its contents. Messages go to `.eml` files in the outbox
//! directory (default) or to an SMTP server.
//!
//! Whichever the transport, a message is built the same way (`protocol/outbox.md`): headers
//! `X-Portcullis-Kind` and (for a message of a flow) `X-Portcullis-Flow-Id`, and a text/plain
//! part in `7bit` (or `8bit` when it is not ASCII), never quoted-printable or base64, so the
//! link and the code appear verbatim, each on a line of its own. The outbox names its files
//! `<UTC time>-<counter>.eml`, so that sorting names sorts them by time of writing, and writes
//! each under a temporary name starting with `.` before renaming it, so that a reader never
//! sees part of a message.

use crate::base::clock::rfc3339_ms;
use crate::base::config::{Config, SmtpTls};
use crate::base::crypto::Sealer;
use crate::base::random::SecureRandom;
use crate::infra::internal_event::InternalEvents;
use crate::infra::records::{Records, ResealError, Resealer, TableOwner};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use portcullis_store::{Record, Store, Table};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use zeroize::Zeroizing;

/// Messages waiting for delivery before new ones are refused.
pub const QUEUE_CAPACITY: usize = 1024;
/// Deliveries in flight at once.
const PARALLEL: usize = 4;
/// Attempts per message.
const ATTEMPTS: u32 = 4;
/// How long a node's claim on a queued message holds, seconds: far longer than its delivery
/// attempts take, so only a message whose node died is taken over by another node.
pub const CLAIM_S: i64 = 15 * 60;
/// How often a node looks for messages whose claim lapsed.
const RECLAIM_EVERY: Duration = Duration::from_secs(60);
/// Messages one look takes at most.
const RECLAIM_BATCH: usize = 256;

/// Which template a message uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// A magic link.
    MagicLink,
    /// A one-time code.
    Otp,
    /// A notice about a change to the account's security (factor removed, recovery code used).
    SecurityNotice,
}

impl Template {
    fn name(self) -> &'static str {
        match self {
            Template::MagicLink => "magic_link",
            Template::Otp => "otp",
            Template::SecurityNotice => "security_notice",
        }
    }

    fn embedded(self, part: &str) -> Option<&'static str> {
        Some(match (self, part) {
            (Template::MagicLink, "subject") => {
                include_str!("../../templates/en/magic_link.subject")
            }
            (Template::MagicLink, "txt") => include_str!("../../templates/en/magic_link.txt"),
            (Template::MagicLink, "html") => include_str!("../../templates/en/magic_link.html"),
            (Template::Otp, "subject") => include_str!("../../templates/en/otp.subject"),
            (Template::Otp, "txt") => include_str!("../../templates/en/otp.txt"),
            (Template::Otp, "html") => include_str!("../../templates/en/otp.html"),
            (Template::SecurityNotice, "subject") => {
                include_str!("../../templates/en/security_notice.subject")
            }
            (Template::SecurityNotice, "txt") => {
                include_str!("../../templates/en/security_notice.txt")
            }
            (Template::SecurityNotice, "html") => {
                include_str!("../../templates/en/security_notice.html")
            }
            _ => return None,
        })
    }
}

/// Values a template may use as `{{name}}`. Holds the link or code, so it has no `Debug`.
pub struct Vars {
    /// (name, value) pairs.
    pub pairs: Vec<(&'static str, Zeroizing<String>)>,
}

impl Vars {
    /// Empty.
    pub fn new() -> Self {
        Vars { pairs: Vec::new() }
    }

    /// Adds a value.
    pub fn set(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.pairs.push((name, Zeroizing::new(value.into())));
        self
    }
}

impl Default for Vars {
    fn default() -> Self {
        Vars::new()
    }
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Renders `{{name}}` placeholders; unknown names are left as they are.
fn render(template: &str, vars: &Vars, html: bool) -> Zeroizing<String> {
    let mut out = Zeroizing::new(template.to_owned());
    for (name, value) in &vars.pairs {
        // A value never introduces a placeholder of its own (client-supplied text such as a
        // user agent must not pull the link or the code into another spot).
        let plain = value.replace("{{", "{ {");
        let v = if html { escape_html(&plain) } else { plain };
        *out = out.replace(&format!("{{{{{name}}}}}"), &v);
    }
    out
}

/// Client-supplied text for a mail or page: printable, one line, at most 120 characters.
pub fn sanitize_client_text(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(120).collect()
}

/// Loads templates: `<templates_dir>/<locale>/<name>.<part>` when the operator provides one,
/// else the embedded English text.
#[derive(Debug, Clone)]
pub struct Templates {
    dir: Option<PathBuf>,
}

impl Templates {
    /// Templates overridable from `dir`.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Templates { dir }
    }

    fn part(&self, t: Template, locale: &str, part: &str) -> String {
        if let Some(dir) = &self.dir {
            for loc in [locale, "en"] {
                let p = dir.join(loc).join(format!("{}.{part}", t.name()));
                if let Ok(text) = std::fs::read_to_string(&p) {
                    return text;
                }
            }
        }
        t.embedded(part).unwrap_or_default().to_owned()
    }

    /// Subject, text and HTML bodies.
    pub fn render(&self, t: Template, locale: &str, vars: &Vars) -> Rendered {
        Rendered {
            subject: Zeroizing::new(
                render(&self.part(t, locale, "subject"), vars, false)
                    .trim()
                    .to_owned(),
            ),
            text: render(&self.part(t, locale, "txt"), vars, false),
            html: render(&self.part(t, locale, "html"), vars, true),
        }
    }
}

/// A rendered message. Carries a link or a code: no `Debug`.
pub struct Rendered {
    /// Subject line.
    pub subject: Zeroizing<String>,
    /// Plain text body.
    pub text: Zeroizing<String>,
    /// HTML body.
    pub html: Zeroizing<String>,
}

/// One message to deliver.
pub struct Outgoing {
    /// Recipient address.
    pub to: String,
    /// What kind of message (for events).
    pub kind: Template,
    /// The flow it belongs to (for events).
    pub flow_id: String,
    /// Contents.
    pub body: Rendered,
}

enum Transport {
    Outbox(Outbox),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

/// The header that says what a message is (`magic_link`, `otp`, `security_notice`).
const KIND_HEADER: HeaderName = HeaderName::new_from_ascii_str("X-Portcullis-Kind");
/// The header that names the flow a message belongs to (the `flow_id` its command returned).
const FLOW_HEADER: HeaderName = HeaderName::new_from_ascii_str("X-Portcullis-Flow-Id");
/// Longest line of the text part, in octets before CRLF (RFC 5322 allows 998).
const TEXT_LINE_MAX: usize = 997;
/// The outbox counter's modulus: it is written with 8 digits.
const OUTBOX_COUNTER_MOD: u64 = 100_000_000;

/// The outbox directory: one `.eml` file per message, named
/// `<YYYYMMDDTHHMMSS.mmmZ>-<counter, 8 digits>.eml` (`protocol/outbox.md`).
struct Outbox {
    dir: PathBuf,
    /// The millisecond and counter of the last name given. Held across the write, so names
    /// are given and files appear in the same order, and a clock that steps back never makes a
    /// later message sort before an earlier one.
    last: tokio::sync::Mutex<(i128, u64)>,
}

impl Outbox {
    /// The outbox in `dir`, created if missing; temporary files a crash left there go.
    fn open(dir: PathBuf) -> Result<Outbox, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Outbox {
            dir,
            last: tokio::sync::Mutex::new((0, 0)),
        })
    }

    /// Writes one message: to `.<name>.tmp`, synced, then linked to its name (never replacing
    /// another file), and the directory synced, so the file is whole and durable once it shows.
    async fn write(&self, msg: &Message) -> std::io::Result<()> {
        let bytes = msg.formatted();
        let mut last = self.last.lock().await;
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let ms = now_ms.max(last.0);
        let dir = self.dir.clone();
        let first = last.1;
        let (written, counter) =
            tokio::task::spawn_blocking(move || write_outbox_file(&dir, ms, first, &bytes))
                .await
                .map_err(|_| std::io::Error::other("the outbox writer stopped"))?;
        *last = (ms, counter);
        written
    }
}

/// An outbox file name for millisecond `ms` (since the epoch, UTC) and `counter`.
fn outbox_name(ms: i128, counter: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms.saturating_mul(1_000_000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z-{:08}.eml",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond(),
        counter % OUTBOX_COUNTER_MOD
    )
}

/// Writes `bytes` as the next outbox file after `counter`; returns the outcome and the counter
/// used. A name another writer took (another node sharing the directory) is skipped.
fn write_outbox_file(
    dir: &Path,
    ms: i128,
    mut counter: u64,
    bytes: &[u8],
) -> (std::io::Result<()>, u64) {
    use std::io::Write;
    for _ in 0..16 {
        counter = counter.wrapping_add(1);
        let name = outbox_name(ms, counter);
        let tmp = dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            // The file holds a live sign-in link or code: only the server's user reads it.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            drop(file);
            // A hard link never replaces an existing file, unlike a rename.
            let linked = std::fs::hard_link(&tmp, dir.join(&name));
            let _ = std::fs::remove_file(&tmp);
            linked?;
            std::fs::File::open(dir)?.sync_all()
        })();
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            other => return (other, counter),
        }
    }
    (
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "outbox names taken",
        )),
        counter,
    )
}

/// Counters of the mail queue.
#[derive(Debug, Default)]
pub struct MailStats {
    /// Messages waiting or in flight.
    pub depth: AtomicU64,
    /// Messages delivered.
    pub sent: AtomicU64,
    /// Messages given up on (after retries, or refused by a full queue).
    pub failed: AtomicU64,
}

/// The queue: sealed messages by time-ordered key.
const QUEUE: Records<QueuedMail> = Records::new(Table::MailQueue);

/// A queued message as stored: its contents sealed with the master key, and which node
/// delivers it.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct QueuedMail {
    /// Sealed JSON of the message (base64url).
    pub sealed: String,
    /// The node delivering it; `None` (messages queued before claims existed): anybody's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<Claim>,
}

/// A node's claim on a queued message: until it lapses, no other node delivers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Claim {
    node: String,
    /// Unix seconds.
    until: i64,
}

impl Record for QueuedMail {
    const VERSION: u8 = 1;
}

/// The plain form of a queued message, inside the seal (written from borrowed parts).
#[derive(Serialize)]
struct QueuedParts<'a> {
    to: &'a str,
    kind: Template,
    flow_id: &'a str,
    subject: &'a str,
    text: &'a str,
    html: &'a str,
}

/// [`QueuedParts`] read back.
#[derive(Deserialize)]
struct QueuedPlain {
    to: String,
    kind: Template,
    flow_id: String,
    subject: String,
    text: String,
    html: String,
}

/// AAD of a queued message's seal: its queue key.
pub(crate) fn queue_aad(key: &[u8]) -> Vec<u8> {
    format!("mail-queue:{}", hex::encode(key)).into_bytes()
}

/// What the worker gets: the message and its queue key.
type Job = (Vec<u8>, Outgoing);

/// The durable parts of the queue.
#[derive(Clone)]
struct Durable {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    rng: Arc<dyn SecureRandom>,
    /// This node, named in its claims.
    node_id: String,
}

/// Now, in Unix seconds, as every node's claims count it.
fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Durable {
    fn claim(&self) -> Claim {
        Claim {
            node: self.node_id.clone(),
            until: unix_now() + CLAIM_S,
        }
    }

    /// Claims the queued messages nobody delivers: unclaimed, or whose claim lapsed, or (at
    /// start, `restarting`) claimed by this node's previous run. Each claim is a
    /// compare-and-swap, so of several nodes looking at once exactly one takes a message.
    /// Returns the messages this node now delivers, oldest first, opened; one that cannot be
    /// opened (the master key was replaced outside `rotate-master-key`) is dropped with an
    /// error line.
    async fn claim_left(&self, restarting: bool) -> Result<Vec<Job>, String> {
        let now = unix_now();
        let mut jobs = Vec::new();
        let found = QUEUE
            .scan(self.store.as_ref(), b"", RECLAIM_BATCH)
            .await
            .map_err(|e| format!("reading the mail queue: {e}"))?;
        for (key, stored) in found {
            let free = match &stored.record.claim {
                None => true,
                Some(c) => c.until <= now || (restarting && c.node == self.node_id),
            };
            if !free {
                continue;
            }
            let claimed = QueuedMail {
                claim: Some(self.claim()),
                ..stored.record.clone()
            };
            match QUEUE
                .swap(self.store.as_ref(), &key, Some(&stored), Some(&claimed))
                .await
            {
                Ok(true) => {}
                // Another node claimed it (or delivered it) first.
                Ok(false) => continue,
                Err(e) => return Err(format!("claiming queued mail: {e}")),
            }
            match self.open(&key, &claimed) {
                Ok(mail) => jobs.push((key, mail)),
                Err(e) => {
                    tracing::error!(error = %e, "a queued message cannot be opened; dropped");
                    self.remove(&key).await;
                }
            }
        }
        Ok(jobs)
    }

    /// A new queue key: milliseconds since the epoch, then random bytes, so a scan is FIFO.
    fn key(&self) -> Vec<u8> {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut key = ms.to_be_bytes().to_vec();
        let mut random = [0u8; 8];
        self.rng.fill(&mut random);
        key.extend_from_slice(&random);
        key
    }

    async fn store(&self, key: &[u8], mail: &Outgoing) -> Result<(), String> {
        let parts = QueuedParts {
            to: &mail.to,
            kind: mail.kind,
            flow_id: &mail.flow_id,
            subject: &mail.body.subject,
            text: &mail.body.text,
            html: &mail.body.html,
        };
        let json = Zeroizing::new(serde_json::to_vec(&parts).map_err(|e| e.to_string())?);
        let sealed = self.sealer.seal(self.rng.as_ref(), &queue_aad(key), &json);
        let record = QueuedMail {
            sealed: URL_SAFE_NO_PAD.encode(sealed),
            claim: Some(self.claim()),
        };
        QUEUE
            .put(self.store.as_ref(), key, &record)
            .await
            .map_err(|e| e.to_string())
    }

    fn open(&self, key: &[u8], record: &QueuedMail) -> Result<Outgoing, String> {
        let sealed = URL_SAFE_NO_PAD
            .decode(&record.sealed)
            .map_err(|_| "not base64url".to_owned())?;
        let json = self
            .sealer
            .open(&queue_aad(key), &sealed)
            .map_err(|e| e.to_string())?;
        // No serde message here: it could quote the contents.
        let p: QueuedPlain = serde_json::from_slice(&json)
            .map_err(|_| "the unsealed message does not decode".to_owned())?;
        Ok(Outgoing {
            to: p.to,
            kind: p.kind,
            flow_id: p.flow_id,
            body: Rendered {
                subject: Zeroizing::new(p.subject),
                text: Zeroizing::new(p.text),
                html: Zeroizing::new(p.html),
            },
        })
    }

    async fn remove(&self, key: &[u8]) {
        if let Err(e) = self.store.remove(Table::MailQueue, key).await {
            tracing::error!(error = %e, "a delivered message stays queued; it may be sent again");
        }
    }
}

/// The delivery queue.
pub struct Mailer {
    tx: mpsc::Sender<Job>,
    /// Counters.
    pub stats: Arc<MailStats>,
    events: InternalEvents,
    durable: Durable,
}

impl Mailer {
    /// Starts the delivery worker, and hands it the messages a previous run of this node left
    /// queued and those nobody delivers (claimed before this returns, so they are never
    /// confused with messages queued from now on). Every [`RECLAIM_EVERY`], it takes over
    /// messages whose node's claim lapsed (a node that died).
    pub async fn start(
        config: &Config,
        events: InternalEvents,
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        rng: Arc<dyn SecureRandom>,
        node_id: String,
    ) -> Result<Mailer, String> {
        let transport = build_transport(config)?;
        let from: Mailbox = config
            .mail_from
            .parse()
            .map_err(|e| format!("mail_from {:?}: {e}", config.mail_from))?;
        let durable = Durable {
            store,
            sealer,
            rng,
            node_id,
        };
        let left = durable.claim_left(true).await?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(MailStats::default());
        tokio::spawn(worker(
            rx,
            Arc::new(transport),
            from,
            Arc::clone(&stats),
            events.clone(),
            durable.clone(),
        ));
        if !left.is_empty() {
            tracing::info!(
                messages = left.len(),
                "delivering mail queued before the restart"
            );
            tokio::spawn(requeue(left, tx.clone(), Arc::clone(&stats)));
        }
        tokio::spawn(reclaim(tx.downgrade(), Arc::clone(&stats), durable.clone()));
        Ok(Mailer {
            tx,
            stats,
            events,
            durable,
        })
    }

    /// Queues a message: stores it (durable with the command's answer) and hands it to the
    /// worker; never waits for delivery. A full queue drops it and records `mail.failed`.
    pub async fn enqueue(&self, mail: Outgoing) {
        let Ok(slot) = self.tx.try_reserve() else {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(flow = %mail.flow_id, "mail queue full; message dropped");
            self.events
                .mail_failed(mail.kind.name(), &mail.flow_id, "queue_full", 0);
            return;
        };
        self.stats.depth.fetch_add(1, Ordering::Relaxed);
        let key = self.durable.key();
        if let Err(e) = self.durable.store(&key, &mail).await {
            tracing::error!(flow = %mail.flow_id, error = %e, "mail could not be stored; delivering it without a durable copy");
        }
        slot.send((key, mail));
    }
}

/// Hands claimed messages to the worker, oldest first.
async fn requeue(jobs: Vec<Job>, tx: mpsc::Sender<Job>, stats: Arc<MailStats>) {
    for job in jobs {
        stats.depth.fetch_add(1, Ordering::Relaxed);
        if tx.send(job).await.is_err() {
            return;
        }
    }
}

/// Every [`RECLAIM_EVERY`], claims the messages whose node's claim lapsed and hands them to the
/// worker, until the mailer is gone.
async fn reclaim(tx: mpsc::WeakSender<Job>, stats: Arc<MailStats>, durable: Durable) {
    loop {
        tokio::time::sleep(RECLAIM_EVERY).await;
        let Some(tx) = tx.upgrade() else {
            return;
        };
        match durable.claim_left(false).await {
            Ok(jobs) if jobs.is_empty() => {}
            Ok(jobs) => {
                tracing::info!(
                    messages = jobs.len(),
                    "delivering mail whose node stopped delivering it"
                );
                requeue(jobs, tx, Arc::clone(&stats)).await;
            }
            Err(e) => tracing::warn!(error = %e, "looking for mail left undelivered failed"),
        }
    }
}

fn build_transport(config: &Config) -> Result<Transport, String> {
    let Some(host) = config.smtp_host.as_deref().filter(|h| !h.is_empty()) else {
        return Ok(Transport::Outbox(Outbox::open(outbox_dir(
            &config.data_dir,
        ))?));
    };
    let builder = match config.smtp_tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|e| format!("smtp: {e}"))?,
        SmtpTls::Tls => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(|e| format!("smtp: {e}"))?
        }
    };
    let mut builder = builder.timeout(Some(Duration::from_secs(15)));
    if let Some(port) = config.smtp_port {
        builder = builder.port(port);
    }
    if let Some(user) = &config.smtp_username {
        let password = smtp_password(config)?;
        builder = builder.credentials(Credentials::new(user.clone(), password.to_string()));
    }
    Ok(Transport::Smtp(builder.build()))
}

/// The SMTP password: `PORTCULLIS_SMTP_PASSWORD`, else the file `smtp_password_file`.
fn smtp_password(config: &Config) -> Result<Zeroizing<String>, String> {
    if let Ok(p) = std::env::var("PORTCULLIS_SMTP_PASSWORD") {
        return Ok(Zeroizing::new(p));
    }
    match &config.smtp_password_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| Zeroizing::new(s.trim_end_matches(['\n', '\r']).to_owned()))
            .map_err(|e| format!("{}: {e}", path.display())),
        None => Err("smtp_username is set but no password: set PORTCULLIS_SMTP_PASSWORD or smtp_password_file".into()),
    }
}

fn build_message(from: &Mailbox, mail: &Outgoing) -> Result<Message, String> {
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|_| "recipient address".to_owned())?;
    let mut builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.body.subject.as_str())
        .message_id(None)
        .raw_header(HeaderValue::new(KIND_HEADER, mail.kind.name().to_owned()));
    if !mail.flow_id.is_empty() {
        builder = builder.raw_header(HeaderValue::new(FLOW_HEADER, mail.flow_id.clone()));
    }
    builder
        .multipart(
            MultiPart::alternative()
                .singlepart(text_part(&mail.body.text))
                .singlepart(SinglePart::html(mail.body.html.to_string())),
        )
        .map_err(|e| format!("building the message: {e}"))
}

/// The text/plain part: `7bit` when ASCII, else `8bit`, never quoted-printable or base64, so
/// that a link or a code is in the message exactly as rendered. Lines end in CRLF; a line
/// longer than [`TEXT_LINE_MAX`] octets is broken at its last space that fits (or, with none,
/// at a character boundary); NUL and lone CR, which 7bit/8bit text may not hold, are dropped.
fn text_part(text: &str) -> SinglePart {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    for line in text.split('\n') {
        let mut line: String = line.chars().filter(|c| !matches!(c, '\r' | '\0')).collect();
        while line.len() > TEXT_LINE_MAX {
            let mut cut = TEXT_LINE_MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, skip) = match line[..cut].rfind(' ') {
                Some(space) if space > 0 => (space, 1),
                _ => (cut, 0),
            };
            out.push_str(&line[..head]);
            out.push_str("\r\n");
            line.replace_range(..head + skip, "");
        }
        out.push_str(&line);
        out.push_str("\r\n");
    }
    // `split` yields one piece after a final newline: the text keeps its own ending.
    if text.ends_with('\n') {
        out.truncate(out.len() - 2);
    }
    let encoding = if out.is_ascii() {
        ContentTransferEncoding::SevenBit
    } else {
        ContentTransferEncoding::EightBit
    };
    SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(Body::dangerous_pre_encoded(out.into_bytes(), encoding))
}

/// Delivers one message. The error is a classification safe to log: the transports' own text
/// is not used, because an SMTP server's reply quotes the recipient address.
async fn deliver(transport: &Transport, msg: Message) -> Result<(), String> {
    match transport {
        Transport::Outbox(o) => o
            .write(&msg)
            .await
            .map_err(|e| format!("writing to the outbox failed ({})", io_kind_name(e.kind()))),
        Transport::Smtp(t) => t.send(msg).await.map(|_| ()).map_err(|e| smtp_failure(&e)),
    }
}

/// What kind of SMTP failure `e` is, with the reply code when there is one, and never the
/// server's reply text.
fn smtp_failure(e: &lettre::transport::smtp::Error) -> String {
    let code = || {
        e.status()
            .map_or_else(|| "no code".to_owned(), |c| c.to_string())
    };
    if e.is_permanent() {
        format!("SMTP permanent error ({})", code())
    } else if e.is_transient() {
        format!("SMTP transient error ({})", code())
    } else if e.is_timeout() {
        "SMTP timeout".to_owned()
    } else if e.is_tls() {
        "SMTP TLS error".to_owned()
    } else if e.is_response() {
        "SMTP reply could not be read".to_owned()
    } else if e.is_client() {
        "SMTP client error".to_owned()
    } else if e.is_transport_shutdown() {
        "SMTP transport shut down".to_owned()
    } else {
        format!(
            "SMTP connection failed ({})",
            io_kind(e).unwrap_or("not an I/O error")
        )
    }
}

/// The `std::io::ErrorKind` somewhere in `e`'s source chain, as a fixed string.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // Bounded: error chains are short, and a cycle must not hang the worker.
    for _ in 0..16 {
        let err = cur?;
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io_kind_name(io.kind()));
        }
        cur = err.source();
    }
    None
}

fn io_kind_name(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind as K;
    match kind {
        K::NotFound => "not found",
        K::PermissionDenied => "permission denied",
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::NotConnected => "not connected",
        K::AddrNotAvailable => "address not available",
        K::BrokenPipe => "broken pipe",
        K::TimedOut => "timed out",
        K::UnexpectedEof => "unexpected end of stream",
        K::StorageFull => "storage full",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        _ => "other I/O error",
    }
}

async fn worker(
    mut rx: mpsc::Receiver<Job>,
    transport: Arc<Transport>,
    from: Mailbox,
    stats: Arc<MailStats>,
    events: InternalEvents,
    durable: Durable,
) {
    let slots = Arc::new(Semaphore::new(PARALLEL));
    while let Some((key, mail)) = rx.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let (transport, from, stats, events, durable) = (
            Arc::clone(&transport),
            from.clone(),
            Arc::clone(&stats),
            events.clone(),
            durable.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let kind = mail.kind.name();
            let result = match build_message(&from, &mail) {
                Ok(msg) => retry(&transport, msg).await,
                Err(e) => Err((e, 0)),
            };
            durable.remove(&key).await;
            stats.depth.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(attempts) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(flow = %mail.flow_id, kind, attempts, "mail delivered");
                }
                Err((error, attempts)) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    // `error` is a classification (see `deliver`): never the message, never
                    // the server's reply, which may quote the recipient.
                    tracing::error!(flow = %mail.flow_id, kind, attempts, %error, "mail delivery failed");
                    events.mail_failed(kind, &mail.flow_id, "delivery", attempts);
                }
            }
        });
    }
}

/// Tries up to [`ATTEMPTS`] times with growing pauses (0.5 s, 2 s, 8 s).
async fn retry(transport: &Transport, msg: Message) -> Result<u32, (String, u32)> {
    let mut pause = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match deliver(transport, msg.clone()).await {
            Ok(()) => return Ok(attempt),
            Err(e) => last = e,
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 4;
        }
    }
    Err((last, ATTEMPTS))
}

/// Human form of the request time in mails.
pub fn mail_time(t: time::OffsetDateTime) -> String {
    rfc3339_ms(t)
}

/// Where `.eml` files go by default.
pub fn outbox_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("outbox")
}

/// The mail queue: every message is sealed.
pub struct Tables;

#[async_trait::async_trait]
impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::MailQueue]
    }

    async fn reseal(
        &self,
        store: &dyn Store,
        r: &Resealer<'_>,
    ) -> Result<Vec<(&'static str, u64)>, ResealError> {
        let n = r
            .each(store, &QUEUE, |r, k, m| {
                r.reseal(&queue_aad(k), &mut m.sealed)
            })
            .await?;
        Ok(vec![("queued mails", n)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_fills_escapes_and_falls_back_to_english() {
        let t = Templates::new(None);
        let vars = Vars::new()
            .set("product", "Acme <Auth>")
            .set("email", "a@example.org")
            .set("link", "http://localhost:7421/auth/magic?token=abc&x=1")
            .set("expires_minutes", "15")
            .set("time", "now")
            .set("client", "127.0.0.1")
            .set("agent", "curl");
        let r = t.render(Template::MagicLink, "fr", &vars);
        assert_eq!(r.subject.as_str(), "Your Acme <Auth> sign-in link");
        assert!(r.text.contains("token=abc&x=1"));
        assert!(r.html.contains("token=abc&amp;x=1"));
        assert!(r.html.contains("Acme &lt;Auth&gt;"));
        assert!(r.text.contains("If this wasn't you"));
        assert!(!r.text.contains("{{"), "{}", r.text.as_str());
    }

    #[test]
    fn operator_templates_override_the_embedded_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("de")).unwrap();
        std::fs::write(dir.path().join("de/otp.subject"), "Ihr Code: {{code}}").unwrap();
        let t = Templates::new(Some(dir.path().to_owned()));
        let r = t.render(
            Template::Otp,
            "de",
            &Vars::new().set("code", "123456").set("product", "P"),
        );
        assert_eq!(r.subject.as_str(), "Ihr Code: 123456");
        assert!(
            r.text.contains("123456"),
            "the text part falls back to English"
        );
    }

    fn message(to: &str, flow: &str) -> Outgoing {
        let vars = Vars::new()
            .set("product", "Acme")
            .set("email", to)
            .set(
                "link",
                format!("http://localhost:7421/auth/magic?token=secret-{flow}"),
            )
            .set("expires_minutes", "15")
            .set("time", "now")
            .set("client", "127.0.0.1")
            .set("agent", "curl");
        Outgoing {
            to: to.into(),
            kind: Template::MagicLink,
            flow_id: flow.into(),
            body: Templates::new(None).render(Template::MagicLink, "en", &vars),
        }
    }

    async fn queued(b: &crate::testkit::Bench) -> Vec<(Vec<u8>, Vec<u8>)> {
        b.app
            .store
            .scan_prefix(Table::MailQueue, b"", usize::MAX)
            .await
            .unwrap()
    }

    /// A queued message is stored sealed until it is delivered, then removed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_is_stored_sealed_until_delivered() {
        let b = crate::testkit::Bench::new(|_| {}).await;
        b.app.mailer.enqueue(message("a@example.org", "f1")).await;
        assert!(b.mail_text(1).await.contains("token=secret-f1"));
        for _ in 0..200 {
            if queued(&b).await.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the delivered message is still queued");
    }

    /// What a crash leaves queued is delivered by the next start, and the record never holds
    /// the link in the clear.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_left_queued_are_delivered_at_the_next_start() {
        let b = crate::testkit::Bench::new(|_| {}).await;
        let durable = &b.app.mailer.durable;
        for flow in ["f1", "f2"] {
            let key = durable.key();
            durable
                .store(&key, &message(&format!("{flow}@example.org"), flow))
                .await
                .unwrap();
        }
        let left = queued(&b).await;
        assert_eq!(left.len(), 2);
        for (_, v) in &left {
            let raw = String::from_utf8_lossy(v);
            assert!(
                !raw.contains("secret-") && !raw.contains("example.org"),
                "{raw}"
            );
        }
        // A second start on the same store: what the crashed run left.
        let restarted = Mailer::start(
            &b.app.config,
            b.app.mailer.events.clone(),
            Arc::clone(&b.app.store),
            Arc::clone(&durable.sealer),
            Arc::clone(&durable.rng),
            durable.node_id.clone(),
        )
        .await
        .unwrap();
        // Delivered in parallel: in either order.
        let both = format!("{}\n{}", b.mail_text(1).await, b.mail_text(2).await);
        assert!(
            both.contains("token=secret-f1") && both.contains("token=secret-f2"),
            "{both}"
        );
        for _ in 0..200 {
            if queued(&b).await.is_empty() {
                assert_eq!(restarted.stats.sent.load(Ordering::Relaxed), 2);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("delivered messages are still queued");
    }

    /// A message another node claimed is not delivered here while the claim holds; once it
    /// lapses (that node died), of several nodes looking at once exactly one takes each message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_queued_message_is_claimed_by_exactly_one_node() {
        let b = crate::testkit::Bench::new(|_| {}).await;
        let mine = &b.app.mailer.durable;
        let node = |id: &str| Durable {
            node_id: id.to_owned(),
            ..mine.clone()
        };
        for flow in ["f1", "f2", "f3"] {
            mine.store(&mine.key(), &message(&format!("{flow}@example.org"), flow))
                .await
                .unwrap();
        }
        // Another node starting now leaves this node's claims alone.
        assert!(node("other").claim_left(true).await.unwrap().is_empty());
        // This node dies: its claims lapse.
        for (key, raw) in queued(&b).await {
            let mut m = QUEUE.decode(raw).unwrap().record;
            m.claim = Some(Claim {
                node: mine.node_id.clone(),
                until: unix_now() - 1,
            });
            QUEUE.put(b.app.store.as_ref(), &key, &m).await.unwrap();
        }
        let looks: Vec<_> = (0..4)
            .map(|i| {
                let d = node(&format!("node{i}"));
                tokio::spawn(async move { d.claim_left(false).await.unwrap() })
            })
            .collect();
        let mut taken = Vec::new();
        for l in looks {
            taken.extend(l.await.unwrap().into_iter().map(|(k, _)| k));
        }
        taken.sort();
        let mut all: Vec<_> = queued(&b).await.into_iter().map(|(k, _)| k).collect();
        all.sort();
        assert_eq!(taken, all, "each message taken once, none left behind");
        assert!(node("late").claim_left(false).await.unwrap().is_empty());
    }

    /// The complete messages of the bench's outbox, by file name: waits until `n` are there.
    /// Files whose names start with `.` are not messages yet (protocol/outbox.md).
    async fn outbox_raw(b: &crate::testkit::Bench, n: usize) -> Vec<(String, String)> {
        let dir = outbox_dir(&b.app.config.data_dir);
        for _ in 0..1000 {
            let mut found: Vec<(String, String)> = std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| {
                    let name = p.file_name()?.to_str()?.to_owned();
                    let keep = name.ends_with(".eml") && !name.starts_with('.');
                    keep.then(|| (name, std::fs::read_to_string(&p).unwrap_or_default()))
                })
                .collect();
            found.sort();
            if found.len() >= n && found.iter().all(|(_, raw)| raw.contains("</html>")) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} messages never reached the outbox");
    }

    /// The text/plain part of a raw message, as written (not decoded).
    fn raw_text_part(raw: &str) -> &str {
        let start = raw
            .find("Content-Type: text/plain")
            .expect("a text/plain part");
        let rest = &raw[start..];
        let body = rest.find("\r\n\r\n").expect("part headers end") + 4;
        let end = rest[body..].find("\r\n--").expect("the part ends");
        &rest[body..body + end]
    }

    /// A sign-in link longer than a quoted-printable line (76) is written verbatim on a line of
    /// its own: no soft line break, no `=3D` for the `=` of the query.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_link_is_verbatim_on_one_line_of_the_outbox_file() {
        let b = crate::testkit::Bench::new(|_| {}).await;
        let flow = format!("long-{}", "x".repeat(120));
        b.app.mailer.enqueue(message("a@example.org", &flow)).await;
        let mails = outbox_raw(&b, 1).await;
        let raw = &mails[0].1;
        let link = format!("http://localhost:7421/auth/magic?token=secret-{flow}");
        assert!(
            raw.split("\r\n").any(|l| l.trim() == link),
            "the link is not on a line of its own:\n{raw}"
        );
        let part_start = raw.find("Content-Type: text/plain").unwrap();
        let part_headers =
            &raw[part_start..part_start + raw[part_start..].find("\r\n\r\n").unwrap()];
        assert!(
            part_headers.contains("Content-Transfer-Encoding: 7bit"),
            "{part_headers}"
        );
        let text = raw_text_part(raw);
        assert!(!text.contains("=\r\n") && !text.contains("=3D"), "{text}");
        assert!(raw.split("\r\n").all(|l| l.len() < 998));
    }

    /// Outbox names are `<UTC time>-<counter>.eml`, and sorting them sorts the messages by when
    /// they were written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outbox_names_sort_in_write_order() {
        let b = crate::testkit::Bench::new(|_| {}).await;
        let flows: Vec<String> = (0..12).map(|i| format!("flow{i:02}")).collect();
        for (i, flow) in flows.iter().enumerate() {
            b.app.mailer.enqueue(message("a@example.org", flow)).await;
            // Written before the next is queued.
            outbox_raw(&b, i + 1).await;
        }
        let mails = outbox_raw(&b, flows.len()).await;
        assert_eq!(mails.len(), flows.len());
        for ((name, raw), flow) in mails.iter().zip(&flows) {
            let shape = name.len() == "20261126T120000.000Z-00000001.eml".len()
                && name.bytes().enumerate().all(|(i, c)| match i {
                    8 => c == b'T',
                    15 => c == b'.',
                    19 => c == b'Z',
                    20 => c == b'-',
                    29.. => true,
                    _ => c.is_ascii_digit(),
                })
                && name.ends_with(".eml");
            assert!(shape, "not a time-ordered name: {name}");
            assert!(
                raw.contains(&format!("token=secret-{flow}\r\n")),
                "{name} should hold {flow}"
            );
        }
    }

    /// A name is the UTC millisecond and an 8-digit counter; a name already taken (another
    /// node writing to the same directory) is skipped, never replaced; the temporary files a
    /// crash left are removed when the outbox opens, and none is left after a write.
    #[test]
    fn outbox_files_never_replace_each_other_and_leave_no_temporary_files() {
        // 2026-12-04T20:15:01.042Z
        let ms = 1_796_415_301_042_i128;
        assert_eq!(outbox_name(ms, 7), "20261204T201501.042Z-00000007.eml");
        assert_eq!(
            outbox_name(ms, OUTBOX_COUNTER_MOD + 3),
            "20261204T201501.042Z-00000003.eml"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".stale.eml.tmp"), "half a message").unwrap();
        let _outbox = Outbox::open(dir.path().to_owned()).unwrap();
        std::fs::write(dir.path().join(outbox_name(ms, 1)), "someone else's").unwrap();
        let (written, counter) = write_outbox_file(dir.path(), ms, 0, b"mine");
        written.unwrap();
        assert_eq!(counter, 2);
        let read = |n: u64| std::fs::read_to_string(dir.path().join(outbox_name(ms, n))).unwrap();
        assert_eq!(read(1), "someone else's");
        assert_eq!(read(2), "mine");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [outbox_name(ms, 1), outbox_name(ms, 2)]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(outbox_name(ms, 2)))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the file holds a live secret");
        }
    }

    /// Every message says what it is, and a message of a flow names the flow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outbox_messages_carry_their_kind_and_flow() {
        let b = crate::testkit::Bench::new(|_| {}).await;
        b.app
            .mailer
            .enqueue(message("a@example.org", "Fl0w_id-1"))
            .await;
        outbox_raw(&b, 1).await;
        let mut notice = message("a@example.org", "");
        notice.kind = Template::SecurityNotice;
        b.app.mailer.enqueue(notice).await;
        let mails = outbox_raw(&b, 2).await;
        let headers = |raw: &str| raw[..raw.find("\r\n\r\n").unwrap()].to_owned();
        let first = headers(&mails[0].1);
        assert!(
            first.contains("\r\nX-Portcullis-Kind: magic_link\r\n"),
            "{first}"
        );
        assert!(
            first.contains("\r\nX-Portcullis-Flow-Id: Fl0w_id-1\r\n"),
            "{first}"
        );
        let second = headers(&mails[1].1);
        assert!(
            second.contains("\r\nX-Portcullis-Kind: security_notice\r\n"),
            "{second}"
        );
        assert!(!second.contains("X-Portcullis-Flow-Id"), "{second}");
    }

    /// Text that is not ASCII goes out as 8bit, verbatim; a line too long for mail is broken at
    /// a space, and every line stays under 998 octets.
    #[test]
    fn text_that_is_not_ascii_is_8bit_and_long_lines_are_broken() {
        let from: Mailbox = "Portcullis <no-reply@localhost>".parse().unwrap();
        let mut mail = message("a@example.org", "f1");
        let long = "word ".repeat(400);
        mail.body.text = Zeroizing::new(format!("Grüße, Zoë\n{long}\nend\n"));
        let raw = String::from_utf8(build_message(&from, &mail).unwrap().formatted()).unwrap();
        let text = raw_text_part(&raw);
        assert!(text.starts_with("Grüße, Zoë\r\n"), "{text}");
        assert!(raw.contains("Content-Transfer-Encoding: 8bit"), "{raw}");
        assert!(raw.split("\r\n").all(|l| l.len() < 998));
        let words: usize = text.split_whitespace().filter(|w| *w == "word").count();
        assert_eq!(words, 400, "no word lost or split");
    }

    /// A minimal SMTP server on loopback that accepts one message and hands over its data.
    async fn accepting_smtp_server() -> (u16, tokio::sync::oneshot::Receiver<String>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (rd, mut wr) = sock.into_split();
            let mut lines = BufReader::new(rd).lines();
            wr.write_all(b"220 test ESMTP\r\n").await.unwrap();
            let mut data: Option<String> = None;
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(d) = data.as_mut() {
                    if line == "." {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(std::mem::take(d));
                        }
                        data = None;
                        wr.write_all(b"250 ok\r\n").await.unwrap();
                    } else {
                        d.push_str(&line);
                        d.push_str("\r\n");
                    }
                    continue;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" | "HELO" => b"250 test\r\n",
                    "DATA" => {
                        data = Some(String::new());
                        b"354 go on\r\n"
                    }
                    "QUIT" => b"221 bye\r\n",
                    _ => b"250 ok\r\n",
                };
                if wr.write_all(reply).await.is_err() || verb == "QUIT" {
                    break;
                }
            }
        });
        (port, rx)
    }

    /// Plain SMTP to a test server on loopback.
    fn loopback_smtp(port: u16) -> Transport {
        Transport::Smtp(
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(port)
                .timeout(Some(Duration::from_secs(10)))
                .build(),
        )
    }

    /// Over SMTP a message carries the same headers and the same verbatim text part as in the
    /// outbox.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smtp_messages_carry_the_same_headers_and_a_verbatim_link() {
        let (port, rx) = accepting_smtp_server().await;
        let transport = loopback_smtp(port);
        let from: Mailbox = "Portcullis <no-reply@localhost>".parse().unwrap();
        let flow = format!("smtp-{}", "y".repeat(100));
        let msg = build_message(&from, &message("a@example.org", &flow)).unwrap();
        deliver(&transport, msg).await.unwrap();
        let raw = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        let headers = &raw[..raw.find("\r\n\r\n").unwrap()];
        assert!(
            headers.contains("\r\nX-Portcullis-Kind: magic_link\r\n"),
            "{headers}"
        );
        assert!(
            headers.contains(&format!("\r\nX-Portcullis-Flow-Id: {flow}\r\n")),
            "{headers}"
        );
        let link = format!("http://localhost:7421/auth/magic?token=secret-{flow}");
        assert!(raw.split("\r\n").any(|l| l.trim() == link), "{raw}");
    }

    /// A minimal SMTP server on loopback that refuses every recipient the way real servers do,
    /// quoting the address in its reply.
    async fn refusing_smtp_server() -> u16 {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            // Bounded: lettre makes one connection per attempt here.
            for _ in 0..8 {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (rd, mut wr) = sock.into_split();
                let mut lines = BufReader::new(rd).lines();
                if wr.write_all(b"220 test ESMTP\r\n").await.is_err() {
                    continue;
                }
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 test\r\n",
                        "RCPT" => b"550 5.1.1 <victim.person@example.org>: Recipient address rejected: User unknown in local recipient table\r\n",
                        "QUIT" => b"221 bye\r\n",
                        _ => b"250 ok\r\n",
                    };
                    if wr.write_all(reply).await.is_err() || verb == "QUIT" {
                        break;
                    }
                }
            }
        });
        port
    }

    /// SMTP replies quote the recipient; what delivery reports (and the worker logs) must not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smtp_failures_are_described_without_the_recipient_address() {
        let port = refusing_smtp_server().await;
        let transport = loopback_smtp(port);
        let from: Mailbox = "Portcullis <no-reply@localhost>".parse().unwrap();
        let msg = build_message(&from, &message("victim.person@example.org", "f1")).unwrap();
        let error = deliver(&transport, msg).await.unwrap_err();
        assert!(
            !error.contains("victim.person") && !error.contains('@'),
            "the address reached the error text: {error}"
        );
        // Still useful to an operator: what kind of failure, and the reply code.
        assert!(
            error.contains("permanent") && error.contains("550"),
            "{error}"
        );
    }
}
