//! The sled backend.

use crate::group_commit::{GroupCommit, Watermarks, WriteGate};
use crate::log::{check_import, raw_event, EventLog, LogEntry, LogPage, RawLogEntry};
use crate::{
    decode_record, encode_record, Applied, Batch, Cas, CommitStats, Store, StoreError, SyncTicket,
    Table,
};
use async_trait::async_trait;
use portcullis_protocol::commands::log::{Checkpoint, PruneResult};
use portcullis_protocol::{Event, GENESIS_HASH};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

const EVENTS_TREE: &str = "events";
/// The log's own metadata (its checkpoint), apart from the events.
const LOG_META_TREE: &str = "log_meta";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// Events removed per sled batch when pruning.
const PRUNE_BATCH: usize = 10_000;
/// sled's data file, inside its directory (sled 0.34).
const SLED_DATA_FILE: &str = "db";

/// How a [`SledStore`] is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled's page cache, bytes.
    pub cache_bytes: u64,
    /// End every group commit with an `fdatasync` of the data file (see the group commit): what
    /// makes an acknowledged write survive a power cut on a drive with a volatile write cache,
    /// not only a process crash. On by default.
    pub fsync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: SledStore::DEFAULT_CACHE_BYTES,
            fsync: true,
        }
    }
}

struct Head {
    seq: u64,
    hash: String,
}

/// [`Store`] and [`EventLog`] on one sled database.
pub struct SledStore {
    db: sled::Db,
    tables: Vec<sled::Tree>,
    events: sled::Tree,
    log_meta: sled::Tree,
    checkpoint: RwLock<Option<Checkpoint>>,
    prune_lock: tokio::sync::Mutex<()>,
    head: Mutex<Head>,
    head_seq: Arc<AtomicU64>,
    durable: watch::Receiver<u64>,
    commit: Mutex<GroupCommit>,
    stats: Arc<CommitStats>,
    gate: Arc<WriteGate>,
}

impl SledStore {
    /// Opens (or creates) the database in `dir` with sled's page cache at
    /// [`SledStore::DEFAULT_CACHE_BYTES`], and starts its group-commit thread.
    ///
    /// Fails when another process holds the directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// sled's page cache unless configured otherwise: 256 MiB (sled's own default is 1 GiB).
    pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

    /// Like [`SledStore::open`], with sled's page cache limited to `cache_bytes`. The cache
    /// holds recently used pages of every table and of the event log; it is most of the
    /// server's resident memory once the log is larger than it.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(
            dir,
            StoreOptions {
                cache_bytes,
                ..StoreOptions::default()
            },
        )
    }

    /// Like [`SledStore::open`], with explicit [`StoreOptions`].
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let db = open_db(&dir.join("db"), options.cache_bytes)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", dir.display())))?;
        let data_file = if options.fsync {
            let path = dir.join("db").join(SLED_DATA_FILE);
            Some(std::fs::File::open(&path).map_err(|e| {
                StoreError::Backend(format!("opening {} to sync it: {e}", path.display()))
            })?)
        } else {
            None
        };
        let tables = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let events = db.open_tree(EVENTS_TREE)?;
        let log_meta = db.open_tree(LOG_META_TREE)?;
        let checkpoint = load_checkpoint(&log_meta)?;
        if let Some(c) = &checkpoint {
            // A prune that a crash interrupted: its checkpoint is durable, so finish it.
            let n = remove_events_through(&events, c.seq, usize::MAX)?;
            if n > 0 {
                tracing::info!(
                    through_seq = c.seq,
                    removed = n,
                    "finished an interrupted prune"
                );
            }
        }
        let mut head = recover_head(&events)?;
        if let (0, Some(c)) = (head.seq, &checkpoint) {
            // Every kept event gone (an import stopped after its checkpoint): chain from it.
            head = Head {
                seq: c.seq,
                hash: c.hash.clone(),
            };
        }
        let head_seq = Arc::new(AtomicU64::new(head.seq));
        // Everything recovered from disk is durable.
        let (durable_tx, durable) = watch::channel(head.seq);
        let gate = Arc::new(WriteGate::default());
        let marks = Watermarks {
            head: Arc::clone(&head_seq),
            durable: durable_tx,
            gate: Arc::clone(&gate),
        };
        let commit = GroupCommit::start(db.clone(), marks, data_file)
            .map_err(|e| StoreError::Backend(format!("starting group commit: {e}")))?;
        let stats = Arc::clone(&commit.stats);
        Ok(SledStore {
            db,
            tables,
            events,
            log_meta,
            checkpoint: RwLock::new(checkpoint),
            prune_lock: tokio::sync::Mutex::new(()),
            head: Mutex::new(head),
            head_seq,
            durable,
            commit: Mutex::new(commit),
            stats,
            gate,
        })
    }

    /// Group-commit counters.
    pub fn commit_stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Raw access to the events tree, for offline tooling and tamper tests.
    pub fn events_tree(&self) -> &sled::Tree {
        &self.events
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        // `tables` was built from `Table::ALL`, in index order.
        &self.tables[table.index()]
    }

    fn lock_commit(&self) -> std::sync::MutexGuard<'_, GroupCommit> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The database size on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// How long `open` waits for a lock that the same process is about to release.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the database. sled releases its file lock only when its background flusher thread
/// has noticed the previous handle is gone, so a reopen in the same process (a restart in tests
/// or tools) retries briefly on a busy lock; another process holding it still fails after that.
pub(crate) fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
        {
            // sled reports a busy lock as an `Other` I/O error carrying this text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn load_checkpoint(meta: &sled::Tree) -> Result<Option<Checkpoint>, StoreError> {
    meta.get(CHECKPOINT_KEY)?
        .map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| StoreError::Backend(format!("the log checkpoint is unreadable: {e}")))
        })
        .transpose()
}

/// Removes up to `max` events with seq ≤ `through` (one sled batch), oldest first; returns how
/// many it removed.
fn remove_events_through(events: &sled::Tree, through: u64, max: usize) -> Result<u64, StoreError> {
    let mut batch = sled::Batch::default();
    let mut n = 0u64;
    for key in events.range(..=through.to_be_bytes()).keys().take(max) {
        batch.remove(key?);
        n += 1;
    }
    if n > 0 {
        events.apply_batch(batch)?;
    }
    Ok(n)
}

fn recover_head(events: &sled::Tree) -> Result<Head, StoreError> {
    let Some((k, v)) = events.last()? else {
        return Ok(Head {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        });
    };
    let seq = seq_of(&k);
    let hash = match decode_record::<Event>(&v) {
        Ok(e) => e.hash,
        Err(e) => {
            // Keep serving; the next event chains to nothing and `log verify` names the seq.
            tracing::error!(seq, error = %e, "the newest event is unreadable; run `portcullis log verify`");
            String::new()
        }
    };
    Ok(Head { seq, hash })
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(b)
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(table).get(key)?.map(|v| v.to_vec()))
    }

    async fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.gate.write(|| self.tree(table).insert(key, value))?;
        Ok(())
    }

    async fn remove(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .gate
            .write(|| self.tree(table).remove(key))?
            .map(|v| v.to_vec()))
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<Cas, StoreError> {
        match self
            .gate
            .write(|| self.tree(table).compare_and_swap(key, expected, new))?
        {
            Ok(()) => Ok(Cas::Swapped),
            Err(e) => Ok(Cas::Conflict {
                current: e.current.map(|v| v.to_vec()),
            }),
        }
    }

    async fn apply(&self, batch: Batch) -> Result<Applied, StoreError> {
        if batch.is_empty() {
            return Ok(Applied::Committed);
        }
        let tables = batch.tables();
        let trees: Vec<&sled::Tree> = tables.iter().map(|t| self.tree(*t)).collect();
        // `tables` holds every table the batch names, so the position is always found.
        let at = |t: Table| tables.iter().position(|x| *x == t).unwrap_or_default();
        // A sled transaction takes sled's process-wide write lock, which every single-key
        // operation takes shared: no other write interleaves with the batch.
        let outcome = self.gate.write(|| {
            trees.as_slice().transaction(|tx| {
                for (i, c) in batch.checks().iter().enumerate() {
                    let current = tx[at(c.table)].get(&c.key)?;
                    if !c.expect.holds(current.as_deref()) {
                        return Err(ConflictableTransactionError::Abort((
                            i,
                            current.map(|v| v.to_vec()),
                        )));
                    }
                }
                for w in batch.writes() {
                    let tree = &tx[at(w.table)];
                    match &w.value {
                        Some(v) => {
                            tree.insert(w.key.as_slice(), v.as_slice())?;
                        }
                        None => {
                            tree.remove(w.key.as_slice())?;
                        }
                    }
                }
                Ok(())
            })
        });
        match outcome {
            Ok(()) => {
                self.sync().await?;
                Ok(Applied::Committed)
            }
            Err(TransactionError::Abort((check, current))) => {
                Ok(Applied::Refused { check, current })
            }
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    async fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.tree(table)
            .scan_prefix(prefix)
            .take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
            .collect()
    }

    async fn scan_range(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Unbounded,
        };
        self.tree(table)
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
            .collect()
    }

    fn sync(&self) -> SyncTicket {
        Box::pin(self.lock_commit().sync_handle())
    }

    fn sync_state(&self) -> Option<SyncTicket> {
        (!self.gate.settled()).then(|| self.sync())
    }

    fn close(&self) {
        self.lock_commit().stop();
    }

    fn commit_stats(&self) -> Option<&CommitStats> {
        Some(&self.stats)
    }
}

#[async_trait]
impl EventLog for SledStore {
    async fn append(&self, mut event: Event) -> Result<Event, StoreError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        event.seq = head.seq + 1;
        event.prev = head.hash.clone();
        event.hash = event.compute_hash();
        self.events
            .insert(event.seq.to_be_bytes(), encode_record(&event))?;
        head.seq = event.seq;
        head.hash = event.hash.clone();
        self.head_seq.store(event.seq, Ordering::Release);
        Ok(event)
    }

    fn head_seq(&self) -> u64 {
        self.head_seq.load(Ordering::Acquire)
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Without cloning the checkpoint: every read asks.
    fn first_seq(&self) -> u64 {
        self.checkpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(1, |c| c.seq + 1)
    }

    async fn prune(&self, through_seq: u64) -> Result<PruneResult, StoreError> {
        let _one_at_a_time = self.prune_lock.lock().await;
        // Checked under the lock, so concurrent prunes never see each other's removal.
        let (checkpoint, bytes) = match crate::log::plan_prune(self, through_seq).await? {
            crate::log::PrunePlan::Done(r) => return Ok(r),
            crate::log::PrunePlan::Checkpoint { checkpoint, bytes } => (checkpoint, bytes),
        };
        self.gate
            .write(|| self.log_meta.insert(CHECKPOINT_KEY, bytes))?;
        // Durable before anything goes, with every event appended so far (the newer ones the
        // log keeps included): a crash from here on finishes the prune at open.
        self.sync().await?;
        *self.checkpoint.write().unwrap_or_else(|p| p.into_inner()) = Some(checkpoint.clone());
        let mut pruned = 0;
        loop {
            let n = self
                .gate
                .write(|| remove_events_through(&self.events, through_seq, PRUNE_BATCH))?;
            pruned += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(PruneResult {
            pruned,
            first_seq: through_seq + 1,
            checkpoint,
        })
    }

    fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    fn watch_durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    async fn read(&self, from: u64, to: u64, max: usize) -> Result<LogPage, StoreError> {
        self.read_range(from, to, max, |seq, v| LogEntry {
            seq,
            event: decode_record::<Event>(v),
        })
    }

    async fn read_records(
        &self,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read_range(from, to, max, |seq, v| (seq, v.to_vec()))
    }

    async fn import_records(
        &self,
        start: Option<&Checkpoint>,
        records: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        {
            let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = start {
                if head.seq != 0 || self.checkpoint().is_some() || !self.events.is_empty() {
                    return Err(StoreError::Backend(
                        "a checkpoint can only start an empty log".into(),
                    ));
                }
                // Checked before anything is written.
                check_import(c.seq, &c.hash, records)?;
                let bytes = serde_json::to_vec(c)
                    .map_err(|e| StoreError::Backend(format!("encoding the checkpoint: {e}")))?;
                self.gate
                    .write(|| self.log_meta.insert(CHECKPOINT_KEY, bytes))?;
                *self.checkpoint.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                head.seq = c.seq;
                head.hash = c.hash.clone();
                self.head_seq.store(c.seq, Ordering::Release);
            }
            let (seq, hash) = check_import(head.seq, &head.hash, records)?;
            let mut batch = sled::Batch::default();
            for (i, record) in (head.seq + 1..).zip(records) {
                batch.insert(&i.to_be_bytes(), record.as_slice());
            }
            self.gate.write(|| self.events.apply_batch(batch))?;
            head.seq = seq;
            head.hash = hash;
            self.head_seq.store(seq, Ordering::Release);
        }
        self.sync().await
    }

    async fn read_raw(
        &self,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<RawLogEntry>, StoreError> {
        self.read_range(from, to, max, |seq, v| RawLogEntry {
            seq,
            json: raw_event(seq, v),
        })
    }
}

impl SledStore {
    fn read_range<T>(
        &self,
        from: u64,
        to: u64,
        max: usize,
        f: impl Fn(u64, &[u8]) -> T,
    ) -> Result<Vec<T>, StoreError> {
        // Events at or below the checkpoint are gone, or about to be.
        let from = from.max(self.first_seq());
        if from > to || max == 0 {
            return Ok(Vec::new());
        }
        self.events
            .range(from.to_be_bytes()..=to.to_be_bytes())
            .take(max)
            .map(|r| {
                let (k, v) = r?;
                Ok(f(seq_of(&k), &v))
            })
            .collect()
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.close();
    }
}
