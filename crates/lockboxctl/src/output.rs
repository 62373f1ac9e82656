//! Output files (`-o`) made ready before anything is asked of a daemon or controller.
//!
//! A grant the controller issued, or a backup lockboxd sealed, is work done and audited there:
//! when the output file then cannot be written (a directory that does not exist, no
//! permission, a path that is a directory), the grant or backup is lost and the audit logs say
//! it was made. So the temporary file beside the output is created first; only then is the
//! request sent, and the result renamed into place (atomically: a crash leaves the old file or
//! the new one). A refused or failed request removes the temporary file again.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// An output file whose temporary file exists; [`Pending::commit`] writes and renames it.
pub struct Pending {
    path: PathBuf,
    target: Target,
}

enum Target {
    /// A temporary file beside `path`, renamed over it.
    Temp {
        tmp: PathBuf,
        dir: PathBuf,
        file: Option<std::fs::File>,
    },
    /// `path` is not a regular file (`/dev/stdout`, a FIFO): written in place.
    InPlace,
}

impl Pending {
    /// Prepares `path` (file mode `mode` when it is made), refusing a directory or a path
    /// whose directory cannot take a new file.
    pub fn prepare(path: &Path, mode: u32) -> Result<Pending> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => bail!("-o {}: is a directory", path.display()),
            Ok(m) if !m.is_file() => {
                return Ok(Pending {
                    path: path.to_path_buf(),
                    target: Target::InPlace,
                });
            }
            _ => {}
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("-o {}: not a file path", path.display()))?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| {
                format!(
                    "-o {}: cannot create a file in {} (nothing was asked yet)",
                    path.display(),
                    dir.display()
                )
            })?;
        Ok(Pending {
            path: path.to_path_buf(),
            target: Target::Temp {
                tmp,
                dir,
                file: Some(file),
            },
        })
    }

    /// The output path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` durably and puts them at the output path.
    pub fn commit(mut self, bytes: &[u8]) -> Result<()> {
        let path = self.path.clone();
        match &mut self.target {
            Target::InPlace => {
                std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
            }
            Target::Temp { tmp, dir, file } => {
                let mut f = file
                    .take()
                    .ok_or_else(|| anyhow!("output already written"))?;
                f.write_all(bytes)
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("writing {}", tmp.display()))?;
                drop(f);
                std::fs::rename(&*tmp, &path)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
                // Renamed: nothing left to remove.
                tmp.clear();
                std::fs::File::open(&*dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("syncing {}", dir.display()))
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Target::Temp { tmp, .. } = &self.target
            && !tmp.as_os_str().is_empty()
        {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prepared_before_and_renamed_after() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("g.grant");
        let p = Pending::prepare(&out, 0o644).unwrap();
        assert!(!out.exists());
        p.commit(b"grant").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"grant");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // Dropped without a commit (the request was refused): nothing is left.
        drop(Pending::prepare(&dir.path().join("x"), 0o600).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let e = Pending::prepare(&dir.path().join("no/such/dir/g"), 0o644)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("nothing was asked yet"), "{e}");
        let e = Pending::prepare(dir.path(), 0o644)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is a directory"), "{e}");
    }
}
