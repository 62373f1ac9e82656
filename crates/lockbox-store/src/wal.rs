//! The write-ahead log: what makes an acknowledged write survive power loss.
//!
//! sled 0.34 makes its own log durable with `sync_file_range`, which neither flushes the
//! device's write cache nor the file's size; and it writes its log twice per atomic batch. So
//! the store keeps its own log: every batch is one record appended to a segment file, and a
//! group of records is made durable with one `fdatasync`. sled is then only the index, updated
//! after the log is durable and flushed at checkpoints (after which old segments are deleted).
//!
//! Segment files live in `<db>/wal/`, named by the sequence number of their first record
//! (`00000000000000000042.wal`, 20 digits so names sort numerically). A segment is:
//!
//! ```text
//! magic    8 bytes  "LBWAL\x00\x00\x01"
//! record*  u32 LE payload length ‖ u32 LE CRC-32 of (seq ‖ payload) ‖ u64 LE seq ‖ payload
//! payload  op*      op = 0x01 ‖ u32 LE key len ‖ key ‖ u32 LE value len ‖ value   (put)
//!                        0x00 ‖ u32 LE key len ‖ key                               (remove)
//! ```
//!
//! Segments are preallocated (written with zeros and synced before use): overwriting allocated
//! blocks lets `fdatasync` skip the file-size journal commit an append needs (~140 µs instead
//! of ~185 µs per sync here). A segment's records therefore end at the first all-zero record
//! header (no real header is all zeros: sequence numbers start at 1, so the CRC is never 0 with
//! a zero length) or at the end of the file.
//!
//! Sequence numbers are consecutive across segments. On open, a record that is cut short or
//! fails its CRC in the *last* segment is a write the crash interrupted (never acknowledged: its
//! `fdatasync` did not return): replay stops there, logs it, and the segment is discarded once
//! its good records are in the flushed index. Anywhere else it is corruption and the store
//! refuses to open, naming the file and offset.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::{Result, StoreError};

/// First bytes of every segment: the format and its version.
pub(crate) const MAGIC: &[u8; 8] = b"LBWAL\x00\x00\x01";
/// Length of the record header: payload length, CRC, sequence number.
const HEADER: usize = 4 + 4 + 8;
/// A record larger than this is not one we wrote (the largest batch, a KEK rotation chunk, is
/// a few MiB): refuse it rather than allocate what a corrupt length says.
const MAX_RECORD: usize = 1 << 30;

/// One change in a batch: a put (`Some`) or a removal (`None`) of a full database key.
pub(crate) type Op = (Vec<u8>, Option<Vec<u8>>);

/// Appends one record for `ops` with sequence number `seq` to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, seq: u64, ops: &[Op]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    for (key, value) in ops {
        match value {
            Some(v) => {
                buf.push(1);
                put_bytes(buf, key);
                put_bytes(buf, v);
            }
            None => {
                buf.push(0);
                put_bytes(buf, key);
            }
        }
    }
    let payload_len = buf.len() - start - HEADER;
    buf[start + 8..start + 16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&buf[start + 8..]);
    // Lengths are bounded by what a batch can hold in memory; a batch over 4 GiB cannot be
    // built by the daemon (KEK rotation works in chunks).
    let len = u32::try_from(payload_len).unwrap_or(u32::MAX);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The encoded length of a record for `ops` (header included), to reserve room up front.
pub(crate) fn record_len(ops: &[Op]) -> usize {
    HEADER
        + ops
            .iter()
            .map(|(k, v)| 1 + 4 + k.len() + v.as_ref().map_or(0, |v| 4 + v.len()))
            .sum::<usize>()
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// Why a record could not be read.
#[derive(Debug)]
enum Bad {
    /// The file ends inside the record.
    Short,
    /// The record's bytes do not match its CRC, or its payload does not parse.
    Damaged(&'static str),
}

/// Parses the record at the start of `bytes`: its sequence number, its ops and its length.
fn decode_record(bytes: &[u8]) -> std::result::Result<(u64, Vec<Op>, usize), Bad> {
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
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&bytes[8..16]);
    let seq = u64::from_le_bytes(seq_bytes);
    let mut payload = &bytes[HEADER..total];
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = payload.split_first() {
        let (key, rest) = take_bytes(rest).ok_or(Bad::Damaged("op key cut short"))?;
        let (value, rest) = match tag {
            1 => {
                let (v, rest) = take_bytes(rest).ok_or(Bad::Damaged("op value cut short"))?;
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

fn take_bytes(b: &[u8]) -> Option<(&[u8], &[u8])> {
    if b.len() < 4 {
        return None;
    }
    let len = u32::from_le_bytes(word(&b[0..4])) as usize;
    let rest = &b[4..];
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// The path of the segment whose first record is `first_seq`.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

/// The segments in `dir`, oldest first, with the sequence number their name gives.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(file_err(dir))? {
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

/// What replaying the log found.
pub(crate) struct Replay {
    /// Every record after the last checkpoint, in order.
    pub records: Vec<(u64, Vec<Op>)>,
    /// The sequence number the next record must take.
    pub next_seq: u64,
    /// The segments read (all can be deleted once the records are in a flushed index).
    pub segments: Vec<PathBuf>,
}

/// Reads every segment in `dir`, checking magic, CRCs and sequence continuity. A damaged or
/// short record at the very end of the last segment is cut off (and logged); elsewhere it is
/// an error naming the file and offset.
pub(crate) fn replay(dir: &Path) -> Result<Replay> {
    let segments = list_segments(dir)?;
    let mut records = Vec::new();
    let mut expected: Option<u64> = None;
    let mut next_seq = 1;
    let count = segments.len();
    for (i, (first, path)) in segments.iter().enumerate() {
        let last_segment = i + 1 == count;
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(file_err(path))?;
        let corrupt = |offset: usize, why: &str| StoreError::Corrupt {
            path: path.display().to_string(),
            offset: offset as u64,
            why: why.to_string(),
        };
        if bytes.len() < MAGIC.len() {
            if last_segment {
                // Created but its header never reached the disk: an empty segment.
                tracing::warn!(file = %path.display(), "write-ahead log segment without a header; treating it as empty");
                next_seq = next_seq.max(*first);
                continue;
            }
            return Err(corrupt(0, "segment shorter than its header"));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt(
                0,
                "not a lockbox write-ahead log segment (bad magic)",
            ));
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
                break; // the unused, preallocated end of the segment
            }
            match decode_record(rest) {
                Ok((seq, ops, len)) => {
                    if seq != seq_here {
                        return Err(corrupt(
                            offset,
                            &format!("record {seq} where record {seq_here} was expected"),
                        ));
                    }
                    records.push((seq, ops));
                    offset += len;
                    seq_here += 1;
                }
                Err(bad) if last_segment => {
                    let why = match bad {
                        Bad::Short => "cut short",
                        Bad::Damaged(w) => w,
                    };
                    tracing::warn!(
                        file = %path.display(),
                        offset,
                        reason = why,
                        "write-ahead log ends in an unfinished write (never acknowledged); ignoring the rest of the segment"
                    );
                    break;
                }
                Err(Bad::Short) => return Err(corrupt(offset, "record cut short")),
                Err(Bad::Damaged(why)) => return Err(corrupt(offset, why)),
            }
        }
        expected = Some(seq_here);
        next_seq = next_seq.max(seq_here);
    }
    Ok(Replay {
        records,
        next_seq,
        segments: segments.into_iter().map(|(_, p)| p).collect(),
    })
}

/// Writes a zero-filled, synced file of `len` bytes starting with the segment magic at the
/// checkpointer's private temporary name: the committer renames it into place when it needs a
/// new segment, so that rotating costs a rename, not megabytes of writes. Only the
/// checkpointer thread calls this; the committer never writes to that name.
pub(crate) fn prepare_spare(dir: &Path, len: usize) -> Result<PathBuf> {
    let path = dir.join(SPARE);
    prepare_file(&path, len)?;
    Ok(path)
}

fn prepare_file(path: &Path, len: usize) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(file_err(path))?;
    // Written one 4 KiB page at a time on purpose: the page cache sizes its folios by the
    // write, and a large folio is written back whole. Preallocated in 1 MiB writes, every
    // later ~1 KiB log append made `fdatasync` write 1 MiB (measured: 1,024 KiB written per
    // sync and 400 µs, against 5 KiB and 170 µs with 4 KiB pages).
    let mut block = vec![0u8; 4096];
    block[..MAGIC.len()].copy_from_slice(MAGIC);
    let total = len.max(MAGIC.len());
    let mut written = 0;
    while written < total {
        let n = block.len().min(total - written);
        f.write_all(&block[..n]).map_err(file_err(path))?;
        if written == 0 {
            block[..MAGIC.len()].fill(0);
        }
        written += n;
    }
    f.sync_all().map_err(file_err(path))
}

/// Name of the prepared, not yet used segment (not a `.wal` name, so replay ignores it).
pub(crate) const SPARE: &str = "spare.wal.tmp";

/// Makes the segment whose first record is `first_seq` and opens it for writing just after the
/// magic: by renaming a prepared `spare` into place, or, when none is ready, by preallocating
/// it at its final name (slower: the committer waits for the zero-fill). Either way the
/// directory is synced before any record is written to it.
pub(crate) fn install_segment(
    dir: &Path,
    spare: Option<&Path>,
    first_seq: u64,
    len: usize,
) -> Result<File> {
    let path = segment_path(dir, first_seq);
    match spare {
        Some(spare) => fs::rename(spare, &path).map_err(file_err(&path))?,
        None => prepare_file(&path, len)?,
    }
    sync_dir(dir)?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(file_err(&path))?;
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(MAGIC.len() as u64))
        .map_err(file_err(&path))?;
    Ok(f)
}

/// fsyncs a directory, so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err(dir))
}

pub(crate) fn file_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::File {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ops() -> Vec<Op> {
        vec![
            (b"kone".to_vec(), Some(b"value".to_vec())),
            (b"ktwo".to_vec(), None),
            (b"e".to_vec(), Some(Vec::new())),
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, &ops());
        encode_record(&mut buf, 8, &[]);
        let (seq, got, len) = decode_record(&buf).unwrap();
        assert_eq!((seq, got), (7, ops()));
        let (seq, got, len2) = decode_record(&buf[len..]).unwrap();
        assert_eq!((seq, got.len()), (8, 0));
        assert_eq!(len + len2, buf.len());
        // The length reserved up front is exactly what is written.
        assert_eq!(record_len(&ops()), len);
        assert_eq!(record_len(&[]), len2);
    }

    #[test]
    fn every_flipped_bit_or_cut_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 3, &ops());
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert!(decode_record(&b).is_err(), "flip at {i}:{bit} accepted");
            }
        }
        for cut in 0..buf.len() {
            assert!(matches!(
                decode_record(&buf[..cut]),
                Err(Bad::Short) | Err(Bad::Damaged(_))
            ));
        }
    }

    fn write_segment(dir: &Path, first: u64, records: &[(u64, Vec<Op>)]) -> PathBuf {
        let mut f = install_segment(dir, None, first, 4096).unwrap();
        let mut buf = Vec::new();
        for (seq, ops) in records {
            encode_record(&mut buf, *seq, ops);
        }
        f.write_all(&buf).unwrap();
        segment_path(dir, first)
    }

    #[test]
    fn replay_reads_segments_in_order_and_stops_at_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &[(1, ops()), (2, ops())]);
        let last = write_segment(dir.path(), 3, &[(3, ops())]);
        // A torn write at the end of the last segment: half of record 4, then whatever the
        // disk had (here the preallocated zeros).
        let mut tail = Vec::new();
        encode_record(&mut tail, 4, &ops());
        let mut bytes = fs::read(&last).unwrap();
        let mut r3 = Vec::new();
        encode_record(&mut r3, 3, &ops());
        let at = MAGIC.len() + r3.len();
        bytes[at..at + tail.len() / 2].copy_from_slice(&tail[..tail.len() / 2]);
        fs::write(&last, &bytes).unwrap();
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.records.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(r.next_seq, 4);
        assert_eq!(r.segments.len(), 2);
    }

    #[test]
    fn an_unused_preallocated_segment_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &[(1, ops())]);
        write_segment(dir.path(), 2, &[]);
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.next_seq, 2);
    }

    #[test]
    fn damage_before_the_tail_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_segment(dir.path(), 1, &[(1, ops()), (2, ops())]);
        write_segment(dir.path(), 3, &[(3, ops())]);
        let mut bytes = fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        fs::write(&first, &bytes).unwrap();
        let err = replay(dir.path()).err().unwrap().to_string();
        assert!(err.contains("CRC mismatch"), "{err}");
        assert!(err.contains("00000000000000000001.wal"), "{err}");
    }

    #[test]
    fn a_gap_in_sequence_numbers_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &[(1, ops())]);
        write_segment(dir.path(), 3, &[(3, ops())]);
        let err = replay(dir.path()).err().unwrap().to_string();
        assert!(err.contains("expected 2"), "{err}");
    }
}
