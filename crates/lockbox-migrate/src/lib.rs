//! Moving a lockbox data dir from the store of earlier releases (sled 0.34 and lockbox's own
//! write-ahead log) to the current one (fjall), once, before the new lockboxd starts.
//!
//! The records are sealed bytes under the same keys in both layouts, so migration copies them
//! as they are: nothing is decrypted, the keyring is not touched, no secret is needed. The
//! steps, each safe to interrupt (running the command again resumes):
//!
//! 1. read the old store (sled's records with the log replayed over them) from `db/`;
//! 2. write every record into a new store at `db.migrating/`, synced;
//! 3. reopen it and compare every record with what was read;
//! 4. rename `db/` to `db.sled-old/` and `db.migrating/` to `db/`, and sync the data dir.
//!
//! The old store stays in `db.sled-old/` until the operator deletes it. sled is linked only
//! into this crate: the daemon never loads it.

pub mod legacy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lockbox_store::{Batch, Ns, Store};

/// Why a migration stopped. Nothing is lost in any of these: the old store is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Reading the old store failed.
    #[error("reading the old store in {path}: {source}")]
    Legacy {
        /// The old store's directory.
        path: String,
        /// What failed.
        source: legacy::LegacyError,
    },
    /// Writing or reading the new store failed.
    #[error("writing the new store in {path}: {source}")]
    Store {
        /// The new store's directory.
        path: String,
        /// What failed.
        source: lockbox_store::StoreError,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    File {
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The data dir is not in a state this tool knows how to migrate.
    #[error("{0}")]
    State(String),
    /// The copy did not read back as written (the old store is kept; nothing switched).
    #[error("the new store does not match the old one: {0}")]
    Mismatch(String),
}

type Result<T> = std::result::Result<T, MigrateError>;

/// What a migration did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Records copied, by kind, in [`Ns::ALL`] order.
    pub records: Vec<(Ns, usize)>,
    /// Where the old store was kept.
    pub kept: Option<PathBuf>,
    /// True when the data dir already held the current store (nothing to do).
    pub already_current: bool,
}

fn file_err(path: &Path) -> impl Fn(std::io::Error) -> MigrateError + '_ {
    move |source| MigrateError::File {
        path: path.display().to_string(),
        source,
    }
}

fn store_err(path: &Path) -> impl Fn(lockbox_store::StoreError) -> MigrateError + '_ {
    move |source| MigrateError::Store {
        path: path.display().to_string(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err(dir))
}

/// Records per batch written to the new store.
const CHUNK: usize = 10_000;

/// Migrates the data dir `data_dir` (the `data_dir` of lockboxd's config). lockboxd must be
/// stopped (the old store's lock refuses a running daemon's directory).
pub fn migrate(data_dir: &Path) -> Result<Report> {
    let db = data_dir.join("db");
    let next = data_dir.join("db.migrating");
    let kept = data_dir.join("db.sled-old");
    // An interrupted switch (step 4): the copy was verified before the first rename.
    if !db.exists() && kept.exists() && next.exists() {
        return switch(data_dir, &db, &next, &kept, Vec::new());
    }
    if !legacy::is_legacy(&db) {
        if db.exists() {
            return Ok(Report {
                already_current: true,
                ..Report::default()
            });
        }
        return Err(MigrateError::State(format!(
            "{} has no store (is data_dir right? run `lockboxd init` for a new lockbox)",
            data_dir.display()
        )));
    }
    if kept.exists() {
        return Err(MigrateError::State(format!(
            "{} exists from an earlier migration: move it away first",
            kept.display()
        )));
    }
    let old = legacy::read_all(&db).map_err(|source| MigrateError::Legacy {
        path: db.display().to_string(),
        source,
    })?;
    let mut by_kind: BTreeMap<u8, Ns> = BTreeMap::new();
    for ns in Ns::ALL {
        by_kind.insert(ns.prefix(), ns);
    }
    if let Some((k, _)) = old.iter().find(|(k, _)| !by_kind.contains_key(&k[0])) {
        return Err(MigrateError::State(format!(
            "the old store holds a record of unknown kind {:?}: refusing to drop it",
            k[0] as char
        )));
    }
    if next.exists() {
        std::fs::remove_dir_all(&next).map_err(file_err(&next))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(file_err(&next))?;
    {
        let store = Store::open(&next, 64 << 20).map_err(store_err(&next))?;
        let records: Vec<_> = old.iter().collect();
        for chunk in records.chunks(CHUNK) {
            let mut b = Batch::new();
            for (k, v) in chunk {
                b.put(by_kind[&k[0]], &k[1..], v);
            }
            rt.block_on(store.commit(b)).map_err(store_err(&next))?;
        }
    }
    // Read back through a fresh open: what the daemon will see.
    let mut counts = Vec::new();
    {
        let store = Store::open(&next, 64 << 20).map_err(store_err(&next))?;
        let mut copied = BTreeMap::new();
        for ns in Ns::ALL {
            let mut n = 0;
            for r in store.iter_after(ns, None) {
                let (id, v) = r.map_err(store_err(&next))?;
                let mut k = vec![ns.prefix()];
                k.extend_from_slice(&id);
                copied.insert(k, v);
                n += 1;
            }
            counts.push((ns, n));
        }
        if copied != old {
            return Err(MigrateError::Mismatch(format!(
                "{} records read back, {} in the old store",
                copied.len(),
                old.len()
            )));
        }
    }
    switch(data_dir, &db, &next, &kept, counts)
}

fn switch(
    data_dir: &Path,
    db: &Path,
    next: &Path,
    kept: &Path,
    records: Vec<(Ns, usize)>,
) -> Result<Report> {
    if db.exists() {
        std::fs::rename(db, kept).map_err(file_err(db))?;
        sync_dir(data_dir)?;
    }
    std::fs::rename(next, db).map_err(file_err(next))?;
    sync_dir(data_dir)?;
    Ok(Report {
        records,
        kept: Some(kept.to_path_buf()),
        already_current: false,
    })
}
