//! Test vectors in `tests/vectors/*.json`, including `fail_*` cases that every decoder must
//! reject with the named error.
//!
//! Sealed records and keyrings use random nonces and salts, so their vectors store the bytes
//! and check that they open. Audit entries, checkpoints and signatures are deterministic, so
//! those vectors are also regenerated and compared. To rewrite every file after a deliberate
//! format change (and SPEC.md first):
//! `cargo test -p lockbox-crypto --test vectors -- --ignored regenerate`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use lockbox_crypto::*;
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
    ] {
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
            m(&kb, &|b| b[4] = 2),
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
    json!({
        "description": "Keyring files (SPEC.md 'Keyring file'). Decode `keyring`, unseal with `secret`; `expect` is ok or the first error. Ok cases list kek_ids and records to open with the unsealed keyring.",
        "argon2_params_of_passphrase_cases": { "memory_kib": 1024, "iterations": 1, "parallelism": 1 },
        "cases": cases,
    })
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
