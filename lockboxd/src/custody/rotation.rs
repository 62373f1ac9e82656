//! KEK rotation (DESIGN.md §5.4): what makes shredding final on disk.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use lockbox_crypto::RecordKind;
use lockbox_store::{Ns, write_file_atomic};

use super::model::{Caller, Rotated};
use super::txn::{Event, WriteState, WriteTxn};
use super::{Custody, NODE_AUDIT_HEAD, NODE_HPKE, NODE_SIGNING, Unlocked};
use crate::config::ShredRotation;
use crate::error::{CustodyError, Result};

/// Records re-sealed per batch during a KEK rotation (bounded memory on a large lockbox).
const ROTATION_BATCH: usize = 2000;

impl Custody {
    /// Whether the shred-rotation policy calls for a KEK rotation now (after a shred).
    pub(super) fn rotation_due(&self, ws: &WriteState) -> bool {
        match self.policy.shred_rotation {
            ShredRotation::Immediate => true,
            ShredRotation::Every(n) => ws.destroys_since_rotation >= u64::from(n),
        }
    }

    /// Rotates the KEK on demand.
    pub async fn rotate_kek(&self, caller: &Caller) -> Result<Rotated> {
        let res = async {
            self.unlocked()?;
            let txn = self.write_txn().await;
            self.rotate_locked(txn, caller, "on demand").await
        }
        .await;
        self.audited(caller, "kek-rotate", "", res).await
    }

    /// Step 1 of a KEK rotation, with the writer lock held: a new KEK joins the keyring
    /// (written atomically) and becomes current, the old ones stay readable. Returns the
    /// unlocked state to seal with. When a rotation is already under way (two or more KEKs),
    /// changes nothing and returns the current state.
    ///
    /// A MOVE that will shred begins the rotation before sealing its tombstones, so that
    /// the rotation which follows does not open and re-seal every one of them again.
    pub(super) fn begin_rotation(&self) -> Result<Arc<Unlocked>> {
        let u = self.unlocked()?;
        let keyring = self.keyring();
        if keyring.kek_ids().len() > 1 {
            // Resuming an interrupted rotation: the newest KEK is already current and the
            // unsealed set already holds both.
            return Ok(u);
        }
        let (keyring, unsealed) = keyring.add_kek(&u.unsealed)?;
        write_file_atomic(&self.keyring_path, &keyring.encode(), 0o600)?;
        crate::failpoint::hit("rotate-after-add-kek");
        let unlocked = Arc::new(Unlocked {
            unsealed,
            signing: u.signing.clone(),
            hpke: u.hpke.clone(),
        });
        self.set_keyring(keyring);
        self.set_unlocked(Some(unlocked.clone()));
        Ok(unlocked)
    }

    /// KEK rotation (DESIGN.md §5.4), with the writer lock held:
    /// 1. a new KEK joins the keyring (written atomically) and becomes current;
    /// 2. every sealed record still under an older KEK is re-sealed, in flushed batches;
    /// 3. the keyring is rewritten with only the new KEK.
    ///
    /// A crash anywhere leaves a keyring that opens every record; the next unseal sees two
    /// KEKs and finishes the job.
    pub(super) async fn rotate_locked(
        &self,
        mut txn: WriteTxn<'_>,
        caller: &Caller,
        why: &str,
    ) -> Result<Rotated> {
        // The oldest KEK in the keyring: the one a resumed rotation (or one begun by a MOVE,
        // see `begin_rotation`) is retiring.
        let old_kek_id = self
            .keyring()
            .kek_ids()
            .first()
            .copied()
            .unwrap_or_else(|| self.keyring().current_kek_id());
        let unlocked = self.begin_rotation()?;
        let keyring = self.keyring();
        let new_id = keyring.current_kek_id();

        let mut resealed = 0u64;
        let node_sealed = [
            (RecordKind::NodeSigning, NODE_SIGNING),
            (RecordKind::NodeHpke, NODE_HPKE),
            (RecordKind::AuditHead, NODE_AUDIT_HEAD),
        ];
        for (kind, id) in node_sealed {
            if let Some(sealed) = self.store.get(Ns::Node, id)?
                && lockbox_crypto::sealed_kek_id(&sealed)? != new_id
            {
                let plain = self.open_node(&unlocked.unsealed, kind, id)?;
                txn.put(
                    Ns::Node,
                    id,
                    &unlocked
                        .unsealed
                        .current_kek()
                        .seal(kind, id, plain.expose_secret())?,
                );
                resealed += 1;
            }
        }
        for (ns, kind) in [
            (Ns::Keys, RecordKind::KeyMeta),
            (Ns::Materials, RecordKind::Material),
        ] {
            // The records not yet under the new KEK (a key record and its inline material are
            // sealed together: `seal_meta`), found by their header without copying the rest.
            // One whose header does not parse is listed too: opening it reports the damage.
            let stale = self.store.ids_where(ns, |sealed| {
                lockbox_crypto::sealed_kek_id(sealed).map_or(true, |kek| kek != new_id)
            })?;
            for id in stale {
                // The writer lock is held: nothing removed or rewrote it since.
                let Some(sealed) = self.store.get(ns, &id)? else {
                    continue;
                };
                let resealed_record = if ns == Ns::Keys {
                    // Opened and sealed as metadata, which re-seals its inline material too.
                    let key_id = String::from_utf8_lossy(&id).into_owned();
                    let meta = self.open_meta(&unlocked, &key_id, &sealed)?;
                    self.seal_meta(&unlocked, &meta)?
                } else {
                    let plain = unlocked
                        .unsealed
                        .open(kind, &id, &sealed)
                        .map_err(|source| CustodyError::Record {
                            what: kind.label(),
                            id: String::from_utf8_lossy(&id).into_owned(),
                            source,
                        })?;
                    unlocked
                        .unsealed
                        .current_kek()
                        .seal(kind, &id, plain.expose_secret())?
                };
                txn.put(ns, &id, &resealed_record);
                resealed += 1;
                if txn.batch().len() >= ROTATION_BATCH {
                    // Flushed on its own, outside the transaction's audit record: a crash
                    // after it leaves records under either KEK, both still in the keyring.
                    let full = std::mem::take(txn.batch());
                    self.store.commit(full).await?;
                    self.keys_written.fetch_add(1, Ordering::SeqCst);
                    crate::failpoint::hit("rotate-after-reseal-batch");
                }
            }
        }
        txn.reset_shreds();
        let detail = format!("kek {old_kek_id} -> {new_id} ({why}); {resealed} records re-sealed");
        txn.audit(Some(&unlocked), caller, Event::ok("kek-rotate", "", detail))?;
        txn.checkpoint(&unlocked)?;
        // The lock stays held until the keyring no longer holds the old KEK.
        let mut applied = txn.apply()?;
        applied.durable_locked().await?;
        crate::failpoint::hit("rotate-before-drop");
        // Every record is now under the new KEK: drop the old ones from the keyring, which is
        // what makes destroyed material (still in the log-structured store) undecryptable.
        let (keyring, unsealed) = keyring.retain_current_only(&unlocked.unsealed)?;
        write_file_atomic(&self.keyring_path, &keyring.encode(), 0o600)?;
        crate::failpoint::hit("rotate-after-drop");
        self.set_keyring(keyring);
        self.set_unlocked(Some(Arc::new(Unlocked {
            unsealed,
            signing: unlocked.signing.clone(),
            hpke: unlocked.hpke.clone(),
        })));
        drop(applied);
        self.metrics.kek_rotated();
        Ok(Rotated {
            old_kek_id,
            new_kek_id: new_id,
            records_resealed: resealed,
        })
    }
}
