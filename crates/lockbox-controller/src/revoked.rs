//! Revocations: the nodes this controller has cut off (DESIGN.md §5.5). A revoked node gets no
//! attestation and no vouch from this controller, so its peers stop helping it unseal when its
//! last vouch expires, and at once where they hold this controller's signed list.
//!
//! The list lives in `data_dir/revoked`, changed only by `lockbox-controller revoke` and
//! `unrevoke` (which work whether the controller runs or not), and read by the running
//! controller before it answers any `Attest`, `Vouch` or `Revocations` request, so a
//! revocation takes effect without a restart.
//!
//! # The file
//!
//! UTF-8 text, one item per line, each line ending in `\n`, fields separated by one space:
//!
//! ```text
//! lockbox-controller revoked 1
//! id <32 lowercase hex digits>
//! serial <u64>
//! revoked <node> <revoked_unix_ms> <by>[ <reason>]
//! change <serial> <unix_ms> <by> revoke <node>[ <reason>]
//! change <serial> <unix_ms> <by> unrevoke <node>
//! end
//! ```
//!
//! - `id` is random, made when the file is created: it names this list, so that a file
//!   deleted and made again is not mistaken for the old one (its change serials restart).
//! - `serial` is the number of the last change ever made to this list.
//! - `revoked` lines: the current revocations, sorted by node name (bytewise), one per node.
//!   `<node>` is a node name as in grants (`A-Z a-z 0-9 . - _`, at most 128 bytes); `<by>` who
//!   revoked it (`uid:<n>`, no spaces); `<reason>` the rest of the line (at most 1024 bytes,
//!   no control characters; absent when empty).
//! - `change` lines: the changes the audit log may not have recorded yet (see below), in
//!   increasing serial order, each serial at most `serial`.
//! - `end` marks a complete file.
//!
//! Decoding is strict: a file that does not re-encode to exactly its bytes (extra spaces,
//! leading zeros, unsorted lines, unknown lines, a missing `end`) is damaged, and a damaged
//! file stops the controller from starting, naming the file and the line: starting with an
//! empty list would silently unrevoke every node. A missing file is an empty list. The file is
//! replaced atomically (a temporary file written, fsynced, renamed, the directory fsynced),
//! mode 0644, under an exclusive `flock` of `data_dir`, so two writers never lose each other's
//! change.
//!
//! # Every change is audited exactly once
//!
//! The controller's audit log is a database that one process opens at a time, and the running
//! controller holds it. So the CLI cannot always write the record of a change itself; instead:
//!
//! 1. The CLI, holding the `data_dir` lock, applies the change to the list, gives it the next
//!    serial, appends it as a `change` line, and writes the file. From here the change is in
//!    force and its record cannot be lost: it stays in the file until the audit log has it.
//! 2. Whoever holds the audit log writes the records of the changes it has not recorded yet,
//!    **in the same atomic batch** as a mark (`(id, serial)` of the last change recorded,
//!    kept in the audit database beside the records). The holder is the only writer of the
//!    log and reads the mark from it, so a change is recorded once: a crash leaves records and
//!    mark both written or both not. The holder is:
//!    - the running controller, which re-reads the file when its size, times or inode change
//!      (checked before every `Attest`, `Vouch` and `Revocations` answer and every 2 s) and
//!      records what is new before it answers;
//!    - the controller at start, which records what changed while it was stopped;
//!    - the CLI itself, when no controller runs: it checks that the audit database is not
//!      locked while it holds the `data_dir` lock, which a starting controller takes too
//!      before it opens the database, so the two never open it at once.
//! 3. `change` lines whose serial the mark covers are then dropped from the file (by the
//!    holder, when it gets the `data_dir` lock without waiting; otherwise at a later change).
//!
//! A change to the revocations that no `change` line explains (a hand edit, a deleted file)
//! is recorded too, as `revocations-changed` with outcome `unexplained`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lockbox_crypto::{AuditEvent, SigningIdentity};

use crate::ControllerError;
use crate::audit::{AuditLog, event};

/// File name of the list in `data_dir`.
pub const FILE_NAME: &str = "revoked";
/// First line of the file.
pub const HEADER: &str = "lockbox-controller revoked 1";
/// Most nodes one controller revokes (the signed list's bound, `lockbox_crypto::vouch`).
pub const MAX_REVOKED: usize = lockbox_crypto::vouch::MAX_REVOCATIONS;
/// Most changes waiting for the audit log: far more than operators make between two reads
/// by the controller; past it, changes are refused until the controller has recorded them.
pub const MAX_PENDING: usize = 10_000;
/// Longest reason (as in grants and the signed list).
pub const MAX_REASON_LEN: usize = lockbox_crypto::vouch::MAX_REVOCATION_REASON_LEN;
/// Longest node name (as in grants).
pub const MAX_NODE_LEN: usize = 128;
/// Longest `<by>` token.
pub const MAX_BY_LEN: usize = 64;
/// Largest file read: every bound above at its maximum fits well within it.
pub const MAX_FILE_LEN: u64 = 64 << 20;
/// Key of the audit mark (`id || u64 serial`) in the audit database's node records.
pub const AUDIT_MARK_KEY: &[u8] = b"revocations-audited";

/// Checks a node name as grants and the CLI do: non-empty, at most 128 bytes of
/// `A-Z a-z 0-9 . - _`, and not `.` or `..` (which no certificate can name).
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a node name may not be empty".into());
    }
    if name.len() > MAX_NODE_LEN {
        return Err(format!(
            "node name is {} bytes, at most {MAX_NODE_LEN} allowed",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a node name"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "node name {:?} may only contain letters, digits, '-', '_' and '.'",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// Checks a revocation reason: at most 1024 bytes, one line of text without control
/// characters (it is a field of a line of the file and of audit records).
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_REASON_LEN {
        return Err(format!(
            "reason is {} bytes, at most {MAX_REASON_LEN} allowed",
            reason.len()
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err("reason may not contain control characters (newlines, tabs, escapes)".into());
    }
    Ok(())
}

fn check_by(by: &str) -> Result<(), String> {
    if by.is_empty()
        || by.len() > MAX_BY_LEN
        || by.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`by` must be 1 to {MAX_BY_LEN} bytes without spaces or control characters"
        ));
    }
    Ok(())
}

/// One current revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// When it was revoked (unix ms).
    pub revoked_unix_ms: u64,
    /// Who revoked it (`uid:<n>`).
    pub by: String,
    /// Why (may be empty).
    pub reason: String,
}

/// What one change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// The node was revoked, for this reason (may be empty).
    Revoke {
        /// Why.
        reason: String,
    },
    /// The node's revocation was lifted.
    Unrevoke,
}

/// One change to the list that the audit log may not have recorded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its number in this list: one more than the change before.
    pub serial: u64,
    /// When it was made (unix ms).
    pub at_unix_ms: u64,
    /// Who made it (`uid:<n>`).
    pub by: String,
    /// The node.
    pub node: String,
    /// Revoke or unrevoke.
    pub kind: ChangeKind,
}

/// How far the audit log has recorded the changes of a list: the audit mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditMark {
    /// The list's `id`.
    pub id: [u8; 16],
    /// The serial of the last change recorded.
    pub serial: u64,
}

impl AuditMark {
    fn encode(&self) -> Vec<u8> {
        [&self.id[..], &self.serial.to_be_bytes()].concat()
    }

    fn decode(bytes: &[u8]) -> Option<AuditMark> {
        let (id, serial) = bytes.split_first_chunk::<16>()?;
        let serial: [u8; 8] = serial.try_into().ok()?;
        Some(AuditMark {
            id: *id,
            serial: u64::from_be_bytes(serial),
        })
    }

    /// The mark recorded in `audit` (none yet: nothing recorded).
    pub fn read(audit: &AuditLog) -> Result<AuditMark, ControllerError> {
        match audit.mark(AUDIT_MARK_KEY)? {
            None => Ok(AuditMark::default()),
            Some(b) => AuditMark::decode(&b).ok_or_else(|| {
                ControllerError::Audit(format!(
                    "the record of audited revocation changes is {} bytes, expected 24",
                    b.len()
                ))
            }),
        }
    }
}

/// The whole file, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedFile {
    /// Random, made with the file.
    pub id: [u8; 16],
    /// Serial of the last change ever made.
    pub serial: u64,
    /// The current revocations, by node name.
    pub revoked: BTreeMap<String, Revoked>,
    /// Changes the audit log may not have yet, by increasing serial.
    pub pending: Vec<Change>,
}

/// What [`RevokedFile::revoke`] and [`RevokedFile::unrevoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The list changed; the change has this serial.
    Changed(u64),
    /// Already revoked (for a revoke): nothing changed.
    AlreadyRevoked(Revoked),
    /// Not revoked (for an unrevoke): nothing changed.
    NotRevoked,
}

/// Why a file could not be decoded: the line (1-based) and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct FormatError {
    /// 1-based line number (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

fn parse_u64(s: &str) -> Option<u64> {
    // The re-encoding check refuses leading zeros and signs.
    s.parse().ok()
}

impl RevokedFile {
    /// A new, empty list with a fresh random id.
    pub fn new() -> Result<RevokedFile, ControllerError> {
        Ok(RevokedFile {
            id: lockbox_crypto::random_array::<16>()?,
            serial: 0,
            revoked: BTreeMap::new(),
            pending: Vec::new(),
        })
    }

    /// The file's bytes (see the module doc).
    pub fn encode(&self) -> String {
        let mut out = format!(
            "{HEADER}\nid {}\nserial {}\n",
            hex::encode(self.id),
            self.serial
        );
        let tail = |reason: &str| {
            if reason.is_empty() {
                String::new()
            } else {
                format!(" {reason}")
            }
        };
        for (node, r) in &self.revoked {
            out.push_str(&format!(
                "revoked {node} {} {}{}\n",
                r.revoked_unix_ms,
                r.by,
                tail(&r.reason)
            ));
        }
        for c in &self.pending {
            let what = match &c.kind {
                ChangeKind::Revoke { reason } => format!("revoke {}{}", c.node, tail(reason)),
                ChangeKind::Unrevoke => format!("unrevoke {}", c.node),
            };
            out.push_str(&format!(
                "change {} {} {} {what}\n",
                c.serial, c.at_unix_ms, c.by
            ));
        }
        out.push_str("end\n");
        out
    }

    /// Decodes the file strictly (see the module doc).
    pub fn parse(text: &str) -> Result<RevokedFile, FormatError> {
        let err = |line: usize, reason: String| FormatError { line, reason };
        let Some(body) = text.strip_suffix('\n') else {
            return Err(err(
                0,
                "the file does not end with a newline (truncated?)".into(),
            ));
        };
        let lines: Vec<&str> = body.split('\n').collect();
        let mut at = 0usize;
        let mut next = |what: &str| -> Result<(usize, &str), FormatError> {
            let l = lines.get(at).copied().ok_or_else(|| {
                err(
                    at + 1,
                    format!("the file ends before its {what} (truncated?)"),
                )
            })?;
            at += 1;
            Ok((at, l))
        };
        let (n, l) = next("header")?;
        if l != HEADER {
            return Err(err(n, format!("expected the header {HEADER:?}")));
        }
        let (n, l) = next("id")?;
        let id: [u8; 16] = l
            .strip_prefix("id ")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err(n, "expected `id` and 32 hex digits".into()))?;
        let (n, l) = next("serial")?;
        let serial = l
            .strip_prefix("serial ")
            .and_then(parse_u64)
            .ok_or_else(|| err(n, "expected `serial` and a number".into()))?;
        let mut file = RevokedFile {
            id,
            serial,
            revoked: BTreeMap::new(),
            pending: Vec::new(),
        };
        loop {
            let (n, l) = next("end line")?;
            if l == "end" {
                break;
            }
            let bad = |reason: String| err(n, reason);
            if let Some(rest) = l.strip_prefix("revoked ") {
                if !file.pending.is_empty() {
                    return Err(bad("a `revoked` line after a `change` line".into()));
                }
                let mut f = rest.splitn(4, ' ');
                let (Some(node), Some(ms), Some(by)) = (f.next(), f.next(), f.next()) else {
                    return Err(bad(
                        "expected `revoked <node> <unix ms> <by> [<reason>]`".into()
                    ));
                };
                let reason = f.next().unwrap_or_default();
                check_node_name(node).map_err(bad)?;
                let revoked_unix_ms =
                    parse_u64(ms).ok_or_else(|| bad(format!("{ms:?} is not a time in unix ms")))?;
                check_by(by).map_err(bad)?;
                check_reason(reason).map_err(bad)?;
                if file
                    .revoked
                    .last_key_value()
                    .is_some_and(|(k, _)| k.as_str() >= node)
                {
                    return Err(bad(format!("node {node} is out of order or listed twice")));
                }
                if file.revoked.len() == MAX_REVOKED {
                    return Err(bad(format!("more than {MAX_REVOKED} revocations")));
                }
                file.revoked.insert(
                    node.to_owned(),
                    Revoked {
                        revoked_unix_ms,
                        by: by.to_owned(),
                        reason: reason.to_owned(),
                    },
                );
            } else if let Some(rest) = l.strip_prefix("change ") {
                let mut f = rest.splitn(6, ' ');
                let (Some(s), Some(ms), Some(by), Some(kind), Some(node)) =
                    (f.next(), f.next(), f.next(), f.next(), f.next())
                else {
                    return Err(bad(
                        "expected `change <serial> <unix ms> <by> revoke|unrevoke <node> [<reason>]`"
                            .into(),
                    ));
                };
                let reason = f.next();
                let change_serial =
                    parse_u64(s).ok_or_else(|| bad(format!("{s:?} is not a serial number")))?;
                if file
                    .pending
                    .last()
                    .is_some_and(|c| c.serial >= change_serial)
                {
                    return Err(bad(format!("change {change_serial} is out of order")));
                }
                if change_serial == 0 || change_serial > file.serial {
                    return Err(bad(format!(
                        "change {change_serial} is not between 1 and the file's serial {}",
                        file.serial
                    )));
                }
                if file.pending.len() == MAX_PENDING {
                    return Err(bad(format!("more than {MAX_PENDING} changes")));
                }
                let at_unix_ms =
                    parse_u64(ms).ok_or_else(|| bad(format!("{ms:?} is not a time in unix ms")))?;
                check_by(by).map_err(bad)?;
                check_node_name(node).map_err(bad)?;
                let kind = match (kind, reason) {
                    ("revoke", reason) => {
                        let reason = reason.unwrap_or_default();
                        check_reason(reason).map_err(bad)?;
                        ChangeKind::Revoke {
                            reason: reason.to_owned(),
                        }
                    }
                    ("unrevoke", None) => ChangeKind::Unrevoke,
                    ("unrevoke", Some(_)) => {
                        return Err(bad("an unrevoke change has no reason".into()));
                    }
                    (k, _) => return Err(bad(format!("unknown change {k:?}"))),
                };
                file.pending.push(Change {
                    serial: change_serial,
                    at_unix_ms,
                    by: by.to_owned(),
                    node: node.to_owned(),
                    kind,
                });
            } else {
                return Err(bad("expected a `revoked`, `change` or `end` line".into()));
            }
        }
        if at != lines.len() {
            return Err(err(at + 1, "text after the `end` line".into()));
        }
        // One encoding per list: whatever the checks above let through that the encoder would
        // write differently (leading zeros, spaces) is refused here.
        if file.encode() != text {
            return Err(err(
                0,
                "the file is not in its canonical form (extra spaces, leading zeros or a trailing space)"
                    .into(),
            ));
        }
        Ok(file)
    }

    /// Revokes `node` now, by `by`; a node already revoked is left as it is.
    pub fn revoke(
        &mut self,
        node: &str,
        reason: &str,
        by: &str,
        now_unix_ms: u64,
    ) -> Result<Outcome, String> {
        check_node_name(node)?;
        check_reason(reason)?;
        check_by(by)?;
        if let Some(r) = self.revoked.get(node) {
            return Ok(Outcome::AlreadyRevoked(r.clone()));
        }
        if self.revoked.len() >= MAX_REVOKED {
            return Err(format!(
                "this controller already revokes {MAX_REVOKED} nodes, the most a signed list holds"
            ));
        }
        let serial = self.next_serial()?;
        self.revoked.insert(
            node.to_owned(),
            Revoked {
                revoked_unix_ms: now_unix_ms,
                by: by.to_owned(),
                reason: reason.to_owned(),
            },
        );
        self.pending.push(Change {
            serial,
            at_unix_ms: now_unix_ms,
            by: by.to_owned(),
            node: node.to_owned(),
            kind: ChangeKind::Revoke {
                reason: reason.to_owned(),
            },
        });
        Ok(Outcome::Changed(serial))
    }

    /// Lifts the revocation of `node`, by `by`; a node not revoked is left as it is.
    pub fn unrevoke(&mut self, node: &str, by: &str, now_unix_ms: u64) -> Result<Outcome, String> {
        check_node_name(node)?;
        check_by(by)?;
        if !self.revoked.contains_key(node) {
            return Ok(Outcome::NotRevoked);
        }
        let serial = self.next_serial()?;
        self.revoked.remove(node);
        self.pending.push(Change {
            serial,
            at_unix_ms: now_unix_ms,
            by: by.to_owned(),
            node: node.to_owned(),
            kind: ChangeKind::Unrevoke,
        });
        Ok(Outcome::Changed(serial))
    }

    fn next_serial(&mut self) -> Result<u64, String> {
        if self.pending.len() >= MAX_PENDING {
            return Err(format!(
                "{MAX_PENDING} changes are waiting for the audit log; start the controller (it \
                 records them) before making more"
            ));
        }
        self.serial = self
            .serial
            .checked_add(1)
            .ok_or("the change serial is exhausted")?;
        Ok(self.serial)
    }

    /// The changes `mark` does not cover: all of them if the mark is for another list.
    pub fn pending_after(&self, mark: &AuditMark) -> &[Change] {
        if mark.id != self.id {
            return &self.pending;
        }
        let first = self.pending.partition_point(|c| c.serial <= mark.serial);
        &self.pending[first..]
    }

    /// Drops the changes `mark` covers; whether any was dropped.
    pub fn prune(&mut self, mark: &AuditMark) -> bool {
        let before = self.pending.len();
        if mark.id == self.id {
            self.pending.retain(|c| c.serial > mark.serial);
        }
        self.pending.len() != before
    }
}

/// The audit records of `changes`, `recorder` saying who wrote them (the running controller,
/// the controller at start, the CLI).
pub fn change_events(changes: &[Change], recorder: &str) -> Vec<AuditEvent> {
    changes
        .iter()
        .map(|c| {
            let at = rfc3339(c.at_unix_ms);
            let (action, detail) = match &c.kind {
                ChangeKind::Revoke { reason } => (
                    "revoke",
                    format!(
                        "node {} revoked at {at} reason {reason:?} (change {}, recorded by {recorder})",
                        c.node, c.serial
                    ),
                ),
                ChangeKind::Unrevoke => (
                    "unrevoke",
                    format!(
                        "node {} unrevoked at {at} (change {}, recorded by {recorder})",
                        c.node, c.serial
                    ),
                ),
            };
            event(&c.by, action, "ok", detail)
        })
        .collect()
}

/// A time for people: RFC 3339 in UTC, milliseconds.
pub fn rfc3339(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

// ---------------------------------------------------------------------------------------------
// files and locks

fn file_error(path: &Path, message: impl std::fmt::Display) -> ControllerError {
    ControllerError::Revoked {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads and decodes the list at `path` (`None`: no file, an empty list); also returns what
/// the file looked like when read, from the same open file.
///
/// Only a regular file is read (opened without following a symlink, and without waiting on a
/// FIFO), and never more than [`MAX_FILE_LEN`] bytes, whatever its size said at open.
pub fn load(path: &Path) -> Result<Option<(RevokedFile, FileSig)>, ControllerError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, e)),
    };
    let meta = f.metadata().map_err(|e| file_error(path, e))?;
    if !meta.is_file() {
        return Err(file_error(path, "not a regular file"));
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(file_error(
            path,
            format!("{} bytes, more than a revocation list can hold", meta.len()),
        ));
    }
    let mut text = String::new();
    f.take(MAX_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| file_error(path, format!("not readable as UTF-8 text: {e}")))?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(file_error(
            path,
            "grew past what a revocation list can hold",
        ));
    }
    let file = RevokedFile::parse(&text).map_err(|e| {
        file_error(
            path,
            format!("damaged ({e}); restore it from a backup, or remove it to revoke nothing"),
        )
    })?;
    Ok(Some((file, FileSig::of_meta(&meta))))
}

/// Replaces `path` with `file`, atomically and durably, mode 0644 (see the module doc).
///
/// The temporary file is always made afresh (`O_CREAT | O_EXCL`, after removing what a crash
/// or anyone else left under its name): a symlink planted there is removed, never followed,
/// so the writer (the CLI, often run as root) cannot be made to overwrite another file.
pub fn store(path: &Path, file: &RevokedFile) -> Result<(), ControllerError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |e: std::io::Error| file_error(path, format!("cannot write: {e}"));
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(err)?;
        // Not left to the umask: the list is public (a signed copy is served to every node).
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(err)?;
        f.write_all(file.encode().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// What a file looked like: if any of these changed, it was replaced or edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSig {
    /// No file.
    Missing,
    /// The file's device, inode, length, and modification and change times (ns).
    Present(u64, u64, u64, i128, i128),
}

impl FileSig {
    fn of_meta(m: &std::fs::Metadata) -> FileSig {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileSig::Present(
            m.dev(),
            m.ino(),
            m.len(),
            ns(m.mtime(), m.mtime_nsec()),
            ns(m.ctime(), m.ctime_nsec()),
        )
    }

    /// The signature of `path` now.
    pub fn of(path: &Path) -> Result<FileSig, ControllerError> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(FileSig::of_meta(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileSig::Missing),
            Err(e) => Err(file_error(path, e)),
        }
    }
}

/// An exclusive `flock` of `data_dir`, held while the list is read, changed and written (and
/// by a starting controller while it opens its audit log). Released when dropped.
pub struct DirLock {
    _dir: File,
}

impl DirLock {
    /// Waits for the lock.
    pub fn acquire(dir: &Path) -> Result<DirLock, ControllerError> {
        let d = File::open(dir).map_err(|e| file_error(dir, e))?;
        rustix::fs::flock(&d, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| file_error(dir, format!("cannot lock: {e}")))?;
        Ok(DirLock { _dir: d })
    }

    /// Takes the lock if no one holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<DirLock>, ControllerError> {
        let d = File::open(dir).map_err(|e| file_error(dir, e))?;
        match rustix::fs::flock(&d, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(DirLock { _dir: d })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(file_error(dir, format!("cannot lock: {e}"))),
        }
    }
}

/// Whether some process has the audit database at `audit_dir` open (it holds the lock of
/// the database engine): the running controller, or `audit-verify`. Asks without opening the
/// database, which would check (and could repair) its journal under the holder's feet.
pub fn audit_log_in_use(audit_dir: &Path) -> Result<bool, ControllerError> {
    let lock = audit_dir.join("lock");
    let f = match File::options().read(true).write(true).open(&lock) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(file_error(&lock, e)),
    };
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        // Released when `f` is dropped, before anyone opens the database.
        Ok(()) => Ok(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(file_error(&lock, format!("cannot probe: {e}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// the CLI

/// A change asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `revoke NODE [--reason TEXT]`.
    Revoke {
        /// The node.
        node: String,
        /// Why (may be empty).
        reason: String,
    },
    /// `unrevoke NODE`.
    Unrevoke {
        /// The node.
        node: String,
    },
}

/// Who recorded the change in the audit log, as the CLI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audited {
    /// Nothing changed, so there is nothing to record.
    NothingChanged,
    /// The CLI wrote the record(s) itself (no controller was running).
    ByThisCommand,
    /// The running controller (or, if it stops first, the next start or command) writes it.
    Pending(String),
}

/// What `revoke` or `unrevoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliReport {
    /// What happened to the list.
    pub outcome: Outcome,
    /// Who records it.
    pub audited: Audited,
}

/// `lockbox-controller revoke|unrevoke`: applies `request` to `data_dir/revoked` under the
/// directory lock, then writes the audit record itself if no process holds the audit log
/// (module doc, "Every change is audited exactly once").
pub fn apply_cli(
    data_dir: &Path,
    signing_key: &Path,
    request: &Request,
    by: &str,
    now_unix_ms: u64,
) -> Result<CliReport, ControllerError> {
    let invalid = |m: String| ControllerError::Invalid(m);
    match request {
        Request::Revoke { node, reason } => {
            check_node_name(node).map_err(invalid)?;
            check_reason(reason).map_err(invalid)?;
        }
        Request::Unrevoke { node } => check_node_name(node).map_err(invalid)?,
    }
    std::fs::create_dir_all(data_dir).map_err(|e| file_error(data_dir, e))?;
    let path = data_dir.join(FILE_NAME);
    let _lock = DirLock::acquire(data_dir)?;
    let mut file = match load(&path)? {
        Some((f, _)) => f,
        None => RevokedFile::new()?,
    };
    let outcome = match request {
        Request::Revoke { node, reason } => file.revoke(node, reason, by, now_unix_ms),
        Request::Unrevoke { node } => file.unrevoke(node, by, now_unix_ms),
    }
    .map_err(invalid)?;
    if !matches!(outcome, Outcome::Changed(_)) {
        return Ok(CliReport {
            outcome,
            audited: Audited::NothingChanged,
        });
    }
    // In force from here; the record follows from the `change` line whatever happens next.
    store(&path, &file)?;
    let audited = match audit_from_cli(data_dir, signing_key, &path, &mut file) {
        Ok(()) => Audited::ByThisCommand,
        Err(why) => Audited::Pending(why),
    };
    Ok(CliReport { outcome, audited })
}

/// Step 2 of the module doc, by the CLI: only if no process holds the audit log (checked
/// under the directory lock, which a starting controller waits for). `Err` says why the
/// record is left to the controller.
fn audit_from_cli(
    data_dir: &Path,
    signing_key: &Path,
    path: &Path,
    file: &mut RevokedFile,
) -> Result<(), String> {
    let audit_dir = data_dir.join("audit");
    if audit_log_in_use(&audit_dir).map_err(|e| e.to_string())? {
        return Err(
            "the controller is running: it records the change in its audit log when it \
                    reads the list (before its next Attest, Vouch or Revocations answer, and \
                    within 2 s)"
                .into(),
        );
    }
    let signer = crate::load_signing_key(signing_key).map_err(|e| {
        format!("cannot write the audit record ({e}); the controller records it when it starts")
    })?;
    let log = AuditLog::open(&audit_dir).map_err(|e| {
        format!("cannot open the audit log ({e}); the controller records it when it starts")
    })?;
    let result = (|| {
        let mark = AuditMark::read(&log)?;
        let pending = file.pending_after(&mark);
        if let Some(last) = pending.last() {
            let new_mark = AuditMark {
                id: file.id,
                serial: last.serial,
            };
            let events = change_events(pending, "lockbox-controller revoke/unrevoke");
            log.append_marked_blocking(&signer, events, (AUDIT_MARK_KEY, &new_mark.encode()))?;
            if file.prune(&new_mark) {
                store(path, file)?;
            }
        }
        log.close()
    })();
    result.map_err(|e| {
        format!("cannot write the audit record ({e}); the controller records it when it starts")
    })
}

// ---------------------------------------------------------------------------------------------
// the running controller

/// The current revocations, by node name.
pub type RevokedSet = BTreeMap<String, Revoked>;

/// What the running controller last read.
struct Seen {
    sig: Option<FileSig>,
    set: Arc<RevokedSet>,
}

/// The running controller's view of `data_dir/revoked`, re-read when the file changes, with
/// every change recorded in the audit log before it is acted on.
pub struct Revocations {
    dir: PathBuf,
    path: PathBuf,
    audit: Arc<AuditLog>,
    signer: Arc<SigningIdentity>,
    seen: Mutex<Seen>,
    /// Held while re-reading: one re-read at a time; owns the audit mark.
    reload: tokio::sync::Mutex<AuditMark>,
}

impl Revocations {
    /// Reads the list at start and records the changes made while the controller was
    /// stopped. The caller holds the [`DirLock`] of `data_dir` (it opened the audit log under
    /// it). A damaged list is an error naming the file: the controller must not start.
    pub async fn open(
        data_dir: &Path,
        audit: Arc<AuditLog>,
        signer: Arc<SigningIdentity>,
    ) -> Result<Revocations, ControllerError> {
        let mark = AuditMark::read(&audit)?;
        let r = Revocations {
            dir: data_dir.to_path_buf(),
            path: data_dir.join(FILE_NAME),
            audit,
            signer,
            seen: Mutex::new(Seen {
                sig: None,
                set: Arc::new(RevokedSet::new()),
            }),
            reload: tokio::sync::Mutex::new(mark),
        };
        {
            let mut mark = r.reload.lock().await;
            r.reload_locked(&mut mark, "the controller at start", true)
                .await?;
        }
        Ok(r)
    }

    /// The revocations in force now: re-reads the file first if it changed since the last
    /// read (and records its new changes in the audit log). A file damaged since is an error
    /// (`Revoked`): callers refuse what depends on it rather than use a stale or empty list.
    pub async fn current(&self) -> Result<Arc<RevokedSet>, ControllerError> {
        let sig = FileSig::of(&self.path)?;
        if let Some(set) = self.unchanged(sig) {
            return Ok(set);
        }
        let mut mark = self.reload.lock().await;
        if let Some(set) = self.unchanged(FileSig::of(&self.path)?) {
            return Ok(set);
        }
        self.reload_locked(&mut mark, "the running controller", false)
            .await
    }

    fn unchanged(&self, sig: FileSig) -> Option<Arc<RevokedSet>> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        (seen.sig == Some(sig)).then(|| seen.set.clone())
    }

    async fn reload_locked(
        &self,
        mark: &mut AuditMark,
        recorder: &str,
        dir_locked: bool,
    ) -> Result<Arc<RevokedSet>, ControllerError> {
        let (file, sig) = match load(&self.path)? {
            Some((f, sig)) => (Some(f), sig),
            None => (None, FileSig::Missing),
        };
        let (revoked, pending): (RevokedSet, &[Change]) = match &file {
            Some(f) => (f.revoked.clone(), f.pending_after(mark)),
            None => (RevokedSet::new(), &[]),
        };
        let previous = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.sig.map(|_| seen.set.clone())
        };
        let mut events = Vec::new();
        if let Some(previous) = previous {
            let explained = replay(&previous, pending);
            if explained != revoked {
                events.push(event(
                    "lockbox-controller",
                    "revocations-changed",
                    "unexplained",
                    unexplained_detail(&explained, &revoked),
                ));
                tracing::warn!(
                    path = %self.path.display(),
                    "the revocation list changed without lockbox-controller revoke/unrevoke"
                );
            }
        }
        let new_mark = match (pending.last(), &file) {
            (Some(last), Some(f)) => AuditMark {
                id: f.id,
                serial: last.serial,
            },
            _ => *mark,
        };
        events.extend(change_events(pending, recorder));
        if !events.is_empty() {
            self.audit
                .append_marked(&self.signer, events, (AUDIT_MARK_KEY, &new_mark.encode()))
                .await?;
            *mark = new_mark;
        }
        for c in pending {
            tracing::info!(
                node = %c.node,
                change = c.serial,
                by = %c.by,
                kind = ?c.kind,
                "revocation change recorded"
            );
        }
        let set = Arc::new(revoked);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.sig = Some(sig);
            seen.set = set.clone();
        }
        if let Some(f) = file
            && f.pending
                .iter()
                .any(|c| f.id == mark.id && c.serial <= mark.serial)
            && let Err(e) = self.prune(mark, dir_locked)
        {
            // Only tidiness is lost: recorded changes are never recorded again.
            tracing::warn!(error = %e, "cannot drop recorded changes from the revocation list");
        }
        Ok(set)
    }

    /// Step 3 of the module doc: drops recorded `change` lines, if the directory lock is free
    /// now (a CLI holding it is about to change the file, and the next re-read prunes).
    fn prune(&self, mark: &AuditMark, dir_locked: bool) -> Result<(), ControllerError> {
        let _lock = if dir_locked {
            None
        } else {
            match DirLock::try_acquire(&self.dir)? {
                Some(l) => Some(l),
                None => return Ok(()),
            }
        };
        if let Some((mut f, _)) = load(&self.path)?
            && f.prune(mark)
        {
            store(&self.path, &f)?;
        }
        Ok(())
    }
}

/// `previous` with `changes` applied, in order.
fn replay(previous: &RevokedSet, changes: &[Change]) -> RevokedSet {
    let mut set = previous.clone();
    for c in changes {
        match &c.kind {
            ChangeKind::Revoke { reason } => {
                set.insert(
                    c.node.clone(),
                    Revoked {
                        revoked_unix_ms: c.at_unix_ms,
                        by: c.by.clone(),
                        reason: reason.clone(),
                    },
                );
            }
            ChangeKind::Unrevoke => {
                set.remove(&c.node);
            }
        }
    }
    set
}

fn unexplained_detail(expected: &RevokedSet, found: &RevokedSet) -> String {
    let names = |a: &RevokedSet, b: &RevokedSet| {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, _)| k.as_str())
            .take(20)
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "data_dir/revoked changed outside `lockbox-controller revoke/unrevoke`: now {} node(s); \
         new or changed: [{}]; gone or changed: [{}]",
        found.len(),
        names(found, expected),
        names(expected, found)
    )
}

#[cfg(test)]
mod tests;
