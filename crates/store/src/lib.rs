//! Persistence for Portcullis.
//!
//! [`Store`] and [`EventLog`] are the only doors to persistence: handlers and the dispatcher
//! see nothing else, so another backend (PostgreSQL) can be added without touching them.
//! [`SledStore`] implements both on sled 0.34.
//!
//! # Durability
//!
//! Writes land in sled's in-memory state at once and reach disk when it flushes. Callers that
//! must not answer before their write is on disk call [`Store::sync`] (or use [`Store::consume`],
//! which does). `sync` does not flush by itself: it joins the queue of ONE group-commit thread,
//! which flushes once for every waiter that arrived since the previous flush began. This keeps
//! one flush per batch rather than per caller, and avoids sled 0.34's `flush_async` deadlock
//! under many concurrent callers. Limit: on Linux sled's flush writes its log with
//! `sync_file_range`, which survives a process crash but does not flush a drive's volatile write
//! cache (weaker than `fdatasync` on power loss); see docs/architecture.md.

#![warn(missing_docs)]

mod group_commit;
mod log;
mod pg;
mod pg_log;
mod record;
mod sled_store;

pub use group_commit::{CommitStats, LAZY_FLUSH};
pub use log::{verify_events, ChainVerifier, EventLog, LogEntry, LogPage, RawLogEntry};
pub use pg::{PgOptions, PgStore, PgTls};
pub use record::{decode_record, encode_record, Record, RecordError};
pub use sled_store::{SledStore, StoreOptions};

use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;

/// A pending durability wait; see [`Store::sync`].
pub type SyncTicket = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

/// The logical tables of the store. Each backend maps them to its own structures (sled trees,
/// SQL tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Node-wide facts: node id, operator-token hash, key material.
    Meta,
    /// Single-use artifacts awaiting consumption (challenges, links, codes).
    Challenges,
    /// Accounts by user id.
    Users,
    /// User id by normalised, lower-cased email.
    Emails,
    /// Sessions by session id.
    Sessions,
    /// Index: `user_id/session_id` → empty, to list a user's sessions.
    UserSessions,
    /// Refresh tokens by SHA-256 of the token.
    RefreshTokens,
    /// Token signing keys by `kid`, private halves sealed with the master key.
    SigningKeys,
    /// Email sign-in flows (magic links, codes) by flow id.
    Flows,
    /// Flow id by SHA-256 of a magic-link token.
    MagicLinks,
    /// The newest flow per kind and address (`magic:<email>`, `otp:<email>`): older ones are void.
    LatestFlows,
    /// Mail send counters per address and per client address.
    SendCounters,
    /// Confirmed TOTP factors by user id (secret sealed with the master key).
    Totp,
    /// Pending TOTP enrolments by enrolment id.
    TotpEnrollments,
    /// Recovery codes: `user_id/m:<HMAC of the code>` (codes issued before: `user_id/sha256(code)`).
    RecoveryCodes,
    /// Pending second-factor sign-ins by SHA-256 of the `mfa_token`.
    MfaTickets,
    /// Passkeys: `user_id/credential_id`.
    Passkeys,
    /// User id by passkey credential id (credential ids are unique across accounts).
    PasskeyIndex,
    /// WebAuthn ceremony state by ceremony id (single use, 5 minutes).
    Ceremonies,
    /// API keys by SHA-256 of the key.
    ApiKeys,
    /// Mail waiting for delivery, by queue key (time-ordered), sealed with the master key.
    MailQueue,
    /// Failed sign-in attempts and attempts in flight, by kind and SHA-256 of the address, when
    /// several nodes share the store (one node keeps them in memory).
    Attempts,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 22] = [
        Table::Meta,
        Table::Challenges,
        Table::Users,
        Table::Emails,
        Table::Sessions,
        Table::UserSessions,
        Table::RefreshTokens,
        Table::SigningKeys,
        Table::Flows,
        Table::MagicLinks,
        Table::LatestFlows,
        Table::SendCounters,
        Table::Totp,
        Table::TotpEnrollments,
        Table::RecoveryCodes,
        Table::MfaTickets,
        Table::Passkeys,
        Table::PasskeyIndex,
        Table::Ceremonies,
        Table::ApiKeys,
        Table::MailQueue,
        Table::Attempts,
    ];

    /// Stable name of the table on disk.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Challenges => "challenges",
            Table::Users => "users",
            Table::Emails => "emails",
            Table::Sessions => "sessions",
            Table::UserSessions => "user_sessions",
            Table::RefreshTokens => "refresh_tokens",
            Table::SigningKeys => "signing_keys",
            Table::Flows => "flows",
            Table::MagicLinks => "magic_links",
            Table::LatestFlows => "latest_flows",
            Table::SendCounters => "send_counters",
            Table::Totp => "totp",
            Table::TotpEnrollments => "totp_enrollments",
            Table::RecoveryCodes => "recovery_codes",
            Table::MfaTickets => "mfa_tickets",
            Table::Passkeys => "passkeys",
            Table::PasskeyIndex => "passkey_index",
            Table::Ceremonies => "ceremonies",
            Table::ApiKeys => "api_keys",
            Table::MailQueue => "mail_queue",
            Table::Attempts => "attempts",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// A persistence failure. Its message carries no record contents.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (disk, corruption).
    #[error("storage backend failure: {0}")]
    Backend(String),
    /// The store is closing or its commit thread is gone.
    #[error("storage is shutting down")]
    Closed,
    /// The database cannot be reached right now (a networked backend); retrying may succeed.
    #[error("storage is unreachable: {0}")]
    Unavailable(String),
    /// A record could not be decoded.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A compare-and-swap kept losing to concurrent writers.
    #[error("too much contention on one record")]
    Busy,
    /// A prune was refused: the chain of the events it would remove breaks at `seq`.
    #[error("the event log's chain is broken at seq {seq}")]
    BrokenChain {
        /// The first broken seq.
        seq: u64,
    },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// The value matched `expected` and was replaced.
    Swapped,
    /// The value did not match; this is what it is now.
    Conflict {
        /// The current value.
        current: Option<Vec<u8>>,
    },
}

/// Result of [`Store::consume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// This caller consumed it; the removal is durable.
    Won,
    /// Someone else consumed or changed it first (or it never existed).
    Lost,
}

/// What a [`Batch`] requires of one key before it writes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The key holds no value.
    Absent,
    /// The key holds some value, whatever it is.
    Present,
    /// The key holds exactly this value.
    Value(Vec<u8>),
}

impl Expect {
    pub(crate) fn holds(&self, current: Option<&[u8]>) -> bool {
        match (self, current) {
            (Expect::Absent, None) | (Expect::Present, Some(_)) => true,
            (Expect::Value(want), Some(cur)) => want.as_slice() == cur,
            _ => false,
        }
    }
}

/// One condition of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its table.
    pub table: Table,
    /// Its key.
    pub key: Vec<u8>,
    /// What the key must hold.
    pub expect: Expect,
}

/// One write of a [`Batch`]: `value` `None` removes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Its table.
    pub table: Table,
    /// Its key.
    pub key: Vec<u8>,
    /// The new value, or `None` to remove the key.
    pub value: Option<Vec<u8>>,
}

/// An all-or-nothing change of several keys in several tables: every [`Check`] is evaluated and
/// every [`Write`] applied in one atomic step (see [`Store::apply`]). Writes apply in order, so
/// a later write of the same key wins. Built with the chained methods:
///
/// ```
/// # use portcullis_store::{Batch, Expect, Table};
/// let batch = Batch::new()
///     .check(Table::RefreshTokens, b"old", Expect::Value(b"active".to_vec()))
///     .put(Table::RefreshTokens, b"old", b"rotated".to_vec())
///     .put(Table::RefreshTokens, b"new", b"active".to_vec());
/// assert_eq!(batch.writes().len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    checks: Vec<Check>,
    writes: Vec<Write>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition: the batch is refused unless `key` holds what `expect` says.
    pub fn check(mut self, table: Table, key: impl Into<Vec<u8>>, expect: Expect) -> Self {
        self.checks.push(Check {
            table,
            key: key.into(),
            expect,
        });
        self
    }

    /// Adds a write of `value` under `key`.
    pub fn put(mut self, table: Table, key: impl Into<Vec<u8>>, value: Vec<u8>) -> Self {
        self.writes.push(Write {
            table,
            key: key.into(),
            value: Some(value),
        });
        self
    }

    /// Adds the removal of `key` (nothing happens to a key that is absent).
    pub fn remove(mut self, table: Table, key: impl Into<Vec<u8>>) -> Self {
        self.writes.push(Write {
            table,
            key: key.into(),
            value: None,
        });
        self
    }

    /// Sets `key` to `new` (`None` removes it) only if it holds `expected` (`None`: absent):
    /// a check and a write in one.
    pub fn swap(
        self,
        table: Table,
        key: impl Into<Vec<u8>>,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Self {
        let key = key.into();
        let expect = match expected {
            Some(v) => Expect::Value(v.to_vec()),
            None => Expect::Absent,
        };
        let b = self.check(table, key.clone(), expect);
        match new {
            Some(v) => b.put(table, key, v),
            None => b.remove(table, key),
        }
    }

    /// Appends another batch's checks and writes to this one.
    pub fn merge(mut self, other: Batch) -> Self {
        self.checks.extend(other.checks);
        self.writes.extend(other.writes);
        self
    }

    /// The conditions, in the order they were added.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// The writes, in the order they apply.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Whether the batch neither checks nor writes anything.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty() && self.writes.is_empty()
    }

    /// Every table the batch reads or writes, each once, in [`Table::ALL`] order.
    pub fn tables(&self) -> Vec<Table> {
        let mut seen = [false; Table::ALL.len()];
        for t in self
            .checks
            .iter()
            .map(|c| c.table)
            .chain(self.writes.iter().map(|w| w.table))
        {
            seen[t.index()] = true;
        }
        Table::ALL
            .iter()
            .copied()
            .filter(|t| seen[t.index()])
            .collect()
    }
}

/// The result of [`Store::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Every check held and every write is applied and durable.
    Committed,
    /// A check did not hold; nothing was written.
    Refused {
        /// Index of the first check that failed, in [`Batch::checks`] order.
        check: usize,
        /// What the checked key holds now.
        current: Option<Vec<u8>>,
    },
}

impl Applied {
    /// Whether the batch committed.
    pub fn committed(&self) -> bool {
        matches!(self, Applied::Committed)
    }
}

/// Key-value persistence with atomic single-key primitives.
///
/// Every method applies atomically to one key. Nothing is durable until [`Store::sync`] returns
/// (or a method documented as durable returns).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads a value.
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a value, replacing any previous one.
    async fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError>;

    /// Removes a value, returning the previous one.
    async fn remove(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Replaces the value with `new` (`None` removes it) only if it currently equals `expected`
    /// (`None` means absent, so `(None, Some(v))` is insert-if-absent). Among any number of
    /// concurrent callers with the same `expected`, exactly one gets [`Cas::Swapped`].
    async fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<Cas, StoreError>;

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    async fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>;

    /// Returns a wait that resolves once every write made before this call is durable on disk.
    ///
    /// The wait is registered when `sync` is called, not when the future is first polled, so a
    /// caller may take the ticket now and await it later (the dispatcher answers pipelined
    /// requests this way, sharing one flush).
    fn sync(&self) -> SyncTicket;

    /// What a read must wait for before it answers: `None` when every table write made before
    /// this call is already durable, otherwise a wait like [`Store::sync`]. A read that may have
    /// observed another command's write thus never answers before that write is on disk, while
    /// a read on settled state answers at once. Event log appends are not considered: the
    /// group commit makes them durable within [`LAZY_FLUSH`] even when nobody waits.
    fn sync_state(&self) -> Option<SyncTicket> {
        Some(self.sync())
    }

    /// Flushes everything, answers queued durability waiters and refuses later ones. Called once
    /// on shutdown.
    fn close(&self);

    /// Counters of the group commit, for metrics; `None` for a backend without one.
    fn commit_stats(&self) -> Option<&CommitStats> {
        None
    }

    /// Whether other nodes may write this store concurrently (a shared database). A node on a
    /// shared store caches nothing that another node can change back, and keeps the state that
    /// must hold across nodes (failure delays, attempt counters) in the store.
    fn shared(&self) -> bool {
        false
    }

    /// Applies a [`Batch`] all or nothing: if every check holds, every write is applied, in one
    /// atomic step that no other writer (single-key or batch) can interleave with, and the
    /// batch is durable before this returns [`Applied::Committed`]. If a check fails nothing is
    /// written. A crash at any point leaves either every write or none.
    ///
    /// This is the store's multi-key primitive: every flow whose keys must agree (an account
    /// and its address index, a factor and its index, a rotation and its successor) goes
    /// through it, so no crash or race can leave them half-changed. On an SQL backend it is one
    /// transaction.
    async fn apply(&self, batch: Batch) -> Result<Applied, StoreError>;

    /// Consumes a single-use item: removes `key` only if its value is still `expected`, and
    /// returns once that removal is durable. Exactly one of N concurrent callers wins; a loser
    /// changes nothing.
    async fn consume(
        &self,
        table: Table,
        key: &[u8],
        expected: &[u8],
    ) -> Result<Consumed, StoreError> {
        match self
            .compare_and_swap(table, key, Some(expected), None)
            .await?
        {
            Cas::Swapped => {
                self.sync().await?;
                Ok(Consumed::Won)
            }
            Cas::Conflict { .. } => Ok(Consumed::Lost),
        }
    }
}

#[cfg(test)]
mod tests;
