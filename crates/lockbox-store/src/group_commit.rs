//! Group commit: many writers, one `fdatasync`.
//!
//! Writers encode their batch into the pending log buffer and publish it in the overlay (so
//! reads see it at once), under one short lock. A committer thread writes whatever has
//! accumulated to the current log segment with one `write` and one `fdatasync`, reports the
//! sequence number now durable, and hands the group to the indexer thread, which copies it into
//! sled (coalesced: a record rewritten by every batch, such as the audit head, is written to
//! sled once per group) and then drops it from the overlay. While the committer syncs, the next
//! group accumulates, so under load one ~200 µs sync covers dozens of writes; sled's inserts
//! run beside the next sync instead of before it.
//!
//! sled never holds a write that is not durable in the log: after a crash, replaying the log
//! over sled's recovered state gives exactly the acknowledged writes (plus possibly the last,
//! unacknowledged group, whole or not at all).
//!
//! A checkpointer thread flushes sled and fsyncs its files, then deletes the log segments whose
//! records sled now holds durably, and prepares the next (preallocated) segment.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::wal::{self, Op};
use crate::{Result, StoreError};

/// Size of a preallocated log segment. Records beyond it rotate to a new segment; the segments
/// left behind are deleted at the next checkpoint, so the log on disk stays near this size and
/// a restart replays at most about this much.
pub(crate) const SEGMENT_BYTES: usize = 8 << 20;
/// How far (in batches) sled may fall behind the log before acknowledgements wait for it. The
/// overlay holds everything in between in memory, and a clean shutdown must drain it: without
/// a bound, a sled slowed by a large tree let the backlog (and memory) grow without limit.
const MAX_INDEX_BACKLOG: u64 = 2048;
/// A batch of at least this many changes is merged into the overlay as a sorted run rather
/// than change by change.
const BULK_OVERLAY: usize = 1024;
/// A checkpoint also runs when this much time passed since the last one and anything was
/// written, so that an idle lockbox's log shrinks and its restart replays little.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// A value pending in the overlay: the batch that wrote it and the value (`None`: removed).
pub(crate) type Pending = (u64, Option<sled::IVec>);

/// A change on its way to sled. The value is shared (reference-counted) between the overlay
/// and the indexer's queue, so neither copies it again: a 100,000-key transfer is one batch
/// of 300,000 changes.
pub(crate) type IndexOp = (Vec<u8>, Option<sled::IVec>);

/// State shared by writers, readers, the committer and the checkpointer.
pub(crate) struct Shared {
    pub(crate) tree: sled::Db,
    /// Writes acknowledged or about to be, not yet in sled: reads look here first.
    overlay: RwLock<BTreeMap<Vec<u8>, Pending>>,
    state: Mutex<State>,
    /// Wakes the committer when a batch arrives (or at shutdown).
    work: Condvar,
    /// Wakes blocking waiters when the durable sequence number advances.
    durable_cv: Condvar,
    /// The same, for async waiters; `Err` once the log cannot be written.
    durable_tx: watch::Sender<std::result::Result<u64, String>>,
    /// Newest sequence number copied into sled (for backpressure).
    indexed_tx: watch::Sender<u64>,
    wal_dir: PathBuf,
    db_dir: PathBuf,
}

struct State {
    /// Sequence number of the next batch.
    next_seq: u64,
    /// Encoded records not yet handed to the committer.
    buf: Vec<u8>,
    /// The same batches, for copying into sled once durable.
    queue: Vec<(u64, Vec<IndexOp>)>,
    /// Newest sequence number known to be durable.
    durable: u64,
    /// Set once a log write or sync failed: nothing more may be acknowledged.
    failed: Option<String>,
    shutdown: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn new(tree: sled::Db, db_dir: PathBuf, wal_dir: PathBuf, next_seq: u64) -> Self {
        let (durable_tx, _) = watch::channel(Ok(next_seq - 1));
        let (indexed_tx, _) = watch::channel(next_seq - 1);
        Shared {
            tree,
            overlay: RwLock::new(BTreeMap::new()),
            state: Mutex::new(State {
                next_seq,
                buf: Vec::new(),
                queue: Vec::new(),
                durable: next_seq - 1,
                failed: None,
                shutdown: false,
            }),
            work: Condvar::new(),
            durable_cv: Condvar::new(),
            durable_tx,
            indexed_tx,
            wal_dir,
            db_dir,
        }
    }

    pub(crate) fn overlay(&self) -> RwLockReadGuard<'_, BTreeMap<Vec<u8>, Pending>> {
        self.overlay.read().unwrap_or_else(|p| p.into_inner())
    }

    fn overlay_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<Vec<u8>, Pending>> {
        self.overlay.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a batch: visible to reads at once, durable once [`Shared::wait_durable`] says so.
    pub(crate) fn submit(&self, ops: Vec<Op>) -> Result<u64> {
        let mut st = lock(&self.state);
        if let Some(e) = &st.failed {
            return Err(StoreError::Flush(e.clone()));
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        // Room for the whole record at once (a large batch would otherwise regrow the buffer,
        // copying it, many times).
        st.buf.reserve(wal::record_len(&ops));
        wal::encode_record(&mut st.buf, seq, &ops);
        let ops: Vec<IndexOp> = ops
            .into_iter()
            .map(|(k, v)| (k, v.map(sled::IVec::from)))
            .collect();
        if ops.len() < BULK_OVERLAY {
            let mut ov = self.overlay_mut();
            for (k, v) in &ops {
                ov.insert(k.clone(), (seq, v.clone()));
            }
        } else {
            // A large batch (a transfer of thousands of keys): sort it and merge it into the
            // overlay in one pass instead of one tree search per change.
            let mut batch: BTreeMap<Vec<u8>, Pending> = last_per_key(
                ops.iter()
                    .map(|(k, v)| (k.clone(), (seq, v.clone())))
                    .collect(),
            )
            .into_iter()
            .collect();
            self.overlay_mut().append(&mut batch);
        }
        st.queue.push((seq, ops));
        drop(st);
        self.work.notify_one();
        Ok(seq)
    }

    /// The newest sequence number handed out (what "everything so far" means).
    pub(crate) fn last_submitted(&self) -> u64 {
        lock(&self.state).next_seq - 1
    }

    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.durable_tx.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Ok(done) if *done >= seq => break,
                Ok(_) => {}
                Err(e) => return Err(StoreError::Flush(e.clone())),
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Flush("the log writer stopped".into()));
            }
        }
        // Durable. Backpressure: if sled is far behind, hold the acknowledgement until it
        // catches up, so writers cannot outrun the index without bound.
        let mut indexed = self.indexed_tx.subscribe();
        let mut failed = self.durable_tx.subscribe();
        while *indexed.borrow_and_update() + MAX_INDEX_BACKLOG < seq {
            tokio::select! {
                r = indexed.changed() => if r.is_err() { break },
                _ = failed.changed() => {
                    if let Err(e) = &*failed.borrow_and_update() {
                        return Err(StoreError::Flush(e.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until sled holds every write up to `seq` (the index has caught up with it).
    pub(crate) async fn wait_indexed(&self, seq: u64) -> Result<()> {
        let mut indexed = self.indexed_tx.subscribe();
        let mut failed = self.durable_tx.subscribe();
        while *indexed.borrow_and_update() < seq {
            tokio::select! {
                r = indexed.changed() => if r.is_err() {
                    return Err(StoreError::Flush("the indexer stopped".into()));
                },
                _ = failed.changed() => {
                    if let Err(e) = &*failed.borrow_and_update() {
                        return Err(StoreError::Flush(e.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn wait_durable_blocking(&self, seq: u64) -> Result<()> {
        let mut st = lock(&self.state);
        loop {
            if let Some(e) = &st.failed {
                return Err(StoreError::Flush(e.clone()));
            }
            if st.durable >= seq {
                return Ok(());
            }
            st = self.durable_cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn fail(&self, msg: String) {
        tracing::error!(error = %msg, "write-ahead log failed; refusing further writes");
        let mut st = lock(&self.state);
        st.failed = Some(msg.clone());
        drop(st);
        let _previous = self.durable_tx.send_replace(Err(msg));
        self.durable_cv.notify_all();
    }

    pub(crate) fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.work.notify_all();
    }

    pub(crate) fn db_dir(&self) -> &Path {
        &self.db_dir
    }
}

/// Sorts changes by key and keeps only the last change to each key (in the given order): the
/// final state of a run of changes, built without a tree search per change.
fn last_per_key<K: Ord, V>(mut changes: Vec<(K, V)>) -> Vec<(K, V)> {
    // Stable, so that of two changes to one key the later stays after the earlier...
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    // ...and is the one kept.
    let mut out: Vec<(K, V)> = Vec::with_capacity(changes.len());
    for kv in changes {
        match out.last_mut() {
            Some(last) if last.0 == kv.0 => *last = kv,
            _ => out.push(kv),
        }
    }
    out
}

/// What the committer tells the checkpointer (through the indexer, so that a segment is
/// retired only after every record in it has reached sled).
pub(crate) enum Checkpoint {
    /// Make sled durable, then delete these segments (their records are all in sled).
    Retire(Vec<PathBuf>),
}

/// What the committer tells the indexer, in log order.
pub(crate) enum Index {
    /// A durable group: copy it into sled, then drop it from the overlay.
    Group(Vec<(u64, Vec<IndexOp>)>),
    /// Pass on to the checkpointer once everything before it is in sled.
    Retire(PathBuf),
}

/// The committer thread: see the module documentation.
pub(crate) fn committer(
    shared: Arc<Shared>,
    mut file: File,
    mut segment_path: PathBuf,
    indexer: mpsc::Sender<Index>,
    spare_ready: Arc<Mutex<Option<PathBuf>>>,
) {
    let mut offset = wal::MAGIC.len();
    let mut last_checkpoint = Instant::now();
    let mut spare_buf = Vec::new();
    loop {
        let (mut buf, queue, last) = {
            let mut st = lock(&shared.state);
            while st.buf.is_empty() && !st.shutdown {
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.buf.is_empty() {
                return; // shutdown with nothing pending
            }
            let buf = std::mem::replace(&mut st.buf, std::mem::take(&mut spare_buf));
            let queue = std::mem::take(&mut st.queue);
            (buf, queue, st.next_seq - 1)
        };
        let first = queue.first().map(|(s, _)| *s).unwrap_or(last);

        // Rotate before a write that would overflow the preallocated segment.
        if offset > wal::MAGIC.len() && offset + buf.len() > SEGMENT_BYTES {
            match rotate(&shared, &spare_ready, first, &indexer, &mut segment_path) {
                Ok(f) => {
                    file = f;
                    offset = wal::MAGIC.len();
                    last_checkpoint = Instant::now();
                }
                Err(e) => {
                    shared.fail(format!("cannot start a new log segment: {e}"));
                    return;
                }
            }
        }

        if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
            shared.fail(format!(
                "cannot write the log segment {}: {e}",
                segment_path.display()
            ));
            return;
        }
        offset += buf.len();
        {
            let mut st = lock(&shared.state);
            st.durable = last;
        }
        let _previous = shared.durable_tx.send_replace(Ok(last));
        shared.durable_cv.notify_all();

        if indexer.send(Index::Group(queue)).is_err() {
            // The indexer stopped (it failed and said why); the group is durable and visible.
            return;
        }
        buf.clear();
        spare_buf = buf;

        if offset > wal::MAGIC.len()
            && last_checkpoint.elapsed() > CHECKPOINT_EVERY
            && lock(&spare_ready).is_some()
        {
            // Quiet for a while: start a fresh segment so the old one can be retired.
            match rotate(&shared, &spare_ready, last + 1, &indexer, &mut segment_path) {
                Ok(f) => {
                    file = f;
                    offset = wal::MAGIC.len();
                }
                Err(e) => {
                    shared.fail(format!("cannot start a new log segment: {e}"));
                    return;
                }
            }
            last_checkpoint = Instant::now();
        }
    }
}

/// Installs the segment starting at `first` (the prepared spare if there is one) and sends
/// the old one to be retired once the indexer has caught up with it.
fn rotate(
    shared: &Shared,
    spare_ready: &Mutex<Option<PathBuf>>,
    first: u64,
    indexer: &mpsc::Sender<Index>,
    segment_path: &mut PathBuf,
) -> Result<File> {
    let spare = lock(spare_ready).take();
    let file = wal::install_segment(&shared.wal_dir, spare.as_deref(), first, SEGMENT_BYTES)?;
    let old = std::mem::replace(segment_path, wal::segment_path(&shared.wal_dir, first));
    let _ = indexer.send(Index::Retire(old));
    Ok(file)
}

/// The indexer thread: copies durable groups into sled, in log order, each key once with its
/// final value, then drops them from the overlay (sled first: a reader that misses the
/// overlay must find the value in sled).
pub(crate) fn indexer(
    shared: Arc<Shared>,
    groups: mpsc::Receiver<Index>,
    checkpoints: mpsc::Sender<Checkpoint>,
) {
    while let Ok(msg) = groups.recv() {
        let queue = match msg {
            Index::Group(q) => q,
            Index::Retire(path) => {
                let _ = checkpoints.send(Checkpoint::Retire(vec![path]));
                continue;
            }
        };
        let Some(last) = queue.last().map(|(s, _)| *s) else {
            continue;
        };
        // Each key once, with its last value, in key order (sled's inserts walk the tree in
        // order, and a key rewritten by every batch, like the audit head, is written once).
        let finals: Vec<(&[u8], Option<&sled::IVec>)> = last_per_key(
            queue
                .iter()
                .flat_map(|(_, ops)| ops.iter().map(|(k, v)| (k.as_slice(), v.as_ref())))
                .collect(),
        );
        if let Err(e) = index_finals(&shared.tree, &finals) {
            // The writes are durable in the log and stay visible through the overlay; a
            // restart replays them. Stop taking new ones.
            shared.fail(format!("cannot update the index: {e}"));
            return;
        }
        {
            let mut ov = shared.overlay_mut();
            for (k, _) in &finals {
                if let Some((seq, _)) = ov.get(*k)
                    && *seq <= last
                {
                    ov.remove(*k);
                }
            }
        }
        let _previous = shared.indexed_tx.send_replace(last);
    }
}

/// A group with at least this many keys is indexed by several threads: sled takes concurrent
/// writers, and a large group (an evacuation's 100,000 records) otherwise leaves the index a
/// second or more behind the log on one core while the others idle. Below it, starting
/// threads costs more than it saves.
const PARALLEL_INDEX_MIN: usize = 8192;
/// Threads a large group is split over, at most.
const INDEX_THREADS_MAX: usize = 4;

/// Writes a group's final values into sled. Each key appears once, so the order between keys
/// does not matter and the group can be split into contiguous key ranges, one per thread
/// (contiguous, so threads mostly work on different leaves). Readers see the overlay until
/// the whole group is indexed, so a partly indexed group is never visible.
fn index_finals(
    tree: &sled::Tree,
    finals: &[(&[u8], Option<&sled::IVec>)],
) -> std::result::Result<(), String> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(INDEX_THREADS_MAX);
    if threads < 2 || finals.len() < PARALLEL_INDEX_MIN {
        return index_run(tree, finals);
    }
    let chunk = finals.len().div_ceil(threads);
    let mut runs = finals.chunks(chunk);
    let first = runs.next().unwrap_or_default();
    std::thread::scope(|s| {
        let mut results = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for run in runs {
            match std::thread::Builder::new()
                .name("lockbox-index".into())
                .spawn_scoped(s, move || index_run(tree, run))
            {
                Ok(h) => handles.push(h),
                // No thread to be had: this one does the run itself.
                Err(_) => results.push(index_run(tree, run)),
            }
        }
        results.push(index_run(tree, first));
        for h in handles {
            results.push(
                h.join()
                    .unwrap_or_else(|_| Err("an index thread panicked".to_string())),
            );
        }
        results
            .into_iter()
            .collect::<std::result::Result<(), String>>()
    })
}

/// Writes one run of final values into sled, in order.
fn index_run(
    tree: &sled::Tree,
    finals: &[(&[u8], Option<&sled::IVec>)],
) -> std::result::Result<(), String> {
    for (k, v) in finals {
        let res = match v {
            Some(v) => tree.insert(*k, (*v).clone()).map(|_| ()),
            None => tree.remove(*k).map(|_| ()),
        };
        res.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The checkpointer thread: makes sled durable, retires log segments, keeps a spare ready.
pub(crate) fn checkpointer(
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Checkpoint>,
    spare_ready: Arc<Mutex<Option<PathBuf>>>,
) {
    refill_spare(&shared, &spare_ready);
    while let Ok(Checkpoint::Retire(mut old)) = requests.recv() {
        while let Ok(Checkpoint::Retire(more)) = requests.try_recv() {
            old.extend(more);
        }
        match checkpoint_index(&shared.tree, shared.db_dir()) {
            Ok(()) => {
                for path in &old {
                    if let Err(e) = std::fs::remove_file(path) {
                        tracing::warn!(file = %path.display(), error = %e, "cannot delete a retired log segment");
                    }
                }
                if let Err(e) = wal::sync_dir(&shared.wal_dir) {
                    tracing::warn!(error = %e, "cannot sync the log directory");
                }
            }
            // Keeping the segments is always safe: a restart replays them.
            Err(e) => tracing::warn!(error = %e, "checkpoint failed; keeping the log segments"),
        }
        refill_spare(&shared, &spare_ready);
    }
}

fn refill_spare(shared: &Shared, spare_ready: &Mutex<Option<PathBuf>>) {
    if lock(spare_ready).is_some() {
        return;
    }
    match wal::prepare_spare(&shared.wal_dir, SEGMENT_BYTES) {
        Ok(p) => *lock(spare_ready) = Some(p),
        Err(e) => tracing::warn!(error = %e, "cannot prepare the next log segment"),
    }
}

/// Flushes sled and fsyncs every file it keeps, so its state no longer depends on the log.
/// (sled's own flush uses `sync_file_range`, which does not flush the device cache or the
/// file's metadata.)
pub(crate) fn checkpoint_index(tree: &sled::Db, db_dir: &Path) -> Result<()> {
    tree.flush()?;
    let blobs = db_dir.join("blobs");
    for dir in [db_dir, blobs.as_path()] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(wal::file_err(dir))?;
            let path = entry.path();
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false)
                && !path.starts_with(db_dir.join("wal"))
            {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(wal::file_err(&path))?;
            }
        }
        wal::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_per_key_keeps_the_last_change_to_each_key_in_key_order() {
        let changes = vec![(3, 'a'), (1, 'b'), (3, 'c'), (2, 'd'), (1, 'e'), (3, 'f')];
        assert_eq!(last_per_key(changes), vec![(1, 'e'), (2, 'd'), (3, 'f')]);
        assert_eq!(last_per_key(Vec::<(u8, u8)>::new()), vec![]);
    }
}
