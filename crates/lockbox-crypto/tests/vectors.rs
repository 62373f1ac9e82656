//! Test vectors in `tests/vectors/*.json`, including `fail_*` cases that every decoder must
//! reject with the named error.
//!
//! Sealed records, keyrings and backup files use random nonces, salts and keys, so their
//! vectors store the bytes and check that they open (or fail as named). Audit entries, checkpoints, signatures, grants, attestations,
//! vouches and revocation lists are deterministic (Ed25519 signing is), so those vectors are also regenerated and compared.
//! Transfer batches are too: their HPKE ephemeral key comes from a fixed seed
//! (`seal_batch_deterministic`, feature `test-vectors`); so are transfer receipts, and the
//! peer-assisted unseal file (fixed scalars through `enroll_deterministic`,
//! `blind_deterministic` and `split_deterministic`). To rewrite every file after a
//! deliberate format change (and SPEC.md first):
//! `cargo test -p lockbox-crypto --test vectors -- --ignored regenerate`
//! (`LOCKBOX_REGENERATE=wrap.json` to rewrite only the files named, comma-separated).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use lockbox_crypto::assist::{
    blind_deterministic, combine, enroll_deterministic, recover, split_deterministic,
};
use lockbox_crypto::*;
use lockbox_proto::v1::{
    AttestationBody, GrantBody, GrantOp, ReceiptBody, Revocation, RevocationsBody,
    SignedAttestation, SignedGrant, SignedRevocations, SignedVouch, StoredVersions, VouchBody,
};
use prost::Message as _;
use serde_json::{Value, json};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(path(name)).expect("vector file");
    serde_json::from_str(&text).expect("vector json")
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn array32(v: &Value) -> [u8; 32] {
    bytes(v).try_into().expect("32 bytes")
}

fn str_of(v: &Value) -> &str {
    v.as_str().expect("string")
}

/// The `expect` name of each error variant used in the vector files.
fn tag(e: &CryptoError) -> &'static str {
    match e {
        CryptoError::Random => "random",
        CryptoError::Malformed(_) => "malformed",
        CryptoError::UnsupportedVersion { .. } => "unsupported_version",
        CryptoError::IntegrityFailed { .. } => "integrity_failed",
        CryptoError::UnknownKek(_) => "unknown_kek",
        CryptoError::WrongUnsealSecret => "wrong_unseal_secret",
        CryptoError::UnsealMethodMismatch { .. } => "unseal_method_mismatch",
        CryptoError::BadSignature => "bad_signature",
        CryptoError::BadLength { .. } => "bad_length",
        CryptoError::Kdf(_) => "kdf",
        CryptoError::UnsupportedSuite(_) => "unsupported_suite",
        CryptoError::BadBatch { .. } => "bad_batch",
        CryptoError::UnwrapFailed { .. } => "unwrap_failed",
        CryptoError::BadBatchSignature { .. } => "bad_batch_signature",
    }
}

fn outcome<T>(r: &Result<T>) -> &'static str {
    r.as_ref().map_or_else(tag, |_| "ok")
}

fn kind(label: &str) -> RecordKind {
    [
        RecordKind::KeyMeta,
        RecordKind::Material,
        RecordKind::NodeHpke,
        RecordKind::NodeSigning,
        RecordKind::AuditHead,
    ]
    .into_iter()
    .find(|k| k.label() == label)
    .expect("known record kind")
}

fn check_name(case: &Value, got: &str) {
    let name = str_of(&case["name"]);
    let expect = str_of(&case["expect"]);
    assert_eq!(got, expect, "vector {name}");
    assert_eq!(
        name.starts_with("fail_"),
        expect != "ok",
        "vector {name}: fail_ prefix iff an error is expected"
    );
}

// ---------------------------------------------------------------------------------------------
// sealed records

#[test]
fn seal_vectors() {
    let v = load("seal.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|c| c["expect"] != "ok").count() >= 8);
    for case in cases {
        let kek = Kek::from_secret(
            u32::try_from(case["kek_id"].as_u64().unwrap()).unwrap(),
            &SecretBytes::new(bytes(&case["kek"])),
        )
        .unwrap();
        let sealed = bytes(&case["sealed"]);
        let opened = kek.open(
            kind(str_of(&case["kind"])),
            &bytes(&case["record_id"]),
            &sealed,
        );
        check_name(case, outcome(&opened));
        if let Ok(pt) = opened {
            assert_eq!(pt.expose_secret(), bytes(&case["plaintext"]));
            assert_eq!(sealed_kek_id(&sealed).unwrap(), kek.id());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// keyring

fn with_secret<T>(secret: &Value, f: impl FnOnce(UnsealSecret<'_>) -> T) -> T {
    if let Some(k) = secret.get("keyfile") {
        f(UnsealSecret::Keyfile(&SecretBytes::new(bytes(k))))
    } else if let (Some(t), Some(p)) = (secret.get("tpm2_key"), secret.get("peers_key")) {
        f(UnsealSecret::Tpm2PeersKeys {
            tpm: &SecretBytes::new(bytes(t)),
            peers: &SecretBytes::new(bytes(p)),
        })
    } else if let Some(k) = secret.get("tpm2_key") {
        f(UnsealSecret::Tpm2Key(&SecretBytes::new(bytes(k))))
    } else if let Some(k) = secret.get("peers_key") {
        f(UnsealSecret::PeersKey(&SecretBytes::new(bytes(k))))
    } else {
        let p = str_of(&secret["passphrase"]).as_bytes().to_vec();
        f(UnsealSecret::Passphrase(&SecretBytes::new(p)))
    }
}

#[test]
fn keyring_vectors() {
    let v = load("keyring.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|c| c["expect"] != "ok").count() >= 10);
    for case in cases {
        let name = str_of(&case["name"]);
        let raw = bytes(&case["keyring"]);
        let result = Keyring::decode(&raw).and_then(|k| {
            let u = with_secret(&case["secret"], |s| k.unseal(s))?;
            Ok((k, u))
        });
        check_name(case, outcome(&result));
        let Ok((k, u)) = result else { continue };
        assert_eq!(k.encode(), raw, "{name}: re-encoding is byte-identical");
        assert_eq!(k.method().as_str(), str_of(&case["method"]), "{name}");
        let ids: Vec<u64> = k.kek_ids().into_iter().map(u64::from).collect();
        let want: Vec<u64> = case["kek_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want, "{name}");
        assert_eq!(
            u64::from(k.current_kek_id()),
            *want.last().unwrap(),
            "{name}"
        );
        assert_eq!(u.current_kek().id(), k.current_kek_id(), "{name}");
        for rec in case["records"].as_array().unwrap() {
            let opened = u.open(
                kind(str_of(&rec["kind"])),
                &bytes(&rec["record_id"]),
                &bytes(&rec["sealed"]),
            );
            assert_eq!(outcome(&opened), str_of(&rec["expect"]), "{name} record");
            if let Ok(pt) = opened {
                assert_eq!(pt.expose_secret(), bytes(&rec["plaintext"]), "{name}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// identities and signatures

#[test]
fn identity_vectors() {
    let v = load("identity.json");
    for case in v["signing_keys"].as_array().unwrap() {
        let id = SigningIdentity::from_secret(&SecretBytes::new(bytes(&case["seed"]))).unwrap();
        assert_eq!(id.public_key(), array32(&case["public_key"]));
    }
    for case in v["x25519_keys"].as_array().unwrap() {
        let id = HpkeIdentity::from_secret(&SecretBytes::new(bytes(&case["secret"]))).unwrap();
        assert_eq!(id.public_key(), array32(&case["public_key"]));
    }
    let sigs = v["signatures"].as_array().unwrap();
    assert!(sigs.iter().filter(|c| c["expect"] != "ok").count() >= 4);
    for case in sigs {
        let r = verify_signature(
            &array32(&case["public_key"]),
            str_of(&case["domain"]),
            &bytes(&case["msg"]),
            &bytes(&case["signature"]),
        );
        check_name(case, outcome(&r));
    }
    for case in v["checkpoint_messages"].as_array().unwrap() {
        let msg = checkpoint_message(case["seq"].as_u64().unwrap(), &array32(&case["prev_hash"]));
        assert_eq!(msg, bytes(&case["message"]));
    }
}

#[test]
fn identity_vectors_are_reproducible() {
    assert_eq!(load("identity.json"), gen_identity());
}

// ---------------------------------------------------------------------------------------------
// audit log

fn entry_from_fields(f: &Value) -> AuditEntry {
    AuditEntry {
        seq: f["seq"].as_u64().unwrap(),
        prev_hash: array32(&f["prev_hash"]),
        event: AuditEvent {
            time_unix_ms: f["time_unix_ms"].as_u64().unwrap(),
            actor: str_of(&f["actor"]).into(),
            action: str_of(&f["action"]).into(),
            key_id: str_of(&f["key_id"]).into(),
            outcome: str_of(&f["outcome"]).into(),
            detail: str_of(&f["detail"]).into(),
        },
        checkpoint: f["checkpoint"].as_object().map(|c| Checkpoint {
            signer: array32(&c["signer"]),
            signature: bytes(&c["signature"]).try_into().unwrap(),
        }),
    }
}

#[test]
fn audit_vectors() {
    let v = load("audit.json");
    let trusted = array32(&v["trusted_signer"]);

    for case in v["entries"].as_array().unwrap() {
        let raw = bytes(&case["bytes"]);
        let entry = entry_from_fields(&case["fields"]);
        assert_eq!(entry.encode(), raw);
        assert_eq!(AuditEntry::decode(&raw).unwrap(), entry);
        assert_eq!(entry.hash(), array32(&case["hash"]));
    }

    let decode = v["decode"].as_array().unwrap();
    assert!(decode.iter().filter(|c| c["expect"] != "ok").count() >= 5);
    for case in decode {
        check_name(case, outcome(&AuditEntry::decode(&bytes(&case["bytes"]))));
    }

    for case in v["chains"].as_array().unwrap() {
        let name = str_of(&case["name"]);
        let mut verifier = ChainVerifier::new(trusted);
        let mut result = Ok(());
        for rec in case["records"].as_array().unwrap() {
            result = verifier.push(rec["stored_seq"].as_u64().unwrap(), &bytes(&rec["bytes"]));
            if result.is_err() {
                break;
            }
        }
        match &case["expect"] {
            Value::String(s) if s == "ok" => {
                assert!(result.is_ok(), "{name}: {result:?}");
                let s = verifier.summary();
                let want = &case["summary"];
                assert_eq!(s.records, want["records"].as_u64().unwrap(), "{name}");
                assert_eq!(
                    s.checkpoints,
                    want["checkpoints"].as_u64().unwrap(),
                    "{name}"
                );
                assert_eq!(s.head_seq, want["head_seq"].as_u64().unwrap(), "{name}");
                assert_eq!(s.head_hash, array32(&want["head_hash"]), "{name}");
            }
            want => {
                assert!(name.starts_with("fail_"), "{name}");
                let err = result.expect_err(name);
                assert_eq!(err.seq, want["seq"].as_u64().unwrap(), "{name}");
                assert!(
                    err.reason.starts_with(str_of(&want["reason_starts_with"])),
                    "{name}: {err}"
                );
            }
        }
    }
}

#[test]
fn audit_vectors_are_reproducible() {
    assert_eq!(load("audit.json"), gen_audit());
}

// ---------------------------------------------------------------------------------------------
// grants

fn grant_body_fields(b: &GrantBody) -> Value {
    json!({
        "grant_id": hex::encode(&b.grant_id),
        "key_ids": b.key_ids,
        "source_node": b.source_node,
        "dest_node": b.dest_node,
        "op": b.op().as_str_name(),
        "not_before_unix_ms": b.not_before_unix_ms,
        "expires_unix_ms": b.expires_unix_ms,
        "requested_by": b.requested_by,
        "issuer_key_id": b.issuer_key_id,
        "reason": b.reason,
        "trust_domain": b.trust_domain,
    })
}

fn grant_body_from(f: &Value) -> GrantBody {
    GrantBody {
        grant_id: bytes(&f["grant_id"]),
        key_ids: strings(&f["key_ids"]),
        source_node: str_of(&f["source_node"]).into(),
        dest_node: str_of(&f["dest_node"]).into(),
        op: GrantOp::from_str_name(str_of(&f["op"])).expect("grant op") as i32,
        not_before_unix_ms: f["not_before_unix_ms"].as_u64().unwrap(),
        expires_unix_ms: f["expires_unix_ms"].as_u64().unwrap(),
        requested_by: str_of(&f["requested_by"]).into(),
        issuer_key_id: str_of(&f["issuer_key_id"]).into(),
        reason: str_of(&f["reason"]).into(),
        trust_domain: str_of(&f["trust_domain"]).into(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| str_of(s).to_string())
        .collect()
}

fn trusted_from(v: &Value) -> TrustedControllers {
    let mut t = TrustedControllers::new();
    for c in v.as_array().unwrap() {
        t.insert(str_of(&c["key_id"]).into(), array32(&c["public_key"]));
    }
    t
}

/// Checks a verifier outcome against a case: `expect` is `ok` or the error code, `error` the
/// exact message.
fn check_verdict<T, E: std::fmt::Display>(
    case: &Value,
    r: &std::result::Result<T, E>,
    code: impl Fn(&E) -> &'static str,
) {
    let name = str_of(&case["name"]);
    match r {
        Ok(_) => check_name(case, "ok"),
        Err(e) => {
            check_name(case, code(e));
            assert_eq!(e.to_string(), str_of(&case["error"]), "vector {name}");
        }
    }
}

/// Runs one `cases` entry of grant.json: decode `signed_grant`, build the context, verify.
fn run_grant_case(
    trusted: &TrustedControllers,
    case: &Value,
) -> std::result::Result<VerifiedGrant, GrantError> {
    let signed = SignedGrant::decode(bytes(&case["signed_grant"]).as_slice()).unwrap();
    let c = &case["context"];
    let key_ids = c["key_ids"].as_array().map(|_| strings(&c["key_ids"]));
    let ctx = GrantContext {
        now_unix_ms: c["now_unix_ms"].as_u64().unwrap(),
        skew_ms: c["skew_ms"].as_u64().unwrap(),
        threshold: usize::try_from(c["threshold"].as_u64().unwrap()).unwrap(),
        self_node: str_of(&c["self_node"]),
        peer_node: c["peer_node"].as_str(),
        side: match str_of(&c["side"]) {
            "source" => GrantSide::Source,
            "destination" => GrantSide::Destination,
            s => panic!("side {s}"),
        },
        key_ids: key_ids.as_deref(),
    };
    let consumed: Vec<Vec<u8>> = case["consumed"]
        .as_array()
        .unwrap()
        .iter()
        .map(bytes)
        .collect();
    let is_consumed = |id: &[u8; 16]| consumed.iter().any(|c| c == id);
    verify_grant(&signed, trusted, &ctx, &is_consumed)
}

#[test]
fn grant_vectors() {
    let v = load("grant.json");
    for c in v["controllers"].as_array().unwrap() {
        let id = SigningIdentity::from_secret(&SecretBytes::new(bytes(&c["seed"]))).unwrap();
        let pk = array32(&c["public_key"]);
        assert_eq!(id.public_key(), pk);
        assert_eq!(encode_public_key(&pk), str_of(&c["public_key_text"]));
    }
    let pk_cases = v["public_key_text"].as_array().unwrap();
    assert!(pk_cases.iter().filter(|c| c["expect"] != "ok").count() >= 6);
    for case in pk_cases {
        let r = decode_public_key(str_of(&case["text"]));
        check_name(case, outcome(&r));
        if let Ok(pk) = r {
            assert_eq!(pk, array32(&case["public_key"]));
        }
    }
    for case in v["bodies"].as_array().unwrap() {
        let body = grant_body_from(&case["fields"]);
        let raw = encode_grant_body(&body).unwrap();
        assert_eq!(raw, bytes(&case["bytes"]));
        assert_eq!(decode_grant_body(&raw).unwrap(), body);
        let signed_bytes = [GRANT_DOMAIN.as_bytes(), &[0], &raw].concat();
        assert_eq!(signed_bytes, bytes(&case["signed_bytes"]));
    }

    let trusted = trusted_from(&v["trusted"]);
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|c| c["expect"] != "ok").count() >= 20);
    for case in cases {
        let name = str_of(&case["name"]);
        let r = run_grant_case(&trusted, case);
        check_verdict(case, &r, GrantError::code);
        if let Ok(g) = r {
            assert_eq!(g.valid_signers, strings(&case["valid_signers"]), "{name}");
            assert_eq!(g.grant_id.to_vec(), g.body.grant_id, "{name}");
        }
    }

    let text = v["text"].as_array().unwrap();
    assert!(text.iter().filter(|c| c["expect"] != "ok").count() >= 8);
    for case in text {
        let name = str_of(&case["name"]);
        let r = grant_from_text(str_of(&case["text"]));
        check_verdict(case, &r, GrantError::code);
        if let Ok(g) = r {
            assert_eq!(g.encode_to_vec(), bytes(&case["signed_grant"]), "{name}");
            if case["canonical"] == true {
                assert_eq!(grant_to_text(&g), str_of(&case["text"]), "{name}");
            }
        }
    }
}

#[test]
fn grant_vectors_are_reproducible() {
    assert_eq!(load("grant.json"), gen_grant());
}

// ---------------------------------------------------------------------------------------------
// attestations

fn attestation_body_fields(b: &AttestationBody) -> Value {
    json!({
        "node": b.node,
        "trust_domain": b.trust_domain,
        "hpke_public_key": hex::encode(&b.hpke_public_key),
        "hpke_kem_id": b.hpke_kem_id,
        "signing_public_key": hex::encode(&b.signing_public_key),
        "tls_spki_sha256": hex::encode(&b.tls_spki_sha256),
        "not_before_unix_ms": b.not_before_unix_ms,
        "expires_unix_ms": b.expires_unix_ms,
        "issuer_key_id": b.issuer_key_id,
        "assist_public_key": hex::encode(&b.assist_public_key),
    })
}

fn attestation_body_from(f: &Value) -> AttestationBody {
    AttestationBody {
        node: str_of(&f["node"]).into(),
        trust_domain: str_of(&f["trust_domain"]).into(),
        hpke_public_key: bytes(&f["hpke_public_key"]),
        hpke_kem_id: u32::try_from(f["hpke_kem_id"].as_u64().unwrap()).unwrap(),
        signing_public_key: bytes(&f["signing_public_key"]),
        tls_spki_sha256: bytes(&f["tls_spki_sha256"]),
        not_before_unix_ms: f["not_before_unix_ms"].as_u64().unwrap(),
        expires_unix_ms: f["expires_unix_ms"].as_u64().unwrap(),
        issuer_key_id: str_of(&f["issuer_key_id"]).into(),
        assist_public_key: bytes(&f["assist_public_key"]),
    }
}

/// `attest_request_message` of an `attest_requests` entry's fields; `assist_public_key` is
/// absent for a node that predates it.
fn attest_request_message_of(f: &Value) -> Vec<u8> {
    let assist = f.get("assist_public_key").map(array32);
    attest_request_message(
        str_of(&f["node"]),
        str_of(&f["trust_domain"]),
        u32::try_from(f["hpke_kem_id"].as_u64().unwrap()).unwrap(),
        &bytes(&f["hpke_public_key"]),
        &bytes(&f["signing_public_key"]),
        &array32(&f["tls_spki_sha256"]),
        assist.as_ref(),
    )
}

/// Runs one `cases` entry of attestation.json.
fn run_attestation_case(
    trusted: &TrustedControllers,
    case: &Value,
) -> std::result::Result<VerifiedAttestation, AttestationError> {
    let signed = SignedAttestation::decode(bytes(&case["signed_attestation"]).as_slice()).unwrap();
    let c = &case["context"];
    let tls = c["peer_tls_spki_sha256"]
        .as_str()
        .map(|_| array32(&c["peer_tls_spki_sha256"]));
    let ctx = AttestationContext {
        now_unix_ms: c["now_unix_ms"].as_u64().unwrap(),
        skew_ms: c["skew_ms"].as_u64().unwrap(),
        threshold: usize::try_from(c["threshold"].as_u64().unwrap()).unwrap(),
        expected_node: c["expected_node"].as_str(),
        peer_tls_spki_sha256: tls.as_ref(),
    };
    verify_attestation(&signed, trusted, &ctx)
}

#[test]
fn attestation_vectors() {
    let v = load("attestation.json");
    for case in v["bodies"].as_array().unwrap() {
        let body = attestation_body_from(&case["fields"]);
        let raw = encode_attestation_body(&body).unwrap();
        assert_eq!(raw, bytes(&case["bytes"]));
        assert_eq!(decode_attestation_body(&raw).unwrap(), body);
        let signed_bytes = [ATTESTATION_DOMAIN.as_bytes(), &[0], &raw].concat();
        assert_eq!(signed_bytes, bytes(&case["signed_bytes"]));
    }

    let trusted = trusted_from(&v["trusted"]);
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|c| c["expect"] != "ok").count() >= 15);
    for case in cases {
        let name = str_of(&case["name"]);
        let r = run_attestation_case(&trusted, case);
        check_verdict(case, &r, AttestationError::code);
        if let Ok(a) = r {
            assert_eq!(a.valid_signers, strings(&case["valid_signers"]), "{name}");
            assert_eq!(a.hpke_public_key.to_vec(), a.body.hpke_public_key, "{name}");
            assert_eq!(
                a.signing_public_key.to_vec(),
                a.body.signing_public_key,
                "{name}"
            );
            assert_eq!(a.tls_spki_sha256.to_vec(), a.body.tls_spki_sha256, "{name}");
            assert_eq!(
                a.assist_public_key.map(|k| k.to_vec()).unwrap_or_default(),
                a.body.assist_public_key,
                "{name}"
            );
        }
    }

    let requests = v["attest_requests"].as_array().unwrap();
    assert!(requests.iter().filter(|c| c["expect"] != "ok").count() >= 5);
    for case in requests {
        let name = str_of(&case["name"]);
        let f = &case["fields"];
        let msg = attest_request_message_of(f);
        assert_eq!(msg, bytes(&case["message"]), "{name}");
        let r = verify_attest_request(
            &bytes(&f["signing_public_key"]),
            &msg,
            &bytes(&case["proof"]),
        );
        check_name(case, outcome(&r));
    }
}

#[test]
fn attestation_vectors_are_reproducible() {
    assert_eq!(load("attestation.json"), gen_attestation());
}

// ---------------------------------------------------------------------------------------------
// vouches and revocation lists

fn vouch_body_fields(b: &VouchBody) -> Value {
    json!({
        "node": b.node,
        "trust_domain": b.trust_domain,
        "tls_spki_sha256": hex::encode(&b.tls_spki_sha256),
        "not_before_unix_ms": b.not_before_unix_ms,
        "expires_unix_ms": b.expires_unix_ms,
        "issuer_key_id": b.issuer_key_id,
    })
}

fn vouch_body_from(f: &Value) -> VouchBody {
    VouchBody {
        node: str_of(&f["node"]).into(),
        trust_domain: str_of(&f["trust_domain"]).into(),
        tls_spki_sha256: bytes(&f["tls_spki_sha256"]),
        not_before_unix_ms: f["not_before_unix_ms"].as_u64().unwrap(),
        expires_unix_ms: f["expires_unix_ms"].as_u64().unwrap(),
        issuer_key_id: str_of(&f["issuer_key_id"]).into(),
    }
}

/// Runs one `cases` entry of vouch.json.
fn run_vouch_case(
    trusted: &TrustedControllers,
    case: &Value,
) -> std::result::Result<VerifiedVouch, VouchError> {
    let signed = SignedVouch::decode(bytes(&case["signed_vouch"]).as_slice()).unwrap();
    let c = &case["context"];
    let tls = array32(&c["peer_tls_spki_sha256"]);
    let ctx = VouchContext {
        now_unix_ms: c["now_unix_ms"].as_u64().unwrap(),
        skew_ms: c["skew_ms"].as_u64().unwrap(),
        threshold: usize::try_from(c["threshold"].as_u64().unwrap()).unwrap(),
        expected_node: str_of(&c["expected_node"]),
        peer_tls_spki_sha256: &tls,
    };
    verify_vouch(&signed, trusted, &ctx)
}

#[test]
fn vouch_vectors() {
    let v = load("vouch.json");
    for case in v["bodies"].as_array().unwrap() {
        let body = vouch_body_from(&case["fields"]);
        let raw = encode_vouch_body(&body).unwrap();
        assert_eq!(raw, bytes(&case["bytes"]));
        assert_eq!(decode_vouch_body(&raw).unwrap(), body);
        let signed_bytes = [VOUCH_DOMAIN.as_bytes(), &[0], &raw].concat();
        assert_eq!(signed_bytes, bytes(&case["signed_bytes"]));
    }
    let trusted = trusted_from(&v["trusted"]);
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|c| c["expect"] != "ok").count() >= 20);
    for case in cases {
        let name = str_of(&case["name"]);
        let r = run_vouch_case(&trusted, case);
        check_verdict(case, &r, VouchError::code);
        if let Ok(verified) = r {
            assert_eq!(
                verified.valid_signers,
                strings(&case["valid_signers"]),
                "{name}"
            );
            assert_eq!(
                verified.node,
                str_of(&case["context"]["expected_node"]),
                "{name}"
            );
        }
    }
}

#[test]
fn vouch_vectors_are_reproducible() {
    assert_eq!(load("vouch.json"), gen_vouch());
}

fn revocations_body_fields(b: &RevocationsBody) -> Value {
    json!({
        "trust_domain": b.trust_domain,
        "revoked": b.revoked.iter().map(|r| json!({
            "node": r.node, "revoked_unix_ms": r.revoked_unix_ms, "reason": r.reason,
        })).collect::<Vec<_>>(),
        "issued_unix_ms": b.issued_unix_ms,
        "issuer_key_id": b.issuer_key_id,
    })
}

fn revocations_body_from(f: &Value) -> RevocationsBody {
    RevocationsBody {
        trust_domain: str_of(&f["trust_domain"]).into(),
        revoked: f["revoked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| Revocation {
                node: str_of(&r["node"]).into(),
                revoked_unix_ms: r["revoked_unix_ms"].as_u64().unwrap(),
                reason: str_of(&r["reason"]).into(),
            })
            .collect(),
        issued_unix_ms: f["issued_unix_ms"].as_u64().unwrap(),
        issuer_key_id: str_of(&f["issuer_key_id"]).into(),
    }
}

/// Runs one `cases` entry of revocations.json.
fn run_revocations_case(
    trusted: &TrustedControllers,
    case: &Value,
) -> std::result::Result<VerifiedRevocations, RevocationsError> {
    let signed = SignedRevocations::decode(bytes(&case["signed_revocations"]).as_slice()).unwrap();
    verify_revocations(&signed, trusted)
}

/// What a verified list says, as revocations.json records it for ok cases.
fn verified_revocations_json(v: &VerifiedRevocations) -> Value {
    json!({
        "issuer_key_id": v.issuer_key_id,
        "trust_domain": v.trust_domain,
        "issued_unix_ms": v.issued_unix_ms,
        "revoked": v.revoked.iter().map(|r| json!({
            "node": r.node, "revoked_unix_ms": r.revoked_unix_ms, "reason": r.reason,
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn revocations_vectors() {
    let v = load("revocations.json");
    for case in v["bodies"].as_array().unwrap() {
        let body = revocations_body_from(&case["fields"]);
        let raw = encode_revocations_body(&body).unwrap();
        assert_eq!(raw, bytes(&case["bytes"]));
        assert_eq!(decode_revocations_body(&raw).unwrap(), body);
        let signed_bytes = [REVOCATIONS_DOMAIN.as_bytes(), &[0], &raw].concat();
        assert_eq!(signed_bytes, bytes(&case["signed_bytes"]));
    }
    let trusted = trusted_from(&v["trusted"]);
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|c| c["expect"] != "ok").count() >= 15);
    for case in cases {
        let name = str_of(&case["name"]);
        let r = run_revocations_case(&trusted, case);
        check_verdict(case, &r, RevocationsError::code);
        if let Ok(list) = r {
            assert_eq!(verified_revocations_json(&list), case["verified"], "{name}");
        }
    }
}

#[test]
fn revocations_vectors_are_reproducible() {
    assert_eq!(load("revocations.json"), gen_revocations());
}

// ---------------------------------------------------------------------------------------------
// transfer wrapping

/// A batch context as it appears in wrap.json.
struct Ctx {
    grant_id: [u8; 16],
    batch: u32,
    source_node: String,
    dest_node: String,
}

impl Ctx {
    fn from_json(v: &Value) -> Self {
        Self {
            grant_id: bytes(&v["grant_id"]).try_into().expect("16-byte grant id"),
            batch: u32::try_from(v["batch"].as_u64().unwrap()).unwrap(),
            source_node: str_of(&v["source_node"]).into(),
            dest_node: str_of(&v["dest_node"]).into(),
        }
    }

    fn get(&self) -> BatchContext<'_> {
        BatchContext {
            grant_id: &self.grant_id,
            batch: self.batch,
            source_node: &self.source_node,
            dest_node: &self.dest_node,
        }
    }
}

fn ctx_json(c: &BatchContext<'_>) -> Value {
    json!({
        "grant_id": hex::encode(c.grant_id),
        "batch": c.batch,
        "source_node": c.source_node,
        "dest_node": c.dest_node,
    })
}

fn sealed_json(b: &SealedBatch) -> Value {
    json!({
        "suite": b.suite,
        "enc": hex::encode(&b.enc),
        "keys": b.keys.iter().map(|k| json!({
            "key_id": k.key_id,
            "version": k.version,
            "ciphertext": hex::encode(&k.ciphertext),
            "attributes": hex::encode(&k.attributes),
        })).collect::<Vec<_>>(),
    })
}

fn sealed_from(v: &Value) -> SealedBatch {
    SealedBatch {
        suite: v["suite"].as_u64().unwrap(),
        enc: bytes(&v["enc"]),
        keys: v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| SealedKey {
                key_id: str_of(&k["key_id"]).into(),
                version: u32::try_from(k["version"].as_u64().unwrap()).unwrap(),
                ciphertext: bytes(&k["ciphertext"]),
                attributes: bytes(&k["attributes"]),
            })
            .collect(),
    }
}

/// What opening a batch gives.
type Opened = Result<Vec<(String, u32, SecretBytes)>>;

/// Runs one `cases` entry of wrap.json: `verify_and_open_batch` and `open_batch` alone.
fn run_wrap_case(v: &Value, case: &Value) -> (Opened, Opened) {
    let secret = case
        .get("recipient_x25519_secret")
        .unwrap_or(&v["dest"]["x25519_secret"]);
    let recipient = HpkeIdentity::from_secret(&SecretBytes::new(bytes(secret))).unwrap();
    let source = array32(&v["source"]["signing_public_key"]);
    let c = Ctx::from_json(&case["context"]);
    let batch = sealed_from(&case["sealed"]);
    let sig = bytes(&case["signature"]);
    (
        verify_and_open_batch(&recipient, &source, &c.get(), &batch, &sig),
        open_batch(&recipient, &c.get(), &batch),
    )
}

#[test]
fn wrap_vectors() {
    let v = load("wrap.json");
    let dest =
        HpkeIdentity::from_secret(&SecretBytes::new(bytes(&v["dest"]["x25519_secret"]))).unwrap();
    assert_eq!(dest.public_key(), array32(&v["dest"]["hpke_public_key"]));
    let source =
        SigningIdentity::from_secret(&SecretBytes::new(bytes(&v["source"]["signing_seed"])))
            .unwrap();
    assert_eq!(
        source.public_key(),
        array32(&v["source"]["signing_public_key"])
    );
    let ikm = array32(&v["ephemeral_ikm"]);
    assert_eq!(
        v["suite"].as_u64().unwrap(),
        SUITE_X25519_SHA256_CHACHA20,
        "suite id"
    );

    for case in v["batches"].as_array().unwrap() {
        let name = str_of(&case["name"]);
        let c = Ctx::from_json(&case["context"]);
        let c = c.get();
        assert_eq!(transfer_info(&c), bytes(&case["info"]), "{name}: info");
        let materials: Vec<(String, u32, SecretBytes)> = case["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    str_of(&k["key_id"]).to_string(),
                    u32::try_from(k["version"].as_u64().unwrap()).unwrap(),
                    SecretBytes::new(bytes(&k["material"])),
                )
            })
            .collect();
        // Each key's attributes: encoded from the fields given (SPEC.md "Key attributes").
        let attributes: Vec<Vec<u8>> = case["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let a = &k["attributes"];
                let labels = a["labels"].as_object().unwrap();
                let encoded = key_attributes(
                    a["current"].as_bool().unwrap(),
                    str_of(&a["version_state"]),
                    str_of(&a["clone_policy"]),
                    labels
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str().unwrap())),
                );
                assert_eq!(encoded, bytes(&a["encoded"]), "{name}: attributes");
                encoded
            })
            .collect();
        let aads: Vec<Vec<u8>> = materials
            .iter()
            .map(|(id, version, _)| transfer_key_aad(id, *version))
            .collect();
        let want_aads: Vec<Vec<u8>> = case["aads"].as_array().unwrap().iter().map(bytes).collect();
        assert_eq!(aads, want_aads, "{name}: aads");
        let keys: Vec<KeyToWrap<'_>> = materials
            .iter()
            .zip(&attributes)
            .map(|((key_id, version, material), attributes)| KeyToWrap {
                key_id,
                version: *version,
                material,
                attributes,
            })
            .collect();
        let sealed = sealed_from(&case["sealed"]);
        assert_eq!(
            seal_batch_deterministic(&dest.public_key(), &c, &keys, &ikm).unwrap(),
            sealed,
            "{name}: sealing is reproducible"
        );
        // The ephemeral key is RFC 9180 A.2.1's, whatever the recipient and info.
        assert_eq!(sealed.enc, bytes(&v["rfc9180_a2_enc"]), "{name}: enc");
        assert_eq!(
            batch_message(&c, &sealed),
            bytes(&case["message"]),
            "{name}"
        );
        let signed_bytes = [
            TRANSFER_BATCH_DOMAIN.as_bytes(),
            &[0],
            &bytes(&case["message"]),
        ]
        .concat();
        assert_eq!(signed_bytes, bytes(&case["signed_bytes"]), "{name}");
        let sig = bytes(&case["signature"]);
        assert_eq!(sign_batch(&source, &c, &sealed).to_vec(), sig, "{name}");
        let opened = verify_and_open_batch(&dest, &source.public_key(), &c, &sealed, &sig).unwrap();
        assert_eq!(opened.len(), materials.len(), "{name}");
        for ((id, version, m), (want_id, want_version, want)) in opened.iter().zip(&materials) {
            assert_eq!((id, version), (want_id, want_version), "{name}");
            assert_eq!(m.expose_secret(), want.expose_secret(), "{name}");
        }
    }

    let cases = v["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|c| c["expect"] != "ok").count() >= 20);
    for case in cases {
        let name = str_of(&case["name"]);
        let (both, open_only) = run_wrap_case(&v, case);
        check_verdict(case, &both, tag);
        assert_eq!(
            outcome(&open_only),
            str_of(&case["open"]),
            "vector {name}: open alone"
        );
        if let Ok(keys) = both {
            assert_eq!(
                keys.len(),
                case["sealed"]["keys"].as_array().unwrap().len(),
                "{name}"
            );
        }
    }
}

#[test]
fn wrap_vectors_are_reproducible() {
    assert_eq!(load("wrap.json"), gen_wrap());
}

// ---------------------------------------------------------------------------------------------
// transfer receipts

fn receipt_fields(b: &ReceiptBody) -> Value {
    json!({
        "grant_id": hex::encode(&b.grant_id),
        "op": b.op().as_str_name(),
        "source_node": b.source_node,
        "dest_node": b.dest_node,
        "key_ids": b.key_ids,
        "stored_unix_ms": b.stored_unix_ms,
        "stored": b.stored.iter().map(|s| json!({
            "key_id": s.key_id,
            "versions": s.versions,
        })).collect::<Vec<_>>(),
    })
}

fn receipt_from(f: &Value) -> ReceiptBody {
    ReceiptBody {
        grant_id: bytes(&f["grant_id"]),
        op: GrantOp::from_str_name(str_of(&f["op"])).expect("grant op") as i32,
        source_node: str_of(&f["source_node"]).into(),
        dest_node: str_of(&f["dest_node"]).into(),
        key_ids: strings(&f["key_ids"]),
        stored_unix_ms: f["stored_unix_ms"].as_u64().unwrap(),
        stored: f["stored"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| StoredVersions {
                key_id: str_of(&s["key_id"]).into(),
                versions: s["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
                    .collect(),
            })
            .collect(),
    }
}

/// Runs one `cases` entry of receipt.json: `verify_receipt` with the file's `expectation`.
fn run_receipt_case(v: &Value, case: &Value) -> std::result::Result<ReceiptBody, ReceiptError> {
    let e = &v["expectation"];
    let grant_id: [u8; 16] = bytes(&e["grant_id"]).try_into().unwrap();
    let key_ids = strings(&e["key_ids"]);
    let expected = ReceiptExpectation {
        grant_id: &grant_id,
        op: GrantOp::from_str_name(str_of(&e["op"])).expect("grant op"),
        source_node: str_of(&e["source_node"]),
        dest_node: str_of(&e["dest_node"]),
        key_ids: &key_ids,
    };
    // The oversized body is given by its length: it is refused before any byte is read.
    let body = match case["body_zeros"].as_u64() {
        Some(n) => vec![0; usize::try_from(n).unwrap()],
        None => bytes(&case["body"]),
    };
    verify_receipt(
        &array32(&v["destination"]["public_key"]),
        &body,
        &bytes(&case["signature"]),
        &expected,
    )
}

#[test]
fn receipt_vectors() {
    let v = load("receipt.json");
    let dest =
        SigningIdentity::from_secret(&SecretBytes::new(bytes(&v["destination"]["seed"]))).unwrap();
    assert_eq!(dest.public_key(), array32(&v["destination"]["public_key"]));
    for case in v["bodies"].as_array().unwrap() {
        let body = receipt_from(&case["fields"]);
        let signed = sign_receipt(&dest, &body).unwrap();
        assert_eq!(signed.body, bytes(&case["bytes"]));
        let signed_bytes = [RECEIPT_DOMAIN.as_bytes(), &[0], &signed.body].concat();
        assert_eq!(signed_bytes, bytes(&case["signed_bytes"]));
        assert_eq!(signed.signature.to_vec(), bytes(&case["signature"]));
    }

    let cases = v["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|c| c["expect"] != "ok").count() >= 20);
    for case in cases {
        let name = str_of(&case["name"]);
        let r = run_receipt_case(&v, case);
        check_verdict(case, &r, ReceiptError::code);
        if let Ok(b) = r {
            assert_eq!(b, receipt_from(&case["fields"]), "{name}");
        }
    }
}

#[test]
fn receipt_vectors_are_reproducible() {
    assert_eq!(load("receipt.json"), gen_receipt());
}

// ---------------------------------------------------------------------------------------------
// generation

/// Rewrites every vector file. Run on purpose only (see the module doc).
#[test]
#[ignore = "rewrites tests/vectors; run explicitly after a deliberate format change"]
fn regenerate() {
    for (name, value) in [
        ("seal.json", gen_seal()),
        ("keyring.json", gen_keyring()),
        ("identity.json", gen_identity()),
        ("audit.json", gen_audit()),
        ("grant.json", gen_grant()),
        ("attestation.json", gen_attestation()),
        ("vouch.json", gen_vouch()),
        ("revocations.json", gen_revocations()),
        ("wrap.json", gen_wrap()),
        ("receipt.json", gen_receipt()),
        ("backup.json", gen_backup()),
        ("assist.json", gen_assist()),
    ] {
        if let Ok(only) = std::env::var("LOCKBOX_REGENERATE")
            && !only.split(',').any(|n| n.trim() == name)
        {
            continue;
        }
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        std::fs::write(path(name), text).unwrap();
    }
}

fn seal_case(
    name: &str,
    kek_id: u32,
    kek: &[u8],
    kind: RecordKind,
    record_id: &[u8],
    sealed: &[u8],
    expect: &str,
) -> Value {
    json!({
        "name": name,
        "kek_id": kek_id,
        "kek": hex::encode(kek),
        "kind": kind.label(),
        "record_id": hex::encode(record_id),
        "sealed": hex::encode(sealed),
        "expect": expect,
    })
}

fn gen_seal() -> Value {
    let kek_bytes: Vec<u8> = (0u8..32).collect();
    let kek = Kek::from_secret(1, &SecretBytes::new(kek_bytes.clone())).unwrap();
    let mut cases = Vec::new();
    let ok = [
        (
            "ok_material_32",
            RecordKind::Material,
            &b"key-0001"[..],
            vec![0xaa; 32],
        ),
        (
            "ok_material_64",
            RecordKind::Material,
            b"key-0002",
            vec![0x55; 64],
        ),
        (
            "ok_key_meta",
            RecordKind::KeyMeta,
            b"key-0001",
            b"{\"state\":\"active\"}".to_vec(),
        ),
        (
            "ok_node_signing_empty_id",
            RecordKind::NodeSigning,
            b"",
            vec![7; 32],
        ),
        (
            "ok_audit_head_empty_plaintext",
            RecordKind::AuditHead,
            b"head",
            Vec::new(),
        ),
    ];
    for (name, kind, id, pt) in &ok {
        let sealed = kek.seal(*kind, id, pt).unwrap();
        let mut c = seal_case(name, 1, &kek_bytes, *kind, id, &sealed, "ok");
        c["plaintext"] = json!(hex::encode(pt));
        cases.push(c);
    }

    let id = b"key-0001";
    let kind = RecordKind::Material;
    let sealed = kek.seal(kind, id, &[0xaa; 32]).unwrap();
    let mutated = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut s = sealed.clone();
        f(&mut s);
        s
    };
    let mut other_kek = kek_bytes.clone();
    other_kek[0] ^= 1;
    let fail = [
        (
            "fail_empty_record",
            1,
            &kek_bytes,
            kind,
            &id[..],
            Vec::new(),
            "malformed",
        ),
        (
            "fail_truncated_header",
            1,
            &kek_bytes,
            kind,
            id,
            sealed[..20].to_vec(),
            "malformed",
        ),
        (
            "fail_truncated_record",
            1,
            &kek_bytes,
            kind,
            id,
            sealed[..44].to_vec(),
            "malformed",
        ),
        (
            "fail_truncated_tag",
            1,
            &kek_bytes,
            kind,
            id,
            sealed[..sealed.len() - 1].to_vec(),
            "integrity_failed",
        ),
        (
            "fail_bad_version",
            1,
            &kek_bytes,
            kind,
            id,
            mutated(&|s| s[0] = 0x02),
            "unsupported_version",
        ),
        (
            "fail_flipped_tag",
            1,
            &kek_bytes,
            kind,
            id,
            mutated(&|s| *s.last_mut().unwrap() ^= 1),
            "integrity_failed",
        ),
        (
            "fail_flipped_ciphertext",
            1,
            &kek_bytes,
            kind,
            id,
            mutated(&|s| s[29] ^= 0x80),
            "integrity_failed",
        ),
        (
            "fail_flipped_nonce",
            1,
            &kek_bytes,
            kind,
            id,
            mutated(&|s| s[5] ^= 1),
            "integrity_failed",
        ),
        (
            "fail_trailing_byte",
            1,
            &kek_bytes,
            kind,
            id,
            mutated(&|s| s.push(0)),
            "integrity_failed",
        ),
        (
            "fail_swapped_record_id",
            1,
            &kek_bytes,
            kind,
            b"key-0002",
            sealed.clone(),
            "integrity_failed",
        ),
        (
            "fail_wrong_kind",
            1,
            &kek_bytes,
            RecordKind::KeyMeta,
            id,
            sealed.clone(),
            "integrity_failed",
        ),
        (
            "fail_wrong_kek",
            1,
            &other_kek,
            kind,
            id,
            sealed.clone(),
            "integrity_failed",
        ),
        (
            "fail_unknown_kek",
            2,
            &kek_bytes,
            kind,
            id,
            sealed.clone(),
            "unknown_kek",
        ),
        (
            "fail_relabelled_kek_id",
            2,
            &kek_bytes,
            kind,
            id,
            mutated(&|s| s[1..5].copy_from_slice(&2u32.to_be_bytes())),
            "integrity_failed",
        ),
    ];
    for (name, kek_id, k, kind, id, s, expect) in &fail {
        cases.push(seal_case(name, *kek_id, k, *kind, id, s, expect));
    }
    json!({
        "description": "Sealed records (SPEC.md 'Sealed record'). Open `sealed` with Kek(kek_id, kek) as `kind`/`record_id`; `expect` is ok or the error.",
        "cases": cases,
    })
}

const PASSPHRASE: &str = "correct horse battery staple";
const FAST_ARGON: Argon2Params = Argon2Params {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

fn record(u: &Unsealed, id: &[u8], pt: &[u8]) -> (Vec<u8>, Value) {
    let sealed = u.seal(RecordKind::Material, id, pt).unwrap();
    let v = json!({
        "kind": "material",
        "record_id": hex::encode(id),
        "sealed": hex::encode(&sealed),
        "plaintext": hex::encode(pt),
        "expect": "ok",
    });
    (sealed, v)
}

fn keyring_case(name: &str, keyring: &[u8], secret: &Value, expect: &str) -> Value {
    json!({ "name": name, "keyring": hex::encode(keyring), "secret": secret, "expect": expect })
}

fn gen_keyring() -> Value {
    let keyfile = vec![0x4b; 32];
    let kf_secret = json!({ "keyfile": hex::encode(&keyfile) });
    let pw_secret = json!({ "passphrase": PASSPHRASE });
    let kf = SecretBytes::new(keyfile.clone());
    let pw = SecretBytes::new(PASSPHRASE.as_bytes().to_vec());
    let mut cases = Vec::new();

    // One keyring through a whole rotation: created, rotating (KEKs 1 and 2), rotated (2 only).
    let (k1, u1) = Keyring::create(UnsealSecret::Keyfile(&kf), FAST_ARGON).unwrap();
    let (_, r1) = record(&u1, b"key-0001", &[1; 32]);
    let (k2, u2) = k1.add_kek(&u1).unwrap();
    let (_, r2) = record(&u2, b"key-0002", &[2; 32]);
    let (k3, u3) = k2.retain_current_only(&u2).unwrap();
    let (_, r3) = record(&u3, b"key-0003", &[3; 32]);
    let mut gone = r1.clone();
    gone["expect"] = json!("unknown_kek");
    for (name, k, ids, records) in [
        ("ok_keyfile", &k1, json!([1]), json!([r1])),
        ("ok_keyfile_rotating", &k2, json!([1, 2]), json!([r1, r2])),
        ("ok_keyfile_rotated", &k3, json!([2]), json!([r2, r3, gone])),
    ] {
        let mut c = keyring_case(name, &k.encode(), &kf_secret, "ok");
        c["method"] = json!("keyfile");
        c["kek_ids"] = ids;
        c["records"] = records;
        cases.push(c);
    }

    let (kp, up) = Keyring::create(UnsealSecret::Passphrase(&pw), FAST_ARGON).unwrap();
    let (_, rp) = record(&up, b"key-0001", &[9; 64]);
    let mut c = keyring_case("ok_passphrase", &kp.encode(), &pw_secret, "ok");
    c["method"] = json!("passphrase");
    c["kek_ids"] = json!([1]);
    c["records"] = json!([rp]);
    cases.push(c);

    let kb = k1.encode();
    let pb = kp.encode();
    let rb = k2.encode();
    let m = |src: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = src.to_vec();
        f(&mut b);
        b
    };
    const KEKS: usize = 108; // first KEK entry (SPEC.md)
    let fail = [
        ("fail_empty_keyring", Vec::new(), &kf_secret, "malformed"),
        (
            "fail_truncated_keyring",
            kb[..kb.len() - 1].to_vec(),
            &kf_secret,
            "malformed",
        ),
        (
            "fail_truncated_header",
            kb[..20].to_vec(),
            &kf_secret,
            "malformed",
        ),
        (
            "fail_trailing_bytes",
            m(&kb, &|b| b.push(0)),
            &kf_secret,
            "malformed",
        ),
        (
            "fail_bad_magic",
            m(&kb, &|b| b[0] = b'X'),
            &kf_secret,
            "malformed",
        ),
        (
            "fail_bad_version",
            m(&kb, &|b| b[4] = 3),
            &kf_secret,
            "unsupported_version",
        ),
        (
            "fail_unknown_method",
            m(&kb, &|b| b[5] = 3),
            &kf_secret,
            "malformed",
        ),
        (
            "fail_no_kek",
            m(&kb[..KEKS - 2], &|b| b.extend_from_slice(&[0, 0])),
            &kf_secret,
            "malformed",
        ),
        (
            "fail_kek_id_zero",
            m(&kb, &|b| b[KEKS..KEKS + 4].fill(0)),
            &kf_secret,
            "malformed",
        ),
        (
            "fail_kek_ids_not_ascending",
            m(&rb, &|b| {
                b[KEKS + 76..KEKS + 80].copy_from_slice(&1u32.to_be_bytes())
            }),
            &kf_secret,
            "malformed",
        ),
        (
            "fail_wrong_keyfile",
            kb.clone(),
            &json!({ "keyfile": hex::encode([0x4c; 32]) }),
            "wrong_unseal_secret",
        ),
        (
            "fail_keyfile_wrong_length",
            kb.clone(),
            &json!({ "keyfile": hex::encode([0x4b; 31]) }),
            "bad_length",
        ),
        (
            "fail_method_mismatch",
            kb.clone(),
            &pw_secret,
            "unseal_method_mismatch",
        ),
        (
            "fail_tampered_salt",
            m(&kb, &|b| b[18] ^= 1),
            &kf_secret,
            "wrong_unseal_secret",
        ),
        (
            "fail_tampered_wrapped_root",
            m(&kb, &|b| b[60] ^= 1),
            &kf_secret,
            "wrong_unseal_secret",
        ),
        (
            "fail_tampered_wrapped_kek",
            m(&kb, &|b| *b.last_mut().unwrap() ^= 1),
            &kf_secret,
            "integrity_failed",
        ),
        (
            "fail_relabelled_kek_id",
            m(&rb, &|b| {
                b[KEKS + 76..KEKS + 80].copy_from_slice(&3u32.to_be_bytes())
            }),
            &kf_secret,
            "integrity_failed",
        ),
        (
            "fail_wrong_passphrase",
            pb.clone(),
            &json!({ "passphrase": "correct horse battery stapler" }),
            "wrong_unseal_secret",
        ),
        (
            "fail_weakened_argon_params",
            m(&pb, &|b| b[6..10].copy_from_slice(&512u32.to_be_bytes())),
            &pw_secret,
            "wrong_unseal_secret",
        ),
        (
            "fail_argon_params_out_of_range",
            m(&pb, &|b| b[10..14].copy_from_slice(&1000u32.to_be_bytes())),
            &pw_secret,
            "malformed",
        ),
        (
            "fail_passphrase_relabelled_keyfile",
            m(&pb, &|b| b[5] = 1),
            &kf_secret,
            "malformed",
        ),
        (
            "fail_passphrase_downgraded_to_keyfile",
            m(&pb, &|b| {
                b[5] = 1;
                b[6..18].fill(0)
            }),
            &kf_secret,
            "wrong_unseal_secret",
        ),
    ];
    for (name, bytes, secret, expect) in &fail {
        cases.push(keyring_case(name, bytes, secret, expect));
    }
    cases.extend(gen_keyring_slots(&pw, &pw_secret, &kf_secret));
    json!({
        "description": "Keyring files (SPEC.md 'Keyring file'). Decode `keyring`, unseal with `secret`; `expect` is ok or the first error. Ok cases list kek_ids and records to open with the unsealed keyring.",
        "argon2_params_of_passphrase_cases": { "memory_kib": 1024, "iterations": 1, "parallelism": 1 },
        "cases": cases,
    })
}

/// Version-2 keyrings: a peers slot alone and with a recovery passphrase. The slot key stands
/// in for what the peers' shares rebuild; the shares themselves are covered by assist.json.
fn gen_keyring_slots(pw: &SecretBytes, pw_secret: &Value, kf_secret: &Value) -> Vec<Value> {
    use lockbox_crypto::assist::{AssistPeer, PeerSlot};
    let peers: Vec<AssistIdentity> = (0..3)
        .map(|_| AssistIdentity::generate().unwrap())
        .collect();
    let names = ["host-b", "host-c", "host-d"];
    let enroll_to: Vec<AssistPeer<'_>> = peers
        .iter()
        .zip(names)
        .map(|(p, node)| AssistPeer {
            node,
            public_key: p.public_key(),
        })
        .collect();
    let slot_key = SecretBytes::new(vec![0x5c; 32]);
    let key_secret = json!({ "peers_key": hex::encode([0x5c; 32]) });
    let slot = || PeerSlot::enroll(&slot_key, "host-a", &enroll_to, 2).unwrap();
    let (k1, u1) = Keyring::create_slots(NewSlot::Peers(slot(), &slot_key), None).unwrap();
    let (k2, u2) =
        Keyring::create_slots(NewSlot::Peers(slot(), &slot_key), Some((pw, FAST_ARGON))).unwrap();
    let mut cases = Vec::new();
    for (name, k, u, secret) in [
        ("ok_peers", &k1, &u1, &key_secret),
        ("ok_peers_with_recovery", &k2, &u2, &key_secret),
        ("ok_peers_opened_by_recovery", &k2, &u2, pw_secret),
    ] {
        let (_, rec) = record(u, b"key-0001", &[7; 32]);
        let mut c = keyring_case(name, &k.encode(), secret, "ok");
        c["method"] = json!("peers");
        c["kek_ids"] = json!([1]);
        c["records"] = json!([rec]);
        cases.push(c);
    }
    let b1 = k1.encode();
    let b2 = k2.encode();
    // First slot: magic(4) version(1) n(1) role(1) method(1) len(4) salt(16), then the peer
    // slot (SPEC.md "Peer slot") at 28: version, threshold, n, shares.
    let params_len = u32::from_be_bytes(b2[8..12].try_into().unwrap()) as usize;
    let second = 12 + params_len + 72; // role byte of the recovery slot
    let m = |src: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = src.to_vec();
        f(&mut b);
        b
    };
    // A lone keyfile slot in version 2: one encoding per keyring, so refused.
    let mut lone = b"LBKR\x02\x01\x00\x01".to_vec();
    lone.extend_from_slice(&16u32.to_be_bytes());
    lone.extend_from_slice(&[0x11; 16]);
    lone.extend_from_slice(&b1[b1.len() - 78 - 72..]);
    let peers_key = |b: u8, n: usize| json!({ "peers_key": hex::encode(vec![b; n]) });
    let fail: Vec<(&str, Vec<u8>, Value, &str)> = vec![
        (
            "fail_peers_wrong_slot_key",
            b1.clone(),
            peers_key(0x5d, 32),
            "wrong_unseal_secret",
        ),
        (
            "fail_peers_slot_key_wrong_length",
            b1.clone(),
            peers_key(0x5c, 31),
            "bad_length",
        ),
        (
            "fail_peers_no_recovery_slot",
            b1.clone(),
            pw_secret.clone(),
            "unseal_method_mismatch",
        ),
        (
            "fail_peers_keyfile_given",
            b1.clone(),
            kf_secret.clone(),
            "unseal_method_mismatch",
        ),
        (
            "fail_peers_tampered_salt",
            m(&b1, &|b| b[12] ^= 1),
            key_secret.clone(),
            "wrong_unseal_secret",
        ),
        (
            "fail_peers_slot_threshold_raised",
            m(&b1, &|b| b[29] = 3),
            key_secret.clone(),
            "wrong_unseal_secret",
        ),
        (
            "fail_peers_slot_bad_version",
            m(&b1, &|b| b[28] = 9),
            key_secret.clone(),
            "malformed",
        ),
        (
            "fail_slot_count_zero",
            m(&b1, &|b| b[5] = 0),
            key_secret.clone(),
            "malformed",
        ),
        (
            "fail_slot_count_three",
            m(&b2, &|b| b[5] = 3),
            key_secret.clone(),
            "malformed",
        ),
        (
            "fail_slot_params_length_past_end",
            m(&b1, &|b| b[8..12].copy_from_slice(&60000u32.to_be_bytes())),
            key_secret.clone(),
            "malformed",
        ),
        (
            "fail_primary_not_first",
            m(&b2, &|b| b[6] = 1),
            key_secret.clone(),
            "malformed",
        ),
        (
            "fail_two_primary_slots",
            m(&b2, &|b| b[second] = 0),
            key_secret.clone(),
            "malformed",
        ),
        (
            "fail_recovery_slot_not_passphrase",
            m(&b2, &|b| b[second + 1] = 1),
            key_secret.clone(),
            "malformed",
        ),
        (
            "fail_recovery_argon_weakened",
            m(&b2, &|b| {
                b[second + 22..second + 26].copy_from_slice(&512u32.to_be_bytes())
            }),
            pw_secret.clone(),
            "wrong_unseal_secret",
        ),
        (
            "fail_lone_keyfile_slot_in_version_2",
            lone,
            kf_secret.clone(),
            "malformed",
        ),
    ];
    for (name, bytes, secret, expect) in &fail {
        cases.push(keyring_case(name, bytes, secret, expect));
    }
    cases.extend(gen_keyring_tpm2(&k1, &u1, &slot_key, &enroll_to));
    cases
}

/// tpm2 and tpm2+peers slots: the TPM object is opaque to the keyring (any bytes stand in for
/// it here); what the TPM unseals and what the peers rebuild are given as secrets.
fn gen_keyring_tpm2(
    base: &Keyring,
    unsealed: &Unsealed,
    peers_key: &SecretBytes,
    enroll_to: &[lockbox_crypto::assist::AssistPeer<'_>],
) -> Vec<Value> {
    use lockbox_crypto::assist::PeerSlot;
    let tpm_key = SecretBytes::new(vec![0x7a; 32]);
    let blob: Vec<u8> = (0..200u8).collect();
    let t = base
        .rewrap(
            unsealed,
            NewSlot::Tpm2(blob.clone(), &tpm_key),
            RecoveryChange::Keep,
        )
        .unwrap();
    let tp = base
        .rewrap(
            unsealed,
            NewSlot::Tpm2Peers {
                blob,
                tpm_key: &tpm_key,
                slot: PeerSlot::enroll(peers_key, "host-a", enroll_to, 2).unwrap(),
                peers_key,
            },
            RecoveryChange::Keep,
        )
        .unwrap();
    let tpm_secret = json!({ "tpm2_key": hex::encode([0x7a; 32]) });
    let both = json!({ "tpm2_key": hex::encode([0x7a; 32]), "peers_key": hex::encode([0x5c; 32]) });
    let mut cases = Vec::new();
    for (name, k, secret, method) in [
        ("ok_tpm2", &t, &tpm_secret, "tpm2"),
        ("ok_tpm2_peers", &tp, &both, "tpm2+peers"),
    ] {
        let (_, rec) = record(unsealed, b"key-0001", &[7; 32]);
        let mut c = keyring_case(name, &k.encode(), secret, "ok");
        c["method"] = json!(method);
        c["kek_ids"] = json!([1]);
        c["records"] = json!([rec]);
        cases.push(c);
    }
    let tb = t.encode();
    let tpb = tp.encode();
    let m = |src: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = src.to_vec();
        f(&mut b);
        b
    };
    // params at 12: salt (16), then u32 blob length at 28, the blob at 32.
    let fail: Vec<(&str, Vec<u8>, Value, &str)> = vec![
        (
            "fail_tpm2_wrong_key",
            tb.clone(),
            json!({ "tpm2_key": hex::encode([0x7b; 32]) }),
            "wrong_unseal_secret",
        ),
        (
            "fail_tpm2_tampered_object",
            m(&tb, &|b| b[40] ^= 1),
            tpm_secret.clone(),
            "wrong_unseal_secret",
        ),
        (
            "fail_tpm2_empty_object",
            m(&tb, &|b| b[28..32].copy_from_slice(&0u32.to_be_bytes())),
            tpm_secret.clone(),
            "malformed",
        ),
        (
            "fail_tpm2_object_too_long",
            m(&tb, &|b| b[28..32].copy_from_slice(&9000u32.to_be_bytes())),
            tpm_secret.clone(),
            "malformed",
        ),
        (
            "fail_tpm2_peers_only_tpm_key",
            tpb.clone(),
            json!({ "tpm2_key": hex::encode([0x7a; 32]), "peers_key": hex::encode([0x7a; 32]) }),
            "wrong_unseal_secret",
        ),
        (
            "fail_tpm2_peers_only_peers_key",
            tpb.clone(),
            json!({ "tpm2_key": hex::encode([0x5c; 32]), "peers_key": hex::encode([0x5c; 32]) }),
            "wrong_unseal_secret",
        ),
        (
            "fail_tpm2_peers_given_tpm2_key",
            tpb.clone(),
            tpm_secret.clone(),
            "unseal_method_mismatch",
        ),
        (
            "fail_tpm2_relabelled_tpm2_peers",
            m(&tb, &|b| b[7] = 5),
            tpm_secret.clone(),
            "malformed",
        ),
    ];
    for (name, bytes, secret, expect) in &fail {
        cases.push(keyring_case(name, bytes, secret, expect));
    }
    cases
}

fn gen_identity() -> Value {
    // RFC 8032 section 7.1 TEST 1 and RFC 7748 section 6.1 (Alice), so public keys are
    // checked against outside values, not only against ourselves.
    let seed =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
    let x_secret =
        hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
    let signer = SigningIdentity::from_secret(&SecretBytes::new(seed.clone())).unwrap();
    let hpke = HpkeIdentity::from_secret(&SecretBytes::new(x_secret.clone())).unwrap();
    let pk = signer.public_key();
    let other = SigningIdentity::from_secret(&SecretBytes::new(vec![1; 32])).unwrap();

    let domain = "lockbox/v1/audit-checkpoint";
    let msg = checkpoint_message(42, &[0x11; 32]);
    let sig = signer.sign(domain, &msg);
    let mut flipped = sig;
    flipped[63] ^= 1;
    let mut flipped_r = sig;
    flipped_r[0] ^= 1;
    // A plain Ed25519 signature over msg, without the domain prefix, must not verify.
    let plain_sig = {
        use ed25519_dalek::Signer;
        let seed: [u8; 32] = seed.clone().try_into().unwrap();
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .sign(&msg)
            .to_bytes()
    };
    let mut other_msg = msg.clone();
    other_msg[7] ^= 1;
    let sig_case =
        |name: &str, pk: &[u8; 32], domain: &str, msg: &[u8], sig: &[u8], expect: &str| {
            json!({
                "name": name, "public_key": hex::encode(pk), "domain": domain,
                "msg": hex::encode(msg), "signature": hex::encode(sig), "expect": expect,
            })
        };
    json!({
        "description": "Ed25519 identity (signs domain || 0x00 || msg, strict verification), X25519 HPKE identity, checkpoint messages (SPEC.md).",
        "signing_keys": [{ "seed": hex::encode(&seed), "public_key": hex::encode(pk) }],
        "x25519_keys": [{ "secret": hex::encode(&x_secret), "public_key": hex::encode(hpke.public_key()) }],
        "signatures": [
            sig_case("ok_checkpoint", &pk, domain, &msg, &sig, "ok"),
            sig_case("ok_empty_message", &pk, "lockbox/v1/test", b"", &signer.sign("lockbox/v1/test", b""), "ok"),
            sig_case("fail_flipped_signature_s", &pk, domain, &msg, &flipped, "bad_signature"),
            sig_case("fail_flipped_signature_r", &pk, domain, &msg, &flipped_r, "bad_signature"),
            sig_case("fail_wrong_domain", &pk, "lockbox/v1/audit-checkpoinT", &msg, &sig, "bad_signature"),
            sig_case("fail_wrong_message", &pk, domain, &other_msg, &sig, "bad_signature"),
            sig_case("fail_wrong_key", &other.public_key(), domain, &msg, &sig, "bad_signature"),
            sig_case("fail_short_signature", &pk, domain, &msg, &sig[..63], "bad_length"),
            sig_case("fail_long_signature", &pk, domain, &msg, &[&sig[..], &[0]].concat(), "bad_length"),
            sig_case("fail_undomained_signature", &pk, domain, &msg, &plain_sig, "bad_signature"),
        ],
        "checkpoint_messages": [
            { "seq": 1, "prev_hash": hex::encode([0u8; 32]), "message": hex::encode(checkpoint_message(1, &[0; 32])) },
            { "seq": 42, "prev_hash": hex::encode([0x11; 32]), "message": hex::encode(&msg) },
        ],
    })
}

fn entry_fields(e: &AuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "prev_hash": hex::encode(e.prev_hash),
        "time_unix_ms": e.event.time_unix_ms,
        "actor": e.event.actor,
        "action": e.event.action,
        "key_id": e.event.key_id,
        "outcome": e.event.outcome,
        "detail": e.event.detail,
        "checkpoint": e.checkpoint.as_ref().map(|c| json!({
            "signer": hex::encode(c.signer),
            "signature": hex::encode(c.signature),
        })),
    })
}

fn gen_audit() -> Value {
    let signer = SigningIdentity::from_secret(&SecretBytes::new(vec![0xa1; 32])).unwrap();
    let forger = SigningIdentity::from_secret(&SecretBytes::new(vec![0xf0; 32])).unwrap();
    let events = [
        ("daemon", "init", "", "ok", "keyring created, kek 1"),
        (
            "uid:0",
            "key.create",
            "5f0c2a3e-8d7b-4c1a-9e2f-0a1b2c3d4e5f",
            "ok",
            "",
        ),
        (
            "spiffe://example.org/admin/alice",
            "key.get",
            "5f0c2a3e-8d7b-4c1a-9e2f-0a1b2c3d4e5f",
            "denied: uid 1000 not allowed",
            "",
        ),
        (
            "daemon",
            "kek.rotate",
            "",
            "ok",
            "kek 2 current; 1 dropped — ünïcode ok",
        ),
    ];
    let build = |signer: &SigningIdentity| {
        let mut prev = GENESIS_HASH;
        let mut out = Vec::new();
        for (i, (actor, action, key_id, outcome, detail)) in events.iter().enumerate() {
            let seq = i as u64 + 1;
            let entry = AuditEntry {
                seq,
                prev_hash: prev,
                event: AuditEvent {
                    time_unix_ms: 1_735_689_600_000 + seq * 1000,
                    actor: (*actor).into(),
                    action: (*action).into(),
                    key_id: (*key_id).into(),
                    outcome: (*outcome).into(),
                    detail: (*detail).into(),
                },
                checkpoint: (seq == 3).then(|| sign_checkpoint(signer, seq, &prev)),
            };
            prev = entry.hash();
            out.push(entry);
        }
        out
    };
    let chain = build(&signer);
    let enc: Vec<Vec<u8>> = chain.iter().map(AuditEntry::encode).collect();
    let records = |list: &[(u64, Vec<u8>)]| {
        list.iter()
            .map(|(s, b)| json!({ "stored_seq": s, "bytes": hex::encode(b) }))
            .collect::<Vec<_>>()
    };
    let stored: Vec<(u64, Vec<u8>)> = (1..).zip(enc.iter().cloned()).collect();
    let fail_chain = |name: &str, list: Vec<(u64, Vec<u8>)>, seq: u64, reason: &str| json!({ "name": name, "records": records(&list), "expect": { "seq": seq, "reason_starts_with": reason } });

    let mut edited = stored.clone();
    let mut e = chain[1].clone();
    e.event.outcome = "denied".into();
    edited[1].1 = e.encode();
    let mut dropped = stored.clone();
    dropped.remove(1);
    let mut moved = stored[..1].to_vec();
    moved.push((2, enc[2].clone()));
    let mut replayed = stored[..2].to_vec();
    replayed.push((3, enc[1].clone()));
    let forged: Vec<(u64, Vec<u8>)> = (1..)
        .zip(build(&forger).iter().map(AuditEntry::encode))
        .collect();
    let mut bad_sig = stored.clone();
    let mut e = chain[2].clone();
    if let Some(c) = &mut e.checkpoint {
        c.signature[10] ^= 1;
    }
    bad_sig[2].1 = e.encode();
    let mut trailing = stored.clone();
    trailing[1].1.push(0);

    let e3 = &enc[2];
    let m = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = e3.clone();
        f(&mut b);
        b
    };
    let flag = e3.len() - 97;
    let decode = [
        ("fail_empty_entry", Vec::new(), "malformed"),
        (
            "fail_truncated_entry",
            e3[..e3.len() - 1].to_vec(),
            "malformed",
        ),
        ("fail_truncated_text", e3[..60].to_vec(), "malformed"),
        ("fail_trailing_bytes", m(&|b| b.push(0)), "malformed"),
        ("fail_bad_version", m(&|b| b[0] = 2), "unsupported_version"),
        ("fail_bad_checkpoint_flag", m(&|b| b[flag] = 2), "malformed"),
        (
            "fail_text_length_overrun",
            m(&|b| b[49..53].copy_from_slice(&u32::MAX.to_be_bytes())),
            "malformed",
        ),
        ("fail_invalid_utf8", m(&|b| b[53] = 0xff), "malformed"),
        ("ok_entry_with_checkpoint", e3.clone(), "ok"),
    ];
    json!({
        "description": "Audit entries and chains (SPEC.md 'Audit entry'). Entries: fields, canonical bytes, hash. Chains: push records in order into ChainVerifier::new(trusted_signer); a fail_ chain names the seq and reason prefix of its first error.",
        "trusted_signer_seed": hex::encode([0xa1; 32]),
        "trusted_signer": hex::encode(signer.public_key()),
        "entries": chain.iter().zip(&enc).map(|(e, b)| json!({
            "fields": entry_fields(e), "bytes": hex::encode(b), "hash": hex::encode(e.hash()),
        })).collect::<Vec<_>>(),
        "decode": decode.iter().map(|(n, b, x)| json!({ "name": n, "bytes": hex::encode(b), "expect": x })).collect::<Vec<_>>(),
        "chains": [
            {
                "name": "ok_chain",
                "records": records(&stored),
                "expect": "ok",
                "summary": { "records": 4, "checkpoints": 1, "head_seq": 4, "head_hash": hex::encode(chain[3].hash()) },
            },
            fail_chain("fail_broken_chain", edited, 2, "hash chain broken"),
            fail_chain("fail_missing_record", dropped, 3, "missing record: expected seq 2, found 3"),
            fail_chain("fail_stored_under_other_seq", moved, 2, "stored under seq 2 but says 3"),
            fail_chain("fail_replayed_record", replayed, 3, "stored under seq 3 but says 2"),
            fail_chain("fail_untrusted_checkpoint", forged, 3, "checkpoint signed by untrusted key"),
            fail_chain("fail_bad_checkpoint_signature", bad_sig, 3, "checkpoint signature does not verify"),
            fail_chain("fail_trailing_bytes", trailing, 2, "undecodable: malformed audit entry (trailing bytes)"),
        ],
    })
}

const GRANT_T0: u64 = 1_735_689_600_000;
const KEY_1: &str = "5f0c2a3e-8d7b-4c1a-9e2f-0a1b2c3d4e5f";
const KEY_2: &str = "9b1d4c7e-2a3f-4e5d-8c6b-7a8f9e0d1c2b";

/// Controller `ctl-N`: Ed25519 seed 32 × (0xc0 + N). ctl-1..3 are trusted, ctl-9 is not.
fn ctl(n: u8) -> SigningIdentity {
    SigningIdentity::from_secret(&SecretBytes::new(vec![0xc0 + n; 32])).unwrap()
}

fn trusted_json() -> Value {
    json!((1..=3u8)
        .map(|n| json!({ "key_id": format!("ctl-{n}"), "public_key": hex::encode(ctl(n).public_key()) }))
        .collect::<Vec<_>>())
}

fn controllers_json() -> Value {
    json!(
        [1u8, 2, 3, 9]
            .iter()
            .map(|&n| {
                let pk = ctl(n).public_key();
                json!({
                    "key_id": format!("ctl-{n}"),
                    "seed": hex::encode([0xc0 + n; 32]),
                    "public_key": hex::encode(pk),
                    "public_key_text": encode_public_key(&pk),
                    "trusted": n != 9,
                })
            })
            .collect::<Vec<_>>()
    )
}

/// A `Signature` by ctl-N over `body` under `domain`, as `sign_*_body` makes it.
fn ctl_sig(domain: &str, n: u8, body: &[u8]) -> lockbox_proto::v1::Signature {
    lockbox_proto::v1::Signature {
        key_id: format!("ctl-{n}"),
        signature: ctl(n).sign(domain, body).to_vec(),
    }
}

/// Fills in what a case's verification actually gives, after checking it is what the
/// generator's author expected (so regenerating cannot silently bless a behaviour change).
fn settle<T, E: std::fmt::Display>(
    mut case: Value,
    r: std::result::Result<T, E>,
    code: impl Fn(&E) -> &'static str,
    signers: impl Fn(&T) -> Vec<String>,
) -> Value {
    let name = str_of(&case["name"]).to_string();
    match &r {
        Ok(v) => {
            assert_eq!(case["expect"], "ok", "generating {name}");
            case["valid_signers"] = json!(signers(v));
        }
        Err(e) => {
            assert_eq!(case["expect"], code(e), "generating {name}: {e}");
            case["error"] = json!(e.to_string());
        }
    }
    case
}

fn base_grant_body() -> GrantBody {
    GrantBody {
        grant_id: (0u8..16).collect(),
        key_ids: vec![KEY_1.into(), KEY_2.into()],
        source_node: "node-a".into(),
        dest_node: "node-b".into(),
        op: GrantOp::Move as i32,
        not_before_unix_ms: GRANT_T0,
        expires_unix_ms: GRANT_T0 + 300_000,
        requested_by: "spiffe://example.org/orchestrator/cinder".into(),
        issuer_key_id: "ctl-1".into(),
        reason: "migrate volume vol-1 (ticket OPS-42)".into(),
        trust_domain: "example.org".into(),
    }
}

fn gen_grant() -> Value {
    let trusted = trusted_from(&trusted_json());
    let body = base_grant_body();
    let raw = encode_grant_body(&body).unwrap();
    let sg = |raw: &[u8], sigs: Vec<lockbox_proto::v1::Signature>| SignedGrant {
        body: raw.to_vec(),
        signatures: sigs,
    };
    let by = |raw: &[u8], signers: &[u8]| {
        sg(
            raw,
            signers
                .iter()
                .map(|&n| ctl_sig(GRANT_DOMAIN, n, raw))
                .collect(),
        )
    };
    let edit = |f: &dyn Fn(&mut GrantBody)| {
        let mut b = base_grant_body();
        f(&mut b);
        b.encode_to_vec() // unchecked: these bodies must be refused by verifiers
    };

    let nb = GRANT_T0;
    let exp = GRANT_T0 + 300_000;
    let skew = 30_000u64;
    let source = json!({
        "now_unix_ms": nb + 60_000, "skew_ms": skew, "threshold": 1,
        "self_node": "node-a", "peer_node": "node-b", "side": "source", "key_ids": [KEY_1],
    });
    let dest = json!({
        "now_unix_ms": nb + 60_000, "skew_ms": skew, "threshold": 1,
        "self_node": "node-b", "peer_node": "node-a", "side": "destination", "key_ids": [KEY_1, KEY_2],
    });
    let with = |base: &Value, f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let two = with(&source, &|c| c["threshold"] = json!(2));

    let one = by(&raw, &[1]);
    let mut flipped = one.clone();
    flipped.signatures[0].signature[10] ^= 0x01;
    let mut short = one.clone();
    short.signatures[0].signature.truncate(63);
    let mut body_edited = one.clone();
    body_edited.body = encode_grant_body(&GrantBody {
        dest_node: "node-c".into(),
        ..base_grant_body()
    })
    .unwrap();
    let mut bad_among_good = by(&raw, &[1, 2, 3]);
    bad_among_good.signatures[2].signature[0] ^= 0x80;
    let mut unknown_field = raw.clone();
    unknown_field.extend_from_slice(&[0x60, 0x01]);
    let many = sg(&raw, vec![ctl_sig(GRANT_DOMAIN, 1, &raw); 33]);
    let copy = encode_grant_body(&GrantBody {
        op: GrantOp::Copy as i32,
        ..base_grant_body()
    })
    .unwrap();
    let replicate = encode_grant_body(&GrantBody {
        op: GrantOp::Replicate as i32,
        ..base_grant_body()
    })
    .unwrap();

    let cases: Vec<(&str, SignedGrant, Value, Vec<u8>, &str)> = vec![
        (
            "ok_source_one_signature",
            one.clone(),
            source.clone(),
            vec![],
            "ok",
        ),
        (
            "ok_destination_one_signature",
            one.clone(),
            dest.clone(),
            vec![],
            "ok",
        ),
        (
            "ok_two_of_three",
            by(&raw, &[1, 3]),
            two.clone(),
            vec![],
            "ok",
        ),
        (
            "ok_three_signatures_threshold_two",
            by(&raw, &[3, 2, 1]),
            two.clone(),
            vec![],
            "ok",
        ),
        (
            "ok_unknown_signer_skipped",
            by(&raw, &[9, 2]),
            source.clone(),
            vec![],
            "ok",
        ),
        (
            "ok_peer_not_known",
            one.clone(),
            with(&source, &|c| c["peer_node"] = Value::Null),
            vec![],
            "ok",
        ),
        (
            "ok_no_key_ids_requested",
            one.clone(),
            with(&dest, &|c| c["key_ids"] = Value::Null),
            vec![],
            "ok",
        ),
        (
            "ok_other_grant_consumed",
            one.clone(),
            dest.clone(),
            vec![0xee; 16],
            "ok",
        ),
        (
            "ok_not_before_at_skew_edge",
            one.clone(),
            with(&source, &|c| c["now_unix_ms"] = json!(nb - skew)),
            vec![],
            "ok",
        ),
        (
            "ok_expires_at_skew_edge",
            one.clone(),
            with(&source, &|c| c["now_unix_ms"] = json!(exp + skew - 1)),
            vec![],
            "ok",
        ),
        ("ok_copy", by(&copy, &[2]), source.clone(), vec![], "ok"),
        (
            "ok_replicate",
            by(&replicate, &[2]),
            dest.clone(),
            vec![],
            "ok",
        ),
        (
            "fail_body_not_protobuf",
            by(&[0xff; 8], &[1]),
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_body_unknown_field",
            by(&unknown_field, &[1]),
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_body_empty",
            by(&[], &[1]),
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_grant_id_15_bytes",
            by(&edit(&|b| b.grant_id.truncate(15)), &[1]),
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_no_key_ids",
            by(&edit(&|b| b.key_ids.clear()), &[1]),
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_duplicate_key_id",
            by(&edit(&|b| b.key_ids.push(KEY_1.into())), &[1]),
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_op_unspecified",
            by(&edit(&|b| b.op = 0), &[1]),
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_empty_window",
            by(&edit(&|b| b.expires_unix_ms = b.not_before_unix_ms), &[1]),
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_same_source_and_destination",
            by(&edit(&|b| b.dest_node = "node-a".into()), &[1]),
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_too_many_signatures",
            many,
            source.clone(),
            vec![],
            "malformed",
        ),
        (
            "fail_unknown_signer",
            by(&raw, &[9]),
            source.clone(),
            vec![],
            "unknown_signer",
        ),
        (
            "fail_unknown_signer_below_threshold",
            by(&raw, &[1, 9]),
            two.clone(),
            vec![],
            "unknown_signer",
        ),
        (
            "fail_bad_signature_flipped",
            flipped,
            source.clone(),
            vec![],
            "bad_signature",
        ),
        (
            "fail_bad_signature_short",
            short,
            source.clone(),
            vec![],
            "bad_signature",
        ),
        (
            "fail_bad_signature_body_edited",
            body_edited,
            source.clone(),
            vec![],
            "bad_signature",
        ),
        (
            "fail_bad_signature_attestation_domain",
            sg(&raw, vec![ctl_sig(ATTESTATION_DOMAIN, 1, &raw)]),
            source.clone(),
            vec![],
            "bad_signature",
        ),
        (
            "fail_bad_signature_among_valid",
            bad_among_good,
            two.clone(),
            vec![],
            "bad_signature",
        ),
        (
            "fail_threshold_one_of_two",
            by(&raw, &[2]),
            two.clone(),
            vec![],
            "threshold_not_met",
        ),
        (
            "fail_threshold_same_signer_twice",
            by(&raw, &[2, 2]),
            two.clone(),
            vec![],
            "threshold_not_met",
        ),
        (
            "fail_no_signatures",
            by(&raw, &[]),
            source.clone(),
            vec![],
            "threshold_not_met",
        ),
        (
            "fail_not_yet_valid",
            one.clone(),
            with(&source, &|c| c["now_unix_ms"] = json!(nb - skew - 1)),
            vec![],
            "not_yet_valid",
        ),
        (
            "fail_expired",
            one.clone(),
            with(&source, &|c| c["now_unix_ms"] = json!(exp + skew)),
            vec![],
            "expired",
        ),
        (
            "fail_source_side_not_the_source",
            one.clone(),
            with(&source, &|c| c["self_node"] = json!("node-c")),
            vec![],
            "wrong_source",
        ),
        (
            "fail_source_side_peer_not_the_destination",
            one.clone(),
            with(&source, &|c| c["peer_node"] = json!("node-c")),
            vec![],
            "wrong_destination",
        ),
        (
            "fail_destination_side_not_the_destination",
            one.clone(),
            with(&dest, &|c| c["self_node"] = json!("node-c")),
            vec![],
            "wrong_destination",
        ),
        (
            "fail_destination_side_peer_not_the_source",
            one.clone(),
            with(&dest, &|c| c["peer_node"] = json!("node-c")),
            vec![],
            "wrong_source",
        ),
        (
            "fail_key_not_covered",
            one.clone(),
            with(&source, &|c| {
                c["key_ids"] = json!([KEY_1, "0d7e3b1a-0000-4000-8000-000000000000"])
            }),
            vec![],
            "key_not_covered",
        ),
        (
            "fail_already_consumed",
            one.clone(),
            dest.clone(),
            (0u8..16).collect(),
            "already_consumed",
        ),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(name, signed, ctx, consumed, expect)| {
            let consumed: Vec<String> = if consumed.is_empty() {
                vec![]
            } else {
                vec![hex::encode(consumed)]
            };
            let case = json!({
                "name": name,
                "signed_grant": hex::encode(signed.encode_to_vec()),
                "context": ctx,
                "consumed": consumed,
                "expect": expect,
            });
            let r = run_grant_case(&trusted, &case);
            settle(case, r, GrantError::code, |g| g.valid_signers.clone())
        })
        .collect();

    // Text armor, around the 2-of-3 grant.
    let g = by(&raw, &[1, 3]);
    let g_bytes = g.encode_to_vec();
    let canonical = grant_to_text(&g);
    let b64: String = canonical
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let armor = |inner: &str| {
        format!("-----BEGIN LOCKBOX GRANT-----\n{inner}\n-----END LOCKBOX GRANT-----\n")
    };
    let b64_of = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let mut with_unknown = g_bytes.clone();
    with_unknown.extend_from_slice(&[0x18, 0x01]);
    let text_cases: Vec<(&str, String, &str)> = vec![
        ("ok_text", canonical.clone(), "ok"),
        (
            "ok_text_surrounding_whitespace",
            format!("\n\n  {canonical}\n \t\n"),
            "ok",
        ),
        (
            "ok_text_crlf_indented",
            canonical.lines().map(|l| format!("    {l}\r\n")).collect(),
            "ok",
        ),
        (
            "ok_text_one_line_no_final_newline",
            armor(&b64).trim_end().to_string(),
            "ok",
        ),
        ("fail_text_empty", String::new(), "malformed"),
        ("fail_text_bare_base64", b64.clone(), "malformed"),
        (
            "fail_text_no_begin",
            canonical.replacen("-----BEGIN LOCKBOX GRANT-----\n", "", 1),
            "malformed",
        ),
        (
            "fail_text_no_end",
            canonical.replace("-----END LOCKBOX GRANT-----\n", ""),
            "malformed",
        ),
        (
            "fail_text_other_label",
            canonical.replace("LOCKBOX GRANT", "PGP MESSAGE"),
            "malformed",
        ),
        (
            "fail_text_trailing_text",
            format!("{canonical}-- \nsent from my phone\n"),
            "malformed",
        ),
        (
            "fail_text_blank_line",
            canonical.replacen('\n', "\n\n", 2),
            "malformed",
        ),
        (
            "fail_text_header",
            canonical.replacen('\n', "\nVersion: 1\n", 1),
            "malformed",
        ),
        (
            "fail_text_bad_character",
            armor(&format!("*{}", &b64[1..])),
            "malformed",
        ),
        (
            "fail_text_truncated_base64",
            armor(&b64[..b64.len() - 1]),
            "malformed",
        ),
        (
            "fail_text_noncanonical_padding_bits",
            armor("AAAAAB=="),
            "malformed",
        ),
        (
            "fail_text_not_a_signed_grant",
            armor(&b64_of(&[0xff; 9])),
            "malformed",
        ),
        (
            "fail_text_unknown_field",
            armor(&b64_of(&with_unknown)),
            "malformed",
        ),
    ];
    let text: Vec<Value> = text_cases
        .into_iter()
        .map(|(name, text, expect)| {
            let mut case = json!({ "name": name, "text": text, "expect": expect });
            if expect == "ok" {
                case["signed_grant"] = json!(hex::encode(&g_bytes));
                case["canonical"] = json!(name == "ok_text");
            }
            let r = grant_from_text(&text);
            settle(case, r, GrantError::code, |_| Vec::new())
        })
        .map(|mut c| {
            if let Some(o) = c.as_object_mut() {
                o.remove("valid_signers");
            }
            c
        })
        .collect();

    let pk = ctl(1).public_key();
    let b64_pk = b64_of(&pk);
    let mut small = [0u8; 32];
    small[0] = 1;
    let not_a_point = (2u8..)
        .map(|b| [b; 32])
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .unwrap();
    let pk_cases = [
        ("ok_ed25519_base64", encode_public_key(&pk), "ok"),
        ("ok_hex_lowercase", hex::encode(pk), "ok"),
        ("ok_hex_uppercase", hex::encode_upper(pk), "ok"),
        ("fail_base64_without_prefix", b64_pk.clone(), "malformed"),
        ("fail_other_prefix", format!("x25519:{b64_pk}"), "malformed"),
        (
            "fail_unpadded_base64",
            format!("ed25519:{}", b64_pk.trim_end_matches('=')),
            "malformed",
        ),
        (
            "fail_surrounding_whitespace",
            format!(" {}\n", encode_public_key(&pk)),
            "malformed",
        ),
        (
            "fail_31_bytes",
            format!("ed25519:{}", b64_of(&pk[..31])),
            "bad_length",
        ),
        (
            "fail_33_bytes",
            format!("ed25519:{}", b64_of(&[&pk[..], &[0]].concat())),
            "bad_length",
        ),
        (
            "fail_hex_63_digits",
            hex::encode(pk)[..63].to_string(),
            "malformed",
        ),
        (
            "fail_hex_bad_digit",
            format!("{}x", &hex::encode(pk)[..63]),
            "malformed",
        ),
        (
            "fail_small_order_key",
            encode_public_key(&small),
            "malformed",
        ),
        (
            "fail_not_a_curve_point",
            hex::encode(not_a_point),
            "malformed",
        ),
    ];
    let pk_cases: Vec<Value> = pk_cases
        .iter()
        .map(|(name, text, expect)| {
            let r = decode_public_key(text);
            assert_eq!(outcome(&r), *expect, "generating {name}");
            let mut c = json!({ "name": name, "text": text, "expect": expect });
            if r.is_ok() {
                c["public_key"] = json!(hex::encode(pk));
            }
            c
        })
        .collect();

    json!({
        "description": "Grants (SPEC.md 'Grants', 'Controller keys', 'Counting signatures'). bodies: fields, canonical bytes, and the bytes signed (\"lockbox/v1/grant\" || 0x00 || body). cases: verify_grant(SignedGrant protobuf bytes, trusted, context, consumed grant ids); expect is ok or the GrantError code, error its message. text: grant_from_text. public_key_text: decode_public_key. Controller ctl-N has Ed25519 seed 32 x (0xc0+N); ctl-9 is not trusted.",
        "controllers": controllers_json(),
        "trusted": trusted_json(),
        "public_key_text": pk_cases,
        "bodies": [{
            "fields": grant_body_fields(&body),
            "bytes": hex::encode(&raw),
            "signed_bytes": hex::encode([GRANT_DOMAIN.as_bytes(), &[0], &raw].concat()),
        }],
        "cases": cases,
        "text": text,
    })
}

fn gen_attestation() -> Value {
    use sha2::Digest;
    let trusted = trusted_from(&trusted_json());
    // The node: Ed25519 seed 32 x 0xb1; X25519 secret of RFC 7748 section 6.1 (Bob).
    let signing = SigningIdentity::from_secret(&SecretBytes::new(vec![0xb1; 32])).unwrap();
    let x_secret =
        hex::decode("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb").unwrap();
    let hpke = HpkeIdentity::from_secret(&SecretBytes::new(x_secret.clone())).unwrap();
    let tls: [u8; 32] = sha2::Sha256::digest(b"example SubjectPublicKeyInfo of node-b").into();
    let nb = GRANT_T0;
    let exp = GRANT_T0 + 86_400_000;
    let body = AttestationBody {
        node: "node-b".into(),
        trust_domain: "example.org".into(),
        hpke_public_key: hpke.public_key().to_vec(),
        hpke_kem_id: HPKE_KEM_X25519,
        signing_public_key: signing.public_key().to_vec(),
        tls_spki_sha256: tls.to_vec(),
        not_before_unix_ms: nb,
        expires_unix_ms: exp,
        issuer_key_id: "ctl-1".into(),
        assist_public_key: Vec::new(),
    };
    let raw = encode_attestation_body(&body).unwrap();
    // The node's assist key (peer-assisted unseal): scalar 0x03 || 31 x 0x00, i.e. 3·G on
    // ristretto255 (the RFC 9496 A.1 multiple).
    let assist =
        AssistIdentity::from_secret(&SecretBytes::new([&[3u8][..], &[0u8; 31][..]].concat()))
            .unwrap()
            .public_key();
    let with_assist = AttestationBody {
        assist_public_key: assist.to_vec(),
        ..body.clone()
    };
    let raw_assist = encode_attestation_body(&with_assist).unwrap();
    let sa = |raw: &[u8], sigs: Vec<lockbox_proto::v1::Signature>| SignedAttestation {
        body: raw.to_vec(),
        signatures: sigs,
    };
    let by = |raw: &[u8], signers: &[u8]| {
        sa(
            raw,
            signers
                .iter()
                .map(|&n| ctl_sig(ATTESTATION_DOMAIN, n, raw))
                .collect(),
        )
    };
    let edit = |f: &dyn Fn(&mut AttestationBody)| {
        let mut b = body.clone();
        f(&mut b);
        b.encode_to_vec()
    };
    let skew = 60_000u64;
    let base = json!({
        "now_unix_ms": nb + 3_600_000, "skew_ms": skew, "threshold": 1,
        "expected_node": "node-b", "peer_tls_spki_sha256": hex::encode(tls),
    });
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let two = with(&|c| c["threshold"] = json!(2));
    let one = by(&raw, &[1]);
    let mut flipped = one.clone();
    flipped.signatures[0].signature[33] ^= 0x04;
    let mut unknown_field = raw.clone();
    unknown_field.extend_from_slice(&[0x58, 0x01]);
    let mut small = vec![0u8; 32];
    small[0] = 1;
    let mut negative = assist;
    negative[0] |= 1;

    let cases: Vec<(&str, SignedAttestation, Value, &str)> = vec![
        ("ok_attestation", one.clone(), base.clone(), "ok"),
        ("ok_two_of_three", by(&raw, &[2, 3]), two.clone(), "ok"),
        (
            "ok_nothing_expected",
            one.clone(),
            with(&|c| {
                c["expected_node"] = Value::Null;
                c["peer_tls_spki_sha256"] = Value::Null;
            }),
            "ok",
        ),
        (
            "ok_not_before_at_skew_edge",
            one.clone(),
            with(&|c| c["now_unix_ms"] = json!(nb - skew)),
            "ok",
        ),
        (
            "ok_expires_at_skew_edge",
            one.clone(),
            with(&|c| c["now_unix_ms"] = json!(exp + skew - 1)),
            "ok",
        ),
        (
            "ok_unknown_signer_skipped",
            by(&raw, &[9, 1]),
            base.clone(),
            "ok",
        ),
        (
            "ok_with_assist_key",
            by(&raw_assist, &[1]),
            base.clone(),
            "ok",
        ),
        (
            "fail_assist_key_31_bytes",
            by(
                &edit(&|b| b.assist_public_key = assist[..31].to_vec()),
                &[1],
            ),
            base.clone(),
            "malformed",
        ),
        (
            "fail_assist_key_not_canonical",
            by(&edit(&|b| b.assist_public_key = negative.to_vec()), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_assist_key_identity",
            by(&edit(&|b| b.assist_public_key = vec![0; 32]), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_assist_key_stripped",
            sa(&raw, by(&raw_assist, &[1]).signatures),
            base.clone(),
            "bad_signature",
        ),
        (
            "fail_body_not_protobuf",
            by(&[0xff; 5], &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_body_unknown_field",
            by(&unknown_field, &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_empty_node",
            by(&edit(&|b| b.node.clear()), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_empty_trust_domain",
            by(&edit(&|b| b.trust_domain.clear()), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_unsupported_kem",
            by(&edit(&|b| b.hpke_kem_id = 0x647a), &[1]),
            base.clone(),
            "unsupported_kem",
        ),
        (
            "fail_hpke_key_31_bytes",
            by(
                &edit(&|b| {
                    b.hpke_public_key.pop();
                }),
                &[1],
            ),
            base.clone(),
            "malformed",
        ),
        (
            "fail_signing_key_small_order",
            by(&edit(&|b| b.signing_public_key = small.clone()), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_tls_hash_missing",
            by(&edit(&|b| b.tls_spki_sha256.clear()), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_empty_window",
            by(&edit(&|b| b.not_before_unix_ms = b.expires_unix_ms), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_unknown_signer",
            by(&raw, &[9]),
            base.clone(),
            "unknown_signer",
        ),
        ("fail_bad_signature", flipped, base.clone(), "bad_signature"),
        (
            "fail_bad_signature_grant_domain",
            sa(&raw, vec![ctl_sig(GRANT_DOMAIN, 1, &raw)]),
            base.clone(),
            "bad_signature",
        ),
        (
            "fail_threshold_not_met",
            by(&raw, &[3]),
            two.clone(),
            "threshold_not_met",
        ),
        (
            "fail_threshold_same_signer_twice",
            by(&raw, &[3, 3]),
            two.clone(),
            "threshold_not_met",
        ),
        (
            "fail_not_yet_valid",
            one.clone(),
            with(&|c| c["now_unix_ms"] = json!(nb - skew - 1)),
            "not_yet_valid",
        ),
        (
            "fail_expired",
            one.clone(),
            with(&|c| c["now_unix_ms"] = json!(exp + skew)),
            "expired",
        ),
        (
            "fail_wrong_node",
            one.clone(),
            with(&|c| c["expected_node"] = json!("node-c")),
            "wrong_node",
        ),
        (
            "fail_wrong_tls_key",
            one.clone(),
            with(&|c| c["peer_tls_spki_sha256"] = json!(hex::encode([0x00; 32]))),
            "wrong_tls_key",
        ),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(name, signed, ctx, expect)| {
            let case = json!({
                "name": name,
                "signed_attestation": hex::encode(signed.encode_to_vec()),
                "context": ctx,
                "expect": expect,
            });
            let r = run_attestation_case(&trusted, &case);
            settle(case, r, AttestationError::code, |a| a.valid_signers.clone())
        })
        .collect();

    // Proof of possession.
    let hpke_pk = hpke.public_key();
    let sign_pk = signing.public_key();
    let fields = |node: &str, td: &str, kem: u32, hpke: &[u8], sign: &[u8], tls: &[u8; 32]| {
        json!({
            "node": node, "trust_domain": td, "hpke_kem_id": kem, "hpke_public_key": hex::encode(hpke),
            "signing_public_key": hex::encode(sign), "tls_spki_sha256": hex::encode(tls),
        })
    };
    let msg = attest_request_message(
        "node-b",
        "example.org",
        HPKE_KEM_X25519,
        &hpke_pk,
        &sign_pk,
        &tls,
        None,
    );
    let proof = sign_attest_request(&signing, &msg);
    let with_key = |mut f: Value, key: &[u8; 32]| {
        f["assist_public_key"] = json!(hex::encode(key));
        f
    };
    let msg_assist = attest_request_message(
        "node-b",
        "example.org",
        HPKE_KEM_X25519,
        &hpke_pk,
        &sign_pk,
        &tls,
        Some(&assist),
    );
    let proof_assist = sign_attest_request(&signing, &msg_assist);
    let mut flipped_proof = proof.clone();
    flipped_proof[5] ^= 0x20;
    let grant_domain_proof = signing.sign(GRANT_DOMAIN, &msg).to_vec();
    let other = ctl(1).public_key();
    let requests = [
        (
            "ok_proof",
            fields("node-b", "example.org", 0x20, &hpke_pk, &sign_pk, &tls),
            proof.clone(),
            "ok",
        ),
        (
            "fail_other_node",
            fields("node-c", "example.org", 0x20, &hpke_pk, &sign_pk, &tls),
            proof.clone(),
            "bad_signature",
        ),
        (
            "fail_other_trust_domain",
            fields("node-b", "example.net", 0x20, &hpke_pk, &sign_pk, &tls),
            proof.clone(),
            "bad_signature",
        ),
        (
            "fail_other_hpke_key",
            fields("node-b", "example.org", 0x20, &other, &sign_pk, &tls),
            proof.clone(),
            "bad_signature",
        ),
        (
            "fail_other_tls_key",
            fields("node-b", "example.org", 0x20, &hpke_pk, &sign_pk, &[0; 32]),
            proof.clone(),
            "bad_signature",
        ),
        (
            "fail_other_signing_key",
            fields("node-b", "example.org", 0x20, &hpke_pk, &other, &tls),
            proof.clone(),
            "bad_signature",
        ),
        (
            "fail_flipped_proof",
            fields("node-b", "example.org", 0x20, &hpke_pk, &sign_pk, &tls),
            flipped_proof,
            "bad_signature",
        ),
        (
            "fail_grant_domain_proof",
            fields("node-b", "example.org", 0x20, &hpke_pk, &sign_pk, &tls),
            grant_domain_proof,
            "bad_signature",
        ),
        (
            "fail_short_proof",
            fields("node-b", "example.org", 0x20, &hpke_pk, &sign_pk, &tls),
            proof[..63].to_vec(),
            "bad_length",
        ),
        (
            "ok_proof_with_assist_key",
            with_key(
                fields("node-b", "example.org", 0x20, &hpke_pk, &sign_pk, &tls),
                &assist,
            ),
            proof_assist.clone(),
            "ok",
        ),
        (
            "fail_assist_key_stripped",
            fields("node-b", "example.org", 0x20, &hpke_pk, &sign_pk, &tls),
            proof_assist.clone(),
            "bad_signature",
        ),
        (
            "fail_assist_key_added",
            with_key(
                fields("node-b", "example.org", 0x20, &hpke_pk, &sign_pk, &tls),
                &assist,
            ),
            proof.clone(),
            "bad_signature",
        ),
        (
            "fail_other_assist_key",
            with_key(
                fields("node-b", "example.org", 0x20, &hpke_pk, &sign_pk, &tls),
                &[0x42; 32],
            ),
            proof_assist.clone(),
            "bad_signature",
        ),
        (
            "fail_short_signing_key",
            fields(
                "node-b",
                "example.org",
                0x20,
                &hpke_pk,
                &sign_pk[..31],
                &tls,
            ),
            proof.clone(),
            "bad_length",
        ),
    ];
    let requests: Vec<Value> = requests
        .into_iter()
        .map(|(name, f, proof, expect)| {
            let msg = attest_request_message_of(&f);
            let r = verify_attest_request(&bytes(&f["signing_public_key"]), &msg, &proof);
            assert_eq!(outcome(&r), expect, "generating {name}");
            json!({
                "name": name, "fields": f, "message": hex::encode(&msg),
                "proof": hex::encode(&proof), "expect": expect,
            })
        })
        .collect();

    json!({
        "description": "Attestations (SPEC.md 'Attestations'). bodies: fields, canonical bytes, bytes signed (\"lockbox/v1/attestation\" || 0x00 || body). cases: verify_attestation(SignedAttestation protobuf bytes, trusted, context); expect is ok or the AttestationError code, error its message. attest_requests: attest_request_message(fields) = message (lp(assist_public_key) appended only when the fields have one); verify_attest_request(signing_public_key, message, proof). Controllers as in grant.json; the node's Ed25519 seed is 32 x 0xb1, its X25519 secret RFC 7748 6.1 (Bob), its ristretto255 assist scalar 3 (public key 3·G).",
        "node": {
            "signing_seed": hex::encode([0xb1; 32]),
            "signing_public_key": hex::encode(sign_pk),
            "x25519_secret": hex::encode(&x_secret),
            "hpke_public_key": hex::encode(hpke_pk),
            "assist_public_key": hex::encode(assist),
        },
        "trusted": trusted_json(),
        "bodies": ([&body, &with_assist].iter().map(|b| {
            let raw = encode_attestation_body(b).unwrap();
            json!({
                "fields": attestation_body_fields(b),
                "bytes": hex::encode(&raw),
                "signed_bytes": hex::encode([ATTESTATION_DOMAIN.as_bytes(), &[0], &raw].concat()),
            })
        }).collect::<Vec<_>>()),
        "cases": cases,
        "attest_requests": requests,
    })
}

/// Vouches (SPEC.md "Vouches"): fully deterministic, Ed25519 signing is.
fn gen_vouch() -> Value {
    use sha2::Digest;
    let trusted = trusted_from(&trusted_json());
    let tls: [u8; 32] = sha2::Sha256::digest(b"example SubjectPublicKeyInfo of node-a").into();
    let nb = GRANT_T0;
    let exp = GRANT_T0 + 300_000;
    let body = VouchBody {
        node: "node-a".into(),
        trust_domain: "example.org".into(),
        tls_spki_sha256: tls.to_vec(),
        not_before_unix_ms: nb,
        expires_unix_ms: exp,
        issuer_key_id: "ctl-1".into(),
    };
    let raw = encode_vouch_body(&body).unwrap();
    let sv = |raw: &[u8], sigs: Vec<lockbox_proto::v1::Signature>| SignedVouch {
        body: raw.to_vec(),
        signatures: sigs,
    };
    let by = |raw: &[u8], signers: &[u8]| {
        sv(
            raw,
            signers
                .iter()
                .map(|&n| ctl_sig(VOUCH_DOMAIN, n, raw))
                .collect(),
        )
    };
    // Bodies no controller encodes (encode_vouch_body refuses them), signed anyway.
    let edit = |f: &dyn Fn(&mut VouchBody)| {
        let mut b = body.clone();
        f(&mut b);
        b.encode_to_vec()
    };
    let hour = VouchBody {
        expires_unix_ms: nb + 3_600_000,
        ..body.clone()
    };
    let raw_hour = encode_vouch_body(&hour).unwrap();
    let skew = 60_000u64;
    let base = json!({
        "now_unix_ms": nb + 60_000, "skew_ms": skew, "threshold": 1,
        "expected_node": "node-a", "peer_tls_spki_sha256": hex::encode(tls),
    });
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let two = with(&|c| c["threshold"] = json!(2));
    let one = by(&raw, &[1]);
    let mut flipped = one.clone();
    flipped.signatures[0].signature[17] ^= 0x01;
    let mut unknown_field = raw.clone();
    unknown_field.extend_from_slice(&[0x38, 0x01]);
    let mut many = one.clone();
    many.signatures = vec![one.signatures[0].clone(); 33];

    let cases: Vec<(&str, SignedVouch, Value, &str)> = vec![
        ("ok_vouch", one.clone(), base.clone(), "ok"),
        ("ok_two_of_three", by(&raw, &[3, 2]), two.clone(), "ok"),
        (
            "ok_unknown_signer_skipped",
            by(&raw, &[9, 1]),
            base.clone(),
            "ok",
        ),
        (
            "ok_one_hour_lifetime",
            by(&raw_hour, &[1]),
            base.clone(),
            "ok",
        ),
        (
            "ok_not_before_at_skew_edge",
            one.clone(),
            with(&|c| c["now_unix_ms"] = json!(nb - skew)),
            "ok",
        ),
        (
            "ok_expires_at_skew_edge",
            one.clone(),
            with(&|c| c["now_unix_ms"] = json!(exp + skew - 1)),
            "ok",
        ),
        ("fail_too_many_signatures", many, base.clone(), "malformed"),
        (
            "fail_body_not_protobuf",
            by(&[0xff; 5], &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_body_unknown_field",
            by(&unknown_field, &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_empty_node",
            by(&edit(&|b| b.node.clear()), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_node_256_bytes",
            by(&edit(&|b| b.node = "n".repeat(256)), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_empty_trust_domain",
            by(&edit(&|b| b.trust_domain.clear()), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_tls_hash_31_bytes",
            by(&edit(&|b| b.tls_spki_sha256.truncate(31)), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_empty_window",
            by(&edit(&|b| b.expires_unix_ms = b.not_before_unix_ms), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_issuer_key_id_129_bytes",
            by(&edit(&|b| b.issuer_key_id = "k".repeat(129)), &[1]),
            base.clone(),
            "malformed",
        ),
        (
            "fail_lifetime_one_hour_and_1_ms",
            by(
                &edit(&|b| b.expires_unix_ms = b.not_before_unix_ms + 3_600_001),
                &[1],
            ),
            base.clone(),
            "lifetime_too_long",
        ),
        (
            "fail_lifetime_a_day",
            by(
                &edit(&|b| b.expires_unix_ms = b.not_before_unix_ms + 86_400_000),
                &[1],
            ),
            base.clone(),
            "lifetime_too_long",
        ),
        (
            "fail_unknown_signer",
            by(&raw, &[9]),
            base.clone(),
            "unknown_signer",
        ),
        ("fail_bad_signature", flipped, base.clone(), "bad_signature"),
        (
            "fail_bad_signature_attestation_domain",
            sv(&raw, vec![ctl_sig(ATTESTATION_DOMAIN, 1, &raw)]),
            base.clone(),
            "bad_signature",
        ),
        (
            "fail_bad_signature_revocations_domain",
            sv(&raw, vec![ctl_sig(REVOCATIONS_DOMAIN, 1, &raw)]),
            base.clone(),
            "bad_signature",
        ),
        (
            "fail_unsigned",
            by(&raw, &[]),
            base.clone(),
            "threshold_not_met",
        ),
        (
            "fail_threshold_not_met",
            by(&raw, &[3]),
            two.clone(),
            "threshold_not_met",
        ),
        (
            "fail_threshold_same_signer_twice",
            by(&raw, &[3, 3]),
            two.clone(),
            "threshold_not_met",
        ),
        (
            "fail_not_yet_valid",
            one.clone(),
            with(&|c| c["now_unix_ms"] = json!(nb - skew - 1)),
            "not_yet_valid",
        ),
        (
            "fail_expired",
            one.clone(),
            with(&|c| c["now_unix_ms"] = json!(exp + skew)),
            "expired",
        ),
        (
            "fail_wrong_node",
            one.clone(),
            with(&|c| c["expected_node"] = json!("node-b")),
            "wrong_node",
        ),
        (
            "fail_wrong_tls_key",
            one.clone(),
            with(&|c| c["peer_tls_spki_sha256"] = json!(hex::encode([0x00; 32]))),
            "wrong_tls_key",
        ),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(name, signed, ctx, expect)| {
            let case = json!({
                "name": name,
                "signed_vouch": hex::encode(signed.encode_to_vec()),
                "context": ctx,
                "expect": expect,
            });
            let r = run_vouch_case(&trusted, &case);
            settle(case, r, VouchError::code, |v| v.valid_signers.clone())
        })
        .collect();
    json!({
        "description": "Vouches (SPEC.md 'Vouches'). bodies: fields, canonical bytes, bytes signed (\"lockbox/v1/vouch\" || 0x00 || body). cases: verify_vouch(SignedVouch protobuf bytes, trusted, context); expect is ok or the VouchError code, error its message. Controllers as in grant.json.",
        "trusted": trusted_json(),
        "bodies": ([&body, &hour].iter().map(|b| {
            let raw = encode_vouch_body(b).unwrap();
            json!({
                "fields": vouch_body_fields(b),
                "bytes": hex::encode(&raw),
                "signed_bytes": hex::encode([VOUCH_DOMAIN.as_bytes(), &[0], &raw].concat()),
            })
        }).collect::<Vec<_>>()),
        "cases": cases,
    })
}

/// Revocation lists (SPEC.md "Revocation lists"): fully deterministic.
fn gen_revocations() -> Value {
    let trusted = trusted_from(&trusted_json());
    let r = |node: &str, at: u64, reason: &str| Revocation {
        node: node.into(),
        revoked_unix_ms: at,
        reason: reason.into(),
    };
    let body = RevocationsBody {
        trust_domain: "example.org".into(),
        revoked: vec![
            r(
                "node-c",
                GRANT_T0 - 86_400_000,
                "host stolen from rack 4 (ticket SEC-7)",
            ),
            r("node-d", GRANT_T0 - 60_000, ""),
        ],
        issued_unix_ms: GRANT_T0,
        issuer_key_id: "ctl-2".into(),
    };
    let empty = RevocationsBody {
        revoked: Vec::new(),
        ..body.clone()
    };
    let raw = encode_revocations_body(&body).unwrap();
    let raw_empty = encode_revocations_body(&empty).unwrap();
    let sr = |raw: &[u8], sigs: Vec<lockbox_proto::v1::Signature>| SignedRevocations {
        body: raw.to_vec(),
        signatures: sigs,
    };
    let by = |raw: &[u8], signers: &[u8]| {
        sr(
            raw,
            signers
                .iter()
                .map(|&n| ctl_sig(REVOCATIONS_DOMAIN, n, raw))
                .collect(),
        )
    };
    let edit = |f: &dyn Fn(&mut RevocationsBody)| {
        let mut b = body.clone();
        f(&mut b);
        b.encode_to_vec()
    };
    let one = by(&raw, &[2]);
    let mut flipped = by(&raw, &[2, 3]);
    flipped.signatures[1].signature[40] ^= 0x80;
    let mut unknown_field = raw.clone();
    unknown_field.extend_from_slice(&[0x28, 0x01]);
    let mut many = one.clone();
    many.signatures = vec![one.signatures[0].clone(); 33];

    let cases: Vec<(&str, SignedRevocations, &str)> = vec![
        ("ok_list", one.clone(), "ok"),
        ("ok_empty_list", by(&raw_empty, &[2]), "ok"),
        ("ok_unknown_signer_skipped", by(&raw, &[9, 2]), "ok"),
        ("ok_cosigned", by(&raw, &[1, 2]), "ok"),
        ("fail_too_many_signatures", many, "malformed"),
        ("fail_body_not_protobuf", by(&[0xff; 5], &[2]), "malformed"),
        (
            "fail_body_unknown_field",
            by(&unknown_field, &[2]),
            "malformed",
        ),
        (
            "fail_empty_trust_domain",
            by(&edit(&|b| b.trust_domain.clear()), &[2]),
            "malformed",
        ),
        (
            "fail_empty_issuer_key_id",
            by(&edit(&|b| b.issuer_key_id.clear()), &[2]),
            "malformed",
        ),
        (
            "fail_empty_node",
            by(&edit(&|b| b.revoked[0].node.clear()), &[2]),
            "malformed",
        ),
        (
            "fail_node_256_bytes",
            by(
                &edit(&|b| b.revoked[1].node = format!("node-d{}", "x".repeat(250))),
                &[2],
            ),
            "malformed",
        ),
        (
            "fail_reason_1025_bytes",
            by(&edit(&|b| b.revoked[0].reason = "r".repeat(1025)), &[2]),
            "malformed",
        ),
        (
            "fail_not_sorted",
            by(&edit(&|b| b.revoked.swap(0, 1)), &[2]),
            "malformed",
        ),
        (
            "fail_node_listed_twice",
            by(&edit(&|b| b.revoked[1].node = "node-c".into()), &[2]),
            "malformed",
        ),
        ("fail_unknown_signer", by(&raw, &[9]), "unknown_signer"),
        ("fail_not_signed", by(&raw, &[]), "not_signed"),
        ("fail_bad_signature", flipped, "bad_signature"),
        (
            "fail_bad_signature_vouch_domain",
            sr(&raw, vec![ctl_sig(VOUCH_DOMAIN, 2, &raw)]),
            "bad_signature",
        ),
        (
            "fail_issuer_not_signer",
            by(&raw, &[1]),
            "issuer_not_signer",
        ),
        (
            "fail_untrusted_issuer",
            by(&edit(&|b| b.issuer_key_id = "ctl-9".into()), &[9, 1]),
            "issuer_not_signer",
        ),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(name, signed, expect)| {
            let mut case = json!({
                "name": name,
                "signed_revocations": hex::encode(signed.encode_to_vec()),
                "expect": expect,
            });
            match run_revocations_case(&trusted, &case) {
                Ok(v) => {
                    assert_eq!(expect, "ok", "generating {name}");
                    case["verified"] = verified_revocations_json(&v);
                }
                Err(e) => {
                    assert_eq!(expect, e.code(), "generating {name}: {e}");
                    case["error"] = json!(e.to_string());
                }
            }
            case
        })
        .collect();
    json!({
        "description": "Revocation lists (SPEC.md 'Revocation lists'). bodies: fields, canonical bytes, bytes signed (\"lockbox/v1/revocations\" || 0x00 || body). cases: verify_revocations(SignedRevocations protobuf bytes, trusted); expect is ok or the RevocationsError code, error its message; verified is what an ok case yields. One valid signature by a trusted controller suffices; it must include the issuer's. Controllers as in grant.json.",
        "trusted": trusted_json(),
        "bodies": ([&body, &empty].iter().map(|b| {
            let raw = encode_revocations_body(b).unwrap();
            json!({
                "fields": revocations_body_fields(b),
                "bytes": hex::encode(&raw),
                "signed_bytes": hex::encode([REVOCATIONS_DOMAIN.as_bytes(), &[0], &raw].concat()),
            })
        }).collect::<Vec<_>>()),
        "cases": cases,
    })
}

/// Transfer batches (SPEC.md "Transfer wrapping"). Fully deterministic: the ephemeral key comes
/// from RFC 9180 A.2.1's `ikmE`, Ed25519 signing is deterministic.
fn gen_wrap() -> Value {
    // node-b's X25519 secret is RFC 7748 section 6.1 Bob's, as in attestation.json; a wrong
    // recipient is Alice. node-a signs with seed 32 x 0xa1.
    let dest_secret =
        hex::decode("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb").unwrap();
    let alice_secret =
        hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
    let dest = HpkeIdentity::from_secret(&SecretBytes::new(dest_secret.clone())).unwrap();
    let dest_pk = dest.public_key();
    let source = SigningIdentity::from_secret(&SecretBytes::new(vec![0xa1; 32])).unwrap();
    let other_signer = SigningIdentity::from_secret(&SecretBytes::new(vec![0xa2; 32])).unwrap();
    let ikm: [u8; 32] =
        hex::decode("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b")
            .unwrap()
            .try_into()
            .unwrap();
    let grant_id: [u8; 16] = std::array::from_fn(|i| i as u8);

    let mk_ctx = |batch: u32| BatchContext {
        grant_id: &grant_id,
        batch,
        source_node: "node-a",
        dest_node: "node-b",
    };
    // Attributes: (current, version state, clone policy, labels).
    type Attrs = (
        bool,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );
    const PLAIN: Attrs = (true, "active", "", &[]);
    // Labels listed out of order: the encoding sorts them.
    const TENANT: &[(&str, &str)] = &[("volume", "vol-7"), ("tenant", "acme")];
    // (key id, version, material, attributes)
    type KeySpec = (&'static str, u32, Vec<u8>, Attrs);
    let batch_specs: [(&str, BatchContext<'_>, Vec<KeySpec>); 3] = [
        (
            "ok_one_key_32",
            mk_ctx(0),
            vec![(KEY_1, 1, vec![0x11; 32], PLAIN)],
        ),
        (
            "ok_two_versions_64",
            mk_ctx(1),
            vec![
                (
                    KEY_2,
                    1,
                    vec![0x21; 64],
                    (false, "retired", "new-key", TENANT),
                ),
                (
                    KEY_2,
                    2,
                    vec![0x22; 64],
                    (true, "active", "new-key", TENANT),
                ),
            ],
        ),
        (
            "ok_three_keys_1_32_64",
            mk_ctx(7),
            vec![
                (KEY_1, 3, vec![0x31], (true, "rekeying", "same-key", TENANT)),
                (KEY_2, 1, (0u8..32).collect(), PLAIN),
                (
                    "4c3e1f0a-6b2d-4e8f-9a1c-5d7e3f2b1a0c",
                    1,
                    (0u8..64).collect(),
                    (true, "active", "", &[("empty", "")]),
                ),
            ],
        ),
    ];
    let mut batches = Vec::new();
    let mut base = None;
    for (name, c, keys) in &batch_specs {
        let materials: Vec<SecretBytes> =
            keys.iter().map(|k| SecretBytes::new(k.2.clone())).collect();
        let attributes: Vec<Vec<u8>> = keys
            .iter()
            .map(|(_, _, _, (current, state, policy, labels))| {
                key_attributes(*current, state, policy, labels.iter().copied())
            })
            .collect();
        let wrap: Vec<KeyToWrap<'_>> = keys
            .iter()
            .zip(&materials)
            .zip(&attributes)
            .map(|((k, material), attributes)| KeyToWrap {
                key_id: k.0,
                version: k.1,
                material,
                attributes,
            })
            .collect();
        let sealed = seal_batch_deterministic(&dest_pk, c, &wrap, &ikm).unwrap();
        let message = batch_message(c, &sealed);
        let sig = sign_batch(&source, c, &sealed);
        batches.push(json!({
            "name": name,
            "context": ctx_json(c),
            "keys": keys.iter().zip(&attributes).map(|(k, encoded)| json!({
                "key_id": k.0, "version": k.1, "material": hex::encode(&k.2),
                "attributes": {
                    "current": k.3.0,
                    "version_state": k.3.1,
                    "clone_policy": k.3.2,
                    "labels": k.3.3.iter().map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "encoded": hex::encode(encoded),
                },
            })).collect::<Vec<_>>(),
            "info": hex::encode(transfer_info(c)),
            "aads": keys.iter().map(|k| hex::encode(transfer_key_aad(k.0, k.1))).collect::<Vec<_>>(),
            "sealed": sealed_json(&sealed),
            "message": hex::encode(&message),
            "signed_bytes": hex::encode([TRANSFER_BATCH_DOMAIN.as_bytes(), &[0], &message].concat()),
            "signature": hex::encode(sig),
        }));
        base = Some((*c, sealed, sig));
    }

    // Cases: the last batch (3 keys, batch 7), changed one way each.
    let (c, sealed, sig) = base.unwrap();
    let sign = |c: &BatchContext<'_>, b: &SealedBatch| sign_batch(&source, c, b).to_vec();
    let edit = |f: &dyn Fn(&mut SealedBatch)| {
        let mut b = sealed.clone();
        f(&mut b);
        b
    };
    let other_grant = [0xff; 16];
    let alice = json!(hex::encode(&alice_secret));
    let sig = sig.to_vec();
    let mut flipped_sig = sig.clone();
    flipped_sig[10] ^= 0x01;
    let tampered_ct = edit(&|b| b.keys[1].ciphertext[3] ^= 0x01);
    let low_order_enc = edit(&|b| b.enc = vec![0; 32]);
    let no_keys = edit(&|b| b.keys.clear());
    let other_domain_sig = source
        .sign(GRANT_DOMAIN, &batch_message(&c, &sealed))
        .to_vec();

    // (name, context, sealed, signature, recipient if not the destination, expect, open alone)
    #[allow(clippy::type_complexity)]
    type Case<'a> = (
        &'a str,
        BatchContext<'a>,
        SealedBatch,
        Vec<u8>,
        Option<&'a Value>,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        ("ok_batch", c, sealed.clone(), sig.clone(), None, "ok", "ok"),
        (
            "fail_wrong_recipient",
            c,
            sealed.clone(),
            sig.clone(),
            Some(&alice),
            "unwrap_failed",
            "unwrap_failed",
        ),
        (
            "fail_tampered_enc",
            c,
            edit(&|b| b.enc[0] ^= 0x01),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_low_order_enc_signed",
            c,
            low_order_enc.clone(),
            sign(&c, &low_order_enc),
            None,
            "bad_batch",
            "bad_batch",
        ),
        (
            "fail_tampered_ciphertext",
            c,
            tampered_ct.clone(),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_tampered_ciphertext_signed",
            c,
            tampered_ct.clone(),
            sign(&c, &tampered_ct),
            None,
            "unwrap_failed",
            "unwrap_failed",
        ),
        (
            "fail_truncated_tag",
            c,
            edit(&|b| {
                b.keys[2].ciphertext.pop();
            }),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_swapped_key_ids",
            c,
            edit(&|b| {
                let id = b.keys[1].key_id.clone();
                b.keys[1].key_id = b.keys[2].key_id.clone();
                b.keys[2].key_id = id;
            }),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_changed_attributes",
            c,
            edit(&|b| b.keys[0].attributes[0] ^= 0x01),
            sig.clone(),
            None,
            "bad_batch_signature",
            "ok",
        ),
        (
            "fail_changed_version",
            c,
            edit(&|b| b.keys[0].version = 4),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_reordered_keys",
            c,
            edit(&|b| b.keys.swap(0, 1)),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_dropped_first_key",
            c,
            edit(&|b| {
                b.keys.remove(0);
            }),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_dropped_last_key",
            c,
            edit(&|b| {
                b.keys.pop();
            }),
            sig.clone(),
            None,
            "bad_batch_signature",
            "ok",
        ),
        (
            "fail_changed_batch_number",
            BatchContext { batch: 8, ..c },
            sealed.clone(),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_changed_grant_id",
            BatchContext {
                grant_id: &other_grant,
                ..c
            },
            sealed.clone(),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_changed_source_node",
            BatchContext {
                source_node: "node-c",
                ..c
            },
            sealed.clone(),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_changed_dest_node",
            BatchContext {
                dest_node: "node-c",
                ..c
            },
            sealed.clone(),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_node_boundary_moved",
            BatchContext {
                source_node: "node-an",
                dest_node: "ode-b",
                ..c
            },
            sealed.clone(),
            sig.clone(),
            None,
            "bad_batch_signature",
            "unwrap_failed",
        ),
        (
            "fail_unsupported_suite",
            c,
            edit(&|b| b.suite = 0x647a_0001_0003),
            sig.clone(),
            None,
            "unsupported_suite",
            "unsupported_suite",
        ),
        (
            "fail_enc_31_bytes",
            c,
            edit(&|b| {
                b.enc.pop();
            }),
            sig.clone(),
            None,
            "bad_length",
            "bad_length",
        ),
        (
            "fail_ciphertext_too_short",
            c,
            edit(&|b| b.keys[0].ciphertext.truncate(16)),
            sig.clone(),
            None,
            "bad_batch",
            "bad_batch",
        ),
        (
            "fail_ciphertext_too_long",
            c,
            edit(&|b| b.keys[2].ciphertext.resize(81, 0)),
            sig.clone(),
            None,
            "bad_batch",
            "bad_batch",
        ),
        (
            "fail_duplicate_key",
            c,
            edit(&|b| b.keys[2] = b.keys[0].clone()),
            sig.clone(),
            None,
            "bad_batch",
            "bad_batch",
        ),
        (
            "fail_no_keys_signed",
            c,
            no_keys.clone(),
            sign(&c, &no_keys),
            None,
            "bad_batch",
            "bad_batch",
        ),
        (
            "fail_empty_source_node",
            BatchContext {
                source_node: "",
                ..c
            },
            sealed.clone(),
            sig.clone(),
            None,
            "bad_batch",
            "bad_batch",
        ),
        (
            "fail_signed_by_other_key",
            c,
            sealed.clone(),
            sign_batch(&other_signer, &c, &sealed).to_vec(),
            None,
            "bad_batch_signature",
            "ok",
        ),
        (
            "fail_signed_under_grant_domain",
            c,
            sealed.clone(),
            other_domain_sig,
            None,
            "bad_batch_signature",
            "ok",
        ),
        (
            "fail_flipped_signature",
            c,
            sealed.clone(),
            flipped_sig,
            None,
            "bad_batch_signature",
            "ok",
        ),
        (
            "fail_short_signature",
            c,
            sealed.clone(),
            sig[..63].to_vec(),
            None,
            "bad_length",
            "ok",
        ),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(name, c, b, s, recipient, expect, open)| {
            let mut case = json!({
                "name": name,
                "context": ctx_json(&c),
                "sealed": sealed_json(&b),
                "signature": hex::encode(&s),
                "expect": expect,
                "open": open,
            });
            if let Some(r) = recipient {
                case["recipient_x25519_secret"] = r.clone();
            }
            let v = json!({
                "dest": { "x25519_secret": hex::encode(&dest_secret) },
                "source": { "signing_public_key": hex::encode(source.public_key()) },
            });
            let (both, open_only) = run_wrap_case(&v, &case);
            assert_eq!(outcome(&open_only), open, "generating {name}: open alone");
            assert_eq!(outcome(&both), expect, "generating {name}");
            if let Err(e) = both {
                case["error"] = json!(e.to_string());
            }
            case
        })
        .collect();

    json!({
        "description": "Transfer wrapping (SPEC.md 'Transfer wrapping'). HPKE Base mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305 (wire id (kem << 32) | (kdf << 16) | aead). batches: seal_batch_deterministic(dest hpke_public_key, context, keys, ephemeral_ikm) = sealed; transfer_info(context) = info; transfer_key_aad per key = aads; batch_message(context, sealed) = message; signed bytes = \"lockbox/v1/transfer-batch\" || 0x00 || message; sign_batch by the source = signature. ephemeral_ikm is RFC 9180 A.2.1 ikmE, so every enc equals that appendix's enc. cases: the last batch changed one way each; expect is the outcome of verify_and_open_batch(dest or recipient_x25519_secret, source signing key, context, sealed, signature) (error: its message), open that of open_batch alone. The destination node-b's X25519 secret is RFC 7748 6.1 Bob (as in attestation.json), the wrong recipient Alice; node-a signs with seed 32 x 0xa1.",
        "suite": SUITE_X25519_SHA256_CHACHA20,
        "source": {
            "node": "node-a",
            "signing_seed": hex::encode([0xa1; 32]),
            "signing_public_key": hex::encode(source.public_key()),
        },
        "dest": {
            "node": "node-b",
            "x25519_secret": hex::encode(&dest_secret),
            "hpke_public_key": hex::encode(dest_pk),
        },
        "ephemeral_ikm": hex::encode(ikm),
        "rfc9180_a2_enc": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
        "batches": batches,
        "cases": cases,
    })
}

/// The receipt every case edits: node-b received a MOVE of KEY_1 (versions 1, 2) and KEY_2
/// (version 1) from node-a under the grant of grant.json.
fn base_receipt_body() -> ReceiptBody {
    ReceiptBody {
        grant_id: (0u8..16).collect(),
        op: GrantOp::Move as i32,
        source_node: "node-a".into(),
        dest_node: "node-b".into(),
        key_ids: vec![KEY_1.into(), KEY_2.into()],
        stored_unix_ms: GRANT_T0 + 60_000,
        stored: vec![
            StoredVersions {
                key_id: KEY_1.into(),
                versions: vec![1, 2],
            },
            StoredVersions {
                key_id: KEY_2.into(),
                versions: vec![1],
            },
        ],
    }
}

/// A receipt case's body and signature bytes.
type BodyAndSignature = (Vec<u8>, Vec<u8>);

fn gen_receipt() -> Value {
    // node-b signs with seed 32 x 0xd2; 32 x 0xd3 is another node's key.
    let dest = SigningIdentity::from_secret(&SecretBytes::new(vec![0xd2; 32])).unwrap();
    let other = SigningIdentity::from_secret(&SecretBytes::new(vec![0xd3; 32])).unwrap();
    let base = base_receipt_body();
    let signed = sign_receipt(&dest, &base).unwrap();
    let raw = signed.body.clone();
    let sig = signed.signature.to_vec();
    // Bodies the verifier must refuse, encoded without sign_receipt's checks and signed by
    // the destination, as a faulty or malicious one could.
    let edit = |f: &dyn Fn(&mut ReceiptBody)| {
        let mut b = base_receipt_body();
        f(&mut b);
        b.encode_to_vec()
    };
    let by_dest = |body: Vec<u8>| {
        let s = dest.sign(RECEIPT_DOMAIN, &body).to_vec();
        (body, s)
    };
    let stored = |key_id: &str, versions: &[u32]| StoredVersions {
        key_id: key_id.into(),
        versions: versions.to_vec(),
    };

    let mut flipped = sig.clone();
    flipped[10] ^= 0x01;
    let mut sig65 = sig.clone();
    sig65.push(0);
    let mut unknown_field = raw.clone();
    unknown_field.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
    // Field 7 with each version as its own (unpacked) varint field: decodes to the base body.
    let mut unpacked = edit(&|b| b.stored.clear());
    for s in &base.stored {
        let mut entry = vec![0x0a, u8::try_from(s.key_id.len()).unwrap()];
        entry.extend_from_slice(s.key_id.as_bytes());
        for &v in &s.versions {
            entry.extend_from_slice(&[0x10, u8::try_from(v).unwrap()]);
        }
        unpacked.extend_from_slice(&[0x3a, u8::try_from(entry.len()).unwrap()]);
        unpacked.extend_from_slice(&entry);
    }
    assert_eq!(ReceiptBody::decode(unpacked.as_slice()).unwrap(), base);
    let other_key = "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b";

    let mut cases: Vec<(&str, BodyAndSignature, &str)> = vec![
        ("ok_move", (raw.clone(), sig.clone()), "ok"),
        (
            "ok_no_stored_list",
            by_dest(edit(&|b| b.stored.clear())),
            "ok",
        ),
        (
            "ok_stored_in_another_order",
            by_dest(edit(&|b| b.stored.reverse())),
            "ok",
        ),
        (
            "fail_signature_63_bytes",
            (raw.clone(), sig[..63].to_vec()),
            "bad_signature_length",
        ),
        (
            "fail_signature_65_bytes",
            (raw.clone(), sig65),
            "bad_signature_length",
        ),
        (
            "fail_signature_empty",
            (raw.clone(), vec![]),
            "bad_signature_length",
        ),
        (
            "fail_signature_flipped",
            (raw.clone(), flipped),
            "bad_signature",
        ),
        (
            "fail_signed_by_another_node",
            (raw.clone(), other.sign(RECEIPT_DOMAIN, &raw).to_vec()),
            "bad_signature",
        ),
        (
            "fail_signed_under_grant_domain",
            (raw.clone(), dest.sign(GRANT_DOMAIN, &raw).to_vec()),
            "bad_signature",
        ),
        (
            "fail_body_edited_after_signing",
            (edit(&|b| b.stored[0].versions = vec![1]), sig.clone()),
            "bad_signature",
        ),
        (
            "fail_body_not_protobuf",
            by_dest(vec![0xff; 8]),
            "malformed",
        ),
        (
            "fail_body_unknown_field",
            by_dest(unknown_field),
            "malformed",
        ),
        (
            "fail_body_versions_unpacked",
            by_dest(unpacked),
            "malformed",
        ),
        (
            "fail_wrong_grant_id",
            by_dest(edit(&|b| b.grant_id[15] ^= 0xff)),
            "wrong_grant_id",
        ),
        (
            "fail_grant_id_15_bytes",
            by_dest(edit(&|b| b.grant_id.truncate(15))),
            "wrong_grant_id",
        ),
        (
            "fail_wrong_op",
            by_dest(edit(&|b| b.op = GrantOp::Copy as i32)),
            "wrong_op",
        ),
        (
            "fail_wrong_source",
            by_dest(edit(&|b| b.source_node = "node-c".into())),
            "wrong_source",
        ),
        (
            "fail_wrong_dest",
            by_dest(edit(&|b| b.dest_node = "node-c".into())),
            "wrong_destination",
        ),
        (
            "fail_key_ids_missing_one",
            by_dest(edit(&|b| {
                b.key_ids.pop();
                b.stored.pop();
            })),
            "wrong_key_ids",
        ),
        (
            "fail_key_ids_reordered",
            by_dest(edit(&|b| b.key_ids.reverse())),
            "wrong_key_ids",
        ),
        (
            "fail_key_ids_extra",
            by_dest(edit(&|b| b.key_ids.push(other_key.into()))),
            "wrong_key_ids",
        ),
        (
            "fail_stored_key_not_in_grant",
            by_dest(edit(&|b| b.stored[1] = stored(other_key, &[1]))),
            "stored_key_not_in_grant",
        ),
        (
            "fail_stored_key_twice",
            by_dest(edit(&|b| b.stored.push(stored(KEY_1, &[3])))),
            "stored_key_twice",
        ),
        (
            "fail_stored_key_missing",
            by_dest(edit(&|b| {
                b.stored.pop();
            })),
            "stored_key_missing",
        ),
        (
            "fail_stored_versions_empty",
            by_dest(edit(&|b| b.stored[1].versions.clear())),
            "no_stored_versions",
        ),
        (
            "fail_stored_version_zero",
            by_dest(edit(&|b| b.stored[0].versions = vec![0, 1])),
            "stored_version_zero",
        ),
        (
            "fail_stored_versions_unsorted",
            by_dest(edit(&|b| b.stored[0].versions = vec![2, 1])),
            "stored_versions_unsorted",
        ),
        (
            "fail_stored_version_repeated",
            by_dest(edit(&|b| b.stored[0].versions = vec![1, 1])),
            "stored_versions_unsorted",
        ),
    ];
    // Wrong fields are reported before a bad stored list (SPEC.md step order).
    cases.push((
        "fail_wrong_op_and_empty_versions",
        by_dest(edit(&|b| {
            b.op = GrantOp::Copy as i32;
            b.stored[0].versions.clear();
        })),
        "wrong_op",
    ));

    let mut cases: Vec<Value> = cases
        .into_iter()
        .map(|(name, (body, signature), expect)| {
            json!({
                "name": name,
                "body": hex::encode(body),
                "signature": hex::encode(signature),
                "expect": expect,
            })
        })
        .collect();
    cases.insert(
        3,
        json!({
            "name": "fail_body_too_large",
            "body_zeros": MAX_RECEIPT_LEN + 1,
            "signature": hex::encode([0u8; 64]),
            "expect": "too_large",
        }),
    );

    let mut v = json!({
        "description": "Transfer receipts (SPEC.md 'Transfer receipts'). bodies: fields, the canonical bytes sign_receipt encodes, the bytes signed (\"lockbox/v1/receipt\" || 0x00 || body) and the destination's signature. cases: verify_receipt(destination public_key, body, signature, expectation); a body given as body_zeros is that many zero bytes; expect is ok (fields: the decoded body) or the ReceiptError code, error its message. The destination node-b signs with Ed25519 seed 32 x 0xd2; another node's seed is 32 x 0xd3.",
        "destination": {
            "node": "node-b",
            "seed": hex::encode([0xd2; 32]),
            "public_key": hex::encode(dest.public_key()),
        },
        "expectation": {
            "grant_id": hex::encode(&base.grant_id),
            "op": base.op().as_str_name(),
            "source_node": base.source_node,
            "dest_node": base.dest_node,
            "key_ids": base.key_ids,
        },
        "bodies": [{
            "fields": receipt_fields(&base),
            "bytes": hex::encode(&raw),
            "signed_bytes": hex::encode([RECEIPT_DOMAIN.as_bytes(), &[0], &raw].concat()),
            "signature": hex::encode(&sig),
        }],
    });
    let settled: Vec<Value> = cases
        .into_iter()
        .map(|mut case| {
            let name = str_of(&case["name"]).to_string();
            match run_receipt_case(&v, &case) {
                Ok(b) => {
                    assert_eq!(case["expect"], "ok", "generating {name}");
                    case["fields"] = receipt_fields(&b);
                }
                Err(e) => {
                    assert_eq!(case["expect"], e.code(), "generating {name}: {e}");
                    case["error"] = json!(e.to_string());
                }
            }
            case
        })
        .collect();
    v["cases"] = json!(settled);
    v
}

// ---------------------------------------------------------------------------------------------
// backup files

/// The `expect` name of each backup error.
fn backup_tag(e: &BackupError) -> &'static str {
    match e {
        BackupError::BadMagic => "bad_magic",
        BackupError::UnsupportedVersion(_) => "unsupported_version",
        BackupError::UnsupportedSuite(_) => "unsupported_suite",
        BackupError::Truncated(_) => "truncated",
        BackupError::Malformed(_) => "malformed",
        BackupError::NoStanza { .. } => "no_stanza",
        BackupError::StanzaAuthFailed => "stanza_auth_failed",
        BackupError::HeaderAuthFailed => "header_auth_failed",
        BackupError::PayloadAuthFailed => "payload_auth_failed",
        BackupError::BadRecipient(_) => "bad_recipient",
        BackupError::BadIdentity(_) => "bad_identity",
        BackupError::TooLarge { .. } => "too_large",
        BackupError::Crypto(e) => tag(e),
    }
}

fn backup_identity(v: &Value) -> BackupIdentity {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes(v));
    BackupIdentity::from_file_text(&format!("{IDENTITY_PREFIX}{b64}\n")).unwrap()
}

/// Backups are sealed with random keys, so this file stores the bytes and checks that they
/// open (or fail as named), like `seal.json`.
#[test]
fn backup_vectors() {
    let v = load("backup.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|c| c["expect"] != "ok").count() >= 15);
    for case in cases {
        let id = backup_identity(&v["identities"][str_of(&case["identity"])]);
        let file = bytes(&case["file"]);
        let opened = open_backup(&id, &file);
        let got = opened.as_ref().map_or_else(backup_tag, |_| "ok");
        check_name(case, got);
        if let Ok(o) = opened {
            assert_eq!(o.header.source_node, str_of(&v["source_node"]));
            let ids: Vec<&str> = o.contents.keys.iter().map(|k| k.key_id.as_str()).collect();
            assert_eq!(ids, strings(&v["key_ids"]));
            let materials: Vec<String> = o
                .contents
                .materials
                .iter()
                .map(|m| hex::encode(m.expose_secret()))
                .collect();
            assert_eq!(materials, strings(&v["materials"]));
            let shared: Vec<u32> = o
                .contents
                .keys
                .iter()
                .map(|k| k.versions[0].material)
                .collect();
            assert_eq!(shared, vec![0, 0, 1], "the snapshot shares material 0");
        }
    }
    for (recipient, name) in [("recipient_r1", "r1"), ("recipient_r2", "r2")] {
        let id = backup_identity(&v["identities"][name]);
        assert_eq!(id.recipient().to_string(), str_of(&v[recipient]));
    }
}

fn gen_backup() -> Value {
    let secret = |b: u8| SecretBytes::new(vec![b; 32]);
    let ids: Vec<(&str, SecretBytes)> = vec![
        ("r1", secret(0x51)),
        ("r2", secret(0x52)),
        ("stranger", secret(0x53)),
    ];
    let identity = |s: &SecretBytes| {
        let b64 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            s.expose_secret(),
        );
        BackupIdentity::from_file_text(&format!("{IDENTITY_PREFIX}{b64}\n")).unwrap()
    };
    let (r1, r2) = (identity(&ids[0].1), identity(&ids[1].1));
    let key_ids = [
        "00000001-8d7b-4c1a-9e2f-0a1b2c3d4e5f",
        "00000002-8d7b-4c1a-9e2f-0a1b2c3d4e5f",
        "00000003-8d7b-4c1a-9e2f-0a1b2c3d4e5f",
    ];
    let materials = [vec![0xa1u8; 32], vec![0xb2u8; 64]];
    let key = |id: &str, kind: &str, from: &str, material: u32| BackupKey {
        key_id: id.into(),
        labels: [("volume".to_string(), format!("vol-{}", &id[7..8]))].into(),
        created_unix_ms: 1_700_000_000_000,
        origin: BackupOrigin {
            kind: kind.into(),
            from_key_id: from.into(),
            ..Default::default()
        },
        clone_policy: String::new(),
        replica: false,
        current_version: 1,
        versions: vec![BackupVersion {
            version: 1,
            state: BackupVersionState::Active,
            created_unix_ms: 1_700_000_000_000,
            material,
        }],
    };
    let contents = BackupContents {
        materials: materials
            .iter()
            .map(|m| SecretBytes::new(m.clone()))
            .collect(),
        keys: vec![
            key(key_ids[0], "created", "", 0),
            key(key_ids[1], "snapshot", key_ids[0], 0),
            key(key_ids[2], "created", "", 1),
        ],
    };
    let node = "vector-node";
    let good = seal_backup(
        &[r1.recipient(), r2.recipient()],
        node,
        1_700_000_000_123,
        &contents,
    )
    .unwrap();
    // Layout: prefix 37 + 4 + 11 + 2 = 54; stanzas 54..278; mac 278..310; payload 310..
    let stanza = 54;
    let mac = stanza + 2 * BACKUP_STANZA_LEN;
    let payload = mac + BACKUP_MAC_LEN;
    let flip = |at: usize| {
        let mut t = good.clone();
        t[at] ^= 0x01;
        t
    };
    let mut swapped = good.clone();
    let (a, b) = swapped[stanza..mac].split_at_mut(BACKUP_STANZA_LEN);
    a.swap_with_slice(b);
    let mut duplicate = good.clone();
    duplicate.copy_within(
        stanza..stanza + BACKUP_STANZA_LEN,
        stanza + BACKUP_STANZA_LEN,
    );
    let mut zero_stanzas = good.clone();
    zero_stanzas[stanza - 2..stanza].copy_from_slice(&[0, 0]);
    let mut extended = good.clone();
    extended.push(0);
    let mut v2 = good.clone();
    v2[4] = 2;
    let case = |name: &str, identity: &str, file: &[u8], expect: &str| json!({"name": name, "identity": identity, "file": hex::encode(file), "expect": expect});
    let cases = vec![
        case("ok_first_recipient", "r1", &good, "ok"),
        case("ok_second_recipient", "r2", &good, "ok"),
        case("fail_other_identity", "stranger", &good, "no_stanza"),
        case("fail_empty", "r1", &[], "truncated"),
        case("fail_truncated_magic", "r1", &good[..3], "truncated"),
        case(
            "fail_bad_magic",
            "r1",
            &[b"LBKR", &good[4..]].concat(),
            "bad_magic",
        ),
        case("fail_unsupported_version", "r1", &v2, "unsupported_version"),
        case(
            "fail_unsupported_suite",
            "r1",
            &flip(12),
            "unsupported_suite",
        ),
        case("fail_truncated_header", "r1", &good[..30], "truncated"),
        case(
            "fail_truncated_stanzas",
            "r1",
            &good[..stanza + 100],
            "truncated",
        ),
        case("fail_truncated_mac", "r1", &good[..mac + 5], "truncated"),
        case(
            "fail_truncated_payload_tag",
            "r1",
            &good[..payload + 10],
            "truncated",
        ),
        case(
            "fail_cut_payload",
            "r1",
            &good[..good.len() - 1],
            "payload_auth_failed",
        ),
        case("fail_extended", "r1", &extended, "payload_auth_failed"),
        case("fail_zero_stanzas", "r1", &zero_stanzas, "malformed"),
        case("fail_duplicate_stanza", "r1", &duplicate, "malformed"),
        case(
            "fail_flipped_created_time",
            "r1",
            &flip(15),
            "stanza_auth_failed",
        ),
        case("fail_flipped_salt", "r1", &flip(25), "stanza_auth_failed"),
        case(
            "fail_flipped_source_node",
            "r1",
            &flip(45),
            "stanza_auth_failed",
        ),
        case(
            "fail_flipped_own_fingerprint",
            "r1",
            &flip(stanza + 3),
            "no_stanza",
        ),
        case(
            "fail_flipped_own_enc",
            "r1",
            &flip(stanza + 40),
            "stanza_auth_failed",
        ),
        case(
            "fail_flipped_own_wrapped_key",
            "r1",
            &flip(stanza + 90),
            "stanza_auth_failed",
        ),
        case(
            "fail_flipped_other_stanza",
            "r1",
            &flip(stanza + BACKUP_STANZA_LEN + 40),
            "header_auth_failed",
        ),
        case("fail_swapped_stanzas", "r1", &swapped, "header_auth_failed"),
        case(
            "fail_flipped_mac",
            "r1",
            &flip(mac + 7),
            "header_auth_failed",
        ),
        case(
            "fail_flipped_payload",
            "r1",
            &flip(payload + 3),
            "payload_auth_failed",
        ),
        case(
            "fail_flipped_payload_tag",
            "r1",
            &flip(good.len() - 2),
            "payload_auth_failed",
        ),
    ];
    json!({
        "description": "Backup files (SPEC.md \"Backup file\"): sealed with random keys, so the bytes are stored and opened. Identities are raw 32-byte X25519 secrets.",
        "identities": ids.iter().map(|(n, s)| (n.to_string(), json!(hex::encode(s.expose_secret())))).collect::<serde_json::Map<_, _>>(),
        "recipient_r1": r1.recipient().to_string(),
        "recipient_r2": r2.recipient().to_string(),
        "source_node": node,
        "key_ids": key_ids,
        "materials": materials.iter().map(hex::encode).collect::<Vec<_>>(),
        "cases": cases,
    })
}

// ---------------------------------------------------------------------------------------------
// peer-assisted unseal

/// RFC 9496 appendix A.1: the encodings of B, 2B and 3B, so the group and its encoding are
/// checked against outside values, not only against ourselves.
const RISTRETTO_MULTIPLES: [(u8, &str); 3] = [
    (
        1,
        "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    ),
    (
        2,
        "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    ),
    (
        3,
        "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
    ),
];

/// RFC 9496 appendix A.2: encodings every decoder must refuse (non-canonical field elements,
/// negative field elements, non-square x², negative xy, s = -1 giving y = 0).
const RISTRETTO_BAD_ENCODINGS: [&str; 10] = [
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
    "4eac077a713c57b4f4397629a4145982c661f48044dd3f96427d40b147d9742f",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
];

/// A canonical scalar encoding: 31 bytes of `b`, then 0x05 (below the group order).
fn assist_scalar(b: u8) -> [u8; 32] {
    let mut s = [b; 32];
    s[31] = 0x05;
    s
}

fn assist_peers(v: &Value) -> std::collections::BTreeMap<String, AssistIdentity> {
    v["peers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, p)| {
            let id = AssistIdentity::from_file_bytes(&bytes(&p["key_file"])).unwrap();
            assert_eq!(id.public_key(), array32(&p["public_key"]), "{name}");
            let from_secret =
                AssistIdentity::from_secret(&SecretBytes::new(bytes(&p["secret"]))).unwrap();
            assert_eq!(
                from_secret.to_file_bytes().expose_secret(),
                bytes(&p["key_file"])
            );
            (name.clone(), id)
        })
        .collect()
}

/// Records what a case gives after checking it is what the generator's author expected.
fn assist_settle<T>(mut case: Value, r: &std::result::Result<T, AssistError>) -> Value {
    let name = str_of(&case["name"]).to_string();
    match r {
        Ok(_) => assert_eq!(case["expect"], "ok", "generating {name}"),
        Err(e) => {
            assert_eq!(case["expect"], e.code(), "generating {name}: {e}");
            case["error"] = json!(e.to_string());
        }
    }
    case
}

fn assist_context(c: &Value) -> (String, String, [u8; 16]) {
    (
        str_of(&c["owner_node"]).to_string(),
        str_of(&c["peer_node"]).to_string(),
        bytes(&c["enrollment_id"]).try_into().unwrap(),
    )
}

/// One `exchanges` case: decode the enrolled share, blind it with the case's `r` (checking
/// the blinded point), and recover with the case's answer and expected context.
fn run_assist_exchange(case: &Value) -> std::result::Result<SecretBytes, AssistError> {
    let enrolled = EnrolledShare::decode(&bytes(&case["enrolled"]))?;
    let (r, x) = blind_deterministic(&enrolled, &array32(&case["r"]))?;
    assert_eq!(x, array32(&case["blinded"]), "{}", str_of(&case["name"]));
    let (owner, peer, id) = assist_context(&case["context"]);
    let expected = EnrollContext {
        owner_node: &owner,
        peer_node: &peer,
        enrollment_id: id,
    };
    recover(&enrolled, &expected, r, &array32(&case["answer"]))
}

fn shares_of(v: &Value) -> Vec<SecretBytes> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| SecretBytes::new(bytes(s)))
        .collect()
}

/// Unseals an `ok` slot with every subset of its peers: at least the threshold gives the
/// slot key, fewer is refused.
fn check_slot_unseals(
    slot: &PeerSlot,
    peers: &std::collections::BTreeMap<String, AssistIdentity>,
    key: &[u8],
) {
    let n = slot.shares().len();
    for mask in 1u32..(1 << n) {
        let mut u = slot.begin_unseal(slot.owner_node()).unwrap();
        let requests = u.requests().to_vec();
        for req in requests.iter().filter(|q| mask & (1 << q.peer) != 0) {
            let id = &peers[&req.peer_node];
            assert_eq!(id.public_key(), req.peer_public_key);
            u.add_answer(req.peer, &id.answer(&req.blinded).unwrap())
                .unwrap();
        }
        let picked = usize::try_from(mask.count_ones()).unwrap();
        match u.finish() {
            Ok(k) => {
                assert!(picked >= usize::from(slot.threshold()));
                assert_eq!(k.expose_secret(), key);
            }
            Err(e) => {
                assert!(picked < usize::from(slot.threshold()), "{e}");
                assert_eq!(e.code(), "not_enough_shares");
            }
        }
    }
}

/// Everything in assist.json is deterministic (fixed scalars, nonces and coefficients through
/// the `test-vectors` entry points), so the file is also regenerated and compared.
#[test]
fn assist_vectors() {
    let v = load("assist.json");
    let peers = assist_peers(&v);
    for m in v["generator_multiples"].as_array().unwrap() {
        let id = AssistIdentity::from_secret(&SecretBytes::new(bytes(&m["scalar"]))).unwrap();
        assert_eq!(id.public_key(), array32(&m["public_key"]));
    }

    let key_files = v["key_files"].as_array().unwrap();
    assert!(key_files.iter().filter(|c| c["expect"] != "ok").count() >= 8);
    for case in key_files {
        let r = AssistIdentity::from_file_bytes(&bytes(&case["file"]));
        check_verdict(case, &r, AssistError::code);
        if let Ok(id) = r {
            assert_eq!(id.public_key(), array32(&case["public_key"]));
        }
    }

    let answers = v["answers"].as_array().unwrap();
    assert!(answers.iter().filter(|c| c["expect"] != "ok").count() >= 8);
    for case in answers {
        let r = peers[str_of(&case["key"])].answer(&array32(&case["blinded"]));
        check_verdict(case, &r, AssistError::code);
        if let Ok(y) = r {
            assert_eq!(y, array32(&case["answer"]));
        }
    }

    let decode = v["enrolled_shares"].as_array().unwrap();
    assert!(decode.iter().filter(|c| c["expect"] != "ok").count() >= 12);
    for case in decode {
        let raw = bytes(&case["bytes"]);
        let r = EnrolledShare::decode(&raw);
        check_verdict(case, &r, AssistError::code);
        if let Ok(e) = r {
            assert_eq!(e.encode(), raw);
            let (owner, peer, id) = assist_context(&case["context"]);
            assert_eq!(
                (e.owner_node(), e.peer_node(), e.enrollment_id()),
                (owner.as_str(), peer.as_str(), id)
            );
        }
    }

    let exchanges = v["exchanges"].as_array().unwrap();
    assert!(exchanges.iter().filter(|c| c["expect"] != "ok").count() >= 10);
    for case in exchanges {
        if let Some(by) = case["answered_by"].as_str() {
            let y = peers[by].answer(&array32(&case["blinded"])).unwrap();
            assert_eq!(y, array32(&case["answer"]), "{}", str_of(&case["name"]));
        }
        let r = run_assist_exchange(case);
        check_verdict(case, &r, AssistError::code);
        if let Ok(share) = r {
            assert_eq!(share.expose_secret(), bytes(&case["share"]));
        }
    }

    let sh = &v["shamir"];
    let secret = SecretBytes::new(bytes(&sh["secret"]));
    let t = u8::try_from(sh["threshold"].as_u64().unwrap()).unwrap();
    let n = u8::try_from(sh["n"].as_u64().unwrap()).unwrap();
    let shares = split_deterministic(&secret, t, n, &bytes(&sh["coefficients"])).unwrap();
    let want = shares_of(&sh["shares"]);
    assert_eq!(shares.len(), want.len());
    for (a, b) in shares.iter().zip(&want) {
        assert_eq!(a.expose_secret(), b.expose_secret());
    }
    let combines = sh["combine"].as_array().unwrap();
    assert!(combines.iter().filter(|c| c["expect"] != "ok").count() >= 6);
    for case in combines {
        let r = combine(&shares_of(&case["shares"]));
        check_verdict(case, &r, AssistError::code);
        if let Ok(s) = r {
            assert_eq!(s.expose_secret(), secret.expose_secret());
        }
    }

    let slots = v["slots"].as_array().unwrap();
    assert!(slots.iter().filter(|c| c["expect"] != "ok").count() >= 8);
    for case in slots {
        let raw = bytes(&case["slot"]);
        let r = PeerSlot::decode(&raw);
        check_verdict(case, &r, AssistError::code);
        if let Ok(slot) = r {
            assert_eq!(slot.encode(), raw);
            check_slot_unseals(&slot, &peers, &bytes(&v["slot_key"]));
        }
    }
}

#[test]
fn assist_vectors_are_reproducible() {
    assert_eq!(load("assist.json"), gen_assist());
}

fn gen_assist() -> Value {
    let names = ["peer-1", "peer-2", "peer-3", "stranger"];
    let secrets = [0x11u8, 0x22, 0x33, 0x44].map(assist_scalar);
    let ids: Vec<AssistIdentity> = secrets
        .iter()
        .map(|s| AssistIdentity::from_secret(&SecretBytes::new(s.to_vec())).unwrap())
        .collect();
    let peers_json: serde_json::Map<String, Value> = names
        .iter()
        .zip(secrets.iter().zip(&ids))
        .map(|(name, (s, id))| {
            (
                name.to_string(),
                json!({
                    "secret": hex::encode(s),
                    "public_key": hex::encode(id.public_key()),
                    "key_file": hex::encode(id.to_file_bytes().expose_secret()),
                }),
            )
        })
        .collect();
    let multiples: Vec<Value> = RISTRETTO_MULTIPLES
        .iter()
        .map(|&(k, point)| {
            let mut s = [0u8; 32];
            s[0] = k;
            let id = AssistIdentity::from_secret(&SecretBytes::new(s.to_vec())).unwrap();
            assert_eq!(hex::encode(id.public_key()), point, "RFC 9496 {k}B");
            json!({"scalar": hex::encode(s), "public_key": point})
        })
        .collect();

    // --- key files
    let file1 = ids[0].to_file_bytes().expose_secret().to_vec();
    let with = |base: &[u8], at: usize, patch: &[u8]| {
        let mut b = base.to_vec();
        b[at..at + patch.len()].copy_from_slice(patch);
        b
    };
    let flip = |base: &[u8], at: usize| {
        let mut b = base.to_vec();
        b[at] ^= 0x01;
        b
    };
    let ell =
        hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010").unwrap();
    let mut high_bit = secrets[0];
    high_bit[31] |= 0x80;
    let key_case = |name: &str, file: &[u8], expect: &str| {
        let mut c = json!({"name": name, "file": hex::encode(file), "expect": expect});
        let r = AssistIdentity::from_file_bytes(file);
        if let Ok(id) = &r {
            c["public_key"] = json!(hex::encode(id.public_key()));
        }
        assist_settle(c, &r)
    };
    let key_files = vec![
        key_case("ok_peer_1", &file1, "ok"),
        key_case("ok_peer_2", ids[1].to_file_bytes().expose_secret(), "ok"),
        key_case("fail_empty", &[], "key_file_length"),
        key_case("fail_truncated", &file1[..68], "key_file_length"),
        key_case(
            "fail_trailing_byte",
            &[&file1[..], &[0]].concat(),
            "key_file_length",
        ),
        key_case(
            "fail_bad_magic",
            &with(&file1, 0, b"LBKR"),
            "key_file_magic",
        ),
        key_case(
            "fail_unsupported_version",
            &with(&file1, 4, &[2]),
            "unsupported_version",
        ),
        key_case(
            "fail_scalar_is_group_order",
            &with(&file1, 5, &ell),
            "non_canonical_scalar",
        ),
        key_case(
            "fail_scalar_high_bit",
            &with(&file1, 5, &high_bit),
            "non_canonical_scalar",
        ),
        key_case(
            "fail_zero_scalar",
            &with(&file1, 5, &[0; 32]),
            "zero_scalar",
        ),
        key_case("fail_flipped_scalar", &flip(&file1, 5), "key_file_mismatch"),
        key_case(
            "fail_flipped_public_key",
            &flip(&file1, 40),
            "key_file_mismatch",
        ),
        key_case(
            "fail_other_public_key",
            &with(&file1, 37, &ids[1].public_key()),
            "key_file_mismatch",
        ),
    ];

    // --- one enrollment per peer of a 2-of-3 split, and the exchange with peer-1
    let owner = "owner-a";
    let enrollment_id = [0x1d; 16];
    let ctx = |owner_node, peer_node| EnrollContext {
        owner_node,
        peer_node,
        enrollment_id,
    };
    let slot_key: Vec<u8> = (0u8..32).collect();
    let coefficients: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let shares =
        split_deterministic(&SecretBytes::new(slot_key.clone()), 2, 3, &coefficients).unwrap();
    let enrolled: Vec<EnrolledShare> = (0..3)
        .map(|i| {
            let c = assist_scalar(0xc1 + u8::try_from(i).unwrap());
            let nonce = [0x90 + u8::try_from(i).unwrap(); 24];
            enroll_deterministic(
                &ids[i].public_key(),
                &shares[i],
                &ctx(owner, names[i]),
                &c,
                nonce,
            )
            .unwrap()
        })
        .collect();
    let e1 = enrolled[0].encode();
    let r = assist_scalar(0xa1);
    let blind_of = |e: &[u8]| {
        blind_deterministic(&EnrolledShare::decode(e).unwrap(), &r)
            .unwrap()
            .1
    };
    let x1 = blind_of(&e1);
    let y1 = ids[0].answer(&x1).unwrap();

    // --- answers
    let answer_case = |name: &str, key: &str, blinded: &[u8; 32], expect: &str| {
        let i = names.iter().position(|n| *n == key).unwrap();
        let r = ids[i].answer(blinded);
        let mut c =
            json!({"name": name, "key": key, "blinded": hex::encode(blinded), "expect": expect});
        if let Ok(y) = &r {
            c["answer"] = json!(hex::encode(y));
        }
        assist_settle(c, &r)
    };
    let mut answers = vec![
        answer_case("ok_peer_1", "peer-1", &x1, "ok"),
        answer_case("ok_peer_2_same_point", "peer-2", &x1, "ok"),
        answer_case(
            "ok_generator_gives_public_key",
            "peer-1",
            &hex::decode(RISTRETTO_MULTIPLES[0].1)
                .unwrap()
                .try_into()
                .unwrap(),
            "ok",
        ),
    ];
    for (i, bad) in RISTRETTO_BAD_ENCODINGS.iter().enumerate() {
        let expect = if *bad == "0000000000000000000000000000000000000000000000000000000000000000" {
            "identity_point"
        } else {
            "non_canonical_point"
        };
        let name = if expect == "identity_point" {
            "fail_identity_point".to_string()
        } else {
            format!("fail_rfc9496_bad_encoding_{i}")
        };
        answers.push(answer_case(
            &name,
            "peer-1",
            &hex::decode(bad).unwrap().try_into().unwrap(),
            expect,
        ));
    }

    // --- enrolled share decoding. Offsets for owner-a / peer-1: version 0, id 1..17,
    // lp(owner) 17..28, lp(peer) 28..38, S 38..70, C 70..102, nonce 102..126, lp(sealed) 126..
    let enc_case = |name: &str, raw: &[u8], expect: &str| {
        let r = EnrolledShare::decode(raw);
        let mut c = json!({"name": name, "bytes": hex::encode(raw), "expect": expect});
        if let Ok(e) = &r {
            c["context"] = json!({"owner_node": e.owner_node(), "peer_node": e.peer_node(), "enrollment_id": hex::encode(e.enrollment_id())});
        }
        assist_settle(c, &r)
    };
    let sealed_len = e1.len() - 130;
    let enrolled_shares = vec![
        enc_case("ok_peer_1", &e1, "ok"),
        enc_case("ok_peer_2", &enrolled[1].encode(), "ok"),
        enc_case("fail_empty", &[], "truncated"),
        enc_case(
            "fail_unsupported_version",
            &with(&e1, 0, &[2]),
            "unsupported_version",
        ),
        enc_case("fail_truncated_enrollment_id", &e1[..10], "truncated"),
        enc_case("fail_truncated_owner_node", &e1[..25], "truncated"),
        enc_case("fail_truncated_peer_key", &e1[..60], "truncated"),
        enc_case("fail_truncated_commitment", &e1[..90], "truncated"),
        enc_case("fail_truncated_nonce", &e1[..110], "truncated"),
        enc_case(
            "fail_truncated_sealed_share",
            &e1[..e1.len() - 1],
            "truncated",
        ),
        enc_case("fail_trailing_byte", &[&e1[..], &[0]].concat(), "malformed"),
        enc_case(
            "fail_empty_owner_node",
            &[&e1[..17], &[0, 0, 0, 0], &e1[28..]].concat(),
            "malformed",
        ),
        enc_case(
            "fail_owner_node_not_utf8",
            &with(&e1, 21, &[0xff]),
            "malformed",
        ),
        enc_case(
            "fail_identity_peer_key",
            &with(&e1, 38, &[0; 32]),
            "identity_point",
        ),
        enc_case(
            "fail_non_canonical_peer_key",
            &with(&e1, 38, &[0xff; 32]),
            "non_canonical_point",
        ),
        enc_case(
            "fail_identity_commitment",
            &with(&e1, 70, &[0; 32]),
            "identity_point",
        ),
        enc_case(
            "fail_negative_commitment",
            &with(&e1, 70, &hex::decode(RISTRETTO_BAD_ENCODINGS[4]).unwrap()),
            "non_canonical_point",
        ),
        enc_case(
            "fail_sealed_share_only_a_tag",
            &[&e1[..126], &[0, 0, 0, 16], &[0; 16]].concat(),
            "malformed",
        ),
        enc_case(
            "fail_sealed_share_too_long",
            &[&e1[..126], &[0, 0, 0, 83], &[0; 83]].concat(),
            "malformed",
        ),
    ];
    assert_eq!(sealed_len, 34 + 16);

    // --- exchanges
    let context_json = |owner_node: &str, peer_node: &str, id: [u8; 16]| json!({"owner_node": owner_node, "peer_node": peer_node, "enrollment_id": hex::encode(id)});
    let ok_context = context_json(owner, "peer-1", enrollment_id);
    let exchange_case = |name: &str,
                         e: &[u8],
                         context: &Value,
                         answer: &[u8; 32],
                         by: Option<&str>,
                         expect: &str| {
        let blinded = EnrolledShare::decode(e)
            .ok()
            .map(|d| blind_deterministic(&d, &r).unwrap().1);
        let mut c = json!({
            "name": name, "enrolled": hex::encode(e), "context": context, "r": hex::encode(r),
            "blinded": blinded.map(hex::encode), "answer": hex::encode(answer), "expect": expect,
        });
        if let Some(by) = by {
            c["answered_by"] = json!(by);
        }
        let result = run_assist_exchange(&c);
        if let Ok(s) = &result {
            c["share"] = json!(hex::encode(s.expose_secret()));
        }
        assist_settle(c, &result)
    };
    let answer_by = |i: usize, e: &[u8]| ids[i].answer(&blind_of(e)).unwrap();
    let tampered_owner = with(&e1, 27, b"b"); // "owner-a" → "owner-b"
    let tampered_commitment = with(&e1, 70, &hex::decode(RISTRETTO_MULTIPLES[1].1).unwrap());
    let relabelled_peer = with(&e1, 38, &ids[1].public_key());
    let other_owner = enroll_deterministic(
        &ids[0].public_key(),
        &shares[0],
        &ctx("owner-b", "peer-1"),
        &assist_scalar(0xb1),
        [0x91; 24],
    )
    .unwrap()
    .encode();
    let generator: [u8; 32] = hex::decode(RISTRETTO_MULTIPLES[0].1)
        .unwrap()
        .try_into()
        .unwrap();
    let exchanges = vec![
        exchange_case("ok_peer_1", &e1, &ok_context, &y1, Some("peer-1"), "ok"),
        exchange_case(
            "ok_peer_2",
            &enrolled[1].encode(),
            &context_json(owner, "peer-2", enrollment_id),
            &answer_by(1, &enrolled[1].encode()),
            Some("peer-2"),
            "ok",
        ),
        exchange_case(
            "fail_wrong_peer_answer",
            &e1,
            &ok_context,
            &answer_by(1, &e1),
            Some("peer-2"),
            "share_auth_failed",
        ),
        exchange_case(
            "fail_stranger_answer",
            &e1,
            &ok_context,
            &answer_by(3, &e1),
            Some("stranger"),
            "share_auth_failed",
        ),
        exchange_case(
            "fail_tampered_answer",
            &e1,
            &ok_context,
            &generator,
            None,
            "share_auth_failed",
        ),
        exchange_case(
            "fail_answer_to_another_owners_request",
            &e1,
            &ok_context,
            &answer_by(0, &other_owner),
            None,
            "share_auth_failed",
        ),
        exchange_case(
            "fail_identity_answer",
            &e1,
            &ok_context,
            &[0; 32],
            None,
            "identity_point",
        ),
        exchange_case(
            "fail_non_canonical_answer",
            &e1,
            &ok_context,
            &hex::decode(RISTRETTO_BAD_ENCODINGS[1])
                .unwrap()
                .try_into()
                .unwrap(),
            None,
            "non_canonical_point",
        ),
        exchange_case(
            "fail_tampered_sealed_share",
            &flip(&e1, e1.len() - 5),
            &ok_context,
            &y1,
            Some("peer-1"),
            "share_auth_failed",
        ),
        exchange_case(
            "fail_tampered_nonce",
            &flip(&e1, 110),
            &ok_context,
            &answer_by(0, &flip(&e1, 110)),
            Some("peer-1"),
            "share_auth_failed",
        ),
        exchange_case(
            "fail_tampered_owner_node",
            &tampered_owner,
            &context_json("owner-b", "peer-1", enrollment_id),
            &answer_by(0, &tampered_owner),
            Some("peer-1"),
            "share_auth_failed",
        ),
        exchange_case(
            "fail_tampered_commitment",
            &tampered_commitment,
            &ok_context,
            &answer_by(0, &tampered_commitment),
            Some("peer-1"),
            "share_auth_failed",
        ),
        exchange_case(
            "fail_relabelled_to_other_peer_key",
            &relabelled_peer,
            &ok_context,
            &answer_by(1, &relabelled_peer),
            Some("peer-2"),
            "share_auth_failed",
        ),
        exchange_case(
            "fail_wrong_context_owner",
            &e1,
            &context_json("owner-b", "peer-1", enrollment_id),
            &y1,
            Some("peer-1"),
            "context_mismatch",
        ),
        exchange_case(
            "fail_wrong_context_peer",
            &e1,
            &context_json(owner, "peer-2", enrollment_id),
            &y1,
            Some("peer-1"),
            "context_mismatch",
        ),
        exchange_case(
            "fail_wrong_context_enrollment_id",
            &e1,
            &context_json(owner, "peer-1", [0x1e; 16]),
            &y1,
            Some("peer-1"),
            "context_mismatch",
        ),
    ];

    // --- Shamir
    let t3 = split_deterministic(
        &SecretBytes::new(slot_key.clone()),
        3,
        3,
        &[coefficients.clone(), coefficients.clone()].concat(),
    )
    .unwrap();
    let hexes = |list: &[&SecretBytes]| {
        list.iter()
            .map(|s| hex::encode(s.expose_secret()))
            .collect::<Vec<_>>()
    };
    let combine_case = |name: &str, list: &[&SecretBytes], expect: &str| {
        let owned: Vec<SecretBytes> = list
            .iter()
            .map(|s| SecretBytes::new(s.expose_secret().to_vec()))
            .collect();
        assist_settle(
            json!({"name": name, "shares": hexes(list), "expect": expect}),
            &combine(&owned),
        )
    };
    let raw = |v: Vec<u8>| SecretBytes::new(v);
    let cut = raw(shares[1].expose_secret()[..33].to_vec());
    let index0 = raw([&[2, 0][..], &shares[1].expose_secret()[2..]].concat());
    let t1 = raw([&[1, 2][..], &shares[1].expose_secret()[2..]].concat());
    let too_short = raw(vec![2, 2]);
    let combines = vec![
        combine_case("ok_shares_1_2", &[&shares[0], &shares[1]], "ok"),
        combine_case("ok_shares_1_3", &[&shares[0], &shares[2]], "ok"),
        combine_case("ok_shares_3_2", &[&shares[2], &shares[1]], "ok"),
        combine_case("ok_all_three", &[&shares[0], &shares[1], &shares[2]], "ok"),
        combine_case("fail_no_shares", &[], "not_enough_shares"),
        combine_case("fail_one_share", &[&shares[0]], "not_enough_shares"),
        combine_case(
            "fail_duplicate_index",
            &[&shares[0], &shares[0]],
            "duplicate_share_index",
        ),
        combine_case(
            "fail_mixed_thresholds",
            &[&shares[0], &t3[1]],
            "malformed_share",
        ),
        combine_case("fail_mixed_lengths", &[&shares[0], &cut], "malformed_share"),
        combine_case("fail_index_zero", &[&shares[0], &index0], "malformed_share"),
        combine_case("fail_threshold_one", &[&t1, &shares[0]], "malformed_share"),
        combine_case(
            "fail_too_short",
            &[&shares[0], &too_short],
            "malformed_share",
        ),
        combine_case(
            "fail_two_of_three_at_threshold_three",
            &[&t3[0], &t3[1]],
            "not_enough_shares",
        ),
    ];

    // --- slots
    let slot_bytes = |t: u8, n: u8, list: &[&[u8]]| {
        let mut out = vec![0x01, t, n];
        for e in list {
            out.extend_from_slice(&u32::try_from(e.len()).unwrap().to_be_bytes());
            out.extend_from_slice(e);
        }
        out
    };
    let encs: Vec<Vec<u8>> = enrolled.iter().map(EnrolledShare::encode).collect();
    let good_slot = PeerSlot::from_shares(2, enrolled.clone()).unwrap().encode();
    assert_eq!(good_slot, slot_bytes(2, 3, &[&encs[0], &encs[1], &encs[2]]));
    let other_enrollment = enroll_deterministic(
        &ids[2].public_key(),
        &shares[2],
        &EnrollContext {
            enrollment_id: [0x1e; 16],
            ..ctx(owner, "peer-3")
        },
        &assist_scalar(0xc3),
        [0x92; 24],
    )
    .unwrap()
    .encode();
    let owner_as_peer = enroll_deterministic(
        &ids[2].public_key(),
        &shares[2],
        &ctx(owner, owner),
        &assist_scalar(0xc3),
        [0x92; 24],
    )
    .unwrap()
    .encode();
    let same_key = enroll_deterministic(
        &ids[1].public_key(),
        &shares[2],
        &ctx(owner, "peer-3"),
        &assist_scalar(0xc3),
        [0x92; 24],
    )
    .unwrap()
    .encode();
    let slot_case = |name: &str, slot: &[u8], expect: &str| {
        assist_settle(
            json!({"name": name, "slot": hex::encode(slot), "expect": expect}),
            &PeerSlot::decode(slot),
        )
    };
    let slots = vec![
        slot_case("ok_two_of_three", &good_slot, "ok"),
        slot_case("fail_empty", &[], "truncated"),
        slot_case(
            "fail_unsupported_version",
            &with(&good_slot, 0, &[2]),
            "unsupported_version",
        ),
        slot_case(
            "fail_truncated",
            &good_slot[..good_slot.len() - 1],
            "truncated",
        ),
        slot_case(
            "fail_trailing_byte",
            &[&good_slot[..], &[0]].concat(),
            "malformed",
        ),
        slot_case("fail_no_peers", &slot_bytes(2, 0, &[]), "malformed"),
        slot_case(
            "fail_seventeen_peers",
            &with(&good_slot, 2, &[17]),
            "malformed",
        ),
        slot_case(
            "fail_threshold_one",
            &with(&good_slot, 1, &[1]),
            "malformed",
        ),
        slot_case(
            "fail_threshold_above_peers",
            &with(&good_slot, 1, &[4]),
            "malformed",
        ),
        slot_case(
            "fail_bad_share",
            &slot_bytes(2, 2, &[&encs[0], &encs[1][..50]]),
            "truncated",
        ),
        slot_case(
            "fail_duplicate_peer",
            &slot_bytes(2, 3, &[&encs[0], &encs[1], &encs[1]]),
            "malformed",
        ),
        slot_case(
            "fail_same_assist_key_twice",
            &slot_bytes(2, 3, &[&encs[0], &encs[1], &same_key]),
            "malformed",
        ),
        slot_case(
            "fail_mixed_enrollments",
            &slot_bytes(2, 3, &[&encs[0], &encs[1], &other_enrollment]),
            "malformed",
        ),
        slot_case(
            "fail_owner_is_a_peer",
            &slot_bytes(2, 3, &[&encs[0], &encs[1], &owner_as_peer]),
            "malformed",
        ),
    ];

    json!({
        "description": "Peer-assisted unseal (SPEC.md \"Peer-assisted unseal (assist)\"): assist key files, peer answers, enrolled shares, the blinded exchange, Shamir shares and peer slots. Deterministic: fixed scalars s, c and r, nonces and Shamir coefficients (the test-vectors entry points), so the file is regenerated and compared. Scalars are 32-byte little-endian, points canonical ristretto255 encodings.",
        "peers": peers_json,
        "generator_multiples": multiples,
        "key_files": key_files,
        "answers": answers,
        "enrolled_shares": enrolled_shares,
        "exchanges": exchanges,
        "slot_key": hex::encode(&slot_key),
        "shamir": {
            "secret": hex::encode(&slot_key),
            "threshold": 2,
            "n": 3,
            "coefficients": hex::encode(&coefficients),
            "shares": hexes(&shares.iter().collect::<Vec<_>>()),
            "combine": combines,
        },
        "slots": slots,
    })
}
