//! Reading the controller's own files (its config and its signing key): only regular files,
//! never more than a bound, and never waiting on a FIFO, so that a wrong path (a FIFO, a
//! device, a huge file) stops the command at once with a message instead of hanging it or
//! filling its memory.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Largest config file read (a policy of a few hundred rules is a few tens of KiB).
pub const MAX_CONFIG_LEN: u64 = 1 << 20;

/// The length of a signing key file: the 32-byte Ed25519 seed.
pub const SIGNING_KEY_LEN: u64 = 32;

/// An open regular file and what `fstat` said about it.
pub(crate) struct Opened {
    pub(crate) file: std::fs::File,
    pub(crate) meta: std::fs::Metadata,
}

/// Opens `path` for reading without waiting on a FIFO (`O_NONBLOCK`: a FIFO without a writer
/// would block `open` forever) and refuses anything but a regular file. Symlinks are followed:
/// config and key files are often links (configuration management, mounted secrets).
pub(crate) fn open_regular(path: &Path) -> Result<Opened, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("not a regular file ({})", kind(&meta)));
    }
    Ok(Opened { file, meta })
}

/// Reads the whole regular file at `path`, refusing one longer than `max` bytes (checked
/// before reading, and again while reading: the file may grow).
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let Opened { file, meta } = open_regular(path)?;
    if meta.len() > max {
        return Err(format!("{} bytes, more than the {max} allowed", meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("grew past the {max} bytes allowed while read"));
    }
    Ok(bytes)
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_bounded(&f, 5).unwrap(), b"12345");
        let e = read_bounded(&f, 4).unwrap_err();
        assert!(e.contains("5 bytes, more than the 4 allowed"), "{e}");
        let e = read_bounded(dir.path(), 4).unwrap_err();
        assert!(e.contains("a directory"), "{e}");
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        // No writer: an open without O_NONBLOCK would wait forever.
        let e = read_bounded(&fifo, 4).unwrap_err();
        assert!(e.contains("a FIFO"), "{e}");
        let e = read_bounded(Path::new("/dev/zero"), 4).unwrap_err();
        assert!(e.contains("a device"), "{e}");
    }
}
