//! Grants at either end of a transfer: verifying them, and the records that make a completed
//! grant answer its retries with the same receipt.

use lockbox_crypto::{GrantSide, SignedGrant, VerifiedGrant};
use lockbox_store::{Batch, Ns};
use serde::{Deserialize, Serialize};

use super::model::{Caller, parse_key_id};
use super::txn::Event;
use super::{Custody, now_ms};
use crate::error::{CustodyError, Result};

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

/// What a node keeps of a grant it completed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GrantRecord {
    role: GrantRole,
    expires_unix_ms: u64,
    /// Hex SHA-256 of the grant's signed body: a retry must carry the same body. Absent in
    /// records of earlier releases (they expire and are pruned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_sha256: Option<String>,
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

/// Adds the record of what this node did with a grant to the batch that does it.
pub(super) fn put_grant_record(
    batch: &mut Batch,
    grant: &VerifiedGrant,
    role: GrantRole,
    receipt: StoredReceipt,
) -> Result<()> {
    let record = GrantRecord {
        role,
        expires_unix_ms: grant.body.expires_unix_ms,
        body_sha256: Some(hex::encode(grant.body_sha256)),
        receipt,
    };
    let bytes = serde_json::to_vec(&record)
        .map_err(|e| CustodyError::Corrupt(format!("grant record: {e}")))?;
    batch.put(Ns::Grants, &grant_key(&grant.grant_id, role), &bytes);
    Ok(())
}

impl Custody {
    /// Verifies a grant as the source of the transfer it authorizes (DESIGN.md §6): signatures
    /// and threshold, validity window, this node as source, and every key id live here.
    /// Consumes nothing.
    pub fn verify_grant_as_source(
        &self,
        signed: &SignedGrant,
    ) -> Result<lockbox_crypto::VerifiedGrant> {
        let u = self.unlocked()?;
        // The checks `Transfer` makes (canonical key ids included), so that a grant this says
        // is good is not refused when it is run.
        let verified = self.check_grant(signed, GrantSide::Source, None)?;
        for key_id in &verified.body.key_ids {
            let id = parse_key_id(key_id)?;
            self.usable_meta(&u, &id)?;
        }
        Ok(verified)
    }

    /// What this node recorded for a grant in `role`, if anything: a completed grant answers
    /// a retry with the same receipt instead of running again. Looked up by grant id **and**
    /// body: the same id with another body is refused ([`CustodyError::GrantIdReused`]).
    pub fn grant_record(
        &self,
        grant: &VerifiedGrant,
        role: GrantRole,
    ) -> Result<Option<StoredReceipt>> {
        let Some(bytes) = self
            .store
            .get(Ns::Grants, &grant_key(&grant.grant_id, role))?
        else {
            return Ok(None);
        };
        let rec: GrantRecord = serde_json::from_slice(&bytes)
            .map_err(|e| CustodyError::Corrupt(format!("grant record: {e}")))?;
        if let Some(recorded) = &rec.body_sha256
            && *recorded != hex::encode(grant.body_sha256)
        {
            let e = CustodyError::GrantIdReused {
                grant_id: hex::encode(grant.grant_id),
            };
            self.metrics.grant_refused(&e);
            return Err(e);
        }
        Ok(Some(rec.receipt))
    }

    /// Deletes the records of grants that expired more than the clock skew ago (audited, one
    /// record per sweep). They exist to answer retries of a grant with the same receipt; once
    /// a grant is past its window every retry is refused by `verify_grant` ("expired") before
    /// the record is looked up, so keeping them would only grow the database forever.
    /// Returns how many were deleted.
    pub async fn prune_expired_grants(&self, caller: &Caller) -> Result<usize> {
        let horizon = now_ms().saturating_sub(self.policy.clock_skew.as_millis() as u64);
        let mut txn = self.write_txn().await;
        let u = self.unlocked()?;
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
                txn.remove(Ns::Grants, &id);
                pruned += 1;
            }
        }
        if pruned == 0 {
            return Ok(0);
        }
        txn.audit(
            Some(&u),
            caller,
            Event::ok(
                "prune-grants",
                "",
                format!("{pruned} expired grant records deleted"),
            ),
        )?;
        txn.commit().await?;
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
    /// A refusal is counted in `lockbox_grants_refused_total{reason}`.
    pub fn verify_grant(
        &self,
        signed: &SignedGrant,
        side: GrantSide,
        peer_node: Option<&str>,
    ) -> Result<VerifiedGrant> {
        let verified = self.check_grant(signed, side, peer_node);
        if let Err(e) = &verified {
            self.metrics.grant_refused(e);
        }
        verified
    }

    fn check_grant(
        &self,
        signed: &SignedGrant,
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
                    format!("key id {} is not in canonical form", super::model::quote(k)),
                )));
            }
        }
        Ok(verified)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine as _;

    /// `VerifyGrant` (this) and `Transfer` check a grant alike: one that spells a key id
    /// other than canonically (here in capitals) is refused by both, not reported good by
    /// `VerifyGrant` and then refused when run.
    #[tokio::test]
    async fn a_grant_verified_as_source_needs_canonical_key_ids() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = lockbox_crypto::SigningIdentity::generate().unwrap();
        let extra = format!(
            "[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"ca\"\n[[controllers]]\n\
             key_id = \"ctl-1\"\npublic_key = \"{}\"\nurl = \"https://c1:7400\"\n",
            lockbox_crypto::encode_public_key(&ctl.public_key())
        );
        let c = super::super::keys::test_support::custody(dir.path(), &extra).await;
        let who = super::super::keys::test_support::caller();
        let (id, _, _) = c
            .create(&who, 32, Default::default(), None, None)
            .await
            .unwrap();
        let grant = |key_id: String| {
            let now = now_ms();
            let body = lockbox_crypto::GrantBody {
                grant_id: vec![7; 16],
                key_ids: vec![key_id],
                source_node: "host-a".into(),
                dest_node: "host-b".into(),
                op: lockbox_crypto::GrantOp::Copy as i32,
                not_before_unix_ms: now - 1000,
                expires_unix_ms: now + 60_000,
                ..Default::default()
            };
            let bytes = lockbox_crypto::encode_grant_body(&body).unwrap();
            SignedGrant {
                signatures: vec![lockbox_crypto::sign_grant_body(&ctl, "ctl-1", &bytes)],
                body: bytes,
            }
        };
        c.verify_grant_as_source(&grant(id.clone())).unwrap();
        let e = c
            .verify_grant_as_source(&grant(id.to_uppercase()))
            .unwrap_err();
        assert!(e.to_string().contains("not in canonical form"), "{e}");
        let e = c
            .verify_grant(&grant(id.to_uppercase()), GrantSide::Source, None)
            .unwrap_err();
        assert!(e.to_string().contains("not in canonical form"), "{e}");
    }

    #[test]
    fn grant_records_store_bytes_as_base64_and_read_the_older_number_arrays() {
        let record = GrantRecord {
            role: GrantRole::Destination,
            expires_unix_ms: 42,
            body_sha256: None,
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
