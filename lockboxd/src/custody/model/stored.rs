//! The stored (JSON) shapes of key records: the fields every release has written, read
//! strictly into the model's types and written back in the same shape, so a downgrade reads
//! what an upgrade wrote.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{KeyMeta, KeyState, Material, MovedTo, Origin, VersionMeta, VersionState};
use crate::config::ClonePolicy;

/// The stored shape of [`VersionMeta`].
#[derive(Serialize, Deserialize)]
pub(super) struct VersionRecord {
    version: u32,
    state: VersionState,
    material_id: String,
    created_unix_ms: u64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::json_bytes::option"
    )]
    inline: Option<Vec<u8>>,
}

impl TryFrom<VersionRecord> for VersionMeta {
    type Error = String;

    fn try_from(r: VersionRecord) -> std::result::Result<VersionMeta, String> {
        let material = match (r.state, r.material_id.is_empty(), r.inline) {
            (VersionState::Destroyed, true, None) => Material::Shredded,
            (VersionState::Destroyed, _, _) => {
                return Err(format!(
                    "destroyed version {} still names material",
                    r.version
                ));
            }
            (_, true, _) => return Err(format!("version {} names no material", r.version)),
            (_, false, Some(sealed)) => Material::Inline {
                id: r.material_id,
                sealed,
            },
            (_, false, None) => Material::Shared { id: r.material_id },
        };
        Ok(VersionMeta {
            version: r.version,
            state: r.state,
            created_unix_ms: r.created_unix_ms,
            material,
        })
    }
}

impl Serialize for VersionMeta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Ref<'a> {
            version: u32,
            state: VersionState,
            material_id: &'a str,
            created_unix_ms: u64,
            #[serde(skip_serializing_if = "Option::is_none", serialize_with = "sealed")]
            inline: Option<&'a [u8]>,
        }
        fn sealed<S: serde::Serializer>(
            b: &Option<&[u8]>,
            s: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            match b {
                Some(b) => crate::json_bytes::serialize(b, s),
                None => s.serialize_none(),
            }
        }
        Ref {
            version: self.version,
            state: self.state,
            material_id: self.material.id().unwrap_or(""),
            created_unix_ms: self.created_unix_ms,
            inline: match &self.material {
                Material::Inline { sealed, .. } => Some(sealed.as_slice()),
                _ => None,
            },
        }
        .serialize(s)
    }
}

/// The stored shape of [`KeyMeta`]: the state as three fields, names as text.
#[derive(Deserialize)]
pub(super) struct KeyMetaRecord {
    key_id: String,
    destroyed: bool,
    length: u32,
    labels: BTreeMap<String, String>,
    created_unix_ms: u64,
    origin: Origin,
    clone_policy: Option<String>,
    current_version: u32,
    versions: Vec<VersionMeta>,
    #[serde(default)]
    replica: bool,
    #[serde(default)]
    moved_to: Option<MovedTo>,
}

/// [`KeyMetaRecord`] borrowed, for writing without a copy.
#[derive(Serialize)]
struct KeyMetaRecordRef<'a> {
    key_id: &'a str,
    destroyed: bool,
    length: u32,
    labels: &'a BTreeMap<String, String>,
    created_unix_ms: u64,
    origin: &'a Origin,
    clone_policy: Option<&'static str>,
    current_version: u32,
    versions: &'a [VersionMeta],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replica: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    moved_to: Option<&'a MovedTo>,
}

impl TryFrom<KeyMetaRecord> for KeyMeta {
    type Error = String;

    fn try_from(r: KeyMetaRecord) -> std::result::Result<KeyMeta, String> {
        let state = match (r.moved_to, r.destroyed, r.replica) {
            (Some(to), _, _) => KeyState::Moved(to),
            (None, true, _) => KeyState::Destroyed,
            (None, false, true) => KeyState::Replica,
            (None, false, false) => KeyState::Active,
        };
        let clone_policy = match r.clone_policy.as_deref() {
            None => None,
            Some(p) => {
                Some(ClonePolicy::parse(p).ok_or_else(|| format!("unknown clone policy {p:?}"))?)
            }
        };
        Ok(KeyMeta {
            key_id: r.key_id,
            state,
            length: r.length,
            labels: r.labels,
            created_unix_ms: r.created_unix_ms,
            origin: r.origin,
            clone_policy,
            current_version: r.current_version,
            versions: r.versions,
        })
    }
}

impl Serialize for KeyMeta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        KeyMetaRecordRef {
            key_id: &self.key_id,
            destroyed: self.state.is_tombstone(),
            length: self.length,
            labels: &self.labels,
            created_unix_ms: self.created_unix_ms,
            origin: &self.origin,
            clone_policy: self.clone_policy.map(|p| p.as_str()),
            current_version: self.current_version,
            versions: &self.versions,
            replica: self.state == KeyState::Replica,
            moved_to: match &self.state {
                KeyState::Moved(to) => Some(to),
                _ => None,
            },
        }
        .serialize(s)
    }
}
