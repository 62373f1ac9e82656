//! Key mutations that add: create, snapshot, clone, rekey, promote.

use std::collections::BTreeMap;
use std::sync::Arc;

use lockbox_crypto::SecretBytes;
use lockbox_store::Ns;

use super::model::{
    Caller, CloneMode, KeyInfo, KeyMeta, KeyState, Material, Origin, OriginKind, VersionMeta,
    VersionState, new_material_id, parse_key_id, ref_id, validate_labels,
};
use super::txn::Event;
use super::{Custody, now_ms};
use crate::config::ClonePolicy;
use crate::error::{CustodyError, Result};

#[derive(Debug, Clone, Copy)]
enum DeriveMaterial {
    Share,
    Fresh,
}

impl Custody {
    /// Creates a key with fresh material. With a caller-chosen id, a retry with the same
    /// parameters returns the existing key (`created == false`). Also returns the store
    /// generation the answer needs durable (the new key's batch, or the unsynced write of the
    /// existing record it was read from).
    pub async fn create(
        &self,
        caller: &Caller,
        length: u32,
        labels: BTreeMap<String, String>,
        clone_policy: Option<ClonePolicy>,
        key_id: Option<String>,
    ) -> Result<(String, bool, u64)> {
        let res = self
            .create_inner(caller, length, labels, clone_policy, key_id.clone())
            .await;
        self.audited(caller, "create", key_id.as_deref().unwrap_or(""), res)
            .await
    }

    async fn create_inner(
        &self,
        caller: &Caller,
        length: u32,
        labels: BTreeMap<String, String>,
        clone_policy: Option<ClonePolicy>,
        key_id: Option<String>,
    ) -> Result<(String, bool, u64)> {
        let u = self.unlocked()?;
        let length = match length {
            0 => 32,
            32 | 64 => length,
            other => {
                return Err(CustodyError::InvalidArgument(format!(
                    "key length must be 32 or 64 bytes, not {other}"
                )));
            }
        };
        validate_labels(&labels)?;
        let given = key_id.is_some();
        let key_id = match key_id {
            Some(id) => parse_key_id(&id)?,
            None => uuid::Uuid::new_v4().hyphenated().to_string(),
        };
        // Generate and seal outside the writer lock: only the batch apply is serialized.
        let material_id = new_material_id()?;
        let material = SecretBytes::random(length as usize)?;
        let sealed_material = self.seal_material(&u, &material_id, &material)?;
        drop(material);
        let now = now_ms();
        let mut meta = KeyMeta {
            key_id: key_id.clone(),
            state: KeyState::Active,
            length,
            labels,
            created_unix_ms: now,
            origin: Origin {
                kind: OriginKind::Created,
                from_key_id: String::new(),
                from_node: String::new(),
                grant_id: String::new(),
            },
            clone_policy,
            current_version: 1,
            versions: vec![VersionMeta::inline(
                1,
                VersionState::Active,
                now,
                material_id,
                sealed_material,
            )],
        };
        let sealed_meta = self.seal_meta(&u, &meta)?;

        let mut txn = self.write_txn().await;
        // A KEK rotation (or a seal) may have run while we waited for the lock: seal again
        // under the KEK that is current now, or refuse if sealed.
        let u_now = self.unlocked()?;
        let sealed_meta = if Arc::ptr_eq(&u, &u_now) {
            sealed_meta
        } else {
            // Opened with the state it was sealed under (a finished rotation dropped that KEK
            // from the current one).
            for v in meta.versions.iter_mut() {
                if let Material::Inline { id, sealed } = &mut v.material {
                    let plain = self.open_sealed_material(&u, &key_id, id, sealed)?;
                    *sealed = self.seal_material(&u_now, id, &plain)?;
                }
            }
            self.seal_meta(&u_now, &meta)?
        };
        let u = u_now;
        if given && let Some(existing) = self.load_meta(&u, &key_id)? {
            let needs = self.store.unsynced(Ns::Keys, key_id.as_bytes());
            drop(txn);
            if existing.state.is_tombstone() {
                return Err(CustodyError::KeyDestroyed(key_id));
            }
            let same = existing.length == meta.length
                && existing.labels == meta.labels
                && existing.clone_policy == meta.clone_policy;
            return if same {
                Ok((key_id, false, needs))
            } else {
                Err(CustodyError::AlreadyExists(key_id))
            };
        }
        // One record: the material is inline until a snapshot or clone shares it.
        txn.put(Ns::Keys, key_id.as_bytes(), &sealed_meta);
        txn.count_key(None, &KeyState::Active);
        txn.audit(
            Some(&u),
            caller,
            Event::ok("create", &key_id, format!("length {length}")),
        )?;
        // Everything read above was applied before this batch: its durability covers them.
        let applied = txn.apply()?;
        let generation = applied.generation();
        applied.durable().await?;
        Ok((key_id, true, generation))
    }

    /// A new key id sharing every readable version's material (O(1) in the key's size: one
    /// metadata record and one reference per version).
    pub async fn snapshot(
        &self,
        caller: &Caller,
        key_id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        let res = self
            .derive(
                caller,
                key_id,
                labels,
                OriginKind::Snapshot,
                DeriveMaterial::Share,
            )
            .await;
        self.audited(caller, "snapshot", key_id, res).await
    }

    /// A clone, as the key's clone policy allows.
    pub async fn clone_key(
        &self,
        caller: &Caller,
        key_id: &str,
        mode: CloneMode,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        let res = self.clone_inner(caller, key_id, mode, labels).await;
        let action = match mode {
            CloneMode::SameKey => "clone-same-key",
            CloneMode::NewKey => "clone-new-key",
        };
        self.audited(caller, action, key_id, res).await
    }

    async fn clone_inner(
        &self,
        caller: &Caller,
        key_id: &str,
        mode: CloneMode,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        let u = self.unlocked()?;
        let id = parse_key_id(key_id)?;
        let meta = self.usable_meta(&u, &id)?;
        let policy = self.effective_policy(&meta);
        match (policy, mode) {
            (ClonePolicy::Deny, _) => {
                return Err(CustodyError::CloneRefused {
                    key_id: id,
                    policy: policy.as_str(),
                    why: "this key may not be cloned (a snapshot is still allowed)",
                });
            }
            (ClonePolicy::NewKey, CloneMode::SameKey) => {
                return Err(CustodyError::CloneRefused {
                    key_id: id,
                    policy: policy.as_str(),
                    why: "only --mode new-key clones are allowed",
                });
            }
            _ => {}
        }
        match mode {
            CloneMode::SameKey => {
                self.derive(
                    caller,
                    &id,
                    labels,
                    OriginKind::CloneSameKey,
                    DeriveMaterial::Share,
                )
                .await
            }
            CloneMode::NewKey => {
                self.derive(
                    caller,
                    &id,
                    labels,
                    OriginKind::CloneNewKey,
                    DeriveMaterial::Fresh,
                )
                .await
            }
        }
    }

    async fn derive(
        &self,
        caller: &Caller,
        key_id: &str,
        labels: BTreeMap<String, String>,
        kind: OriginKind,
        material: DeriveMaterial,
    ) -> Result<String> {
        let source_id = parse_key_id(key_id)?;
        validate_labels(&labels)?;
        let new_id = uuid::Uuid::new_v4().hyphenated().to_string();
        let now = now_ms();
        let mut txn = self.write_txn().await;
        // Taken under the writer lock: a rotation that finished while we waited replaced the
        // KEK, and a record sealed under the old one would be unreadable.
        let u = self.unlocked()?;
        // Read under the writer lock: a concurrent destroy must not leave us referring to
        // shredded material.
        let src = self.usable_meta(&u, &source_id)?;
        let mut merged = src.labels.clone();
        merged.extend(labels);
        validate_labels(&merged)?;
        let versions = match material {
            DeriveMaterial::Share => {
                if src.holds_inline() {
                    // The material becomes shared: out of the source's record into shared
                    // records, which both key ids then refer to.
                    let mut src = src.clone();
                    self.share_out(&u, &mut src, txn.batch())?;
                    txn.put(Ns::Keys, src.key_id.as_bytes(), &self.seal_meta(&u, &src)?);
                }
                let vs: Vec<VersionMeta> = src
                    .versions
                    .iter()
                    .filter(|v| v.readable())
                    .map(|v| VersionMeta {
                        material: match v.material.id() {
                            Some(id) => Material::Shared { id: id.to_string() },
                            None => Material::Shredded,
                        },
                        ..v.clone()
                    })
                    .collect();
                for id in vs.iter().filter_map(VersionMeta::shared_material) {
                    txn.put(Ns::MaterialRefs, &ref_id(id, &new_id), b"");
                }
                vs
            }
            DeriveMaterial::Fresh => {
                let material_id = new_material_id()?;
                let bytes = SecretBytes::random(src.length as usize)?;
                let sealed = self.seal_material(&u, &material_id, &bytes)?;
                vec![VersionMeta::inline(
                    1,
                    VersionState::Active,
                    now,
                    material_id,
                    sealed,
                )]
            }
        };
        let current_version = match material {
            DeriveMaterial::Share => src.current_version,
            DeriveMaterial::Fresh => 1,
        };
        let meta = KeyMeta {
            key_id: new_id.clone(),
            state: KeyState::Active,
            length: src.length,
            labels: merged,
            created_unix_ms: now,
            origin: Origin {
                kind,
                from_key_id: source_id.clone(),
                from_node: String::new(),
                grant_id: String::new(),
            },
            clone_policy: src.clone_policy,
            current_version,
            versions,
        };
        txn.put(Ns::Keys, new_id.as_bytes(), &self.seal_meta(&u, &meta)?);
        txn.count_key(None, &meta.state);
        txn.audit(
            Some(&u),
            caller,
            Event::ok(kind.as_str(), &new_id, format!("from {source_id}")),
        )?;
        txn.commit().await?;
        Ok(new_id)
    }

    /// `commit == false`: adds a new version with fresh material (both readable; `get` keeps
    /// returning the old one until commit, so a consumer can rewrap at its own pace).
    /// `commit == true`: the new version becomes current and the old one is retired.
    pub async fn rekey(&self, caller: &Caller, key_id: &str, commit: bool) -> Result<KeyInfo> {
        let action = if commit {
            "rekey-commit"
        } else {
            "rekey-begin"
        };
        let res = self.rekey_inner(caller, key_id, commit).await;
        self.audited(caller, action, key_id, res).await
    }

    async fn rekey_inner(&self, caller: &Caller, key_id: &str, commit: bool) -> Result<KeyInfo> {
        let id = parse_key_id(key_id)?;
        let mut txn = self.write_txn().await;
        let u = self.unlocked()?;
        let mut meta = self.usable_meta(&u, &id)?;
        let pending = meta
            .versions
            .iter()
            .position(|v| v.state == VersionState::Rekeying);
        let detail;
        if commit {
            let Some(p) = pending else {
                // A commit retried after it took effect (a crash or timeout before the answer
                // reached the caller): the newest version is current and an older one retired.
                // Say so, changing nothing.
                let newest = meta.versions.iter().map(|v| v.version).max();
                let committed = newest == Some(meta.current_version)
                    && meta
                        .versions
                        .iter()
                        .any(|v| v.state == VersionState::Retired);
                if committed {
                    drop(txn);
                    return self.info(&u, meta);
                }
                return Err(CustodyError::WrongState {
                    key_id: id,
                    why: "no rekey in progress (run `key rekey ID` first)".into(),
                });
            };
            for v in meta.versions.iter_mut() {
                if v.state == VersionState::Active {
                    v.state = VersionState::Retired;
                }
            }
            meta.versions[p].state = VersionState::Active;
            meta.current_version = meta.versions[p].version;
            detail = format!("version {} active", meta.current_version);
        } else {
            if pending.is_some() {
                return Err(CustodyError::WrongState {
                    key_id: id,
                    why: "a rekey is already in progress (commit it with `key rekey ID --commit`)"
                        .into(),
                });
            }
            // A received or restored key may carry any version number: the next one must
            // exist, not wrap to 0 (or panic) and repeat a number `get` then resolves wrongly.
            let newest = meta.versions.iter().map(|v| v.version).max().unwrap_or(0);
            let version = newest
                .checked_add(1)
                .ok_or_else(|| CustodyError::WrongState {
                    key_id: id.clone(),
                    why: format!("its newest version is {newest}: no version number is left"),
                })?;
            let material_id = new_material_id()?;
            let bytes = SecretBytes::random(meta.length as usize)?;
            // The new version's material is this key's alone (a snapshot taken earlier shares
            // only the versions it saw): inline.
            let sealed = self.seal_material(&u, &material_id, &bytes)?;
            meta.versions.push(VersionMeta::inline(
                version,
                VersionState::Rekeying,
                now_ms(),
                material_id,
                sealed,
            ));
            detail = format!("version {version} pending");
        }
        txn.put(Ns::Keys, id.as_bytes(), &self.seal_meta(&u, &meta)?);
        let action = if commit {
            "rekey-commit"
        } else {
            "rekey-begin"
        };
        txn.audit(Some(&u), caller, Event::ok(action, &id, detail))?;
        txn.commit().await?;
        self.info(&u, meta)
    }

    /// Turns a replica into an active key (audited).
    pub async fn promote(&self, caller: &Caller, key_id: &str) -> Result<KeyInfo> {
        let res = async {
            let id = parse_key_id(key_id)?;
            let mut txn = self.write_txn().await;
            let u = self.unlocked()?;
            let mut meta = self.live_meta(&u, &id)?;
            if meta.state != KeyState::Replica {
                return Err(CustodyError::WrongState {
                    key_id: id,
                    why: "is not a replica".into(),
                });
            }
            meta.state = KeyState::Active;
            txn.put(Ns::Keys, id.as_bytes(), &self.seal_meta(&u, &meta)?);
            txn.count_key(Some(&KeyState::Replica), &meta.state);
            txn.audit(
                Some(&u),
                caller,
                Event::ok(
                    "promote",
                    &id,
                    format!("replica from {} promoted", meta.origin.from_node),
                ),
            )?;
            txn.commit().await?;
            self.info(&u, meta)
        }
        .await;
        self.audited(caller, "promote", key_id, res).await
    }
}

/// A real `Custody` in a temporary data dir (keyfile method, unsealed), for the unit tests of
/// the custody modules.
#[cfg(test)]
pub(crate) mod test_support {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Opens a fresh, unsealed lockbox in `dir`; `extra` is appended to its config.
    pub(crate) async fn custody(dir: &std::path::Path, extra: &str) -> Arc<Custody> {
        let text = format!(
            "version = 1\nnode_id = \"host-a\"\ndata_dir = {:?}\n{extra}\n[unseal]\n\
             keyfile = {:?}\n",
            dir.join("data"),
            dir.join("keyfile"),
        );
        let (config, policy) =
            crate::config::Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        crate::custody::init(&config, &policy, crate::custody::InitSecrets::default())
            .await
            .unwrap();
        let custody = Custody::open(&config, &policy).unwrap();
        let secret = crate::custody::read_keyfile(&config.unseal.keyfile).unwrap();
        custody
            .unseal(&caller(), lockbox_crypto::UnsealSecret::Keyfile(&secret))
            .await
            .unwrap();
        Arc::new(custody)
    }

    pub(crate) fn caller() -> Caller {
        Caller {
            actor: "uid:0 test".into(),
        }
    }

    /// The newest audit record's action, outcome and detail.
    pub(crate) fn last_audit(custody: &Custody) -> (String, String, String) {
        let v = custody.audit_tail(1).unwrap().pop().unwrap();
        (
            v.entry.event.action,
            v.entry.event.outcome,
            v.entry.event.detail,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::test_support::{caller, custody, last_audit};
    use super::*;

    /// A key whose newest version is `u32::MAX` (a hostile source can send one, a backup can
    /// hold one) refuses `rekey` by name and changes nothing: the next version number once
    /// overflowed (a panic, or version 0 in release, which `get` then confused with another).
    #[tokio::test]
    async fn rekey_refuses_when_no_version_number_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let c = custody(dir.path(), "").await;
        let who = caller();
        let (id, _, _) = c
            .create(&who, 32, BTreeMap::new(), None, None)
            .await
            .unwrap();
        {
            let mut txn = c.write_txn().await;
            let u = c.unlocked().unwrap();
            let mut meta = c.load_meta(&u, &id).unwrap().unwrap();
            meta.versions[0].version = u32::MAX;
            meta.current_version = u32::MAX;
            txn.put(Ns::Keys, id.as_bytes(), &c.seal_meta(&u, &meta).unwrap());
            txn.commit().await.unwrap();
        }
        let before = c.get(&id, 0).unwrap();
        let e = c.rekey(&who, &id, false).await.unwrap_err();
        assert!(e.to_string().contains("no version number is left"), "{e}");
        let info = c.describe(&id).unwrap();
        assert_eq!(info.meta.versions.len(), 1);
        assert_eq!(info.meta.current_version, u32::MAX);
        let after = c.get(&id, 0).unwrap();
        assert_eq!(after.version, u32::MAX);
        assert_eq!(
            after.material.expose_secret(),
            before.material.expose_secret()
        );
        let (action, outcome, _) = last_audit(&c);
        assert_eq!(
            (action.as_str(), outcome.as_str()),
            ("rekey-begin", "refused")
        );
    }
}
