//! Model-based and concurrency tests of the sled backend (the PostgreSQL backend runs the same
//! model in `pg_tests`).

use crate::{
    verify_events, Applied, Batch, Cas, Consumed, EventLog, Expect, SledStore, Store, Table,
};
use portcullis_protocol::{Actor, Event};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An event as the dispatcher hands it to `append` (numbered and chained there).
pub(crate) fn draft(command: &str) -> Event {
    Event {
        seq: 0,
        time: "2026-11-26T00:00:00.000Z".into(),
        command: Some(command.into()),
        outcome: "ok".into(),
        actor: Actor::Anonymous,
        subject: None,
        session: None,
        client: None,
        transport: "internal".into(),
        duration_us: 0,
        summary: Default::default(),
        prev: String::new(),
        hash: String::new(),
    }
}

/// A runtime for a test.
pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8, u8),
    Remove(usize, u8),
    Cas(usize, u8, Option<u8>, Option<u8>),
    Consume(usize, u8, u8),
    Scan(usize),
    /// A batch: checks `(table, key, expectation)` and writes `(table, key, value or removal)`.
    Apply(Vec<(usize, u8, ExpectOp)>, Vec<(usize, u8, Option<u8>)>),
    Append(u8),
    Restart,
}

#[derive(Debug, Clone)]
enum ExpectOp {
    Absent,
    Present,
    Value(u8),
}

impl ExpectOp {
    fn to_expect(&self) -> Expect {
        match self {
            ExpectOp::Absent => Expect::Absent,
            ExpectOp::Present => Expect::Present,
            ExpectOp::Value(v) => Expect::Value(val(*v)),
        }
    }

    fn holds(&self, current: Option<&Vec<u8>>) -> bool {
        match self {
            ExpectOp::Absent => current.is_none(),
            ExpectOp::Present => current.is_some(),
            ExpectOp::Value(v) => current == Some(&val(*v)),
        }
    }
}

fn batch_op() -> impl Strategy<Value = Op> {
    // Few tables and keys, so checks often hold and writes often collide.
    let t = 0usize..3;
    let k = 0u8..4;
    let expect = prop_oneof![
        Just(ExpectOp::Absent),
        Just(ExpectOp::Present),
        (0u8..4).prop_map(ExpectOp::Value)
    ];
    (
        proptest::collection::vec((t.clone(), k.clone(), expect), 0..3),
        proptest::collection::vec((t, k, proptest::option::of(0u8..4)), 0..4),
    )
        .prop_map(|(c, w)| Op::Apply(c, w))
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..Table::ALL.len();
    let k = 0u8..6;
    let v = 0u8..4;
    prop_oneof![
        4 => (t.clone(), k.clone(), v.clone()).prop_map(|(t, k, v)| Op::Put(t, k, v)),
        2 => (t.clone(), k.clone()).prop_map(|(t, k)| Op::Remove(t, k)),
        4 => (t.clone(), k.clone(), proptest::option::of(v.clone()), proptest::option::of(v.clone()))
            .prop_map(|(t, k, e, n)| Op::Cas(t, k, e, n)),
        3 => (t.clone(), k, v).prop_map(|(t, k, v)| Op::Consume(t, k, v)),
        1 => t.prop_map(Op::Scan),
        4 => batch_op(),
        3 => (0u8..3).prop_map(Op::Append),
        1 => Just(Op::Restart),
    ]
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k]
}

fn val(v: u8) -> Vec<u8> {
    vec![b'v', v]
}

/// The model of the tables: `(table index, key)` → value.
type Model = BTreeMap<(usize, Vec<u8>), Vec<u8>>;

/// Applies one table operation to `store` and to the model and checks the answer; gives back
/// the operations that are not about tables (`Append`, `Restart`) for the backend to handle.
async fn table_op(
    store: &dyn Store,
    model: &mut Model,
    op: Op,
) -> Result<Option<Op>, TestCaseError> {
    match op {
        Op::Put(t, k, v) => {
            store.put(Table::ALL[t], &key(k), val(v)).await.unwrap();
            model.insert((t, key(k)), val(v));
        }
        Op::Remove(t, k) => {
            let got = store.remove(Table::ALL[t], &key(k)).await.unwrap();
            prop_assert_eq!(got, model.remove(&(t, key(k))));
        }
        Op::Cas(t, k, e, n) => {
            let exp = e.map(val);
            let got = store
                .compare_and_swap(Table::ALL[t], &key(k), exp.as_deref(), n.map(val))
                .await
                .unwrap();
            let cur = model.get(&(t, key(k))).cloned();
            if cur == exp {
                prop_assert_eq!(got, Cas::Swapped);
                match n {
                    Some(n) => {
                        model.insert((t, key(k)), val(n));
                    }
                    None => {
                        model.remove(&(t, key(k)));
                    }
                }
            } else {
                prop_assert_eq!(got, Cas::Conflict { current: cur });
            }
        }
        Op::Consume(t, k, v) => {
            let got = store
                .consume(Table::ALL[t], &key(k), &val(v))
                .await
                .unwrap();
            if model.get(&(t, key(k))) == Some(&val(v)) {
                prop_assert_eq!(got, Consumed::Won);
                model.remove(&(t, key(k)));
            } else {
                prop_assert_eq!(got, Consumed::Lost);
            }
        }
        Op::Scan(t) => {
            let got = store.scan_prefix(Table::ALL[t], b"k", 100).await.unwrap();
            let want: Vec<(Vec<u8>, Vec<u8>)> = model
                .iter()
                .filter(|((mt, _), _)| *mt == t)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(got, want);
        }
        Op::Apply(checks, writes) => {
            let mut batch = Batch::new();
            for (t, k, e) in &checks {
                batch = batch.check(Table::ALL[*t], key(*k), e.to_expect());
            }
            for (t, k, v) in &writes {
                batch = match v {
                    Some(v) => batch.put(Table::ALL[*t], key(*k), val(*v)),
                    None => batch.remove(Table::ALL[*t], key(*k)),
                };
            }
            let got = store.apply(batch).await.unwrap();
            let failed = checks
                .iter()
                .position(|(t, k, e)| !e.holds(model.get(&(*t, key(*k)))));
            match failed {
                None => {
                    prop_assert_eq!(got, Applied::Committed);
                    for (t, k, v) in writes {
                        match v {
                            Some(v) => {
                                model.insert((t, key(k)), val(v));
                            }
                            None => {
                                model.remove(&(t, key(k)));
                            }
                        }
                    }
                }
                Some(i) => {
                    let (t, k, _) = &checks[i];
                    prop_assert_eq!(
                        got,
                        Applied::Refused {
                            check: i,
                            current: model.get(&(*t, key(*k))).cloned(),
                        }
                    );
                }
            }
        }
        other => return Ok(Some(other)),
    }
    Ok(None)
}

/// Every key of the model reads back from `store` as the model says.
async fn reads_agree(store: &dyn Store, model: &Model) -> Result<(), TestCaseError> {
    for ((t, k), v) in model {
        let got = store.get(Table::ALL[*t], k).await.unwrap();
        prop_assert_eq!(got.as_ref(), Some(v));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random operations, restarts included, against the store and a BTreeMap model: every
    /// answer and every read agrees, and the event log keeps a valid chain across restarts.
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        let mut model = Model::new();
        let mut events: Vec<String> = Vec::new();
        rt.block_on(async {
            for op in ops {
                match table_op(&store, &mut model, op).await? {
                    None => {}
                    Some(Op::Append(c)) => {
                        let e = store.append(draft(&format!("C{c}"))).await.unwrap();
                        prop_assert_eq!(e.seq, u64::try_from(events.len()).unwrap() + 1);
                        events.push(e.hash);
                    }
                    Some(Op::Restart) => {
                        drop(store);
                        store = SledStore::open(dir.path()).unwrap();
                    }
                    Some(other) => unreachable!("{other:?}"),
                }
                reads_agree(&store, &model).await?;
            }
            let head = u64::try_from(events.len()).unwrap();
            prop_assert_eq!(store.head_seq(), head);
            let report = verify_events(&store, 1, None).await.unwrap();
            prop_assert!(report.valid, "{report:?}");
            prop_assert_eq!(report.checked, head);
            let page = store.read(1, head, 1000).await.unwrap();
            let hashes: Vec<String> = page.into_iter().map(|e| e.event.unwrap().hash).collect();
            prop_assert_eq!(hashes, events);
            Ok(())
        })?;
    }
}

/// 64 tasks race to consume `k` (put first): how many won.
async fn consume_race(store: Arc<dyn Store>, k: Vec<u8>) -> usize {
    store
        .put(Table::Challenges, &k, b"live".to_vec())
        .await
        .unwrap();
    store.sync().await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = Arc::clone(&store);
            let b = Arc::clone(&barrier);
            let k = k.clone();
            tokio::spawn(async move {
                b.wait().await;
                s.consume(Table::Challenges, &k, b"live").await.unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap() == Consumed::Won {
            winners += 1;
        }
    }
    winners
}

/// 32 tasks race to move a token from `a<round>` to their own key `b<round><i>` with a batch:
/// how many committed.
async fn batch_race(store: Arc<dyn Store>, round: u8) -> usize {
    let a = [b'a', round];
    store
        .put(Table::RefreshTokens, &a, b"token".to_vec())
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32u8)
        .map(|i| {
            let s = Arc::clone(&store);
            let b = Arc::clone(&barrier);
            tokio::spawn(async move {
                b.wait().await;
                let batch = Batch::new()
                    .swap(Table::RefreshTokens, a, Some(b"token"), None)
                    .put(Table::Sessions, [b'b', round, i], b"token".to_vec());
                s.apply(batch).await.unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap().committed() {
            winners += 1;
        }
    }
    winners
}

/// After [`batch_race`]: the token left `a<round>` and is under exactly one `b<round><i>`.
async fn token_moved_once(store: &dyn Store, round: u8) {
    assert_eq!(
        store
            .get(Table::RefreshTokens, &[b'a', round])
            .await
            .unwrap(),
        None
    );
    let moved = store
        .scan_prefix(Table::Sessions, &[b'b', round], 100)
        .await
        .unwrap();
    assert_eq!(moved.len(), 1, "round {round}: {moved:?}");
}

/// 64 tasks race to consume one item: exactly one wins, and the item is gone after a restart.
#[test]
fn sixty_four_racers_one_winner() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5u8 {
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let k = [b'r', round];
        rt.block_on(async {
            let winners = consume_race(Arc::clone(&store) as Arc<dyn Store>, k.to_vec()).await;
            assert_eq!(winners, 1, "round {round}");
        });
        drop(store);
        let reopened = SledStore::open(dir.path()).unwrap();
        rt.block_on(async {
            assert_eq!(reopened.get(Table::Challenges, &k).await.unwrap(), None);
        });
    }
}

/// The group commit batches: many concurrent syncs need far fewer flushes than callers, and the
/// durable watermark reaches the head.
#[test]
fn group_commit_batches_waiters_and_publishes_the_watermark() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    rt.block_on(async {
        let tasks: Vec<_> = (0..256u32)
            .map(|i| {
                let s = Arc::clone(&store);
                tokio::spawn(async move {
                    s.put(Table::Meta, &i.to_be_bytes(), vec![1]).await.unwrap();
                    s.append(draft("X")).await.unwrap();
                    s.sync().await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let stats = store.commit_stats();
    let flushes = stats.flushes.load(std::sync::atomic::Ordering::Relaxed);
    let waiters = stats.waiters.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(waiters, 256);
    assert!(flushes < 256, "{flushes} flushes for 256 waiters");
    assert_eq!(store.durable_seq(), 256);
    assert_eq!(store.head_seq(), 256);
}

/// Appends ten events, `C0` to `C9` (seqs 1 to 10).
async fn append_ten(store: &SledStore) {
    for i in 0..10 {
        store.append(draft(&format!("C{i}"))).await.unwrap();
    }
}

/// Tampers with the event at `seq` of [`append_ten`]: its command becomes `C9`.
fn rename_command(store: &SledStore, seq: u64) {
    let k = seq.to_be_bytes();
    let raw = store.events_tree().get(k).unwrap().unwrap().to_vec();
    let from = format!("\"C{}\"", seq - 1);
    let edited = String::from_utf8(raw).unwrap().replace(&from, "\"C9\"");
    store.events_tree().insert(k, edited.as_bytes()).unwrap();
}

/// Editing a stored event is detected at that seq.
#[test]
fn tampering_is_detected_at_the_edited_seq() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    rt.block_on(async {
        append_ten(&store).await;
        assert!(verify_events(&store, 1, None).await.unwrap().valid);
        rename_command(&store, 4);
        let r = verify_events(&store, 1, None).await.unwrap();
        assert!(!r.valid);
        assert_eq!(r.first_broken_seq, Some(4));
        assert_eq!(r.reason.as_deref(), Some("hash_mismatch"));
        // Verifying from after the edit still sees the next event point back to the edited one.
        let r = verify_events(&store, 5, None).await.unwrap();
        assert!(r.valid, "{r:?}");
        store.events_tree().remove(7u64.to_be_bytes()).unwrap();
        let r = verify_events(&store, 5, None).await.unwrap();
        assert_eq!(
            (r.first_broken_seq, r.reason.as_deref()),
            (Some(7), Some("seq_gap"))
        );
    });
}

/// A read waits only while some table write is not yet durable; an event nobody waits for still
/// reaches the disk and the durable watermark by itself.
#[test]
fn reads_wait_only_for_unsettled_writes_and_unwaited_events_become_durable() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    rt.block_on(async {
        store.sync().await.unwrap();
        assert!(store.sync_state().is_none(), "nothing written yet");
        store.put(Table::Users, b"u", vec![1]).await.unwrap();
        let ticket = store
            .sync_state()
            .expect("a fresh write is not durable yet");
        ticket.await.unwrap();
        assert!(store.sync_state().is_none(), "the write is durable now");
        // A compare-and-swap and a removal count as writes too.
        store
            .compare_and_swap(Table::Users, b"u", Some(&[1]), Some(vec![2]))
            .await
            .unwrap();
        assert!(store.sync_state().is_some());
        store.sync().await.unwrap();
        store.remove(Table::Users, b"u").await.unwrap();
        assert!(store.sync_state().is_some());
        store.sync().await.unwrap();

        // An append alone leaves table state settled, and the lazy flush makes it durable.
        let e = store.append(draft("READ")).await.unwrap();
        assert!(store.sync_state().is_none());
        let mut durable = store.watch_durable();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            durable.wait_for(|d| *d >= e.seq),
        )
        .await
        .expect("an unwaited event never became durable")
        .unwrap();
    });
}

/// After `close`, a sync is refused instead of hanging, and one registered before is answered.
#[test]
fn close_answers_registered_waiters_and_refuses_later_ones() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    rt.block_on(async {
        store.put(Table::Meta, b"k", vec![1]).await.unwrap();
        let before = store.sync();
        store.close();
        before.await.unwrap();
        assert!(matches!(store.sync().await, Err(crate::StoreError::Closed)));
    });
}

/// Pruning removes the oldest events behind a durable checkpoint the kept log chains to; it is
/// idempotent, never reaches the newest durable event, and survives a restart.
#[test]
fn pruning_keeps_a_verifiable_chain_from_its_checkpoint() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let store = SledStore::open(dir.path()).unwrap();
        let mut hashes = vec![String::new()];
        for i in 0..10 {
            hashes.push(store.append(draft(&format!("C{i}"))).await.unwrap().hash);
        }
        store.sync().await.unwrap();
        assert_eq!((store.first_seq(), store.checkpoint()), (1, None));

        let r = store.prune(4).await.unwrap();
        assert_eq!((r.pruned, r.first_seq), (4, 5));
        assert_eq!((r.checkpoint.seq, &r.checkpoint.hash), (4, &hashes[4]));
        assert_eq!(store.first_seq(), 5);
        assert_eq!(store.events_tree().len(), 6);
        let page = store.read(1, 10, 100).await.unwrap();
        assert_eq!(page.first().map(|e| e.seq), Some(5));
        assert_eq!(page.len(), 6);
        let v = verify_events(&store, 1, None).await.unwrap();
        assert!(v.valid, "{v:?}");
        assert_eq!((v.checked, v.first_seq), (6, 5));
        assert_eq!(v.checkpoint, Some(r.checkpoint.clone()));

        // Again through the same seq or an older one: nothing changes.
        let again = store.prune(4).await.unwrap();
        assert_eq!((again.pruned, again.first_seq), (0, 5));
        assert_eq!(again.checkpoint, r.checkpoint);
        assert_eq!(store.prune(2).await.unwrap().pruned, 0);
        // Never the newest event, nor beyond it.
        assert!(store.prune(10).await.is_err());
        assert!(store.prune(11).await.is_err());
        assert_eq!(store.head_seq(), 10);

        // The log goes on from the head, and the checkpoint outlives a restart.
        store.append(draft("C10")).await.unwrap();
        store.sync().await.unwrap();
        store.close();
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!((store.first_seq(), store.head_seq()), (5, 11));
        let v = verify_events(&store, 1, None).await.unwrap();
        assert!(v.valid && v.checked == 7, "{v:?}");

        // Through events not yet flushed: the prune makes them and the kept ones durable first.
        store.append(draft("C11")).await.unwrap();
        store.append(draft("C12")).await.unwrap();
        assert_eq!(store.prune(12).await.unwrap().pruned, 8);
        assert_eq!(store.durable_seq(), 13);
        let v = verify_events(&store, 1, None).await.unwrap();
        assert!(v.valid && v.checked == 1 && v.first_seq == 13, "{v:?}");

        // The first kept event must chain to the checkpoint: a forged checkpoint is a break.
        let forged = serde_json::json!({"seq": 12, "hash": "0".repeat(64)});
        store.close();
        drop(store);
        {
            // The store just closed: wait for its lock like a reopen does.
            let db = crate::sled_store::open_db(&dir.path().join("db"), 1 << 20).unwrap();
            db.open_tree("log_meta")
                .unwrap()
                .insert("checkpoint", serde_json::to_vec(&forged).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let v = verify_events(&store, 1, None).await.unwrap();
        assert_eq!(
            (v.first_broken_seq, v.reason.as_deref()),
            (Some(13), Some("prev_mismatch"))
        );
        store.close();
    });
}

/// A prune a crash interrupted after its checkpoint became durable is finished at the next open.
#[test]
fn an_interrupted_prune_is_finished_at_open() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let hash6 = rt.block_on(async {
        let store = SledStore::open(dir.path()).unwrap();
        let mut hash6 = String::new();
        for i in 1..=10u64 {
            let e = store.append(draft(&format!("C{i}"))).await.unwrap();
            if i == 6 {
                hash6 = e.hash;
            }
        }
        store.sync().await.unwrap();
        store.close();
        hash6
    });
    {
        // The state a crash leaves: the checkpoint written, no event removed yet.
        // The store just closed: wait for its lock like a reopen does.
        let db = crate::sled_store::open_db(&dir.path().join("db"), 1 << 20).unwrap();
        let checkpoint = serde_json::json!({"seq": 6, "hash": hash6});
        db.open_tree("log_meta")
            .unwrap()
            .insert("checkpoint", serde_json::to_vec(&checkpoint).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.events_tree().len(), 4);
    assert_eq!(store.first_seq(), 7);
    rt.block_on(async {
        let v = verify_events(&store, 1, None).await.unwrap();
        assert!(v.valid && v.checked == 4, "{v:?}");
    });
    store.close();
}

/// A prune whose events (or their link to the first kept one) do not verify removes nothing.
#[test]
fn a_broken_chain_is_not_pruned() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    rt.block_on(async {
        append_ten(&store).await;
        store.sync().await.unwrap();
        rename_command(&store, 6);
        for through in [5, 8] {
            let e = store.prune(through).await.unwrap_err();
            assert!(
                matches!(e, crate::StoreError::BrokenChain { seq: 6 }),
                "{e:?}"
            );
        }
        assert_eq!((store.first_seq(), store.events_tree().len()), (1, 10));
        assert_eq!(store.prune(4).await.unwrap().first_seq, 5);
    });
    store.close();
}

/// With `fsync` (the default) every group commit ends with an `fdatasync` of the data file;
/// without it, none.
#[test]
fn group_commits_fsync_the_data_file_unless_told_not_to() {
    use crate::StoreOptions;
    use std::sync::atomic::Ordering;
    let rt = rt();
    for fsync in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            fsync,
            ..StoreOptions::default()
        };
        let store = SledStore::open_with(dir.path(), options).unwrap();
        rt.block_on(async {
            for i in 0..3u8 {
                store.put(Table::Meta, &[i], vec![i]).await.unwrap();
                store.sync().await.unwrap();
            }
        });
        // After close the commit thread is gone, so the two counters are settled.
        store.close();
        let fsyncs = store.commit_stats().fsyncs.load(Ordering::Relaxed);
        let flushes = store.commit_stats().flushes.load(Ordering::Relaxed);
        assert!(flushes >= 3, "{flushes}");
        assert_eq!(fsyncs, if fsync { flushes } else { 0 }, "fsync = {fsync}");
    }
}

/// 32 tasks race to move one token from `a` to their own key with a batch (check `a`, remove it,
/// write `b<i>`): exactly one commits, and after a restart exactly one key holds the token,
/// never both or neither.
#[test]
fn racing_batches_have_one_winner_and_never_half_apply() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..4u8 {
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        rt.block_on(async {
            let winners = batch_race(Arc::clone(&store) as Arc<dyn Store>, round).await;
            assert_eq!(winners, 1, "round {round}");
        });
        drop(store);
        let reopened = SledStore::open(dir.path()).unwrap();
        rt.block_on(token_moved_once(&reopened, round));
    }
}

/// A refused batch writes nothing, even the writes listed before the failing check's table.
#[test]
fn a_refused_batch_writes_nothing() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    rt.block_on(async {
        store.put(Table::Users, b"u", b"v1".to_vec()).await.unwrap();
        let batch = Batch::new()
            .put(Table::Emails, b"e", b"u".to_vec())
            .put(Table::Users, b"u", b"v2".to_vec())
            .check(Table::Users, b"u".to_vec(), Expect::Value(b"v0".to_vec()));
        assert_eq!(
            store.apply(batch).await.unwrap(),
            Applied::Refused {
                check: 0,
                current: Some(b"v1".to_vec())
            }
        );
        assert_eq!(store.get(Table::Emails, b"e").await.unwrap(), None);
        assert_eq!(
            store.get(Table::Users, b"u").await.unwrap(),
            Some(b"v1".to_vec())
        );
    });
}

/// The same model and races against PostgreSQL: a throwaway cluster on loopback, a fresh
/// database per test.
mod pg {
    use super::*;
    use crate::{PgOptions, PgStore, PgTls};

    async fn connect(url: &str) -> PgStore {
        PgStore::connect(&PgOptions::new(url)).await.unwrap()
    }

    /// Batches of different keys do not conflict in meaning, but SERIALIZABLE's predicate locks
    /// (per index page) make many of them fail to serialize on a near-empty table: every one
    /// must still commit (retried with backoff), none answer busy.
    #[test]
    fn concurrent_batches_on_different_keys_all_commit() {
        let rt = rt();
        let url = portcullis_testdb::cluster().fresh_database();
        rt.block_on(async {
            let store = Arc::new(connect(&url).await);
            let writers: Vec<_> = (0..48u32)
                .map(|i| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        let key = format!("user{i}").into_bytes();
                        let email = format!("u{i}@example.org").into_bytes();
                        let batch = Batch::new()
                            .check(Table::Emails, email.clone(), Expect::Absent)
                            .check(Table::Users, key.clone(), Expect::Absent)
                            .put(Table::Users, key.clone(), b"u".to_vec())
                            .put(Table::Emails, email, key);
                        store.apply(batch).await
                    })
                })
                .collect();
            for w in writers {
                assert!(matches!(w.await.unwrap(), Ok(Applied::Committed)));
            }
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Random table operations, batches and appends, reconnections included (a new node on
        /// the same database), against the model: every answer and every read agrees, and the
        /// event log is one valid chain.
        #[test]
        fn postgres_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
            let rt = rt();
            let url = portcullis_testdb::cluster().fresh_database();
            rt.block_on(async {
                let mut store = connect(&url).await;
                let mut model = Model::new();
                let mut events: Vec<String> = Vec::new();
                for op in ops {
                    match table_op(&store, &mut model, op).await? {
                        None => {}
                        Some(Op::Append(c)) => {
                            let e = store.append(draft(&format!("C{c}"))).await.unwrap();
                            prop_assert_eq!(e.seq, u64::try_from(events.len()).unwrap() + 1);
                            events.push(e.hash);
                        }
                        Some(Op::Restart) => {
                            store.close();
                            store = connect(&url).await;
                        }
                        Some(other) => unreachable!("{other:?}"),
                    }
                    reads_agree(&store, &model).await?;
                }
                let head = u64::try_from(events.len()).unwrap();
                prop_assert_eq!(store.head_seq(), head);
                let report = verify_events(&store, 1, None).await.unwrap();
                prop_assert!(report.valid, "{report:?}");
                prop_assert_eq!(report.checked, head);
                let page = store.read(1, head, 1000).await.unwrap();
                let hashes: Vec<String> = page.into_iter().map(|e| e.event.unwrap().hash).collect();
                prop_assert_eq!(hashes, events);
                Ok::<(), TestCaseError>(())
            })?;
        }
    }

    /// 64 connections race to consume one item, and 32 to move one token with a batch:
    /// exactly one winner each, and the token is in exactly one place afterwards.
    #[test]
    fn racers_have_one_winner_on_postgres() {
        let rt = rt();
        let url = portcullis_testdb::cluster().fresh_database();
        rt.block_on(async {
            let mut options = PgOptions::new(&url);
            options.pool_size = 64;
            let store: Arc<dyn Store> = Arc::new(PgStore::connect(&options).await.unwrap());
            for round in 0..3u8 {
                assert_eq!(consume_race(Arc::clone(&store), vec![b'r', round]).await, 1);
                assert_eq!(
                    batch_race(Arc::clone(&store), round).await,
                    1,
                    "round {round}"
                );
                token_moved_once(store.as_ref(), round).await;
            }
        });
    }

    /// Eight nodes starting at once on an empty database: every one starts, the schema is
    /// created once, at the newest version.
    #[test]
    fn nodes_starting_together_migrate_once() {
        let rt = rt();
        let cluster = portcullis_testdb::cluster();
        let url = cluster.fresh_database();
        rt.block_on(async {
            let starts: Vec<_> = (0..8)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move { PgStore::connect(&PgOptions::new(url)).await })
                })
                .collect();
            for s in starts {
                s.await.unwrap().unwrap();
            }
        });
        let db = url.rsplit('/').next().unwrap();
        assert_eq!(
            cluster.psql(db, "SELECT version FROM portcullis_schema"),
            crate::pg::MIGRATIONS.len().to_string()
        );
        let tables = cluster.psql(
            db,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        );
        // The logical tables, the schema's lock row, and the log's three.
        assert_eq!(tables, (Table::ALL.len() + 4).to_string());
        assert_eq!(cluster.psql(db, "SELECT seq FROM log_head"), "0");
    }

    /// A database made by an older build (schema version 2, before the attempts table) is
    /// brought up to date at the next start.
    #[test]
    fn a_database_of_an_older_schema_is_migrated_at_start() {
        let rt = rt();
        let cluster = portcullis_testdb::cluster();
        let url = cluster.fresh_database();
        rt.block_on(async {
            PgStore::connect(&PgOptions::new(url.clone()))
                .await
                .unwrap()
        });
        let db = url.rsplit('/').next().unwrap();
        cluster.psql(
            db,
            "DROP TABLE attempts; UPDATE portcullis_schema SET version = 2",
        );
        let store = rt.block_on(async {
            PgStore::connect(&PgOptions::new(url.clone()))
                .await
                .unwrap()
        });
        assert_eq!(
            cluster.psql(db, "SELECT version FROM portcullis_schema"),
            crate::pg::MIGRATIONS.len().to_string()
        );
        rt.block_on(async {
            store
                .put(Table::Attempts, b"k", b"v".to_vec())
                .await
                .unwrap();
            assert_eq!(
                store.get(Table::Attempts, b"k").await.unwrap(),
                Some(b"v".to_vec())
            );
        });
    }

    /// A record is readable with plain SQL (its version and JSON body), while the exact bytes
    /// written stay what compare-and-swap compares, even when jsonb would reorder the keys.
    #[test]
    fn records_are_readable_with_sql_and_compared_byte_for_byte() {
        let rt = rt();
        let cluster = portcullis_testdb::cluster();
        let url = cluster.fresh_database();
        let record = b"\x01{\"zeta\":1,\"email\":\"a@example.org\"}".to_vec();
        rt.block_on(async {
            let store = connect(&url).await;
            store
                .put(Table::Users, b"u1", record.clone())
                .await
                .unwrap();
            store
                .put(Table::Emails, b"a@example.org", b"u1".to_vec())
                .await
                .unwrap();
            assert_eq!(
                store.get(Table::Users, b"u1").await.unwrap(),
                Some(record.clone())
            );
            let next = b"\x01{\"zeta\":2}".to_vec();
            assert_eq!(
                store
                    .compare_and_swap(Table::Users, b"u1", Some(&record), Some(next.clone()))
                    .await
                    .unwrap(),
                Cas::Swapped
            );
            assert_eq!(store.get(Table::Users, b"u1").await.unwrap(), Some(next));
        });
        let db = url.rsplit('/').next().unwrap();
        assert_eq!(
            cluster.psql(db, "SELECT version || ' ' || (body->>'zeta') FROM users"),
            "1 2"
        );
        assert_eq!(
            cluster.psql(
                db,
                "SELECT count(*) FROM emails WHERE body IS NULL AND version IS NULL"
            ),
            "1"
        );
    }

    /// Three nodes append at once, four tasks each: one chain, one order, no gap and no
    /// duplicate, and every node reads every node's events. Then a prune on one node keeps a
    /// chain that verifies from its checkpoint, seen by the others.
    #[test]
    fn nodes_append_to_one_chain_and_prune_it() {
        let rt = rt();
        let cluster = portcullis_testdb::cluster();
        let url = cluster.fresh_database();
        rt.block_on(async {
            let mut nodes = Vec::new();
            for _ in 0..3 {
                nodes.push(Arc::new(connect(&url).await));
            }
            let mut tasks = Vec::new();
            for (n, node) in nodes.iter().enumerate() {
                for t in 0..4 {
                    let node = Arc::clone(node);
                    tasks.push(tokio::spawn(async move {
                        let mut seqs = Vec::new();
                        for i in 0..50 {
                            let e = node.append(draft(&format!("N{n}T{t}E{i}"))).await.unwrap();
                            seqs.push(e.seq);
                        }
                        seqs
                    }));
                }
            }
            let mut all = Vec::new();
            for t in tasks {
                let seqs = t.await.unwrap();
                // One task's appends keep their order.
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
                all.extend(seqs);
            }
            all.sort_unstable();
            assert_eq!(all, (1..=600).collect::<Vec<u64>>());
            for node in &nodes {
                let report = verify_events(node.as_ref(), 1, Some(600)).await.unwrap();
                assert!(report.valid, "{report:?}");
                assert_eq!(report.checked, 600);
            }
            let pruned = nodes[0].prune(250).await.unwrap();
            assert_eq!((pruned.pruned, pruned.first_seq), (250, 251));
            let other = connect(&url).await;
            assert_eq!(other.first_seq(), 251);
            assert_eq!(other.head_seq(), 600);
            let report = verify_events(&other, 251, None).await.unwrap();
            assert!(report.valid, "{report:?}");
            assert_eq!(other.read(1, 250, 10).await.unwrap().len(), 0);
        });
        let db = url.rsplit('/').next().unwrap();
        assert_eq!(
            cluster.psql(
                db,
                "SELECT count(*) || ' ' || min(seq) || ' ' || max(seq) FROM events"
            ),
            "350 251 600"
        );
    }

    /// Node B's durable watermark reaches what node A appended without B calling `refresh`:
    /// B keeps its view of the log's head current by itself.
    async fn follows_other_node(options: PgOptions) {
        let a = PgStore::connect(&options).await.unwrap();
        let b = PgStore::connect(&options).await.unwrap();
        let mut watched = b.watch_durable();
        for i in 0..3 {
            a.append(draft(&format!("A{i}"))).await.unwrap();
        }
        // A failure bound, not a speed requirement.
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            watched.wait_for(|seq| *seq >= 3),
        )
        .await
        .expect("B never saw A's events")
        .unwrap();
        assert_eq!(b.head_seq(), 3);
        let seen: Vec<u64> = b
            .read(1, b.durable_seq(), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seen, vec![1, 2, 3]);
    }

    #[test]
    fn a_node_follows_another_nodes_appends() {
        let rt = rt();
        let url = portcullis_testdb::cluster().fresh_database();
        rt.block_on(follows_other_node(PgOptions::new(&url)));
    }

    /// With nobody following on B (so B does not poll), the notification alone moves B's
    /// head to what A appended.
    #[test]
    fn a_notification_moves_another_nodes_head() {
        let rt = rt();
        let url = portcullis_testdb::cluster().fresh_database();
        rt.block_on(async {
            let a = connect(&url).await;
            let b = connect(&url).await;
            // B listens once its watcher has connected; until then an append may go unheard.
            let mut n = 0;
            tokio::time::timeout(std::time::Duration::from_secs(60), async {
                while b.head_seq() == 0 {
                    n += 1;
                    a.append(draft(&format!("A{n}"))).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            })
            .await
            .expect("no notification reached B");
            assert!(b.head_seq() >= 1);
        });
    }

    /// The same by polling alone, as on a database without LISTEN/NOTIFY.
    #[test]
    fn a_node_follows_another_nodes_appends_without_listen() {
        let rt = rt();
        let url = portcullis_testdb::cluster().fresh_database();
        let mut options = PgOptions::new(&url);
        options.listen = false;
        rt.block_on(follows_other_node(options));
    }

    /// The listening connection is a node's own, and it goes when the store is closed or
    /// dropped; a node whose listening connection is killed reconnects and still follows.
    #[test]
    fn the_log_watcher_reconnects_and_ends_with_its_store() {
        let rt = rt();
        let cluster = portcullis_testdb::cluster();
        let url = cluster.fresh_database();
        let db = url.rsplit('/').next().unwrap().to_owned();
        let listeners = || {
            cluster.psql(
                &db,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'portcullis-log-watch'
                   AND pid <> pg_backend_pid()",
            )
        };
        let wait_for = |want: &str| {
            // A failure bound only.
            for _ in 0..600 {
                if listeners() == want {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            panic!("listening connections never became {want}: {}", listeners());
        };
        let a = rt.block_on(connect(&url));
        let b = rt.block_on(connect(&url));
        wait_for("2");
        cluster.psql(
            &db,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'portcullis-log-watch'",
        );
        wait_for("2");
        rt.block_on(async {
            let mut watched = b.watch_durable();
            a.append(draft("after the reconnect")).await.unwrap();
            tokio::time::timeout(
                std::time::Duration::from_secs(60),
                watched.wait_for(|seq| *seq >= 1),
            )
            .await
            .expect("B never saw A's event")
            .unwrap();
        });
        a.close();
        wait_for("1");
        drop(b);
        wait_for("0");
    }

    /// Against a database that takes TCP connections over TLS only: `verify-full` with the CA
    /// that signed its certificate connects (and works); with another CA it is refused, saying
    /// why and without the URL's password; `require` connects without a CA; `disable` is
    /// refused by the server.
    #[test]
    fn database_tls_modes() {
        let rt = rt();
        let cluster = portcullis_testdb::tls_cluster();
        let url = cluster
            .fresh_database()
            .replacen("postgres@", "postgres:s3cret-pw@", 1);
        let options = |tls: PgTls, ca: Option<std::path::PathBuf>| {
            let mut o = PgOptions::new(&url);
            o.tls = Some(tls);
            o.ca_file = ca;
            o.connect_timeout = std::time::Duration::from_secs(10);
            o
        };
        rt.block_on(async {
            let store = PgStore::connect(&options(PgTls::VerifyFull, Some(cluster.ca_file())))
                .await
                .unwrap();
            assert_eq!(store.tls(), PgTls::VerifyFull);
            store.put(Table::Users, b"u", b"v".to_vec()).await.unwrap();
            assert_eq!(
                store.get(Table::Users, b"u").await.unwrap(),
                Some(b"v".to_vec())
            );
            store.close();

            let wrong =
                PgStore::connect(&options(PgTls::VerifyFull, Some(cluster.wrong_ca_file())))
                    .await
                    .unwrap_err()
                    .to_string();
            assert!(wrong.contains("certificate"), "{wrong}");
            assert!(!wrong.contains("s3cret-pw"), "{wrong}");

            let store = PgStore::connect(&options(PgTls::Require, None))
                .await
                .unwrap();
            assert_eq!(
                store.get(Table::Users, b"u").await.unwrap(),
                Some(b"v".to_vec())
            );
            store.close();

            let plain = PgStore::connect(&options(PgTls::Disable, None))
                .await
                .unwrap_err()
                .to_string();
            assert!(plain.contains("no encryption"), "{plain}");
            assert!(!plain.contains("s3cret-pw"), "{plain}");
        });
    }
}
