//! Destroying keys and shredding material no key id refers to any more.

use lockbox_store::{Batch, Ns};

use super::Custody;
use super::model::{Caller, Destroyed, KeyMeta, KeyState, VersionMeta, parse_key_id, ref_id};
use super::txn::Event;
use crate::error::{CustodyError, Result};

impl Custody {
    /// Destroys a key id; its material is shredded once no key id refers to it. `cascade`
    /// destroys every key id sharing any of its material. Then the shred-rotation policy
    /// decides whether the KEK rotates now (which is what makes the shredding final on disk).
    pub async fn destroy(&self, caller: &Caller, key_id: &str, cascade: bool) -> Result<Destroyed> {
        let res = self.destroy_inner(caller, key_id, cascade).await;
        self.audited(caller, "destroy", key_id, res).await
    }

    async fn destroy_inner(
        &self,
        caller: &Caller,
        key_id: &str,
        cascade: bool,
    ) -> Result<Destroyed> {
        let id = parse_key_id(key_id)?;
        let mut txn = self.write_txn().await;
        let u = self.unlocked()?;
        let first = self.live_meta(&u, &id)?;
        let mut victims = vec![first];
        if cascade {
            let mut seen: std::collections::BTreeSet<String> = [id.clone()].into();
            let mut i = 0;
            while i < victims.len() {
                let mids: Vec<String> = victims[i].material_ids().map(String::from).collect();
                for mid in mids {
                    let prefix = ref_id(&mid, "");
                    for r in self.store.scan_prefix(Ns::MaterialRefs, &prefix) {
                        let (rid, _) = r?;
                        let kid = String::from_utf8_lossy(&rid[prefix.len()..]).into_owned();
                        if seen.insert(kid.clone())
                            && let Some(m) = self.load_meta(&u, &kid)?
                            && !m.state.is_tombstone()
                        {
                            victims.push(m);
                        }
                    }
                }
                i += 1;
            }
        }
        let shredded = self.drop_material_refs(&victims, txn.batch())?;
        let mut ids = Vec::new();
        for mut m in victims {
            let was = std::mem::replace(&mut m.state, KeyState::Destroyed);
            m.versions.iter_mut().for_each(VersionMeta::shred);
            txn.put(Ns::Keys, m.key_id.as_bytes(), &self.seal_meta(&u, &m)?);
            txn.count_key(Some(&was), &m.state);
            ids.push(m.key_id);
        }
        if shredded {
            txn.count_shred();
        }
        txn.audit(
            Some(&u),
            caller,
            Event::ok(
                "destroy",
                &id,
                format!(
                    "destroyed {}; material {}",
                    ids.join(","),
                    if shredded {
                        "shredded"
                    } else {
                        "kept (shared)"
                    }
                ),
            ),
        )?;
        let mut applied = txn.apply()?;
        let mut kek_rotated = false;
        if shredded && self.rotation_due(&applied.state()) {
            applied.durable_locked().await?;
            self.rotate_locked(applied.next(), caller, "shred").await?;
            kek_rotated = true;
        } else {
            applied.durable().await?;
        }
        Ok(Destroyed {
            key_ids: ids,
            material_shredded: shredded,
            kek_rotated,
        })
    }

    /// Removes the material references of `victims` (key ids about to become tombstones) and
    /// shreds every material no other key id refers to. Returns true when something was
    /// shredded (which counts towards the shred-rotation policy).
    ///
    /// Material held inline in a victim's record has no reference to drop: it is shredded
    /// when the caller rewrites that record as a tombstone.
    pub(super) fn drop_material_refs(
        &self,
        victims: &[KeyMeta],
        batch: &mut Batch,
    ) -> Result<bool> {
        let mut shredded = victims.iter().any(KeyMeta::holds_inline);
        // A hash set: an evacuation looks up every reference it scans here (a tree of 100,000
        // ~90-byte ids made that lookup the check's main cost).
        let removed_refs: std::collections::HashSet<Vec<u8>> = victims
            .iter()
            .flat_map(|m| m.material_ids().map(|mid| ref_id(mid, &m.key_id)))
            .collect();
        // Each material once, in material order (pages of the reference index fetched once
        // when an evacuation walks thousands of them).
        // An evacuation checks one material per key: the checks are reads, split over the
        // cores (each thread a contiguous run of materials).
        let mut materials: Vec<&str> = victims.iter().flat_map(|m| m.material_ids()).collect();
        materials.sort_unstable();
        materials.dedup();
        let orphaned = crate::par::try_map(&materials, |mid| {
            let prefix = ref_id(mid, "");
            for r in self.store.scan_prefix(Ns::MaterialRefs, &prefix) {
                let (rid, _) = r?;
                if !removed_refs.contains(&rid) {
                    return Ok(false);
                }
            }
            Ok::<_, CustodyError>(true)
        })?;
        for (mid, orphaned) in materials.iter().zip(orphaned) {
            if orphaned {
                batch.remove(Ns::Materials, mid.as_bytes());
                shredded = true;
            }
        }
        for r in &removed_refs {
            batch.remove(Ns::MaterialRefs, r);
        }
        Ok(shredded)
    }
}
