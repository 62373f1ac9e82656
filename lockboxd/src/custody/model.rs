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
    pub(super) fn readable(&self) -> bool {
        self.state != VersionState::Destroyed
    }

    /// The shared material record this version refers to, if it has one.
    pub(super) fn shared_material(&self) -> Option<&str> {
        (self.readable() && self.inline.is_none()).then_some(self.material_id.as_str())
    }

    /// Marks the version destroyed and forgets where its material was: what a destroy or a
    /// MOVE leaves in the tombstone.
    pub(super) fn shred(&mut self) {
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

/// Refuses a key that has been moved away or destroyed (`live_meta`'s check).
pub(super) fn check_live(key_id: &str, meta: &KeyMeta) -> Result<()> {
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
pub(super) fn check_not_replica(key_id: &str, meta: &KeyMeta) -> Result<()> {
    if meta.replica {
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
        .map_err(|_| CustodyError::InvalidArgument(format!("key id {id:?} is not a UUID")))
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
