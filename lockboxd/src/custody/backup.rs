//! Offline backups (DESIGN.md §8): export seals keys to recovery public keys here, in the
//! daemon, so plaintext never leaves it for an export; restore imports keys that the admin's
//! `lockboxctl` opened with a recovery identity and sent over the Unix socket. Both are
//! audited. The byte format is `lockbox_crypto::backup` (SPEC.md "Backup file").

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lockbox_crypto::SecretBytes;
use lockbox_store::Ns;
use sha2::{Digest, Sha256};

use super::model::{
    Caller, KeyMeta, KeyState, Material, Origin, OriginKind, VersionMeta, VersionState,
    new_material_id, parse_key_id, quote, ref_id, validate_labels,
};
use super::txn::Event;
use super::{Custody, Unlocked, now_ms};
use crate::config::ClonePolicy;
use crate::error::{CustodyError, Result};

use lockbox_crypto::{
    BackupContents, BackupKey, BackupOrigin, BackupRecipient, BackupVersion, BackupVersionState,
    check_backup_contents, seal_backup,
};

/// A sealed backup, ready to be written to a file.
#[derive(Debug)]
pub struct ExportedBackup {
    /// The file's bytes (ciphertext only).
    pub bytes: Vec<u8>,
    /// Key ids in it.
    pub keys: u64,
    /// Distinct materials in it.
    pub materials: u64,
    /// Hex fingerprints of the recipients, in the order given.
    pub fingerprints: Vec<String>,
}

/// Where a backup being restored came from, for the audit record (from its authenticated
/// header, as lockboxd read it).
#[derive(Debug, Clone, Default)]
pub struct RestoreSource {
    /// The node that sealed it.
    pub source_node: String,
    /// When it was sealed.
    pub created_unix_ms: u64,
    /// Hex SHA-256 of the file.
    pub backup_sha256: String,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Key ids created.
    pub restored: Vec<String>,
    /// Key ids already here with the same material, left alone.
    pub skipped: Vec<String>,
}

/// Longest free-text field of a restored key (origin node, grant id).
const MAX_FIELD_LEN: usize = 255;

fn to_backup_state(s: VersionState) -> Option<BackupVersionState> {
    match s {
        VersionState::Active => Some(BackupVersionState::Active),
        VersionState::Rekeying => Some(BackupVersionState::Rekeying),
        VersionState::Retired => Some(BackupVersionState::Retired),
        VersionState::Destroyed => None,
    }
}

fn from_backup_state(s: BackupVersionState) -> VersionState {
    match s {
        BackupVersionState::Active => VersionState::Active,
        BackupVersionState::Rekeying => VersionState::Rekeying,
        BackupVersionState::Retired => VersionState::Retired,
    }
}

/// Equal bytes, without an early exit (the material is secret).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The daemon's own rules for a key being restored, beyond the format's (which
/// `check_backup_contents` applies): canonical UUIDs, label syntax, known origin and policy,
/// one material length of 32 or 64 bytes per key.
/// A restored key's origin kind, parsed strictly.
fn origin_kind(k: &BackupKey) -> Result<OriginKind> {
    OriginKind::parse(&k.origin.kind).ok_or_else(|| {
        CustodyError::InvalidArgument(format!(
            "backup key {}: unknown origin {}",
            quote(&k.key_id),
            quote(&k.origin.kind)
        ))
    })
}

/// A restored key's own clone policy (empty: the node's), parsed strictly.
fn clone_policy(k: &BackupKey) -> Result<Option<ClonePolicy>> {
    if k.clone_policy.is_empty() {
        return Ok(None);
    }
    ClonePolicy::parse(&k.clone_policy)
        .map(Some)
        .ok_or_else(|| {
            CustodyError::InvalidArgument(format!(
                "backup key {}: unknown clone policy {}",
                quote(&k.key_id),
                quote(&k.clone_policy)
            ))
        })
}

fn check_restored_key(k: &BackupKey, materials: &[SecretBytes]) -> Result<()> {
    let bad =
        |why: String| CustodyError::InvalidArgument(format!("backup key {}: {why}", k.key_id));
    if parse_key_id(&k.key_id).ok().as_deref() != Some(k.key_id.as_str()) {
        return Err(CustodyError::InvalidArgument(format!(
            "backup key id {} is not a canonical UUID",
            quote(&k.key_id)
        )));
    }
    validate_labels(&k.labels).map_err(|e| match e {
        CustodyError::InvalidArgument(m) => bad(m),
        other => other,
    })?;
    origin_kind(k)?;
    if !k.origin.from_key_id.is_empty() && parse_key_id(&k.origin.from_key_id).is_err() {
        return Err(bad("origin key id is not a UUID".into()));
    }
    if k.origin.from_node.len() > MAX_FIELD_LEN || k.origin.grant_id.len() > MAX_FIELD_LEN {
        return Err(bad("origin node or grant id too long".into()));
    }
    clone_policy(k)?;
    check_restored_versions(k).map_err(bad)?;
    let mut length = None;
    for v in &k.versions {
        let n = materials
            .get(v.material as usize)
            .map(SecretBytes::len)
            .ok_or_else(|| bad(format!("version {}: no material {}", v.version, v.material)))?;
        if n != 32 && n != 64 {
            return Err(bad(format!("version {}: material of {n} bytes", v.version)));
        }
        if length.replace(n).is_some_and(|l| l != n) {
            return Err(bad("versions of different lengths".into()));
        }
    }
    Ok(())
}

/// The version rules a received key meets too (`receive.rs`): numbered from 1, ascending
/// without repeats, the current one present and active, no other version active (a rekey
/// commit retires it), at most one pending rekey. A backup holds what a lockbox wrote, but a
/// file is outside bytes: a restore must not make a key no lockbox could have.
fn check_restored_versions(k: &BackupKey) -> std::result::Result<(), String> {
    let mut last = 0u32;
    for v in &k.versions {
        if v.version <= last {
            return Err(format!(
                "version {} is zero, repeated or out of order",
                v.version
            ));
        }
        last = v.version;
    }
    let current = k
        .versions
        .iter()
        .find(|v| v.version == k.current_version)
        .ok_or_else(|| {
            format!(
                "current version {} is not among its versions",
                k.current_version
            )
        })?;
    if current.state != BackupVersionState::Active {
        return Err(format!(
            "current version {} is not active",
            k.current_version
        ));
    }
    if let Some(v) = k
        .versions
        .iter()
        .find(|v| v.state == BackupVersionState::Active && v.version != k.current_version)
    {
        return Err(format!(
            "version {} is active but not current (only the current version is active)",
            v.version
        ));
    }
    let rekeying = k
        .versions
        .iter()
        .filter(|v| v.state == BackupVersionState::Rekeying)
        .count();
    if rekeying > 1 {
        return Err("more than one version is pending a rekey".into());
    }
    Ok(())
}

impl Custody {
    /// Seals every live key (or those carrying all of `labels`) to each recipient and audits
    /// the export (who, how many keys, the recipients' fingerprints; never key bytes).
    ///
    /// The keys are read under the writer lock, so the backup is one consistent snapshot
    /// (shared materials stay shared); the sealing runs after it is released.
    pub async fn export_backup(
        &self,
        caller: &Caller,
        recipients: &[String],
        labels: &BTreeMap<String, String>,
    ) -> Result<ExportedBackup> {
        let res = self.export_inner(caller, recipients, labels).await;
        self.audited(caller, "backup-export", "", res).await
    }

    async fn export_inner(
        &self,
        caller: &Caller,
        recipients: &[String],
        labels: &BTreeMap<String, String>,
    ) -> Result<ExportedBackup> {
        self.unlocked()?;
        let recipients = recipients
            .iter()
            .map(|r| BackupRecipient::parse(r.trim()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if recipients.is_empty() {
            return Err(CustodyError::InvalidArgument(
                "a backup needs at least one recipient (--recipient)".into(),
            ));
        }
        let contents = {
            let _ws = self.write.lock().await;
            let u = self.unlocked()?;
            self.read_for_backup(&u, labels)?
        };
        let bytes = seal_backup(&recipients, &self.node_id, now_ms(), &contents)?;
        let keys = contents.keys.len() as u64;
        let materials = contents.materials.len() as u64;
        drop(contents);
        let fingerprints: Vec<String> = recipients.iter().map(|r| r.fingerprint_hex()).collect();

        let mut txn = self.write_txn().await;
        let u = self.unlocked()?;
        let filter = if labels.is_empty() {
            String::new()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(" with labels {}", l.join(","))
        };
        txn.audit(Some(&u), caller, Event::ok("backup-export", "", format!(
                "{keys} keys{filter} ({materials} materials, {} bytes) sealed to {} recipient(s): {}",
                bytes.len(),
                fingerprints.len(),
                fingerprints.join(",")
            )))?;
        txn.commit().await?;
        Ok(ExportedBackup {
            bytes,
            keys,
            materials,
            fingerprints,
        })
    }

    /// Every live key matching `labels`, in key id order, with its readable versions;
    /// materials once each, in order of first use (SPEC.md "Backup payload").
    fn read_for_backup(
        &self,
        u: &Unlocked,
        labels: &BTreeMap<String, String>,
    ) -> Result<BackupContents> {
        let mut contents = BackupContents::default();
        let mut index: HashMap<String, u32> = HashMap::new();
        for r in self.store.iter_after(Ns::Keys, None) {
            let (id, _) = r?;
            let key_id = String::from_utf8_lossy(&id).into_owned();
            let Some(meta) = self.load_meta(u, &key_id)? else {
                continue;
            };
            if meta.state.is_tombstone()
                || !labels.iter().all(|(k, v)| meta.labels.get(k) == Some(v))
            {
                continue;
            }
            let mut versions = Vec::new();
            for v in &meta.versions {
                let (Some(state), Some(material_id)) = (to_backup_state(v.state), v.material.id())
                else {
                    continue;
                };
                let material = match index.get(material_id) {
                    Some(&i) => i,
                    None => {
                        let i = u32::try_from(contents.materials.len()).map_err(|_| {
                            CustodyError::InvalidArgument("too many materials to back up".into())
                        })?;
                        contents.materials.push(self.open_version(u, &key_id, v)?);
                        index.insert(material_id.to_string(), i);
                        i
                    }
                };
                versions.push(BackupVersion {
                    version: v.version,
                    state,
                    created_unix_ms: v.created_unix_ms,
                    material,
                });
            }
            contents.keys.push(BackupKey {
                key_id: meta.key_id,
                labels: meta.labels,
                created_unix_ms: meta.created_unix_ms,
                origin: BackupOrigin {
                    kind: meta.origin.kind.as_str().to_string(),
                    from_key_id: meta.origin.from_key_id,
                    from_node: meta.origin.from_node,
                    grant_id: meta.origin.grant_id,
                },
                clone_policy: meta
                    .clone_policy
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                replica: meta.state == KeyState::Replica,
                current_version: meta.current_version,
                versions,
            });
        }
        Ok(contents)
    }

    /// Imports the keys of an opened backup in one atomic, durable batch, and audits it.
    ///
    /// Every key is checked first: a key id already here with the same material in every
    /// version is skipped; one here with other material, other versions, or as a destroyed
    /// or moved tombstone refuses the whole restore (nothing is imported). Restored keys keep
    /// their ids, labels, origin, versions and states, and key ids that shared a material in
    /// the backup share one material here (also with a skipped key that holds it).
    ///
    /// Only what the backup holds is imported, and its provenance comes from the backup's
    /// authenticated header: lockboxd opens the file itself with the identity it is handed
    /// (a caller once imported keys no backup held, with a made-up source node and file hash).
    pub async fn restore_backup(
        &self,
        caller: &Caller,
        backup: &[u8],
        identity: &str,
    ) -> Result<Restored> {
        let res = async {
            self.unlocked()?;
            if backup.len() > lockbox_crypto::MAX_BACKUP_LEN {
                return Err(CustodyError::Backup(
                    lockbox_crypto::BackupError::TooLarge { got: backup.len() },
                ));
            }
            let identity = lockbox_crypto::BackupIdentity::from_file_text(identity)?;
            let opened = lockbox_crypto::open_backup(&identity, backup)?;
            drop(identity);
            let source = RestoreSource {
                source_node: opened.header.source_node.clone(),
                created_unix_ms: opened.header.created_unix_ms,
                backup_sha256: hex::encode(Sha256::digest(backup)),
            };
            self.restore_inner(caller, opened.contents, &source).await
        }
        .await;
        self.audited(caller, "backup-restore", "", res).await
    }

    async fn restore_inner(
        &self,
        caller: &Caller,
        contents: BackupContents,
        source: &RestoreSource,
    ) -> Result<Restored> {
        self.unlocked()?;
        check_backup_contents(&contents)?;
        for k in &contents.keys {
            check_restored_key(k, &contents.materials)?;
        }
        let mut txn = self.write_txn().await;
        let u = self.unlocked()?;
        // Material index → a material already here holding those bytes.
        let mut here: HashMap<u32, String> = HashMap::new();
        // Material index → the key here holding it inline: shared out if a restored key
        // refers to it too.
        let mut inline_here: HashMap<u32, String> = HashMap::new();
        let mut out = Restored::default();
        let mut fresh = Vec::new();
        for k in &contents.keys {
            let Some(meta) = self.load_meta(&u, &k.key_id)? else {
                fresh.push(k);
                continue;
            };
            let conflict = |why: &str| CustodyError::RestoreConflict {
                key_id: k.key_id.clone(),
                why: why.to_string(),
            };
            match meta.state {
                KeyState::Moved(_) => {
                    return Err(conflict(
                        "is a moved tombstone here (the key lives elsewhere)",
                    ));
                }
                KeyState::Destroyed => {
                    return Err(conflict("is destroyed here (key ids are never reused)"));
                }
                KeyState::Active | KeyState::Replica => {}
            }
            let live: Vec<&VersionMeta> = meta
                .versions
                .iter()
                .filter(|v| v.state != VersionState::Destroyed)
                .collect();
            if live.len() != k.versions.len() {
                return Err(conflict("exists here with other versions"));
            }
            for (mine, theirs) in live.iter().zip(&k.versions) {
                if mine.version != theirs.version {
                    return Err(conflict("exists here with other versions"));
                }
                let bytes = self.open_version(&u, &k.key_id, mine)?;
                let backed_up = &contents.materials[theirs.material as usize];
                if !same_bytes(bytes.expose_secret(), backed_up.expose_secret()) {
                    return Err(conflict("exists here with different material"));
                }
                if let std::collections::hash_map::Entry::Vacant(e) = here.entry(theirs.material) {
                    e.insert(mine.material.id().unwrap_or_default().to_string());
                    if matches!(mine.material, Material::Inline { .. }) {
                        inline_here.insert(theirs.material, k.key_id.clone());
                    }
                }
            }
            out.skipped.push(k.key_id.clone());
        }

        // How many restored versions use each backed-up material: one alone holds it inline.
        let mut uses: HashMap<u32, usize> = HashMap::new();
        for v in fresh.iter().flat_map(|k| &k.versions) {
            *uses.entry(v.material).or_default() += 1;
        }
        let mut created: HashMap<u32, String> = HashMap::new();
        let mut share_out: BTreeSet<String> = BTreeSet::new();
        for k in fresh {
            let mut versions = Vec::with_capacity(k.versions.len());
            for v in &k.versions {
                let bytes = &contents.materials[v.material as usize];
                let material = if let Some(id) = here.get(&v.material) {
                    if let Some(owner) = inline_here.get(&v.material) {
                        share_out.insert(owner.clone());
                    }
                    Material::Shared { id: id.clone() }
                } else if let Some(id) = created.get(&v.material) {
                    Material::Shared { id: id.clone() }
                } else if uses.get(&v.material) == Some(&1) {
                    let id = new_material_id()?;
                    let sealed = self.seal_material(&u, &id, bytes)?;
                    Material::Inline { id, sealed }
                } else {
                    let id = new_material_id()?;
                    txn.put(
                        Ns::Materials,
                        id.as_bytes(),
                        &self.seal_material(&u, &id, bytes)?,
                    );
                    created.insert(v.material, id.clone());
                    Material::Shared { id }
                };
                if let Material::Shared { id } = &material {
                    txn.put(Ns::MaterialRefs, &ref_id(id, &k.key_id), b"");
                }
                versions.push(VersionMeta {
                    version: v.version,
                    state: from_backup_state(v.state),
                    created_unix_ms: v.created_unix_ms,
                    material,
                });
            }
            let length = k
                .versions
                .first()
                .map(|v| contents.materials[v.material as usize].len() as u32)
                .unwrap_or(32);
            let meta = KeyMeta {
                key_id: k.key_id.clone(),
                state: if k.replica {
                    KeyState::Replica
                } else {
                    KeyState::Active
                },
                length,
                labels: k.labels.clone(),
                created_unix_ms: k.created_unix_ms,
                origin: Origin {
                    kind: origin_kind(k)?,
                    from_key_id: k.origin.from_key_id.clone(),
                    from_node: k.origin.from_node.clone(),
                    grant_id: k.origin.grant_id.clone(),
                },
                clone_policy: clone_policy(k)?,
                current_version: k.current_version,
                versions,
            };
            txn.put(Ns::Keys, k.key_id.as_bytes(), &self.seal_meta(&u, &meta)?);
            txn.count_key(None, &meta.state);
            out.restored.push(k.key_id.clone());
        }
        // Keys already here whose inline material a restored key now shares.
        for owner in &share_out {
            let mut meta = self.live_meta(&u, owner)?;
            self.share_out(&u, &mut meta, txn.batch())?;
            txn.put(Ns::Keys, owner.as_bytes(), &self.seal_meta(&u, &meta)?);
        }
        let sha = source
            .backup_sha256
            .get(..16)
            .unwrap_or(&source.backup_sha256);
        txn.audit(Some(&u), caller, Event::ok("backup-restore", "", format!(
                "backup {sha} of node {} made at {} unix ms: {} keys restored, {} skipped (already here)",
                trust_printable(&source.source_node),
                source.created_unix_ms,
                out.restored.len(),
                out.skipped.len()
            )))?;
        txn.commit().await?;
        Ok(out)
    }
}

/// A node name from a client, cut and stripped of control characters for the audit log.
fn trust_printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod version_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(current: u32, versions: &[(u32, BackupVersionState)]) -> BackupKey {
        BackupKey {
            key_id: "8d19909b-21b6-428c-943e-d5dfc880254d".into(),
            labels: BTreeMap::new(),
            created_unix_ms: 1,
            origin: BackupOrigin {
                kind: "created".into(),
                ..BackupOrigin::default()
            },
            clone_policy: String::new(),
            replica: false,
            current_version: current,
            versions: versions
                .iter()
                .map(|&(version, state)| BackupVersion {
                    version,
                    state,
                    created_unix_ms: 1,
                    material: 0,
                })
                .collect(),
        }
    }

    /// A restore accepts the version states a lockbox writes and refuses, by name, those no
    /// key can have (as a transfer's destination does).
    #[test]
    fn a_restored_key_has_the_versions_a_lockbox_could_have_written() {
        use BackupVersionState::{Active, Rekeying, Retired};
        for ok in [
            key(1, &[(1, Active)]),
            key(2, &[(1, Retired), (2, Active)]),
            key(2, &[(1, Retired), (2, Active), (3, Rekeying)]),
        ] {
            assert_eq!(check_restored_versions(&ok), Ok(()), "{ok:?}");
        }
        let cases = [
            (key(1, &[]), "current version 1 is not among its versions"),
            (
                key(0, &[(0, Active)]),
                "version 0 is zero, repeated or out of order",
            ),
            (
                key(2, &[(2, Retired), (1, Active)]),
                "version 1 is zero, repeated or out of order",
            ),
            (
                key(1, &[(1, Active), (1, Retired)]),
                "version 1 is zero, repeated or out of order",
            ),
            (
                key(3, &[(1, Active), (3, Retired)]),
                "current version 3 is not active",
            ),
            (
                key(2, &[(1, Active), (2, Active)]),
                "version 1 is active but not current",
            ),
            (
                key(1, &[(1, Active), (2, Rekeying), (3, Rekeying)]),
                "more than one version is pending a rekey",
            ),
        ];
        for (k, why) in cases {
            let e = check_restored_versions(&k).unwrap_err();
            assert!(e.contains(why), "{k:?}: {e}");
        }
        // Through the whole check, named with the key.
        let e = check_restored_key(&key(2, &[(1, Active), (2, Active)]), &[]).unwrap_err();
        assert!(e.to_string().contains("8d19909b"), "{e}");
        assert!(e.to_string().contains("active but not current"), "{e}");
    }
}
