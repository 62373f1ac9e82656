//! Valid inputs of every target, made with the same code that makes them for real: the
//! starting corpus of `deploy/fuzz.sh` (written out by `lockbox-fuzz-seeds DIR`) and of the
//! smoke test.

use lockbox_crypto::{AuditEntry, AuditEvent, BatchContext, KeyToWrap, SecretBytes};
use lockbox_proto::v1 as pb;
use prost::Message;

use super::{GRANT_ID, NOW, keys};

const KEY_ID: &str = "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60";

/// The seeds of target `name` (none for an unknown name).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "grant_text" => {
            let signed = signed_grant();
            vec![lockbox_crypto::grant_to_text(&signed).into_bytes()]
        }
        "grant_body" => vec![signed_grant().body],
        "attestation" => vec![attestation_body()],
        "receipt" => vec![receipt_body(), pb::ReceiptBody::default().encode_to_vec()],
        "batch" => vec![batch_wire()],
        "backup" => backup_file(),
        "sealed_record" => {
            let kek = keys().unsealed.current_kek();
            vec![
                kek.seal(lockbox_crypto::RecordKind::KeyMeta, b"record", b"{}")
                    .unwrap_or_default(),
            ]
        }
        "keyring" => {
            let secret = SecretBytes::new(vec![4; 32]);
            let argon = lockbox_crypto::Argon2Params {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            };
            let mut seeds: Vec<Vec<u8>> =
                lockbox_crypto::Keyring::create(lockbox_crypto::UnsealSecret::Keyfile(&secret), argon)
                    .map(|(ring, _)| vec![ring.encode()])
                    .unwrap_or_default();
            // Version 2: a peers slot with a recovery passphrase slot.
            let peers: Vec<lockbox_crypto::assist::AssistIdentity> = (0..3)
                .filter_map(|_| lockbox_crypto::assist::AssistIdentity::generate().ok())
                .collect();
            let names = ["host-b", "host-c", "host-d"];
            let to: Vec<lockbox_crypto::assist::AssistPeer<'_>> = peers
                .iter()
                .zip(names)
                .map(|(p, node)| lockbox_crypto::assist::AssistPeer {
                    node,
                    public_key: p.public_key(),
                })
                .collect();
            let pass = SecretBytes::new(b"recovery passphrase".to_vec());
            if let Ok(slot) = lockbox_crypto::assist::PeerSlot::enroll(&secret, "host-a", &to, 2)
                && let Ok((ring, _)) = lockbox_crypto::Keyring::create_slots(
                    lockbox_crypto::NewSlot::Peers(slot, &secret),
                    Some((&pass, argon)),
                )
            {
                seeds.push(ring.encode());
            }
            seeds
        }
        "audit_entry" => vec![
            AuditEntry {
                seq: 1,
                prev_hash: lockbox_crypto::GENESIS_HASH,
                event: AuditEvent {
                    time_unix_ms: NOW,
                    actor: "uid:0".into(),
                    action: "create".into(),
                    key_id: KEY_ID.into(),
                    outcome: "ok".into(),
                    detail: "length 32".into(),
                },
                checkpoint: None,
            }
            .encode(),
        ],
        "journal" => journal_file(),
        "key_record" => vec![
            format!(
                r#"{{"key_id":"{KEY_ID}","destroyed":false,"length":32,"labels":{{"vol":"a"}},"created_unix_ms":1,"origin":{{"kind":"created","from_key_id":"","from_node":"","grant_id":""}},"clone_policy":"same-key","current_version":1,"versions":[{{"version":1,"state":"active","material_id":"00ff","created_unix_ms":1,"inline":"AQI="}}],"replica":false,"moved_to":null}}"#
            )
            .into_bytes(),
        ],
        "config_lockboxd" => vec![
            b"version = 1\nnode_id = \"host-a\"\nclock_skew = \"30s\"\n[keys]\nshred_rotation = 3\n".to_vec(),
        ],
        "config_controller" => vec![
            b"version = 1\nkey_id = \"ctl-1\"\ntrust_domain = \"example.org\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"ca\"\n[[policy]]\ncaller = \"spiffe://example.org/orchestrator/*\"\nops = [\"copy\"]\n".to_vec(),
        ],
        "assist" => assist_seeds(),
        "vouch" => lockbox_crypto::encode_vouch_body(&pb::VouchBody {
            node: "host-a".into(),
            trust_domain: "example.org".into(),
            tls_spki_sha256: vec![5; 32],
            not_before_unix_ms: NOW - 1000,
            expires_unix_ms: NOW + 300_000,
            issuer_key_id: "ctl-1".into(),
        })
        .map(|b| vec![b])
        .unwrap_or_default(),
        "revocations" => lockbox_crypto::encode_revocations_body(&pb::RevocationsBody {
            trust_domain: "example.org".into(),
            revoked: vec![
                pb::Revocation {
                    node: "host-a".into(),
                    revoked_unix_ms: NOW - 5000,
                    reason: "stolen".into(),
                },
                pb::Revocation {
                    node: "host-z".into(),
                    revoked_unix_ms: NOW - 4000,
                    reason: String::new(),
                },
            ],
            issued_unix_ms: NOW,
            issuer_key_id: "ctl-1".into(),
        })
        .map(|b| vec![b])
        .unwrap_or_default(),
        "revoked_file" => revoked_file_seeds(),
        // Sealed by `lockbox_tpm::seal` against swtpm (a TPM is not at hand here): one slot
        // bound to the TPM alone, one to PCRs 0 and 7. Public bytes, useless off that TPM.
        "tpm_slot" => vec![
            include_bytes!("../seeds/tpm_slot_unbound.bin").to_vec(),
            include_bytes!("../seeds/tpm_slot_pcrs_0_7.bin").to_vec(),
        ],
        "spiffe" => vec![
            b"spiffe://example.org/lockbox/host-a".to_vec(),
            b"spiffe://example.org/admin/alice".to_vec(),
        ],
        _ => Vec::new(),
    }
}

/// An assist key file, a 2-of-2 peer slot, one of its enrolled shares and a blinded request.
fn assist_seeds() -> Vec<Vec<u8>> {
    let peer = keys().assist.public_key();
    let peers = [
        lockbox_crypto::AssistPeer {
            node: "host-b",
            public_key: peer,
        },
        lockbox_crypto::AssistPeer {
            node: "host-c",
            public_key: peer,
        },
    ];
    let mut out = vec![keys().assist.to_file_bytes().expose_secret().to_vec()];
    if let Ok(slot) =
        lockbox_crypto::PeerSlot::enroll(&SecretBytes::new(vec![7; 32]), "host-a", &peers, 2)
    {
        out.push(slot.encode());
        if let Some(share) = slot.shares().first() {
            out.push(share.encode());
            if let Ok((_, blinded)) = lockbox_crypto::assist::blind(share) {
                out.push(blinded.to_vec());
            }
        }
    }
    out
}

fn signed_grant() -> pb::SignedGrant {
    let body = pb::GrantBody {
        grant_id: GRANT_ID.to_vec(),
        key_ids: vec![KEY_ID.into()],
        source_node: "host-a".into(),
        dest_node: "host-b".into(),
        op: pb::GrantOp::Move as i32,
        not_before_unix_ms: NOW - 1000,
        expires_unix_ms: NOW + 600_000,
        requested_by: "spiffe://example.org/orchestrator/cinder".into(),
        issuer_key_id: "ctl-1".into(),
        reason: "fuzz seed".into(),
        trust_domain: "example.org".into(),
    };
    let bytes = lockbox_crypto::encode_grant_body(&body).unwrap_or_default();
    pb::SignedGrant {
        signatures: vec![lockbox_crypto::sign_grant_body(
            &keys().controller,
            "ctl-1",
            &bytes,
        )],
        body: bytes,
    }
}

fn revoked_file_seeds() -> Vec<Vec<u8>> {
    let Ok(mut f) = lockbox_controller::revoked::RevokedFile::new() else {
        return Vec::new();
    };
    let empty = f.encode().into_bytes();
    let _ = f.revoke("host-a", "stolen chassis", "uid:0", NOW);
    let _ = f.revoke("host-b", "", "uid:0", NOW + 1);
    let _ = f.unrevoke("host-b", "uid:0", NOW + 2);
    vec![empty, f.encode().into_bytes()]
}

fn attestation_body() -> Vec<u8> {
    let k = keys();
    lockbox_crypto::encode_attestation_body(&pb::AttestationBody {
        node: "host-b".into(),
        trust_domain: "example.org".into(),
        hpke_public_key: k.hpke.public_key().to_vec(),
        hpke_kem_id: lockbox_crypto::HPKE_KEM_X25519,
        signing_public_key: k.node.public_key().to_vec(),
        tls_spki_sha256: vec![5; 32],
        not_before_unix_ms: NOW - 1000,
        expires_unix_ms: NOW + 600_000,
        issuer_key_id: "ctl-1".into(),
        assist_public_key: lockbox_crypto::assist::AssistIdentity::generate()
            .map(|a| a.public_key().to_vec())
            .unwrap_or_default(),
    })
    .unwrap_or_default()
}

fn receipt_body() -> Vec<u8> {
    pb::ReceiptBody {
        grant_id: GRANT_ID.to_vec(),
        op: pb::GrantOp::Move as i32,
        source_node: "host-a".into(),
        dest_node: "host-b".into(),
        key_ids: vec![KEY_ID.into()],
        stored_unix_ms: NOW,
        stored: vec![pb::StoredVersions {
            key_id: KEY_ID.into(),
            versions: vec![1, 2],
        }],
    }
    .encode_to_vec()
}

fn batch_wire() -> Vec<u8> {
    let k = keys();
    let material = SecretBytes::new(vec![7; 32]);
    let ctx = BatchContext {
        grant_id: &GRANT_ID,
        batch: 0,
        source_node: "host-a",
        dest_node: "host-b",
    };
    let wrapped = pb::WrappedKey {
        key_id: KEY_ID.into(),
        version: 1,
        version_state: "active".into(),
        current: true,
        ..Default::default()
    };
    let attributes = lockbox_crypto::wire_key_attributes(&wrapped);
    let keys_in = [KeyToWrap {
        key_id: KEY_ID,
        version: 1,
        material: &material,
        attributes: &attributes,
    }];
    let Ok(sealed) = lockbox_crypto::seal_batch(&k.hpke.public_key(), &ctx, &keys_in) else {
        return Vec::new();
    };
    pb::SealedBatch {
        suite: sealed.suite,
        enc: sealed.enc.clone(),
        keys: sealed
            .keys
            .iter()
            .map(|s| pb::WrappedKey {
                ciphertext: s.ciphertext.clone(),
                ..wrapped.clone()
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn backup_file() -> Vec<Vec<u8>> {
    let k = keys();
    let contents = lockbox_crypto::BackupContents {
        materials: vec![SecretBytes::new(vec![7; 32])],
        keys: vec![lockbox_crypto::BackupKey {
            key_id: KEY_ID.into(),
            labels: [("vol".to_string(), "a".to_string())].into(),
            created_unix_ms: 1,
            origin: lockbox_crypto::BackupOrigin {
                kind: "created".into(),
                ..Default::default()
            },
            clone_policy: String::new(),
            replica: false,
            current_version: 1,
            versions: vec![lockbox_crypto::BackupVersion {
                version: 1,
                state: lockbox_crypto::BackupVersionState::Active,
                created_unix_ms: 1,
                material: 0,
            }],
        }],
    };
    let recipient = k.backup.recipient();
    let mut out = Vec::new();
    if let Ok(file) = lockbox_crypto::seal_backup(&[recipient], "host-a", NOW, &contents) {
        out.push(file);
    }
    out.push(k.backup.to_file_text().as_bytes().to_vec());
    out
}

fn journal_file() -> Vec<Vec<u8>> {
    let Ok(dir) = tempfile::tempdir() else {
        return Vec::new();
    };
    let db = dir.path().join("db");
    let Ok(store) = lockbox_store::Store::open(&db, 1 << 20) else {
        return Vec::new();
    };
    let mut batch = lockbox_store::Batch::new();
    batch.put(lockbox_store::Ns::Keys, KEY_ID.as_bytes(), b"sealed");
    batch.put(lockbox_store::Ns::Audit, &1u64.to_be_bytes(), b"entry");
    if store.apply(batch).is_err() || store.flush_blocking().is_err() {
        return Vec::new();
    }
    drop(store);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&db) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "jnl")
                && let Ok(bytes) = std::fs::read(e.path())
            {
                // The sparse preallocation is zeros: keep the written part and a little after.
                let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 64);
                out.push(bytes[..end.min(bytes.len())].to_vec());
            }
        }
    }
    out
}
