//! Durable storage of sealed lockbox records.
//!
//! This is the only crate that names sled. It stores opaque bytes that the daemon has already
//! sealed: it never sees key material. Every mutation is one atomic batch, and nothing is
//! acknowledged before it is flushed to disk: [`Store::commit`] returns only once the batch is
//! durable. Concurrent writers share flushes (group commit): a flush costs ~150 µs, so one flush
//! per writer would cap a busy lockbox near 6,000 writes/s.

mod atomic_file;
mod group_commit;

pub use atomic_file::write_file_atomic;

use std::path::Path;
use std::sync::Arc;

use group_commit::GroupCommit;

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
    /// A flush failed, so the write it covered may not be durable.
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
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The kinds of record the lockbox keeps. Each lives under its own one-byte prefix in a single
/// sled tree, so that one batch can change several kinds atomically (`apply_batch` is atomic
/// within one tree, and cheaper than a multi-tree transaction).
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
    fn prefix(self) -> u8 {
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
    inner: sled::Batch,
    len: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a record.
    pub fn put(&mut self, ns: Ns, id: &[u8], value: &[u8]) {
        self.inner.insert(ns.key(id), value);
        self.len += 1;
    }

    /// Removes a record (no error when it is absent).
    pub fn remove(&mut self, ns: Ns, id: &[u8]) {
        self.inner.remove(ns.key(id));
        self.len += 1;
    }

    /// Number of changes in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The lockbox database: one sled tree of prefixed records plus a group-commit flusher.
#[derive(Clone)]
pub struct Store {
    tree: sled::Db,
    group: Arc<GroupCommit>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database in `dir`. `cache_bytes` bounds sled's page cache, which
    /// otherwise defaults to 1 GiB and dominates the daemon's memory on a large lockbox.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // We flush explicitly before every acknowledgement; the periodic flush would only
            // add background I/O.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|source| StoreError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        let group = Arc::new(GroupCommit::new(db.clone()));
        Ok(Store { tree: db, group })
    }

    /// Reads one record.
    pub fn get(&self, ns: Ns, id: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(ns.key(id))?.map(|v| v.to_vec()))
    }

    /// True when the record exists.
    pub fn contains(&self, ns: Ns, id: &[u8]) -> Result<bool> {
        Ok(self.tree.contains_key(ns.key(id))?)
    }

    /// Records of one kind whose id starts with `prefix`, in id order.
    pub fn scan_prefix(
        &self,
        ns: Ns,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + use<> {
        self.tree
            .scan_prefix(ns.key(prefix))
            .map(|r| r.map(strip).map_err(StoreError::from))
    }

    /// Records of one kind with id strictly greater than `after` (or all, when `None`), in id
    /// order: the basis of paged listing.
    pub fn iter_after(
        &self,
        ns: Ns,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + use<> {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(ns.key(a)),
            None => Bound::Included(vec![ns.prefix()]),
        };
        let end = Bound::Excluded(vec![ns.prefix() + 1]);
        self.tree
            .range::<Vec<u8>, _>((start, end))
            .map(|r| r.map(strip).map_err(StoreError::from))
    }

    /// Records of one kind, newest id first.
    pub fn iter_rev(&self, ns: Ns) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + use<> {
        self.tree
            .scan_prefix([ns.prefix()])
            .rev()
            .map(|r| r.map(strip).map_err(StoreError::from))
    }

    /// The record with the greatest id of one kind (the audit chain's head).
    pub fn last(&self, ns: Ns) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.iter_rev(ns).next().transpose()
    }

    /// Applies a batch atomically, in memory and in sled's log, but not yet durably. Returns
    /// the write's generation, to pass to [`Store::durable`] before acknowledging it.
    /// Callers that must order batches (the audit chain) serialize their `apply` calls and
    /// wait for durability outside their lock, so flushes are shared.
    pub fn apply(&self, batch: Batch) -> Result<u64> {
        self.tree.apply_batch(batch.inner)?;
        Ok(self.group.written())
    }

    /// Waits until every write up to `generation` is on disk.
    pub async fn durable(&self, generation: u64) -> Result<()> {
        self.group.wait_durable(generation).await
    }

    /// Applies a batch and waits until it is durable.
    pub async fn commit(&self, batch: Batch) -> Result<()> {
        let generation = self.apply(batch)?;
        self.durable(generation).await
    }

    /// Flushes everything now, blocking the calling thread (start-up and shutdown paths).
    pub fn flush_blocking(&self) -> Result<()> {
        self.tree.flush()?;
        Ok(())
    }

    /// Bytes sled occupies on disk (for status and metrics).
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.tree.size_on_disk()?)
    }
}

fn strip((k, v): (sled::IVec, sled::IVec)) -> (Vec<u8>, Vec<u8>) {
    (k[1..].to_vec(), v.to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
}
