//! A lockbox's life: init, open, unseal, seal, clean shutdown, and what `status` reports.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use lockbox_crypto::{
    AssistIdentity, AuditEntry, AuditEvent, GENESIS_HASH, HpkeIdentity, Keyring, NewSlot,
    RecordKind, SecretBytes, SigningIdentity, UnsealMethod, UnsealSecret, Unsealed,
};
use lockbox_store::{Batch, Ns, Store, write_file_atomic};
use tokio::sync::Mutex;

use super::model::{Caller, NodeStatus};
use super::txn::{Event, WriteState, seal_head};
use super::{
    AUDIT_WATERMARK, Custody, NODE_AUDIT_HEAD, NODE_DESTROYS, NODE_HPKE, NODE_KEY_COUNT,
    NODE_KEY_STATES, NODE_SIGNING, Unlocked, decode_u64, io_err, now_ms,
};
use crate::metrics::{KeyCounts, state_index};

/// The key-states record: absent (an earlier release's data dir) or four big-endian u64.
/// Counts feed only metrics: a record of the wrong size is logged and counted again at the
/// next unseal rather than keep the node from starting.
fn decode_key_states(bytes: Option<Vec<u8>>) -> Option<KeyCounts> {
    let bytes = bytes?;
    let mut counts = KeyCounts::default();
    if bytes.len() != 8 * counts.len() {
        tracing::warn!(
            bytes = bytes.len(),
            "the key-states record is malformed; the keys are counted again at unseal"
        );
        return None;
    }
    for (n, chunk) in counts.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut be = [0u8; 8];
        be.copy_from_slice(chunk);
        *n = u64::from_be_bytes(be);
    }
    Some(counts)
}

impl Custody {
    /// Counts every key record by state (once, for a data dir of an earlier release; from
    /// then on the write path keeps the counts).
    fn count_key_states(&self, u: &Unlocked) -> Result<KeyCounts> {
        let mut counts = KeyCounts::default();
        for item in self.store.iter_after(Ns::Keys, None) {
            let (id, sealed) = item?;
            let key_id = String::from_utf8(id)
                .map_err(|_| CustodyError::Corrupt("a key record id is not UTF-8".into()))?;
            let meta = self.open_meta(u, &key_id, &sealed)?;
            counts[state_index(&meta.state)] += 1;
        }
        tracing::info!(?counts, "counted the key records by state");
        Ok(counts)
    }
}
use crate::config::{Config, Policy};
use crate::error::{CustodyError, Result};

/// Reads the unseal key file (exactly 32 bytes).
pub fn read_keyfile(path: &Path) -> Result<SecretBytes> {
    let bytes = SecretBytes::new(std::fs::read(path).map_err(io_err(path))?);
    if bytes.len() != 32 {
        return Err(CustodyError::InvalidArgument(format!(
            "key file {} must hold exactly 32 bytes, found {}",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// A passphrase long enough to set (at least 8 bytes).
fn check_passphrase<'a>(p: &'a SecretBytes, what: &str) -> Result<&'a SecretBytes> {
    if p.len() < 8 {
        return Err(CustodyError::InvalidArgument(format!(
            "{what} too short (at least 8 bytes)"
        )));
    }
    Ok(p)
}

/// Reads this node's assist key, creating it (0600, written atomically) when the data dir has
/// none: at `init`, or at the first start of a data dir of an earlier release. A file others may
/// read, or one that does not decode strictly, stops the start naming the file.
pub(super) fn load_or_create_assist(path: &Path) -> Result<AssistIdentity> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = match std::fs::read(path) {
        Ok(b) => SecretBytes::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = AssistIdentity::generate()?;
            write_file_atomic(path, id.to_file_bytes().expose_secret(), 0o600)?;
            tracing::info!(path = %path.display(), "created the assist key (peer-assisted unseal)");
            return Ok(id);
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let mode = std::fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CustodyError::InvalidArgument(format!(
            "{}: mode {:o} lets other users read the assist key; chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    AssistIdentity::from_file_bytes(bytes.expose_secret())
        .map_err(|e| CustodyError::Corrupt(format!("{}: {e}", path.display())))
}

/// Creates the keyfile (32 random bytes, mode 0600) unless it exists.
///
/// The bytes go to a temporary file first (written, synced), which is then hard-linked into
/// place: a kill part-way leaves no key file at all (never an empty or short one, which every
/// later `init` or `unseal enroll` would refuse until removed by hand), and a key file that
/// appeared meanwhile is kept, never replaced. The directory is synced after, so that a power
/// loss cannot keep a keyring wrapped to this key file and lose the file. Where hard links are
/// not supported (e.g. FAT media) the file is created in place, as before.
pub fn ensure_keyfile(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let secret = SecretBytes::random(32)?;
    let write_new = |at: &Path| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(at)
            .map_err(io_err(at))?;
        crate::failpoint::hit("keyfile-created");
        f.write_all(secret.expose_secret()).map_err(io_err(at))?;
        f.sync_all().map_err(io_err(at))
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keyfile".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
        _ => {}
    }
    write_new(&tmp)?;
    let linked = std::fs::hard_link(&tmp, path);
    if let Err(e) = std::fs::remove_file(&tmp) {
        tracing::warn!(error = %e, path = %tmp.display(), "cannot remove a temporary key file");
    }
    match linked {
        Ok(()) => {}
        // Made meanwhile by another caller: that one stands.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(),
                "cannot hard-link the new key file into place; writing it in place");
            write_new(path)?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// What `init` needs besides the config: the secrets of the slots it creates.
#[derive(Default)]
pub struct InitSecrets {
    /// The passphrase method's passphrase.
    pub passphrase: Option<SecretBytes>,
    /// The recovery passphrase (`[unseal] recovery = "passphrase"`).
    pub recovery: Option<SecretBytes>,
    /// The peers method's slot, already enrolled to the peers, and the slot key it splits.
    pub peers: Option<(lockbox_crypto::assist::PeerSlot, SecretBytes)>,
    /// The tpm2 methods' TPM object and the key it seals.
    pub tpm2: Option<(Vec<u8>, SecretBytes)>,
}

/// Refuses a data dir that already has a keyring or a database. `lockboxd init` asks this
/// first, before it prompts for passphrases, seals to a TPM or enrolls peers, so an operator who
/// pointed it at a live lockbox hears so at once; [`init`] asks again before it writes.
pub fn refuse_initialized(config: &Config) -> Result<()> {
    if config.keyring_path().exists() {
        return Err(CustodyError::AlreadyInitialized(
            config.data_dir.display().to_string(),
        ));
    }
    let db_path = config.db_path();
    if db_path.exists() {
        return Err(CustodyError::UnfinishedInit(db_path.display().to_string()));
    }
    Ok(())
}

/// Initializes a data dir: keyring (root secret + first KEK), node identities, the first audit
/// record. Refuses a dir that already has a keyring or a database.
pub async fn init(config: &Config, policy: &Policy, secrets: InitSecrets) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    refuse_initialized(config)?;
    let keyring_path = config.keyring_path();
    let db_path = config.db_path();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(io_err(&config.data_dir))?;
    let argon = lockbox_crypto::Argon2Params {
        memory_kib: config.unseal.argon2_memory_kib,
        iterations: config.unseal.argon2_iterations,
        parallelism: 1,
    };
    load_or_create_assist(&config.assist_key_path())?;
    crate::failpoint::hit("init-after-assist");
    let recovery = match (&secrets.recovery, policy.recovery) {
        (Some(r), true) => Some((check_passphrase(r, "recovery passphrase")?, argon)),
        (None, true) => {
            return Err(CustodyError::InvalidArgument(
                "[unseal] recovery = \"passphrase\" needs a recovery passphrase".into(),
            ));
        }
        (_, false) => None,
    };
    let keyfile;
    let primary = match policy.method {
        UnsealMethod::Keyfile => {
            ensure_keyfile(&config.unseal.keyfile)?;
            keyfile = read_keyfile(&config.unseal.keyfile)?;
            NewSlot::Keyfile(&keyfile)
        }
        UnsealMethod::Passphrase => {
            let pass = secrets.passphrase.as_ref().ok_or_else(|| {
                CustodyError::InvalidArgument("the passphrase method needs a passphrase".into())
            })?;
            NewSlot::Passphrase(check_passphrase(pass, "passphrase")?, argon)
        }
        UnsealMethod::Peers => {
            let (slot, key) = secrets.peers.as_ref().ok_or_else(|| {
                CustodyError::InvalidArgument("the peers method needs its peers enrolled".into())
            })?;
            NewSlot::Peers(slot.clone(), key)
        }
        UnsealMethod::Tpm2 => {
            let (blob, key) = secrets.tpm2.as_ref().ok_or_else(|| {
                CustodyError::InvalidArgument("the tpm2 method needs its key sealed".into())
            })?;
            NewSlot::Tpm2(blob.clone(), key)
        }
        UnsealMethod::Tpm2Peers => {
            let ((blob, tpm_key), (slot, peers_key)) = secrets
                .tpm2
                .as_ref()
                .zip(secrets.peers.as_ref())
                .ok_or_else(|| {
                    CustodyError::InvalidArgument(
                        "the tpm2+peers method needs its TPM key sealed and its peers enrolled"
                            .into(),
                    )
                })?;
            NewSlot::Tpm2Peers {
                blob: blob.clone(),
                tpm_key,
                slot: slot.clone(),
                peers_key,
            }
        }
    };
    let (keyring, unsealed) = Keyring::create_slots(primary, recovery)?;
    // From here on the store is this call's own: if init fails before the keyring is written,
    // remove it, so that init can simply be run again (a crash leaves it; see UnfinishedInit).
    let written = init_store(config, &policy.method, &unsealed, &db_path).await;
    if let Err(e) = written {
        if let Err(rm) = std::fs::remove_dir_all(&db_path) {
            tracing::warn!(error = %rm, "cannot remove the store of a failed init");
        }
        return Err(e);
    }
    crate::failpoint::hit("init-after-store");
    // The keyring goes last: its presence is what "initialized" means.
    write_file_atomic(&keyring_path, &keyring.encode(), 0o600)?;
    // The data dir's own name, when this call made it: a power loss must not take back an
    // init it reported done. Best effort: the data dir itself is complete and synced.
    let parent = match config.data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Err(e) = std::fs::File::open(parent).and_then(|d| d.sync_all()) {
        tracing::warn!(error = %e, dir = %parent.display(), "cannot sync the data dir's parent");
    }
    Ok(())
}

/// The store's first records: the node's identity keys, the key count, the first audit record
/// and the sealed audit head, in one durable batch.
async fn init_store(
    config: &Config,
    method: &UnsealMethod,
    unsealed: &Unsealed,
    db_path: &Path,
) -> Result<()> {
    let store = Store::open(db_path, 16 << 20)?;
    let signing = SigningIdentity::generate()?;
    let hpke = HpkeIdentity::generate()?;
    let kek = unsealed.current_kek();
    let mut batch = Batch::new();
    batch.put(
        Ns::Node,
        NODE_SIGNING,
        &kek.seal(
            RecordKind::NodeSigning,
            NODE_SIGNING,
            signing.to_secret().expose_secret(),
        )?,
    );
    batch.put(
        Ns::Node,
        NODE_HPKE,
        &kek.seal(
            RecordKind::NodeHpke,
            NODE_HPKE,
            hpke.to_secret().expose_secret(),
        )?,
    );
    batch.put(Ns::Node, NODE_KEY_COUNT, &0u64.to_be_bytes());
    batch.put(Ns::Node, NODE_KEY_STATES, &[0u8; 32]);
    let entry = AuditEntry {
        seq: 1,
        prev_hash: GENESIS_HASH,
        event: AuditEvent {
            time_unix_ms: now_ms(),
            actor: "lockboxd init".into(),
            action: "init".into(),
            key_id: String::new(),
            outcome: "ok".into(),
            detail: format!(
                "node {} unseal {} signing {}",
                config.node_id,
                method.as_str(),
                hex::encode(signing.public_key())
            ),
        },
        checkpoint: None,
    };
    batch.put(Ns::Audit, &1u64.to_be_bytes(), &entry.encode());
    batch.put(
        Ns::Node,
        NODE_AUDIT_HEAD,
        &seal_head(unsealed, 1, &entry.hash())?,
    );
    store.commit(batch).await?;
    store.flush_blocking()?;
    Ok(())
}

/// What the audit watermark check found (see `Custody::check_watermark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watermark {
    /// No watermark file.
    Absent,
    /// The store holds the record it names.
    Checked,
    /// Sealed under a KEK a finished rotation retired: stale, to be rewritten.
    Retired,
}

impl Custody {
    /// Opens an initialized data dir. The node starts sealed; call [`Custody::unseal`] (the
    /// daemon does so at once for the keyfile method).
    pub fn open(config: &Config, policy: &Policy) -> Result<Custody> {
        let keyring_path = config.keyring_path();
        let bytes = match std::fs::read(&keyring_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if config.db_path().exists() {
                    return Err(CustodyError::UnfinishedInit(
                        config.db_path().display().to_string(),
                    ));
                }
                return Err(CustodyError::NotInitialized(
                    config.data_dir.display().to_string(),
                ));
            }
            Err(e) => return Err(io_err(&keyring_path)(e)),
        };
        let keyring = Keyring::decode(&bytes).map_err(|source| CustodyError::Record {
            what: "keyring",
            id: keyring_path.display().to_string(),
            source,
        })?;
        if keyring.method() != policy.method {
            // The keyring decides how this node unseals; the config's [unseal] is what
            // `lockboxctl unseal enroll` switches it to.
            tracing::warn!(
                keyring = keyring.method().as_str(),
                config = policy.method.as_str(),
                "the keyring's unseal method is not the config's; run `lockboxctl unseal \
                 enroll` to switch"
            );
        }
        let store = Store::open(&config.db_path(), config.cache_capacity_mb << 20)?;
        let (audit_seq, audit_hash) = match store.last(Ns::Audit)? {
            Some((_, bytes)) => {
                let e = AuditEntry::decode(&bytes).map_err(|source| CustodyError::Record {
                    what: "audit record",
                    id: "head".into(),
                    source,
                })?;
                (e.seq, e.hash())
            }
            None => (0, GENESIS_HASH),
        };
        let ws = WriteState {
            audit_seq,
            audit_hash,
            key_count: decode_u64(store.get(Ns::Node, NODE_KEY_COUNT)?),
            destroys_since_rotation: decode_u64(store.get(Ns::Node, NODE_DESTROYS)?),
            key_states: decode_key_states(store.get(Ns::Node, NODE_KEY_STATES)?),
        };
        let attested = config.tls.is_some() && !config.controllers.is_empty();
        let metrics = Arc::new(crate::metrics::Metrics::new(attested));
        let assist = Arc::new(load_or_create_assist(&config.assist_key_path())?);
        metrics.set_sealed(true);
        metrics.set_keys(ws.key_states.as_ref());
        let observer = metrics.clone();
        store.observe_syncs(Arc::new(move |s| observer.observe_sync(s)));
        Ok(Custody {
            node_id: config.node_id.clone(),
            store,
            keyring_path,
            watermark_path: config.watermark_path(),
            watermark_written: std::sync::Mutex::new(0),
            keyfile_path: config.unseal.keyfile.clone(),
            keyring: RwLock::new(keyring),
            policy: policy.clone(),
            unlocked: RwLock::new(None),
            write: Mutex::new(ws),
            keys_written: AtomicU64::new(0),
            started: Instant::now(),
            metrics,
            assist,
        })
    }

    /// Unseals with the configured method's secret: the key file's bytes or a passphrase.
    /// Idempotent when already unsealed. A wrong secret is audited and changes nothing else.
    pub async fn unseal(&self, caller: &Caller, secret: UnsealSecret<'_>) -> Result<()> {
        if self.unlocked().is_ok() {
            return Ok(());
        }
        let keyring = self.keyring();
        let unsealed = match keyring.unseal(secret) {
            Ok(u) => u,
            Err(e) => {
                let err = CustodyError::Crypto(e);
                let mut txn = self.write_txn().await;
                txn.audit(None, caller, Event::refused("unseal", "", err.to_string()))?;
                txn.commit().await?;
                return Err(err);
            }
        };
        let signing = self.open_node(&unsealed, RecordKind::NodeSigning, NODE_SIGNING)?;
        let signing = SigningIdentity::from_secret(&signing)?;
        let hpke = self.open_node(&unsealed, RecordKind::NodeHpke, NODE_HPKE)?;
        let hpke = HpkeIdentity::from_secret(&hpke)?;
        let unlocked = Arc::new(Unlocked {
            unsealed,
            signing: Arc::new(signing),
            hpke: Arc::new(hpke),
        });
        let mut txn = self.write_txn().await;
        if self.unlocked().is_ok() {
            // Another unseal got here first (and a rotation may have followed it, which this
            // keyring copy predates): keep what is in place.
            return Ok(());
        }
        let watermark = self.check_head(&txn.state(), &unlocked)?;
        self.set_unlocked(Some(unlocked.clone()));
        // The keyring opened, named as an enrollment's records name it (`slots.rs`): after a
        // crash in the middle of one, this says whether it took effect.
        let detail = format!(
            "kek {}, keyring {}",
            keyring.current_kek_id(),
            super::slots::keyring_fingerprint(&keyring)
        );
        txn.audit(Some(&unlocked), caller, Event::ok("unseal", "", detail))?;
        if watermark == Watermark::Retired {
            // A checkpoint, so that a current watermark is written once this batch is durable.
            txn.checkpoint(&unlocked)?;
        }
        if txn.state().key_states.is_none() {
            // A data dir of an earlier release: count the key records by state once.
            let counts = self.count_key_states(&unlocked)?;
            txn.set_key_states(counts);
        }
        let applied = txn.apply()?;
        // A rotation interrupted by a crash left two KEKs in the keyring: finish it now, so the
        // old KEK does not outlive the shredding it was meant to perform.
        if keyring.kek_ids().len() > 1 {
            tracing::warn!("resuming an interrupted KEK rotation");
            let generation = applied.generation();
            self.rotate_locked(applied.next(), caller, "resumed")
                .await?;
            self.store.durable(generation).await?;
            return Ok(());
        }
        applied.durable().await
    }

    /// The sealed audit head must match the chain's last record: otherwise records were
    /// appended or removed behind the daemon's back. Entries written while sealed (refused
    /// unseal attempts) follow the head legitimately and are covered by the next head.
    pub(super) fn check_head(&self, ws: &WriteState, u: &Unlocked) -> Result<Watermark> {
        let Some(sealed) = self.store.get(Ns::Node, NODE_AUDIT_HEAD)? else {
            return Err(CustodyError::Corrupt("audit head record is missing".into()));
        };
        let plain = u
            .unsealed
            .open(RecordKind::AuditHead, NODE_AUDIT_HEAD, &sealed)
            .map_err(|source| CustodyError::Record {
                what: "audit head",
                id: "audit-head".into(),
                source,
            })?;
        let p = plain.expose_secret();
        if p.len() != 40 {
            return Err(CustodyError::Corrupt("audit head has a bad length".into()));
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&p[..8]);
        let seq = u64::from_be_bytes(seq);
        if seq > ws.audit_seq {
            return Err(CustodyError::AuditRolledBack(format!(
                "the audit log ends at record {} but its sealed head names record {seq}: records \
                 were removed",
                ws.audit_seq
            )));
        }
        self.check_watermark(ws, u)
    }

    /// The audit watermark (a file beside the store, written after each durable checkpoint)
    /// must not be ahead of the log, and the record it names must be the one it recorded: a
    /// store that lost its tail, or a database rolled back to an older copy while the data dir
    /// kept its files, refuses to unseal instead of silently serving the older state.
    ///
    /// A watermark sealed under a KEK older than every KEK of the keyring predates the last
    /// finished rotation, which wrote a watermark of its own before it dropped that KEK: it
    /// is an older checkpoint's, written late (a checkpoint's writer writes it after its batch
    /// is durable, without the writer lock, and a rotation may run in between), or left by a
    /// failed write. It proves nothing either way, as a missing one does not, and is not
    /// cause to refuse: [`Watermark::Retired`] asks the unseal for a checkpoint, which writes
    /// a current one. One sealed under a KEK newer than the keyring's (a keyring put back
    /// from an older copy) is still refused.
    fn check_watermark(&self, ws: &WriteState, u: &Unlocked) -> Result<Watermark> {
        let sealed = match std::fs::read(&self.watermark_path) {
            Ok(b) => b,
            // Data dirs of earlier releases, and nodes that never checkpointed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Watermark::Absent),
            Err(e) => return Err(io_err(&self.watermark_path)(e)),
        };
        if let Ok(kek) = lockbox_crypto::sealed_kek_id(&sealed)
            && u.unsealed
                .kek_ids()
                .first()
                .is_some_and(|&oldest| kek < oldest)
        {
            tracing::warn!(
                path = %self.watermark_path.display(),
                kek,
                "the audit watermark is sealed under a KEK a finished rotation retired: it \
                 predates that rotation's checkpoint; not checked, a current one is written now"
            );
            return Ok(Watermark::Retired);
        }
        let plain = u
            .unsealed
            .open(RecordKind::AuditHead, AUDIT_WATERMARK, &sealed)
            .map_err(|source| CustodyError::Record {
                what: "audit watermark",
                id: self.watermark_path.display().to_string(),
                source,
            })?;
        let p = plain.expose_secret();
        let (Some(seq), Some(hash)) = (
            p.get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes),
            p.get(8..40),
        ) else {
            return Err(CustodyError::Corrupt(
                "the audit watermark has a bad length".into(),
            ));
        };
        let path = self.watermark_path.display();
        if seq > ws.audit_seq {
            return Err(CustodyError::AuditRolledBack(format!(
                "the audit log ends at record {} but {path} recorded record {seq} at a \
                 checkpoint: the store lost records it had made durable",
                ws.audit_seq
            )));
        }
        let recorded = self
            .store
            .get(Ns::Audit, &seq.to_be_bytes())?
            .map(|b| lockbox_crypto::AuditEntry::decode(&b).map(|e| e.hash()));
        match recorded {
            Some(Ok(h)) if h.as_slice() == hash => Ok(Watermark::Checked),
            _ => Err(CustodyError::AuditRolledBack(format!(
                "audit record {seq} is not the one {path} recorded at a checkpoint: the log \
                 was rewritten or rolled back"
            ))),
        }
    }

    pub(super) fn open_node(
        &self,
        u: &Unsealed,
        kind: RecordKind,
        id: &[u8],
    ) -> Result<SecretBytes> {
        let sealed = self.store.get(Ns::Node, id)?.ok_or_else(|| {
            CustodyError::Corrupt(format!(
                "node record {} is missing",
                String::from_utf8_lossy(id)
            ))
        })?;
        u.open(kind, id, &sealed)
            .map_err(|source| CustodyError::Record {
                what: "node record",
                id: String::from_utf8_lossy(id).into_owned(),
                source,
            })
    }

    /// Forgets every secret. A checkpoint is signed first so the chain up to the seal is
    /// covered by the identity key.
    pub async fn seal(&self, caller: &Caller) -> Result<()> {
        let mut txn = self.write_txn().await;
        let Ok(u) = self.unlocked() else {
            return Ok(());
        };
        txn.audit(Some(&u), caller, Event::ok("seal", "", ""))?;
        txn.checkpoint(&u)?;
        let applied = txn.apply()?;
        self.set_unlocked(None);
        drop(u);
        applied.durable().await
    }

    /// Signs a final checkpoint and flushes (clean shutdown).
    pub async fn shutdown(&self) -> Result<()> {
        let mut txn = self.write_txn().await;
        if let Ok(u) = self.unlocked() {
            txn.checkpoint(&u)?;
        }
        // Sealed, the batch is empty and nothing is written; either way the lock is held
        // until the flush is done, so nothing is written after the final checkpoint.
        let mut applied = txn.apply()?;
        applied.durable_locked().await?;
        self.store.flush_blocking()?;
        drop(applied);
        Ok(())
    }

    /// The node's status; works sealed.
    pub async fn status(&self) -> NodeStatus {
        let ws = *self.write.lock().await;
        let u = self.unlocked().ok();
        NodeStatus {
            node_id: self.node_id.clone(),
            sealed: u.is_none(),
            unseal_method: self.keyring().method().as_str(),
            kek_id: self.keyring().current_kek_id(),
            key_count: ws.key_count,
            audit_records: ws.audit_seq,
            uptime_seconds: self.started.elapsed().as_secs(),
            hpke_public_key: u.as_ref().map(|u| hex::encode(u.hpke.public_key())),
            assist_public_key: hex::encode(self.assist.public_key()),
            signing_public_key: u.as_ref().map(|u| hex::encode(u.signing.public_key())),
        }
    }
}
