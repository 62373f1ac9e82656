//! The domain's types: what a key is (its metadata, versions and origin), what the custody
//! API returns, and the checks on names that come from callers (key ids, labels).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use lockbox_crypto::{AuditEntry, SecretBytes};
use serde::{Deserialize, Serialize};

use super::now_ms;
use crate::config::ClonePolicy;
use crate::error::{CustodyError, Result};

const MAX_LABELS: usize = 64;

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

/// Where a version's material is held. The material is sealed with its id (32 hex digits) as
/// associated data wherever it is held, so moving it between the key's record and a shared
/// record is a copy of the same sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Material {
    /// Sealed in the key's own record (like a material record: kind `material`, this id),
    /// while no other key id uses it. A create, a rekey or a received key then writes one
    /// record instead of three (metadata, material, reference), and a MOVE or destroy removes
    /// it by rewriting that one record.
    Inline {
        /// The material id.
        id: String,
        /// The sealed material.
        sealed: Vec<u8>,
    },
    /// In the shared material record `id`, which a snapshot or a same-key clone refers to
    /// too (records written before inline material existed are all of this form).
    Shared {
        /// The material id.
        id: String,
    },
    /// Destroyed: the version holds nothing and points nowhere.
    Shredded,
}

impl Material {
    /// The material id, unless shredded.
    pub fn id(&self) -> Option<&str> {
        match self {
            Material::Inline { id, .. } | Material::Shared { id } => Some(id),
            Material::Shredded => None,
        }
    }
}

/// One version of a key and where its material is.
///
/// Stored as JSON in the shape of `VersionRecord` (`material_id`, empty once destroyed, and
/// `inline`); reading is strict: a destroyed version that still names material, or a readable
/// one that names none, is corruption.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "stored::VersionRecord")]
pub struct VersionMeta {
    /// 1, 2, ...
    pub version: u32,
    /// Its state.
    pub state: VersionState,
    /// When it was made.
    pub created_unix_ms: u64,
    /// Its material (`Shredded` exactly when the state is destroyed).
    pub material: Material,
}

impl VersionMeta {
    /// A new version whose material is sealed inline.
    pub(super) fn inline(
        version: u32,
        state: VersionState,
        now: u64,
        id: String,
        sealed: Vec<u8>,
    ) -> Self {
        VersionMeta {
            version,
            state,
            created_unix_ms: now,
            material: Material::Inline { id, sealed },
        }
    }

    /// Whether the version still has material (any state but destroyed).
    pub(super) fn readable(&self) -> bool {
        self.state != VersionState::Destroyed
    }

    /// The shared material record this version refers to, if it has one.
    pub(super) fn shared_material(&self) -> Option<&str> {
        match &self.material {
            Material::Shared { id } => Some(id),
            _ => None,
        }
    }

    /// Marks the version destroyed and forgets where its material was: what a destroy or a
    /// MOVE leaves in the tombstone.
    pub(super) fn shred(&mut self) {
        self.state = VersionState::Destroyed;
        self.material = Material::Shredded;
    }
}

/// How a key id came to be: recorded in its metadata and shown by `key describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OriginKind {
    /// Fresh material made here.
    Created,
    /// A snapshot of another key id (same material).
    Snapshot,
    /// A clone sharing the source's material.
    CloneSameKey,
    /// A clone with fresh material.
    CloneNewKey,
    /// Received from a peer under a grant.
    Received,
}

impl OriginKind {
    /// Every kind, for messages that list them.
    pub const ALL: [OriginKind; 5] = [
        OriginKind::Created,
        OriginKind::Snapshot,
        OriginKind::CloneSameKey,
        OriginKind::CloneNewKey,
        OriginKind::Received,
    ];

    /// The name on disk, on the wire and in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            OriginKind::Created => "created",
            OriginKind::Snapshot => "snapshot",
            OriginKind::CloneSameKey => "clone-same-key",
            OriginKind::CloneNewKey => "clone-new-key",
            OriginKind::Received => "received",
        }
    }

    /// Parses a name exactly as [`OriginKind::as_str`] writes it; anything else is `None`.
    pub fn parse(s: &str) -> Option<OriginKind> {
        OriginKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a key came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    /// How it came to be.
    pub kind: OriginKind,
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

/// Where a key id stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Usable: released, snapshotted, cloned, sent.
    Active,
    /// A standing backup from a REPLICATE grant: not released until promoted.
    Replica,
    /// Destroyed: the record stays as a tombstone, so the id is never reused.
    Destroyed,
    /// Taken elsewhere by a MOVE: a tombstone naming where (the id may come back).
    Moved(MovedTo),
}

impl KeyState {
    /// Destroyed or moved away: the record holds no material.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, KeyState::Destroyed | KeyState::Moved(_))
    }
}

/// A key id's metadata. Sealed at rest like material (labels may name tenants), and the seal
/// binds it to its key id, so metadata cannot be swapped between keys.
///
/// Stored as JSON in the shape of [`KeyMetaRecord`] (the shape every release has written);
/// reading it back is strict: an unknown origin, clone policy or version state is corruption.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "stored::KeyMetaRecord")]
pub struct KeyMeta {
    /// The key id (UUID text).
    pub key_id: String,
    /// Where it stands.
    pub state: KeyState,
    /// Material length in bytes (32 or 64).
    pub length: u32,
    /// Free-form labels (volume, pool, tenant...).
    pub labels: BTreeMap<String, String>,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Provenance.
    pub origin: Origin,
    /// Per-key clone policy; `None` follows the node's config.
    pub clone_policy: Option<ClonePolicy>,
    /// The version `get` returns by default.
    pub current_version: u32,
    /// Every version, oldest first.
    pub versions: Vec<VersionMeta>,
}

impl KeyMeta {
    /// The key-level state as the API names it: moved, destroyed, replica, rekeying (a new
    /// version pending) or active.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            KeyState::Moved(_) => "moved",
            KeyState::Destroyed => "destroyed",
            KeyState::Replica => "replica",
            KeyState::Active
                if self
                    .versions
                    .iter()
                    .any(|v| v.state == VersionState::Rekeying) =>
            {
                "rekeying"
            }
            KeyState::Active => "active",
        }
    }

    /// The shared material records this key refers to (inline material has no other user).
    pub(super) fn material_ids(&self) -> impl Iterator<Item = &str> {
        self.versions
            .iter()
            .filter_map(VersionMeta::shared_material)
    }

    /// Whether a readable version holds its material in this record: rewriting the record
    /// without it shreds that material.
    pub(super) fn holds_inline(&self) -> bool {
        self.versions
            .iter()
            .any(|v| matches!(v.material, Material::Inline { .. }))
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
    /// The store generation this answer needs durable: the newest unsynced write of the
    /// records it was read from (`Store::unsynced`; 0 when all are durable).
    pub needs: u64,
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
    /// The assist key's public half (hex), sealed or not.
    pub assist_public_key: String,
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

/// Text from outside (a peer, a file, a caller) as an error or audit record quotes it: at most
/// [`QUOTE_MAX`] characters, escaped, in double quotes, with the size of what was cut. An error
/// never carries a whole hostile input (a 20 MB label name once went into the audit log).
pub(crate) fn quote(s: &str) -> String {
    let mut chars = s.char_indices();
    match chars.nth(QUOTE_MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} more bytes)", &s[..cut], s.len() - cut),
    }
}

/// Longest prefix of outside text an error quotes.
pub(crate) const QUOTE_MAX: usize = 64;

/// Refuses a key that has been moved away or destroyed (`live_meta`'s check).
pub(super) fn check_live(key_id: &str, meta: &KeyMeta) -> Result<()> {
    match &meta.state {
        KeyState::Moved(m) => Err(CustodyError::WrongState {
            key_id: key_id.into(),
            why: format!("moved to {} by grant {}", m.node, m.grant_id),
        }),
        KeyState::Destroyed => Err(CustodyError::KeyDestroyed(key_id.into())),
        KeyState::Active | KeyState::Replica => Ok(()),
    }
}

/// Refuses a replica (`usable_meta`'s extra check).
pub(super) fn check_not_replica(key_id: &str, meta: &KeyMeta) -> Result<()> {
    if meta.state == KeyState::Replica {
        return Err(CustodyError::WrongState {
            key_id: key_id.into(),
            why: "is a replica (a standing backup): promote it first with `lockboxctl key promote`"
                .into(),
        });
    }
    Ok(())
}

pub(super) fn parse_key_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| CustodyError::InvalidArgument(format!("key id {} is not a UUID", quote(id))))
}

pub(super) fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
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
                "label name {} must be 1-128 characters of letters, digits, - _ . / :",
                quote(k)
            )));
        }
        if v.len() > 1024 || v.chars().any(char::is_control) {
            return Err(CustodyError::InvalidArgument(format!(
                "label {}: value must be at most 1024 printable characters",
                quote(k)
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
pub(super) fn new_material_id() -> Result<String> {
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

pub(super) fn ref_id(material_id: &str, key_id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(material_id.len() + 1 + key_id.len());
    v.extend_from_slice(material_id.as_bytes());
    v.push(b'/');
    v.extend_from_slice(key_id.as_bytes());
    v
}

mod stored;

#[cfg(test)]
mod tests;
