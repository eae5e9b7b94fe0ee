//! Periodic clean-up: idle limiter state, and single-use records well past their expiry (so the
//! store does not grow forever). Expired records are refused on use whether or not they have
//! been swept; sweeping only reclaims space.

use crate::App;
use portcullis_store::StoreError;
use std::sync::Arc;
use std::time::Duration;

/// How long expired records are kept before they are swept (for investigations), seconds.
pub const KEEP_EXPIRED_S: i64 = 24 * 3600;

/// The lease under which one node of a deployment sweeps the store.
const LEASE: &str = "housekeeping";

/// One sweep: this node's idle limiter state, then, on the node holding the housekeeping lease
/// (held for three periods of `every`), every owner's expired items. How many records were
/// removed.
pub async fn sweep(app: &App, every: Duration) -> Result<u64, StoreError> {
    let now = app.clock.now().unix_timestamp();
    app.limits.housekeeping(now);
    let hold_s = super::lease::for_periods(every);
    if !super::lease::hold(app.store.as_ref(), &app.node_id, LEASE, now, hold_s).await? {
        return Ok(0);
    }
    let mut removed = 0;
    for owner in super::owners() {
        removed += owner
            .sweep(app.store.as_ref(), now - KEEP_EXPIRED_S)
            .await?;
    }
    Ok(removed)
}

/// Runs [`sweep`] every `every` until the app shuts down.
pub async fn run(app: Arc<App>, every: Duration) {
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match sweep(&app, every).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "housekeeping"),
            Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::Bench;
    use portcullis_store::Table;
    use serde_json::json;
    use std::time::Duration;

    async fn count(b: &Bench, t: Table) -> usize {
        b.app.store.scan_prefix(t, b"", 100).await.unwrap().len()
    }

    #[tokio::test]
    async fn expired_flows_and_their_links_are_swept_a_day_after_expiry() {
        let b = Bench::new(|_| {}).await;
        b.ok("AUTH.SIGNUP", json!({"email": "a@example.org"}), None)
            .await;
        b.ok("MAGIC.SEND", json!({"email": "a@example.org"}), None)
            .await;
        assert_eq!(count(&b, Table::Flows).await, 1);
        b.advance(b.app.config.magic_link_ttl_s + super::KEEP_EXPIRED_S - 1);
        assert_eq!(
            super::sweep(&b.app, Duration::from_secs(60)).await.unwrap(),
            0
        );
        b.advance(2);
        assert_eq!(
            super::sweep(&b.app, Duration::from_secs(60)).await.unwrap(),
            2,
            "the flow and its link"
        );
        assert_eq!(count(&b, Table::Flows).await, 0);
        assert_eq!(count(&b, Table::MagicLinks).await, 0);
    }

    /// Of several nodes, the one holding the lease sweeps; another sweeps once it lapses.
    #[tokio::test]
    async fn only_the_node_holding_the_lease_sweeps_the_store() {
        let b = Bench::new(|_| {}).await;
        b.ok("AUTH.SIGNUP", json!({"email": "a@example.org"}), None)
            .await;
        b.ok("MAGIC.SEND", json!({"email": "a@example.org"}), None)
            .await;
        let now = b.app.clock.now().unix_timestamp();
        let every = Duration::from_secs(60);
        assert!(crate::ops::lease::hold(
            b.app.store.as_ref(),
            "another-node",
            super::LEASE,
            now,
            100_000
        )
        .await
        .unwrap());
        b.advance(b.app.config.magic_link_ttl_s + super::KEEP_EXPIRED_S + 1);
        assert_eq!(
            super::sweep(&b.app, every).await.unwrap(),
            0,
            "not this node's turn"
        );
        assert_eq!(count(&b, Table::Flows).await, 1);
        b.advance(100_000);
        assert_eq!(
            super::sweep(&b.app, every).await.unwrap(),
            2,
            "the lease lapsed"
        );
    }
}
