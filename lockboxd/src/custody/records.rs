//! Sealed records: a key's metadata (with inline material) and shared material, opened and
//! sealed under the KEK, and the liveness checks every reader applies.

use lockbox_crypto::{RecordKind, SecretBytes};
use lockbox_store::{Batch, Ns};

use super::model::{KeyMeta, Material, VersionMeta, check_live, check_not_replica, ref_id};
use super::{Custody, Unlocked};
use crate::error::{CustodyError, Result};

impl Custody {
    pub(super) fn load_meta(&self, u: &Unlocked, key_id: &str) -> Result<Option<KeyMeta>> {
        Ok(self.load_meta_sealed(u, key_id)?.map(|(_, meta)| meta))
    }

    /// A key's metadata and the sealed record it came from (see `transfer::AsRead`).
    pub(super) fn load_meta_sealed(
        &self,
        u: &Unlocked,
        key_id: &str,
    ) -> Result<Option<(Vec<u8>, KeyMeta)>> {
        let Some(sealed) = self.store.get(Ns::Keys, key_id.as_bytes())? else {
            return Ok(None);
        };
        let meta = self.open_meta(u, key_id, &sealed)?;
        Ok(Some((sealed, meta)))
    }

    pub(super) fn open_meta(&self, u: &Unlocked, key_id: &str, sealed: &[u8]) -> Result<KeyMeta> {
        let plain = u
            .unsealed
            .open(RecordKind::KeyMeta, key_id.as_bytes(), sealed)
            .map_err(|source| CustodyError::Record {
                what: "key metadata of",
                id: key_id.into(),
                source,
            })?;
        let meta: KeyMeta = serde_json::from_slice(plain.expose_secret())
            .map_err(|e| CustodyError::Corrupt(format!("key metadata of {key_id}: {e}")))?;
        if meta.key_id != key_id {
            return Err(CustodyError::Corrupt(format!(
                "key metadata of {key_id} names another key"
            )));
        }
        Ok(meta)
    }

    pub(super) fn live_meta(&self, u: &Unlocked, key_id: &str) -> Result<KeyMeta> {
        let meta = self
            .load_meta(u, key_id)?
            .ok_or_else(|| CustodyError::KeyNotFound(key_id.into()))?;
        check_live(key_id, &meta)?;
        Ok(meta)
    }

    /// Like `live_meta`, and refuses replicas: a replica is a standing backup, not a second
    /// place to open the volume, until `key promote` makes it active.
    pub(super) fn usable_meta(&self, u: &Unlocked, key_id: &str) -> Result<KeyMeta> {
        let meta = self.live_meta(u, key_id)?;
        check_not_replica(key_id, &meta)?;
        Ok(meta)
    }

    /// Seals a key's metadata under the current KEK. Inline material still sealed under an
    /// older KEK (read during an unfinished rotation) is re-sealed with it, so a key record's
    /// two layers are always under one KEK: a rotation that re-seals the record re-seals its
    /// material too, and dropping the old KEK leaves nothing of the record unreadable.
    pub(super) fn seal_meta(&self, u: &Unlocked, meta: &KeyMeta) -> Result<Vec<u8>> {
        let current = u.unsealed.current_kek();
        let stale = |v: &VersionMeta| match &v.material {
            Material::Inline { sealed, .. } => {
                lockbox_crypto::sealed_kek_id(sealed).ok() != Some(current.id())
            }
            _ => false,
        };
        let resealed;
        let meta = if meta.versions.iter().any(stale) {
            let mut m = meta.clone();
            for v in m.versions.iter_mut().filter(|v| stale(v)) {
                if let Material::Inline { id, sealed } = &mut v.material {
                    let plain = self.open_sealed_material(u, &meta.key_id, id, sealed)?;
                    *sealed = self.seal_material(u, id, &plain)?;
                }
            }
            resealed = m;
            &resealed
        } else {
            meta
        };
        let json = SecretBytes::new(
            serde_json::to_vec(meta)
                .map_err(|e| CustodyError::Corrupt(format!("cannot encode metadata: {e}")))?,
        );
        Ok(current.seal(
            RecordKind::KeyMeta,
            meta.key_id.as_bytes(),
            json.expose_secret(),
        )?)
    }

    /// Seals material under the current KEK, bound to its material id (the same bytes serve
    /// inline and in a shared record).
    pub(super) fn seal_material(
        &self,
        u: &Unlocked,
        material_id: &str,
        plain: &SecretBytes,
    ) -> Result<Vec<u8>> {
        Ok(u.unsealed.current_kek().seal(
            RecordKind::Material,
            material_id.as_bytes(),
            plain.expose_secret(),
        )?)
    }

    pub(super) fn open_sealed_material(
        &self,
        u: &Unlocked,
        key_id: &str,
        material_id: &str,
        sealed: &[u8],
    ) -> Result<SecretBytes> {
        u.unsealed
            .open(RecordKind::Material, material_id.as_bytes(), sealed)
            .map_err(|source| CustodyError::Record {
                what: "material of key",
                id: key_id.into(),
                source,
            })
    }

    /// The plaintext of one readable version's material, from the key's record or from the
    /// shared record it points to.
    pub(super) fn open_version(
        &self,
        u: &Unlocked,
        key_id: &str,
        v: &VersionMeta,
    ) -> Result<SecretBytes> {
        match &v.material {
            Material::Inline { id, sealed } => self.open_sealed_material(u, key_id, id, sealed),
            Material::Shared { id } => {
                let sealed = self
                    .store
                    .get(Ns::Materials, id.as_bytes())?
                    .ok_or_else(|| {
                        CustodyError::Corrupt(format!("material of key {key_id} is missing"))
                    })?;
                self.open_sealed_material(u, key_id, id, &sealed)
            }
            Material::Shredded => Err(CustodyError::VersionNotFound {
                key_id: key_id.to_string(),
                version: v.version,
            }),
        }
    }

    /// Moves every inline material of `meta` to a shared record (with this key's reference
    /// to it), so another key id can refer to it too: what a snapshot or a same-key clone
    /// does first. O(1) per version: the sealed bytes are copied, not re-sealed, unless they
    /// are under an older KEK. The caller writes `meta` back.
    pub(super) fn share_out(
        &self,
        u: &Unlocked,
        meta: &mut KeyMeta,
        batch: &mut Batch,
    ) -> Result<()> {
        let current = u.unsealed.current_kek().id();
        for v in meta.versions.iter_mut() {
            let Material::Inline { id, sealed } = &v.material else {
                continue;
            };
            let resealed;
            let sealed = if lockbox_crypto::sealed_kek_id(sealed)? == current {
                sealed
            } else {
                let plain = self.open_sealed_material(u, &meta.key_id, id, sealed)?;
                resealed = self.seal_material(u, id, &plain)?;
                &resealed
            };
            batch.put(Ns::Materials, id.as_bytes(), sealed);
            batch.put(Ns::MaterialRefs, &ref_id(id, &meta.key_id), b"");
            v.material = Material::Shared { id: id.clone() };
        }
        Ok(())
    }
}
