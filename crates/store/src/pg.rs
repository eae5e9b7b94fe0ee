//! The PostgreSQL backend: one SQL table per logical [`Table`], shared by any number of
//! stateless nodes.
//!
//! Each table holds `key bytea PRIMARY KEY, value bytea`: `value` is exactly the bytes the core
//! wrote, and the only thing compared by a compare-and-swap or a batch check. Beside it, for an
//! operator reading with plain SQL, a record's version byte and JSON body are kept as
//! `version smallint` and `body jsonb` (`NULL` for values that are not records, such as index
//! entries). Every statement commits before it returns (`synchronous_commit` must not be `off`,
//! checked at start), so [`Store::sync`] has nothing left to wait for.
//!
//! Single-key primitives run at READ COMMITTED and are atomic by construction: a
//! compare-and-swap is one `UPDATE … WHERE value = $expected` (or `INSERT … ON CONFLICT DO
//! NOTHING`, or `DELETE … WHERE value = $expected`), so of N concurrent callers exactly one sees
//! its row changed. A [`Batch`] is one SERIALIZABLE transaction; a serialization failure is
//! retried from the start (checks included), and reported as [`StoreError::Busy`] when it keeps
//! happening.
//!
//! Schema changes are versioned migrations applied at start under a lock row (no session
//! advisory locks, so CockroachDB works too): concurrent nodes serialise on it and each applies
//! only what the others have not.

mod tls;

pub use tls::PgTls;

use crate::pg_log::{
    log_sql, run_appender, run_watcher, LogState, PendingAppend, Watcher, APPEND_QUEUE,
};
use crate::{Applied, Batch, Cas, Expect, Store, StoreError, SyncTicket, Table};
use async_trait::async_trait;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
pub(crate) use tls::Connector;
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};

/// How to reach the database. Its `Debug` shows neither the URL nor the password.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user[:password]@host[:port]/database[?options]`.
    pub url: String,
    /// Connections per node.
    pub pool_size: usize,
    /// Server-side limit for one statement.
    pub statement_timeout: Duration,
    /// How long a command waits for a connection (or for a new one to open) before the store
    /// answers unavailable.
    pub connect_timeout: Duration,
    /// The password, when not in the URL (from a file or the environment).
    pub password: Option<zeroize::Zeroizing<String>>,
    /// TLS to the database; `None`: the URL's `sslmode`, else `disable` when every host is on
    /// loopback and `verify-full` otherwise (see [`PgTls`]).
    pub tls: Option<PgTls>,
    /// The CA certificates (PEM) that `verify-full` trusts; `None`: the URL's `sslrootcert`,
    /// else the Mozilla roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// LISTEN/NOTIFY: each append notifies, and each node listens on a connection of its own
    /// to learn of other nodes' events at once. Turn it off for databases without LISTEN
    /// (CockroachDB); nodes then learn of them by polling the log's head (every 250 ms while
    /// anybody follows the log), which they also do with it on, in case a notification is
    /// missed.
    pub listen: bool,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl PgOptions {
    /// Sets the password (kept zeroized on drop).
    pub fn set_password(&mut self, password: String) {
        self.password = Some(zeroize::Zeroizing::new(password));
    }

    /// Defaults for `url`: 16 connections, 5 s statements, 5 s to get a connection, TLS as
    /// the URL and hosts say, LISTEN on.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            password: None,
            tls: None,
            ca_file: None,
            listen: true,
        }
    }
}

/// A pooled connection unused for this long is tested with a round trip before it is handed
/// out: it may have died while idle (a database restart) without the pool noticing yet.
pub(crate) const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Rounds of a batch against serialization failures before it reports [`StoreError::Busy`].
const BATCH_ATTEMPTS: u32 = 16;
/// The longest pause between two rounds of a batch, milliseconds.
const BATCH_BACKOFF_MAX_MS: u64 = 64;

/// The pause before round `attempt` (from 1) of a batch that failed to serialize: random in
/// `0..=min(2^attempt, BATCH_BACKOFF_MAX_MS)` ms, so batches that collided (SERIALIZABLE's
/// predicate locks cover index pages, so batches of unrelated keys collide on small tables)
/// spread out instead of colliding again in step.
fn batch_backoff(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let ceiling = (1u64 << attempt.min(16)).min(BATCH_BACKOFF_MAX_MS);
    // Jitter, not a secret: the standard library's randomly keyed hasher will do.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    std::time::Duration::from_millis(h.finish() % (ceiling + 1))
}

/// The schema, one step per version (the SQL each applies), in order; never edited once
/// released.
pub(crate) const MIGRATIONS: &[fn() -> String] = &[
    // 1: one table per logical table.
    || create_tables(&Table::ALL[..21]),
    // 2: the event log and its head.
    log_sql,
    // 3: attempts (failure delays and code caps shared by every node).
    || create_tables(&[Table::Attempts]),
];

/// The PostgreSQL store and event log.
pub struct PgStore {
    pool: Pool,
    /// Longest one store operation may wait for the database, whatever happens to it.
    deadline: Duration,
    pub(crate) log: std::sync::Arc<LogState>,
    pub(crate) appender: tokio::sync::mpsc::Sender<PendingAppend>,
    pub(crate) prune_lock: tokio::sync::Mutex<()>,
    /// Set on close; dropped with the store: either stops the log watcher.
    stop: tokio::sync::watch::Sender<bool>,
    tls: PgTls,
    /// How to open a connection (the log watcher's own).
    config: tokio_postgres::Config,
    connector: Connector,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn sql_table(table: Table) -> &'static str {
    table.name()
}

/// The statements of one table, written once per process (every call names them to the
/// connection's statement cache).
struct TableSql {
    get: String,
    upsert: String,
    delete: String,
    insert_if_absent: String,
    update_if: String,
    delete_if: String,
    scan_range: String,
    scan_from: String,
    scan_after: String,
}

fn sql(table: Table) -> &'static TableSql {
    static ALL: std::sync::OnceLock<Vec<TableSql>> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| {
        Table::ALL
            .iter()
            .map(|t| {
                let t = sql_table(*t);
                TableSql {
                    get: format!("SELECT value FROM {t} WHERE key = $1"),
                    upsert: format!(
                        "INSERT INTO {t} (key, value, version, body)
                         VALUES ($1, $2, $3, $4::text::jsonb)
                         ON CONFLICT (key) DO UPDATE
                         SET value = excluded.value, version = excluded.version,
                             body = excluded.body"
                    ),
                    delete: format!("DELETE FROM {t} WHERE key = $1 RETURNING value"),
                    insert_if_absent: format!(
                        "INSERT INTO {t} (key, value, version, body)
                         VALUES ($1, $2, $3, $4::text::jsonb)
                         ON CONFLICT (key) DO NOTHING"
                    ),
                    update_if: format!(
                        "UPDATE {t} SET value = $3, version = $4, body = $5::text::jsonb
                         WHERE key = $1 AND value = $2"
                    ),
                    delete_if: format!("DELETE FROM {t} WHERE key = $1 AND value = $2"),
                    scan_range: format!(
                        "SELECT key, value FROM {t} WHERE key >= $1 AND key < $2
                         ORDER BY key LIMIT $3"
                    ),
                    scan_from: format!(
                        "SELECT key, value FROM {t} WHERE key >= $1 ORDER BY key LIMIT $2"
                    ),
                    scan_after: format!(
                        "SELECT key, value FROM {t} WHERE key > $1 ORDER BY key LIMIT $2"
                    ),
                }
            })
            .collect()
    });
    &all[table.index()]
}

pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if is_serialization_failure(&e) {
            return StoreError::Busy;
        }
        // The code and message only: a DETAIL may quote key values.
        let what = format!("{}: {}", db.code().code(), db.message());
        if db.code().code().starts_with("08") || db.code().code().starts_with("57P") {
            // The server ended or refused the connection.
            connection_failed();
        }
        return if is_transient(db.code()) {
            StoreError::Unavailable(what)
        } else {
            StoreError::Backend(what)
        };
    }
    connection_failed();
    if e.is_closed() {
        return StoreError::Unavailable("the database connection closed".into());
    }
    // The causes too (a TLS handshake's says which check failed); none holds the URL.
    let mut message = format!("the database is unreachable: {e}");
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    StoreError::Unavailable(message)
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => backend(e),
        other => StoreError::Unavailable(format!("no database connection: {other}")),
    }
}

/// Errors after which the same command may well succeed when retried, so the client is told
/// "unavailable, retry" rather than "internal error": the connection failed or the server ended
/// it (shutdown, crash, an administrator), the server is starting or short of resources (too
/// many connections, memory, disk), the statement ran into `statement_timeout` or a lock
/// timeout, or the server is a read-only standby (during a failover).
fn is_transient(code: &SqlState) -> bool {
    let class = code.code().get(..2).unwrap_or("");
    class == "08"
        || class == "53"
        || code.code().starts_with("57P")
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
}

fn is_serialization_failure(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// The version byte and JSON body of a record value, for the readable columns.
fn readable(value: &[u8]) -> (Option<i16>, Option<&str>) {
    match value {
        [version, body @ ..] if body.first() == Some(&b'{') => {
            let json = std::str::from_utf8(body)
                .ok()
                .filter(|s| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok());
            match json {
                Some(j) => (Some(i16::from(*version)), Some(j)),
                None => (None, None),
            }
        }
        _ => (None, None),
    }
}

/// When this process last saw a connection fail (the server ended it, or it broke), as
/// milliseconds since [`since_start`]'s origin plus one; 0: never.
static LAST_CONNECTION_FAILURE: AtomicU64 = AtomicU64::new(0);

fn since_start() -> Duration {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// Notes that a connection failed: every pooled connection is then tested once before its
/// next use (the others most likely died with it, in a database restart).
fn connection_failed() {
    let now = u64::try_from(since_start().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    LAST_CONNECTION_FAILURE.fetch_max(now, AtomicOrdering::Relaxed);
}

/// Whether a connection last handed out `last_used` ago must be tested before it is handed
/// out again: it sat unused for [`IDLE_CHECK`], or a connection failed since.
fn needs_check(last_used: Duration) -> bool {
    if last_used >= IDLE_CHECK {
        return true;
    }
    let failed = LAST_CONNECTION_FAILURE.load(AtomicOrdering::Relaxed);
    if failed == 0 {
        return false;
    }
    // Both in whole milliseconds, rounded so that a tie is checked.
    let handed_out = since_start().saturating_sub(last_used).as_millis();
    u128::from(failed) >= handed_out
}

/// Tests a pooled connection with one round trip (bounded by `timeout`) before it is handed
/// out when it has not been used for [`IDLE_CHECK`] or a connection failed since its last use,
/// so that a connection that died — the database restarted or crashed, a network path went
/// away — is dropped and replaced instead of failing the next command. The pool's own test
/// (`RecyclingMethod::Fast`: only whether the client already saw the socket close) misses a
/// connection whose end has not been read yet. Connections in steady use on a healthy database
/// skip the round trip.
fn idle_check(timeout: Duration) -> Hook {
    Hook::async_fn(move |client, metrics| {
        Box::pin(async move {
            if !needs_check(metrics.last_used()) {
                return Ok(());
            }
            match tokio::time::timeout(timeout, client.simple_query("")).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(HookError::Backend(e)),
                Err(_) => Err(HookError::message("no answer to the idle check")),
            }
        })
    })
}

/// Longest one store operation may take: a connection (waiting for one, or opening and
/// checking one), then statements that the server ends at `statement_timeout`, each at most
/// twice over. Only a database that stops answering altogether (a hung server, a network path
/// that drops packets) reaches it; `statement_timeout` cannot fire there.
pub(crate) fn deadline(options: &PgOptions) -> Duration {
    options
        .connect_timeout
        .saturating_add(options.statement_timeout)
        .saturating_mul(2)
}

/// `op`, or unavailable once `deadline` passes. The abandoned statement's connection is
/// suspect: every pooled connection is tested before its next use.
pub(crate) async fn within<T>(
    deadline: Duration,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(deadline, op).await {
        Ok(done) => done,
        Err(_) => {
            connection_failed();
            Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            ))
        }
    }
}

/// A connection from the pool.
pub(crate) async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(pool_err)
}

/// The exclusive upper bound of keys starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl PgStore {
    /// Connects, checks that commits are durable, and applies any pending migration.
    pub async fn connect(options: &PgOptions) -> Result<PgStore, StoreError> {
        let store = Self::open(options).await?;
        store.migrate().await?;
        store.refresh_log_state().await?;
        store.watch_log(options);
        Ok(store)
    }

    /// Connects and checks that commits are durable.
    async fn open(options: &PgOptions) -> Result<PgStore, StoreError> {
        let (mut config, connector, tls) = tls::configure(options)?;
        // Notices ("already exists, skipping") are not worth a log line.
        config.options(format!(
            "-c statement_timeout={} -c client_min_messages=warning",
            options.statement_timeout.as_millis()
        ));
        config.connect_timeout(options.connect_timeout);
        if let Some(p) = &options.password {
            config.password(p.as_bytes());
        }
        config.application_name("portcullis");
        let manager_config = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &connector {
            Connector::Plain => Manager::from_config(config.clone(), NoTls, manager_config()),
            Connector::Rustls(c) => {
                Manager::from_config(config.clone(), c.clone(), manager_config())
            }
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .pre_recycle(idle_check(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("building the connection pool: {e}")))?;
        let log = std::sync::Arc::new(LogState::new());
        let (appender, queue) = tokio::sync::mpsc::channel(APPEND_QUEUE);
        tokio::spawn(run_appender(
            pool.clone(),
            deadline(options),
            std::sync::Arc::clone(&log),
            queue,
            options.listen,
        ));
        let store = PgStore {
            pool,
            deadline: deadline(options),
            log,
            appender,
            prune_lock: tokio::sync::Mutex::new(()),
            stop: tokio::sync::watch::Sender::new(false),
            tls,
            config,
            connector,
        };
        if let Err(e) = store.check_durability().await {
            store.close();
            return Err(e);
        }
        Ok(store)
    }

    /// Starts the task that keeps this node's view of the log's head current (LISTEN on a
    /// connection of its own, and polling); it ends when the store closes or is dropped.
    fn watch_log(&self, options: &PgOptions) {
        let mut config = self.config.clone();
        config.application_name("portcullis-log-watch");
        // A connection that only listens sends nothing for long stretches: probe it.
        config.keepalives_idle(Duration::from_secs(30));
        tokio::spawn(run_watcher(Watcher {
            config,
            connector: self.connector.clone(),
            pool: self.pool.clone(),
            log: std::sync::Arc::clone(&self.log),
            listen: options.listen,
            timeout: options.connect_timeout.max(options.statement_timeout),
            stop: self.stop.subscribe(),
        }));
    }

    /// The TLS mode the connections use.
    pub fn tls(&self) -> PgTls {
        self.tls
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        client(&self.pool).await
    }

    /// Runs one store operation, failing it as unavailable once [`PgStore::deadline`] passes.
    pub(crate) async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        within(self.deadline, op).await
    }

    async fn check_durability(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map_err(backend)?;
        let mode: String = row.get(0);
        if mode == "off" {
            return Err(StoreError::Backend(
                "synchronous_commit is off: a commit could be lost after the answer; set it to on"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Applies the migrations this database lacks, under the lock row; returns the schema
    /// version. Safe when several nodes start at once.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        self.migrate_from().await.map(|(_, after)| after)
    }

    /// Connects without applying migrations, applies them (under the lock row), and returns
    /// the schema version before and after (`portcullis admin migrate`). A database newer than
    /// this build is refused.
    pub async fn migrate_database(options: &PgOptions) -> Result<(usize, usize), StoreError> {
        let store = Self::open(options).await?;
        let done = store.migrate_from().await;
        store.close();
        done
    }

    /// [`PgStore::migrate`], also returning the version found.
    async fn migrate_from(&self) -> Result<(usize, usize), StoreError> {
        let mut c = self.client().await?;
        // Creating the lock table itself can race: a concurrent CREATE … IF NOT EXISTS may fail
        // on the catalogue's unique index. Try again; one of them made it.
        for attempt in 0.. {
            let made = c
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS portcullis_schema (
                         id int PRIMARY KEY CHECK (id = 1),
                         version int NOT NULL,
                         updated_at timestamptz NOT NULL DEFAULT now());
                     INSERT INTO portcullis_schema (id, version) VALUES (1, 0)
                         ON CONFLICT (id) DO NOTHING;",
                )
                .await;
            match made {
                Ok(()) => break,
                Err(e)
                    if attempt < 5
                        && e.code().is_some_and(|c| {
                            *c == SqlState::UNIQUE_VIOLATION
                                || *c == SqlState::DUPLICATE_TABLE
                                || *c == SqlState::DUPLICATE_OBJECT
                        }) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        let tx = c.transaction().await.map_err(backend)?;
        let row = tx
            .query_one(
                "SELECT version FROM portcullis_schema WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(backend)?;
        let current = usize::try_from(row.get::<_, i32>(0)).unwrap_or(0);
        if current > MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "the database schema is version {current}, newer than this build's {}: upgrade \
                 this node",
                MIGRATIONS.len()
            )));
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(current) {
            tx.batch_execute(&step()).await.map_err(backend)?;
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute(
                "UPDATE portcullis_schema SET version = $1, updated_at = now() WHERE id = 1",
                &[&version],
            )
            .await
            .map_err(backend)?;
            tracing::info!(version, "applied a database migration");
        }
        tx.commit().await.map_err(backend)?;
        Ok((current, MIGRATIONS.len()))
    }

    /// Removes every row of every table and the whole event log (its checkpoint included),
    /// in one transaction: how `portcullis admin import` undoes its own partial work in a
    /// database it found empty. Nothing else calls it.
    pub async fn clear_after_failed_import(&self) -> Result<(), StoreError> {
        let tables: Vec<&str> = Table::ALL.iter().map(|t| sql_table(*t)).collect();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        tx.batch_execute(&format!(
            "TRUNCATE {}, events, log_meta;
             UPDATE log_head SET seq = 0, hash = '{}' WHERE id = 1;",
            tables.join(", "),
            portcullis_protocol::GENESIS_HASH
        ))
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        // The node's view of the head only ever moves forward otherwise.
        self.log.head.store(0, std::sync::atomic::Ordering::Release);
        self.log.durable.send_replace(0);
        self.refresh_log_state().await.map(|_| ())
    }

    async fn current(
        c: &impl deadpool_postgres::GenericClient,
        table: Table,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
        let stmt = c.prepare_cached(&sql(table).get).await?;
        Ok(c.query_opt(&stmt, &[&key]).await?.map(|r| r.get(0)))
    }

    async fn upsert(
        c: &impl deadpool_postgres::GenericClient,
        table: Table,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), tokio_postgres::Error> {
        let (version, body) = readable(value);
        let stmt = c.prepare_cached(&sql(table).upsert).await?;
        c.execute(&stmt, &[&key, &value, &version, &body]).await?;
        Ok(())
    }

    async fn delete(
        c: &impl deadpool_postgres::GenericClient,
        table: Table,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
        let stmt = c.prepare_cached(&sql(table).delete).await?;
        Ok(c.query_opt(&stmt, &[&key]).await?.map(|r| r.get(0)))
    }

    /// One attempt at a batch: `Ok(None)` when the transaction hit a serialization failure.
    async fn try_apply(&self, batch: &Batch) -> Result<Option<Applied>, StoreError> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .await
            .map_err(backend)?;
        let outcome: Result<Applied, tokio_postgres::Error> = async {
            for (i, check) in batch.checks().iter().enumerate() {
                let current = Self::current(&tx, check.table, &check.key).await?;
                let holds = match &check.expect {
                    Expect::Absent => current.is_none(),
                    Expect::Present => current.is_some(),
                    Expect::Value(v) => current.as_deref() == Some(v.as_slice()),
                };
                if !holds {
                    return Ok(Applied::Refused { check: i, current });
                }
            }
            for w in batch.writes() {
                match &w.value {
                    Some(v) => Self::upsert(&tx, w.table, &w.key, v).await?,
                    None => {
                        Self::delete(&tx, w.table, &w.key).await?;
                    }
                }
            }
            Ok(Applied::Committed)
        }
        .await;
        match outcome {
            Ok(Applied::Committed) => match tx.commit().await {
                Ok(()) => Ok(Some(Applied::Committed)),
                Err(e) if is_serialization_failure(&e) => Ok(None),
                Err(e) => Err(backend(e)),
            },
            Ok(refused) => {
                // Nothing was written; the transaction only read.
                tx.rollback().await.map_err(backend)?;
                Ok(Some(refused))
            }
            Err(e) if is_serialization_failure(&e) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }
}

/// The SQL of migration 1: every logical table.
/// `CREATE TABLE` for each of `tables`.
fn create_tables(tables: &[Table]) -> String {
    tables
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                     key bytea PRIMARY KEY,
                     value bytea NOT NULL,
                     version smallint,
                     body jsonb);",
                sql_table(*t)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[async_trait]
impl Store for PgStore {
    fn shared(&self) -> bool {
        true
    }

    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.bounded(async {
            let c = self.client().await?;
            Self::current(&c, table, key).await.map_err(backend)
        })
        .await
    }

    async fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.bounded(async {
            let c = self.client().await?;
            Self::upsert(&c, table, key, &value).await.map_err(backend)
        })
        .await
    }

    async fn remove(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.bounded(async {
            let c = self.client().await?;
            Self::delete(&c, table, key).await.map_err(backend)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<Cas, StoreError> {
        self.bounded(async {
            let c = self.client().await?;
            let s = sql(table);
            let changed = match (expected, &new) {
                (None, None) => Self::current(&c, table, key)
                    .await
                    .map_err(backend)?
                    .is_none(),
                (None, Some(v)) => {
                    let (version, body) = readable(v);
                    let stmt = c
                        .prepare_cached(&s.insert_if_absent)
                        .await
                        .map_err(backend)?;
                    c.execute(&stmt, &[&key, &v, &version, &body])
                        .await
                        .map_err(backend)?
                        == 1
                }
                (Some(old), Some(v)) => {
                    let (version, body) = readable(v);
                    let stmt = c.prepare_cached(&s.update_if).await.map_err(backend)?;
                    c.execute(&stmt, &[&key, &old, &v, &version, &body])
                        .await
                        .map_err(backend)?
                        == 1
                }
                (Some(old), None) => {
                    let stmt = c.prepare_cached(&s.delete_if).await.map_err(backend)?;
                    c.execute(&stmt, &[&key, &old]).await.map_err(backend)? == 1
                }
            };
            if changed {
                return Ok(Cas::Swapped);
            }
            let current = Self::current(&c, table, key).await.map_err(backend)?;
            Ok(Cas::Conflict { current })
        })
        .await
    }

    async fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.bounded(async {
            let c = self.client().await?;
            let s = sql(table);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = match prefix_end(prefix) {
                Some(end) => {
                    let stmt = c.prepare_cached(&s.scan_range).await.map_err(backend)?;
                    c.query(&stmt, &[&prefix, &end, &limit]).await
                }
                None => {
                    let stmt = c.prepare_cached(&s.scan_from).await.map_err(backend)?;
                    c.query(&stmt, &[&prefix, &limit]).await
                }
            }
            .map_err(backend)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
    }

    async fn scan_range(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let c = self.client().await?;
        let s = sql(table);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (text, from) = match after {
            Some(a) => (&s.scan_after, a),
            None => (&s.scan_from, &b""[..]),
        };
        let stmt = c.prepare_cached(text).await.map_err(backend)?;
        let rows = c.query(&stmt, &[&from, &limit]).await.map_err(backend)?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn sync(&self) -> SyncTicket {
        // Every statement committed before it returned.
        Box::pin(async { Ok(()) })
    }

    fn sync_state(&self) -> Option<SyncTicket> {
        None
    }

    fn close(&self) {
        self.stop.send_replace(true);
        self.pool.close();
    }

    async fn apply(&self, batch: Batch) -> Result<Applied, StoreError> {
        self.bounded(async {
            for attempt in 0..BATCH_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(batch_backoff(attempt)).await;
                }
                if let Some(applied) = self.try_apply(&batch).await? {
                    return Ok(applied);
                }
            }
            Err(StoreError::Busy)
        })
        .await
    }

    async fn consume(
        &self,
        table: Table,
        key: &[u8],
        expected: &[u8],
    ) -> Result<crate::Consumed, StoreError> {
        self.bounded(async {
            let c = self.client().await?;
            // The same statement as a compare-and-swap to nothing.
            let stmt = c
                .prepare_cached(&sql(table).delete_if)
                .await
                .map_err(backend)?;
            let n = c
                .execute(&stmt, &[&key, &expected])
                .await
                .map_err(backend)?;
            // Committed (and durable) before execute returned.
            Ok(if n == 1 {
                crate::Consumed::Won
            } else {
                crate::Consumed::Lost
            })
        })
        .await
    }
}

#[cfg(test)]
mod failure_tests;
