//! The event log on PostgreSQL: one chain, one global order, across every node.
//!
//! Events live in `events`, keyed by `seq`, with each field as a column (for plain SQL) beside
//! the exact record that was hashed (`record`, what reads return). The chain's head is one row,
//! `log_head`. Each node appends through one task that takes every event waiting, and writes
//! them in one transaction: lock `log_head` `FOR UPDATE`, number and chain the events after it,
//! insert them, move the head, commit. Appends from several nodes serialise on that row, so
//! commit order is seq order and a reader never sees a gap that fills later; batching is what
//! makes that affordable (pgbench, not `portcullis bench`: about 1,000 chained events/s at one
//! per transaction on this machine, 14k at 32).

use crate::pg::{backend, client, within, Connector, PgStore};
use crate::{decode_record, encode_record, EventLog, StoreError};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use portcullis_protocol::commands::log::{Checkpoint, PruneResult};
use portcullis_protocol::{Event, GENESIS_HASH};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, NoTls};

/// Events one append transaction takes at most.
pub(crate) const APPEND_BATCH: usize = 512;
/// Appends waiting for the appender before callers wait for room.
pub(crate) const APPEND_QUEUE: usize = 4096;

/// An event waiting to be appended, and where its numbered form goes.
pub(crate) type PendingAppend = (Event, oneshot::Sender<Result<Event, StoreError>>);

/// The SQL of migration 2: the event log.
pub(crate) fn log_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS events (
             seq bigint PRIMARY KEY,
             time text NOT NULL,
             command text,
             outcome text NOT NULL,
             actor text NOT NULL,
             subject text,
             session text,
             client text,
             transport text NOT NULL,
             duration_us bigint NOT NULL,
             summary jsonb NOT NULL,
             prev text NOT NULL,
             hash text NOT NULL,
             record bytea NOT NULL);
         CREATE TABLE IF NOT EXISTS log_head (
             id int PRIMARY KEY CHECK (id = 1),
             seq bigint NOT NULL,
             hash text NOT NULL);
         INSERT INTO log_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}')
             ON CONFLICT (id) DO NOTHING;
         CREATE TABLE IF NOT EXISTS log_meta (
             key text PRIMARY KEY,
             value bytea NOT NULL);"
    )
}

const CHECKPOINT_KEY: &str = "checkpoint";

/// What a node knows of the log, shared with its appender.
pub(crate) struct LogState {
    /// The newest seq this node has seen committed.
    pub(crate) head: AtomicU64,
    /// The same, watched (every committed event is durable).
    pub(crate) durable: watch::Sender<u64>,
    /// The last prune's checkpoint.
    pub(crate) checkpoint: RwLock<Option<Checkpoint>>,
}

impl LogState {
    pub(crate) fn new() -> Self {
        LogState {
            head: AtomicU64::new(0),
            durable: watch::Sender::new(0),
            checkpoint: RwLock::new(None),
        }
    }

    /// Records that the log reaches at least `seq` (committed: every event up to it is
    /// readable, since commit order is seq order).
    pub(crate) fn reached(&self, seq: u64) {
        self.head.fetch_max(seq, Ordering::AcqRel);
        self.durable.send_if_modified(|d| {
            let moved = *d < seq;
            *d = (*d).max(seq);
            moved
        });
    }
}

/// Inserts events given as columns (see [`Columns`]): the appender's batches and imports.
const INSERT_EVENTS: &str = "INSERT INTO events (seq, time, command, outcome, actor, subject,
         session, client, transport, duration_us, summary, prev, hash, record)
     SELECT s, t, c, o, a, su, se, cl, tr, d, sm::jsonb, p, h, r
     FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
         $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[],
         $12::text[], $13::text[], $14::bytea[])
         AS u(s, t, c, o, a, su, se, cl, tr, d, sm, p, h, r)";

/// The log's head (seq, hash), locked for the rest of `tx`: the one row every writer of the
/// chain (appends, imports) takes first, so chains never fork.
async fn locked_head(tx: &deadpool_postgres::Transaction<'_>) -> Result<(i64, String), StoreError> {
    let head = tx
        .query_one(
            "SELECT seq, hash FROM log_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(backend)?;
    Ok((head.get(0), head.get(1)))
}

/// Appends one batch in one transaction; returns the events as numbered and chained.
async fn append_batch(
    pool: &Pool,
    log: &LogState,
    mut events: Vec<Event>,
    notify: bool,
) -> Result<Vec<Event>, StoreError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(backend)?;
    let (mut seq, mut prev) = locked_head(&tx).await?;
    let mut cols = Columns::with_capacity(events.len());
    for e in &mut events {
        seq += 1;
        e.seq = to_u64(seq);
        e.prev = std::mem::take(&mut prev);
        e.hash = e.compute_hash();
        prev = e.hash.clone();
        cols.push(e);
    }
    cols.insert(&tx).await?;
    // The notification goes out at commit, to every listening node (see `run_watcher`).
    tx.execute(
        if notify {
            "WITH moved AS (UPDATE log_head SET seq = $1, hash = $2 WHERE id = 1 RETURNING seq)
             SELECT pg_notify('portcullis_log', seq::text) FROM moved"
        } else {
            "UPDATE log_head SET seq = $1, hash = $2 WHERE id = 1"
        },
        &[&seq, &prev],
    )
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    log.reached(to_u64(seq));
    Ok(events)
}

/// A node's appender: takes every waiting event (up to [`APPEND_BATCH`]) and appends them in
/// one transaction (with a NOTIFY of the new head when `notify`), until the store (the queue's
/// sender) is gone.
pub(crate) async fn run_appender(
    pool: Pool,
    deadline: std::time::Duration,
    log: std::sync::Arc<LogState>,
    mut queue: mpsc::Receiver<PendingAppend>,
    notify: bool,
) {
    let mut batch: Vec<PendingAppend> = Vec::with_capacity(APPEND_BATCH);
    while queue.recv_many(&mut batch, APPEND_BATCH).await > 0 {
        let (events, waiters): (Vec<Event>, Vec<_>) = batch.drain(..).unzip();
        // Bounded: a database that stops answering fails this batch (its commit may still
        // land later; the next batch then chains after it, serialised on `log_head`).
        match within(deadline, append_batch(&pool, &log, events, notify)).await {
            Ok(done) => {
                for (event, waiter) in done.into_iter().zip(waiters) {
                    let _ = waiter.send(Ok(event));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "appending events failed");
                for waiter in waiters {
                    let _ = waiter.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The channel every append notifies with its new head seq.
const CHANNEL: &str = "portcullis_log";
/// How often the head is polled while anybody follows the log.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Waits between attempts to open the listening connection.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What keeps a node's view of the log's head current.
pub(crate) struct Watcher {
    /// The listening connection's configuration.
    pub(crate) config: tokio_postgres::Config,
    pub(crate) connector: Connector,
    /// For polls while there is no listening connection.
    pub(crate) pool: Pool,
    pub(crate) log: Arc<LogState>,
    /// Whether to LISTEN at all.
    pub(crate) listen: bool,
    /// How long a poll on the listening connection may take before the connection is taken
    /// for dead (a silently broken connection would otherwise hide every notification).
    pub(crate) timeout: Duration,
    /// True (or its sender gone) once the store is closed or dropped.
    pub(crate) stop: watch::Receiver<bool>,
}

/// Keeps `log`'s head current with other nodes' appends: LISTENs on a connection of its own
/// (not from the pool) and records each notified head, and polls `log_head` every
/// [`POLL_EVERY`] while anybody watches the durable seq (a follower), also when listening, so
/// that nothing depends on a notification arriving. A lost listening connection is reopened
/// with backoff, polling meanwhile. Ends when the store closes or is dropped.
pub(crate) async fn run_watcher(mut w: Watcher) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if !w.listen {
            poll_until(&mut w, None).await;
            return;
        }
        let config = w.config.clone();
        let ended = match w.connector.clone() {
            Connector::Plain => match connecting(&mut w, config.connect(NoTls)).await {
                Some(Ok((client, conn))) => Some(listening(&mut w, client, conn).await),
                Some(Err(e)) => Some(Err(e)),
                None => None,
            },
            Connector::Rustls(tls) => match connecting(&mut w, config.connect(tls)).await {
                Some(Ok((client, conn))) => Some(listening(&mut w, client, conn).await),
                Some(Err(e)) => Some(Err(e)),
                None => None,
            },
        };
        match ended {
            // Stopped.
            None | Some(Ok(())) => return,
            Some(Err(Lost { error, listened })) => {
                if listened {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(
                    error = %error,
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "the event log's listening connection is down; polling meanwhile"
                );
            }
        }
        if poll_until(&mut w, Some(backoff)).await {
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Why a listening connection ended, and whether it got as far as listening.
struct Lost {
    error: StoreError,
    listened: bool,
}

/// Resolves once the store is closed or dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Runs `connect` unless the store stops first (`None`).
async fn connecting<C>(
    w: &mut Watcher,
    connect: impl Future<Output = Result<C, tokio_postgres::Error>>,
) -> Option<Result<C, Lost>> {
    tokio::select! {
        _ = stopped(&mut w.stop) => None,
        c = connect => Some(c.map_err(|e| Lost { error: backend(e), listened: false })),
    }
}

/// Whether anybody follows the log on this node.
fn watched(log: &LogState) -> bool {
    log.durable.receiver_count() > 0
}

/// Reads the head through the pool, within `timeout`. Failures are left to the next poll.
async fn poll_head(pool: &Pool, log: &LogState, timeout: Duration) {
    let read = async {
        let c = client(pool).await?;
        let row = c
            .query_one("SELECT seq FROM log_head WHERE id = 1", &[])
            .await
            .map_err(backend)?;
        Ok::<i64, StoreError>(row.get(0))
    };
    match within(timeout, read).await {
        Ok(seq) => log.reached(to_u64(seq)),
        Err(e) => tracing::debug!(error = %e, "polling the event log's head failed"),
    }
}

/// Polls (while watched) until `wait` has passed (false) or the store stops (true).
async fn poll_until(w: &mut Watcher, wait: Option<Duration>) -> bool {
    let deadline = wait.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut w.stop) => return true,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                if deadline.is_some() => return false,
            _ = tick.tick() => {
                if watched(&w.log) {
                    poll_head(&w.pool, &w.log, w.timeout.saturating_mul(2)).await;
                }
            }
        }
    }
}

/// Runs `work` on the listening connection while driving it (its notifications recorded on
/// the way). `Ok(None)`: the store stopped.
async fn driving<S, T, F>(
    w: &mut Watcher,
    conn: &mut tokio_postgres::Connection<S, T>,
    work: F,
) -> Result<Option<F::Output>, StoreError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
    F: Future,
{
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return Ok(Some(done)),
            message = std::future::poll_fn(|cx| conn.poll_message(cx)) => {
                note(&w.log, message)?;
            }
            _ = stopped(&mut w.stop) => return Ok(None),
        }
    }
}

/// Records a notification; an error or the end of the connection is returned.
fn note(
    log: &LogState,
    message: Option<Result<AsyncMessage, tokio_postgres::Error>>,
) -> Result<(), StoreError> {
    match message {
        Some(Ok(AsyncMessage::Notification(n))) => {
            if let Ok(seq) = n.payload().parse::<u64>() {
                log.reached(seq);
            }
            Ok(())
        }
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(backend(e)),
        None => Err(StoreError::Unavailable(
            "the database closed the listening connection".into(),
        )),
    }
}

/// LISTENs on `client`'s connection, then records every notification and polls the head on
/// the same connection while watched; `Ok` when the store stopped, the error when the
/// connection failed.
async fn listening<S, T>(
    w: &mut Watcher,
    client: tokio_postgres::Client,
    mut conn: tokio_postgres::Connection<S, T>,
) -> Result<(), Lost>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let lost = |listened: bool| move |error: StoreError| Lost { error, listened };
    let listen = format!("LISTEN {CHANNEL}");
    match driving(w, &mut conn, client.batch_execute(&listen))
        .await
        .map_err(lost(false))?
    {
        None => return Ok(()),
        Some(r) => r.map_err(backend).map_err(lost(false))?,
    }
    let mut first = true;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = std::future::poll_fn(|cx| conn.poll_message(cx)) => {
                note(&w.log, message).map_err(lost(true))?;
            }
            _ = tick.tick() => {
                // Right after LISTEN, what was appended while not listening; then while
                // anybody follows, in case a notification never comes.
                if first || watched(&w.log) {
                    first = false;
                    let read = client.query_one("SELECT seq FROM log_head WHERE id = 1", &[]);
                    let timeout = w.timeout;
                    let answered = tokio::time::timeout(timeout, driving(w, &mut conn, read))
                        .await
                        .map_err(|_| Lost {
                            error: StoreError::Unavailable(
                                "the listening connection stopped answering".into(),
                            ),
                            listened: true,
                        })?;
                    match answered.map_err(lost(true))? {
                        None => return Ok(()),
                        Some(row) => {
                            let row = row.map_err(backend).map_err(lost(true))?;
                            w.log.reached(to_u64(row.get(0)));
                        }
                    }
                }
            }
            _ = stopped(&mut w.stop) => return Ok(()),
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgStore {
    /// Reads the head and checkpoint from the database (at start; later, where a stale value
    /// would mislead).
    pub(crate) async fn refresh_log_state(&self) -> Result<u64, StoreError> {
        self.bounded(self.refresh_log_state_now()).await
    }

    async fn refresh_log_state_now(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let head: i64 = c
            .query_one("SELECT seq FROM log_head WHERE id = 1", &[])
            .await
            .map_err(backend)?
            .get(0);
        let checkpoint = c
            .query_opt(
                "SELECT value FROM log_meta WHERE key = $1",
                &[&CHECKPOINT_KEY],
            )
            .await
            .map_err(backend)?
            .and_then(|r| serde_json::from_slice::<Checkpoint>(&r.get::<_, Vec<u8>>(0)).ok());
        *self
            .log
            .checkpoint
            .write()
            .unwrap_or_else(|p| p.into_inner()) = checkpoint;
        let head = to_u64(head);
        self.log.reached(head);
        Ok(head)
    }

    async fn read_rows(
        &self,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.bounded(self.read_rows_now(from, to, max)).await
    }

    async fn read_rows_now(
        &self,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT seq, record FROM events WHERE seq >= $1 AND seq <= $2 ORDER BY seq
                 LIMIT $3",
            )
            .await
            .map_err(backend)?;
        let rows = c
            .query(
                &stmt,
                &[
                    &to_i64(from),
                    &to_i64(to),
                    &i64::try_from(max).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|r| (to_u64(r.get(0)), r.get(1)))
            .collect())
    }
}

/// One batch as columns, for `UNNEST`.
struct Columns {
    seq: Vec<i64>,
    time: Vec<String>,
    command: Vec<Option<String>>,
    outcome: Vec<String>,
    actor: Vec<String>,
    subject: Vec<Option<String>>,
    session: Vec<Option<String>>,
    client: Vec<Option<String>>,
    transport: Vec<String>,
    duration_us: Vec<i64>,
    summary: Vec<String>,
    prev: Vec<String>,
    hash: Vec<String>,
    record: Vec<Vec<u8>>,
}

impl Columns {
    /// Inserts every event of these columns in one statement.
    async fn insert(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        let stmt = tx.prepare_cached(INSERT_EVENTS).await.map_err(backend)?;
        tx.execute(
            &stmt,
            &[
                &self.seq,
                &self.time,
                &self.command,
                &self.outcome,
                &self.actor,
                &self.subject,
                &self.session,
                &self.client,
                &self.transport,
                &self.duration_us,
                &self.summary,
                &self.prev,
                &self.hash,
                &self.record,
            ],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    fn with_capacity(n: usize) -> Self {
        Columns {
            seq: Vec::with_capacity(n),
            time: Vec::with_capacity(n),
            command: Vec::with_capacity(n),
            outcome: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            subject: Vec::with_capacity(n),
            session: Vec::with_capacity(n),
            client: Vec::with_capacity(n),
            transport: Vec::with_capacity(n),
            duration_us: Vec::with_capacity(n),
            summary: Vec::with_capacity(n),
            prev: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
            record: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, e: &Event) {
        self.seq.push(to_i64(e.seq));
        self.time.push(e.time.clone());
        self.command.push(e.command.clone());
        self.outcome.push(e.outcome.clone());
        self.actor.push(e.actor.to_string());
        self.subject.push(e.subject.clone());
        self.session.push(e.session.clone());
        self.client.push(e.client.clone());
        self.transport.push(e.transport.clone());
        self.duration_us.push(to_i64(e.duration_us));
        self.summary
            .push(serde_json::Value::Object(e.summary.clone()).to_string());
        self.prev.push(e.prev.clone());
        self.hash.push(e.hash.clone());
        self.record.push(encode_record(e));
    }
}

#[async_trait]
impl EventLog for PgStore {
    async fn append(&self, event: Event) -> Result<Event, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.appender
            .send((event, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn append_queued(&self, event: Event) -> Result<Option<crate::SyncTicket>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.appender
            .send((event, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        // Committed when the appender's transaction holding it is.
        Ok(Some(Box::pin(async move {
            rx.await.map_err(|_| StoreError::Closed)?.map(|_| ())
        })))
    }

    fn head_seq(&self) -> u64 {
        self.log.head.load(Ordering::Acquire)
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        self.refresh_log_state().await.map(|_| ())
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        self.log
            .checkpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn prune(&self, through_seq: u64) -> Result<PruneResult, StoreError> {
        let _one_at_a_time = self.prune_lock.lock().await;
        let (checkpoint, bytes) = match crate::log::plan_prune(self, through_seq).await? {
            crate::log::PrunePlan::Done(r) => return Ok(r),
            crate::log::PrunePlan::Checkpoint { checkpoint, bytes } => (checkpoint, bytes),
        };
        // The checkpoint and the removal in one transaction: all of it or none.
        let pruned = self
            .bounded(async {
                let mut c = self.client().await?;
                let tx = c.transaction().await.map_err(backend)?;
                tx.execute(
                    "INSERT INTO log_meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&CHECKPOINT_KEY, &bytes],
                )
                .await
                .map_err(backend)?;
                let pruned = tx
                    .execute(
                        "DELETE FROM events WHERE seq <= $1",
                        &[&to_i64(through_seq)],
                    )
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(pruned)
            })
            .await?;
        *self
            .log
            .checkpoint
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(checkpoint.clone());
        Ok(PruneResult {
            pruned,
            first_seq: through_seq + 1,
            checkpoint,
        })
    }

    fn durable_seq(&self) -> u64 {
        *self.log.durable.borrow()
    }

    fn watch_durable(&self) -> watch::Receiver<u64> {
        self.log.durable.subscribe()
    }

    async fn read_records(
        &self,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read_rows(from, to, max).await
    }

    async fn import_records(
        &self,
        start: Option<&Checkpoint>,
        records: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let (mut seq, mut hash) = locked_head(&tx).await?;
        if let Some(cp) = start {
            let pruned = tx
                .query_opt("SELECT 1 FROM log_meta WHERE key = $1", &[&CHECKPOINT_KEY])
                .await
                .map_err(backend)?;
            let any = tx
                .query_opt("SELECT 1 FROM events LIMIT 1", &[])
                .await
                .map_err(backend)?;
            if seq != 0 || pruned.is_some() || any.is_some() {
                return Err(StoreError::Backend(
                    "a checkpoint can only start an empty log".into(),
                ));
            }
            let bytes = serde_json::to_vec(cp)
                .map_err(|e| StoreError::Backend(format!("encoding the checkpoint: {e}")))?;
            tx.execute(
                "INSERT INTO log_meta (key, value) VALUES ($1, $2)",
                &[&CHECKPOINT_KEY, &bytes],
            )
            .await
            .map_err(backend)?;
            seq = to_i64(cp.seq);
            hash = cp.hash.clone();
        }
        let (new_seq, new_hash) = crate::log::check_import(to_u64(seq), &hash, records)?;
        let mut cols = Columns::with_capacity(records.len());
        for record in records {
            // Decodes: `check_import` checked every record.
            let event = decode_record::<Event>(record)?;
            cols.push(&event);
            if let Some(last) = cols.record.last_mut() {
                last.clone_from(record);
            }
        }
        if !records.is_empty() {
            cols.insert(&tx).await?;
        }
        tx.execute(
            "UPDATE log_head SET seq = $1, hash = $2 WHERE id = 1",
            &[&to_i64(new_seq), &new_hash],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        self.refresh_log_state().await.map(|_| ())
    }
}
