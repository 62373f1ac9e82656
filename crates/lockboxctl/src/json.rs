//! What `--json` prints: one struct per output shape. These are a contract with operators'
//! scripts: a field may be added, never renamed, removed, re-nested or given another type.
//!
//! Fields are declared in alphabetical order. The shapes used to be built with
//! `serde_json::json!`, whose objects sort their keys, so declaring them sorted keeps every
//! line byte for byte what it was; the tests below compare each shape with the old builder.
//! Times stay numbers of unix milliseconds (`*_unix_ms`); only human output formats them.

use std::collections::BTreeMap;

use lockbox_proto::v1 as pb;
use serde::Serialize;

/// `key create`.
#[derive(Serialize)]
pub struct KeyCreated<'a> {
    pub created: bool,
    pub key_id: &'a str,
}

/// `key get` (hex or base64; `raw` prints no JSON).
#[derive(Serialize)]
pub struct KeyMaterial<'a> {
    pub format: &'a str,
    pub key: &'a str,
    pub key_id: &'a str,
    pub version: u32,
}

/// `key snapshot`, `key clone`: the new key id.
#[derive(Serialize)]
pub struct NewKeyId<'a> {
    pub key_id: &'a str,
}

/// A key's metadata: `key describe`, `key rekey`, `key promote`, and each entry of `key list`.
#[derive(Serialize)]
pub struct Key<'a> {
    pub clone_policy: &'static str,
    pub created_unix_ms: u64,
    pub current_version: u32,
    pub key_id: &'a str,
    pub labels: BTreeMap<&'a str, &'a str>,
    pub length: u32,
    pub moved_by_grant: &'a str,
    pub moved_to_node: &'a str,
    pub origin: Origin<'a>,
    pub shares_material_with: &'a [String],
    pub state: &'a str,
    pub versions: Vec<KeyVersion<'a>>,
}

/// [`Key::origin`]: every field is present, empty when it does not apply.
#[derive(Serialize)]
pub struct Origin<'a> {
    pub from_key_id: &'a str,
    pub from_node: &'a str,
    pub grant_id: &'a str,
    pub kind: &'a str,
}

/// One of [`Key::versions`].
#[derive(Serialize)]
pub struct KeyVersion<'a> {
    pub created_unix_ms: u64,
    pub state: &'a str,
    pub version: u32,
}

impl<'a> Key<'a> {
    pub fn new(k: &'a pb::KeyInfo) -> Key<'a> {
        let origin = match &k.origin {
            Some(o) => Origin {
                from_key_id: &o.from_key_id,
                from_node: &o.from_node,
                grant_id: &o.grant_id,
                kind: &o.kind,
            },
            None => Origin {
                from_key_id: "",
                from_node: "",
                grant_id: "",
                kind: "",
            },
        };
        Key {
            clone_policy: crate::policy_name(k.clone_policy),
            created_unix_ms: k.created_unix_ms,
            current_version: k.current_version,
            key_id: &k.key_id,
            labels: k
                .labels
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect(),
            length: k.length,
            moved_by_grant: &k.moved_by_grant,
            moved_to_node: &k.moved_to_node,
            origin,
            shares_material_with: &k.shares_material_with,
            state: &k.state,
            versions: k
                .versions
                .iter()
                .map(|v| KeyVersion {
                    created_unix_ms: v.created_unix_ms,
                    state: &v.state,
                    version: v.version,
                })
                .collect(),
        }
    }
}

/// `key list`.
#[derive(Serialize)]
pub struct KeyList<'a> {
    pub keys: Vec<Key<'a>>,
}

/// `key destroy`.
#[derive(Serialize)]
pub struct Destroyed<'a> {
    pub destroyed_key_ids: &'a [String],
    pub kek_rotated: bool,
    pub material_shredded: bool,
}

/// `status`, `seal`, `unseal`.
#[derive(Serialize)]
pub struct Status<'a> {
    pub assist_public_key: &'a str,
    pub attestation_error: &'a str,
    pub attestation_expires_unix_ms: u64,
    pub attestation_state: &'a str,
    pub audit_records: u64,
    pub core_dumps_disabled: bool,
    pub hpke_public_key: &'a str,
    pub kek_id: u32,
    pub key_count: u64,
    pub memory_locked: bool,
    pub node_id: &'a str,
    pub revoked_nodes: &'a [String],
    pub sealed: bool,
    pub signing_public_key: &'a str,
    pub unseal: Unseal<'a>,
    pub unseal_method: &'a str,
    pub uptime_seconds: u64,
    pub version: &'a str,
}

/// `status`'s `unseal` object: the keyring's method and, for peers, who helped.
#[derive(Serialize)]
pub struct Unseal<'a> {
    pub answered: &'a [String],
    pub method: &'a str,
    pub missing: &'a [String],
    /// Why each missing peer is missing, by name.
    pub missing_errors: BTreeMap<&'a str, &'a str>,
    pub recovery: bool,
    pub unsealed_by: &'a str,
}

impl<'a> Unseal<'a> {
    fn new(s: &'a pb::StatusResponse) -> Unseal<'a> {
        match &s.unseal {
            Some(u) => Unseal {
                answered: &u.answered,
                method: &u.method,
                missing: &u.missing,
                missing_errors: u
                    .missing
                    .iter()
                    .zip(&u.missing_errors)
                    .map(|(p, e)| (p.as_str(), e.as_str()))
                    .collect(),
                recovery: u.recovery,
                unsealed_by: &u.unsealed_by,
            },
            None => Unseal {
                answered: &[],
                method: &s.unseal_method,
                missing: &[],
                missing_errors: BTreeMap::new(),
                recovery: false,
                unsealed_by: "",
            },
        }
    }
}

impl<'a> Status<'a> {
    pub fn new(s: &'a pb::StatusResponse) -> Status<'a> {
        Status {
            assist_public_key: &s.assist_public_key,
            attestation_error: &s.attestation_error,
            attestation_expires_unix_ms: s.attestation_expires_unix_ms,
            attestation_state: &s.attestation_state,
            audit_records: s.audit_records,
            core_dumps_disabled: s.core_dumps_disabled,
            hpke_public_key: &s.hpke_public_key,
            kek_id: s.kek_id,
            key_count: s.key_count,
            memory_locked: s.memory_locked,
            node_id: &s.node_id,
            revoked_nodes: &s.revoked_nodes,
            sealed: s.sealed,
            signing_public_key: &s.signing_public_key,
            unseal: Unseal::new(s),
            unseal_method: &s.unseal_method,
            uptime_seconds: s.uptime_seconds,
            version: &s.version,
        }
    }
}

/// `kek rotate`.
#[derive(Serialize)]
pub struct KekRotated {
    pub new_kek_id: u32,
    pub old_kek_id: u32,
    pub records_resealed: u64,
}

/// `audit tail`.
#[derive(Serialize)]
pub struct AuditTail<'a> {
    pub records: Vec<AuditRecord<'a>>,
}

/// One of [`AuditTail::records`].
#[derive(Serialize)]
pub struct AuditRecord<'a> {
    pub action: &'a str,
    pub actor: &'a str,
    pub detail: &'a str,
    pub hash: &'a str,
    pub key_id: &'a str,
    pub outcome: &'a str,
    pub seq: u64,
    pub time_unix_ms: u64,
}

impl<'a> AuditTail<'a> {
    pub fn new(r: &'a pb::AuditTailResponse) -> AuditTail<'a> {
        AuditTail {
            records: r
                .records
                .iter()
                .map(|a| AuditRecord {
                    action: &a.action,
                    actor: &a.actor,
                    detail: &a.detail,
                    hash: &a.hash,
                    key_id: &a.key_id,
                    outcome: &a.outcome,
                    seq: a.seq,
                    time_unix_ms: a.time_unix_ms,
                })
                .collect(),
        }
    }
}

/// `audit verify` (printed before a failure exits non-zero).
#[derive(Serialize)]
pub struct AuditVerified<'a> {
    pub bad_seq: u64,
    pub checkpoints: u64,
    pub error: &'a str,
    pub ok: bool,
    pub records: u64,
}

/// `transfer`: the destination's receipt.
#[derive(Serialize)]
pub struct Receipt<'a> {
    pub dest_node: &'a str,
    pub fresh: bool,
    pub grant_id: &'a str,
    pub key_ids: &'a [String],
    pub op: &'a str,
    pub source_node: &'a str,
    pub stored_unix_ms: u64,
}

/// `grant verify` (printed before a refusal exits non-zero).
#[derive(Serialize)]
pub struct GrantVerified<'a> {
    pub dest_node: &'a str,
    pub error: &'a str,
    pub expires_unix_ms: u64,
    pub grant_id: &'a str,
    pub key_ids: &'a [String],
    pub ok: bool,
    pub source_node: &'a str,
    pub valid_signers: &'a [String],
}

impl<'a> GrantVerified<'a> {
    /// The shape of a `VerifyGrant` answer.
    pub fn new(r: &'a pb::VerifyGrantResponse) -> Self {
        GrantVerified {
            dest_node: &r.dest_node,
            error: &r.error,
            expires_unix_ms: r.expires_unix_ms,
            grant_id: &r.grant_id,
            key_ids: &r.key_ids,
            ok: r.ok,
            source_node: &r.source_node,
            valid_signers: &r.valid_signers,
        }
    }
}

/// `grant inspect`: the body's fields and each signature's check.
#[derive(Serialize)]
pub struct GrantInspected<'a> {
    pub dest_node: &'a str,
    pub expires_unix_ms: u64,
    /// Hex.
    pub grant_id: String,
    pub issuer_key_id: &'a str,
    pub key_ids: &'a [String],
    pub not_before_unix_ms: u64,
    pub op: &'a str,
    pub reason: &'a str,
    pub requested_by: &'a str,
    pub signatures: Vec<SignatureCheck>,
    pub source_node: &'a str,
    pub trust_domain: &'a str,
}

/// One of [`GrantInspected::signatures`]; `error` only when not valid.
#[derive(Serialize)]
pub struct SignatureCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub key_id: String,
    pub valid: bool,
}

impl<'a> GrantInspected<'a> {
    pub fn new(
        body: &'a pb::GrantBody,
        op: &'a str,
        signatures: Vec<SignatureCheck>,
    ) -> GrantInspected<'a> {
        GrantInspected {
            dest_node: &body.dest_node,
            expires_unix_ms: body.expires_unix_ms,
            grant_id: hex::encode(&body.grant_id),
            issuer_key_id: &body.issuer_key_id,
            key_ids: &body.key_ids,
            not_before_unix_ms: body.not_before_unix_ms,
            op,
            reason: &body.reason,
            requested_by: &body.requested_by,
            signatures,
            source_node: &body.source_node,
            trust_domain: &body.trust_domain,
        }
    }
}

/// `grant issue`, `grant cosign`: the body's fields, the signers, and either the file written
/// (`-o`) or the grant's printable text.
#[derive(Serialize)]
pub struct GrantIssued<'a> {
    pub dest_node: &'a str,
    pub expires_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Hex.
    pub grant_id: String,
    pub issuer_key_id: &'a str,
    pub key_ids: &'a [String],
    pub not_before_unix_ms: u64,
    pub op: &'a str,
    pub reason: &'a str,
    pub requested_by: &'a str,
    pub signers: Vec<&'a str>,
    pub source_node: &'a str,
    pub trust_domain: &'a str,
}

/// Where [`GrantIssued`] says the grant went.
pub enum GrantOutput {
    /// Written to this file.
    File(String),
    /// The printable text itself.
    Text(String),
}

impl<'a> GrantIssued<'a> {
    pub fn new(
        body: &'a pb::GrantBody,
        op: &'a str,
        grant: &'a pb::SignedGrant,
        output: GrantOutput,
    ) -> GrantIssued<'a> {
        let (file, text) = match output {
            GrantOutput::File(f) => (Some(f), None),
            GrantOutput::Text(t) => (None, Some(t)),
        };
        GrantIssued {
            dest_node: &body.dest_node,
            expires_unix_ms: body.expires_unix_ms,
            file,
            grant: text,
            grant_id: hex::encode(&body.grant_id),
            issuer_key_id: &body.issuer_key_id,
            key_ids: &body.key_ids,
            not_before_unix_ms: body.not_before_unix_ms,
            op,
            reason: &body.reason,
            requested_by: &body.requested_by,
            signers: grant.signatures.iter().map(|s| s.key_id.as_str()).collect(),
            source_node: &body.source_node,
            trust_domain: &body.trust_domain,
        }
    }
}

/// `pki init`.
#[derive(Serialize)]
pub struct PkiInit<'a> {
    pub ca_cert: String,
    pub ca_key: String,
    pub trust_domain: &'a str,
}

/// `pki issue`.
#[derive(Serialize)]
pub struct PkiIssued {
    pub cert: String,
    pub key: String,
    pub spiffe_id: String,
}

/// `backup keygen`.
#[derive(Serialize)]
pub struct BackupKeygen {
    pub fingerprint: String,
    pub identity: String,
    pub recipient: String,
    pub recipient_file: String,
}

/// `backup export`.
#[derive(Serialize)]
pub struct BackupExported<'a> {
    pub bytes: usize,
    pub file: String,
    pub keys: u64,
    pub materials: u64,
    pub recipient_fingerprints: &'a [String],
    /// How many: the length of `recipient_fingerprints`.
    pub recipients: usize,
}

/// `backup restore`.
#[derive(Serialize)]
pub struct BackupRestored<'a> {
    pub file: String,
    /// How many: the length of `restored_key_ids`.
    pub restored: usize,
    pub restored_key_ids: &'a [String],
    /// How many: the length of `skipped_key_ids`.
    pub skipped: usize,
    pub skipped_key_ids: &'a [String],
    pub source_node: &'a str,
}

#[cfg(test)]
mod tests {
    //! Each shape against the `json!` builder it replaced (copied from the code before the
    //! change): same keys, nesting, types and bytes. A sample sets every field to something
    //! other than its default so a dropped or misnamed field cannot hide.

    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::*;

    fn same(new: &impl Serialize, old: Value) {
        assert_eq!(serde_json::to_string(new).unwrap(), old.to_string());
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_created() {
        let (key_id, created) = ("k-1", true);
        same(
            &KeyCreated { created, key_id },
            json!({"key_id": key_id, "created": created}),
        );
    }

    #[test]
    fn key_material() {
        let (key_id, version, name, encoded) = ("k-1", 3u32, "hex", "00ff");
        same(
            &KeyMaterial {
                format: name,
                key: encoded,
                key_id,
                version,
            },
            json!({"key_id": key_id, "version": version, "format": name, "key": encoded}),
        );
    }

    #[test]
    fn new_key_id() {
        same(&NewKeyId { key_id: "k-2" }, json!({"key_id": "k-2"}));
    }

    fn sample_key() -> pb::KeyInfo {
        pb::KeyInfo {
            key_id: "k-1".into(),
            state: "active".into(),
            length: 64,
            labels: HashMap::from([
                ("volume".into(), "vol-1".into()),
                ("pool".into(), "tank".into()),
            ]),
            created_unix_ms: 1_700_000_000_123,
            origin: Some(pb::Origin {
                kind: "transfer".into(),
                from_key_id: "k-0".into(),
                from_node: "host-a".into(),
                grant_id: "g-1".into(),
            }),
            clone_policy: pb::ClonePolicy::SameKey as i32,
            current_version: 2,
            versions: vec![
                pb::KeyVersion {
                    version: 1,
                    state: "retired".into(),
                    created_unix_ms: 1_700_000_000_123,
                },
                pb::KeyVersion {
                    version: 2,
                    state: "active".into(),
                    created_unix_ms: 1_700_000_100_000,
                },
            ],
            shares_material_with: strings(&["k-3", "k-4"]),
            moved_to_node: "host-b".into(),
            moved_by_grant: "g-2".into(),
        }
    }

    /// The builder `key describe` and `key list` used.
    fn old_info_json(k: &pb::KeyInfo) -> Value {
        let origin = k.origin.clone().unwrap_or_default();
        json!({
            "key_id": k.key_id,
            "state": k.state,
            "length": k.length,
            "labels": k.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "created_unix_ms": k.created_unix_ms,
            "origin": {
                "kind": origin.kind, "from_key_id": origin.from_key_id,
                "from_node": origin.from_node, "grant_id": origin.grant_id,
            },
            "moved_to_node": k.moved_to_node,
            "moved_by_grant": k.moved_by_grant,
            "clone_policy": crate::policy_name(k.clone_policy),
            "current_version": k.current_version,
            "versions": k.versions.iter().map(|v| json!({
                "version": v.version, "state": v.state, "created_unix_ms": v.created_unix_ms,
            })).collect::<Vec<_>>(),
            "shares_material_with": k.shares_material_with,
        })
    }

    #[test]
    fn key() {
        let k = sample_key();
        same(&Key::new(&k), old_info_json(&k));
        // A key without an origin still has one, with empty fields.
        let bare = pb::KeyInfo::default();
        same(&Key::new(&bare), old_info_json(&bare));
    }

    #[test]
    fn key_list() {
        let keys = [sample_key(), pb::KeyInfo::default()];
        same(
            &KeyList {
                keys: keys.iter().map(Key::new).collect(),
            },
            json!({"keys": keys.iter().map(old_info_json).collect::<Vec<_>>()}),
        );
    }

    #[test]
    fn destroyed() {
        let r = pb::DestroyKeyResponse {
            destroyed_key_ids: strings(&["k-1", "k-2"]),
            material_shredded: true,
            kek_rotated: true,
        };
        same(
            &Destroyed {
                destroyed_key_ids: &r.destroyed_key_ids,
                kek_rotated: r.kek_rotated,
                material_shredded: r.material_shredded,
            },
            json!({
                "destroyed_key_ids": r.destroyed_key_ids,
                "material_shredded": r.material_shredded,
                "kek_rotated": r.kek_rotated,
            }),
        );
    }

    #[test]
    fn status() {
        let s = pb::StatusResponse {
            node_id: "host-a".into(),
            sealed: true,
            unseal_method: "keyfile".into(),
            kek_id: 7,
            key_count: 12,
            version: "0.1.0".into(),
            audit_records: 99,
            uptime_seconds: 3600,
            hpke_public_key: "x25519:abc".into(),
            signing_public_key: "ed25519:def".into(),
            attestation_state: "valid".into(),
            attestation_expires_unix_ms: 1_700_000_000_123,
            attestation_error: "none yet".into(),
            memory_locked: true,
            core_dumps_disabled: true,
            assist_public_key: "ab12".into(),
            unseal: Some(pb::UnsealInfo {
                method: "peers".into(),
                answered: vec!["host-b".into(), "host-c".into()],
                missing: vec!["host-d".into()],
                missing_errors: vec!["unreachable".into()],
                recovery: true,
                unsealed_by: "peers".into(),
            }),
            revoked_nodes: vec!["host-z".into()],
        };
        same(
            &Status::new(&s),
            json!({
                "node_id": s.node_id,
                "sealed": s.sealed,
                "unseal_method": s.unseal_method,
                "kek_id": s.kek_id,
                "key_count": s.key_count,
                "version": s.version,
                "audit_records": s.audit_records,
                "uptime_seconds": s.uptime_seconds,
                "hpke_public_key": s.hpke_public_key,
                "signing_public_key": s.signing_public_key,
                "attestation_state": s.attestation_state,
                "attestation_expires_unix_ms": s.attestation_expires_unix_ms,
                "attestation_error": s.attestation_error,
                "memory_locked": s.memory_locked,
                "core_dumps_disabled": s.core_dumps_disabled,
                "assist_public_key": s.assist_public_key,
                "unseal": {
                    "method": "peers",
                    "answered": ["host-b", "host-c"],
                    "missing": ["host-d"],
                    "missing_errors": {"host-d": "unreachable"},
                    "recovery": true,
                    "unsealed_by": "peers",
                },
                "revoked_nodes": ["host-z"],
            }),
        );
    }

    #[test]
    fn kek_rotated() {
        let r = pb::RotateKekResponse {
            old_kek_id: 1,
            new_kek_id: 2,
            records_resealed: 40,
        };
        same(
            &KekRotated {
                new_kek_id: r.new_kek_id,
                old_kek_id: r.old_kek_id,
                records_resealed: r.records_resealed,
            },
            json!({"old_kek_id": r.old_kek_id, "new_kek_id": r.new_kek_id, "records_resealed": r.records_resealed}),
        );
    }

    #[test]
    fn audit_tail() {
        let r = pb::AuditTailResponse {
            records: vec![pb::AuditRecord {
                seq: 5,
                time_unix_ms: 1_700_000_000_123,
                actor: "uid:0".into(),
                action: "key.create".into(),
                key_id: "k-1".into(),
                outcome: "ok".into(),
                detail: "length 32".into(),
                hash: "abcd".into(),
            }],
        };
        same(
            &AuditTail::new(&r),
            json!({"records": r.records.iter().map(|a| json!({
                "seq": a.seq, "time_unix_ms": a.time_unix_ms, "actor": a.actor,
                "action": a.action, "key_id": a.key_id, "outcome": a.outcome,
                "detail": a.detail, "hash": a.hash,
            })).collect::<Vec<_>>()}),
        );
    }

    #[test]
    fn audit_verified() {
        let r = pb::AuditVerifyResponse {
            ok: false,
            records: 10,
            checkpoints: 2,
            bad_seq: 7,
            error: "hash mismatch".into(),
        };
        same(
            &AuditVerified {
                bad_seq: r.bad_seq,
                checkpoints: r.checkpoints,
                error: &r.error,
                ok: r.ok,
                records: r.records,
            },
            json!({"ok": r.ok, "records": r.records, "checkpoints": r.checkpoints, "bad_seq": r.bad_seq, "error": r.error}),
        );
    }

    #[test]
    fn receipt() {
        let r = pb::TransferReceipt {
            grant_id: "g-1".into(),
            op: pb::GrantOp::Move as i32,
            source_node: "host-a".into(),
            dest_node: "host-b".into(),
            key_ids: strings(&["k-1", "k-2"]),
            stored_unix_ms: 1_700_000_000_123,
            fresh: true,
        };
        let op = "move";
        same(
            &Receipt {
                dest_node: &r.dest_node,
                fresh: r.fresh,
                grant_id: &r.grant_id,
                key_ids: &r.key_ids,
                op,
                source_node: &r.source_node,
                stored_unix_ms: r.stored_unix_ms,
            },
            json!({
                "grant_id": r.grant_id, "op": op, "source_node": r.source_node,
                "dest_node": r.dest_node, "key_ids": r.key_ids,
                "stored_unix_ms": r.stored_unix_ms, "fresh": r.fresh,
            }),
        );
    }

    #[test]
    fn grant_verified() {
        let r = pb::VerifyGrantResponse {
            ok: true,
            error: "not yet valid".into(),
            grant_id: "g-1".into(),
            op: pb::GrantOp::Copy as i32,
            source_node: "host-a".into(),
            dest_node: "host-b".into(),
            key_ids: strings(&["k-1"]),
            expires_unix_ms: 1_700_000_000_123,
            valid_signers: strings(&["ctl-1", "ctl-2"]),
        };
        same(
            &GrantVerified::new(&r),
            json!({
                "ok": r.ok, "error": r.error, "grant_id": r.grant_id, "source_node": r.source_node,
                "dest_node": r.dest_node, "key_ids": r.key_ids, "expires_unix_ms": r.expires_unix_ms,
                "valid_signers": r.valid_signers,
            }),
        );
    }

    fn sample_body() -> pb::GrantBody {
        pb::GrantBody {
            grant_id: vec![0xab, 0xcd],
            key_ids: strings(&["k-1", "k-2"]),
            source_node: "host-a".into(),
            dest_node: "host-b".into(),
            op: pb::GrantOp::Replicate as i32,
            not_before_unix_ms: 1_700_000_000_000,
            expires_unix_ms: 1_700_000_600_000,
            requested_by: "spiffe://example.org/orchestrator/cinder".into(),
            issuer_key_id: "ctl-1".into(),
            reason: "ticket 1".into(),
            trust_domain: "example.org".into(),
        }
    }

    /// The builder both grant shapes started from.
    fn old_body_json(body: &pb::GrantBody, op: &str) -> Value {
        json!({
            "grant_id": hex::encode(&body.grant_id),
            "op": op,
            "source_node": body.source_node,
            "dest_node": body.dest_node,
            "key_ids": body.key_ids,
            "not_before_unix_ms": body.not_before_unix_ms,
            "expires_unix_ms": body.expires_unix_ms,
            "requested_by": body.requested_by,
            "issuer_key_id": body.issuer_key_id,
            "reason": body.reason,
            "trust_domain": body.trust_domain,
        })
    }

    #[test]
    fn grant_inspected() {
        let body = sample_body();
        let checks = || {
            vec![
                SignatureCheck {
                    error: None,
                    key_id: "ctl-1".into(),
                    valid: true,
                },
                SignatureCheck {
                    error: Some("bad signature".into()),
                    key_id: "ctl-2".into(),
                    valid: false,
                },
            ]
        };
        let mut old = old_body_json(&body, "replicate");
        old["signatures"] = json!([
            {"key_id": "ctl-1", "valid": true},
            {"key_id": "ctl-2", "valid": false, "error": "bad signature"},
        ]);
        same(&GrantInspected::new(&body, "replicate", checks()), old);
    }

    #[test]
    fn grant_issued() {
        let body = sample_body();
        let grant = pb::SignedGrant {
            body: Vec::new(),
            signatures: ["ctl-1", "ctl-2"]
                .iter()
                .map(|id| pb::Signature {
                    key_id: id.to_string(),
                    signature: vec![1],
                })
                .collect(),
        };
        for to_file in [true, false] {
            let mut old = old_body_json(&body, "replicate");
            old["signers"] = json!(
                grant
                    .signatures
                    .iter()
                    .map(|s| s.key_id.clone())
                    .collect::<Vec<_>>()
            );
            let output = if to_file {
                old["file"] = json!(std::path::PathBuf::from("/tmp/g.grant"));
                GrantOutput::File("/tmp/g.grant".into())
            } else {
                old["grant"] = json!("-----BEGIN LOCKBOX GRANT-----\n…");
                GrantOutput::Text("-----BEGIN LOCKBOX GRANT-----\n…".into())
            };
            same(&GrantIssued::new(&body, "replicate", &grant, output), old);
        }
    }

    #[test]
    fn pki() {
        let dir = std::path::PathBuf::from("/tmp/pki");
        let ca = dir.join("ca.crt");
        same(
            &PkiInit {
                ca_cert: ca.display().to_string(),
                ca_key: dir.join("ca.key").display().to_string(),
                trust_domain: "example.org",
            },
            json!({"ca_cert": ca, "ca_key": dir.join("ca.key"), "trust_domain": "example.org"}),
        );
        let (cert, key) = (dir.join("a.crt"), dir.join("a.key"));
        let uri = "spiffe://example.org/lockbox/a".to_string();
        same(
            &PkiIssued {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
                spiffe_id: uri.clone(),
            },
            json!({"cert": cert, "key": key, "spiffe_id": uri}),
        );
    }

    #[test]
    fn backup_keygen() {
        let shape = BackupKeygen {
            fingerprint: "0123".into(),
            identity: "/r/id".into(),
            recipient: "lockbox-recipient1:xyz".into(),
            recipient_file: "/r/id.pub".into(),
        };
        same(
            &shape,
            json!({
                "identity": "/r/id",
                "recipient_file": "/r/id.pub",
                "recipient": "lockbox-recipient1:xyz",
                "fingerprint": "0123",
            }),
        );
    }

    #[test]
    fn backup_exported() {
        let r = pb::ExportBackupResponse {
            backup: vec![0; 123],
            keys: 4,
            materials: 3,
            recipient_fingerprints: strings(&["aa", "bb"]),
        };
        same(
            &BackupExported {
                bytes: r.backup.len(),
                file: "/b/x.backup".into(),
                keys: r.keys,
                materials: r.materials,
                recipient_fingerprints: &r.recipient_fingerprints,
                recipients: r.recipient_fingerprints.len(),
            },
            json!({
                "file": "/b/x.backup",
                "keys": r.keys,
                "materials": r.materials,
                "recipients": r.recipient_fingerprints.len(),
                "recipient_fingerprints": r.recipient_fingerprints,
                "bytes": r.backup.len(),
            }),
        );
    }

    #[test]
    fn backup_restored() {
        let r = pb::RestoreBackupResponse {
            restored: strings(&["k-1", "k-2"]),
            skipped: strings(&["k-3"]),
        };
        same(
            &BackupRestored {
                file: "/b/x.backup".into(),
                restored: r.restored.len(),
                restored_key_ids: &r.restored,
                skipped: r.skipped.len(),
                skipped_key_ids: &r.skipped,
                source_node: "host-a",
            },
            json!({
                "file": "/b/x.backup",
                "source_node": "host-a",
                "restored": r.restored.len(),
                "skipped": r.skipped.len(),
                "restored_key_ids": r.restored,
                "skipped_key_ids": r.skipped,
            }),
        );
    }
}
