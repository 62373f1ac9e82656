//! The custody side of peer-to-peer transfers (DESIGN.md §7): reading keys to send, opening
//! received batches, storing received keys atomically with the grant's consumption, and
//! completing a grant at the source (the MOVE tombstone). The network side is `transfer.rs`
//! and `peer.rs` in the crate root.

use std::collections::{BTreeMap, HashMap};

use lockbox_crypto::{BatchContext, GrantSide, SealedBatch, VerifiedGrant};
use lockbox_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::*;

/// Domain of the destination's receipt signature.
pub const RECEIPT_DOMAIN: &str = "lockbox/v1/receipt";

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
    /// Per-key clone policy.
    pub clone_policy: Option<String>,
    /// The plaintext, zeroized on drop.
    pub material: SecretBytes,
}

/// Which end of a grant this node was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrantRole {
    /// We sent the keys.
    Source,
    /// We received them.
    Destination,
}

/// A receipt as stored and returned again on retries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredReceipt {
    /// `ReceiptBody` protobuf bytes.
    #[serde(with = "crate::json_bytes")]
    pub body: Vec<u8>,
    /// The destination's Ed25519 signature over them.
    #[serde(with = "crate::json_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GrantRecord {
    role: GrantRole,
    expires_unix_ms: u64,
    receipt: StoredReceipt,
}

fn grant_key(grant_id: &[u8; 16], role: GrantRole) -> Vec<u8> {
    let mut k = grant_id.to_vec();
    k.push(match role {
        GrantRole::Source => b's',
        GrantRole::Destination => b'd',
    });
    k
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
    if versions.iter().filter(|v| v.current).count() != 1 {
        return Err(bad("exactly one version must be current".into()));
    }
    Ok(())
}

/// Adds the record of what this node did with a grant to the batch that does it.
fn put_grant_record(
    batch: &mut Batch,
    grant: &VerifiedGrant,
    role: GrantRole,
    receipt: StoredReceipt,
) -> Result<()> {
    let record = GrantRecord {
        role,
        expires_unix_ms: grant.body.expires_unix_ms,
        receipt,
    };
    let bytes = serde_json::to_vec(&record)
        .map_err(|e| CustodyError::Corrupt(format!("grant record: {e}")))?;
    batch.put(Ns::Grants, &grant_key(&grant.grant_id, role), &bytes);
    Ok(())
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
    let body = pb::ReceiptBody::decode(receipt.body.as_slice())
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

fn parse_state(s: &str) -> VersionState {
    match s {
        "rekeying" => VersionState::Rekeying,
        "retired" => VersionState::Retired,
        _ => VersionState::Active,
    }
}

impl Incoming {
    /// Builds an incoming key from its wire metadata.
    pub fn new(
        key_id: String,
        version: u32,
        state: &str,
        current: bool,
        labels: BTreeMap<String, String>,
        clone_policy: String,
        material: SecretBytes,
    ) -> Incoming {
        Incoming {
            key_id,
            version,
            state: parse_state(state),
            current,
            labels,
            clone_policy: (!clone_policy.is_empty()).then_some(clone_policy),
            material,
        }
    }
}

impl Custody {
    /// What this node recorded for a grant in `role`, if anything: a completed grant answers
    /// a retry with the same receipt instead of running again.
    pub fn grant_record(
        &self,
        grant_id: &[u8; 16],
        role: GrantRole,
    ) -> Result<Option<StoredReceipt>> {
        let Some(bytes) = self.store.get(Ns::Grants, &grant_key(grant_id, role))? else {
            return Ok(None);
        };
        let rec: GrantRecord = serde_json::from_slice(&bytes)
            .map_err(|e| CustodyError::Corrupt(format!("grant record: {e}")))?;
        Ok(Some(rec.receipt))
    }

    /// Deletes the records of grants that expired more than the clock skew ago (audited, one
    /// record per sweep). They exist to answer retries of a grant with the same receipt; once
    /// a grant is past its window every retry is refused by `verify_grant` ("expired") before
    /// the record is looked up, so keeping them would only grow the database forever.
    /// Returns how many were deleted.
    pub async fn prune_expired_grants(&self, caller: &Caller) -> Result<usize> {
        let horizon = now_ms().saturating_sub(self.policy.clock_skew.as_millis() as u64);
        let mut ws = self.write.lock().await;
        let u = self.unlocked()?;
        let mut batch = Batch::new();
        let mut pruned = 0usize;
        for item in self.store.iter_after(Ns::Grants, None) {
            let (id, bytes) = item?;
            let rec: GrantRecord = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable grant record left in place");
                    continue;
                }
            };
            if rec.expires_unix_ms < horizon {
                batch.remove(Ns::Grants, &id);
                pruned += 1;
            }
        }
        if pruned == 0 {
            return Ok(0);
        }
        let before = *ws;
        self.audit(
            &mut ws,
            &mut batch,
            Some(&u),
            caller,
            "prune-grants",
            "",
            "ok",
            format!("{pruned} expired grant records deleted"),
        )?;
        let generation = self.apply(&mut ws, before, batch)?;
        drop(ws);
        self.store.durable(generation).await?;
        Ok(pruned)
    }

    /// How many grant records this node keeps (status and tests).
    pub fn grant_record_count(&self) -> Result<usize> {
        let mut n = 0;
        for item in self.store.iter_after(Ns::Grants, None) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Verifies a grant (signatures, threshold, window, nodes) for one side of a transfer.
    /// Key existence is the caller's business: it differs between a first run and a retry.
    pub fn verify_grant(
        &self,
        signed: &pb::SignedGrant,
        side: GrantSide,
        peer_node: Option<&str>,
    ) -> Result<VerifiedGrant> {
        let ctx = lockbox_crypto::GrantContext {
            now_unix_ms: now_ms(),
            skew_ms: self.policy.clock_skew.as_millis() as u64,
            threshold: self.policy.grant_threshold,
            self_node: &self.node_id,
            peer_node,
            side,
            key_ids: None,
        };
        if self.policy.controllers.is_empty() {
            return Err(CustodyError::Grant(
                lockbox_crypto::GrantError::ThresholdNotMet {
                    valid: 0,
                    required: self.policy.grant_threshold,
                },
            ));
        }
        let verified =
            lockbox_crypto::verify_grant(signed, &self.policy.controllers, &ctx, &|_| false)
                .map_err(CustodyError::Grant)?;
        // Key ids are stored in one spelling; a grant spelling one differently could name the
        // same key twice or miss it. Controllers issue canonical ids; refuse anything else.
        for k in &verified.body.key_ids {
            if parse_key_id(k)? != *k {
                return Err(CustodyError::Grant(lockbox_crypto::GrantError::Malformed(
                    format!("key id {k:?} is not in canonical form"),
                )));
            }
        }
        Ok(verified)
    }

    /// Reads the keys a grant covers, with every readable version's material, refusing
    /// anything not usable here (unknown, destroyed, moved, replica).
    ///
    /// Records are read in key order, then materials in material order, rather than in the
    /// grant's order: an evacuation names every key, ids are random, and in id order each
    /// database page is fetched once instead of once per key on it (a 100,000-key lockbox
    /// outgrows the page cache). The result is in key-id order.
    pub fn read_for_transfer(&self, key_ids: &[String]) -> Result<Vec<Outgoing>> {
        let u = self.unlocked()?;
        // Before any record is read (see `AsRead`).
        let written = self.keys_written.load(Ordering::SeqCst);
        let mut ids = key_ids
            .iter()
            .map(|k| parse_key_id(k))
            .collect::<Result<Vec<_>>>()?;
        ids.sort_unstable();
        let metas = crate::par::try_map(&ids, |id| {
            let (sealed, meta) = self
                .load_meta_sealed(&u, id)?
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
                if v.state != VersionState::Destroyed {
                    wanted.push((v.material_id.as_str(), k, i));
                }
            }
        }
        wanted.sort_unstable();
        let materials = crate::par::try_map(&wanted, |(_, k, i)| {
            let (id, (_, meta)) = &metas[*k];
            self.open_version(&u, id, &meta.versions[*i])
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
    fn replaceable(&self, u: &Unlocked, key_id: &str, replicate: bool) -> Result<Option<KeyMeta>> {
        let Some(meta) = self.load_meta(u, key_id)? else {
            return Ok(None);
        };
        if meta.moved_to.is_some() || (replicate && meta.replica && !meta.destroyed) {
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
    fn reseal_received(&self, old: &Unlocked, u: &Unlocked, key: &ReceivedKey) -> Result<Vec<u8>> {
        let mut meta = self.open_meta(old, &key.key_id, &key.sealed_meta)?;
        for v in meta.versions.iter_mut() {
            if let Some(sealed) = v.inline.take() {
                let plain = self.open_sealed_material(old, &key.key_id, &v.material_id, &sealed)?;
                v.inline = Some(self.seal_material(u, &v.material_id, &plain)?);
            }
        }
        self.seal_meta(u, &meta)
    }

    /// The sealed record of a received key (its versions sorted).
    fn seal_received_key(
        &self,
        u: &Unlocked,
        grant: &VerifiedGrant,
        now: u64,
        id: &str,
        versions: &[Incoming],
    ) -> Result<Vec<u8>> {
        let replica = grant.body.op == pb::GrantOp::Replicate as i32;
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
            metas.push(VersionMeta {
                version: v.version,
                state: v.state,
                material_id,
                created_unix_ms: now,
                inline: Some(sealed),
            });
        }
        let meta = KeyMeta {
            key_id: id.to_string(),
            destroyed: false,
            length,
            labels,
            created_unix_ms: now,
            origin: Origin {
                kind: "received".into(),
                from_key_id: String::new(),
                from_node: grant.body.source_node.clone(),
                grant_id: hex::encode(grant.grant_id),
            },
            clone_policy: first.clone_policy.clone(),
            current_version,
            versions: metas,
            replica,
            moved_to: None,
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
        let mut ws = self.write.lock().await;
        let u = self.unlocked()?;
        if let Some(r) = self.grant_record(&grant.grant_id, GrantRole::Destination)? {
            return Ok(r);
        }
        let grant_hex = hex::encode(grant.grant_id);
        let replica = grant.body.op == pb::GrantOp::Replicate as i32;
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
        let mut batch = Batch::new();
        let before = *ws;
        let mut stored = Vec::with_capacity(keys.len());
        // The new key records in key order, after any removals of replaced keys' shared
        // records: a large batch is then one sorted run for the store.
        let mut metas = Vec::with_capacity(keys.len());
        for (k, (replaced, resealed)) in keys.into_iter().zip(checked) {
            if let Some(old) = &replaced {
                self.drop_material_refs(std::slice::from_ref(old), &mut batch)?;
            }
            let counted = replaced.as_ref().is_some_and(|m| m.moved_to.is_none());
            if !counted {
                ws.key_count += 1;
            }
            stored.push(pb::StoredVersions {
                key_id: k.key_id.clone(),
                versions: k.versions,
            });
            metas.push((k.key_id, resealed.unwrap_or(k.sealed_meta)));
        }
        for (key_id, sealed) in &metas {
            batch.put(Ns::Keys, key_id.as_bytes(), sealed);
        }
        batch.put(Ns::Node, NODE_KEY_COUNT, &ws.key_count.to_be_bytes());
        let body = pb::ReceiptBody {
            grant_id: grant.grant_id.to_vec(),
            op: grant.body.op,
            source_node: grant.body.source_node.clone(),
            dest_node: grant.body.dest_node.clone(),
            key_ids: grant.body.key_ids.clone(),
            stored_unix_ms: now,
            stored,
        }
        .encode_to_vec();
        let receipt = StoredReceipt {
            signature: u.signing.sign(RECEIPT_DOMAIN, &body).to_vec(),
            body,
        };
        put_grant_record(&mut batch, grant, GrantRole::Destination, receipt.clone())?;
        self.audit(
            &mut ws,
            &mut batch,
            Some(&u),
            caller,
            "transfer-receive",
            "",
            "ok",
            format!(
                "grant {grant_hex} {} from {}: {} keys{}",
                op_name(grant.body.op),
                grant.body.source_node,
                grant.body.key_ids.len(),
                if replica { " (replicas)" } else { "" }
            ),
        )?;
        let generation = self.apply(&mut ws, before, batch)?;
        drop(ws);
        self.store.durable(generation).await?;
        Ok(receipt)
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
        let mut ws = self.write.lock().await;
        let mut u = self.unlocked()?;
        if self
            .grant_record(&grant.grant_id, GrantRole::Source)?
            .is_some()
        {
            return Ok(false);
        }
        let grant_hex = hex::encode(grant.grant_id);
        let is_move = grant.body.op == pb::GrantOp::Move as i32;
        let mut batch = Batch::new();
        let before = *ws;
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
            shredded = self.drop_material_refs(&victims, &mut batch)?;
            if shredded {
                count_shred(&mut ws, &mut batch);
                if self.rotation_due(&ws) {
                    // Every check passed: start the rotation the shredding calls for now,
                    // so the tombstones below are sealed once, under the new KEK, instead of
                    // being re-sealed by the rotation (a crash in between leaves two KEKs,
                    // which the next unseal finishes rotating).
                    u = self.begin_rotation()?;
                }
            }
            let mut tombstones = victims;
            for m in tombstones.iter_mut() {
                m.destroyed = true;
                m.moved_to = Some(MovedTo {
                    node: grant.body.dest_node.clone(),
                    grant_id: grant_hex.clone(),
                });
                m.versions.iter_mut().for_each(VersionMeta::shred);
            }
            let sealed = crate::par::try_map(&tombstones, |m| self.seal_meta(&u, m))?;
            for (m, sealed) in tombstones.iter().zip(sealed) {
                batch.put(Ns::Keys, m.key_id.as_bytes(), &sealed);
                ws.key_count = ws.key_count.saturating_sub(1);
            }
            batch.put(Ns::Node, NODE_KEY_COUNT, &ws.key_count.to_be_bytes());
        }
        put_grant_record(&mut batch, grant, GrantRole::Source, receipt.clone())?;
        self.audit(
            &mut ws,
            &mut batch,
            Some(&u),
            caller,
            "transfer-send",
            "",
            "ok",
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
        )?;
        let generation = self.apply(&mut ws, before, batch)?;
        if shredded && self.rotation_due(&ws) {
            self.store.durable(generation).await?;
            self.rotate_locked(&mut ws, caller, "shred after move")
                .await?;
        }
        drop(ws);
        self.store.durable(generation).await?;
        Ok(true)
    }

    /// Turns a replica into an active key (audited).
    pub async fn promote(&self, caller: &Caller, key_id: &str) -> Result<KeyInfo> {
        let res = async {
            let id = parse_key_id(key_id)?;
            let mut ws = self.write.lock().await;
            let u = self.unlocked()?;
            let mut meta = self.live_meta(&u, &id)?;
            if !meta.replica {
                return Err(CustodyError::WrongState {
                    key_id: id,
                    why: "is not a replica".into(),
                });
            }
            meta.replica = false;
            let mut batch = Batch::new();
            batch.put(Ns::Keys, id.as_bytes(), &self.seal_meta(&u, &meta)?);
            let before = *ws;
            self.audit(
                &mut ws,
                &mut batch,
                Some(&u),
                caller,
                "promote",
                &id,
                "ok",
                format!("replica from {} promoted", meta.origin.from_node),
            )?;
            let generation = self.apply(&mut ws, before, batch)?;
            drop(ws);
            self.store.durable(generation).await?;
            self.info(&u, meta)
        }
        .await;
        self.audited(caller, "promote", key_id, res).await
    }

    /// Audits a request refused before it reached the domain (e.g. a peer that is not a
    /// lockbox), when the node is unsealed.
    pub async fn audit_refused(&self, caller: &Caller, action: &str, why: String) {
        let e = CustodyError::InvalidArgument(why);
        self.audit_refusal(caller, action, "", &e).await;
    }

    /// Audits a failed transfer under its grant id (both ends do).
    pub async fn audit_transfer_failure(
        &self,
        caller: &Caller,
        action: &str,
        grant_id: &str,
        err: &CustodyError,
    ) {
        let e = CustodyError::WrongState {
            key_id: format!("grant {grant_id}"),
            why: err.to_string(),
        };
        self.audit_refusal(caller, action, "", &e).await;
    }
}

fn op_name(op: i32) -> &'static str {
    match pb::GrantOp::try_from(op) {
        Ok(pb::GrantOp::Copy) => "copy",
        Ok(pb::GrantOp::Move) => "move",
        Ok(pb::GrantOp::Replicate) => "replicate",
        _ => "unknown-op",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine as _;

    #[test]
    fn grant_records_store_bytes_as_base64_and_read_the_older_number_arrays() {
        let record = GrantRecord {
            role: GrantRole::Destination,
            expires_unix_ms: 42,
            receipt: StoredReceipt {
                body: (0..=255u8).collect(),
                signature: vec![7; 64],
            },
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(
            json.contains(&format!(
                "\"{}\"",
                base64::engine::general_purpose::STANDARD.encode(vec![7u8; 64])
            )),
            "{json}"
        );
        let back: GrantRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.receipt, record.receipt);
        assert_eq!(back.expires_unix_ms, 42);

        // What earlier versions wrote: serde's default for Vec<u8>.
        let old = r#"{"role":"destination","expires_unix_ms":42,"receipt":{"body":[1,2,255],"signature":[9,9]}}"#;
        let back: GrantRecord = serde_json::from_str(old).unwrap();
        assert_eq!(back.receipt.body, vec![1, 2, 255]);
        assert_eq!(back.receipt.signature, vec![9, 9]);
        // Neither text that is not base64 nor numbers out of byte range pass.
        assert!(serde_json::from_str::<GrantRecord>(&old.replace("[9,9]", "\"@@\"")).is_err());
        assert!(serde_json::from_str::<GrantRecord>(&old.replace("[9,9]", "[256]")).is_err());
    }
}
