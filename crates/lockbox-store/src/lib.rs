//! Durable storage of sealed lockbox records, on fjall (an LSM-tree engine with its own
//! journal).
//!
//! This is the only crate that names the engine. It stores opaque bytes that the daemon has
//! already sealed: it never sees key material. Every mutation is one atomic batch
//! ([`Store::apply`]: written to fjall's journal and memtable in one step, visible at once to
//! readers), and nothing is acknowledged before it is durable: [`Store::durable`] returns only
//! once the journal holding the batch has been `fdatasync`ed. Concurrent writers share syncs
//! (group commit): one thread syncs whatever has been applied since the last sync, so under
//! load one ~300 µs sync covers dozens of writes.
//!
//! Failure is fail-stop. Once a journal write or sync fails, what the page cache holds can no
//! longer be trusted to reach the disk (Linux may drop dirty pages after a failed
//! `fdatasync`), so the store refuses every later read and write: a batch whose sync failed is
//! never seen by anyone. The daemon then stops; the next open replays what the disk holds.
//!
//! Before fjall opens a directory, [`journal::check`] walks its journal strictly: only an
//! unfinished last write may be cut off; any other damage refuses the open and names the file
//! and offset (fjall itself would truncate there, silently dropping later batches).

mod atomic_file;
mod journal;

/// Runs the strict journal check that [`Store::open`] runs before the engine opens `dir`,
/// alone: for tools and the fuzz targets (`fuzz/`). Returns how many complete batches the
/// journals hold, or the damage found (file and offset); it may cut an unfinished last write,
/// as `open` does.
pub fn check_journals(dir: &Path) -> Result<u64> {
    journal::check(dir).map(|r| r.batches)
}

pub use atomic_file::write_file_atomic;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::watch;

/// Errors from the storage layer. Messages say what failed, never what the value was.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (missing, locked by another process, or unreadable).
    #[error("cannot open the database at {path}: {why}")]
    Open {
        /// The directory we tried to open.
        path: String,
        /// What the engine said.
        why: String,
    },
    /// A read or write failed in the engine.
    #[error("database error: {0}")]
    Db(String),
    /// A journal write or sync failed, so the writes it covered may not be durable; the store
    /// serves nothing more (reads included) until it is reopened.
    #[error("the store failed and serves nothing until lockboxd restarts: {0}")]
    Failed(String),
    /// A file outside the database could not be written.
    #[error("cannot write {path}: {source}")]
    File {
        /// The file we tried to write.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The journal is damaged somewhere other than an unfinished last write: acknowledged
    /// writes may be lost, so the store refuses to open rather than guess.
    #[error("journal {path} is corrupt at byte {offset}: {why}")]
    Corrupt {
        /// The journal file.
        path: String,
        /// Where the bad batch starts.
        offset: u64,
        /// What check failed.
        why: String,
    },
    /// The directory holds a store written by an earlier lockboxd (sled 0.34 with its own
    /// write-ahead log), which this build does not read.
    #[error(
        "{path} holds a store written by an earlier lockboxd (sled); migrate it first: \
         lockbox-migrate --data-dir {data_dir} (docs/operations.md, \"Upgrading the store\")"
    )]
    OldFormat {
        /// The old store's directory.
        path: String,
        /// The data dir holding it.
        data_dir: String,
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

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The kinds of record the lockbox keeps. Each lives under its own one-byte prefix in a single
/// keyspace, so that one batch changes several kinds atomically and every scan is a range.
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
    /// Every kind, for tools that copy a whole store (migration).
    pub const ALL: [Ns; 6] = [
        Ns::Keys,
        Ns::Materials,
        Ns::MaterialRefs,
        Ns::Audit,
        Ns::Node,
        Ns::Grants,
    ];

    /// The byte that starts every record of this kind in the single keyspace. Public for
    /// tools that read the records of an earlier store layout, which used the same prefixes.
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

/// One change: a full key and its new value (`None`: removed).
type Op = (Vec<u8>, Option<Vec<u8>>);

/// One atomic set of changes. Built by the caller, applied whole or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
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

/// Where the sync thread and the waiters meet.
#[derive(Debug, Clone, Default)]
struct SyncState {
    /// Newest generation applied (written to the journal buffer and the memtable).
    applied: u64,
    /// Newest generation known durable.
    durable: u64,
    /// Set once a journal write or sync failed.
    failed: Option<Arc<str>>,
    shutdown: bool,
}

/// The lockbox database. Cheap to clone; the sync thread stops and the engine closes when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    records: fjall::Keyspace,
    /// Serializes journal appends with the generation counter, so that generation order is
    /// journal order and "durable up to g" means every batch numbered ≤ g is on disk.
    commit: Mutex<()>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

/// Test hook, from `LOCKBOX_STORE_FAULT` at open: faults of the journal sync that crash and
/// fault tests inject into real daemons (the disk cannot be made to fail on demand here).
#[derive(Debug, Clone)]
enum Fault {
    /// `sync-delay-ms:N`: each sync waits N ms first, holding writes applied but not durable.
    Delay(std::time::Duration),
    /// `sync-error-when:PATH`: a sync fails (as an `fdatasync` returning EIO would) while PATH
    /// exists; the journal buffer is then never written.
    ErrorWhen(PathBuf),
}

impl Fault {
    fn from_env() -> Option<Fault> {
        let v = std::env::var("LOCKBOX_STORE_FAULT").ok()?;
        let fault = if let Some(ms) = v.strip_prefix("sync-delay-ms:") {
            Fault::Delay(std::time::Duration::from_millis(ms.parse().ok()?))
        } else if let Some(path) = v.strip_prefix("sync-error-when:") {
            Fault::ErrorWhen(PathBuf::from(path))
        } else {
            return None;
        };
        tracing::warn!(
            ?fault,
            "LOCKBOX_STORE_FAULT is set: journal syncs are made to fail or wait"
        );
        Some(fault)
    }

    /// Applies the fault before a sync: `Err` stands for a failed sync.
    fn before_sync(&self) -> std::result::Result<(), String> {
        match self {
            Fault::Delay(d) => {
                std::thread::sleep(*d);
                Ok(())
            }
            Fault::ErrorWhen(path) if path.exists() => {
                Err("Input/output error (os error 5) (injected by LOCKBOX_STORE_FAULT)".into())
            }
            Fault::ErrorWhen(_) => Ok(()),
        }
    }
}

/// What the sync thread shares with the store.
struct Shared {
    fault: Option<Fault>,
    /// The database directory, where fjall keeps its journals.
    dir: PathBuf,
    db: fjall::Database,
    sync: Mutex<SyncState>,
    /// Wakes the sync thread (work to do, or shutdown) and blocking waiters (progress).
    sync_cv: Condvar,
    /// The same progress for async waiters.
    progress: watch::Sender<SyncState>,
    /// Fast check for readers: set with `SyncState::failed`.
    failed: AtomicBool,
    /// Told of every successful sync (metrics); set at most once, after open.
    observer: std::sync::OnceLock<SyncObserver>,
    /// Which records have a write applied but not yet durable ([`Store::unsynced`]).
    pending: Mutex<Pending>,
}

/// Batches with more changes than this are not indexed record by record in [`Pending`]: a
/// transfer's batch of 100,000 keys would cost more to index than its readers save.
const PENDING_INDEX_MAX_OPS: usize = 256;

/// The writes applied but not yet durable, by record: lets an answer derived from reading a
/// few records wait for the writes behind those records only, instead of for everything any
/// writer applied meanwhile (which under load cost every get one more sync: BENCHMARKS.md).
#[derive(Debug, Default)]
struct Pending {
    /// Hash of a record's full key → the newest generation that wrote it. A hash collision
    /// only makes a reader wait for an unrelated write: slower, never wrong.
    by_key: std::collections::HashMap<u64, u64>,
    /// Newest generation of a batch too large to index: every record counts as written by it
    /// until it is durable.
    unindexed: u64,
}

impl Pending {
    fn key_hash(key: &[u8]) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
    }

    /// Forgets what `durable` covers.
    fn synced(&mut self, durable: u64) {
        self.by_key.retain(|_, g| *g > durable);
        if self.unindexed <= durable {
            self.unindexed = 0;
        }
    }
}

/// What one sync of the journal did: how long the `fdatasync` (and the write before it) took
/// and how many committed batches it made durable at once (group commit's batch size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// Wall time of the journal write and `fdatasync`.
    pub duration: std::time::Duration,
    /// Committed batches this sync made durable.
    pub batches: u64,
}

/// A function told of each sync, on the sync thread: it must be quick and must not block
/// (updating a histogram is fine).
pub type SyncObserver = Arc<dyn Fn(SyncStats) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.shared.sync).shutdown = true;
        self.shared.sync_cv.notify_all();
        if let Some(t) = lock(&self.syncer).take() {
            let _ = t.join();
        }
        // No memtable flush here: the journal is durable, and the next start replays it
        // (at most one memtable's worth) faster than this flush took at close (1.7 s at a
        // million keys: BENCHMARKS.md). A clean stop stays well under a second.
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Journal size after which fjall flushes memtables and retires journals: bounds what a start
/// after a crash replays (about 100,000 creates' worth).
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// A record's id (without its kind's prefix) and value.
pub type Record = (Vec<u8>, Vec<u8>);

impl Store {
    /// Opens (or creates) the database in `dir`. `cache_bytes` bounds the engine's block
    /// cache. The journal is checked strictly first (see the crate doc); a directory written by
    /// the earlier sled-based store is refused with the command that migrates it.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        // sled's config file: fjall writes none by that name.
        if dir.join("conf").is_file() {
            return Err(StoreError::OldFormat {
                path: dir.display().to_string(),
                data_dir: dir.parent().unwrap_or(Path::new(".")).display().to_string(),
            });
        }
        let report = journal::check(dir)?;
        if report.torn_tail > 0 {
            tracing::info!(
                bytes = report.torn_tail,
                "an unfinished write was discarded"
            );
        }
        let open_err = |e: fjall::Error| StoreError::Open {
            path: dir.display().to_string(),
            why: e.to_string(),
        };
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .journal_compression(fjall::CompressionType::None)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .cache_size(cache_bytes)
            .worker_threads(1)
            .open()
            .map_err(open_err)?;
        let records = db
            .keyspace("records", fjall::KeyspaceCreateOptions::default)
            .map_err(open_err)?;
        // A keyspace created just now is recorded in fjall's journal: make that durable too.
        db.persist(fjall::PersistMode::SyncAll).map_err(open_err)?;
        let (progress, _) = watch::channel(SyncState::default());
        let shared = Arc::new(Shared {
            fault: Fault::from_env(),
            dir: dir.to_path_buf(),
            db,
            sync: Mutex::new(SyncState::default()),
            sync_cv: Condvar::new(),
            progress,
            failed: AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
            pending: Mutex::new(Pending::default()),
        });
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            records,
            commit: Mutex::new(()),
            syncer: Mutex::new(None),
            dir: dir.to_path_buf(),
        });
        let handle = std::thread::Builder::new()
            .name("lockbox-sync".into())
            .spawn(move || syncer(shared))
            .map_err(|source| StoreError::Thread {
                what: "sync",
                source,
            })?;
        *lock(&inner.syncer) = Some(handle);
        Ok(Store { inner })
    }

    /// Has `observer` told of every later successful sync (for the daemon's metrics: sync
    /// latency and group-commit batch size are what the disk and the write load look like
    /// from here). Only the first observer is kept; a second call is ignored and says so.
    pub fn observe_syncs(&self, observer: SyncObserver) -> bool {
        self.inner.shared.observer.set(observer).is_ok()
    }

    fn check(&self) -> Result<()> {
        if self.inner.shared.failed.load(Ordering::SeqCst) {
            let why = lock(&self.inner.shared.sync)
                .failed
                .clone()
                .unwrap_or_else(|| "unknown".into());
            return Err(StoreError::Failed(why.to_string()));
        }
        Ok(())
    }

    /// Why the store stopped serving, once a journal write or sync has failed (for status
    /// and health: a store that cannot write is never reported healthy).
    pub fn failure(&self) -> Option<String> {
        lock(&self.inner.shared.sync)
            .failed
            .as_ref()
            .map(|s| s.to_string())
    }

    /// Resolves once the store has failed, with why (never, while it works): lets the daemon
    /// stop for a restart instead of running half-alive.
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.shared.progress.subscribe();
        loop {
            if let Some(why) = &rx.borrow_and_update().failed {
                return why.to_string();
            }
            if rx.changed().await.is_err() {
                return "the store closed".into();
            }
        }
    }

    /// Reads one record.
    pub fn get(&self, ns: Ns, id: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check()?;
        Ok(self.inner.records.get(ns.key(id))?.map(|v| v.to_vec()))
    }

    /// The generation that must be durable before an answer derived from reading one record
    /// (found or not) may be given: the newest write of it not yet durable, or 0 when there is
    /// none. Call it after the read. A reader that saw a write also finds it here, because a
    /// batch is indexed before it becomes visible and forgotten only once durable; it is
    /// cheaper than [`Store::settled`], which also waits for every unrelated write applied
    /// meanwhile.
    pub fn unsynced(&self, ns: Ns, id: &[u8]) -> u64 {
        let hash = Pending::key_hash(&ns.key(id));
        let p = lock(&self.inner.shared.pending);
        p.by_key.get(&hash).copied().unwrap_or(0).max(p.unindexed)
    }

    /// Records of one kind whose id starts with `prefix`, in id order.
    pub fn scan_prefix(
        &self,
        ns: Ns,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<Record>> + use<> {
        let start = ns.key(prefix);
        let end = prefix_end(&start);
        self.range(Bound::Included(start), end, false)
    }

    /// Records of one kind with id strictly greater than `after` (or all, when `None`), in id
    /// order: the basis of paged listing.
    pub fn iter_after(
        &self,
        ns: Ns,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<Record>> + use<> {
        let start = match after {
            Some(a) => Bound::Excluded(ns.key(a)),
            None => Bound::Included(vec![ns.prefix()]),
        };
        self.range(start, Bound::Excluded(vec![ns.prefix() + 1]), false)
    }

    /// The ids of one kind's records whose value satisfies `wanted`, in id order, without
    /// copying any value (a KEK rotation looks for records still sealed under the old KEK by a
    /// few header bytes of each). Like the iterators, not a snapshot across concurrent
    /// writes: the caller holds off writers it must not miss.
    pub fn ids_where(&self, ns: Ns, wanted: impl Fn(&[u8]) -> bool) -> Result<Vec<Vec<u8>>> {
        self.check()?;
        let mut out = Vec::new();
        let range = (
            Bound::Included(vec![ns.prefix()]),
            Bound::Excluded(vec![ns.prefix() + 1]),
        );
        for guard in self.inner.records.range::<Vec<u8>, _>(range) {
            let (k, v) = guard.into_inner()?;
            if wanted(&v) {
                out.push(k[1..].to_vec());
            }
        }
        Ok(out)
    }

    /// Records of one kind, newest id first.
    pub fn iter_rev(&self, ns: Ns) -> impl Iterator<Item = Result<Record>> + use<> {
        self.range(
            Bound::Included(vec![ns.prefix()]),
            Bound::Excluded(vec![ns.prefix() + 1]),
            true,
        )
    }

    /// The record with the greatest id of one kind (the audit chain's head).
    pub fn last(&self, ns: Ns) -> Result<Option<Record>> {
        self.iter_rev(ns).next().transpose()
    }

    /// A range of records, ids without their kind's prefix. Read as it goes: not a snapshot
    /// across concurrent writes.
    fn range(
        &self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        rev: bool,
    ) -> Box<dyn Iterator<Item = Result<Record>> + Send> {
        if let Err(e) = self.check() {
            return Box::new(std::iter::once(Err(e)));
        }
        let iter = self.inner.records.range::<Vec<u8>, _>((start, end));
        let owned = |g: fjall::Guard| {
            g.into_inner()
                .map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        };
        if rev {
            Box::new(iter.rev().map(owned))
        } else {
            Box::new(iter.map(owned))
        }
    }

    /// Applies a batch: it is written to the journal and becomes visible to readers
    /// atomically, but is not yet durable. Returns the write's generation, to pass to
    /// [`Store::durable`] before acknowledging it. Callers that must order batches (the audit
    /// chain) serialize their `apply` calls and wait for durability outside their lock, so
    /// syncs are shared.
    pub fn apply(&self, batch: Batch) -> Result<u64> {
        self.check()?;
        let inner = &self.inner;
        let _order = lock(&inner.commit);
        // Index the batch before it becomes visible (see `unsynced`). Under `commit`, only
        // this call moves `applied`, so the batch's generation is known now.
        let generation = lock(&inner.shared.sync).applied + 1;
        {
            let mut p = lock(&inner.shared.pending);
            if batch.ops.len() > PENDING_INDEX_MAX_OPS {
                p.unindexed = generation;
            } else {
                for (k, _) in &batch.ops {
                    p.by_key.insert(Pending::key_hash(k), generation);
                }
            }
        }
        let mut wb = inner.shared.db.batch();
        for (k, v) in batch.ops {
            match v {
                Some(v) => wb.insert(&inner.records, k, v),
                None => wb.remove(&inner.records, k),
            }
        }
        if let Err(e) = wb.commit() {
            // fjall poisons itself on a failed journal write; so do we.
            let why = format!("journal write failed: {e}");
            self.fail(&why);
            return Err(StoreError::Failed(why));
        }
        lock(&inner.shared.sync).applied = generation;
        inner.shared.sync_cv.notify_all();
        Ok(generation)
    }

    fn fail(&self, why: &str) {
        fail(&self.inner.shared, why);
    }

    /// Waits until every write up to `generation` is durable. A write that reached the disk
    /// before a later failure is still reported durable.
    pub async fn durable(&self, generation: u64) -> Result<()> {
        let mut rx = self.inner.shared.progress.subscribe();
        loop {
            {
                let s = rx.borrow_and_update();
                if s.durable >= generation {
                    return Ok(());
                }
                if let Some(why) = &s.failed {
                    return Err(StoreError::Failed(why.to_string()));
                }
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Failed("the store closed".into()));
            }
        }
    }

    /// Waits until everything applied so far is durable. An answer derived from a read
    /// ("already created", "already received") waits for this first, so it never claims
    /// more durability than the data it read has.
    pub async fn settled(&self) -> Result<()> {
        let applied = lock(&self.inner.shared.sync).applied;
        self.settled_through(applied).await
    }

    /// Waits until every write up to `generation` is durable, then checks the store still
    /// serves: what an answer that needs only those writes waits for ([`Store::unsynced`]).
    pub async fn settled_through(&self, generation: u64) -> Result<()> {
        self.durable(generation).await?;
        self.check()
    }

    /// Applies a batch and waits until it is durable.
    pub async fn commit(&self, batch: Batch) -> Result<()> {
        let generation = self.apply(batch)?;
        self.durable(generation).await
    }

    /// Waits until everything applied so far is durable, blocking the calling thread
    /// (start-up and shutdown paths).
    pub fn flush_blocking(&self) -> Result<()> {
        let shared = &self.inner.shared;
        let mut s = lock(&shared.sync);
        let target = s.applied;
        loop {
            if s.durable >= target {
                return Ok(());
            }
            if let Some(why) = &s.failed {
                return Err(StoreError::Failed(why.to_string()));
            }
            s = shared.sync_cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn fail(inner: &Shared, why: &str) {
    let mut s = lock(&inner.sync);
    if s.failed.is_none() {
        tracing::error!(error = why, "the store failed: it serves nothing more");
        s.failed = Some(why.into());
    }
    inner.failed.store(true, Ordering::SeqCst);
    let snapshot = s.clone();
    drop(s);
    inner.sync_cv.notify_all();
    inner.progress.send_replace(snapshot);
}

/// The group commit: syncs the journal whenever something was applied since the last sync,
/// then reports the newest generation the sync covered. Writers that arrive during a sync are
/// covered by the next one.
///
/// fjall's own `persist(SyncData)` holds its journal lock through the `fdatasync`, and every
/// append waits for that lock: each sync then covered one or two writes and durable creates at
/// concurrency 64 fell to half the sled store's (BENCHMARKS.md). So the sync is done in two
/// steps: `persist(Buffer)` hands the journal's buffered bytes to the kernel under fjall's lock
/// (one `write`), then this thread `fdatasync`s the active journal file through its own
/// descriptor, outside the lock, while writers go on appending. That covers every batch applied
/// before the first step: they are in the file that was active then, or in journals fjall
/// sealed since, which it syncs (`SyncAll`) before sealing.
fn syncer(shared: Arc<Shared>) {
    let mut journal: Option<(u64, std::fs::File)> = None;
    loop {
        let target = {
            let mut s = lock(&shared.sync);
            loop {
                if s.failed.is_some() {
                    return;
                }
                if s.applied > s.durable {
                    break s.applied;
                }
                if s.shutdown {
                    return;
                }
                s = shared.sync_cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        };
        let started = std::time::Instant::now();
        let synced = match shared.fault.as_ref().map(Fault::before_sync) {
            Some(Err(injected)) => Err(injected),
            _ => sync_journal(&shared, &mut journal),
        };
        match synced {
            Ok(()) => {
                let duration = started.elapsed();
                let mut s = lock(&shared.sync);
                let batches = target.saturating_sub(s.durable);
                s.durable = s.durable.max(target);
                let snapshot = s.clone();
                drop(s);
                lock(&shared.pending).synced(snapshot.durable);
                shared.sync_cv.notify_all();
                shared.progress.send_replace(snapshot);
                if let Some(observe) = shared.observer.get() {
                    observe(SyncStats { duration, batches });
                }
            }
            Err(e) => {
                fail(&shared, &format!("journal sync failed: {e}"));
                return;
            }
        }
    }
}

/// One sync of the journal (see [`syncer`]): the buffered bytes to the kernel, then
/// `fdatasync` of the active journal, whose descriptor is kept until fjall starts a new one.
fn sync_journal(
    shared: &Shared,
    journal: &mut Option<(u64, std::fs::File)>,
) -> std::result::Result<(), String> {
    shared
        .db
        .persist(fjall::PersistMode::Buffer)
        .map_err(|e| e.to_string())?;
    let newest = journal::newest(&shared.dir).map_err(|e| e.to_string())?;
    let Some((id, path)) = newest else {
        return Err("fjall's active journal is missing".into());
    };
    if journal.as_ref().is_none_or(|(open, _)| *open != id) {
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        *journal = Some((id, file));
    }
    match journal {
        Some((_, file)) => file
            .sync_data()
            .map_err(|e| format!("fdatasync of {}: {e}", path.display())),
        None => Err("no journal to sync".into()),
    }
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

#[cfg(test)]
mod tests;
