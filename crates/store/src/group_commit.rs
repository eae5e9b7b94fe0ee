//! One thread that flushes sled for every caller waiting on durability.
//!
//! Flushes are numbered. A caller that needs its writes on disk asks for the flush after the one
//! in progress (`started + 1`: a flush already running may have begun before its writes) and
//! waits on one shared `watch` of the last completed flush; there is no channel or allocation
//! per waiter. The thread flushes whenever some caller wants a flush it has not started, so
//! every caller arriving during a flush is served by the next one. When nobody waits but
//! something was written, it flushes after [`LAZY_FLUSH`] so writes nobody waited for (the
//! events of read-only commands) reach the disk and the durable watermark within that time.
//!
//! Besides the event log head (published as the durable watermark), each flush publishes how
//! many table writes it covers, so a reader can tell whether anything it may have observed is
//! still only in memory ([`crate::Store::sync_state`]).

use crate::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread;
use std::time::Duration;
use tokio::sync::watch;

/// Longest time a write nobody waits for stays only in memory while the server runs.
pub const LAZY_FLUSH: Duration = Duration::from_millis(20);

/// Counters of the group-commit thread.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Flushes performed.
    pub flushes: AtomicU64,
    /// Waiters answered (sum of batch sizes).
    pub waiters: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
    /// Total time spent flushing, in microseconds.
    pub flush_us: AtomicU64,
    /// `fdatasync`s of the data file done after a flush (0 when the store runs without).
    pub fsyncs: AtomicU64,
}

/// The last completed flush, as waiters see it.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    /// Number of the last flush that succeeded.
    ok: u64,
    /// Number of the last flush that failed.
    failed: u64,
    /// Set once the thread has made its final flush.
    closed: bool,
}

#[derive(Debug, Default)]
struct Requests {
    /// Number of the last flush started.
    started: u64,
    /// Highest flush number some waiter needs.
    wanted: u64,
    /// Waiters since the last flush started (for the statistics).
    waiting: u64,
    stopping: bool,
}

/// Counts table writes so a flush can say which writes it covers. A writer holds the gate
/// shared while it writes and counts; the flush thread takes it exclusively for an instant to
/// read a count no write is still inside.
#[derive(Debug, Default)]
pub(crate) struct WriteGate {
    lock: RwLock<()>,
    writes: AtomicU64,
    /// Writes covered by the last successful flush.
    durable: AtomicU64,
}

impl WriteGate {
    /// Runs one table write and counts it.
    pub(crate) fn write<T>(&self, f: impl FnOnce() -> T) -> T {
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        let r = f();
        self.writes.fetch_add(1, Ordering::AcqRel);
        r
    }

    /// Whether every write counted so far is durable.
    pub(crate) fn settled(&self) -> bool {
        self.durable.load(Ordering::Acquire) >= self.writes.load(Ordering::Acquire)
    }

    /// Every write counted here has completed.
    fn snapshot(&self) -> u64 {
        let _exclusive = self.lock.write().unwrap_or_else(|p| p.into_inner());
        self.writes.load(Ordering::Acquire)
    }

    fn publish(&self, covered: u64) {
        self.durable.fetch_max(covered, Ordering::AcqRel);
    }
}

struct Shared {
    requests: Mutex<Requests>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Requests> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    flushed: watch::Receiver<Flushed>,
    thread: Option<thread::JoinHandle<()>>,
    pub(crate) stats: Arc<CommitStats>,
}

/// What the thread reads before each flush and publishes after it.
pub(crate) struct Watermarks {
    /// The event log head.
    pub(crate) head: Arc<AtomicU64>,
    /// Receives the head from before each successful flush.
    pub(crate) durable: watch::Sender<u64>,
    /// Table writes.
    pub(crate) gate: Arc<WriteGate>,
}

impl GroupCommit {
    /// Starts the thread.
    /// `data_file`, when given, is sled's data file: each flush ends with an `fdatasync` of it,
    /// which reaches the drive's write cache and the file's size, where sled's own flush
    /// (`sync_file_range` on Linux) does not.
    pub(crate) fn start(
        db: sled::Db,
        marks: Watermarks,
        data_file: Option<std::fs::File>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Requests::default()),
            wake: Condvar::new(),
        });
        let (flushed_tx, flushed) = watch::channel(Flushed::default());
        let stats = Arc::new(CommitStats::default());
        let thread = {
            let shared = Arc::clone(&shared);
            let stats = Arc::clone(&stats);
            thread::Builder::new()
                .name("portcullis-group-commit".into())
                .spawn(move || {
                    run(
                        &db,
                        data_file.as_ref(),
                        &shared,
                        &flushed_tx,
                        &marks,
                        &stats,
                    )
                })?
        };
        Ok(GroupCommit {
            shared,
            flushed,
            thread: Some(thread),
            stats,
        })
    }

    /// Registers a wait now and returns it: everything written before this call is durable once
    /// it resolves.
    pub(crate) fn sync_handle(
        &self,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let target = {
            let mut r = self.shared.lock();
            if r.stopping {
                None
            } else {
                let target = r.started + 1;
                r.wanted = r.wanted.max(target);
                r.waiting += 1;
                Some(target)
            }
        };
        if target.is_some() {
            self.shared.wake.notify_one();
        }
        let mut flushed = self.flushed.clone();
        async move {
            let target = target.ok_or(StoreError::Closed)?;
            let f = *flushed
                .wait_for(|f| f.ok >= target || f.failed >= target || f.closed)
                .await
                .map_err(|_| StoreError::Closed)?;
            if f.ok >= target {
                Ok(())
            } else if f.failed >= target {
                Err(StoreError::Backend("flush failed".into()))
            } else {
                Err(StoreError::Closed)
            }
        }
    }

    /// Stops accepting waiters, lets the thread answer those registered, and joins it.
    pub(crate) fn stop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    db: &sled::Db,
    data_file: Option<&std::fs::File>,
    shared: &Shared,
    flushed: &watch::Sender<Flushed>,
    marks: &Watermarks,
    stats: &CommitStats,
) {
    let mut last_flush = std::time::Instant::now();
    loop {
        let (number, batch, last) = {
            let mut r = shared.lock();
            loop {
                if r.wanted > r.started || r.stopping {
                    break;
                }
                let dirty = marks.head.load(Ordering::Acquire) > *marks.durable.borrow()
                    || !marks.gate.settled();
                let since = last_flush.elapsed();
                if dirty && since >= LAZY_FLUSH {
                    break;
                }
                // Sleep until a waiter, a stop, or the time to flush unwaited writes (when
                // there are none yet, look again after the same interval).
                let nap = if dirty {
                    LAZY_FLUSH - since
                } else {
                    LAZY_FLUSH
                };
                r = shared
                    .wake
                    .wait_timeout(r, nap)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            r.started += 1;
            let batch = std::mem::take(&mut r.waiting);
            (r.started, batch, r.stopping)
        };
        let writes = marks.gate.snapshot();
        // Every event with seq <= this head was inserted before the flush starts.
        let head = marks.head.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        let result = db
            .flush()
            .map(|_| ())
            .map_err(|e| e.to_string())
            .and_then(|()| {
                data_file.map_or(Ok(()), |f| {
                    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    f.sync_data().map_err(|e| format!("fdatasync: {e}"))
                })
            });
        last_flush = std::time::Instant::now();
        let took = u64::try_from((last_flush - started).as_micros()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => {
                marks.gate.publish(writes);
                publish(&marks.durable, head);
                flushed.send_modify(|f| f.ok = number);
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit flush failed");
                flushed.send_modify(|f| f.failed = number);
            }
        }
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.waiters.fetch_add(batch, Ordering::Relaxed);
        stats.max_batch.fetch_max(batch, Ordering::Relaxed);
        stats.flush_us.fetch_add(took, Ordering::Relaxed);
        if last {
            // Waiters that registered before the stop were covered by this flush.
            flushed.send_modify(|f| f.closed = true);
            return;
        }
    }
}

/// Raises the durable watermark to `covered` (never lowers it).
fn publish(durable: &watch::Sender<u64>, covered: u64) {
    durable.send_if_modified(|d| {
        let advance = covered > *d;
        if advance {
            *d = covered;
        }
        advance
    });
}
