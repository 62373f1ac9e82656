//! The store's tests: atomicity, durability across reopen, a model check of every read path,
//! and the journal's corruption semantics with a bit flipped at every position of a real
//! journal.
#![allow(clippy::unwrap_used)]

use super::*;
use std::collections::BTreeMap;

mod journal_faults;

#[test]
fn a_store_that_is_open_is_not_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), 1 << 20).unwrap();
    match Store::open(dir.path(), 1 << 20) {
        Err(StoreError::Open { why, .. }) => assert!(!why.is_empty()),
        other => panic!("opened a database that is in use: {other:?}"),
    }
}

#[test]
fn a_store_closes_and_reopens_at_once() {
    // No lock left behind, no flush stall: close and reopen in a loop.
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for i in 0..20u32 {
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut b = Batch::new();
        b.put(Ns::Keys, &i.to_be_bytes(), b"v");
        rt.block_on(store.commit(b)).unwrap();
        assert_eq!(store.iter_after(Ns::Keys, None).count(), i as usize + 1);
    }
}

#[test]
fn a_directory_of_the_sled_store_is_refused_with_the_way_out() {
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("conf"), b"segment_size: 524288").unwrap();
    let err = Store::open(&db, 1 << 20).unwrap_err();
    assert!(matches!(err, StoreError::OldFormat { .. }), "{err}");
    assert!(err.to_string().contains("lockbox-migrate"), "{err}");
}

#[tokio::test]
async fn settled_waits_for_everything_a_reader_may_have_seen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let mut b = Batch::new();
    b.put(Ns::Keys, b"k", b"v");
    let g = store.apply(b).unwrap();
    store.settled().await.unwrap();
    assert!(store.inner.shared.sync.lock().unwrap().durable >= g);
}

/// `unsynced` after a read names a generation that covers the write the reader saw: either
/// that write is already durable, or the generation returned is at least its own. Fails if a
/// batch became visible before it was indexed, or was forgotten before it was durable.
#[test]
fn unsynced_covers_every_write_a_reader_saw() {
    use std::sync::atomic::AtomicU64;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    const WRITES: u64 = 3_000;
    // generation of write i (0 until the writer has it).
    let gens: Arc<Vec<AtomicU64>> = Arc::new((0..=WRITES).map(|_| AtomicU64::new(0)).collect());
    // Reads checked so far: every 10th write waits for one more, so the two threads interleave
    // however the machine schedules them (a busy CI once let the writer finish first).
    let reads = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, gens, reads) = (store.clone(), gens.clone(), reads.clone());
        std::thread::spawn(move || {
            for i in 1..=WRITES {
                if i % 10 == 0 {
                    let before = reads.load(Ordering::SeqCst);
                    while reads.load(Ordering::SeqCst) == before {
                        std::thread::yield_now();
                    }
                }
                let mut b = Batch::new();
                b.put(Ns::Keys, b"k", &i.to_be_bytes());
                // Every 100th batch is too large to index record by record.
                if i % 100 == 0 {
                    for j in 0..=PENDING_INDEX_MAX_OPS as u64 {
                        b.put(Ns::Grants, &j.to_be_bytes(), b"g");
                    }
                }
                gens[i as usize].store(store.apply(b).unwrap(), Ordering::SeqCst);
            }
        })
    };
    let mut checked = 0;
    let mut last = 0;
    while last < WRITES {
        let Some(v) = store.get(Ns::Keys, b"k").unwrap() else {
            continue;
        };
        let needs = store.unsynced(Ns::Keys, b"k");
        let durable = store.inner.shared.sync.lock().unwrap().durable;
        let i = u64::from_be_bytes(v.try_into().unwrap());
        let seen = loop {
            match gens[i as usize].load(Ordering::SeqCst) {
                0 => std::thread::yield_now(),
                g => break g,
            }
        };
        assert!(
            needs >= seen || durable >= seen,
            "read write {i} (generation {seen}): unsynced said {needs}, durable was {durable}"
        );
        checked += 1;
        reads.fetch_add(1, Ordering::SeqCst);
        last = i;
    }
    writer.join().unwrap();
    assert!(checked >= WRITES / 10, "only {checked} reads checked");
    store.flush_blocking().unwrap();
    assert_eq!(store.unsynced(Ns::Keys, b"k"), 0);
    assert_eq!(store.unsynced(Ns::Grants, &0u64.to_be_bytes()), 0);
}

#[tokio::test]
async fn batches_are_atomic_and_namespaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let mut b = Batch::new();
    b.put(Ns::Keys, b"k1", b"meta");
    b.put(Ns::Materials, b"k1", b"material");
    b.put(Ns::Audit, &1u64.to_be_bytes(), b"a1");
    b.put(Ns::Audit, &2u64.to_be_bytes(), b"a2");
    store.commit(b).await.unwrap();
    assert_eq!(store.get(Ns::Keys, b"k1").unwrap().unwrap(), b"meta");
    assert_eq!(
        store.get(Ns::Materials, b"k1").unwrap().unwrap(),
        b"material"
    );
    let (k, v) = store.last(Ns::Audit).unwrap().unwrap();
    assert_eq!(k, 2u64.to_be_bytes());
    assert_eq!(v, b"a2");
    assert_eq!(store.iter_after(Ns::Keys, None).count(), 1);
    assert_eq!(store.iter_after(Ns::Keys, Some(b"k1")).count(), 0);
    assert!(store.last(Ns::Node).unwrap().is_none());
}

/// Commits `n` one-record batches (keys 0..n) from as many tasks at once.
async fn commit_concurrently(store: &Store, n: u32) {
    let mut handles = Vec::new();
    for i in 0..n {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            let mut b = Batch::new();
            b.put(Ns::Keys, &i.to_be_bytes(), b"v");
            s.commit(b).await
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn committed_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        commit_concurrently(&store, 200).await;
    }
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(store.iter_after(Ns::Keys, None).count(), 200);
}

/// The sync observer sees every committed batch made durable exactly once, in syncs whose
/// batch sizes add up (group commit: fewer syncs than batches under concurrency is allowed,
/// more is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_observer_counts_every_durable_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<SyncStats>::new()));
    let sink = seen.clone();
    assert!(store.observe_syncs(Arc::new(move |s| lock(&sink).push(s))));
    assert!(
        !store.observe_syncs(Arc::new(|_| {})),
        "a second observer is refused"
    );
    commit_concurrently(&store, 100).await;
    let seen = lock(&seen).clone();
    assert_eq!(seen.iter().map(|s| s.batches).sum::<u64>(), 100);
    assert!(!seen.is_empty() && seen.len() <= 100);
    assert!(seen.iter().all(|s| s.batches >= 1));
}

/// A model check: random batches of puts and removes over a small keyspace, read back
/// through every read path while writes are still pending and after reopening.
#[tokio::test]
async fn reads_match_a_model_before_and_after_durability_and_reopen() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let check = |store: &Store, model: &BTreeMap<Vec<u8>, Vec<u8>>| {
        let got: Vec<_> = store
            .iter_after(Ns::Keys, None)
            .map(|r| r.unwrap())
            .collect();
        let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(got, want);
        let mut rev: Vec<_> = store.iter_rev(Ns::Keys).map(|r| r.unwrap()).collect();
        rev.reverse();
        assert_eq!(rev, want);
        let pre: Vec<_> = store
            .scan_prefix(Ns::Keys, b"1")
            .map(|r| r.unwrap())
            .collect();
        let want_pre: Vec<_> = want
            .iter()
            .filter(|(k, _)| k.starts_with(b"1"))
            .cloned()
            .collect();
        assert_eq!(pre, want_pre);
        for k in 0..40u64 {
            let id = format!("{k}").into_bytes();
            assert_eq!(store.get(Ns::Keys, &id).unwrap(), model.get(&id).cloned());
        }
        assert!(store.iter_after(Ns::Node, None).next().is_none());
        // Filtering by value without copying: the same ids as filtering what is read.
        let odd = |v: &[u8]| v.last().is_some_and(|b| b % 2 == 1);
        let want_ids: Vec<Vec<u8>> = want
            .iter()
            .filter(|(_, v)| odd(v))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(store.ids_where(Ns::Keys, odd).unwrap(), want_ids);
        assert!(store.ids_where(Ns::Node, |_| true).unwrap().is_empty());
    };
    for round in 0..4 {
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        check(&store, &model);
        let mut gens = Vec::new();
        for _ in 0..300 {
            let mut b = Batch::new();
            // Now and then a batch large enough to be merged into the overlay as a sorted
            // run, changing each of the 40 ids many times: the last change must win.
            let ops = if next() % 32 == 0 {
                1500
            } else {
                next() % 4 + 1
            };
            for _ in 0..ops {
                let id = format!("{}", next() % 40).into_bytes();
                if next() % 3 == 0 {
                    b.remove(Ns::Keys, &id);
                    model.remove(&id);
                } else {
                    let v = format!("v{}", next()).into_bytes();
                    b.put(Ns::Keys, &id, &v);
                    model.insert(id, v);
                }
            }
            gens.push(store.apply(b).unwrap());
            if next() % 16 == 0 {
                check(&store, &model); // with writes still pending
            }
        }
        for g in gens {
            store.durable(g).await.unwrap();
        }
        check(&store, &model);
        if round % 2 == 1 {
            store.flush_blocking().unwrap();
        }
    }
}

/// The KEK rotation's pattern: rewrite every record in chunks while iterating, then close.
#[test]
fn a_rewrite_while_iterating_then_close_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Store::open(&path, 1 << 22).unwrap();
            let mut b = Batch::new();
            for i in 0..60_000u32 {
                b.put(Ns::Keys, &i.to_be_bytes(), &[1u8; 120]);
                if b.len() == 1000 {
                    store.commit(std::mem::take(&mut b)).await.unwrap();
                }
            }
            let mut b = Batch::new();
            for r in store.iter_after(Ns::Keys, None) {
                let (id, _) = r.unwrap();
                b.put(Ns::Keys, &id, &[2u8; 120]);
                if b.len() == 1000 {
                    store.commit(std::mem::take(&mut b)).await.unwrap();
                }
            }
            store.commit(b).await.unwrap();
            drop(store);
        });
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("closing the store hung");
    let store = Store::open(dir.path(), 1 << 22).unwrap();
    assert!(
        store
            .iter_after(Ns::Keys, None)
            .all(|r| r.unwrap().1 == [2u8; 120])
    );
}
