//! Replacing a small file atomically: the keyring must never be seen half-written, or a crash
//! during a KEK rotation could leave a lockbox that cannot unseal.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::{Result, StoreError};

/// Writes `bytes` to `path` with `mode`, atomically: a temporary file in the same directory is
/// written and fsynced, renamed over `path`, and the directory is fsynced so the rename itself
/// survives power loss.
///
/// The temporary file is always a new inode made by this call (`O_CREAT | O_EXCL`, after
/// removing whatever a crash or anyone else left under its name): a symlink planted there is
/// removed, never followed, and a file planted there (with a looser mode, or held open by
/// someone to read what is written) is never written into. Calls in one process are
/// serialized, so two writers of one path (two checkpoints' watermarks, say) cannot rename
/// each other's half-written temporary file into place.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let err = |source| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_file_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring");
        write_file_atomic(&p, b"one", 0o600).unwrap();
        write_file_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Whatever was left under the temporary name (a symlink to another file, a file with a
    /// looser mode) is replaced, not written through: the other file is untouched and the
    /// result has the mode asked for. Fails with a plain create-and-truncate open.
    #[test]
    fn never_writes_through_what_was_planted_at_the_temporary_name() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let p = dir.path().join("keyring");
        let tmp = dir.path().join(".keyring.tmp");
        symlink(&victim, &tmp).unwrap();
        write_file_atomic(&p, b"sealed", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&p).unwrap(), b"sealed");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());

        // A planted world-readable file, still open for reading by whoever planted it.
        fs::write(&tmp, b"").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        let spy = File::open(&tmp).unwrap();
        write_file_atomic(&p, b"sealed again", 0o600).unwrap();
        assert_eq!(
            spy.metadata().unwrap().len(),
            0,
            "written into the planted file"
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(&p).unwrap(), b"sealed again");
    }

    /// Writers of one path in parallel: the file always holds one writer's whole bytes.
    #[test]
    fn parallel_writers_of_one_path_never_leave_a_mix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watermark");
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        write_file_atomic(&p, &vec![i; 64 << 10], 0o600).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = fs::read(&p).unwrap();
        assert_eq!(got.len(), 64 << 10);
        assert!(got.iter().all(|b| *b == got[0]), "a mix of two writers");
    }
}
