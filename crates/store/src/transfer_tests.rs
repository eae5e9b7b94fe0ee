//! The primitives that move a deployment between stores (`portcullis admin export` / `import`),
//! on both backends: paging through a table, reading stored event records verbatim, and writing
//! them into another log only when they chain.

use crate::tests::rt;
use crate::{encode_record, EventLog, PgOptions, PgStore, SledStore, Store, StoreError, Table};
use portcullis_protocol::commands::log::Checkpoint;
use portcullis_protocol::Event;
use std::sync::Arc;

trait Both: Store + EventLog {}
impl<T: Store + EventLog> Both for T {}

/// A distinct event per `n`.
fn draft(n: u64) -> Event {
    Event {
        duration_us: n,
        ..crate::tests::draft(&format!("C{n}"))
    }
}

/// A chain of `n` events as a log would store them, after `prev` at `after`.
fn chain(after: u64, prev: &str, n: u64) -> Vec<Vec<u8>> {
    let mut prev = prev.to_owned();
    (after + 1..=after + n)
        .map(|seq| {
            let mut e = draft(seq);
            e.seq = seq;
            e.prev = std::mem::take(&mut prev);
            e.hash = e.compute_hash();
            prev = e.hash.clone();
            encode_record(&e)
        })
        .collect()
}

async fn pg() -> Arc<PgStore> {
    let url = portcullis_testdb::cluster().fresh_database();
    Arc::new(PgStore::connect(&PgOptions::new(url)).await.unwrap())
}

/// Every entry of `table`, by pages of `page`.
async fn paged(store: &dyn Store, table: Table, page: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map(|(k, _): &(Vec<u8>, Vec<u8>)| k.clone());
        let got = store
            .scan_range(table, after.as_deref(), page)
            .await
            .unwrap();
        assert!(got.len() <= page);
        let done = got.len() < page;
        all.extend(got);
        if done {
            return all;
        }
    }
}

async fn pages_through_a_table(store: &dyn Store) {
    // Keys that a prefix scan would split: empty-ish, 0xff runs, shared prefixes.
    let keys: Vec<Vec<u8>> = vec![
        vec![0],
        vec![0, 0],
        b"a".to_vec(),
        b"a/1".to_vec(),
        b"a/2".to_vec(),
        b"b".to_vec(),
        vec![0xff],
        vec![0xff, 0xff],
    ];
    for (i, k) in keys.iter().enumerate() {
        store
            .put(Table::Users, k, vec![u8::try_from(i).unwrap()])
            .await
            .unwrap();
    }
    store.put(Table::Emails, b"other", vec![9]).await.unwrap();
    for page in [1, 3, 100] {
        let all = paged(store, Table::Users, page).await;
        let got: Vec<Vec<u8>> = all.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(got, keys, "page {page}");
    }
    assert!(store
        .scan_range(Table::Users, Some(&[0xff, 0xff]), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .scan_range(Table::Sessions, None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn imports_a_pruned_chain_verbatim(source: &dyn Both, target: &dyn Both) {
    for n in 1..=5 {
        source.append(draft(n)).await.unwrap();
    }
    source.prune(2).await.unwrap();
    let cp = source.checkpoint().unwrap();
    let records: Vec<Vec<u8>> = source
        .read_records(1, 100, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(records.len(), 3, "seq 3..=5 kept");

    // A broken link is refused and writes nothing.
    let mut forged = records.clone();
    forged.swap(0, 1);
    assert!(matches!(
        target.import_records(Some(&cp), &forged).await,
        Err(StoreError::BrokenChain { seq: 3 })
    ));
    target.refresh().await.unwrap();
    assert_eq!((target.head_seq(), target.checkpoint()), (0, None));

    target
        .import_records(Some(&cp), &records[..1])
        .await
        .unwrap();
    // A checkpoint only starts an empty log.
    assert!(target.import_records(Some(&cp), &[]).await.is_err());
    // A record that does not follow the head is refused.
    assert!(matches!(
        target.import_records(None, &records[2..]).await,
        Err(StoreError::BrokenChain { seq: 4 })
    ));
    target.import_records(None, &records[1..]).await.unwrap();
    target.refresh().await.unwrap();
    assert_eq!(target.head_seq(), 5);
    assert_eq!(target.checkpoint(), Some(cp.clone()));
    assert_eq!(target.first_seq(), 3);
    let copied = target.read_records(1, 100, 100).await.unwrap();
    assert_eq!(
        copied,
        (3..=5).zip(records.iter().cloned()).collect::<Vec<_>>()
    );
    let report = crate::verify_events(target, 1, None).await.unwrap();
    assert!(report.valid, "{report:?}");
    // The chain goes on from the same head.
    let next = target.append(draft(6)).await.unwrap();
    let last = source
        .read(5, 5, 1)
        .await
        .unwrap()
        .pop()
        .unwrap()
        .event
        .unwrap();
    assert_eq!((next.seq, next.prev), (6, last.hash));
}

#[test]
fn sled_pages_through_a_table() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = SledStore::open(dir.path()).unwrap();
        pages_through_a_table(&store).await;
    });
}

#[test]
fn postgres_pages_through_a_table() {
    rt().block_on(async { pages_through_a_table(pg().await.as_ref()).await });
}

#[test]
fn sled_to_sled_and_postgres_imports_keep_the_chain() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    rt().block_on(async {
        let source = SledStore::open(dirs[0].path()).unwrap();
        let target = SledStore::open(dirs[1].path()).unwrap();
        imports_a_pruned_chain_verbatim(&source, &target).await;
        let pg_source = pg().await;
        let pg_target = pg().await;
        imports_a_pruned_chain_verbatim(pg_source.as_ref(), pg_target.as_ref()).await;
    });
}

/// A sled log whose import stopped after its checkpoint reopens chained to it.
#[test]
fn a_sled_log_holding_only_a_checkpoint_reopens_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Checkpoint {
        seq: 7,
        hash: "ab".repeat(32),
    };
    rt().block_on(async {
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.import_records(Some(&cp), &[]).await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.head_seq(), 7);
        let records = chain(7, &cp.hash, 2);
        store.import_records(None, &records).await.unwrap();
        assert_eq!(store.head_seq(), 9);
    });
}

/// A PostgreSQL import that failed is undone: every table and the whole log emptied, and the
/// database takes an import again.
#[test]
fn a_failed_postgres_import_is_cleared() {
    rt().block_on(async {
        let store = pg().await;
        store.put(Table::Users, b"u", vec![1]).await.unwrap();
        store.put(Table::Meta, b"m", vec![2]).await.unwrap();
        let cp = Checkpoint {
            seq: 3,
            hash: "cd".repeat(32),
        };
        store
            .import_records(Some(&cp), &chain(3, &cp.hash, 2))
            .await
            .unwrap();
        assert_eq!(
            crate::transfer::first_content(store.as_ref())
                .await
                .unwrap(),
            Some("meta")
        );
        store.clear_after_failed_import().await.unwrap();
        assert_eq!(
            crate::transfer::first_content(store.as_ref())
                .await
                .unwrap(),
            None
        );
        assert_eq!((store.head_seq(), store.checkpoint()), (0, None));
        store
            .import_records(Some(&cp), &chain(3, &cp.hash, 1))
            .await
            .unwrap();
        assert_eq!(store.head_seq(), 4);
    });
}
