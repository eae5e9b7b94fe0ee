//! Automatic log retention (opt-in, `log_retain_events` with `log_archive_dir`): the server
//! keeps about the newest `log_retain_events` events. When more are kept (by a tenth, so a pass
//! does not run for every few events), the oldest are written to an archive file, which is made
//! durable first, and then removed through the same store primitive as `LOG.PRUNE` (which
//! verifies their chain and leaves a checkpoint). Each outcome is an internal `LOG.RETAIN`
//! event.

use crate::App;
use portcullis_protocol::commands::log::PruneResult;
use portcullis_store::StoreError;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Events read per page while archiving.
const PAGE: usize = 4096;

/// Why a pass did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Reading the log or pruning failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the archive failed.
    #[error("writing {path}: {source}")]
    Archive {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The lease under which one node of a deployment runs retention.
const LEASE: &str = "retention";

/// Runs a pass at start and then every `every`, until shutdown, on the node holding the
/// retention lease. Does nothing when retention is off.
pub async fn run(app: Arc<App>, every: Duration) {
    if app.config.log_retain_events == 0 {
        return;
    }
    // One node of a deployment prunes the shared log: the one holding the lease.
    let hold_s = super::lease::for_periods(every);
    loop {
        let now = app.clock.now().unix_timestamp();
        match super::lease::hold(app.store.as_ref(), &app.node_id, LEASE, now, hold_s).await {
            Ok(false) => {}
            Ok(true) => match pass(&app).await {
                Ok(Some(r)) => tracing::info!(
                    pruned = r.pruned,
                    first_seq = r.first_seq,
                    "log retention archived and removed old events"
                ),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "log retention failed"),
            },
            Err(e) => tracing::warn!(error = %e, "log retention could not take its lease"),
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The archive of the events `first..=through`: `events-<first>-<through>.ndjson`, seqs padded
/// to 20 digits so the files sort in log order.
pub fn archive_path(dir: &Path, first: u64, through: u64) -> PathBuf {
    dir.join(format!("events-{first:020}-{through:020}.ndjson"))
}

/// One pass: when more than `log_retain_events` (plus a tenth) events are kept, archives the
/// oldest durable ones beyond `log_retain_events` and prunes them. `None` when there was
/// nothing to do.
pub async fn pass(app: &App) -> Result<Option<PruneResult>, RetentionError> {
    let retain = app.config.log_retain_events;
    let Some(dir) = app.config.log_archive_dir.as_deref() else {
        return Ok(None);
    };
    if retain == 0 {
        return Ok(None);
    }
    let log = app.log.as_ref();
    // Other nodes append to a shared log: plan from its current head and checkpoint.
    log.refresh().await?;
    let (first, head) = (log.first_seq(), log.head_seq());
    let kept = (head + 1).saturating_sub(first);
    if kept <= retain + retain / 10 {
        return Ok(None);
    }
    // Only durable events: an archived event must never be taken back by a crash.
    let through = (head - retain).min(log.durable_seq());
    if through < first {
        return Ok(None);
    }
    let path = archive_path(dir, first, through);
    remove_unfinished(dir, first);
    write_archive(app, &path, first, through).await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match log.prune(through).await {
        Ok(r) => {
            app.events
                .log_pruned(r.pruned, through, &r.checkpoint.hash, &name);
            Ok(Some(r))
        }
        Err(e) => {
            // Nothing was removed: the archive would duplicate what the log still holds.
            let _ = std::fs::remove_file(&path);
            if let StoreError::BrokenChain { seq } = e {
                app.events.log_retention_refused(through, seq);
            }
            Err(e.into())
        }
    }
}

/// Removes what an interrupted pass left for the same first seq (an archive whose prune never
/// happened, or a partly written file), so the archives never overlap.
fn remove_unfinished(dir: &Path, first: u64) {
    let prefix = format!("events-{first:020}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        {
            tracing::info!(path = %path.display(), "removing an archive of an unfinished retention pass");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Writes the events `first..=through`, one stored JSON event per line (as `log tail --json`
/// prints them), to a temporary file that is synced and then renamed to `path`.
async fn write_archive(
    app: &App,
    path: &Path,
    first: u64,
    through: u64,
) -> Result<(), RetentionError> {
    let io = |source| RetentionError::Archive {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let part = path.with_extension("ndjson.part");
    let file = std::fs::File::create(&part).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    let mut next = first;
    while next <= through {
        let page = app.log.read_raw(next, through, PAGE).await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        for entry in page {
            let json = entry.json.map_err(StoreError::from)?;
            out.write_all(&json).map_err(io)?;
            out.write_all(b"\n").map_err(io)?;
        }
        next = last + 1;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&part, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{unsealed_event, Bench};
    use portcullis_protocol::{Actor, Event};
    use portcullis_store::{ChainVerifier, LogEntry};

    /// Past the limit, the oldest durable events are archived (a verifiable file ending at the
    /// checkpoint) and removed; below it, nothing happens; the pass is recorded in the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_events_are_archived_then_removed() {
        let archives = tempfile::tempdir().unwrap();
        let dir = archives.path().to_owned();
        let b = Bench::new(move |c| {
            c.log_retain_events = 100;
            c.log_archive_dir = Some(dir);
        })
        .await;
        for _ in 0..105 {
            b.app.log.append(unsealed_event()).await.unwrap();
        }
        b.app.store.sync().await.unwrap();
        assert!(pass(&b.app).await.unwrap().is_none(), "within the slack");

        for _ in 0..245 {
            b.app.log.append(unsealed_event()).await.unwrap();
        }
        b.app.store.sync().await.unwrap();
        // Left by a pass that stopped before its prune: replaced, never beside the new one.
        let stale = archive_path(archives.path(), 1, 7);
        std::fs::write(&stale, "partial").unwrap();
        std::fs::write(stale.with_extension("ndjson.part"), "partial").unwrap();
        let r = pass(&b.app).await.unwrap().expect("a prune");
        assert_eq!(std::fs::read_dir(archives.path()).unwrap().count(), 1);
        assert_eq!((r.pruned, r.first_seq, r.checkpoint.seq), (250, 251, 250));
        assert_eq!(b.app.log.first_seq(), 251);

        let path = archive_path(archives.path(), 1, 250);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut v = ChainVerifier::from_genesis();
        let mut last = None;
        for line in text.lines() {
            let e: Event = serde_json::from_str(line).unwrap();
            last = Some(e.hash.clone());
            assert!(v.feed(&LogEntry {
                seq: e.seq,
                event: Ok(e)
            }));
        }
        assert_eq!(v.report(250).checked, 250);
        assert_eq!(last.as_deref(), Some(r.checkpoint.hash.as_str()));
        assert!(!path.with_extension("ndjson.part").exists());

        // The pass is in the log, as an internal event.
        let mut found = None;
        for _ in 0..100 {
            let page = b.app.log.read(251, u64::MAX, 1000).await.unwrap();
            found = page
                .into_iter()
                .filter_map(|e| e.event.ok())
                .find(|e| e.command.as_deref() == Some("LOG.RETAIN"));
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let e = found.expect("a LOG.RETAIN event");
        assert_eq!((e.outcome.as_str(), e.actor), ("ok", Actor::System));
        assert_eq!(e.summary["event"], "log.pruned");
        assert_eq!(e.summary["pruned"], 250);
        assert_eq!(
            e.summary["archive"],
            "events-00000000000000000001-00000000000000000250.ndjson"
        );
        assert!(pass(&b.app).await.unwrap().is_none());
    }

    #[test]
    fn retention_needs_an_archive_and_a_sensible_size() {
        let mut c = crate::base::config::Config {
            log_retain_events: 1000,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("log_archive_dir"));
        c.log_archive_dir = Some("/tmp/archive".into());
        assert!(c.validate().is_ok());
        c.log_retain_events = 99;
        assert!(c.validate().is_err());
    }
}
