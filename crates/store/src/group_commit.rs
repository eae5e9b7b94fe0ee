//! One thread that flushes sled for every caller waiting on durability.
//!
//! Callers enqueue a oneshot sender and await it. The thread takes the first waiter, drains every
//! other waiter already queued, records the event log head, flushes once, publishes the head as
//! the durable watermark, then answers the whole batch. Waiters arriving during a flush form the
//! next batch.

use crate::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use tokio::sync::{oneshot, watch};

type Waiter = oneshot::Sender<Result<(), StoreError>>;

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
}

pub(crate) struct GroupCommit {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<thread::JoinHandle<()>>,
    pub(crate) stats: Arc<CommitStats>,
}

impl GroupCommit {
    /// Starts the thread. `head` is the event log head; after each flush its value from before
    /// the flush is published on `durable`.
    pub(crate) fn start(
        db: sled::Db,
        head: Arc<AtomicU64>,
        durable: watch::Sender<u64>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = thread::Builder::new()
            .name("portcullis-group-commit".into())
            .spawn(move || run(db, rx, head, durable, thread_stats))?;
        Ok(GroupCommit {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Enqueues a waiter now and returns the wait: everything written before this call is
    /// durable once it resolves.
    pub(crate) fn sync_handle(
        &self,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self
            .tx
            .as_ref()
            .ok_or(StoreError::Closed)
            .and_then(|q| q.send(tx).map_err(|_| StoreError::Closed));
        async move {
            queued?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Stops accepting waiters, lets the thread answer those queued, and joins it.
    pub(crate) fn stop(&mut self) {
        self.tx = None;
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
    db: sled::Db,
    rx: mpsc::Receiver<Waiter>,
    head: Arc<AtomicU64>,
    durable: watch::Sender<u64>,
    stats: Arc<CommitStats>,
) {
    let mut batch: Vec<Waiter> = Vec::with_capacity(256);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // Every event with seq <= this head was inserted before the flush starts.
        let covered = head.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        let result = db.flush().map(|_| ()).map_err(StoreError::from);
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Err(e) = &result {
            tracing::error!(error = %e, "group commit flush failed");
        } else {
            publish(&durable, covered);
        }
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.waiters.fetch_add(n, Ordering::Relaxed);
        stats.max_batch.fetch_max(n, Ordering::Relaxed);
        stats.flush_us.fetch_add(took, Ordering::Relaxed);
        for w in batch.drain(..) {
            let _ = w.send(result.clone());
        }
    }
    // Last writes made without a waiter still reach the disk on a clean stop.
    if let Err(e) = db.flush() {
        tracing::error!(error = %e, "final flush failed");
    } else {
        publish(&durable, head.load(Ordering::Acquire));
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
