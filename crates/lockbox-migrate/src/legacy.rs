//! Reading (and, for tests, writing) the store of lockboxd releases up to 0.1 "session 7":
//! sled 0.34.7 as the index, and lockbox's own write-ahead log in `<db>/wal/` holding every
//! acknowledged batch that had not yet reached a sled checkpoint.
//!
//! The state of such a store is sled's records with the log's batches replayed over them, in
//! order. This module computes that state without changing the old directory.
//!
//! Log segments, as the earlier `lockbox-store/src/wal.rs` wrote them (`{seq:020}.wal`):
//!
//! ```text
//! magic    8 bytes  "LBWAL\x00\x00\x01"
//! record*  u32 LE payload length ‖ u32 LE CRC-32 of (seq ‖ payload) ‖ u64 LE seq ‖ payload
//! payload  op*      op = 0x01 ‖ u32 LE key len ‖ key ‖ u32 LE value len ‖ value   (put)
//!                        0x00 ‖ u32 LE key len ‖ key                               (remove)
//! ```
//!
//! Segments were preallocated with zeros: a segment's records end at the first all-zero rest.
//! Sequence numbers are consecutive across segments. A record cut short at the very end of the
//! last segment is an unfinished write (never acknowledged) and is left out; any other damage,
//! including a damaged record followed by valid ones, refuses the migration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors reading or writing the old store.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// sled refused to open or read.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The log is damaged other than by an unfinished last write.
    #[error("write-ahead log {path} is corrupt at byte {offset}: {why}")]
    Corrupt {
        /// The segment.
        path: String,
        /// Where the bad record starts.
        offset: usize,
        /// What check failed.
        why: String,
    },
}

type Result<T> = std::result::Result<T, LegacyError>;

const MAGIC: &[u8; 8] = b"LBWAL\x00\x00\x01";
const HEADER: usize = 16;
const MAX_RECORD: usize = 1 << 30;

/// One change of a batch: a full key (kind prefix and id) and its value (`None`: removed).
pub type Op = (Vec<u8>, Option<Vec<u8>>);

/// True when `db` holds the old store: sled's `conf` file, which fjall never writes (the log
/// directory may be absent: the earliest releases had none).
pub fn is_legacy(db: &Path) -> bool {
    db.join("conf").is_file()
}

fn sled_config(db: &Path) -> sled::Config {
    sled::Config::new()
        .path(db)
        .cache_capacity(64 << 20)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
}

fn file_err(path: &Path) -> impl Fn(std::io::Error) -> LegacyError + '_ {
    move |source| LegacyError::File {
        path: path.display().to_string(),
        source,
    }
}

/// Every record of the old store in `db`, full keys in order: sled's, with the log replayed
/// over them. No record in the directory is changed (sled may rewrite its own recovery files
/// as it opens; the log is only read).
pub fn read_all(db: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let tree = sled_config(db).open()?;
    let mut records = BTreeMap::new();
    for r in tree.iter() {
        let (k, v) = r?;
        records.insert(k.to_vec(), v.to_vec());
    }
    drop(tree);
    for ops in replay(&db.join("wal"))? {
        for (k, v) in ops {
            match v {
                Some(v) => records.insert(k, v),
                None => records.remove(&k),
            };
        }
    }
    Ok(records)
}

fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(file_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(file_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(".wal") else {
            continue;
        };
        let Ok(first) = stem.parse::<u64>() else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// The batches of every segment in `dir`, in order (see the module doc for what is refused).
pub fn replay(dir: &Path) -> Result<Vec<Vec<Op>>> {
    let segments = segments(dir)?;
    let mut batches = Vec::new();
    let mut expected: Option<u64> = None;
    let count = segments.len();
    for (i, (first, path)) in segments.iter().enumerate() {
        let last_segment = i + 1 == count;
        let bytes = std::fs::read(path).map_err(file_err(path))?;
        let corrupt = |offset: usize, why: &str| LegacyError::Corrupt {
            path: path.display().to_string(),
            offset,
            why: why.to_string(),
        };
        if bytes.len() < MAGIC.len() {
            if last_segment {
                continue; // created, its header never written: empty
            }
            return Err(corrupt(0, "segment shorter than its header"));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt(0, "not a lockbox write-ahead log segment"));
        }
        if let Some(e) = expected
            && *first != e
        {
            return Err(corrupt(
                0,
                &format!("segment starts at record {first}, expected {e}"),
            ));
        }
        let mut offset = MAGIC.len();
        let mut seq_here = *first;
        while offset < bytes.len() {
            let rest = &bytes[offset..];
            if rest.iter().all(|b| *b == 0) {
                break;
            }
            match decode(rest) {
                Ok((seq, ops, len)) => {
                    if seq != seq_here {
                        return Err(corrupt(
                            offset,
                            &format!("record {seq} where record {seq_here} was expected"),
                        ));
                    }
                    batches.push(ops);
                    offset += len;
                    seq_here += 1;
                }
                Err(Bad::Short) if last_segment && !valid_record_after(rest) => break,
                Err(Bad::Short) => return Err(corrupt(offset, "record cut short")),
                Err(Bad::Damaged(_)) if last_segment && !valid_record_after(rest) => break,
                Err(Bad::Damaged(why)) => return Err(corrupt(offset, why)),
            }
        }
        expected = Some(seq_here);
    }
    Ok(batches)
}

/// Whether a whole, valid record starts anywhere after the first byte of `rest`: then the
/// damage is not an unfinished last write.
fn valid_record_after(rest: &[u8]) -> bool {
    (1..rest.len()).any(|i| matches!(decode(&rest[i..]), Ok((seq, _, _)) if seq > 0))
}

enum Bad {
    Short,
    Damaged(&'static str),
}

fn decode(bytes: &[u8]) -> std::result::Result<(u64, Vec<Op>, usize), Bad> {
    if bytes.len() < HEADER {
        return Err(Bad::Short);
    }
    let len = u32::from_le_bytes(word(&bytes[0..4])) as usize;
    let crc = u32::from_le_bytes(word(&bytes[4..8]));
    if len > MAX_RECORD {
        return Err(Bad::Damaged("record length out of range"));
    }
    let total = HEADER + len;
    if bytes.len() < total {
        return Err(Bad::Short);
    }
    if crc32fast::hash(&bytes[8..total]) != crc {
        return Err(Bad::Damaged("CRC mismatch"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    let seq = u64::from_le_bytes(seq);
    let mut payload = &bytes[HEADER..total];
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = payload.split_first() {
        let (key, rest) = take(rest).ok_or(Bad::Damaged("op key cut short"))?;
        let (value, rest) = match tag {
            1 => {
                let (v, rest) = take(rest).ok_or(Bad::Damaged("op value cut short"))?;
                (Some(v.to_vec()), rest)
            }
            0 => (None, rest),
            _ => return Err(Bad::Damaged("unknown op")),
        };
        ops.push((key.to_vec(), value));
        payload = rest;
    }
    Ok((seq, ops, total))
}

fn word(b: &[u8]) -> [u8; 4] {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    w
}

fn take(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(word(b.get(0..4)?)) as usize;
    let rest = &b[4..];
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// Writes an old-format store to `db`, as the earlier lockboxd left it: `in_sled` flushed into
/// sled, then `in_log` as records of one log segment not yet checkpointed. Test support: it
/// lets tests make the data dirs this crate migrates from a real lockboxd's records.
pub fn write(db: &Path, in_sled: &BTreeMap<Vec<u8>, Vec<u8>>, in_log: &[Vec<Op>]) -> Result<()> {
    let tree = sled_config(db).open()?;
    for (k, v) in in_sled {
        tree.insert(k.as_slice(), v.as_slice())?;
    }
    tree.flush()?;
    drop(tree);
    let wal = db.join("wal");
    std::fs::create_dir_all(&wal).map_err(file_err(&wal))?;
    let mut buf = MAGIC.to_vec();
    for (i, ops) in in_log.iter().enumerate() {
        let start = buf.len();
        buf.extend_from_slice(&[0u8; HEADER]);
        for (k, v) in ops {
            buf.push(u8::from(v.is_some()));
            put(&mut buf, k);
            if let Some(v) = v {
                put(&mut buf, v);
            }
        }
        let payload = u32::try_from(buf.len() - start - HEADER).unwrap_or(u32::MAX);
        buf[start + 8..start + 16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        let crc = crc32fast::hash(&buf[start + 8..]);
        buf[start..start + 4].copy_from_slice(&payload.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    buf.resize(buf.len() + 4096, 0); // the preallocated rest
    let seg = wal.join(format!("{:020}.wal", 1));
    std::fs::write(&seg, &buf).map_err(file_err(&seg))
}

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
}
