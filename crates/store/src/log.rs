//! The hash-chained event log: the trait every backend implements, and chain verification.

use crate::{Record, RecordError, StoreError};
use async_trait::async_trait;
use portcullis_protocol::commands::log::{Checkpoint, PruneResult, VerifyReport};
use portcullis_protocol::{Event, GENESIS_HASH};
use tokio::sync::watch;

impl Record for Event {
    const VERSION: u8 = 1;
}

/// One stored position of the log: its seq and the event, or why it could not be read.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Position (from the key, so known even when the value is unreadable).
    pub seq: u64,
    /// The event.
    pub event: Result<Event, RecordError>,
}

/// A page of the log.
pub type LogPage = Vec<LogEntry>;

/// One stored position of the log as its stored JSON, checked to have the shape of an event
/// (every member present, no other, `seq` equal to the position) without decoding it.
#[derive(Debug, Clone)]
pub struct RawLogEntry {
    /// Position.
    pub seq: u64,
    /// The event's JSON, or why it is not a readable event.
    pub json: Result<Vec<u8>, RecordError>,
}

/// Checks that `json` has the shape of an [`Event`] at `seq`, without allocating.
fn check_event_shape(seq: u64, json: &[u8]) -> Result<(), RecordError> {
    use serde::de::IgnoredAny;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shape {
        seq: u64,
        time: IgnoredAny,
        command: IgnoredAny,
        outcome: IgnoredAny,
        actor: IgnoredAny,
        subject: IgnoredAny,
        session: IgnoredAny,
        client: IgnoredAny,
        transport: IgnoredAny,
        duration_us: IgnoredAny,
        summary: IgnoredAny,
        prev: IgnoredAny,
        hash: IgnoredAny,
    }
    let shape: Shape =
        serde_json::from_slice(json).map_err(|e| RecordError::Body(e.to_string()))?;
    if shape.seq != seq {
        return Err(RecordError::Body(format!(
            "event at position {seq} says seq {}",
            shape.seq
        )));
    }
    Ok(())
}

/// The JSON body of a stored event record, checked by [`check_event_shape`].
pub(crate) fn raw_event(seq: u64, stored: &[u8]) -> Result<Vec<u8>, RecordError> {
    let (&version, body) = stored.split_first().ok_or(RecordError::Empty)?;
    if version != <Event as Record>::VERSION {
        return Err(RecordError::Version {
            found: version,
            expected: <Event as Record>::VERSION,
        });
    }
    check_event_shape(seq, body)?;
    Ok(body.to_vec())
}

/// Append-only, hash-chained audit log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends an event. `seq`, `prev` and `hash` are assigned here, under one lock, so the chain
    /// has no gap and no fork. Not durable until [`crate::Store::sync`] returns.
    async fn append(&self, event: Event) -> Result<Event, StoreError>;

    /// Appends an event without waiting for more than its place in line. `None`: appended
    /// already (sled: in memory, durable after [`crate::Store::sync`]). `Some(wait)`: queued;
    /// the wait resolves once the event is appended and durable, or fails if it could not be
    /// (PostgreSQL: the caller goes on meanwhile, so a connection's pipelined requests share
    /// one append transaction instead of taking one each). Events queued by one caller keep
    /// their order.
    async fn append_queued(&self, event: Event) -> Result<Option<crate::SyncTicket>, StoreError> {
        self.append(event).await?;
        Ok(None)
    }

    /// Seq of the newest appended event (0 when empty), as this node last saw it. With several
    /// nodes on one log it may lag: call [`EventLog::refresh`] first where that would mislead.
    fn head_seq(&self) -> u64;

    /// Reads the log's state (head, checkpoint) afresh from where it is kept, so that
    /// [`EventLog::head_seq`] and [`EventLog::checkpoint`] include what other nodes appended or
    /// pruned. Nothing to do for a log only this process writes.
    async fn refresh(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The last pruned event; `None` when the log was never pruned.
    fn checkpoint(&self) -> Option<Checkpoint>;

    /// Seq of the oldest event the log holds: 1 unless it was pruned.
    fn first_seq(&self) -> u64 {
        self.checkpoint().map_or(1, |c| c.seq + 1)
    }

    /// Removes every event with seq ≤ `through_seq`, which must be below
    /// [`EventLog::head_seq`] (at least one event is kept to chain from), once the chain from
    /// the first event to `through_seq + 1` verifies ([`StoreError::BrokenChain`] otherwise,
    /// nothing removed). Prunes run one at a time. The new checkpoint
    /// (that event's seq and hash) is made durable, together with every event appended before
    /// it, before the first event is removed; a crash in between leaves events at or below the
    /// checkpoint that reads skip and the next open removes. Pruning through a seq already
    /// pruned changes nothing (`pruned` 0).
    async fn prune(&self, through_seq: u64) -> Result<PruneResult, StoreError>;

    /// Seq of the newest event known to be on disk. Readers that must never show an event that
    /// a crash could take back (LOG.TAIL) stay at or below it.
    fn durable_seq(&self) -> u64;

    /// Watches [`EventLog::durable_seq`].
    fn watch_durable(&self) -> watch::Receiver<u64>;

    /// Up to `max` entries with seq in `from..=to`, ascending. The default decodes
    /// [`EventLog::read_records`].
    async fn read(&self, from: u64, to: u64, max: usize) -> Result<LogPage, StoreError> {
        Ok(self
            .read_records(from, to, max)
            .await?
            .into_iter()
            .map(|(seq, record)| LogEntry {
                seq,
                event: crate::decode_record::<Event>(&record),
            })
            .collect())
    }

    /// Up to `max` stored records (the version byte and the event's JSON, exactly as hashed and
    /// kept) with seq in `from..=to`, ascending, undecoded: what `portcullis admin export`
    /// copies byte for byte.
    async fn read_records(
        &self,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Writes stored event records verbatim after the head, for moving a log between stores
    /// (`portcullis admin import`): each must decode, carry the next seq, point back (`prev`)
    /// to the hash of the event before it and hash correctly, else nothing of this call is
    /// written ([`StoreError::BrokenChain`]). With `start`, the log must be empty and never
    /// pruned: `start` becomes its checkpoint (the last event pruned at the source) and the
    /// first record must follow it. Durable before it returns. Not for a log that is being
    /// appended to.
    async fn import_records(
        &self,
        start: Option<&Checkpoint>,
        records: &[Vec<u8>],
    ) -> Result<(), StoreError>;

    /// Like [`EventLog::read`], but each event as its stored JSON, for sending on unchanged
    /// (`LOG.TAIL`). The default takes it out of [`EventLog::read_records`].
    async fn read_raw(
        &self,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<RawLogEntry>, StoreError> {
        Ok(self
            .read_records(from, to, max)
            .await?
            .into_iter()
            .map(|(seq, record)| RawLogEntry {
                seq,
                json: raw_event(seq, &record),
            })
            .collect())
    }
}

/// Checks that `records` continue a chain whose newest event is `head_seq` with hash
/// `head_hash`; returns the new head (seq, hash). For [`EventLog::import_records`].
pub(crate) fn check_import(
    head_seq: u64,
    head_hash: &str,
    records: &[Vec<u8>],
) -> Result<(u64, String), StoreError> {
    let (mut seq, mut hash) = (head_seq, head_hash.to_owned());
    for record in records {
        let next = seq + 1;
        let event = crate::decode_record::<Event>(record)
            .map_err(|_| StoreError::BrokenChain { seq: next })?;
        if event.seq != next || event.prev != hash || !event.hash_is_valid() {
            return Err(StoreError::BrokenChain { seq: next });
        }
        seq = next;
        hash = event.hash;
    }
    Ok((seq, hash))
}

/// Checks a run of log entries incrementally: seq continuity, each event's own hash, and that
/// each `prev` equals the previous event's hash.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev_hash: Option<String>,
    checked: u64,
    broken: Option<(u64, &'static str)>,
}

impl ChainVerifier {
    /// Starts at `first_seq`. `prev_hash` is the hash that event must point back to: the
    /// genesis hash for seq 1, the stored hash of the event before it otherwise (`None` when that
    /// event is itself unreadable, in which case the first `prev` is not checked).
    pub fn new(first_seq: u64, prev_hash: Option<String>) -> Self {
        ChainVerifier {
            expected_seq: first_seq,
            prev_hash,
            checked: 0,
            broken: None,
        }
    }

    /// A verifier for the whole log.
    pub fn from_genesis() -> Self {
        ChainVerifier::new(1, Some(GENESIS_HASH.to_owned()))
    }

    /// Feeds the next entry. Returns false once the chain is broken (further entries are ignored).
    pub fn feed(&mut self, entry: &LogEntry) -> bool {
        if self.broken.is_some() {
            return false;
        }
        if entry.seq != self.expected_seq {
            self.broken = Some((self.expected_seq, "seq_gap"));
            return false;
        }
        self.checked += 1;
        let reason = match &entry.event {
            Err(_) => Some("unreadable"),
            Ok(e) if e.seq != entry.seq => Some("seq_gap"),
            Ok(e) if !e.hash_is_valid() => Some("hash_mismatch"),
            Ok(e) if self.prev_hash.as_ref().is_some_and(|p| *p != e.prev) => Some("prev_mismatch"),
            Ok(_) => None,
        };
        if let Some(r) = reason {
            self.broken = Some((entry.seq, r));
            return false;
        }
        self.prev_hash = entry.event.as_ref().ok().map(|e| e.hash.clone());
        self.expected_seq += 1;
        true
    }

    /// The report, given the log's head seq.
    pub fn report(&self, head_seq: u64) -> VerifyReport {
        VerifyReport {
            valid: self.broken.is_none(),
            checked: self.checked,
            head_seq,
            first_broken_seq: self.broken.map(|(s, _)| s),
            reason: self.broken.map(|(_, r)| r.to_owned()),
            first_seq: 1,
            checkpoint: None,
        }
    }
}

/// What a prune through a seq must do, decided the same way by every backend (under its
/// prune lock, after reading the log's state afresh).
pub(crate) enum PrunePlan {
    /// Nothing: the seq was pruned already.
    Done(PruneResult),
    /// Write this checkpoint (as `bytes`), then remove every event up to its seq.
    Checkpoint {
        /// The last event to remove.
        checkpoint: Checkpoint,
        /// Its stored form.
        bytes: Vec<u8>,
    },
}

/// Plans a prune through `through_seq` (see [`EventLog::prune`]); call it under the backend's
/// prune lock. Refused unless below the head
/// and the chain from the first event kept through `through_seq + 1` verifies, since a prune
/// must never destroy the evidence of a break.
pub(crate) async fn plan_prune(
    log: &dyn EventLog,
    through_seq: u64,
) -> Result<PrunePlan, StoreError> {
    // Fresh: with a shared database another node may have appended or pruned.
    log.refresh().await?;
    let first = log.first_seq();
    if through_seq < first {
        let checkpoint = log
            .checkpoint()
            .ok_or_else(|| StoreError::Backend("pruning through seq 0 removes nothing".into()))?;
        return Ok(PrunePlan::Done(PruneResult {
            pruned: 0,
            first_seq: first,
            checkpoint,
        }));
    }
    if through_seq >= log.head_seq() {
        return Err(StoreError::Backend(format!(
            "seq {through_seq} is not below the newest event"
        )));
    }
    let report = verify_events(log, first, Some(through_seq + 1)).await?;
    if !report.valid {
        return Err(StoreError::BrokenChain {
            seq: report.first_broken_seq.unwrap_or(first),
        });
    }
    let last = log
        .read(through_seq, through_seq, 1)
        .await?
        .pop()
        .ok_or_else(|| StoreError::Backend(format!("no event is stored at seq {through_seq}")))?;
    let checkpoint = Checkpoint {
        seq: through_seq,
        hash: last.event?.hash,
    };
    let bytes = serde_json::to_vec(&checkpoint)
        .map_err(|e| StoreError::Backend(format!("encoding the checkpoint: {e}")))?;
    Ok(PrunePlan::Checkpoint { checkpoint, bytes })
}

/// Verifies the log from `from` to `to` (inclusive; clamped to the head), paging through it.
pub async fn verify_events(
    log: &dyn EventLog,
    from: u64,
    to: Option<u64>,
) -> Result<VerifyReport, StoreError> {
    const PAGE: usize = 4096;
    log.refresh().await?;
    let head = log.head_seq();
    let checkpoint = log.checkpoint();
    let first = log.first_seq();
    let from = from.max(first);
    let to = to.unwrap_or(head).min(head);
    let mut verifier = match &checkpoint {
        _ if from == 1 => ChainVerifier::from_genesis(),
        // The oldest kept event chains to the last pruned one.
        Some(c) if from == first => ChainVerifier::new(from, Some(c.hash.clone())),
        _ => {
            let before = log.read(from - 1, from - 1, 1).await?;
            let prev = before
                .first()
                .and_then(|e| e.event.as_ref().ok())
                .map(|e| e.hash.clone());
            ChainVerifier::new(from, prev)
        }
    };
    let mut next = from;
    let finish = |verifier: &ChainVerifier| VerifyReport {
        first_seq: first,
        checkpoint: checkpoint.clone(),
        ..verifier.report(head)
    };
    while next <= to {
        let page = log.read(next, to, PAGE).await?;
        if page.is_empty() {
            // Positions up to `to` should exist: a hole at the end is a gap.
            verifier.feed(&LogEntry {
                seq: u64::MAX,
                event: Err(RecordError::Empty),
            });
            break;
        }
        for entry in &page {
            if !verifier.feed(entry) {
                return Ok(finish(&verifier));
            }
        }
        next = page.last().map_or(to, |e| e.seq).saturating_add(1);
    }
    Ok(finish(&verifier))
}
