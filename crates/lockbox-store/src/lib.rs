//! Durable storage of sealed lockbox records.
//!
//! This is the only crate that names sled. It stores opaque bytes that the daemon has already
//! sealed: it never sees key material. Every mutation is one atomic batch, and nothing is
//! acknowledged before it is durable: [`Store::durable`] returns only once the batch's record in
//! the write-ahead log has been `fdatasync`ed. Concurrent writers share syncs (group commit):
//! a sync costs ~150 µs, so one per writer would cap a busy lockbox near 6,000 writes/s.
//!
//! sled is the index, not the durability mechanism: sled 0.34 writes its log twice per atomic
//! batch and makes it durable with `sync_file_range`, which does not flush the device's write
//! cache. So batches go to our own log ([`wal`]) first and reach sled afterwards, coalesced per
//! group; sled is made durable (flush plus `fsync` of its files) at checkpoints, after which
//! the log segments it covers are deleted. See `group_commit` for the threads that do this.

mod atomic_file;
mod group_commit;
mod wal;

pub use atomic_file::write_file_atomic;

use std::iter::Peekable;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use group_commit::{Checkpoint, Index, Shared};

/// Errors from the storage layer. Messages say what failed, never what the value was.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (missing, locked by another process, or corrupt).
    #[error("cannot open the database at {path}: {source}")]
    Open {
        /// The directory we tried to open.
        path: String,
        /// What sled said.
        source: sled::Error,
    },
    /// A read or write failed.
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    /// A log write or sync failed, so the write it covered may not be durable; the store
    /// acknowledges nothing after that.
    #[error("flush to disk failed: {0}")]
    Flush(String),
    /// A file outside the database could not be written.
    #[error("cannot write {path}: {source}")]
    File {
        /// The file we tried to write.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The write-ahead log is damaged somewhere other than its unfinished tail: acknowledged
    /// writes may be lost, so the store refuses to open rather than guess.
    #[error("write-ahead log {path} is corrupt at byte {offset}: {why}")]
    Corrupt {
        /// The segment file.
        path: String,
        /// Where the bad record starts.
        offset: u64,
        /// What check failed.
        why: String,
    },
    /// A background thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The kinds of record the lockbox keeps. Each lives under its own one-byte prefix in a single
/// keyspace, so that one batch can change several kinds atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// Key id (UUID text) → sealed key metadata.
    Keys,
    /// Material id → sealed material bytes.
    Materials,
    /// Material id ‖ key id → empty: which key ids share a material (reference count, cascade).
    MaterialRefs,
    /// Sequence number (u64 big-endian) → encoded audit entry (plaintext, hash-chained).
    Audit,
    /// Node-level records: sealed identity keys, the sealed audit head, counters.
    Node,
    /// Grant id → what this node did with the grant (consumed as destination, completed as
    /// source) and its receipt: what makes a retried transfer idempotent.
    Grants,
}

impl Ns {
    /// The byte that starts every record of this kind in sled's single keyspace (so one batch
    /// can change several kinds atomically). Public for tools that read sled directly, such as
    /// the store's floor bench.
    pub fn prefix(self) -> u8 {
        match self {
            Ns::Keys => b'k',
            Ns::Materials => b'm',
            Ns::MaterialRefs => b'r',
            Ns::Audit => b'a',
            Ns::Node => b'n',
            Ns::Grants => b'g',
        }
    }

    fn key(self, id: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(id.len() + 1);
        k.push(self.prefix());
        k.extend_from_slice(id);
        k
    }
}

/// One atomic set of changes. Built by the caller, applied whole or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<wal::Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a record.
    pub fn put(&mut self, ns: Ns, id: &[u8], value: &[u8]) {
        self.ops.push((ns.key(id), Some(value.to_vec())));
    }

    /// Removes a record (no error when it is absent).
    pub fn remove(&mut self, ns: Ns, id: &[u8]) {
        self.ops.push((ns.key(id), None));
    }

    /// Whether the batch changes any record of `ns`: lets a caller note which kinds of record
    /// a write touched without keeping its own list beside the batch.
    pub fn touches(&self, ns: Ns) -> bool {
        let prefix = ns.prefix();
        self.ops.iter().any(|(k, _)| k.first() == Some(&prefix))
    }

    /// Number of changes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The lockbox database: sled as the index, a write-ahead log for durability, and the two
/// threads (committer, checkpointer) that keep them in step. Cheap to clone; the threads stop
/// and the log is checkpointed when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters: `shared` (and with it sled) is dropped before `snapshot`.
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    snapshot: SnapshotOnClose,
}

/// Reopens sled once it has been closed cleanly, so that sled writes its recovery snapshot now
/// rather than at the next start. sled 0.34 writes that snapshot only when it opens, replaying
/// all of its log since the previous open; without this, the first start after a million
/// creates spent seconds replaying them. A clean stop (SIGTERM, an upgrade) pays that time
/// instead of the next start; a crash still replays at start.
struct SnapshotOnClose {
    dir: std::path::PathBuf,
    armed: std::sync::atomic::AtomicBool,
}

impl Drop for SnapshotOnClose {
    fn drop(&mut self) {
        if !self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let started = std::time::Instant::now();
        let config = sled::Config::new()
            .path(&self.dir)
            .cache_capacity(1 << 20)
            .flush_every_ms(None);
        match open_sled(&config) {
            Ok(db) => {
                drop(db);
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "database snapshot written for a fast next start"
                );
            }
            // Harmless: the next start replays instead.
            Err(e) => tracing::debug!(error = %e, "no snapshot at close"),
        }
    }
}

/// How long an open waits for sled's directory lock to be released by this process.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting up to [`LOCK_WAIT`] while its directory lock is held.
///
/// Why: sled 0.34 releases its lock (an `flock` on `db`) only when the last of its internal
/// references is dropped, and its I/O threads drop theirs a moment after the `Db` itself. So
/// a store closed and reopened in one process (a clean close's snapshot reopen, then a test
/// or tool opening the same directory) can find the lock still held for a few milliseconds.
/// Another process holding the lock (a running daemon) still fails, after the wait.
fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// How long a clean close waits for the final checkpoint. sled 0.34's flush has been seen to
/// stall forever at close (waiting on an I/O buffer no thread writes, after a KEK rotation in
/// a busy daemon); the log makes that harmless for durability, so the close gives up, leaves
/// sled open (the stalled thread keeps its reference, so nothing else blocks on sled's own
/// flush-on-drop) and the next start replays the log.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shutdown();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        // A clean close leaves sled durable and the log empty, so the next start replays
        // nothing. Failing here is harmless: the log is still there to replay.
        let shared = self.shared.clone();
        let (tx, rx) = mpsc::channel();
        let closer = std::thread::Builder::new()
            .name("lockbox-close".into())
            .spawn(move || {
                let res = final_checkpoint(&shared);
                drop(shared);
                let _ = tx.send(res);
            });
        if let Err(e) = closer {
            tracing::warn!(error = %e, "cannot run the final checkpoint; the log will be replayed");
            return;
        }
        match rx.recv_timeout(CLOSE_TIMEOUT) {
            Ok(Ok(())) => {
                // Every thread has stopped, so `shared` is the last reference to sled.
                if Arc::strong_count(&self.shared) == 1 {
                    self.snapshot
                        .armed
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "final checkpoint failed; the log will be replayed")
            }
            Err(_) => tracing::warn!(
                timeout_s = CLOSE_TIMEOUT.as_secs(),
                "final checkpoint did not finish (sled flush stalled); closing without it, the \
                 log will be replayed at the next start"
            ),
        }
    }
}

/// Flushes sled durably and deletes every log segment (all of them are then redundant).
fn final_checkpoint(shared: &Shared) -> Result<()> {
    group_commit::checkpoint_index(&shared.tree, shared.db_dir())?;
    let wal_dir = shared.db_dir().join("wal");
    for (_, path) in wal::list_segments(&wal_dir)? {
        std::fs::remove_file(&path).map_err(wal::file_err(&path))?;
    }
    let _ = std::fs::remove_file(wal_dir.join(wal::SPARE));
    wal::sync_dir(&wal_dir)
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

type KvIter = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send>;
/// A record from the overlay: its full key and its value (`None`: removed).
type PendingKv = (Vec<u8>, Option<Vec<u8>>);

impl Store {
    /// Opens (or creates) the database in `dir`, replaying the write-ahead log over sled's
    /// recovered state. `cache_bytes` bounds sled's page cache, which otherwise defaults to
    /// 1 GiB and dominates the daemon's memory on a large lockbox.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from our log; sled is flushed at checkpoints only.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        let tree = open_sled(&config).map_err(|source| StoreError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        // sled holds an exclusive lock on its directory from here on, so the log is ours.
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(wal::file_err(&wal_dir))?;
        let _ = std::fs::remove_file(wal_dir.join(wal::SPARE));
        let replay = wal::replay(&wal_dir)?;
        if !replay.records.is_empty() {
            let n = replay.records.len();
            for (_, ops) in replay.records {
                for (k, v) in ops {
                    match v {
                        Some(v) => tree.insert(k, v)?,
                        None => tree.remove(k)?,
                    };
                }
            }
            tracing::info!(records = n, "replayed the write-ahead log");
        }
        if !replay.segments.is_empty() {
            group_commit::checkpoint_index(&tree, dir)?;
            for path in &replay.segments {
                std::fs::remove_file(path).map_err(wal::file_err(path))?;
            }
            wal::sync_dir(&wal_dir)?;
        }
        let file =
            wal::install_segment(&wal_dir, None, replay.next_seq, group_commit::SEGMENT_BYTES)?;
        let segment = wal::segment_path(&wal_dir, replay.next_seq);

        let shared = Arc::new(Shared::new(
            tree,
            dir.to_path_buf(),
            wal_dir,
            replay.next_seq,
        ));
        let (index_tx, index_rx) = mpsc::channel::<Index>();
        let (checkpoint_tx, checkpoint_rx) = mpsc::channel::<Checkpoint>();
        let spare_ready = Arc::new(Mutex::new(None));
        // Started in pipeline order; each stops when the one before it has stopped and dropped
        // its sender, and `Inner::drop` joins them in this order.
        let mut threads = Vec::new();
        let spawned = (|| {
            let (sh, rx) = (shared.clone(), checkpoint_rx);
            let spare = spare_ready.clone();
            threads.push(spawn("lockbox-checkpoint", move || {
                group_commit::checkpointer(sh, rx, spare)
            })?);
            let sh = shared.clone();
            threads.push(spawn("lockbox-index", move || {
                group_commit::indexer(sh, index_rx, checkpoint_tx)
            })?);
            let sh = shared.clone();
            threads.push(spawn("lockbox-commit", move || {
                group_commit::committer(sh, file, segment, index_tx, spare_ready)
            })?);
            Ok::<(), StoreError>(())
        })();
        threads.reverse();
        let inner = Inner {
            shared,
            threads: Mutex::new(threads),
            snapshot: SnapshotOnClose {
                dir: dir.to_path_buf(),
                armed: std::sync::atomic::AtomicBool::new(false),
            },
        };
        // On failure, dropping `inner` stops and joins whatever was started.
        spawned?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Reads one record.
    pub fn get(&self, ns: Ns, id: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = ns.key(id);
        // The overlay first: a value that is in both is the same or newer there, and the
        // committer inserts into sled before it removes from the overlay.
        if let Some((_, v)) = self.shared().overlay().get(&key) {
            return Ok(v.as_ref().map(|v| v.to_vec()));
        }
        Ok(self.shared().tree.get(key)?.map(|v| v.to_vec()))
    }

    /// True when the record exists.
    pub fn contains(&self, ns: Ns, id: &[u8]) -> Result<bool> {
        Ok(self.get(ns, id)?.is_some())
    }

    /// Records of one kind whose id starts with `prefix`, in id order.
    pub fn scan_prefix(
        &self,
        ns: Ns,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + use<> {
        let start = ns.key(prefix);
        let end = prefix_end(&start);
        self.merged(Bound::Included(start), end, false)
    }

    /// Records of one kind with id strictly greater than `after` (or all, when `None`), in id
    /// order: the basis of paged listing.
    pub fn iter_after(
        &self,
        ns: Ns,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + use<> {
        let start = match after {
            Some(a) => Bound::Excluded(ns.key(a)),
            None => Bound::Included(vec![ns.prefix()]),
        };
        self.merged(start, Bound::Excluded(vec![ns.prefix() + 1]), false)
    }

    /// The ids of one kind's records whose value satisfies `wanted`, in id order, without
    /// copying any value.
    ///
    /// A KEK rotation looks for the records still sealed under the old KEK by a few header
    /// bytes of each. After an evacuation, which seals its tombstones under the new KEK first,
    /// that is none of 100,000 records, and copying every one out (as [`Store::iter_after`]
    /// does) was most of the rotation's time. Like the iterators, this is not a snapshot
    /// across concurrent writes: the caller holds off writers it must not miss.
    pub fn ids_where(&self, ns: Ns, wanted: impl Fn(&[u8]) -> bool) -> Result<Vec<Vec<u8>>> {
        let start = Bound::Included(vec![ns.prefix()]);
        let end = Bound::Excluded(vec![ns.prefix() + 1]);
        // The overlay's verdict on each record it holds (`None`: removed), decided now: its
        // values win over sled's, its removals hide sled's records.
        let pending: Vec<(Vec<u8>, Option<bool>)> = self
            .shared()
            .overlay()
            .range::<Vec<u8>, _>((start.clone(), end.clone()))
            .map(|(k, (_, v))| (k.clone(), v.as_deref().map(&wanted)))
            .collect();
        let mut pending = pending.into_iter().peekable();
        let mut out = Vec::new();
        let mut keep = |key: &[u8], verdict: Option<bool>| {
            if verdict == Some(true) {
                out.push(key[1..].to_vec());
            }
        };
        for r in self.shared().tree.range::<Vec<u8>, _>((start, end)) {
            let (k, v) = r?;
            while let Some((pk, verdict)) = pending.next_if(|(pk, _)| pk.as_slice() < &*k) {
                keep(&pk, verdict);
            }
            match pending.next_if(|(pk, _)| pk.as_slice() == &*k) {
                Some((pk, verdict)) => keep(&pk, verdict),
                None => keep(&k, Some(wanted(&v))),
            }
        }
        for (pk, verdict) in pending {
            keep(&pk, verdict);
        }
        Ok(out)
    }

    /// Records of one kind, newest id first.
    pub fn iter_rev(&self, ns: Ns) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + use<> {
        self.merged(
            Bound::Included(vec![ns.prefix()]),
            Bound::Excluded(vec![ns.prefix() + 1]),
            true,
        )
    }

    /// The record with the greatest id of one kind (the audit chain's head).
    pub fn last(&self, ns: Ns) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.iter_rev(ns).next().transpose()
    }

    /// sled's records in a range merged with the overlay's (which win, and whose removals hide
    /// sled's record). The overlay part is copied when the iterator is made; sled's is read as
    /// it goes. Like sled's own iterators, this is not a snapshot across concurrent writes.
    fn merged(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, rev: bool) -> Merge {
        let mut pending: Vec<PendingKv> = self
            .shared()
            .overlay()
            .range::<Vec<u8>, _>((start.clone(), end.clone()))
            .map(|(k, (_, v))| (k.clone(), v.as_ref().map(|v| v.to_vec())))
            .collect();
        if rev {
            pending.reverse();
        }
        let range = self.shared().tree.range::<Vec<u8>, _>((start, end));
        let index: KvIter = if rev {
            Box::new(range.rev().map(|r| r.map(owned).map_err(StoreError::from)))
        } else {
            Box::new(range.map(|r| r.map(owned).map_err(StoreError::from)))
        };
        Merge {
            pending: pending.into_iter().peekable(),
            index: index.peekable(),
            rev,
        }
    }

    /// Queues a batch: it is applied atomically (readers see all of it or none of it) and
    /// written to the log, but is not yet durable. Returns the write's generation, to pass to
    /// [`Store::durable`] before acknowledging it. Callers that must order batches (the audit
    /// chain) serialize their `apply` calls and wait for durability outside their lock, so
    /// syncs are shared.
    pub fn apply(&self, batch: Batch) -> Result<u64> {
        self.shared().submit(batch.ops)
    }

    /// Waits until every write up to `generation` is durable.
    pub async fn durable(&self, generation: u64) -> Result<()> {
        self.shared().wait_durable(generation).await
    }

    /// Waits until sled itself holds every write up to `generation`. Nothing needs this for
    /// correctness (reads see pending writes in the overlay); benchmarks use it so that the
    /// index's work is counted, not left running after the clock stops.
    pub async fn indexed(&self, generation: u64) -> Result<()> {
        self.shared().wait_indexed(generation).await
    }

    /// Applies a batch and waits until it is durable.
    pub async fn commit(&self, batch: Batch) -> Result<()> {
        let generation = self.apply(batch)?;
        self.durable(generation).await
    }

    /// Waits until everything applied so far is durable, blocking the calling thread
    /// (start-up and shutdown paths).
    pub fn flush_blocking(&self) -> Result<()> {
        let last = self.shared().last_submitted();
        self.shared().wait_durable_blocking(last)
    }

    /// Bytes the database occupies on disk, log included (for status and metrics).
    pub fn size_on_disk(&self) -> Result<u64> {
        let mut total = self.shared().tree.size_on_disk()?;
        let wal_dir = self.shared().db_dir().join("wal");
        if let Ok(entries) = std::fs::read_dir(&wal_dir) {
            for e in entries.flatten() {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok(total)
    }
}

fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| StoreError::Thread { what: name, source })
}

/// The first key after every key starting with `prefix` (unbounded when there is none).
fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

fn owned((k, v): (sled::IVec, sled::IVec)) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

/// See [`Store::merged`]. Yields ids without their namespace prefix.
struct Merge {
    pending: Peekable<std::vec::IntoIter<PendingKv>>,
    index: Peekable<KvIter>,
    rev: bool,
}

impl Iterator for Merge {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_pending = match (self.pending.peek(), self.index.peek()) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(_), Some(Err(_))) => false,
                (Some((pk, _)), Some(Ok((ik, _)))) => {
                    if pk == ik {
                        // Same record in both: the overlay's is newer.
                        self.index.next();
                        true
                    } else {
                        (pk < ik) != self.rev
                    }
                }
            };
            if take_pending {
                match self.pending.next() {
                    Some((k, Some(v))) => return Some(Ok((k[1..].to_vec(), v))),
                    Some((_, None)) => continue, // removed, not yet in sled
                    None => return None,
                }
            }
            return self
                .index
                .next()
                .map(|r| r.map(|(k, v)| (k[1..].to_vec(), v)));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_store_that_is_open_is_not_opened_twice() {
        // The open waits for sled's lock (it may be on its way out), then refuses with
        // sled's own message: a directory in use is never opened twice.
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), 1 << 20).unwrap();
        let started = std::time::Instant::now();
        match Store::open(dir.path(), 1 << 20) {
            Err(StoreError::Open { source, .. }) => {
                assert!(source.to_string().contains("lock"), "{source}");
            }
            other => panic!("opened a database that is in use: {other:?}"),
        }
        assert!(started.elapsed() >= LOCK_WAIT);
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

    #[tokio::test]
    async fn indexed_returns_once_sled_itself_holds_the_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        // Enough changes that the indexer is still busy when the last batch is durable.
        let mut last = 0;
        for b in 0..40u32 {
            let mut batch = Batch::new();
            for i in 0..2000u32 {
                batch.put(Ns::Keys, format!("{b:04}-{i:05}").as_bytes(), b"v");
            }
            last = store.apply(batch).unwrap();
        }
        store.durable(last).await.unwrap();
        store.indexed(last).await.unwrap();
        for b in 0..40u32 {
            for i in (0..2000u32).step_by(97) {
                let key = Ns::Keys.key(format!("{b:04}-{i:05}").as_bytes());
                assert!(
                    store.shared().tree.get(&key).unwrap().is_some(),
                    "{b}/{i} is not in sled yet"
                );
            }
        }
        assert!(store.shared().overlay().is_empty());
    }

    #[tokio::test]
    async fn committed_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let mut handles = Vec::new();
            for i in 0..200u32 {
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
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.iter_after(Ns::Keys, None).count(), 200);
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

    /// A lockbox killed before a checkpoint: sled's files hold an older state, the log holds
    /// the acknowledged writes since. Reopening must give every acknowledged write.
    #[tokio::test]
    async fn the_log_restores_acknowledged_writes_over_a_stale_index() {
        let live = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        {
            let store = Store::open(live.path(), 1 << 20).unwrap();
            let mut b = Batch::new();
            b.put(Ns::Keys, b"old", b"1");
            b.put(Ns::Keys, b"gone", b"x");
            store.commit(b).await.unwrap();
        }
        // The index as a crash would leave it: durable up to the clean close above.
        copy_tree(live.path(), crashed.path());
        {
            let store = Store::open(live.path(), 1 << 20).unwrap();
            for i in 0..100u32 {
                let mut b = Batch::new();
                b.put(Ns::Keys, &i.to_be_bytes(), b"new");
                b.put(Ns::Keys, b"old", &i.to_be_bytes());
                b.remove(Ns::Keys, b"gone");
                store.commit(b).await.unwrap();
            }
            // The log as the crash leaves it: everything acknowledged is in it.
            copy_tree(&live.path().join("wal"), &crashed.path().join("wal"));
        }
        let store = Store::open(crashed.path(), 1 << 20).unwrap();
        assert_eq!(
            store.get(Ns::Keys, b"old").unwrap().unwrap(),
            99u32.to_be_bytes()
        );
        assert!(store.get(Ns::Keys, b"gone").unwrap().is_none());
        assert_eq!(store.iter_after(Ns::Keys, None).count(), 101);
    }

    /// Enough writes to fill several log segments: rotation, the spare, retiring segments
    /// after checkpoints, and a reopen that sees every write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_rotates_and_retires_segments_without_losing_writes() {
        let dir = tempfile::tempdir().unwrap();
        let value = vec![0x5a; 8 << 10];
        let n = 3 * group_commit::SEGMENT_BYTES / value.len() + 10;
        {
            let store = Store::open(dir.path(), 1 << 22).unwrap();
            let mut tasks = Vec::new();
            for t in 0..8usize {
                let (store, value) = (store.clone(), value.clone());
                tasks.push(tokio::spawn(async move {
                    for i in (t..n).step_by(8) {
                        let mut b = Batch::new();
                        b.put(Ns::Keys, &(i as u64).to_be_bytes(), &value);
                        store.commit(b).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            // Retired segments are deleted once a checkpoint covers them.
            let mut segments = usize::MAX;
            for _ in 0..100 {
                segments = wal::list_segments(&dir.path().join("wal")).unwrap().len();
                if segments <= 2 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert!(segments <= 2, "{segments} segments left");
            assert_eq!(store.iter_after(Ns::Keys, None).count(), n);
        }
        let store = Store::open(dir.path(), 1 << 22).unwrap();
        assert_eq!(store.iter_after(Ns::Keys, None).count(), n);
        assert_eq!(
            store
                .get(Ns::Keys, &(n as u64 - 1).to_be_bytes())
                .unwrap()
                .unwrap(),
            value
        );
    }

    /// The KEK rotation's pattern: rewrite every record in chunks while iterating, then close.
    /// The close must finish (a sled flush once hung here after such a rewrite).
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

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dst = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &dst);
            } else {
                std::fs::copy(e.path(), dst).unwrap();
            }
        }
    }
}
