//! Reading and verifying the audit chain (writing it is `txn`'s).

use lockbox_crypto::{AuditEntry, ChainVerifier, RecordKind};
use lockbox_store::Ns;

use super::model::{AuditReport, AuditView};
use super::{Custody, NODE_AUDIT_HEAD, decode_u64};
use crate::error::{CustodyError, Result};

impl Custody {
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
