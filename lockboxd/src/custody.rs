//! The lockbox's domain: keys, their material, sealing and the audit chain, as a plain Rust
//! API over `lockbox-store` and `lockbox-crypto`. gRPC adapters call this; tests may too.
//!
//! Concurrency model: every mutation runs under one async mutex (`write`), which orders the
//! audit chain and makes read-check-write sequences atomic. The lock covers only in-memory
//! work and the batch apply (tens of µs); waiting for the disk happens after it is released,
//! so concurrent writers share one flush (group commit). Reads take no write lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lockbox_crypto::{
    AuditEntry, AuditEvent, ChainVerifier, GENESIS_HASH, HpkeIdentity, Keyring, RecordKind,
    SecretBytes, SigningIdentity, UnsealMethod, UnsealSecret, Unsealed, sign_checkpoint,
};
use lockbox_store::{Batch, Ns, Store, write_file_atomic};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::{ClonePolicy, Config, Policy, ShredRotation};

mod backup;
mod transfer;
use crate::error::{CustodyError, Result};
pub use backup::{ExportedBackup, RestoreSource, Restored};
pub use transfer::{
    AsRead, GrantRole, Incoming, Outgoing, OutgoingVersion, RECEIPT_DOMAIN, ReceivedKey,
    StoredReceipt,
};

const NODE_SIGNING: &[u8] = b"signing";
const NODE_HPKE: &[u8] = b"hpke";
const NODE_AUDIT_HEAD: &[u8] = b"audit-head";
const NODE_KEY_COUNT: &[u8] = b"key-count";
const NODE_DESTROYS: &[u8] = b"destroys-since-rotation";
/// A signed checkpoint every this many audit records bounds what an attacker with write access
/// to the disk could rewrite undetected while the node is sealed.
const CHECKPOINT_EVERY: u64 = 1000;
/// Records re-sealed per batch during a KEK rotation (bounded memory on a large lockbox).
const ROTATION_BATCH: usize = 2000;
const MAX_LABELS: usize = 64;
/// Default and maximum page sizes of `list`.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Who asked: recorded in the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What the audit log says about the caller, e.g. `uid:0 pid:1234`.
    pub actor: String,
}

impl Caller {
    /// The daemon itself (start-up, resumed rotations).
    pub fn system() -> Caller {
        Caller {
            actor: "lockboxd".into(),
        }
    }
}

/// Lifecycle of a key version (DESIGN.md §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionState {
    /// The version consumers use.
    Active,
    /// A new version made by `rekey begin`, readable, not yet the default.
    Rekeying,
    /// Replaced by a committed rekey; readable for decryption only.
    Retired,
    /// Shredded.
    Destroyed,
}

impl VersionState {
    /// The API spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Rekeying => "rekeying",
            Self::Retired => "retired",
            Self::Destroyed => "destroyed",
        }
    }
}

/// One version of a key: its material, held in the key's own record while this key alone
/// uses it, or a pointer to a shared material record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionMeta {
    /// 1, 2, ...
    pub version: u32,
    /// Its state.
    pub state: VersionState,
    /// Hex id of its material (empty once destroyed). The material is sealed with this id
    /// as associated data wherever it is held, so moving it between the key's record and a
    /// shared record is a copy of the same sealed bytes.
    pub material_id: String,
    /// When it was made.
    pub created_unix_ms: u64,
    /// The material sealed under the KEK (like a material record: kind `material`, this
    /// version's material id), when no other key id uses it. A create, a rekey or a received
    /// key then writes one record instead of three (metadata, material, reference), and a
    /// MOVE or destroy removes it by rewriting that one record. `None` for a version whose
    /// material lives in the shared record `material_id` (a snapshot or a same-key clone
    /// moved it there; records written before this field existed are all of that form).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::json_bytes::option"
    )]
    pub inline: Option<Vec<u8>>,
}

impl VersionMeta {
    /// Whether the version still has material (any state but destroyed).
    fn readable(&self) -> bool {
        self.state != VersionState::Destroyed
    }

    /// The shared material record this version refers to, if it has one.
    fn shared_material(&self) -> Option<&str> {
        (self.readable() && self.inline.is_none()).then_some(self.material_id.as_str())
    }

    /// Marks the version destroyed and forgets where its material was: what a destroy or a
    /// MOVE leaves in the tombstone.
    fn shred(&mut self) {
        self.state = VersionState::Destroyed;
        self.material_id.clear();
        self.inline = None;
    }
}

/// Where a key came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    /// created | snapshot | clone-same-key | clone-new-key
    pub kind: String,
    /// The source key id, empty for `created`.
    pub from_key_id: String,
    /// For `received`: the node it came from.
    #[serde(default)]
    pub from_node: String,
    /// For `received`: the grant (hex id) it came under.
    #[serde(default)]
    pub grant_id: String,
}

/// Where a moved key went: the tombstone a MOVE leaves at the source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MovedTo {
    /// The destination node.
    pub node: String,
    /// The grant (hex id).
    pub grant_id: String,
}

/// A key id's metadata. Sealed at rest like material (labels may name tenants), and the seal
/// binds it to its key id, so metadata cannot be swapped between keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyMeta {
    /// The key id (UUID text).
    pub key_id: String,
    /// True once destroyed: the record stays as a tombstone so the id is never reused.
    pub destroyed: bool,
    /// Material length in bytes (32 or 64).
    pub length: u32,
    /// Free-form labels (volume, pool, tenant...).
    pub labels: BTreeMap<String, String>,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Provenance.
    pub origin: Origin,
    /// Per-key clone policy; `None` follows the node's config.
    pub clone_policy: Option<String>,
    /// The version `get` returns by default.
    pub current_version: u32,
    /// Every version, oldest first.
    pub versions: Vec<VersionMeta>,
    /// A standing backup from a REPLICATE grant: not released until promoted.
    #[serde(default)]
    pub replica: bool,
    /// Set when a MOVE took the key elsewhere (the record is then a tombstone).
    #[serde(default)]
    pub moved_to: Option<MovedTo>,
}

impl KeyMeta {
    /// The key-level state: destroyed, rekeying (a new version pending) or active.
    pub fn state(&self) -> &'static str {
        if self.moved_to.is_some() {
            "moved"
        } else if self.destroyed {
            "destroyed"
        } else if self.replica {
            "replica"
        } else if self
            .versions
            .iter()
            .any(|v| v.state == VersionState::Rekeying)
        {
            "rekeying"
        } else {
            "active"
        }
    }

    /// The shared material records this key refers to (inline material has no other user).
    fn material_ids(&self) -> impl Iterator<Item = &str> {
        self.versions
            .iter()
            .filter_map(VersionMeta::shared_material)
    }

    /// Whether a readable version holds its material in this record: rewriting the record
    /// without it shreds that material.
    fn holds_inline(&self) -> bool {
        self.versions
            .iter()
            .any(|v| v.readable() && v.inline.is_some())
    }
}

/// A key's metadata plus who shares its current material.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// The metadata.
    pub meta: KeyMeta,
    /// The effective clone policy.
    pub clone_policy: ClonePolicy,
    /// Other key ids referring to the current version's material.
    pub shares_material_with: Vec<String>,
}

/// Plaintext material released to a local caller.
pub struct Released {
    /// The key id.
    pub key_id: String,
    /// The version released.
    pub version: u32,
    /// The bytes; zeroized on drop.
    pub material: SecretBytes,
}

/// How a clone gets its material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMode {
    /// Same material, new key id.
    SameKey,
    /// New material.
    NewKey,
}

/// Result of `destroy`.
#[derive(Debug, Clone)]
pub struct Destroyed {
    /// Every key id destroyed.
    pub key_ids: Vec<String>,
    /// True when at least one material record was shredded.
    pub material_shredded: bool,
    /// True when a KEK rotation followed.
    pub kek_rotated: bool,
}

/// Result of a KEK rotation.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The KEK that is gone.
    pub old_kek_id: u32,
    /// The KEK now in use.
    pub new_kek_id: u32,
    /// How many records were re-sealed.
    pub records_resealed: u64,
}

/// A snapshot of the node's state for `status`.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// The node name.
    pub node_id: String,
    /// True while no KEK is in memory.
    pub sealed: bool,
    /// keyfile | passphrase
    pub unseal_method: &'static str,
    /// The current KEK id.
    pub kek_id: u32,
    /// Live (not destroyed) key ids.
    pub key_count: u64,
    /// Audit records so far.
    pub audit_records: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// HPKE public key (hex), when unsealed.
    pub hpke_public_key: Option<String>,
    /// Ed25519 public key (hex), when unsealed.
    pub signing_public_key: Option<String>,
}

/// Result of walking the audit chain.
#[derive(Debug, Clone)]
pub struct AuditReport {
    /// True when every check passed.
    pub ok: bool,
    /// Records walked.
    pub records: u64,
    /// Signed checkpoints verified.
    pub checkpoints: u64,
    /// The first bad record (when not ok).
    pub bad_seq: u64,
    /// What is wrong with it.
    pub error: String,
}

/// One audit record as shown to admins.
#[derive(Debug, Clone)]
pub struct AuditView {
    /// The entry.
    pub entry: AuditEntry,
    /// Its hash (hex).
    pub hash: String,
}

/// What only an unsealed lockbox holds in memory. Dropping it zeroizes every secret.
struct Unlocked {
    unsealed: Unsealed,
    signing: Arc<SigningIdentity>,
    hpke: Arc<HpkeIdentity>,
}

/// State owned by the writer lock.
#[derive(Debug, Clone, Copy)]
struct WriteState {
    audit_seq: u64,
    audit_hash: [u8; 32],
    key_count: u64,
    destroys_since_rotation: u64,
}

/// The custody service of one lockbox.
pub struct Custody {
    node_id: String,
    store: Store,
    keyring_path: PathBuf,
    keyfile_path: PathBuf,
    keyring: RwLock<Keyring>,
    policy: Policy,
    unlocked: RwLock<Option<Arc<Unlocked>>>,
    write: Mutex<WriteState>,
    /// Batches applied that wrote key records, since start. Raised after each such batch is
    /// visible to readers: a reader that notes it before reading records, and finds it the
    /// same later under the writer lock, knows no key record changed in between (see
    /// `transfer::AsRead`).
    keys_written: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for Custody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custody")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CustodyError + '_ {
    move |source| CustodyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Refuses a key that has been moved away or destroyed (`live_meta`'s check).
fn check_live(key_id: &str, meta: &KeyMeta) -> Result<()> {
    if let Some(m) = &meta.moved_to {
        return Err(CustodyError::WrongState {
            key_id: key_id.into(),
            why: format!("moved to {} by grant {}", m.node, m.grant_id),
        });
    }
    if meta.destroyed {
        return Err(CustodyError::KeyDestroyed(key_id.into()));
    }
    Ok(())
}

/// Refuses a replica (`usable_meta`'s extra check).
fn check_not_replica(key_id: &str, meta: &KeyMeta) -> Result<()> {
    if meta.replica {
        return Err(CustodyError::WrongState {
            key_id: key_id.into(),
            why: "is a replica (a standing backup): promote it first with `lockboxctl key promote`"
                .into(),
        });
    }
    Ok(())
}

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

/// Creates the keyfile (32 random bytes, mode 0600) unless it exists.
fn ensure_keyfile(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let secret = SecretBytes::random(32)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(secret.expose_secret()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Initializes a data dir: keyring (root secret + first KEK), node identities, the first audit
/// record. Refuses a dir that already has a keyring or a database.
pub async fn init(config: &Config, policy: &Policy, passphrase: Option<SecretBytes>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let keyring_path = config.keyring_path();
    let db_path = config.db_path();
    if keyring_path.exists() {
        return Err(CustodyError::AlreadyInitialized(
            config.data_dir.display().to_string(),
        ));
    }
    if db_path.exists() {
        return Err(CustodyError::UnfinishedInit(db_path.display().to_string()));
    }
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
    let (keyring, unsealed) = match policy.method {
        UnsealMethod::Keyfile => {
            ensure_keyfile(&config.unseal.keyfile)?;
            let secret = read_keyfile(&config.unseal.keyfile)?;
            Keyring::create(UnsealSecret::Keyfile(&secret), argon)?
        }
        UnsealMethod::Passphrase => {
            let pass = passphrase.ok_or_else(|| {
                CustodyError::InvalidArgument("the passphrase method needs a passphrase".into())
            })?;
            if pass.len() < 8 {
                return Err(CustodyError::InvalidArgument(
                    "passphrase too short (at least 8 bytes)".into(),
                ));
            }
            Keyring::create(UnsealSecret::Passphrase(&pass), argon)?
        }
    };
    // From here on the store is this call's own: if init fails before the keyring is written,
    // remove it, so that init can simply be run again (a crash leaves it; see UnfinishedInit).
    let written = init_store(config, &policy.method, &unsealed, &db_path).await;
    if let Err(e) = written {
        if let Err(rm) = std::fs::remove_dir_all(&db_path) {
            tracing::warn!(error = %rm, "cannot remove the store of a failed init");
        }
        return Err(e);
    }
    // The keyring goes last: its presence is what "initialized" means.
    write_file_atomic(&keyring_path, &keyring.encode(), 0o600)?;
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

fn seal_head(unsealed: &Unsealed, seq: u64, hash: &[u8; 32]) -> Result<Vec<u8>> {
    let mut plain = Vec::with_capacity(40);
    plain.extend_from_slice(&seq.to_be_bytes());
    plain.extend_from_slice(hash);
    Ok(unsealed
        .current_kek()
        .seal(RecordKind::AuditHead, NODE_AUDIT_HEAD, &plain)?)
}

fn decode_u64(bytes: Option<Vec<u8>>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn parse_key_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| CustodyError::InvalidArgument(format!("key id {id:?} is not a UUID")))
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(CustodyError::InvalidArgument(format!(
            "at most {MAX_LABELS} labels per key"
        )));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 128
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'));
        if !key_ok {
            return Err(CustodyError::InvalidArgument(format!(
                "label name {k:?} must be 1-128 characters of letters, digits, - _ . / :"
            )));
        }
        if v.len() > 1024 || v.chars().any(char::is_control) {
            return Err(CustodyError::InvalidArgument(format!(
                "label {k}: value must be at most 1024 printable characters"
            )));
        }
    }
    Ok(())
}

/// A new material id: 32 hex digits, the first 16 time-ordered (milliseconds since the epoch,
/// shifted to make room for a sequence, and never repeated or decreasing within the process),
/// the last 16 random.
///
/// Time order puts the records a create or a received transfer adds to the material and
/// reference indexes at the end of sled's tree, in order, rather than at random places: an
/// insert at the end is cheaper, and a transfer's batch of them is already sorted
/// (`cargo bench -p lockbox-store --bench floor`, BENCHMARKS.md). Uniqueness does not rest on
/// the clock: the random half alone is 64 bits, and the prefix never repeats in a process.
/// The id reveals when the material was made, which the key's metadata says anyway; it is
/// not a secret and not used as one.
fn new_material_id() -> Result<String> {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms() << 16;
    let next = |last: u64| now.max(last.wrapping_add(1));
    let prefix = match LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(next(l))) {
        Ok(last) | Err(last) => next(last),
    };
    let random = lockbox_crypto::random_array::<8>()?;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&prefix.to_be_bytes());
    id[8..].copy_from_slice(&random);
    Ok(hex::encode(id))
}

/// Counts one shredding operation towards the `shred_rotation` policy, durably in `batch`.
fn count_shred(ws: &mut WriteState, batch: &mut Batch) {
    ws.destroys_since_rotation += 1;
    batch.put(
        Ns::Node,
        NODE_DESTROYS,
        &ws.destroys_since_rotation.to_be_bytes(),
    );
}

fn ref_id(material_id: &str, key_id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(material_id.len() + 1 + key_id.len());
    v.extend_from_slice(material_id.as_bytes());
    v.push(b'/');
    v.extend_from_slice(key_id.as_bytes());
    v
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
            return Err(CustodyError::InvalidArgument(format!(
                "the keyring was initialized with unseal method {}, but the config says {}",
                keyring.method().as_str(),
                policy.method.as_str()
            )));
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
        };
        Ok(Custody {
            node_id: config.node_id.clone(),
            store,
            keyring_path,
            keyfile_path: config.unseal.keyfile.clone(),
            keyring: RwLock::new(keyring),
            policy: policy.clone(),
            unlocked: RwLock::new(None),
            write: Mutex::new(ws),
            keys_written: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The key file of the keyfile unseal method.
    pub fn keyfile_path(&self) -> PathBuf {
        self.keyfile_path.clone()
    }

    /// The configured unseal method.
    pub fn unseal_method(&self) -> UnsealMethod {
        self.policy.method
    }

    fn unlocked(&self) -> Result<Arc<Unlocked>> {
        match self.unlocked.read() {
            Ok(g) => g.clone().ok_or(CustodyError::Sealed),
            Err(p) => p.into_inner().clone().ok_or(CustodyError::Sealed),
        }
    }

    fn set_unlocked(&self, value: Option<Arc<Unlocked>>) {
        match self.unlocked.write() {
            Ok(mut g) => *g = value,
            Err(p) => *p.into_inner() = value,
        }
    }

    fn keyring(&self) -> Keyring {
        match self.keyring.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_keyring(&self, k: Keyring) {
        match self.keyring.write() {
            Ok(mut g) => *g = k,
            Err(p) => *p.into_inner() = k,
        }
    }

    // ---- audit -------------------------------------------------------------------------

    /// Adds an audit entry (and, every CHECKPOINT_EVERY records, a signed checkpoint) to
    /// `batch`, advancing `ws`. With the node unsealed the sealed head moves too, which is what
    /// lets `audit verify` notice a truncated or edited tail.
    #[allow(clippy::too_many_arguments)] // one call site shape, every argument an audit field
    fn audit(
        &self,
        ws: &mut WriteState,
        batch: &mut Batch,
        unlocked: Option<&Unlocked>,
        caller: &Caller,
        action: &str,
        key_id: &str,
        outcome: &str,
        detail: String,
    ) -> Result<()> {
        let entry = AuditEntry {
            seq: ws.audit_seq + 1,
            prev_hash: ws.audit_hash,
            event: AuditEvent {
                time_unix_ms: now_ms(),
                actor: caller.actor.clone(),
                action: action.into(),
                key_id: key_id.into(),
                outcome: outcome.into(),
                detail,
            },
            checkpoint: None,
        };
        self.push_entry(ws, batch, entry);
        if let Some(u) = unlocked {
            if ws.audit_seq.is_multiple_of(CHECKPOINT_EVERY) {
                self.checkpoint(ws, batch, u);
            }
            batch.put(
                Ns::Node,
                NODE_AUDIT_HEAD,
                &seal_head(&u.unsealed, ws.audit_seq, &ws.audit_hash)?,
            );
        }
        Ok(())
    }

    fn push_entry(&self, ws: &mut WriteState, batch: &mut Batch, entry: AuditEntry) {
        batch.put(Ns::Audit, &entry.seq.to_be_bytes(), &entry.encode());
        ws.audit_seq = entry.seq;
        ws.audit_hash = entry.hash();
    }

    /// Appends a checkpoint entry signing the chain so far with the node's identity key.
    fn checkpoint(&self, ws: &mut WriteState, batch: &mut Batch, u: &Unlocked) {
        let seq = ws.audit_seq + 1;
        let entry = AuditEntry {
            seq,
            prev_hash: ws.audit_hash,
            event: AuditEvent {
                time_unix_ms: now_ms(),
                actor: "lockboxd".into(),
                action: "checkpoint".into(),
                key_id: String::new(),
                outcome: "ok".into(),
                detail: String::new(),
            },
            checkpoint: Some(sign_checkpoint(&u.signing, seq, &ws.audit_hash)),
        };
        self.push_entry(ws, batch, entry);
    }

    /// Applies `batch` under the writer lock, restoring `ws` if the apply fails so the
    /// in-memory chain head never runs ahead of the database. Returns the generation to wait on.
    fn apply(&self, ws: &mut WriteState, before: WriteState, batch: Batch) -> Result<u64> {
        let keys = batch.touches(Ns::Keys);
        match self.store.apply(batch) {
            Ok(generation) => {
                if keys {
                    self.keys_written.fetch_add(1, Ordering::SeqCst);
                }
                Ok(generation)
            }
            Err(e) => {
                *ws = before;
                Err(e.into())
            }
        }
    }

    /// Records a refused request (DESIGN.md invariant 5: a refusal changes nothing but gets an
    /// audit record). Best effort: a failure to audit a refusal is logged, not returned.
    async fn audit_refusal(&self, caller: &Caller, action: &str, key_id: &str, err: &CustodyError) {
        let Ok(u) = self.unlocked() else { return };
        let mut ws = self.write.lock().await;
        let before = *ws;
        let mut batch = Batch::new();
        let res = self
            .audit(
                &mut ws,
                &mut batch,
                Some(&u),
                caller,
                action,
                key_id,
                "refused",
                err.to_string(),
            )
            .and_then(|_| self.apply(&mut ws, before, batch));
        drop(ws);
        match res {
            Ok(generation) => {
                if let Err(e) = self.store.durable(generation).await {
                    tracing::error!(error = %e, "cannot flush an audit record");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot audit a refused request"),
        }
    }

    /// Runs a mutation and audits it: on success the closure's own batch carries the audit
    /// record; on refusal a separate "refused" record is written.
    async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        key_id: &str,
        res: Result<T>,
    ) -> Result<T> {
        if let Err(e) = &res
            && !matches!(e, CustodyError::Sealed)
        {
            self.audit_refusal(caller, action, key_id, e).await;
        }
        res
    }

    // ---- sealing -----------------------------------------------------------------------

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
                let mut ws = self.write.lock().await;
                let before = *ws;
                let mut batch = Batch::new();
                self.audit(
                    &mut ws,
                    &mut batch,
                    None,
                    caller,
                    "unseal",
                    "",
                    "refused",
                    err.to_string(),
                )?;
                let generation = self.apply(&mut ws, before, batch)?;
                drop(ws);
                self.store.durable(generation).await?;
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
        let mut ws = self.write.lock().await;
        self.check_head(&ws, &unlocked)?;
        self.set_unlocked(Some(unlocked.clone()));
        let before = *ws;
        let mut batch = Batch::new();
        let detail = format!("kek {}", keyring.current_kek_id());
        self.audit(
            &mut ws,
            &mut batch,
            Some(&unlocked),
            caller,
            "unseal",
            "",
            "ok",
            detail,
        )?;
        let generation = self.apply(&mut ws, before, batch)?;
        // A rotation interrupted by a crash left two KEKs in the keyring: finish it now, so the
        // old KEK does not outlive the shredding it was meant to perform.
        if keyring.kek_ids().len() > 1 {
            tracing::warn!("resuming an interrupted KEK rotation");
            self.rotate_locked(&mut ws, caller, "resumed").await?;
        }
        drop(ws);
        self.store.durable(generation).await?;
        Ok(())
    }

    /// The sealed audit head must match the chain's last record: otherwise records were
    /// appended or removed behind the daemon's back. Entries written while sealed (refused
    /// unseal attempts) follow the head legitimately and are covered by the next head.
    fn check_head(&self, ws: &WriteState, u: &Unlocked) -> Result<()> {
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
            tracing::error!(
                head = seq,
                last = ws.audit_seq,
                "audit log is shorter than its sealed head: records were removed"
            );
        }
        Ok(())
    }

    fn open_node(&self, u: &Unsealed, kind: RecordKind, id: &[u8]) -> Result<SecretBytes> {
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
        let mut ws = self.write.lock().await;
        let Ok(u) = self.unlocked() else {
            return Ok(());
        };
        let before = *ws;
        let mut batch = Batch::new();
        self.audit(
            &mut ws,
            &mut batch,
            Some(&u),
            caller,
            "seal",
            "",
            "ok",
            String::new(),
        )?;
        self.checkpoint(&mut ws, &mut batch, &u);
        batch.put(
            Ns::Node,
            NODE_AUDIT_HEAD,
            &seal_head(&u.unsealed, ws.audit_seq, &ws.audit_hash)?,
        );
        let generation = self.apply(&mut ws, before, batch)?;
        self.set_unlocked(None);
        drop(u);
        drop(ws);
        self.store.durable(generation).await?;
        Ok(())
    }

    /// Signs a final checkpoint and flushes (clean shutdown).
    pub async fn shutdown(&self) -> Result<()> {
        let mut ws = self.write.lock().await;
        if let Ok(u) = self.unlocked() {
            let before = *ws;
            let mut batch = Batch::new();
            self.checkpoint(&mut ws, &mut batch, &u);
            batch.put(
                Ns::Node,
                NODE_AUDIT_HEAD,
                &seal_head(&u.unsealed, ws.audit_seq, &ws.audit_hash)?,
            );
            self.apply(&mut ws, before, batch)?;
        }
        self.store.flush_blocking()?;
        Ok(())
    }

    /// The node's store: the daemon waits on it for durability before answering
    /// (`settle`) and watches it for failure.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's status; works sealed.
    pub async fn status(&self) -> NodeStatus {
        let ws = *self.write.lock().await;
        let u = self.unlocked().ok();
        NodeStatus {
            node_id: self.node_id.clone(),
            sealed: u.is_none(),
            unseal_method: self.policy.method.as_str(),
            kek_id: self.keyring().current_kek_id(),
            key_count: ws.key_count,
            audit_records: ws.audit_seq,
            uptime_seconds: self.started.elapsed().as_secs(),
            hpke_public_key: u.as_ref().map(|u| hex::encode(u.hpke.public_key())),
            signing_public_key: u.as_ref().map(|u| hex::encode(u.signing.public_key())),
        }
    }

    /// The controller keys this node trusts (from config).
    pub fn trusted_controllers(&self) -> lockbox_crypto::TrustedControllers {
        self.policy.controllers.clone()
    }

    /// Tolerated clock skew, in ms.
    pub fn clock_skew_ms(&self) -> u64 {
        self.policy.clock_skew.as_millis() as u64
    }

    /// This node's HPKE and Ed25519 public keys (unsealed only).
    pub fn public_keys(&self) -> Result<([u8; 32], [u8; 32])> {
        let u = self.unlocked()?;
        Ok((u.hpke.public_key(), u.signing.public_key()))
    }

    /// An attestation request with proof of possession of our signing key, bound to the TLS
    /// key we call the controller with (so a stolen request is useless from another TLS key).
    pub fn attest_request(
        &self,
        trust_domain: &str,
        tls_spki_sha256: &[u8; 32],
    ) -> Result<lockbox_proto::v1::AttestRequest> {
        let u = self.unlocked()?;
        let hpke = u.hpke.public_key();
        let signing = u.signing.public_key();
        let msg = lockbox_crypto::attest_request_message(
            &self.node_id,
            trust_domain,
            lockbox_crypto::HPKE_KEM_X25519,
            &hpke,
            &signing,
            tls_spki_sha256,
        );
        Ok(lockbox_proto::v1::AttestRequest {
            hpke_public_key: hpke.to_vec(),
            hpke_kem_id: lockbox_crypto::HPKE_KEM_X25519,
            signing_public_key: signing.to_vec(),
            proof: lockbox_crypto::sign_attest_request(&u.signing, &msg),
        })
    }

    /// Verifies a grant as the source of the transfer it authorizes (DESIGN.md §6): signatures
    /// and threshold, validity window, this node as source, and every key id live here.
    /// Consumes nothing.
    pub fn verify_grant_as_source(
        &self,
        signed: &lockbox_proto::v1::SignedGrant,
    ) -> Result<lockbox_crypto::VerifiedGrant> {
        let u = self.unlocked()?;
        if self.policy.controllers.is_empty() {
            return Err(CustodyError::Grant(
                lockbox_crypto::GrantError::ThresholdNotMet {
                    valid: 0,
                    required: self.policy.grant_threshold,
                },
            ));
        }
        let ctx = lockbox_crypto::GrantContext {
            now_unix_ms: now_ms(),
            skew_ms: self.policy.clock_skew.as_millis() as u64,
            threshold: self.policy.grant_threshold,
            self_node: &self.node_id,
            peer_node: None,
            side: lockbox_crypto::GrantSide::Source,
            key_ids: None,
        };
        let verified =
            lockbox_crypto::verify_grant(signed, &self.policy.controllers, &ctx, &|_| false)
                .map_err(CustodyError::Grant)?;
        for key_id in &verified.body.key_ids {
            let id = parse_key_id(key_id)?;
            self.usable_meta(&u, &id)?;
        }
        Ok(verified)
    }

    // ---- reading -----------------------------------------------------------------------

    fn load_meta(&self, u: &Unlocked, key_id: &str) -> Result<Option<KeyMeta>> {
        Ok(self.load_meta_sealed(u, key_id)?.map(|(_, meta)| meta))
    }

    /// A key's metadata and the sealed record it came from (see `transfer::AsRead`).
    fn load_meta_sealed(&self, u: &Unlocked, key_id: &str) -> Result<Option<(Vec<u8>, KeyMeta)>> {
        let Some(sealed) = self.store.get(Ns::Keys, key_id.as_bytes())? else {
            return Ok(None);
        };
        let meta = self.open_meta(u, key_id, &sealed)?;
        Ok(Some((sealed, meta)))
    }

    fn open_meta(&self, u: &Unlocked, key_id: &str, sealed: &[u8]) -> Result<KeyMeta> {
        let plain = u
            .unsealed
            .open(RecordKind::KeyMeta, key_id.as_bytes(), sealed)
            .map_err(|source| CustodyError::Record {
                what: "key metadata of",
                id: key_id.into(),
                source,
            })?;
        let meta: KeyMeta = serde_json::from_slice(plain.expose_secret())
            .map_err(|e| CustodyError::Corrupt(format!("key metadata of {key_id}: {e}")))?;
        if meta.key_id != key_id {
            return Err(CustodyError::Corrupt(format!(
                "key metadata of {key_id} names another key"
            )));
        }
        Ok(meta)
    }

    fn live_meta(&self, u: &Unlocked, key_id: &str) -> Result<KeyMeta> {
        let meta = self
            .load_meta(u, key_id)?
            .ok_or_else(|| CustodyError::KeyNotFound(key_id.into()))?;
        check_live(key_id, &meta)?;
        Ok(meta)
    }

    /// Like `live_meta`, and refuses replicas: a replica is a standing backup, not a second
    /// place to open the volume, until `key promote` makes it active.
    fn usable_meta(&self, u: &Unlocked, key_id: &str) -> Result<KeyMeta> {
        let meta = self.live_meta(u, key_id)?;
        check_not_replica(key_id, &meta)?;
        Ok(meta)
    }

    /// Seals a key's metadata under the current KEK. Inline material still sealed under an
    /// older KEK (read during an unfinished rotation) is re-sealed with it, so a key record's
    /// two layers are always under one KEK: a rotation that re-seals the record re-seals its
    /// material too, and dropping the old KEK leaves nothing of the record unreadable.
    fn seal_meta(&self, u: &Unlocked, meta: &KeyMeta) -> Result<Vec<u8>> {
        let current = u.unsealed.current_kek();
        let stale = |v: &VersionMeta| {
            v.inline
                .as_deref()
                .is_some_and(|b| lockbox_crypto::sealed_kek_id(b).ok() != Some(current.id()))
        };
        let resealed;
        let meta = if meta.versions.iter().any(stale) {
            let mut m = meta.clone();
            for v in m.versions.iter_mut().filter(|v| stale(v)) {
                if let Some(sealed) = v.inline.take() {
                    let plain =
                        self.open_sealed_material(u, &meta.key_id, &v.material_id, &sealed)?;
                    v.inline = Some(self.seal_material(u, &v.material_id, &plain)?);
                }
            }
            resealed = m;
            &resealed
        } else {
            meta
        };
        let json = SecretBytes::new(
            serde_json::to_vec(meta)
                .map_err(|e| CustodyError::Corrupt(format!("cannot encode metadata: {e}")))?,
        );
        Ok(current.seal(
            RecordKind::KeyMeta,
            meta.key_id.as_bytes(),
            json.expose_secret(),
        )?)
    }

    /// Seals material under the current KEK, bound to its material id (the same bytes serve
    /// inline and in a shared record).
    fn seal_material(
        &self,
        u: &Unlocked,
        material_id: &str,
        plain: &SecretBytes,
    ) -> Result<Vec<u8>> {
        Ok(u.unsealed.current_kek().seal(
            RecordKind::Material,
            material_id.as_bytes(),
            plain.expose_secret(),
        )?)
    }

    fn open_sealed_material(
        &self,
        u: &Unlocked,
        key_id: &str,
        material_id: &str,
        sealed: &[u8],
    ) -> Result<SecretBytes> {
        u.unsealed
            .open(RecordKind::Material, material_id.as_bytes(), sealed)
            .map_err(|source| CustodyError::Record {
                what: "material of key",
                id: key_id.into(),
                source,
            })
    }

    /// The plaintext of one readable version's material, from the key's record or from the
    /// shared record it points to.
    fn open_version(&self, u: &Unlocked, key_id: &str, v: &VersionMeta) -> Result<SecretBytes> {
        if let Some(sealed) = &v.inline {
            return self.open_sealed_material(u, key_id, &v.material_id, sealed);
        }
        let sealed = self
            .store
            .get(Ns::Materials, v.material_id.as_bytes())?
            .ok_or_else(|| CustodyError::Corrupt(format!("material of key {key_id} is missing")))?;
        self.open_sealed_material(u, key_id, &v.material_id, &sealed)
    }

    /// Moves every inline material of `meta` to a shared record (with this key's reference
    /// to it), so another key id can refer to it too: what a snapshot or a same-key clone
    /// does first. O(1) per version: the sealed bytes are copied, not re-sealed, unless they
    /// are under an older KEK. The caller writes `meta` back.
    fn share_out(&self, u: &Unlocked, meta: &mut KeyMeta, batch: &mut Batch) -> Result<()> {
        let current = u.unsealed.current_kek().id();
        for v in meta.versions.iter_mut().filter(|v| v.readable()) {
            let Some(sealed) = v.inline.take() else {
                continue;
            };
            let sealed = if lockbox_crypto::sealed_kek_id(&sealed)? == current {
                sealed
            } else {
                let plain = self.open_sealed_material(u, &meta.key_id, &v.material_id, &sealed)?;
                self.seal_material(u, &v.material_id, &plain)?
            };
            batch.put(Ns::Materials, v.material_id.as_bytes(), &sealed);
            batch.put(Ns::MaterialRefs, &ref_id(&v.material_id, &meta.key_id), b"");
        }
        Ok(())
    }

    /// Releases plaintext material (only the Unix socket adapter calls this). `version` 0 means
    /// the current version.
    pub fn get(&self, key_id: &str, version: u32) -> Result<Released> {
        let u = self.unlocked()?;
        let key_id = parse_key_id(key_id)?;
        let meta = self.usable_meta(&u, &key_id)?;
        let want = if version == 0 {
            meta.current_version
        } else {
            version
        };
        let v = meta
            .versions
            .iter()
            .find(|v| v.version == want && v.state != VersionState::Destroyed)
            .ok_or(CustodyError::VersionNotFound {
                key_id: key_id.clone(),
                version: want,
            })?;
        let material = self.open_version(&u, &key_id, v)?;
        Ok(Released {
            key_id,
            version: want,
            material,
        })
    }

    fn info(&self, u: &Unlocked, meta: KeyMeta) -> Result<KeyInfo> {
        let mut shares = Vec::new();
        if let Some(v) = meta
            .versions
            .iter()
            .find(|v| v.version == meta.current_version && v.state != VersionState::Destroyed)
        {
            let prefix = ref_id(&v.material_id, "");
            for r in self.store.scan_prefix(Ns::MaterialRefs, &prefix) {
                let (id, _) = r?;
                let kid = String::from_utf8_lossy(&id[prefix.len()..]).into_owned();
                if kid != meta.key_id {
                    shares.push(kid);
                }
            }
        }
        let _ = u;
        Ok(KeyInfo {
            clone_policy: self.effective_policy(&meta),
            meta,
            shares_material_with: shares,
        })
    }

    fn effective_policy(&self, meta: &KeyMeta) -> ClonePolicy {
        meta.clone_policy
            .as_deref()
            .and_then(ClonePolicy::parse)
            .unwrap_or(self.policy.clone_policy)
    }

    /// A key's metadata (destroyed keys included: the tombstone says what happened).
    pub fn describe(&self, key_id: &str) -> Result<KeyInfo> {
        let u = self.unlocked()?;
        let key_id = parse_key_id(key_id)?;
        let meta = self
            .load_meta(&u, &key_id)?
            .ok_or_else(|| CustodyError::KeyNotFound(key_id.clone()))?;
        self.info(&u, meta)
    }

    /// One page of keys whose labels include every `labels` pair, in key id order.
    pub fn list(
        &self,
        labels: &BTreeMap<String, String>,
        page_size: usize,
        page_token: &str,
        include_destroyed: bool,
    ) -> Result<(Vec<KeyInfo>, String)> {
        let u = self.unlocked()?;
        let page_size = match page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(parse_key_id(page_token)?)
        };
        let mut out = Vec::new();
        let mut next = String::new();
        for r in self
            .store
            .iter_after(Ns::Keys, after.as_deref().map(str::as_bytes))
        {
            let (id, _) = r?;
            let key_id = String::from_utf8_lossy(&id).into_owned();
            let Some(meta) = self.load_meta(&u, &key_id)? else {
                continue;
            };
            if (meta.destroyed && !include_destroyed)
                || !labels.iter().all(|(k, v)| meta.labels.get(k) == Some(v))
            {
                continue;
            }
            if out.len() == page_size {
                // There is at least one more match: the token resumes after the last returned.
                next = out
                    .last()
                    .map(|i: &KeyInfo| i.meta.key_id.clone())
                    .unwrap_or_default();
                break;
            }
            out.push(self.info(&u, meta)?);
        }
        Ok((out, next))
    }

    // ---- mutations ---------------------------------------------------------------------

    /// Creates a key with fresh material. With a caller-chosen id, a retry with the same
    /// parameters returns the existing key (`created == false`).
    pub async fn create(
        &self,
        caller: &Caller,
        length: u32,
        labels: BTreeMap<String, String>,
        clone_policy: Option<ClonePolicy>,
        key_id: Option<String>,
    ) -> Result<(String, bool)> {
        let res = self
            .create_inner(caller, length, labels, clone_policy, key_id.clone())
            .await;
        self.audited(caller, "create", key_id.as_deref().unwrap_or(""), res)
            .await
    }

    async fn create_inner(
        &self,
        caller: &Caller,
        length: u32,
        labels: BTreeMap<String, String>,
        clone_policy: Option<ClonePolicy>,
        key_id: Option<String>,
    ) -> Result<(String, bool)> {
        let u = self.unlocked()?;
        let length = match length {
            0 => 32,
            32 | 64 => length,
            other => {
                return Err(CustodyError::InvalidArgument(format!(
                    "key length must be 32 or 64 bytes, not {other}"
                )));
            }
        };
        validate_labels(&labels)?;
        let given = key_id.is_some();
        let key_id = match key_id {
            Some(id) => parse_key_id(&id)?,
            None => uuid::Uuid::new_v4().hyphenated().to_string(),
        };
        // Generate and seal outside the writer lock: only the batch apply is serialized.
        let material_id = new_material_id()?;
        let material = SecretBytes::random(length as usize)?;
        let sealed_material = self.seal_material(&u, &material_id, &material)?;
        drop(material);
        let now = now_ms();
        let mut meta = KeyMeta {
            key_id: key_id.clone(),
            destroyed: false,
            length,
            labels,
            created_unix_ms: now,
            origin: Origin {
                kind: "created".into(),
                from_key_id: String::new(),
                from_node: String::new(),
                grant_id: String::new(),
            },
            clone_policy: clone_policy.map(|p| p.as_str().to_string()),
            current_version: 1,
            versions: vec![VersionMeta {
                version: 1,
                state: VersionState::Active,
                material_id: material_id.clone(),
                created_unix_ms: now,
                inline: Some(sealed_material),
            }],
            replica: false,
            moved_to: None,
        };
        let sealed_meta = self.seal_meta(&u, &meta)?;

        let mut ws = self.write.lock().await;
        // A KEK rotation (or a seal) may have run while we waited for the lock: seal again
        // under the KEK that is current now, or refuse if sealed.
        let u_now = self.unlocked()?;
        let sealed_meta = if Arc::ptr_eq(&u, &u_now) {
            sealed_meta
        } else {
            // Opened with the state it was sealed under (a finished rotation dropped that KEK
            // from the current one).
            for v in meta.versions.iter_mut() {
                if let Some(sealed) = v.inline.take() {
                    let plain = self.open_sealed_material(&u, &key_id, &v.material_id, &sealed)?;
                    v.inline = Some(self.seal_material(&u_now, &v.material_id, &plain)?);
                }
            }
            self.seal_meta(&u_now, &meta)?
        };
        let u = u_now;
        if given && let Some(existing) = self.load_meta(&u, &key_id)? {
            drop(ws);
            if existing.destroyed {
                return Err(CustodyError::KeyDestroyed(key_id));
            }
            let same = existing.length == meta.length
                && existing.labels == meta.labels
                && existing.clone_policy == meta.clone_policy;
            return if same {
                Ok((key_id, false))
            } else {
                Err(CustodyError::AlreadyExists(key_id))
            };
        }
        let before = *ws;
        let mut batch = Batch::new();
        // One record: the material is inline until a snapshot or clone shares it.
        batch.put(Ns::Keys, key_id.as_bytes(), &sealed_meta);
        ws.key_count += 1;
        batch.put(Ns::Node, NODE_KEY_COUNT, &ws.key_count.to_be_bytes());
        self.audit(
            &mut ws,
            &mut batch,
            Some(&u),
            caller,
            "create",
            &key_id,
            "ok",
            format!("length {length}"),
        )?;
        let generation = self.apply(&mut ws, before, batch)?;
        drop(ws);
        self.store.durable(generation).await?;
        Ok((key_id, true))
    }

    /// A new key id sharing every readable version's material (O(1) in the key's size: one
    /// metadata record and one reference per version).
    pub async fn snapshot(
        &self,
        caller: &Caller,
        key_id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        let res = self
            .derive(caller, key_id, labels, "snapshot", DeriveMaterial::Share)
            .await;
        self.audited(caller, "snapshot", key_id, res).await
    }

    /// A clone, as the key's clone policy allows.
    pub async fn clone_key(
        &self,
        caller: &Caller,
        key_id: &str,
        mode: CloneMode,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        let res = self.clone_inner(caller, key_id, mode, labels).await;
        let action = match mode {
            CloneMode::SameKey => "clone-same-key",
            CloneMode::NewKey => "clone-new-key",
        };
        self.audited(caller, action, key_id, res).await
    }

    async fn clone_inner(
        &self,
        caller: &Caller,
        key_id: &str,
        mode: CloneMode,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        let u = self.unlocked()?;
        let id = parse_key_id(key_id)?;
        let meta = self.usable_meta(&u, &id)?;
        let policy = self.effective_policy(&meta);
        match (policy, mode) {
            (ClonePolicy::Deny, _) => {
                return Err(CustodyError::CloneRefused {
                    key_id: id,
                    policy: policy.as_str(),
                    why: "this key may not be cloned (a snapshot is still allowed)",
                });
            }
            (ClonePolicy::NewKey, CloneMode::SameKey) => {
                return Err(CustodyError::CloneRefused {
                    key_id: id,
                    policy: policy.as_str(),
                    why: "only --mode new-key clones are allowed",
                });
            }
            _ => {}
        }
        match mode {
            CloneMode::SameKey => {
                self.derive(caller, &id, labels, "clone-same-key", DeriveMaterial::Share)
                    .await
            }
            CloneMode::NewKey => {
                self.derive(caller, &id, labels, "clone-new-key", DeriveMaterial::Fresh)
                    .await
            }
        }
    }

    async fn derive(
        &self,
        caller: &Caller,
        key_id: &str,
        labels: BTreeMap<String, String>,
        kind: &str,
        material: DeriveMaterial,
    ) -> Result<String> {
        let source_id = parse_key_id(key_id)?;
        validate_labels(&labels)?;
        let new_id = uuid::Uuid::new_v4().hyphenated().to_string();
        let now = now_ms();
        let mut ws = self.write.lock().await;
        // Taken under the writer lock: a rotation that finished while we waited replaced the
        // KEK, and a record sealed under the old one would be unreadable.
        let u = self.unlocked()?;
        // Read under the writer lock: a concurrent destroy must not leave us referring to
        // shredded material.
        let src = self.usable_meta(&u, &source_id)?;
        let mut merged = src.labels.clone();
        merged.extend(labels);
        validate_labels(&merged)?;
        let mut batch = Batch::new();
        let versions = match material {
            DeriveMaterial::Share => {
                if src.holds_inline() {
                    // The material becomes shared: out of the source's record into shared
                    // records, which both key ids then refer to.
                    let mut src = src.clone();
                    self.share_out(&u, &mut src, &mut batch)?;
                    batch.put(Ns::Keys, src.key_id.as_bytes(), &self.seal_meta(&u, &src)?);
                }
                let vs: Vec<VersionMeta> = src
                    .versions
                    .iter()
                    .filter(|v| v.readable())
                    .map(|v| VersionMeta {
                        inline: None,
                        ..v.clone()
                    })
                    .collect();
                for v in &vs {
                    batch.put(Ns::MaterialRefs, &ref_id(&v.material_id, &new_id), b"");
                }
                vs
            }
            DeriveMaterial::Fresh => {
                let material_id = new_material_id()?;
                let bytes = SecretBytes::random(src.length as usize)?;
                let sealed = self.seal_material(&u, &material_id, &bytes)?;
                vec![VersionMeta {
                    version: 1,
                    state: VersionState::Active,
                    material_id,
                    created_unix_ms: now,
                    inline: Some(sealed),
                }]
            }
        };
        let current_version = match material {
            DeriveMaterial::Share => src.current_version,
            DeriveMaterial::Fresh => 1,
        };
        let meta = KeyMeta {
            key_id: new_id.clone(),
            destroyed: false,
            length: src.length,
            labels: merged,
            created_unix_ms: now,
            origin: Origin {
                kind: kind.into(),
                from_key_id: source_id.clone(),
                from_node: String::new(),
                grant_id: String::new(),
            },
            clone_policy: src.clone_policy.clone(),
            current_version,
            versions,
            replica: false,
            moved_to: None,
        };
        batch.put(Ns::Keys, new_id.as_bytes(), &self.seal_meta(&u, &meta)?);
        let before = *ws;
        ws.key_count += 1;
        batch.put(Ns::Node, NODE_KEY_COUNT, &ws.key_count.to_be_bytes());
        self.audit(
            &mut ws,
            &mut batch,
            Some(&u),
            caller,
            kind,
            &new_id,
            "ok",
            format!("from {source_id}"),
        )?;
        let generation = self.apply(&mut ws, before, batch)?;
        drop(ws);
        self.store.durable(generation).await?;
        Ok(new_id)
    }

    /// `commit == false`: adds a new version with fresh material (both readable; `get` keeps
    /// returning the old one until commit, so a consumer can rewrap at its own pace).
    /// `commit == true`: the new version becomes current and the old one is retired.
    pub async fn rekey(&self, caller: &Caller, key_id: &str, commit: bool) -> Result<KeyInfo> {
        let action = if commit {
            "rekey-commit"
        } else {
            "rekey-begin"
        };
        let res = self.rekey_inner(caller, key_id, commit).await;
        self.audited(caller, action, key_id, res).await
    }

    async fn rekey_inner(&self, caller: &Caller, key_id: &str, commit: bool) -> Result<KeyInfo> {
        let id = parse_key_id(key_id)?;
        let mut ws = self.write.lock().await;
        let u = self.unlocked()?;
        let mut meta = self.usable_meta(&u, &id)?;
        let pending = meta
            .versions
            .iter()
            .position(|v| v.state == VersionState::Rekeying);
        let mut batch = Batch::new();
        let detail;
        if commit {
            let Some(p) = pending else {
                // A commit retried after it took effect (a crash or timeout before the answer
                // reached the caller): the newest version is current and an older one retired.
                // Say so, changing nothing.
                let newest = meta.versions.iter().map(|v| v.version).max();
                let committed = newest == Some(meta.current_version)
                    && meta
                        .versions
                        .iter()
                        .any(|v| v.state == VersionState::Retired);
                if committed {
                    drop(ws);
                    return self.info(&u, meta);
                }
                return Err(CustodyError::WrongState {
                    key_id: id,
                    why: "no rekey in progress (run `key rekey ID` first)".into(),
                });
            };
            for v in meta.versions.iter_mut() {
                if v.state == VersionState::Active {
                    v.state = VersionState::Retired;
                }
            }
            meta.versions[p].state = VersionState::Active;
            meta.current_version = meta.versions[p].version;
            detail = format!("version {} active", meta.current_version);
        } else {
            if pending.is_some() {
                return Err(CustodyError::WrongState {
                    key_id: id,
                    why: "a rekey is already in progress (commit it with `key rekey ID --commit`)"
                        .into(),
                });
            }
            let version = meta.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            let material_id = new_material_id()?;
            let bytes = SecretBytes::random(meta.length as usize)?;
            // The new version's material is this key's alone (a snapshot taken earlier shares
            // only the versions it saw): inline.
            let sealed = self.seal_material(&u, &material_id, &bytes)?;
            meta.versions.push(VersionMeta {
                version,
                state: VersionState::Rekeying,
                material_id,
                created_unix_ms: now_ms(),
                inline: Some(sealed),
            });
            detail = format!("version {version} pending");
        }
        batch.put(Ns::Keys, id.as_bytes(), &self.seal_meta(&u, &meta)?);
        let before = *ws;
        let action = if commit {
            "rekey-commit"
        } else {
            "rekey-begin"
        };
        self.audit(
            &mut ws,
            &mut batch,
            Some(&u),
            caller,
            action,
            &id,
            "ok",
            detail,
        )?;
        let generation = self.apply(&mut ws, before, batch)?;
        drop(ws);
        self.store.durable(generation).await?;
        self.info(&u, meta)
    }

    /// Destroys a key id; its material is shredded once no key id refers to it. `cascade`
    /// destroys every key id sharing any of its material. Then the shred-rotation policy
    /// decides whether the KEK rotates now (which is what makes the shredding final on disk).
    pub async fn destroy(&self, caller: &Caller, key_id: &str, cascade: bool) -> Result<Destroyed> {
        let res = self.destroy_inner(caller, key_id, cascade).await;
        self.audited(caller, "destroy", key_id, res).await
    }

    async fn destroy_inner(
        &self,
        caller: &Caller,
        key_id: &str,
        cascade: bool,
    ) -> Result<Destroyed> {
        let id = parse_key_id(key_id)?;
        let mut ws = self.write.lock().await;
        let u = self.unlocked()?;
        let first = self.live_meta(&u, &id)?;
        let mut victims = vec![first];
        if cascade {
            let mut seen: std::collections::BTreeSet<String> = [id.clone()].into();
            let mut i = 0;
            while i < victims.len() {
                let mids: Vec<String> = victims[i].material_ids().map(String::from).collect();
                for mid in mids {
                    let prefix = ref_id(&mid, "");
                    for r in self.store.scan_prefix(Ns::MaterialRefs, &prefix) {
                        let (rid, _) = r?;
                        let kid = String::from_utf8_lossy(&rid[prefix.len()..]).into_owned();
                        if seen.insert(kid.clone())
                            && let Some(m) = self.load_meta(&u, &kid)?
                            && !m.destroyed
                        {
                            victims.push(m);
                        }
                    }
                }
                i += 1;
            }
        }
        let mut batch = Batch::new();
        let shredded = self.drop_material_refs(&victims, &mut batch)?;
        let before = *ws;
        let mut ids = Vec::new();
        for mut m in victims {
            m.destroyed = true;
            m.versions.iter_mut().for_each(VersionMeta::shred);
            batch.put(Ns::Keys, m.key_id.as_bytes(), &self.seal_meta(&u, &m)?);
            ws.key_count = ws.key_count.saturating_sub(1);
            ids.push(m.key_id);
        }
        batch.put(Ns::Node, NODE_KEY_COUNT, &ws.key_count.to_be_bytes());
        if shredded {
            count_shred(&mut ws, &mut batch);
        }
        self.audit(
            &mut ws,
            &mut batch,
            Some(&u),
            caller,
            "destroy",
            &id,
            "ok",
            format!(
                "destroyed {}; material {}",
                ids.join(","),
                if shredded {
                    "shredded"
                } else {
                    "kept (shared)"
                }
            ),
        )?;
        let generation = self.apply(&mut ws, before, batch)?;
        let mut kek_rotated = false;
        if shredded && self.rotation_due(&ws) {
            self.store.durable(generation).await?;
            self.rotate_locked(&mut ws, caller, "shred").await?;
            kek_rotated = true;
        }
        drop(ws);
        self.store.durable(generation).await?;
        Ok(Destroyed {
            key_ids: ids,
            material_shredded: shredded,
            kek_rotated,
        })
    }

    /// Removes the material references of `victims` (key ids about to become tombstones) and
    /// shreds every material no other key id refers to. Returns true when something was
    /// shredded (which counts towards the shred-rotation policy).
    ///
    /// Material held inline in a victim's record has no reference to drop: it is shredded
    /// when the caller rewrites that record as a tombstone.
    fn drop_material_refs(&self, victims: &[KeyMeta], batch: &mut Batch) -> Result<bool> {
        let mut shredded = victims.iter().any(KeyMeta::holds_inline);
        // A hash set: an evacuation looks up every reference it scans here (a tree of 100,000
        // ~90-byte ids made that lookup the check's main cost).
        let removed_refs: std::collections::HashSet<Vec<u8>> = victims
            .iter()
            .flat_map(|m| m.material_ids().map(|mid| ref_id(mid, &m.key_id)))
            .collect();
        // Each material once, in material order (pages of the reference index fetched once
        // when an evacuation walks thousands of them).
        // An evacuation checks one material per key: the checks are reads, split over the
        // cores (each thread a contiguous run of materials).
        let mut materials: Vec<&str> = victims.iter().flat_map(|m| m.material_ids()).collect();
        materials.sort_unstable();
        materials.dedup();
        let orphaned = crate::par::try_map(&materials, |mid| {
            let prefix = ref_id(mid, "");
            for r in self.store.scan_prefix(Ns::MaterialRefs, &prefix) {
                let (rid, _) = r?;
                if !removed_refs.contains(&rid) {
                    return Ok(false);
                }
            }
            Ok::<_, CustodyError>(true)
        })?;
        for (mid, orphaned) in materials.iter().zip(orphaned) {
            if orphaned {
                batch.remove(Ns::Materials, mid.as_bytes());
                shredded = true;
            }
        }
        for r in &removed_refs {
            batch.remove(Ns::MaterialRefs, r);
        }
        Ok(shredded)
    }

    /// Whether the shred-rotation policy calls for a KEK rotation now (after a shred).
    fn rotation_due(&self, ws: &WriteState) -> bool {
        match self.policy.shred_rotation {
            ShredRotation::Immediate => true,
            ShredRotation::Every(n) => ws.destroys_since_rotation >= u64::from(n),
        }
    }

    /// Rotates the KEK on demand.
    pub async fn rotate_kek(&self, caller: &Caller) -> Result<Rotated> {
        let res = async {
            self.unlocked()?;
            let mut ws = self.write.lock().await;
            self.rotate_locked(&mut ws, caller, "on demand").await
        }
        .await;
        self.audited(caller, "kek-rotate", "", res).await
    }

    /// Step 1 of a KEK rotation, with the writer lock held: a new KEK joins the keyring
    /// (written atomically) and becomes current, the old ones stay readable. Returns the
    /// unlocked state to seal with. When a rotation is already under way (two or more KEKs),
    /// changes nothing and returns the current state.
    ///
    /// A MOVE that will shred begins the rotation before sealing its tombstones, so that
    /// the rotation which follows does not open and re-seal every one of them again.
    fn begin_rotation(&self) -> Result<Arc<Unlocked>> {
        let u = self.unlocked()?;
        let keyring = self.keyring();
        if keyring.kek_ids().len() > 1 {
            // Resuming an interrupted rotation: the newest KEK is already current and the
            // unsealed set already holds both.
            return Ok(u);
        }
        let (keyring, unsealed) = keyring.add_kek(&u.unsealed)?;
        write_file_atomic(&self.keyring_path, &keyring.encode(), 0o600)?;
        let unlocked = Arc::new(Unlocked {
            unsealed,
            signing: u.signing.clone(),
            hpke: u.hpke.clone(),
        });
        self.set_keyring(keyring);
        self.set_unlocked(Some(unlocked.clone()));
        Ok(unlocked)
    }

    /// KEK rotation (DESIGN.md §5.4), with the writer lock held:
    /// 1. a new KEK joins the keyring (written atomically) and becomes current;
    /// 2. every sealed record still under an older KEK is re-sealed, in flushed batches;
    /// 3. the keyring is rewritten with only the new KEK.
    ///
    /// A crash anywhere leaves a keyring that opens every record; the next unseal sees two
    /// KEKs and finishes the job.
    async fn rotate_locked(
        &self,
        ws: &mut WriteState,
        caller: &Caller,
        why: &str,
    ) -> Result<Rotated> {
        // The oldest KEK in the keyring: the one a resumed rotation (or one begun by a MOVE,
        // see `begin_rotation`) is retiring.
        let old_kek_id = self
            .keyring()
            .kek_ids()
            .first()
            .copied()
            .unwrap_or_else(|| self.keyring().current_kek_id());
        let unlocked = self.begin_rotation()?;
        let keyring = self.keyring();
        let new_id = keyring.current_kek_id();

        let mut resealed = 0u64;
        let mut batch = Batch::new();
        let node_sealed = [
            (RecordKind::NodeSigning, NODE_SIGNING),
            (RecordKind::NodeHpke, NODE_HPKE),
            (RecordKind::AuditHead, NODE_AUDIT_HEAD),
        ];
        for (kind, id) in node_sealed {
            if let Some(sealed) = self.store.get(Ns::Node, id)?
                && lockbox_crypto::sealed_kek_id(&sealed)? != new_id
            {
                let plain = self.open_node(&unlocked.unsealed, kind, id)?;
                batch.put(
                    Ns::Node,
                    id,
                    &unlocked
                        .unsealed
                        .current_kek()
                        .seal(kind, id, plain.expose_secret())?,
                );
                resealed += 1;
            }
        }
        for (ns, kind) in [
            (Ns::Keys, RecordKind::KeyMeta),
            (Ns::Materials, RecordKind::Material),
        ] {
            // The records not yet under the new KEK (a key record and its inline material are
            // sealed together: `seal_meta`), found by their header without copying the rest.
            // One whose header does not parse is listed too: opening it reports the damage.
            let stale = self.store.ids_where(ns, |sealed| {
                lockbox_crypto::sealed_kek_id(sealed).map_or(true, |kek| kek != new_id)
            })?;
            for id in stale {
                // The writer lock is held: nothing removed or rewrote it since.
                let Some(sealed) = self.store.get(ns, &id)? else {
                    continue;
                };
                let resealed_record = if ns == Ns::Keys {
                    // Opened and sealed as metadata, which re-seals its inline material too.
                    let key_id = String::from_utf8_lossy(&id).into_owned();
                    let meta = self.open_meta(&unlocked, &key_id, &sealed)?;
                    self.seal_meta(&unlocked, &meta)?
                } else {
                    let plain = unlocked
                        .unsealed
                        .open(kind, &id, &sealed)
                        .map_err(|source| CustodyError::Record {
                            what: kind.label(),
                            id: String::from_utf8_lossy(&id).into_owned(),
                            source,
                        })?;
                    unlocked
                        .unsealed
                        .current_kek()
                        .seal(kind, &id, plain.expose_secret())?
                };
                batch.put(ns, &id, &resealed_record);
                resealed += 1;
                if batch.len() >= ROTATION_BATCH {
                    let full = std::mem::take(&mut batch);
                    self.store.commit(full).await?;
                    self.keys_written.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let before = *ws;
        ws.destroys_since_rotation = 0;
        batch.put(Ns::Node, NODE_DESTROYS, &0u64.to_be_bytes());
        self.audit(
            ws,
            &mut batch,
            Some(&unlocked),
            caller,
            "kek-rotate",
            "",
            "ok",
            format!("kek {old_kek_id} -> {new_id} ({why}); {resealed} records re-sealed"),
        )?;
        self.checkpoint(ws, &mut batch, &unlocked);
        batch.put(
            Ns::Node,
            NODE_AUDIT_HEAD,
            &seal_head(&unlocked.unsealed, ws.audit_seq, &ws.audit_hash)?,
        );
        let generation = self.apply(ws, before, batch)?;
        self.store.durable(generation).await?;
        // Every record is now under the new KEK: drop the old ones from the keyring, which is
        // what makes destroyed material (still in the log-structured store) undecryptable.
        let (keyring, unsealed) = keyring.retain_current_only(&unlocked.unsealed)?;
        write_file_atomic(&self.keyring_path, &keyring.encode(), 0o600)?;
        self.set_keyring(keyring);
        self.set_unlocked(Some(Arc::new(Unlocked {
            unsealed,
            signing: unlocked.signing.clone(),
            hpke: unlocked.hpke.clone(),
        })));
        Ok(Rotated {
            old_kek_id,
            new_kek_id: new_id,
            records_resealed: resealed,
        })
    }

    // ---- audit reading -----------------------------------------------------------------

    /// The newest `n` audit records, oldest first.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditView>> {
        self.unlocked()?;
        let mut out = Vec::new();
        for r in self.store.iter_rev(Ns::Audit).take(n) {
            let (id, bytes) = r?;
            let entry = AuditEntry::decode(&bytes).map_err(|source| CustodyError::Record {
                what: "audit record",
                id: decode_u64(Some(id)).to_string(),
                source,
            })?;
            let hash = hex::encode(entry.hash());
            out.push(AuditView { entry, hash });
        }
        out.reverse();
        Ok(out)
    }

    /// Walks the whole chain: sequence, links, checkpoint signatures by this node's identity
    /// key, and the sealed head (which catches a removed or edited last record).
    pub async fn audit_verify(&self) -> Result<AuditReport> {
        let u = self.unlocked()?;
        let ws = self.write.lock().await;
        let mut verifier = ChainVerifier::new(u.signing.public_key());
        let mut report = AuditReport {
            ok: true,
            records: 0,
            checkpoints: 0,
            bad_seq: 0,
            error: String::new(),
        };
        for r in self.store.iter_after(Ns::Audit, None) {
            let (id, bytes) = r?;
            let Ok(seq) = <[u8; 8]>::try_from(id.as_slice()).map(u64::from_be_bytes) else {
                report.ok = false;
                report.error = "audit record stored under a malformed sequence number".into();
                break;
            };
            if let Err(e) = verifier.push(seq, &bytes) {
                report.ok = false;
                report.bad_seq = e.seq;
                report.error = e.to_string();
                break;
            }
        }
        let summary = verifier.summary();
        report.records = summary.records;
        report.checkpoints = summary.checkpoints;
        if report.ok {
            let sealed = self
                .store
                .get(Ns::Node, NODE_AUDIT_HEAD)?
                .ok_or_else(|| CustodyError::Corrupt("audit head record is missing".into()))?;
            match u
                .unsealed
                .open(RecordKind::AuditHead, NODE_AUDIT_HEAD, &sealed)
            {
                Ok(plain) => {
                    let p = plain.expose_secret();
                    let head_seq = p
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    let head_hash = p.get(8..40).unwrap_or_default();
                    if head_seq != summary.head_seq || head_hash != summary.head_hash {
                        report.ok = false;
                        report.bad_seq = head_seq.min(summary.head_seq + 1);
                        report.error = format!(
                            "audit record {}: the log ends at record {} but the sealed head names record {} (records removed or the last one edited)",
                            report.bad_seq, summary.head_seq, head_seq
                        );
                    }
                }
                Err(e) => {
                    report.ok = false;
                    report.error = format!("audit head: {e}");
                }
            }
        }
        drop(ws);
        Ok(report)
    }
}

#[derive(Debug, Clone, Copy)]
enum DeriveMaterial {
    Share,
    Fresh,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn material_ids_are_hex_unique_and_increase_within_a_process() {
        let ids: Vec<String> = (0..10_000).map(|_| new_material_id().unwrap()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        // Strictly increasing as text (what sled orders by), so also all distinct.
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        // The time-ordered half starts with the clock (ms << 16), the rest is random.
        let prefix = u64::from_str_radix(&ids[0][..16], 16).unwrap();
        assert!((prefix >> 16).abs_diff(now_ms()) < 60_000, "{}", ids[0]);
        assert_ne!(ids[0][16..], ids[1][16..]);
    }
}
