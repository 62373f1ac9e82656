//! Reading and verifying the audit chain (writing it is `txn`'s).

use lockbox_crypto::{AuditEntry, AuditEvent, ChainVerifier, RecordKind};
use lockbox_store::Ns;

use super::model::{AuditReport, AuditView};
use super::txn::{MAX_AUDIT_DETAIL, MAX_AUDIT_KEY_ID, bounded};
use super::{Custody, NODE_AUDIT_HEAD, decode_u64};
use crate::error::{CustodyError, Result};

/// The most records one `audit tail` returns (each at most a few KiB).
pub const MAX_TAIL: usize = 10_000;

impl Custody {
    /// The newest `n` audit records (at most [`MAX_TAIL`]), oldest first.
    ///
    /// Survives any record: text fields are cut to their caps on the way out (records of
    /// earlier releases were not capped), and a record that does not decode is shown as such,
    /// with its sequence number, instead of failing the whole tail (`audit verify` names it).
    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditView>> {
        self.unlocked()?;
        let mut out = Vec::new();
        for r in self.store.iter_rev(Ns::Audit).take(n.min(MAX_TAIL)) {
            let (id, bytes) = r?;
            let seq = decode_u64(Some(id));
            let view = match AuditEntry::decode(&bytes) {
                Ok(mut entry) => {
                    let hash = hex::encode(entry.hash());
                    let e = &mut entry.event;
                    e.actor = bounded(&e.actor, MAX_AUDIT_KEY_ID * 4);
                    e.action = bounded(&e.action, MAX_AUDIT_KEY_ID);
                    e.key_id = bounded(&e.key_id, MAX_AUDIT_KEY_ID);
                    e.outcome = bounded(&e.outcome, MAX_AUDIT_KEY_ID);
                    e.detail = bounded(&e.detail, MAX_AUDIT_DETAIL);
                    AuditView { entry, hash }
                }
                Err(e) => AuditView {
                    entry: AuditEntry {
                        seq,
                        prev_hash: [0; 32],
                        event: AuditEvent {
                            time_unix_ms: 0,
                            actor: String::new(),
                            action: "undecodable".into(),
                            key_id: String::new(),
                            outcome: "error".into(),
                            detail: bounded(
                                &format!(
                                    "record {seq} ({} bytes) does not decode: {e}",
                                    bytes.len()
                                ),
                                MAX_AUDIT_DETAIL,
                            ),
                        },
                        checkpoint: None,
                    },
                    hash: String::new(),
                },
            };
            out.push(view);
        }
        out.reverse();
        Ok(out)
    }

    /// Walks the whole chain: sequence, links, checkpoint signatures by this node's identity
    /// key, and the sealed head (which catches a removed or edited last record).
    pub async fn audit_verify(&self) -> Result<AuditReport> {
        // The KEKs to open the head with are read under the writer lock: a copy taken before
        // it, while a KEK rotation held the lock, misses the KEK the rotation re-seals the
        // head under, and the head then reads as tampered with.
        let ws = self.write.lock().await;
        let u = self.unlocked()?;
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
