//! The audit position a controller sees. At every attestation the node reports its newest
//! durable signed checkpoint (sequence number and entry hash); the controller remembers the
//! highest each node identity reported and records a rollback when the node comes back behind
//! it. A data dir restored whole from an older copy (keyring, watermark and store alike, e.g. a
//! filesystem snapshot rolled back) passes every check on the host itself: only state kept
//! elsewhere can tell (SECURITY.md).

use lockbox_crypto::AuditEntry;
use lockbox_store::Ns;

use super::Custody;
use crate::error::{CustodyError, Result};

impl Custody {
    /// The newest signed checkpoint, once it is durable: the last audit record when it is a
    /// checkpoint (a clean shutdown or an earlier attestation left one), else a new one. So
    /// attestation renewals add a record only when something was recorded since, and the
    /// position reported never runs ahead of the disk: after a crash the node reports this
    /// position or a later one, never an earlier one (which would read as a rollback).
    /// Unsealed only: a checkpoint is signed by the node's identity key.
    pub async fn audit_position(&self) -> Result<(u64, [u8; 32])> {
        let mut txn = self.write_txn().await;
        let u = self.unlocked()?;
        let seq = txn.state().audit_seq;
        if let Some((_, bytes)) = self.store.last(Ns::Audit)? {
            let entry = AuditEntry::decode(&bytes)
                .map_err(|e| CustodyError::Corrupt(format!("last audit record: {e}")))?;
            if entry.seq == seq && entry.checkpoint.is_some() {
                drop(txn);
                let needs = self.store.unsynced(Ns::Audit, &seq.to_be_bytes());
                self.store.durable(needs).await?;
                return Ok((seq, entry.hash()));
            }
        }
        txn.checkpoint(&u)?;
        let state = txn.state();
        txn.commit().await?;
        Ok((state.audit_seq, state.audit_hash))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::keys::test_support::{caller, custody};
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn reports_the_last_checkpoint_and_adds_one_only_when_records_came_since() {
        let dir = tempfile::tempdir().unwrap();
        let c = custody(dir.path(), "").await;
        let first = c.audit_position().await.unwrap();
        let records = c.audit_tail(10_000).unwrap().len();
        // Asked again (a retried attestation while a controller is down): the same
        // checkpoint, no new record.
        assert_eq!(c.audit_position().await.unwrap(), first);
        assert_eq!(c.audit_tail(10_000).unwrap().len(), records);
        let last = c.audit_tail(1).unwrap().pop().unwrap();
        assert_eq!(last.entry.event.action, "checkpoint");
        assert_eq!((last.entry.seq, last.entry.hash()), first);

        c.create(&caller(), 32, BTreeMap::new(), None, None)
            .await
            .unwrap();
        let next = c.audit_position().await.unwrap();
        assert!(next.0 > first.0, "{next:?} after {first:?}");
        let last = c.audit_tail(1).unwrap().pop().unwrap();
        assert_eq!((last.entry.seq, last.entry.hash()), next);
        assert!(last.entry.checkpoint.is_some());
    }

    #[tokio::test]
    async fn sealed_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = custody(dir.path(), "").await;
        c.seal(&caller()).await.unwrap();
        assert!(c.audit_position().await.is_err());
    }
}
