//! The unseal slots (DESIGN.md §5.5): what opens the root secret, changed without re-sealing
//! any record, and this node's part as a peer that helps others unseal.
//!
//! Asking peers and answering them over the network are the adapters' (`unseal_peers.rs`,
//! `assist.rs`); here are the keyring and the audit records.

use lockbox_crypto::assist::PeerSlot;
use lockbox_crypto::{Keyring, NewSlot, RecoveryChange, SecretBytes, UnsealMethod};
use lockbox_store::write_file_atomic;

use super::txn::Event;
use super::{Caller, Custody};
use crate::error::{CustodyError, Result};

/// What `status` shows of the keyring's slots.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// The primary slot's method.
    pub method: UnsealMethod,
    /// Whether a recovery passphrase slot exists.
    pub recovery: bool,
    /// The peer slot's peers, in slot order, and its threshold (peers method only).
    pub peers: Vec<String>,
    /// See [`SlotInfo::peers`].
    pub threshold: u8,
}

/// The new primary slot of an enrollment.
pub enum Enroll<'a> {
    /// The configured key file (created when missing).
    Keyfile(&'a SecretBytes),
    /// A peer slot enrolled to the peers' per-owner keys, with the slot key it splits.
    Peers(PeerSlot, &'a SecretBytes),
    /// A passphrase and its Argon2id cost.
    Passphrase(&'a SecretBytes, lockbox_crypto::Argon2Params),
    /// A key sealed to the TPM: the TPM's object and the key.
    Tpm2(Vec<u8>, &'a SecretBytes),
    /// A TPM-sealed key and a peer slot, with both keys.
    Tpm2Peers {
        /// The TPM's object.
        blob: Vec<u8>,
        /// The key it seals.
        tpm_key: &'a SecretBytes,
        /// The peer slot.
        slot: PeerSlot,
        /// The key the peer slot splits.
        peers_key: &'a SecretBytes,
    },
}

/// How the audit log names a keyring: its primary method and the first 8 bytes of the
/// SHA-256 of its file, in hex (of wrapped keys only: it tells keyrings apart, nothing more).
/// An enrollment's records and every unseal's name the keyring they wrote or opened.
pub(super) fn keyring_fingerprint(keyring: &Keyring) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(keyring.encode());
    format!(
        "{} {}",
        keyring.method().as_str(),
        hex::encode(&digest[..8])
    )
}

impl Custody {
    /// The keyring's slots as they are now (not as the config says).
    pub fn slot_info(&self) -> SlotInfo {
        let k = self.keyring();
        let (peers, threshold) = match k.peer_slot() {
            Some(s) => (
                s.shares()
                    .iter()
                    .map(|e| e.peer_node().to_owned())
                    .collect(),
                s.threshold(),
            ),
            None => (Vec::new(), 0),
        };
        SlotInfo {
            method: k.method(),
            recovery: k.has_recovery(),
            peers,
            threshold,
        }
    }

    /// The peer slot to ask the peers about, when the primary slot has one.
    pub fn peer_slot(&self) -> Option<PeerSlot> {
        self.keyring().peer_slot().cloned()
    }

    /// The TPM object to unseal, when the primary slot has one.
    pub fn tpm2_blob(&self) -> Option<Vec<u8>> {
        self.keyring().tpm2_blob().map(<[u8]>::to_vec)
    }

    /// Re-wraps the root secret for a new primary slot (and recovery as `recovery` says),
    /// with the writer lock held so no rotation interleaves: the keyring file is replaced
    /// atomically, no record is re-sealed, and the change is audited. Unsealed only.
    pub async fn enroll_slots(
        &self,
        caller: &Caller,
        primary: Enroll<'_>,
        recovery: RecoveryChange<'_>,
        detail: String,
    ) -> Result<()> {
        let res = async {
            // Under the writer lock (see `audit_refusal`): a rotation cannot retire the KEK
            // this state seals the audit head under.
            let mut txn = self.write_txn().await;
            let u = self.unlocked()?;
            let keyring = self.keyring();
            let slot = match primary {
                Enroll::Keyfile(k) => NewSlot::Keyfile(k),
                Enroll::Peers(s, k) => NewSlot::Peers(s, k),
                Enroll::Passphrase(p, a) => NewSlot::Passphrase(p, a),
                Enroll::Tpm2(b, k) => NewSlot::Tpm2(b, k),
                Enroll::Tpm2Peers {
                    blob,
                    tpm_key,
                    slot,
                    peers_key,
                } => NewSlot::Tpm2Peers {
                    blob,
                    tpm_key,
                    slot,
                    peers_key,
                },
            };
            let next = keyring.rewrap(&u.unsealed, slot, recovery)?;
            let detail = format!("{detail}; keyring {}", keyring_fingerprint(&next));
            // On record, durably, before the file changes (a change the audit chain cannot
            // take is refused with nothing replaced): a kill between the two leaves a `begun`
            // record naming the keyring being written, and the next unseal's record names the
            // keyring it opened, so the log says whether the enrollment took effect. Without
            // it, a kill after the rename left a node unsealing by a method no record named.
            txn.audit(
                Some(&u),
                caller,
                Event {
                    action: "unseal-enroll",
                    key_id: "",
                    outcome: "begun",
                    detail: detail.clone(),
                },
            )?;
            let mut applied = txn.apply()?;
            applied.durable_locked().await?;
            let bytes = next.encode();
            crate::failpoint::hit("enroll-before-keyring");
            if let Err(e) = write_file_atomic(&self.keyring_path, &bytes, 0o600) {
                // A step after the rename (the directory's fsync) may have failed: the next
                // start unseals with what the file holds, so memory and the audit follow it.
                if std::fs::read(&self.keyring_path).ok().as_deref() != Some(bytes.as_slice()) {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, "the new keyring is in place, but not known durable");
            }
            crate::failpoint::hit("enroll-after-keyring");
            self.set_keyring(next);
            let mut txn = applied.next();
            txn.audit(Some(&u), caller, Event::ok("unseal-enroll", "", detail))?;
            txn.apply()?.durable().await
        }
        .await;
        if let Err(e) = &res {
            self.audit_refusal(caller, "unseal-enroll", "", e).await;
        }
        res
    }

    /// This node's assist public key (what its attestation carries). Works sealed.
    pub fn assist_public_key(&self) -> [u8; 32] {
        self.assist.public_key()
    }

    /// This node's assist public key for `owner` (SPEC.md "Per-owner assist keys"): what an
    /// owner enrolls a share to. Works sealed.
    pub fn assist_key_for(&self, owner: &str) -> Result<([u8; 32], [u8; 32])> {
        let derived = self
            .assist
            .for_owner(owner)
            .map_err(|e| CustodyError::InvalidArgument(e.to_string()))?;
        Ok((self.assist.public_key(), derived.public_key()))
    }

    /// Answers an owner's blinded point with this node's per-owner key and audits it. The
    /// adapter has checked who `owner` is (the caller's mTLS identity, a controller's vouch,
    /// revocations) before this runs. Works sealed: a whole-cluster cold start unseals.
    pub async fn assist_answer(
        &self,
        caller: &Caller,
        owner: &str,
        enrollment: &str,
        blinded: &[u8; 32],
    ) -> Result<[u8; 32]> {
        let answered = self
            .assist
            .for_owner(owner)
            .and_then(|k| k.answer(blinded))
            .map_err(|e| CustodyError::InvalidArgument(format!("assist request: {e}")));
        let (event, detail) = match &answered {
            Ok(_) => ("ok", format!("owner {owner} enrollment {enrollment}")),
            Err(e) => (
                "refused",
                format!("owner {owner} enrollment {enrollment}: {e}"),
            ),
        };
        self.audit_any(caller, "unseal-assist", event, detail)
            .await?;
        answered
    }

    /// Audits an event sealed or not (the chain's records written while sealed are covered by
    /// the next sealed head, as refused unseal attempts are), and waits until it is durable.
    pub async fn audit_any(
        &self,
        caller: &Caller,
        action: &str,
        outcome: &str,
        detail: String,
    ) -> Result<()> {
        let mut txn = self.write_txn().await;
        // Read under the writer lock, which seal and unseal hold while they change it: read
        // before, an unseal in between left a record written unsealed that does not move the
        // sealed head, and `audit verify` reported the log's last record as tampered with.
        let u = self.unlocked().ok();
        let event = if outcome == "ok" {
            Event::ok(action, "", detail)
        } else {
            Event::refused(action, "", detail)
        };
        txn.audit(u.as_deref(), caller, event)?;
        txn.apply()?.durable().await
    }
}
