//! A real journal, damaged at every position: the store either refuses to open (naming the
//! journal and offset) or opens with exactly the acknowledged writes. Never a silent loss.

use super::*;
use std::path::Path;

/// What a crash leaves: the directory as it is on disk while the store is open, after every
/// write below was acknowledged. Returns the copy, the journal's path inside it, the records
/// acknowledged before the last batch, all of them, and the journal's length before the last
/// batch.
struct Crashed {
    dir: tempfile::TempDir,
    journal: std::path::PathBuf,
    before_last: BTreeMap<Vec<u8>, Vec<u8>>,
    all: BTreeMap<Vec<u8>, Vec<u8>>,
    last_batch_at: u64,
}

fn crashed() -> Crashed {
    let live = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = Store::open(live.path(), 1 << 20).unwrap();
    let mut model = BTreeMap::new();
    let mut before_last = BTreeMap::new();
    let mut last_batch_at = 0;
    for i in 0..10u32 {
        if i == 9 {
            before_last = model.clone();
            let bytes = std::fs::read(journal_in(live.path())).unwrap();
            last_batch_at = crate::journal::written_len(&bytes) as u64;
        }
        let mut b = Batch::new();
        let id = format!("key-{}", i % 7).into_bytes();
        let value = format!("sealed-record-{i:04}-xxxxxxxxxxxx").into_bytes();
        b.put(Ns::Keys, &id, &value);
        model.insert(id, value);
        if i % 3 == 2 {
            let gone = format!("key-{}", (i + 3) % 7).into_bytes();
            b.remove(Ns::Keys, &gone);
            model.remove(&gone);
        }
        b.put(Ns::Audit, &u64::from(i).to_be_bytes(), b"audit");
        rt.block_on(store.commit(b)).unwrap();
    }
    let copy = tempfile::tempdir().unwrap();
    copy_tree(live.path(), copy.path());
    drop(store);
    let journal = journal_in(copy.path());
    // Without fjall's preallocated zeros (64 MiB), so that each damaged copy below is small.
    let bytes = std::fs::read(&journal).unwrap();
    let written = crate::journal::written_len(&bytes);
    assert!(bytes[written..].iter().all(|&b| b == 0));
    std::fs::write(&journal, &bytes[..written]).unwrap();
    Crashed {
        dir: copy,
        journal,
        before_last,
        all: model,
        last_batch_at,
    }
}

fn journal_in(dir: &Path) -> std::path::PathBuf {
    let journals: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .collect();
    assert_eq!(journals.len(), 1, "{journals:?}");
    journals[0].clone()
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

fn keys(store: &Store) -> BTreeMap<Vec<u8>, Vec<u8>> {
    store
        .iter_after(Ns::Keys, None)
        .map(|r| r.unwrap())
        .collect()
}

/// Opens a copy of `c` with its journal changed by `damage`.
fn open_damaged(
    c: &Crashed,
    damage: impl FnOnce(&mut Vec<u8>),
) -> (tempfile::TempDir, Result<Store>) {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(c.dir.path(), dir.path());
    let journal = dir.path().join(c.journal.file_name().unwrap());
    let mut bytes = std::fs::read(&journal).unwrap();
    damage(&mut bytes);
    std::fs::write(&journal, &bytes).unwrap();
    let res = Store::open(dir.path(), 1 << 20);
    (dir, res)
}

#[test]
fn the_undamaged_crash_copy_opens_with_every_acknowledged_write() {
    let c = crashed();
    let (_d, store) = open_damaged(&c, |_| {});
    assert_eq!(keys(&store.unwrap()), c.all);
}

#[test]
fn a_bit_flipped_anywhere_in_the_journal_refuses_the_open_or_changes_nothing() {
    let c = crashed();
    let len = std::fs::metadata(&c.journal).unwrap().len() as usize;
    assert!(len > 500, "journal of {len} bytes");
    let (mut refused, mut exact) = (0, 0);
    for pos in 0..len {
        let bit = 1u8 << (pos % 8);
        let (_d, res) = open_damaged(&c, |b| b[pos] ^= bit);
        match res {
            Err(StoreError::Corrupt { path, offset, .. }) => {
                assert!(path.ends_with(".jnl"), "{path}");
                // The batch found damaged: the one flipped, or (a flipped sequence number)
                // the next, whose order no longer holds.
                assert!(
                    (offset as usize) < len,
                    "offset {offset} of a {len}-byte journal"
                );
                refused += 1;
            }
            Err(e) => panic!("flip at byte {pos}: refused without naming the damage: {e}"),
            Ok(store) => {
                assert_eq!(
                    keys(&store),
                    c.all,
                    "flip at byte {pos}: opened with other data"
                );
                exact += 1;
            }
        }
    }
    // Nearly every byte is covered by a check; the few that are not change nothing fjall
    // reads back (e.g. a batch's sequence number raised while order still holds).
    assert!(
        refused > len * 9 / 10,
        "refused {refused} of {len} (exact {exact})"
    );
}

#[test]
fn an_unfinished_last_write_is_cut_off_and_nothing_else() {
    let c = crashed();
    let len = std::fs::metadata(&c.journal).unwrap().len();
    for cut in c.last_batch_at..len {
        let (dir, res) = open_damaged(&c, |b| b.truncate(cut as usize));
        let store = res.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(keys(&store), c.before_last, "cut at {cut}");
        drop(store);
        // The cut is made for good: the next open sees a clean journal.
        assert_eq!(
            keys(&Store::open(dir.path(), 1 << 20).unwrap()),
            c.before_last
        );
    }
}

#[test]
fn zeros_after_the_last_write_are_space_not_yet_written() {
    // fjall preallocates its journal; a crash can also leave a grown file whose new blocks
    // were never written.
    let c = crashed();
    let (_d, res) = open_damaged(&c, |b| b.extend_from_slice(&[0u8; 1 << 20]));
    assert_eq!(keys(&res.unwrap()), c.all);
    // A torn last write in front of the zeros is still cut off, and only it.
    let (_d, res) = open_damaged(&c, |b| {
        b.truncate(c.last_batch_at as usize + 30);
        b.extend_from_slice(&[0u8; 1 << 20]);
    });
    assert_eq!(keys(&res.unwrap()), c.before_last);
    // Damage in front of the zeros is still damage.
    let (_d, res) = open_damaged(&c, |b| {
        b[40] ^= 0x10;
        b.extend_from_slice(&[0u8; 1 << 20]);
    });
    assert!(matches!(res, Err(StoreError::Corrupt { .. })), "{res:?}");
}

#[test]
fn a_finished_last_write_with_a_bad_checksum_is_corruption_not_a_torn_tail() {
    let c = crashed();
    let len = std::fs::metadata(&c.journal).unwrap().len() as usize;
    // A byte inside the last batch's items: its End marker is intact, so it was written whole.
    let (_d, res) = open_damaged(&c, |b| b[len - 20] ^= 0x40);
    assert!(matches!(res, Err(StoreError::Corrupt { .. })), "{res:?}");
}

#[test]
fn a_journal_missing_between_two_others_refuses_the_open() {
    // A real journal split at a batch boundary into journals 1 and 3: every batch is whole and
    // in sequence, but journal 2 is gone.
    let c = crashed();
    let bytes = std::fs::read(&c.journal).unwrap();
    let cut = c.last_batch_at as usize;
    let dir = tempfile::tempdir().unwrap();
    copy_tree(c.dir.path(), dir.path());
    std::fs::remove_file(dir.path().join(c.journal.file_name().unwrap())).unwrap();
    std::fs::write(dir.path().join("1.jnl"), &bytes[..cut]).unwrap();
    std::fs::write(dir.path().join("3.jnl"), &bytes[cut..]).unwrap();
    match Store::open(dir.path(), 1 << 20) {
        Err(StoreError::Corrupt { path, why, .. }) => {
            assert!(path.ends_with("2.jnl"), "{path}");
            assert!(why.contains("missing"), "{why}");
        }
        other => panic!("opened with a journal missing: {other:?}"),
    }
    // The same two parts as consecutive journals open with every write.
    std::fs::rename(dir.path().join("3.jnl"), dir.path().join("2.jnl")).unwrap();
    assert_eq!(keys(&Store::open(dir.path(), 1 << 20).unwrap()), c.all);
}
