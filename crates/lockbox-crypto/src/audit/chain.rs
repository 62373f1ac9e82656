//! Verifying a stored audit log, entry by entry in seq order (`lockboxctl audit verify`).

use super::{AuditEntry, CHECKPOINT_DOMAIN, GENESIS_HASH, checkpoint_message};
use crate::identity::verify_signature;

/// Why a log failed verification, at which stored entry; the reason names the check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq}: {reason}")]
pub struct AuditChainError {
    /// The seq the bytes were stored under.
    pub seq: u64,
    /// Which check failed.
    pub reason: String,
}

/// What a verified log contains, to report and to compare with the sealed audit head (which
/// catches a truncated tail that the chain alone cannot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Entries verified.
    pub records: u64,
    /// Of which carried a valid checkpoint.
    pub checkpoints: u64,
    /// Seq of the last entry (0 if none).
    pub head_seq: u64,
    /// Hash of the last entry ([`GENESIS_HASH`] if none).
    pub head_hash: [u8; 32],
}

/// Streams a log through the checks without holding it in memory.
///
/// A failed `push` leaves the verifier unchanged, so the caller can report and stop.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    trusted_signer: [u8; 32],
    next_seq: u64,
    prev_hash: [u8; 32],
    records: u64,
    checkpoints: u64,
}

impl ChainVerifier {
    /// A verifier for a log from seq 1, accepting checkpoints only from `trusted_signer` (the
    /// node's identity public key).
    pub fn new(trusted_signer: [u8; 32]) -> Self {
        Self {
            trusted_signer,
            next_seq: 1,
            prev_hash: GENESIS_HASH,
            records: 0,
            checkpoints: 0,
        }
    }

    /// Checks the entry stored under `stored_seq`, in this order: it decodes; its seq is the
    /// one it is stored under and the next expected; its `prev_hash` is the hash of the
    /// previous entry; its checkpoint, if any, is by the trusted key and verifies.
    pub fn push(&mut self, stored_seq: u64, bytes: &[u8]) -> Result<(), AuditChainError> {
        let fail = |reason: String| AuditChainError {
            seq: stored_seq,
            reason,
        };
        let entry = AuditEntry::decode(bytes).map_err(|e| fail(format!("undecodable: {e}")))?;
        let expected = self.next_seq;
        if entry.seq != stored_seq {
            return Err(fail(format!(
                "stored under seq {stored_seq} but says {}",
                entry.seq
            )));
        }
        if entry.seq > expected {
            return Err(fail(format!(
                "missing record: expected seq {expected}, found {}",
                entry.seq
            )));
        }
        if entry.seq < expected {
            return Err(fail(format!(
                "out of order or duplicate record: expected seq {expected}, found {}",
                entry.seq
            )));
        }
        if entry.prev_hash != self.prev_hash {
            // The link names the previous record's hash, so the first record that can have
            // changed is the previous one (or, less likely, this record's link itself): name
            // the earlier one, which is where an investigation should start.
            let previous = stored_seq.saturating_sub(1);
            return Err(AuditChainError {
                seq: previous,
                reason: format!(
                    "hash chain broken: record {previous} does not match the hash that record \
                     {stored_seq} links to (record {previous} edited, or record {stored_seq}'s link)"
                ),
            });
        }
        if let Some(cp) = &entry.checkpoint {
            if cp.signer != self.trusted_signer {
                return Err(fail(format!(
                    "checkpoint signed by untrusted key {}",
                    hex::encode(cp.signer)
                )));
            }
            let msg = checkpoint_message(entry.seq, &entry.prev_hash);
            verify_signature(&cp.signer, CHECKPOINT_DOMAIN, &msg, &cp.signature)
                .map_err(|_| fail("checkpoint signature does not verify".to_owned()))?;
        }
        let next_seq = expected
            .checked_add(1)
            .ok_or_else(|| fail("sequence number space exhausted".to_owned()))?;
        self.next_seq = next_seq;
        self.prev_hash = entry.hash();
        self.records += 1;
        self.checkpoints += u64::from(entry.checkpoint.is_some());
        Ok(())
    }

    /// What has been verified so far.
    pub fn summary(&self) -> ChainSummary {
        ChainSummary {
            records: self.records,
            checkpoints: self.checkpoints,
            head_seq: self.next_seq - 1,
            head_hash: self.prev_hash,
        }
    }
}
