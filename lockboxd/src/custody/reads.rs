//! Reading keys: releasing material (Unix socket only), describing and listing.

use std::collections::BTreeMap;

use lockbox_store::Ns;

use super::model::{KeyInfo, KeyMeta, Material, Released, VersionState, parse_key_id, ref_id};
use super::{Custody, Unlocked};
use crate::config::ClonePolicy;
use crate::error::{CustodyError, Result};

/// Default and maximum page sizes of `list`.
const DEFAULT_PAGE: usize = 100;

const MAX_PAGE: usize = 1000;

impl Custody {
    /// Releases plaintext material (only the Unix socket adapter calls this). `version` 0 means
    /// the current version.
    pub fn get(&self, key_id: &str, version: u32) -> Result<Released> {
        self.read_unlocked(|u| self.get_with(u, key_id, version))
    }

    /// Runs a read with the current unsealed state; if it fails and a KEK rotation replaced
    /// that state meanwhile, once more with the new one. Reads take no writer lock, so one
    /// that began just before a rotation may meet a record the rotation already re-sealed
    /// under the new KEK, which the state it began with does not hold: an error that says
    /// "integrity" about a record nobody touched. Reads change nothing, so reading again is
    /// safe.
    pub(super) fn read_unlocked<T>(&self, read: impl Fn(&Unlocked) -> Result<T>) -> Result<T> {
        let u = self.unlocked()?;
        match read(&u) {
            Err(e) => match self.unlocked() {
                Ok(now) if !std::sync::Arc::ptr_eq(&now, &u) => read(&now),
                _ => Err(e),
            },
            ok => ok,
        }
    }

    fn get_with(&self, u: &Unlocked, key_id: &str, version: u32) -> Result<Released> {
        let key_id = parse_key_id(key_id)?;
        let meta = self.usable_meta(u, &key_id)?;
        let want = if version == 0 {
            meta.current_version
        } else {
            version
        };
        let v = meta
            .versions
            .iter()
            .find(|v| v.version == want && v.state != VersionState::Destroyed)
            .ok_or(CustodyError::VersionNotFound {
                key_id: key_id.clone(),
                version: want,
            })?;
        let material = self.open_version(u, &key_id, v)?;
        // After both reads: what they saw is durable once these generations are.
        let mut needs = self.store.unsynced(Ns::Keys, key_id.as_bytes());
        if let Material::Shared { id } = &v.material {
            needs = needs.max(self.store.unsynced(Ns::Materials, id.as_bytes()));
        }
        Ok(Released {
            key_id,
            version: want,
            material,
            needs,
        })
    }

    pub(super) fn info(&self, u: &Unlocked, meta: KeyMeta) -> Result<KeyInfo> {
        let mut shares = Vec::new();
        if let Some(material_id) = meta
            .versions
            .iter()
            .find(|v| v.version == meta.current_version)
            .and_then(|v| v.material.id())
        {
            let prefix = ref_id(material_id, "");
            for r in self.store.scan_prefix(Ns::MaterialRefs, &prefix) {
                let (id, _) = r?;
                let kid = String::from_utf8_lossy(&id[prefix.len()..]).into_owned();
                if kid != meta.key_id {
                    shares.push(kid);
                }
            }
        }
        let _ = u;
        Ok(KeyInfo {
            clone_policy: self.effective_policy(&meta),
            meta,
            shares_material_with: shares,
        })
    }

    pub(super) fn effective_policy(&self, meta: &KeyMeta) -> ClonePolicy {
        meta.clone_policy.unwrap_or(self.policy.clone_policy)
    }

    /// A key's metadata (destroyed keys included: the tombstone says what happened).
    pub fn describe(&self, key_id: &str) -> Result<KeyInfo> {
        self.read_unlocked(|u| {
            let key_id = parse_key_id(key_id)?;
            let meta = self
                .load_meta(u, &key_id)?
                .ok_or_else(|| CustodyError::KeyNotFound(key_id.clone()))?;
            self.info(u, meta)
        })
    }

    /// One page of keys whose labels include every `labels` pair, in key id order.
    pub fn list(
        &self,
        labels: &BTreeMap<String, String>,
        page_size: usize,
        page_token: &str,
        include_destroyed: bool,
    ) -> Result<(Vec<KeyInfo>, String)> {
        self.read_unlocked(|u| self.list_with(u, labels, page_size, page_token, include_destroyed))
    }

    fn list_with(
        &self,
        u: &Unlocked,
        labels: &BTreeMap<String, String>,
        page_size: usize,
        page_token: &str,
        include_destroyed: bool,
    ) -> Result<(Vec<KeyInfo>, String)> {
        let page_size = match page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(parse_key_id(page_token)?)
        };
        let mut out = Vec::new();
        let mut next = String::new();
        for r in self
            .store
            .iter_after(Ns::Keys, after.as_deref().map(str::as_bytes))
        {
            let (id, _) = r?;
            let key_id = String::from_utf8_lossy(&id).into_owned();
            let Some(meta) = self.load_meta(u, &key_id)? else {
                continue;
            };
            if (meta.state.is_tombstone() && !include_destroyed)
                || !labels.iter().all(|(k, v)| meta.labels.get(k) == Some(v))
            {
                continue;
            }
            if out.len() == page_size {
                // There is at least one more match: the token resumes after the last returned.
                next = out
                    .last()
                    .map(|i: &KeyInfo| i.meta.key_id.clone())
                    .unwrap_or_default();
                break;
            }
            out.push(self.info(u, meta)?);
        }
        Ok((out, next))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::keys::test_support::{caller, custody};
    use std::collections::BTreeMap;

    /// A read that began before a KEK rotation and meets a record the rotation re-sealed
    /// fails with the state it began with; `read_unlocked` reads again with the new state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_across_a_kek_rotation_reads_again_with_the_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let c = custody(dir.path(), "").await;
        let (id, _, _) = c
            .create(&caller(), 32, BTreeMap::new(), None, None)
            .await
            .unwrap();
        let bytes = c.get(&id, 0).unwrap().material;
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let got = c
            .read_unlocked(|u| {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    // The rotation runs between this read's start and its record.
                    tokio::task::block_in_place(|| {
                        tokio::runtime::Handle::current()
                            .block_on(c.rotate_kek(&caller()))
                            .unwrap()
                    });
                }
                c.get_with(u, &id, 0)
            })
            .unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(
            got.material.expose_secret(),
            bytes.expose_secret(),
            "the same key read with the new KEK"
        );
    }
}
