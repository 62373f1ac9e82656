//! Files and flags lockboxctl reads, checked before anything is sent.
//!
//! Every file is read with a bound fitting what it holds (a grant, a backup, an identity, a
//! passphrase), so that a wrong path (`/dev/zero`, a huge file, a FIFO a process keeps
//! writing to) is refused by name instead of filling memory. A FIFO is opened without waiting
//! for a writer: one nobody writes to reads as empty (and is refused as such) rather than
//! hanging the command; a pipe that is written to (`--passphrase-file <(pass show x)`) is read
//! as before.
//!
//! Flags a daemon or controller would refuse (a key id that is not a UUID, a label name it does
//! not take, the same label twice, a reason with control characters) are refused here too, so
//! that a typo costs neither a round trip nor an audit record of a refusal.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use zeroize::Zeroizing;

/// Largest passphrase file (a passphrase is a line of text).
pub const MAX_PASSPHRASE_FILE: u64 = 64 << 10;
/// Largest backup identity file (one identity line and comments).
pub const MAX_IDENTITY_FILE: u64 = 64 << 10;
/// Largest recipient file (recipient lines and comments).
pub const MAX_RECIPIENT_FILE: u64 = 1 << 20;

/// Reads at most `max` bytes of `path` into `buf` (which the caller sized, so that a secret is
/// never copied by a growing buffer); refuses a longer file by name.
fn read_into(path: &Path, max: u64, what: &str, buf: &mut Vec<u8>) -> Result<()> {
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| anyhow!("reading {what} {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| anyhow!("reading {what} {shown}: {e}"))?;
    if meta.is_dir() {
        bail!("reading {what} {shown}: is a directory");
    }
    if meta.is_file() && meta.len() > max {
        bail!(
            "{what} {shown} refused: {} bytes, at most {max}",
            meta.len()
        );
    }
    // Opened without waiting; read with waiting (a pipe whose writer is slow is still read).
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())
        .map_err(|e| anyhow!("reading {what} {shown}: {e}"))?;
    file.take(max + 1)
        .read_to_end(buf)
        .map_err(|e| anyhow!("reading {what} {shown}: {e}"))?;
    if buf.len() as u64 > max {
        bail!("{what} {shown} refused: more than {max} bytes");
    }
    Ok(())
}

/// The bytes of `path`, at most `max` of them.
pub fn read_file(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_into(path, max, what, &mut buf)?;
    Ok(buf)
}

/// The bytes of a file holding a secret, at most `max` (≤ 1 MiB) of them, in a buffer that is
/// wiped when dropped and never reallocated while read.
pub fn read_secret_file(path: &Path, max: u64, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(max as usize + 1));
    read_into(path, max, what, &mut buf)?;
    Ok(buf)
}

/// The UTF-8 text of `path`, at most `max` bytes.
pub fn read_text(path: &Path, max: u64, what: &str) -> Result<String> {
    String::from_utf8(read_file(path, max, what)?)
        .map_err(|_| anyhow!("{what} {} refused: not UTF-8 text", path.display()))
}

/// The passphrase a passphrase file holds: one line (a final line end, `\n` or `\r\n`, is not
/// part of it, as lockboxd's `init` reads the same file). Empty, or more than one line, is
/// refused: sending the first line only, or nothing, would unseal or enroll with another
/// passphrase than the file holds.
pub fn passphrase_line(text: &[u8], what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let line = lockbox_crypto::passphrase_line(text).map_err(|e| anyhow!("{what} {e}"))?;
    Ok(Zeroizing::new(line.to_vec()))
}

/// One `--label k=v` as clap parses it: split only. lockboxd checks names and values (and
/// quotes a bounded prefix of a bad one; clap's own error would quote the whole value).
pub fn parse_label(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {} must look like key=value", quote(s))),
    }
}

/// The `--label` flags as a map; the same name twice is refused (one would silently win).
pub fn labels(v: Vec<(String, String)>) -> Result<std::collections::HashMap<String, String>> {
    let mut out = std::collections::HashMap::new();
    for (k, value) in v {
        if out.contains_key(&k) {
            bail!("--label {} is given twice", quote(&k));
        }
        out.insert(k, value);
    }
    Ok(out)
}

/// A node name as controllers and certificates take it: 1-128 bytes of letters, digits,
/// `-`, `_`, `.`, not `.` or `..`.
pub fn check_node(flag: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!(
            "{flag} {}: a node name is 1-128 letters, digits, '-', '_' or '.'",
            quote(name)
        );
    }
    Ok(())
}

/// The key ids of `grant issue`: canonical UUIDs (the only spelling grants carry), none twice.
pub fn check_grant_keys(keys: &[String]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for k in keys {
        let canonical = uuid::Uuid::parse_str(k)
            .map_err(|_| anyhow!("key id {} is not a UUID", quote(k)))?
            .hyphenated()
            .to_string();
        if canonical != *k {
            bail!(
                "key id {} must be written in canonical form ({canonical})",
                quote(k)
            );
        }
        if !seen.insert(canonical) {
            bail!("key id {k} appears twice");
        }
    }
    Ok(())
}

/// A grant's reason: one line of at most 1024 bytes (what controllers sign).
pub fn check_reason(reason: &str) -> Result<()> {
    if reason.len() > 1024 {
        bail!("--reason is {} bytes, at most 1024", reason.len());
    }
    if reason.chars().any(char::is_control) {
        bail!("--reason may not contain control characters (newlines, tabs, escapes)");
    }
    Ok(())
}

/// A controller key id (`--trust-key ID=KEY`): 1-128 letters, digits, `-`, `_` or `.`.
pub fn check_key_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "controller key id {} must be 1-128 letters, digits, '-', '_' or '.'",
            quote(id)
        );
    }
    Ok(())
}

/// Text from a flag or a file, quoted in an error: at most 64 characters, escaped.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(64) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} more bytes)", &s[..cut], s.len() - cut),
    }
}

/// Text from outside (a grant file, a server's message) made safe to print on a terminal:
/// control characters (escape sequences, carriage returns, newlines) escaped.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn files_are_read_bounded_and_a_fifo_without_writer_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "abc").unwrap();
        assert_eq!(read_file(&f, 3, "grant").unwrap(), b"abc");
        let e = read_file(&f, 2, "grant").unwrap_err().to_string();
        assert!(e.contains("3 bytes, at most 2"), "{e}");
        let e = read_file(Path::new("/dev/zero"), 16, "grant")
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 16 bytes"), "{e}");
        let e = read_file(dir.path(), 16, "grant").unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert!(read_file(&fifo, 16, "grant").unwrap().is_empty());
    }

    #[test]
    fn a_passphrase_file_holds_one_line() {
        for (text, want) in [
            (&b"secret"[..], &b"secret"[..]),
            (b"secret\n", b"secret"),
            (b"secret\r\n", b"secret"),
            (b"  two words  \n", b"  two words  "),
        ] {
            assert_eq!(&passphrase_line(text, "f").unwrap()[..], want);
        }
        for (text, why) in [
            (&b""[..], "is empty"),
            (b"\n", "is empty"),
            (b"first\nsecond\n", "more than one line"),
            (b"first\rsecond", "more than one line"),
            (b"\xff\xfe", "not UTF-8"),
        ] {
            let e = passphrase_line(text, "f").unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn labels_and_grant_flags_are_checked() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_label("novalue").unwrap_err().contains("key=value"));
        let e = labels(vec![("a".into(), "1".into()), ("a".into(), "2".into())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        check_node("--from", "host-a").unwrap();
        for bad in ["", ".", "..", "a/b", "h\u{0430}st", &"h".repeat(129)] {
            assert!(check_node("--from", bad).is_err(), "{bad}");
        }
        let k = "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60".to_string();
        check_grant_keys(std::slice::from_ref(&k)).unwrap();
        let e = check_grant_keys(&[k.to_uppercase()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("canonical form"), "{e}");
        let e = check_grant_keys(&[k.clone(), k]).unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
        assert!(check_reason("ticket 42").is_ok());
        assert!(check_reason("a\nb").is_err());
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
