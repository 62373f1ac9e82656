//! The source side of a transfer (DESIGN.md §7): reading the keys to send, signing batches,
//! and completing the grant (the MOVE tombstones).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use lockbox_crypto::{
    BatchContext, GrantOp, ReceiptBody, SealedBatch, SecretBytes, VerifiedGrant, op_name,
};
use lockbox_store::Ns;
use prost::Message;

use super::Custody;
use super::grants::{GrantRole, StoredReceipt, put_grant_record};
use super::model::{
    Caller, KeyMeta, KeyState, MovedTo, VersionMeta, VersionState, check_live, check_not_replica,
    parse_key_id,
};
use super::txn::Event;
use crate::error::{CustodyError, Result};

/// One version of a key on its way out.
pub struct OutgoingVersion {
    /// Version number.
    pub version: u32,
    /// Its state at the source.
    pub state: VersionState,
    /// The plaintext, zeroized on drop; only ever HPKE-sealed before it leaves.
    pub material: SecretBytes,
}

/// A key on its way out.
pub struct Outgoing {
    /// Key id.
    pub key_id: String,
    /// Every readable version.
    pub versions: Vec<OutgoingVersion>,
    /// The metadata record as read: its labels and clone policy travel beside the sealed
    /// material, and a MOVE's completion checks against it.
    pub as_read: AsRead,
}

impl Outgoing {
    /// The key's metadata as read.
    pub fn meta(&self) -> &KeyMeta {
        &self.as_read.meta
    }

    /// What a MOVE's completion needs once the keys have left: the metadata as read. The
    /// plaintext material is dropped (and zeroized) here, not kept until the completion.
    pub fn into_as_read(self) -> AsRead {
        self.as_read
    }
}

/// A key's metadata record as `read_for_transfer` read it: which sealing it was and what it
/// says.
///
/// A MOVE's completion re-reads every key under the writer lock, since anything may have
/// happened to it while the keys travelled (a rekey, a destroy). When the sealed record is
/// still the one read then (same nonce and tag), it says the same thing, so the completion
/// reuses this metadata instead of opening and decoding the record again (~40 % of the time an
/// evacuation's completion spent re-reading went to that). Any rewrite of the record (a rekey,
/// a destroy, a KEK rotation's re-seal: each seal has a fresh random nonce) changes the
/// fingerprint, and the completion reads and checks it afresh.
///
/// Cheaper still, and the common case of an evacuation: when no batch wrote any key record
/// since the read (`Custody::keys_written` unchanged), every record is the one read, and the
/// completion reads none of them again (re-reading 100,000 records from sled was a third of
/// the completion's CPU).
pub struct AsRead {
    /// The sealed record's fingerprint (`lockbox_crypto::seal_fingerprint`): its nonce and
    /// tag, which any rewrite changes; keeping it instead of the record saves the source a
    /// copy of every record it moves.
    fingerprint: [u8; lockbox_crypto::SEAL_FINGERPRINT_LEN],
    meta: KeyMeta,
    /// `Custody::keys_written` before the record was read.
    written: u64,
}

/// Refuses to complete a MOVE when the source holds a version of a key that the receipt does
/// not list as stored at the destination: that version was added after the keys were sent
/// (a rekey between a crash and the retry that answered with the stored receipt), and
/// tombstoning the key would shred the only copy. Nothing is removed; both hosts keep what
/// they have and the error names the key. Receipts without the list (destinations that
/// predate it) are taken as before.
fn check_received_everything(
    victims: &[KeyMeta],
    receipt: &StoredReceipt,
    dest_node: &str,
) -> Result<()> {
    let body = ReceiptBody::decode(receipt.body.as_slice())
        .map_err(|e| CustodyError::Corrupt(format!("receipt: {e}")))?;
    if body.stored.is_empty() {
        return Ok(());
    }
    // An evacuation lists every key of the lockbox: look them up by id, not by scanning the
    // list once per key (quadratic: 40 % of the source's CPU moving 50,000 keys).
    let mut stored: HashMap<&str, &[u32]> = HashMap::with_capacity(body.stored.len());
    for s in &body.stored {
        stored
            .entry(s.key_id.as_str())
            .or_insert(s.versions.as_slice());
    }
    for m in victims {
        let at_dest: &[u32] = stored.get(m.key_id.as_str()).copied().unwrap_or(&[]);
        // Destroyed versions hold no material and are never sent.
        let missing: Vec<u32> = m
            .versions
            .iter()
            .filter(|v| v.state != VersionState::Destroyed)
            .map(|v| v.version)
            .filter(|v| !at_dest.contains(v))
            .collect();
        if !missing.is_empty() {
            return Err(CustodyError::Transfer(format!(
                "completing the move: key {} has version(s) {missing:?} that {dest_node} did not \
                 receive (the key changed after it was sent); nothing was removed here, and \
                 {dest_node} keeps the versions it received",
                m.key_id
            )));
        }
    }
    Ok(())
}

impl Custody {
    /// Reads the keys a grant covers, with every readable version's material, refusing
    /// anything not usable here (unknown, destroyed, moved, replica).
    ///
    /// Records are read in key order, then materials in material order, rather than in the
    /// grant's order: an evacuation names every key, ids are random, and in id order each
    /// database page is fetched once instead of once per key on it (a 100,000-key lockbox
    /// outgrows the page cache). The result is in key-id order.
    pub fn read_for_transfer(&self, key_ids: &[String]) -> Result<Vec<Outgoing>> {
        // Read again with the new keys if a KEK rotation ran meanwhile (`read_unlocked`).
        self.read_unlocked(|u| self.read_for_transfer_with(u, key_ids))
    }

    fn read_for_transfer_with(
        &self,
        u: &super::Unlocked,
        key_ids: &[String],
    ) -> Result<Vec<Outgoing>> {
        // Before any record is read (see `AsRead`).
        let written = self.keys_written.load(Ordering::SeqCst);
        let mut ids = key_ids
            .iter()
            .map(|k| parse_key_id(k))
            .collect::<Result<Vec<_>>>()?;
        ids.sort_unstable();
        let metas = crate::par::try_map(&ids, |id| {
            let (sealed, meta) = self
                .load_meta_sealed(u, id)?
                .ok_or_else(|| CustodyError::KeyNotFound(id.clone()))?;
            check_live(id, &meta)?;
            check_not_replica(id, &meta)?;
            Ok::<_, CustodyError>((lockbox_crypto::seal_fingerprint(&sealed)?, meta))
        })?;
        let metas: Vec<(
            String,
            ([u8; lockbox_crypto::SEAL_FINGERPRINT_LEN], KeyMeta),
        )> = ids.into_iter().zip(metas).collect();
        // (material id, key index, version index) of every readable version, in material order.
        let mut wanted: Vec<(&str, usize, usize)> = Vec::with_capacity(metas.len());
        for (k, (_, (_, meta))) in metas.iter().enumerate() {
            for (i, v) in meta.versions.iter().enumerate() {
                if let Some(id) = v.material.id() {
                    wanted.push((id, k, i));
                }
            }
        }
        wanted.sort_unstable();
        let materials = crate::par::try_map(&wanted, |(_, k, i)| {
            let (id, (_, meta)) = &metas[*k];
            self.open_version(u, id, &meta.versions[*i])
        })?;
        let mut opened: Vec<Vec<(usize, SecretBytes)>> = metas.iter().map(|_| Vec::new()).collect();
        for ((_, k, i), material) in wanted.iter().zip(materials) {
            opened[*k].push((*i, material));
        }
        let mut out = Vec::with_capacity(metas.len());
        for ((id, (fingerprint, meta)), mut materials) in metas.into_iter().zip(opened) {
            // Back in version order (the order the metadata lists them).
            materials.sort_unstable_by_key(|(i, _)| *i);
            let versions = materials
                .into_iter()
                .map(|(i, material)| OutgoingVersion {
                    version: meta.versions[i].version,
                    state: meta.versions[i].state,
                    material,
                })
                .collect();
            out.push(Outgoing {
                key_id: id,
                versions,
                as_read: AsRead {
                    fingerprint,
                    meta,
                    written,
                },
            });
        }
        Ok(out)
    }

    /// Signs a sealed batch with this node's attested identity key.
    pub fn sign_transfer_batch(
        &self,
        ctx: &BatchContext<'_>,
        batch: &SealedBatch,
    ) -> Result<[u8; 64]> {
        let u = self.unlocked()?;
        Ok(lockbox_crypto::sign_batch(&u.signing, ctx, batch))
    }

    /// Records a grant as completed at the source, with the destination's receipt; for a
    /// MOVE, leaves `moved` tombstones and shreds material no other key id refers to.
    /// Idempotent: returns false when the grant was already completed.
    pub async fn complete_as_source(
        &self,
        caller: &Caller,
        grant: &VerifiedGrant,
        receipt: &StoredReceipt,
        as_read: Vec<AsRead>,
    ) -> Result<bool> {
        let mut txn = self.write_txn().await;
        let mut u = self.unlocked()?;
        if self.grant_record(grant, GrantRole::Source)?.is_some() {
            return Ok(false);
        }
        let grant_hex = hex::encode(grant.grant_id);
        let is_move = grant.op() == GrantOp::Move;
        let mut shredded = false;
        if is_move {
            // In key order: see `read_for_transfer`.
            let mut ids = grant
                .body
                .key_ids
                .iter()
                .map(|k| parse_key_id(k))
                .collect::<Result<Vec<_>>>()?;
            ids.sort_unstable();
            let written = self.keys_written.load(Ordering::SeqCst);
            let untouched = as_read.len() == ids.len()
                && as_read
                    .iter()
                    .zip(&ids)
                    .all(|(r, id)| r.written == written && r.meta.key_id == *id);
            let victims = if untouched {
                // No key record was written since these were read (and read in this order):
                // they are the records here now.
                as_read.into_iter().map(|r| r.meta).collect()
            } else {
                let as_read: HashMap<&str, &AsRead> = as_read
                    .iter()
                    .map(|r| (r.meta.key_id.as_str(), r))
                    .collect();
                crate::par::try_map(&ids, |id| {
                    match (
                        as_read.get(id.as_str()),
                        self.store.get(Ns::Keys, id.as_bytes())?,
                    ) {
                        // The record the keys left with, unchanged: it passed
                        // `read_for_transfer`'s checks (stricter than `live_meta`'s) and says
                        // the same now.
                        (Some(r), Some(now))
                            if lockbox_crypto::seal_fingerprint(&now).ok()
                                == Some(r.fingerprint) =>
                        {
                            Ok(r.meta.clone())
                        }
                        _ => self.live_meta(&u, id),
                    }
                })?
            };
            check_received_everything(&victims, receipt, &grant.body.dest_node)?;
            shredded = self.drop_material_refs(&victims, txn.batch())?;
            if shredded {
                txn.count_shred();
                if self.rotation_due(&txn.state()) {
                    // Every check passed: start the rotation the shredding calls for now,
                    // so the tombstones below are sealed once, under the new KEK, instead of
                    // being re-sealed by the rotation (a crash in between leaves two KEKs,
                    // which the next unseal finishes rotating).
                    u = self.begin_rotation()?;
                }
            }
            let mut tombstones = victims;
            let was: Vec<KeyState> = tombstones.iter().map(|m| m.state.clone()).collect();
            for m in tombstones.iter_mut() {
                m.state = KeyState::Moved(MovedTo {
                    node: grant.body.dest_node.clone(),
                    grant_id: grant_hex.clone(),
                });
                m.versions.iter_mut().for_each(VersionMeta::shred);
            }
            let sealed = crate::par::try_map(&tombstones, |m| self.seal_meta(&u, m))?;
            for ((m, sealed), was) in tombstones.iter().zip(sealed).zip(&was) {
                txn.put(Ns::Keys, m.key_id.as_bytes(), &sealed);
                txn.count_key(Some(was), &m.state);
            }
        }
        put_grant_record(txn.batch(), grant, GrantRole::Source, receipt.clone())?;
        txn.audit(
            Some(&u),
            caller,
            Event::ok(
                "transfer-send",
                "",
                format!(
                    "grant {grant_hex} {} to {}: {} keys{}",
                    op_name(grant.body.op),
                    grant.body.dest_node,
                    grant.body.key_ids.len(),
                    if is_move {
                        ", moved (tombstones left)"
                    } else {
                        ""
                    }
                ),
            ),
        )?;
        let mut applied = txn.apply()?;
        if shredded && self.rotation_due(&applied.state()) {
            applied.durable_locked().await?;
            self.rotate_locked(applied.next(), caller, "shred after move")
                .await?;
        } else {
            applied.durable().await?;
        }
        Ok(true)
    }
}
