//! The controller's own audit log: every attestation, vouch and grant, issued or refused, and
//! every revocation change (see `revoked.rs` for how each is written exactly once).
//!
//! Same format as a lockbox's (`lockbox-crypto` audit entries, hash-chained, with a checkpoint
//! signed by the controller's key every [`CHECKPOINT_EVERY`] records), stored with
//! `lockbox-store` so appends are atomic and group-committed: a grant is returned only after
//! its audit record is on disk.

use std::path::Path;

use lockbox_crypto::{
    AuditEntry, AuditEvent, ChainSummary, ChainVerifier, GENESIS_HASH, SigningIdentity,
    sign_checkpoint,
};
use lockbox_store::{Batch, Ns, Store};
use std::sync::Mutex;

use crate::ControllerError;

/// A signed checkpoint every this many records.
pub const CHECKPOINT_EVERY: u64 = 1000;

/// The append-only log.
pub struct AuditLog {
    store: Store,
    /// Sequence number and hash of the last record. A plain mutex: it is held only to build,
    /// hash and hand one record to the store (no `.await` inside), and under 32 concurrent
    /// grants an async mutex's wake-up chain cost more CPU than the critical section.
    head: Mutex<(u64, [u8; 32])>,
}

use lockbox_runtime::now_unix_ms as now_ms;

/// Longest detail of a record, in bytes (as lockboxd's): a refusal quotes what it refused,
/// and a caller must not be able to make one record as large as its request.
pub const MAX_DETAIL: usize = 1024;

/// `s` with control characters escaped, cut to at most `max` bytes plus a note of how many
/// bytes of `s` were left out.
pub fn bounded(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.char_indices() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            out.push_str(&format!("… ({} more bytes)", s.len() - i));
            return out;
        }
    }
    out
}

/// An audit event stamped now (the key id field is for lockboxes; the controller has none);
/// the detail bounded to [`MAX_DETAIL`] bytes.
pub fn event(actor: &str, action: &str, outcome: &str, detail: String) -> AuditEvent {
    let detail = if detail.len() > MAX_DETAIL || detail.chars().any(char::is_control) {
        bounded(&detail, MAX_DETAIL)
    } else {
        detail
    };
    AuditEvent {
        time_unix_ms: now_ms(),
        actor: actor.into(),
        action: action.into(),
        key_id: String::new(),
        outcome: outcome.into(),
        detail,
    }
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> Result<AuditLog, ControllerError> {
        let store = Store::open(dir, 8 << 20)?;
        let head = match store.last(Ns::Audit)? {
            Some((_, bytes)) => {
                let e = AuditEntry::decode(&bytes)
                    .map_err(|e| ControllerError::Audit(format!("last audit record: {e}")))?;
                (e.seq, e.hash())
            }
            None => (0, GENESIS_HASH),
        };
        Ok(AuditLog {
            store,
            head: Mutex::new(head),
        })
    }

    /// Appends one record and waits until it is durable.
    pub async fn append(
        &self,
        signer: &SigningIdentity,
        actor: &str,
        action: &str,
        outcome: &str,
        detail: String,
    ) -> Result<(), ControllerError> {
        let generation =
            self.append_locked(signer, vec![event(actor, action, outcome, detail)], None)?;
        self.store.durable(generation).await?;
        Ok(())
    }

    /// Appends `events` and sets the node record `mark` in the same atomic batch, and waits
    /// until both are durable.
    ///
    /// Why: a record that must be written exactly once (a revocation change made while the
    /// daemon ran) is identified by a mark that says how far the log has recorded; writing
    /// the mark with the records means a crash leaves both or neither.
    pub async fn append_marked(
        &self,
        signer: &SigningIdentity,
        events: Vec<AuditEvent>,
        mark: (&[u8], &[u8]),
    ) -> Result<(), ControllerError> {
        let generation = self.append_locked(signer, events, Some(mark))?;
        self.store.durable(generation).await?;
        Ok(())
    }

    /// [`AuditLog::append_marked`] for a caller without an async runtime (the CLI): blocks
    /// until the records are durable.
    pub fn append_marked_blocking(
        &self,
        signer: &SigningIdentity,
        events: Vec<AuditEvent>,
        mark: (&[u8], &[u8]),
    ) -> Result<(), ControllerError> {
        self.append_locked(signer, events, Some(mark))?;
        self.store.flush_blocking()?;
        Ok(())
    }

    /// The node record `key` last written with [`AuditLog::append_marked`], if any.
    pub fn mark(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ControllerError> {
        Ok(self.store.get(Ns::Node, key)?)
    }

    /// Every record, in order (`audit-verify` checks them; tests and tools read them).
    pub fn entries(&self) -> Result<Vec<AuditEntry>, ControllerError> {
        let mut out = Vec::new();
        for r in self.store.iter_after(Ns::Audit, None) {
            let (_, bytes) = r?;
            out.push(
                AuditEntry::decode(&bytes)
                    .map_err(|e| ControllerError::Audit(format!("audit record: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Chains and hands records (each followed by a checkpoint when one is due) and `mark`
    /// to the store in one batch under the head lock; returns the generation to wait for.
    fn append_locked(
        &self,
        signer: &SigningIdentity,
        events: Vec<AuditEvent>,
        mark: Option<(&[u8], &[u8])>,
    ) -> Result<u64, ControllerError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Batch::new();
        let mut next = *head;
        for event in events {
            let entry = AuditEntry {
                seq: next.0 + 1,
                prev_hash: next.1,
                event,
                checkpoint: None,
            };
            next = (entry.seq, entry.hash());
            batch.put(Ns::Audit, &entry.seq.to_be_bytes(), &entry.encode());
            if next.0.is_multiple_of(CHECKPOINT_EVERY) {
                let seq = next.0 + 1;
                let cp = AuditEntry {
                    seq,
                    prev_hash: next.1,
                    event: AuditEvent {
                        time_unix_ms: now_ms(),
                        actor: "lockbox-controller".into(),
                        action: "checkpoint".into(),
                        outcome: "ok".into(),
                        ..Default::default()
                    },
                    checkpoint: Some(sign_checkpoint(signer, seq, &next.1)),
                };
                batch.put(Ns::Audit, &seq.to_be_bytes(), &cp.encode());
                next = (seq, cp.hash());
            }
        }
        if let Some((key, value)) = mark {
            batch.put(Ns::Node, key, value);
        }
        let generation = self.store.apply(batch)?;
        *head = next;
        Ok(generation)
    }

    /// Walks the chain (`lockbox-controller audit-verify`).
    pub fn verify(&self, signer_public: [u8; 32]) -> Result<ChainSummary, ControllerError> {
        let mut v = ChainVerifier::new(signer_public);
        for r in self.store.iter_after(Ns::Audit, None) {
            let (id, bytes) = r?;
            let seq = <[u8; 8]>::try_from(id.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| ControllerError::Audit("malformed sequence number".into()))?;
            v.push(seq, &bytes)
                .map_err(|e| ControllerError::Audit(e.to_string()))?;
        }
        Ok(v.summary())
    }

    /// Flushes before exit.
    pub fn close(&self) -> Result<(), ControllerError> {
        self.store.flush_blocking()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_bounded_and_escaped() {
        let e = event("a", "b", "refused", "x".repeat(5000));
        assert!(e.detail.len() < MAX_DETAIL + 32, "{}", e.detail.len());
        assert!(e.detail.ends_with("… (3976 more bytes)"), "{}", e.detail);
        let e = event("a", "b", "refused", "line\n\u{1b}[2J".into());
        assert_eq!(e.detail, "line\\n\\u{1b}[2J");
        assert_eq!(bounded("héllo", 3), "hé… (3 more bytes)");
    }
}
