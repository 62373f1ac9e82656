//! `lockboxctl backup …`: offline backups sealed to recovery keys (DESIGN.md §8).
//!
//! `keygen` makes a recovery key pair here (no daemon needed). `export` asks lockboxd to seal
//! the keys (plaintext never leaves it) and writes the file atomically. `restore` opens the
//! whole file with the recovery identity here, refusing it if any byte is off, and only then
//! sends the keys to lockboxd over its Unix socket, which imports them in one batch.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use lockbox_crypto::{
    BackupIdentity, BackupRecipient, MAX_BACKUP_LEN, RECIPIENT_PREFIX, open_backup,
};
use lockbox_proto::v1 as pb;

use crate::out::outln;
use crate::{emit, json, labels, parse_label};

/// `lockboxctl backup …`
#[derive(Subcommand)]
pub enum BackupCommand {
    /// Make a recovery key pair: FILE holds the private identity (mode 0600, never
    /// overwritten; keep it offline), FILE.pub the recipient to export to.
    Keygen {
        /// The identity file to create.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Seal the lockbox's live keys (or those with every --label) to one or more recovery
    /// keys and write the backup file (mode 0600, atomically). It holds no plaintext.
    Export {
        /// A recipient: `lockbox-recipient1:…` or a file holding such lines (FILE.pub from
        /// keygen). Repeatable: each recipient can open the backup on its own.
        #[arg(long = "recipient", required = true)]
        recipients: Vec<String>,
        /// Only keys carrying this label k=v (repeatable, all must match).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The backup file to write.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Open a backup with a recovery identity, check every byte of it, then import its keys
    /// into the lockbox (keys already here with the same material are skipped; any other
    /// clash refuses the whole restore).
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The identity file (from keygen).
        #[arg(long)]
        identity: PathBuf,
    },
}

/// `PATH.pub`.
fn pub_path(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(".pub");
    PathBuf::from(s)
}

/// Creates `path` with `mode`, failing if it exists, and writes `bytes` durably.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Every recipient named by one `--recipient`: the string itself, or each non-comment line of
/// the file it names.
fn resolve_recipient(arg: &str) -> Result<Vec<BackupRecipient>> {
    if arg.starts_with(RECIPIENT_PREFIX) {
        return Ok(vec![BackupRecipient::parse(arg)?]);
    }
    let text = crate::input::read_text(
        Path::new(arg),
        crate::input::MAX_RECIPIENT_FILE,
        "recipient file",
    )
    .map_err(|e| {
        anyhow!(
            "--recipient {} is neither a {RECIPIENT_PREFIX}… string nor a readable \
             recipient file ({e})",
            crate::input::quote(arg)
        )
    })?;
    let found: Vec<BackupRecipient> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| BackupRecipient::parse(l).with_context(|| format!("recipient file {arg}")))
        .collect::<Result<_>>()?;
    if found.is_empty() {
        bail!("recipient file {arg} holds no recipient");
    }
    Ok(found)
}

/// `backup keygen` (needs no daemon).
pub fn keygen(output: &Path, j: bool) -> Result<()> {
    let public = pub_path(output);
    for p in [output, public.as_path()] {
        if p.symlink_metadata().is_ok() {
            bail!("{} already exists; refusing to overwrite it", p.display());
        }
    }
    let identity = BackupIdentity::generate()?;
    let recipient = identity.recipient();
    write_new(output, identity.to_file_text().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public, format!("{recipient}\n").as_bytes(), 0o644) {
        let _ = std::fs::remove_file(output);
        return Err(e);
    }
    let shape = json::BackupKeygen {
        fingerprint: recipient.fingerprint_hex(),
        identity: output.display().to_string(),
        recipient: recipient.to_string(),
        recipient_file: public.display().to_string(),
    };
    emit(j, &shape, || {
        outln!("identity:  {} (keep it offline)", output.display());
        outln!("recipient: {recipient}");
        outln!("           (in {})", public.display());
    })
}

/// `backup export`.
pub async fn export(
    c: &mut pb::lockbox_client::LockboxClient<tonic::transport::Channel>,
    err: impl Fn(tonic::Status) -> anyhow::Error,
    recipients: Vec<String>,
    label_args: Vec<(String, String)>,
    output: &Path,
    j: bool,
) -> Result<()> {
    let mut resolved = Vec::new();
    for r in &recipients {
        resolved.extend(resolve_recipient(r)?);
    }
    let labels = labels(label_args)?;
    // Ready before lockboxd seals (and audits) the export: mode 0600, renamed into place.
    let pending = crate::output::Pending::prepare(output, 0o600)?;
    let r = c
        .export_backup(pb::ExportBackupRequest {
            recipients: resolved.iter().map(ToString::to_string).collect(),
            labels,
        })
        .await
        .map_err(err)?
        .into_inner();
    pending.commit(&r.backup)?;
    let shape = json::BackupExported {
        bytes: r.backup.len(),
        file: output.display().to_string(),
        keys: r.keys,
        materials: r.materials,
        recipient_fingerprints: &r.recipient_fingerprints,
        recipients: r.recipient_fingerprints.len(),
    };
    emit(j, &shape, || {
        outln!(
            "{}: {} keys ({} materials) sealed to {} recipient(s)",
            output.display(),
            r.keys,
            r.materials,
            r.recipient_fingerprints.len()
        );
    })
}

/// `backup restore`: nothing reaches the daemon unless the whole file verified.
pub async fn restore(socket: &Path, file: &Path, identity_path: &Path, j: bool) -> Result<()> {
    let raw =
        crate::input::read_secret_file(identity_path, crate::input::MAX_IDENTITY_FILE, "identity")?;
    let text = std::str::from_utf8(&raw)
        .map_err(|_| anyhow!("identity {} is not UTF-8 text", identity_path.display()))?;
    let identity = BackupIdentity::from_file_text(text)
        .with_context(|| format!("identity {}", identity_path.display()))?;
    // Bounded whatever the file is (a FIFO or device says nothing of its size up front).
    let bytes = crate::input::read_file(file, MAX_BACKUP_LEN as u64, "backup")
        .map_err(|e| anyhow!("{e}, nothing imported"))?;
    let opened = open_backup(&identity, &bytes)
        .map_err(|e| anyhow!("backup {} refused, nothing imported: {e}", file.display()))?;
    // Opened here first so that a wrong file or identity is refused without the daemon; then
    // lockboxd opens it again itself: what it imports, and the provenance its audit record
    // gives, come from the authenticated file, not from what a client says.
    let source_node = opened.header.source_node.clone();
    drop(opened);
    let request = pb::RestoreBackupRequest {
        backup: bytes,
        identity: text.to_string(),
        ..Default::default()
    };
    let mut c = crate::connect(socket).await?;
    let r = c
        .restore_backup(request)
        .await
        .map_err(|s| crate::rpc_error(socket, s))?
        .into_inner();
    let shape = json::BackupRestored {
        file: file.display().to_string(),
        restored: r.restored.len(),
        restored_key_ids: &r.restored,
        skipped: r.skipped.len(),
        skipped_key_ids: &r.skipped,
        source_node: &source_node,
    };
    emit(j, &shape, || {
        outln!(
            "{}: {} keys restored, {} skipped (already here with the same material)",
            file.display(),
            r.restored.len(),
            r.skipped.len()
        );
    })
}
