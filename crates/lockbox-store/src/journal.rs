//! A strict check of fjall's journal before fjall reads it.
//!
//! fjall replays its journal at open and, on anything it cannot decode, truncates the file
//! there and carries on: one flipped bit in a length or tag in the middle of a journal would
//! drop that batch *and every acknowledged batch after it*, silently (fjall 3.1's
//! `JournalReader`; its only recovery mode is "tolerate a corrupt tail"). For a key custody
//! system that is the worst failure: a destroyed key can come back, a created one vanish. So
//! the store walks every journal file itself first and decides:
//!
//! - every batch complete and its checksum right: fjall may open it;
//! - the *last* journal ends in an unfinished write (the file ends inside a batch, or in bytes
//!   that are not a batch, and no complete batch follows): that write was never acknowledged
//!   (the sync that would have acknowledged it did not return), so it is cut off here and
//!   fjall sees a clean journal;
//! - anything else is corruption: the store refuses to open and names the file and offset;
//!   so is a journal missing between two others (fjall deletes them oldest first).
//!
//! ## The format (fjall 3.1, `src/journal/entry.rs`; little-endian)
//!
//! ```text
//! Start  = 0x01 u32(item_count) u64(seqno)                                  13 bytes
//! Item   = 0x02 u8(value_type) u8(compression) u64(keyspace) u16(key_len)
//!          u32(value_len) u32(stored_len) key[key_len] value[stored_len]
//! Clear  = 0x04 u64(keyspace)                                                9 bytes
//! End    = 0x03 u64(checksum) "FJL" 0x03                                    13 bytes
//! batch  = Start (Item|Clear){item_count} End
//! ```
//!
//! `checksum` is XXH3-64 over the encoded Item and Clear entries of the batch, exactly as
//! written (the store writes the journal uncompressed, so stored = encoded). The Start entry
//! is not covered by the checksum: its count is checked by the structure, its seqno by order
//! (strictly increasing across the whole journal).
//!
//! A write that was acknowledged ends with its End entry, so a file whose last 13 bytes are a
//! well-formed End entry, or whose damaged last batch still has a checksum that matches its
//! items, held a *finished* write: damage there is corruption, not a torn tail.
//!
//! `fjall` is pinned (`=3.1.x` in Cargo.toml) because this reads its format; the bit-flip tests
//! below and in `tests/` fail if the format changes under us.

use std::path::{Path, PathBuf};

use crate::{Result, StoreError};

const TAG_START: u8 = 1;
const TAG_ITEM: u8 = 2;
const TAG_END: u8 = 3;
const TAG_CLEAR: u8 = 4;
const MAGIC: [u8; 4] = [b'F', b'J', b'L', 3];
const START_LEN: usize = 13;
const END_LEN: usize = 13;
const CLEAR_LEN: usize = 9;
const ITEM_HEADER: usize = 1 + 1 + 1 + 8 + 2 + 4 + 4;
/// fjall's value types: value, tombstone, weak tombstone (indirection is never journaled).
const VALUE_TYPES: [u8; 3] = [0, 1, 2];

/// What [`check`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Complete batches across all journal files.
    pub(crate) batches: u64,
    /// Bytes cut off the end of the last journal (an unfinished, unacknowledged write).
    pub(crate) torn_tail: u64,
}

/// Checks every `*.jnl` file in `dir` (fjall's database directory) in journal order, cutting
/// off an unfinished last write, and refusing any other damage.
pub(crate) fn check(dir: &Path) -> Result<Report> {
    let mut journals = list(dir)?;
    journals.sort();
    // fjall numbers journals in order and deletes them oldest first, once their data is in
    // tables: the ones present are consecutive. A gap is a journal lost with its batches.
    for pair in journals.windows(2) {
        let ((a, _), (b, _)) = (&pair[0], &pair[1]);
        if *b != a + 1 {
            return Err(StoreError::Corrupt {
                path: dir.join(format!("{}.jnl", a + 1)).display().to_string(),
                offset: 0,
                why: format!(
                    "journal {} is missing between {a} and {b}: its batches are lost",
                    a + 1
                ),
            });
        }
    }
    let mut report = Report::default();
    let mut last_seqno: Option<u64> = None;
    let count = journals.len();
    for (i, (_, path)) in journals.into_iter().enumerate() {
        let bytes = std::fs::read(&path).map_err(|source| StoreError::File {
            path: path.display().to_string(),
            source,
        })?;
        let is_last = i + 1 == count;
        let scan = scan(&bytes, &mut last_seqno);
        report.batches += scan.batches;
        // fjall preallocates each journal (a sparse 64 MiB): zeros after the last batch are
        // space not yet written, not damage.
        let damage = scan
            .damage
            .filter(|d| bytes[d.offset..].iter().any(|&b| b != 0));
        if let Some(damage) = damage {
            let corrupt = |why: String| StoreError::Corrupt {
                path: path.display().to_string(),
                offset: damage.offset as u64,
                why,
            };
            if !is_last {
                // A journal is synced whole when fjall seals it; only the active one may end
                // in an unfinished write.
                return Err(corrupt(format!("{} (in a sealed journal)", damage.why)));
            }
            if let Some(finished) = finished_after(&bytes, damage.offset, last_seqno) {
                return Err(corrupt(format!("{} ({finished})", damage.why)));
            }
            let cut = (bytes.len() - damage.offset) as u64;
            truncate(&path, damage.offset as u64)?;
            tracing::warn!(
                journal = %path.display(),
                offset = damage.offset,
                bytes = cut,
                "cut an unfinished last write off the journal (it was never acknowledged)"
            );
            report.torn_tail = cut;
        }
    }
    Ok(report)
}

/// The active journal: the one with the highest number (fjall numbers them in order).
pub(crate) fn newest(dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(list(dir)?.into_iter().max())
}

fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::File {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::File {
            path: dir.display().to_string(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".jnl") else {
            continue;
        };
        let id = stem.parse::<u64>().map_err(|_| StoreError::Corrupt {
            path: entry.path().display().to_string(),
            offset: 0,
            why: "a journal file whose name is not a number".into(),
        })?;
        out.push((id, entry.path()));
    }
    Ok(out)
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let err = |source| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err)?;
    f.set_len(len).map_err(err)?;
    f.sync_all().map_err(err)
}

struct Damage {
    offset: usize,
    why: String,
}

struct Scan {
    batches: u64,
    damage: Option<Damage>,
}

/// Walks complete batches from the start of a journal, stopping at the first that is not one.
fn scan(bytes: &[u8], last_seqno: &mut Option<u64>) -> Scan {
    let mut pos = 0;
    let mut batches = 0;
    while pos < bytes.len() {
        match batch_at(bytes, pos) {
            Ok(b) => {
                if last_seqno.is_some_and(|last| b.seqno <= last) {
                    return Scan {
                        batches,
                        damage: Some(Damage {
                            offset: pos,
                            why: format!(
                                "batch sequence number {} does not follow {}",
                                b.seqno,
                                last_seqno.unwrap_or_default()
                            ),
                        }),
                    };
                }
                *last_seqno = Some(b.seqno);
                batches += 1;
                pos = b.end;
            }
            Err(why) => {
                return Scan {
                    batches,
                    damage: Some(Damage { offset: pos, why }),
                };
            }
        }
    }
    Scan {
        batches,
        damage: None,
    }
}

/// Why the bytes from `from` on are not just an unfinished write, if they are not: a complete
/// batch further on, a file ending in a well-formed End entry, or a damaged batch whose
/// checksum still matches its items (so it was written whole).
fn finished_after(bytes: &[u8], from: usize, last_seqno: Option<u64>) -> Option<String> {
    for pos in from + 1..bytes.len() {
        if bytes[pos] == TAG_START
            && let Ok(b) = batch_at(bytes, pos)
            && last_seqno.is_none_or(|last| b.seqno > last)
        {
            return Some(format!("a complete batch follows at byte {pos}"));
        }
    }
    // Preallocated space (zeros) is not part of what was written.
    let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if written >= from + START_LEN + END_LEN {
        let tail = &bytes[written - END_LEN..written];
        if tail[0] == TAG_END && tail[9..] == MAGIC {
            return Some("the journal ends in a finished write".into());
        }
    }
    if let Some(items_end) = items_of_damaged_batch(bytes, from)
        && written >= items_end + END_LEN
    {
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[from + START_LEN..items_end]);
        if bytes[items_end + 1..items_end + 9] == sum.to_le_bytes() {
            return Some("its checksum matches: the write was finished".into());
        }
    }
    None
}

/// Where the items of the batch starting at `pos` end, if its Start and items parse (its End
/// may be damaged or missing).
fn items_of_damaged_batch(bytes: &[u8], pos: usize) -> Option<usize> {
    let start = bytes.get(pos..pos + START_LEN)?;
    if start[0] != TAG_START {
        return None;
    }
    let count = u32::from_le_bytes(start[1..5].try_into().ok()?);
    let mut at = pos + START_LEN;
    for _ in 0..count {
        at = entry_end(bytes, at).ok()?;
    }
    Some(at)
}

struct Parsed {
    seqno: u64,
    end: usize,
}

/// Parses one complete, well-formed batch at `pos`, or says what is wrong with it.
fn batch_at(bytes: &[u8], pos: usize) -> std::result::Result<Parsed, String> {
    let start = bytes
        .get(pos..pos + START_LEN)
        .ok_or("the file ends inside a batch start")?;
    if start[0] != TAG_START {
        return Err(format!("expected a batch start, found tag {}", start[0]));
    }
    let count = u32::from_le_bytes(take4(&start[1..5]));
    let seqno = u64::from_le_bytes(take8(&start[5..13]));
    if count == 0 {
        return Err("a batch of no items".into());
    }
    let items_start = pos + START_LEN;
    let mut at = items_start;
    for _ in 0..count {
        at = entry_end(bytes, at)?;
    }
    let end = bytes
        .get(at..at + END_LEN)
        .ok_or("the file ends before the batch's end marker")?;
    if end[0] != TAG_END {
        return Err(format!("expected a batch end marker, found tag {}", end[0]));
    }
    if end[9..] != MAGIC {
        return Err("bad magic in a batch end marker".into());
    }
    let want = u64::from_le_bytes(take8(&end[1..9]));
    let got = xxhash_rust::xxh3::xxh3_64(&bytes[items_start..at]);
    if want != got {
        return Err("batch checksum mismatch".into());
    }
    Ok(Parsed {
        seqno,
        end: at + END_LEN,
    })
}

/// The end of the Item or Clear entry at `pos`.
fn entry_end(bytes: &[u8], pos: usize) -> std::result::Result<usize, String> {
    let tag = *bytes.get(pos).ok_or("the file ends inside a batch")?;
    match tag {
        TAG_CLEAR => {
            let end = pos + CLEAR_LEN;
            if end > bytes.len() {
                return Err("the file ends inside an entry".into());
            }
            Ok(end)
        }
        TAG_ITEM => {
            let h = bytes
                .get(pos..pos + ITEM_HEADER)
                .ok_or("the file ends inside an entry")?;
            if !VALUE_TYPES.contains(&h[1]) {
                return Err(format!("unknown value type {}", h[1]));
            }
            if h[2] != 0 {
                return Err(format!(
                    "compression {} in a journal written uncompressed",
                    h[2]
                ));
            }
            let key_len = u16::from_le_bytes([h[11], h[12]]) as usize;
            let value_len = u32::from_le_bytes(take4(&h[13..17])) as usize;
            let stored_len = u32::from_le_bytes(take4(&h[17..21])) as usize;
            if value_len != stored_len {
                return Err("stored length differs from value length (uncompressed)".into());
            }
            let end = pos
                .checked_add(ITEM_HEADER + key_len)
                .and_then(|e| e.checked_add(stored_len))
                .ok_or("an entry length overflows")?;
            if end > bytes.len() {
                return Err("the file ends inside an entry".into());
            }
            Ok(end)
        }
        other => Err(format!("expected an item, found tag {other}")),
    }
}

fn take4(b: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(&b[..4]);
    out
}

fn take8(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[..8]);
    out
}

/// The length of a journal's complete batches (tests trim fjall's preallocated space with it).
#[cfg(test)]
pub(crate) fn written_len(bytes: &[u8]) -> usize {
    let s = scan(bytes, &mut None);
    s.damage.map_or(bytes.len(), |d| d.offset)
}
