//! The destination side of a transfer (DESIGN.md §7): opening received batches, checking and
//! sealing received keys as they arrive, and storing them with the grant's consumption.

use std::collections::BTreeMap;
use std::sync::Arc;

use lockbox_crypto::{
    BatchContext, GrantOp, ReceiptBody, SealedBatch, SecretBytes, StoredVersions, VerifiedGrant,
    op_name,
};
use lockbox_store::Ns;

use super::grants::{GrantRole, StoredReceipt, put_grant_record};
use super::model::{
    Caller, KeyMeta, KeyState, Material, Origin, OriginKind, VersionMeta, VersionState,
    new_material_id, parse_key_id, validate_labels,
};
use super::txn::Event;
use super::{Custody, Unlocked};
use crate::config::ClonePolicy;
use crate::error::{CustodyError, Result};

/// One received key with every version, checked and sealed for this node as soon as its
/// versions were all in, while the rest of the delivery was still streaming
/// ([`Custody::seal_received`]); [`Custody::receive`] stores it. Sealing is the destination's
/// main per-key work (two AEAD seals and the metadata's encoding): done as the keys arrive, it
/// runs beside the source's sealing and sending instead of after them.
pub struct ReceivedKey {
    /// Key id (canonical spelling).
    key_id: String,
    /// The version numbers stored, for the receipt.
    versions: Vec<u32>,
    /// The unlocked state it was sealed under (if the KEK changes before `receive`, the
    /// record is opened with it and sealed again).
    sealed_under: Arc<Unlocked>,
    /// The sealed key record (every version's material inline).
    sealed_meta: Vec<u8>,
}

/// A key version that arrived, unwrapped.
pub struct Incoming {
    /// Key id.
    pub key_id: String,
    /// Version number.
    pub version: u32,
    /// State at the source.
    pub state: VersionState,
    /// True for the version `get` returns.
    pub current: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Per-key clone policy (`None`: the node's).
    pub clone_policy: Option<ClonePolicy>,
    /// The plaintext, zeroized on drop.
    pub material: SecretBytes,
}

/// A received key's versions must make sense before anything is stored: numbered from 1,
/// each once, all of one length, exactly one current.
fn check_versions(key_id: &str, versions: &[Incoming]) -> Result<()> {
    let bad = |why: String| CustodyError::InvalidArgument(format!("received key {key_id}: {why}"));
    let Some(first) = versions.first() else {
        return Err(bad("no versions".into()));
    };
    let mut last = 0u32;
    for v in versions {
        if v.version == 0 || v.version == last {
            return Err(bad(format!("version {} is zero or repeated", v.version)));
        }
        last = v.version;
        if v.material.len() != first.material.len() {
            return Err(bad("versions of different lengths".into()));
        }
    }
    let mut current = versions.iter().filter(|v| v.current);
    match (current.next(), current.next()) {
        (Some(c), None) if c.state == VersionState::Active => {}
        (Some(c), None) => {
            return Err(bad(format!(
                "current version {} is {}, not active",
                c.version,
                c.state.as_str()
            )));
        }
        _ => return Err(bad("exactly one version must be current".into())),
    }
    // A rekey commit retires the active version: a key has one active version, its current.
    if let Some(v) = versions
        .iter()
        .find(|v| v.state == VersionState::Active && !v.current)
    {
        return Err(bad(format!(
            "version {} is active but not current (only the current version is active)",
            v.version
        )));
    }
    if versions
        .iter()
        .filter(|v| v.state == VersionState::Rekeying)
        .count()
        > 1
    {
        return Err(bad("more than one version is pending a rekey".into()));
    }
    if let Some(v) = versions
        .iter()
        .find(|v| v.labels != first.labels || v.clone_policy != first.clone_policy)
    {
        return Err(bad(format!(
            "version {} carries other labels or another clone policy than version {}",
            v.version, first.version
        )));
    }
    Ok(())
}

/// A version state as a source sends it. Only the states a sent version can have are taken:
/// a destroyed version has no material to send, and anything else is not ours.
fn parse_state(key_id: &str, version: u32, s: &str) -> Result<VersionState> {
    match s {
        "active" => Ok(VersionState::Active),
        "rekeying" => Ok(VersionState::Rekeying),
        "retired" => Ok(VersionState::Retired),
        other => Err(CustodyError::InvalidArgument(format!(
            "received key {key_id} version {version}: state {} is not one a source sends \
             (active, rekeying, retired)",
            crate::custody::model::quote(other)
        ))),
    }
}

impl Incoming {
    /// Builds an incoming key from its wire metadata, parsing every field strictly: an
    /// unknown state or clone policy refuses the delivery by name.
    pub fn new(
        key_id: String,
        version: u32,
        state: &str,
        current: bool,
        labels: BTreeMap<String, String>,
        clone_policy: &str,
        material: SecretBytes,
    ) -> Result<Incoming> {
        let state = parse_state(&key_id, version, state)?;
        // As at create, checked as each version arrives (before a delivery keeps anything).
        validate_labels(&labels)
            .map_err(|e| CustodyError::InvalidArgument(format!("received key {key_id}: {e}")))?;
        let clone_policy = match clone_policy {
            "" => None,
            p => Some(ClonePolicy::parse(p).ok_or_else(|| {
                CustodyError::InvalidArgument(format!(
                    "received key {key_id}: unknown clone policy {} (deny, same-key, new-key)",
                    crate::custody::model::quote(p)
                ))
            })?),
        };
        Ok(Incoming {
            key_id,
            version,
            state,
            current,
            labels,
            clone_policy,
            material,
        })
    }
}

impl Custody {
    /// Opens a batch sealed to this node's HPKE key.
    pub fn open_transfer_batch(
        &self,
        ctx: &BatchContext<'_>,
        batch: &SealedBatch,
    ) -> Result<Vec<(String, u32, SecretBytes)>> {
        let u = self.unlocked()?;
        Ok(lockbox_crypto::open_batch(&u.hpke, ctx, batch)?)
    }

    /// Whether a received key may take this key id here: yes when the id is new, when it is
    /// the `moved` tombstone of a key that left (it comes back), or when it is a replica and
    /// the grant is a REPLICATE (the standing backup is refreshed). Anything else (a live
    /// key, a destroyed one: ids are never reused) is refused. Returns the record replaced.
    pub(super) fn replaceable(
        &self,
        u: &Unlocked,
        key_id: &str,
        replicate: bool,
    ) -> Result<Option<KeyMeta>> {
        let Some(meta) = self.load_meta(u, key_id)? else {
            return Ok(None);
        };
        if matches!(meta.state, KeyState::Moved(_))
            || (replicate && meta.state == KeyState::Replica)
        {
            return Ok(Some(meta));
        }
        Err(CustodyError::AlreadyExists(key_id.to_string()))
    }

    /// Checks, before a delivery streams, that every key id of a grant may be received here
    /// (see `replaceable`).
    pub fn check_receivable(&self, key_ids: &[String], replicate: bool) -> Result<()> {
        let u = self.unlocked()?;
        for k in key_ids {
            self.replaceable(&u, &parse_key_id(k)?, replicate)?;
        }
        Ok(())
    }

    /// Checks one received key (all its versions, sorted by version) and seals its record
    /// under the current KEK, without touching the database. Whether the key id may be
    /// received here is checked by `receive`, under the writer lock. The caller drops the
    /// plaintext versions once this returns.
    pub fn seal_received(
        &self,
        grant: &VerifiedGrant,
        now: u64,
        key_id: &str,
        versions: &[Incoming],
    ) -> Result<ReceivedKey> {
        let u = self.unlocked()?;
        let id = parse_key_id(key_id)?;
        let sealed_meta = self.seal_received_key(&u, grant, now, &id, versions)?;
        Ok(ReceivedKey {
            key_id: id,
            versions: versions.iter().map(|v| v.version).collect(),
            sealed_under: u,
            sealed_meta,
        })
    }

    /// A key record sealed under `old`'s KEK, sealed again under the current one (with its
    /// inline material): for a received key whose KEK rotated away before it was stored.
    pub(super) fn reseal_received(
        &self,
        old: &Unlocked,
        u: &Unlocked,
        key: &ReceivedKey,
    ) -> Result<Vec<u8>> {
        let mut meta = self.open_meta(old, &key.key_id, &key.sealed_meta)?;
        for v in meta.versions.iter_mut() {
            if let Material::Inline { id, sealed } = &mut v.material {
                let plain = self.open_sealed_material(old, &key.key_id, id, sealed)?;
                *sealed = self.seal_material(u, id, &plain)?;
            }
        }
        self.seal_meta(u, &meta)
    }

    /// The sealed record of a received key (its versions sorted).
    pub(super) fn seal_received_key(
        &self,
        u: &Unlocked,
        grant: &VerifiedGrant,
        now: u64,
        id: &str,
        versions: &[Incoming],
    ) -> Result<Vec<u8>> {
        let replica = grant.op() == GrantOp::Replicate;
        check_versions(id, versions)?;
        let first = versions.first().ok_or_else(|| {
            CustodyError::InvalidArgument(format!("key {id}: no version received"))
        })?;
        let labels = first.labels.clone();
        validate_labels(&labels)?;
        let length = first.material.len() as u32;
        if length != 32 && length != 64 {
            return Err(CustodyError::InvalidArgument(format!(
                "key {id}: received material of {length} bytes"
            )));
        }
        let current_version = versions
            .iter()
            .find(|v| v.current)
            .map(|v| v.version)
            .unwrap_or(first.version);
        // Each version's material inline: the received key is one record here.
        let mut metas = Vec::with_capacity(versions.len());
        for v in versions {
            let material_id = new_material_id()?;
            let sealed = self.seal_material(u, &material_id, &v.material)?;
            metas.push(VersionMeta::inline(
                v.version,
                v.state,
                now,
                material_id,
                sealed,
            ));
        }
        let meta = KeyMeta {
            key_id: id.to_string(),
            state: if replica {
                KeyState::Replica
            } else {
                KeyState::Active
            },
            length,
            labels,
            created_unix_ms: now,
            origin: Origin {
                kind: OriginKind::Received,
                from_key_id: String::new(),
                from_node: grant.body.source_node.clone(),
                grant_id: hex::encode(grant.grant_id),
            },
            clone_policy: first.clone_policy,
            current_version,
            versions: metas,
        };
        self.seal_meta(u, &meta)
    }

    /// Stores received keys, consumes the grant and signs the receipt, in one atomic durable
    /// batch (so a crash leaves either nothing or everything, and a retry of the same grant
    /// returns the same receipt).
    ///
    /// `keys` come from [`Custody::seal_received`], each key id once with all its versions;
    /// `now` is the time they were sealed with (the receipt's).
    pub async fn receive(
        &self,
        caller: &Caller,
        grant: &VerifiedGrant,
        now: u64,
        mut keys: Vec<ReceivedKey>,
    ) -> Result<StoredReceipt> {
        let mut txn = self.write_txn().await;
        let u = self.unlocked()?;
        if let Some(r) = self.grant_record(grant, GrantRole::Destination)? {
            return Ok(r);
        }
        let grant_hex = hex::encode(grant.grant_id);
        let replica = grant.op() == GrantOp::Replicate;
        // In key order (they arrive so from an honest source: then this is one pass).
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        if let Some(w) = keys.windows(2).find(|w| w[0].key_id == w[1].key_id) {
            return Err(CustodyError::InvalidArgument(format!(
                "key {}: its versions arrived apart in the delivery",
                w[0].key_id
            )));
        }
        // Under the writer lock: may each key id be received here, and is each record sealed
        // under the KEK current now (a rotation may have finished since)? The per-key reads
        // split over the cores for an evacuation.
        let checked = crate::par::try_map(&keys, |k| {
            let replaced = self.replaceable(&u, &k.key_id, replica)?;
            let resealed = if Arc::ptr_eq(&k.sealed_under, &u) {
                None
            } else {
                Some(self.reseal_received(&k.sealed_under, &u, k)?)
            };
            Ok::<_, CustodyError>((replaced, resealed))
        })?;
        let mut stored = Vec::with_capacity(keys.len());
        // The new key records in key order, after any removals of replaced keys' shared
        // records: a large batch is then one sorted run for the store.
        let mut metas = Vec::with_capacity(keys.len());
        for (k, (replaced, resealed)) in keys.into_iter().zip(checked) {
            if let Some(old) = &replaced {
                self.drop_material_refs(std::slice::from_ref(old), txn.batch())?;
            }
            let now_state = if replica {
                KeyState::Replica
            } else {
                KeyState::Active
            };
            txn.count_key(replaced.as_ref().map(|m| &m.state), &now_state);
            stored.push(StoredVersions {
                key_id: k.key_id.clone(),
                versions: k.versions,
            });
            metas.push((k.key_id, resealed.unwrap_or(k.sealed_meta)));
        }
        for (key_id, sealed) in &metas {
            txn.put(Ns::Keys, key_id.as_bytes(), sealed);
        }
        let signed = lockbox_crypto::sign_receipt(
            &u.signing,
            &ReceiptBody {
                grant_id: grant.grant_id.to_vec(),
                op: grant.body.op,
                source_node: grant.body.source_node.clone(),
                dest_node: grant.body.dest_node.clone(),
                key_ids: grant.body.key_ids.clone(),
                stored_unix_ms: now,
                stored,
            },
        )
        .map_err(|e| CustodyError::Transfer(format!("signing the receipt: {e}")))?;
        let receipt = StoredReceipt {
            body: signed.body,
            signature: signed.signature.to_vec(),
        };
        put_grant_record(txn.batch(), grant, GrantRole::Destination, receipt.clone())?;
        txn.audit(
            Some(&u),
            caller,
            Event::ok(
                "transfer-receive",
                "",
                format!(
                    "grant {grant_hex} {} from {}: {} keys{}",
                    op_name(grant.body.op),
                    grant.body.source_node,
                    grant.body.key_ids.len(),
                    if replica { " (replicas)" } else { "" }
                ),
            ),
        )?;
        txn.commit().await?;
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn version(n: u32, state: &str, current: bool) -> Incoming {
        Incoming::new(
            "8d19909b-21b6-428c-943e-d5dfc880254d".into(),
            n,
            state,
            current,
            BTreeMap::new(),
            "",
            SecretBytes::new(vec![7; 32]),
        )
        .unwrap()
    }

    /// What a real key can be passes; a second active version (which no source holds: a rekey
    /// commit retires the old one) is refused by name.
    #[test]
    fn only_the_current_version_of_a_received_key_is_active() {
        let id = "8d19909b-21b6-428c-943e-d5dfc880254d";
        check_versions(
            id,
            &[
                version(1, "retired", false),
                version(2, "active", true),
                version(3, "rekeying", false),
            ],
        )
        .unwrap();
        let e = check_versions(
            id,
            &[version(1, "active", false), version(2, "active", true)],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("version 1 is active but not current"),
            "{e}"
        );
    }
}
