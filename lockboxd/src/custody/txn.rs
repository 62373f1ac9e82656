//! The write path, as one type: [`WriteTxn`] owns the writer lock, the batch and the state to
//! restore, so that every mutation has the same shape and the same guarantees:
//!
//! 1. `custody.write_txn().await` takes the writer lock (which orders the audit chain);
//! 2. the mutation reads and checks under it, and puts its records in the batch;
//! 3. `txn.audit(..)` adds the audit record (and the sealed head, and a signed checkpoint
//!    every [`CHECKPOINT_EVERY`] records);
//! 4. `txn.commit().await` applies the batch, **releases the lock**, then waits until the
//!    batch is durable (so concurrent writers share one sync).
//!
//! Whatever happens in between, the in-memory chain head and counters never run ahead of the
//! store: a transaction dropped without being applied, or whose apply fails, puts them back
//! as they were when the lock was taken. Counters (key count, shreds since the last rotation)
//! are written to the batch once, at apply, when they changed.

use lockbox_crypto::{AuditEntry, AuditEvent, RecordKind, Unsealed, sign_checkpoint};
use lockbox_store::{Batch, Ns};
use tokio::sync::MutexGuard;

use super::model::{Caller, KeyState};
use super::{
    AUDIT_WATERMARK, Custody, NODE_AUDIT_HEAD, NODE_DESTROYS, NODE_KEY_COUNT, NODE_KEY_STATES,
    Unlocked, now_ms,
};
use crate::error::{CustodyError, Result};
use crate::metrics::state_index;

/// The most an audit record's detail holds (bytes): a refusal quotes short prefixes of what
/// it refused, and whatever a caller sends, no record grows past this.
pub(super) const MAX_AUDIT_DETAIL: usize = 1024;

/// The most a key id field of an audit record holds (a key id is 36 bytes; a refused
/// request's may be anything).
pub(super) const MAX_AUDIT_KEY_ID: usize = 64;

/// `s` as an audit record keeps it: control characters escaped (a log reader's terminal is
/// not the caller's to drive), cut to about `max` bytes on a character boundary, saying how
/// much was cut.
pub(super) fn bounded(s: &str, max: usize) -> String {
    // Where the text is cut if it does not fit: room is left for the note saying so.
    let budget = max.saturating_sub(32);
    let mut cut = None;
    let mut out = String::with_capacity(s.len().min(max + 16));
    for (i, c) in s.char_indices() {
        if cut.is_none() && out.len() >= budget {
            cut = Some((out.len(), i));
        }
        if out.len() > max {
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if out.len() <= max {
        return out;
    }
    let (len, at) = cut.unwrap_or((out.len(), s.len()));
    out.truncate(len);
    out.push_str(&format!("… ({} more bytes)", s.len() - at));
    out
}

/// A signed checkpoint every this many audit records bounds what an attacker with write access
/// to the disk could rewrite undetected while the node is sealed.
pub(super) const CHECKPOINT_EVERY: u64 = 1000;

/// State owned by the writer lock: the head of the audit chain and the node's counters, as of
/// the last applied batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteState {
    pub(super) audit_seq: u64,
    pub(super) audit_hash: [u8; 32],
    pub(super) key_count: u64,
    pub(super) destroys_since_rotation: u64,
    /// Key records by state; `None` until counted (see `Custody::unseal`).
    pub(super) key_states: Option<crate::metrics::KeyCounts>,
}

/// What an audit record says happened (the chain fields are the transaction's).
#[derive(Debug)]
pub(super) struct Event<'e> {
    /// The operation, e.g. `create`.
    pub action: &'e str,
    /// The key it concerns, or empty.
    pub key_id: &'e str,
    /// `ok` or `refused`.
    pub outcome: &'static str,
    /// Free text for the reader of the log (never key material).
    pub detail: String,
}

impl<'e> Event<'e> {
    /// A mutation that took effect.
    pub fn ok(action: &'e str, key_id: &'e str, detail: impl Into<String>) -> Self {
        Event {
            action,
            key_id,
            outcome: "ok",
            detail: detail.into(),
        }
    }

    /// A request refused (DESIGN.md invariant 5: audited, nothing else changed).
    pub fn refused(action: &'e str, key_id: &'e str, detail: impl Into<String>) -> Self {
        Event {
            action,
            key_id,
            outcome: "refused",
            detail: detail.into(),
        }
    }
}

/// The audit head sealed under the current KEK: what lets `unseal` and `audit verify` notice
/// a removed or edited tail of the chain.
pub(super) fn seal_head(unsealed: &Unsealed, seq: u64, hash: &[u8; 32]) -> Result<Vec<u8>> {
    seal_position(unsealed, NODE_AUDIT_HEAD, seq, hash)
}

/// A position in the audit chain (sequence and hash), sealed under the current KEK as `id`.
pub(super) fn seal_position(
    unsealed: &Unsealed,
    id: &[u8],
    seq: u64,
    hash: &[u8; 32],
) -> Result<Vec<u8>> {
    let mut plain = Vec::with_capacity(40);
    plain.extend_from_slice(&seq.to_be_bytes());
    plain.extend_from_slice(hash);
    Ok(unsealed
        .current_kek()
        .seal(RecordKind::AuditHead, id, &plain)?)
}

/// One mutation under the writer lock (see the module doc).
pub(super) struct WriteTxn<'a> {
    custody: &'a Custody,
    /// `None` only once applied (moved into [`Applied`]).
    ws: Option<MutexGuard<'a, WriteState>>,
    before: WriteState,
    batch: Batch,
    /// The audit watermark to write once the batch is durable (set by a checkpoint): its
    /// checkpoint's sequence number and the sealed bytes.
    watermark: Option<(u64, Vec<u8>)>,
}

impl Custody {
    /// Takes the writer lock and starts a transaction.
    pub(super) async fn write_txn(&self) -> WriteTxn<'_> {
        WriteTxn::under(self, self.write.lock().await)
    }
}

impl<'a> WriteTxn<'a> {
    fn under(custody: &'a Custody, ws: MutexGuard<'a, WriteState>) -> Self {
        WriteTxn {
            custody,
            before: *ws,
            ws: Some(ws),
            batch: Batch::new(),
            watermark: None,
        }
    }

    fn ws(&mut self) -> &mut WriteState {
        // Infallible: `ws` is only taken by `apply`, which consumes the transaction.
        self.ws.as_deref_mut().unwrap_or(&mut self.before)
    }

    /// The state as this transaction has changed it so far.
    pub fn state(&self) -> WriteState {
        self.ws.as_deref().copied().unwrap_or(self.before)
    }

    /// The batch, for helpers that add records to it (`share_out`, `drop_material_refs`).
    pub fn batch(&mut self) -> &mut Batch {
        &mut self.batch
    }

    /// Puts a record.
    pub fn put(&mut self, ns: Ns, id: &[u8], value: &[u8]) {
        self.batch.put(ns, id, value);
    }

    /// Removes a record.
    pub fn remove(&mut self, ns: Ns, id: &[u8]) {
        self.batch.remove(ns, id);
    }

    /// Counts a key record that goes from state `from` (`None`: there was no record) to
    /// `to`: the live key count (active and replica keys) and the counts by state.
    pub fn count_key(&mut self, from: Option<&KeyState>, to: &KeyState) {
        let ws = self.ws();
        let was_live = from.is_some_and(|s| !s.is_tombstone());
        match (was_live, !to.is_tombstone()) {
            (false, true) => ws.key_count = ws.key_count.saturating_add(1),
            (true, false) => ws.key_count = ws.key_count.saturating_sub(1),
            _ => {}
        }
        if let Some(counts) = ws.key_states.as_mut() {
            if let Some(from) = from {
                let n = &mut counts[state_index(from)];
                *n = n.saturating_sub(1);
            }
            counts[state_index(to)] = counts[state_index(to)].saturating_add(1);
        }
    }

    /// Sets the counts by state (counted at the first unseal after an upgrade).
    pub fn set_key_states(&mut self, counts: crate::metrics::KeyCounts) {
        self.ws().key_states = Some(counts);
    }

    /// Counts one shredding operation towards the `shred_rotation` policy.
    pub fn count_shred(&mut self) {
        let ws = self.ws();
        ws.destroys_since_rotation += 1;
    }

    /// A KEK rotation made every shredding so far final.
    pub fn reset_shreds(&mut self) {
        self.ws().destroys_since_rotation = 0;
    }

    /// Adds an audit record (and, every [`CHECKPOINT_EVERY`] records, a signed checkpoint).
    /// With the node unsealed the sealed head moves too, which is what lets `audit verify`
    /// notice a truncated or edited tail. Sealed (a refused unseal), the record follows the
    /// head and is covered by the next one.
    pub fn audit(
        &mut self,
        unlocked: Option<&Unlocked>,
        caller: &Caller,
        event: Event<'_>,
    ) -> Result<()> {
        if let Some(u) = unlocked {
            self.check_current(u)?;
        }
        let ws = self.state();
        let entry = AuditEntry {
            seq: ws.audit_seq + 1,
            prev_hash: ws.audit_hash,
            event: AuditEvent {
                time_unix_ms: now_ms(),
                actor: caller.actor.clone(),
                action: event.action.into(),
                key_id: bounded(event.key_id, MAX_AUDIT_KEY_ID),
                outcome: event.outcome.into(),
                detail: bounded(&event.detail, MAX_AUDIT_DETAIL),
            },
            checkpoint: None,
        };
        self.push_entry(entry);
        if let Some(u) = unlocked {
            if self.state().audit_seq.is_multiple_of(CHECKPOINT_EVERY) {
                self.push_checkpoint(u)?;
            }
            self.put_head(u)?;
        }
        Ok(())
    }

    /// Signs a checkpoint of the chain so far and moves the sealed head to it (seal, clean
    /// shutdown, the end of a KEK rotation).
    pub fn checkpoint(&mut self, u: &Unlocked) -> Result<()> {
        self.check_current(u)?;
        self.push_checkpoint(u)?;
        self.put_head(u)
    }

    /// The state a write seals its audit head (and checkpoint watermark) with must be the
    /// current one. A copy taken before the writer lock may have been replaced meanwhile by a
    /// KEK rotation, which then retires the KEK that copy seals under: a head sealed with it
    /// could not be opened at the next unseal, a restart dead end. Every writer reads the
    /// state under the lock; this makes one that did not fail, writing nothing, instead of
    /// poisoning the head.
    fn check_current(&self, u: &Unlocked) -> Result<()> {
        match self.custody.unlocked() {
            Ok(current) if std::ptr::eq(std::sync::Arc::as_ptr(&current), u) => Ok(()),
            Ok(_) => Err(CustodyError::StaleUnsealedState),
            Err(e) => Err(e),
        }
    }

    fn put_head(&mut self, u: &Unlocked) -> Result<()> {
        let ws = self.state();
        let head = seal_head(&u.unsealed, ws.audit_seq, &ws.audit_hash)?;
        self.batch.put(Ns::Node, NODE_AUDIT_HEAD, &head);
        Ok(())
    }

    fn push_entry(&mut self, entry: AuditEntry) {
        self.batch
            .put(Ns::Audit, &entry.seq.to_be_bytes(), &entry.encode());
        let ws = self.ws();
        ws.audit_seq = entry.seq;
        ws.audit_hash = entry.hash();
    }

    /// Appends a checkpoint entry signing the chain so far with the node's identity key, and
    /// seals the watermark that is written outside the store once the batch is durable.
    fn push_checkpoint(&mut self, u: &Unlocked) -> Result<()> {
        let ws = self.state();
        let seq = ws.audit_seq + 1;
        let entry = AuditEntry {
            seq,
            prev_hash: ws.audit_hash,
            event: AuditEvent {
                time_unix_ms: now_ms(),
                actor: "lockboxd".into(),
                action: "checkpoint".into(),
                key_id: String::new(),
                outcome: "ok".into(),
                detail: String::new(),
            },
            checkpoint: Some(sign_checkpoint(&u.signing, seq, &ws.audit_hash)),
        };
        self.push_entry(entry);
        let ws = self.state();
        self.watermark = Some((
            ws.audit_seq,
            seal_position(&u.unsealed, AUDIT_WATERMARK, ws.audit_seq, &ws.audit_hash)?,
        ));
        Ok(())
    }

    /// Applies the batch (visible to readers, not yet durable), keeping the lock. On failure
    /// the state goes back to what it was when the lock was taken.
    pub fn apply(mut self) -> Result<Applied<'a>> {
        let now = self.state();
        if now.key_count != self.before.key_count {
            self.batch
                .put(Ns::Node, NODE_KEY_COUNT, &now.key_count.to_be_bytes());
        }
        if now.key_states != self.before.key_states
            && let Some(counts) = &now.key_states
        {
            let bytes: Vec<u8> = counts.iter().flat_map(|n| n.to_be_bytes()).collect();
            self.batch.put(Ns::Node, NODE_KEY_STATES, &bytes);
        }
        if now.destroys_since_rotation != self.before.destroys_since_rotation {
            self.batch.put(
                Ns::Node,
                NODE_DESTROYS,
                &now.destroys_since_rotation.to_be_bytes(),
            );
        }
        let batch = std::mem::take(&mut self.batch);
        let watermark = self.watermark.take();
        let custody = self.custody;
        let generation = if batch.is_empty() {
            0
        } else {
            let keys = batch.touches(Ns::Keys);
            // On error `self` drops here and restores the state.
            let generation = custody.store.apply(batch)?;
            if keys {
                custody
                    .keys_written
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            generation
        };
        let ws = self
            .ws
            .take()
            .ok_or_else(|| CustodyError::Corrupt("a write transaction was applied twice".into()))?;
        let metrics = &custody.metrics;
        metrics.audit_written(now.audit_seq.saturating_sub(self.before.audit_seq));
        if now.key_states != self.before.key_states {
            metrics.set_keys(now.key_states.as_ref());
        }
        Ok(Applied {
            custody,
            ws,
            generation,
            watermark,
        })
    }

    /// Applies the batch, releases the lock, and waits until the batch is durable: the
    /// end of every mutation that answers its caller.
    pub async fn commit(self) -> Result<()> {
        self.apply()?.durable().await
    }
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        // Not applied (an error, or a check that found nothing to do): nothing of it reached
        // the store, so nothing of it stays in memory either.
        if let Some(ws) = self.ws.as_deref_mut() {
            *ws = self.before;
        }
    }
}

/// A transaction applied, the writer lock still held: for the few mutations that must do
/// more under the same lock (a KEK rotation after a shred), or shut down holding it.
pub(super) struct Applied<'a> {
    custody: &'a Custody,
    ws: MutexGuard<'a, WriteState>,
    generation: u64,
    /// Written once the batch is durable, never before (it must not run ahead of the store).
    watermark: Option<(u64, Vec<u8>)>,
}

impl<'a> Applied<'a> {
    /// The state after the batch.
    pub fn state(&self) -> WriteState {
        *self.ws
    }

    /// The store generation to wait on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Releases the lock, then waits until the batch is durable.
    pub async fn durable(self) -> Result<()> {
        let Applied {
            custody,
            ws,
            generation,
            watermark,
        } = self;
        drop(ws);
        custody.store.durable(generation).await?;
        custody.write_watermark(watermark);
        Ok(())
    }

    /// Waits until the batch is durable, keeping the lock (before a rotation that must not
    /// run ahead of it).
    pub async fn durable_locked(&mut self) -> Result<()> {
        self.custody.store.durable(self.generation).await?;
        self.custody.write_watermark(self.watermark.take());
        Ok(())
    }

    /// A new transaction under the same lock.
    pub fn next(self) -> WriteTxn<'a> {
        WriteTxn::under(self.custody, self.ws)
    }
}

impl Custody {
    /// Writes the sealed audit watermark (after the batch holding its checkpoint is durable).
    /// A failure is logged, not returned: the mutation it follows is durable and answered;
    /// the watermark only lags (the rollback check is then against an older checkpoint).
    ///
    /// Only ever forward: writers reach here after their batch is durable, outside the writer
    /// lock, so an older checkpoint's writer can arrive after a newer one's (both woken by one
    /// sync, or a rotation in between that re-sealed under a new KEK and retired the KEK the
    /// older watermark is sealed under). Writing it then would put back a watermark that lags,
    /// or one no KEK of the keyring opens.
    fn write_watermark(&self, watermark: Option<(u64, Vec<u8>)>) {
        let Some((seq, sealed)) = watermark else {
            return;
        };
        let mut written = self
            .watermark_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seq <= *written {
            return;
        }
        match lockbox_store::write_file_atomic(&self.watermark_path, &sealed, 0o600) {
            Ok(()) => *written = seq,
            Err(e) => tracing::error!(
                error = %e,
                path = %self.watermark_path.display(),
                "cannot write the audit watermark"
            ),
        }
    }

    /// Records a refused request (DESIGN.md invariant 5: a refusal changes nothing but gets an
    /// audit record). Best effort: a failure to audit a refusal is logged, not returned.
    pub(super) async fn audit_refusal(
        &self,
        caller: &Caller,
        action: &str,
        key_id: &str,
        err: &CustodyError,
    ) {
        // The unsealed state is read under the writer lock, never before it: a KEK rotation
        // waiting ahead of us would otherwise retire the KEK our copy seals the audit head
        // under, and the next unseal could not open the head (a restart dead end).
        let mut txn = self.write_txn().await;
        let Ok(u) = self.unlocked() else { return };
        let detail = err.to_string();
        let res = match txn.audit(Some(&u), caller, Event::refused(action, key_id, detail)) {
            Ok(()) => txn.apply(),
            Err(e) => Err(e),
        };
        match res {
            Ok(applied) => {
                if let Err(e) = applied.durable().await {
                    tracing::error!(error = %e, "cannot flush an audit record");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot audit a refused request"),
        }
    }

    /// Runs a mutation and audits it: on success the closure's own batch carries the audit
    /// record; on refusal a separate "refused" record is written.
    pub(super) async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        key_id: &str,
        res: Result<T>,
    ) -> Result<T> {
        if let Err(e) = &res
            && !matches!(e, CustodyError::Sealed)
        {
            self.audit_refusal(caller, action, key_id, e).await;
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_escapes_control_characters_and_cuts_long_text() {
        assert_eq!(bounded("create ok", 64), "create ok");
        assert_eq!(bounded("a\u{1b}[31mb\n", 64), "a\\u{1b}[31mb\\n");
        let long = "é".repeat(10_000);
        let b = bounded(&long, MAX_AUDIT_DETAIL);
        assert!(b.len() <= MAX_AUDIT_DETAIL + 32, "{}", b.len());
        assert!(b.ends_with("more bytes)"), "{b}");
        // Short text that only grows by escaping is kept whole, and text that fits stays whole.
        assert_eq!(bounded("\t", 64), "\\t");
        let uuid = "8d19909b-21b6-428c-943e-d5dfc880254d";
        assert_eq!(bounded(uuid, MAX_AUDIT_KEY_ID), uuid);
        let exactly = "k".repeat(MAX_AUDIT_KEY_ID);
        assert_eq!(bounded(&exactly, MAX_AUDIT_KEY_ID), exactly);
        let over = bounded(&"k".repeat(MAX_AUDIT_KEY_ID + 1), MAX_AUDIT_KEY_ID);
        assert!(
            over.len() <= MAX_AUDIT_KEY_ID + 4 && over.ends_with("more bytes)"),
            "{over}"
        );
    }
}

#[cfg(test)]
mod watermark_tests {
    #![allow(clippy::unwrap_used)]
    use super::super::keys::test_support::custody;

    /// A checkpoint's writer that arrives after a newer one's (both woken by one sync, or a
    /// KEK rotation in between) leaves the newer watermark in place.
    #[tokio::test]
    async fn an_older_watermark_arriving_late_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let c = custody(dir.path(), "").await;
        c.write_watermark(Some((2000, b"newer".to_vec())));
        c.write_watermark(Some((1000, b"older".to_vec())));
        c.write_watermark(Some((2000, b"again".to_vec())));
        assert_eq!(std::fs::read(&c.watermark_path).unwrap(), b"newer");
        c.write_watermark(Some((2001, b"next".to_vec())));
        assert_eq!(std::fs::read(&c.watermark_path).unwrap(), b"next");
    }

    /// An unsealed state read before a KEK rotation replaced it cannot seal an audit head:
    /// the write fails and nothing of it stays; the current state writes as usual.
    #[tokio::test]
    async fn a_write_with_a_replaced_unsealed_state_is_refused() {
        use super::super::keys::test_support::{caller, last_audit};
        let dir = tempfile::tempdir().unwrap();
        let c = custody(dir.path(), "").await;
        let stale = c.unlocked().unwrap();
        c.rotate_kek(&caller()).await.unwrap();
        let before = last_audit(&c);
        let mut txn = c.write_txn().await;
        let e = txn
            .audit(Some(&stale), &caller(), super::Event::ok("test", "", ""))
            .unwrap_err();
        assert!(matches!(e, super::CustodyError::StaleUnsealedState), "{e}");
        assert!(matches!(
            txn.checkpoint(&stale),
            Err(super::CustodyError::StaleUnsealedState)
        ));
        drop(txn);
        assert_eq!(last_audit(&c), before);
        let current = c.unlocked().unwrap();
        let mut txn = c.write_txn().await;
        txn.audit(Some(&current), &caller(), super::Event::ok("test", "", ""))
            .unwrap();
        txn.commit().await.unwrap();
        assert_eq!(last_audit(&c).0, "test");
        assert!(c.audit_verify().await.unwrap().ok);
    }
}
