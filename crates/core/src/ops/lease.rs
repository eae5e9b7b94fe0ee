//! Leases: background work that must run once per deployment, not once per node (sweeping the
//! store, log retention), runs on the node holding its lease. A lease is a row in Meta naming
//! its holder and when it lapses; it is taken and renewed by compare-and-swap, so of several
//! nodes exactly one holds it, and when the holder dies another takes it once it lapses.

use crate::infra::records::{Edit, Records};
use portcullis_store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Serialize, Deserialize)]
struct Lease {
    /// The node holding it.
    node: String,
    /// Unix seconds.
    until: i64,
}

impl Record for Lease {
    const VERSION: u8 = 1;
}

const LEASES: Records<Lease> = Records::new(Table::Meta);

fn key(name: &str) -> Vec<u8> {
    format!("lease:{name}").into_bytes()
}

/// How long a lease renewed every `every` is held: three periods (a missed pass or two does not
/// hand it over), at least a minute.
pub fn for_periods(every: std::time::Duration) -> i64 {
    i64::try_from(every.as_secs().saturating_mul(3))
        .unwrap_or(i64::MAX)
        .max(60)
}

/// Takes or renews the lease `name` for `node` until `now + hold_s`: whether `node` holds it
/// now. Refused while another node's lease has not lapsed.
pub async fn hold(
    store: &dyn Store,
    node: &str,
    name: &str,
    now: i64,
    hold_s: i64,
) -> Result<bool, StoreError> {
    LEASES
        .edit_or_default(store, &key(name), |l| {
            if l.node != node && l.until > now {
                return Ok::<_, StoreError>(Edit::Keep(false));
            }
            l.node = node.to_owned();
            l.until = now + hold_s;
            Ok(Edit::Write(true))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::hold;
    use portcullis_store::{SledStore, Store};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_node_holds_a_lease_until_it_lapses() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        // Eight nodes try at once: one holds it.
        let tries: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    hold(store.as_ref(), &format!("n{i}"), "sweep", 100, 60)
                        .await
                        .unwrap()
                        .then_some(i)
                })
            })
            .collect();
        let mut holders = Vec::new();
        for t in tries {
            holders.extend(t.await.unwrap());
        }
        assert_eq!(holders.len(), 1, "{holders:?}");
        let (a, b) = (format!("n{}", holders[0]), "other");
        assert!(
            hold(store.as_ref(), &a, "sweep", 150, 60).await.unwrap(),
            "renewed"
        );
        assert!(!hold(store.as_ref(), b, "sweep", 209, 60).await.unwrap());
        assert!(
            hold(store.as_ref(), b, "other-work", 209, 60)
                .await
                .unwrap(),
            "per name"
        );
        // The holder stopped renewing: once the lease lapses, another node takes it.
        assert!(hold(store.as_ref(), b, "sweep", 210, 60).await.unwrap());
        assert!(!hold(store.as_ref(), &a, "sweep", 211, 60).await.unwrap());
    }
}
