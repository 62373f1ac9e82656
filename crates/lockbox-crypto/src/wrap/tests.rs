#![allow(clippy::unwrap_used)]
use super::*;
use crate::grant::GRANT_DOMAIN;

const GRANT: [u8; 16] = [0x42; 16];

fn ctx() -> BatchContext<'static> {
    BatchContext {
        grant_id: &GRANT,
        batch: 3,
        source_node: "node-a",
        dest_node: "node-b",
    }
}

fn recipient() -> HpkeIdentity {
    HpkeIdentity::from_secret(&SecretBytes::new(vec![0x5b; 32])).unwrap()
}

fn source() -> SigningIdentity {
    SigningIdentity::from_secret(&SecretBytes::new(vec![0xa1; 32])).unwrap()
}

fn key_id(i: usize) -> String {
    format!("{i:08x}-8d7b-4c1a-9e2f-0a1b2c3d4e5f")
}

/// `n` keys: ids from [`key_id`], version `i % 3 + 1`, material `len` bytes of `i`.
fn materials(n: usize, len: usize) -> Vec<(String, u32, SecretBytes)> {
    (0..n)
        .map(|i| {
            let version = u32::try_from(i % 3).unwrap() + 1;
            (key_id(i), version, SecretBytes::new(vec![i as u8; len]))
        })
        .collect()
}

fn to_wrap(m: &[(String, u32, SecretBytes)]) -> Vec<KeyToWrap<'_>> {
    m.iter()
        .map(|(id, version, material)| KeyToWrap {
            key_id: id,
            version: *version,
            material,
            attributes: &[],
        })
        .collect()
}

fn sealed(n: usize, len: usize) -> SealedBatch {
    seal_batch(
        &recipient().public_key(),
        &ctx(),
        &to_wrap(&materials(n, len)),
    )
    .unwrap()
}

fn assert_round_trip(n: usize, len: usize) {
    let m = materials(n, len);
    let batch = seal_batch(&recipient().public_key(), &ctx(), &to_wrap(&m)).unwrap();
    assert_eq!(batch.suite, SUITE_X25519_SHA256_CHACHA20);
    assert_eq!(batch.enc.len(), HPKE_ENC_LEN);
    assert_eq!(batch.keys.len(), n);
    let sig = sign_batch(&source(), &ctx(), &batch);
    let opened =
        verify_and_open_batch(&recipient(), &source().public_key(), &ctx(), &batch, &sig).unwrap();
    assert_eq!(opened.len(), n);
    for ((id, v, material), (want_id, want_v, want)) in opened.iter().zip(&m) {
        assert_eq!((id, v), (want_id, want_v));
        assert_eq!(material.expose_secret(), want.expose_secret());
    }
    for (k, (_, _, want)) in batch.keys.iter().zip(&m) {
        assert_eq!(k.ciphertext.len(), len + TRANSFER_TAG_LEN);
        // A 1-byte ciphertext equals its plaintext once in 256 runs by chance; compare only
        // materials long enough for a match to mean "not encrypted".
        if len >= 16 {
            assert_ne!(&k.ciphertext[..len], want.expose_secret());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// round trips

#[test]
fn round_trip_one_key_32() {
    assert_round_trip(1, 32);
}

#[test]
fn round_trip_one_key_64() {
    assert_round_trip(1, 64);
}

#[test]
fn round_trip_1000_keys_32_and_64() {
    assert_round_trip(1000, 32);
    assert_round_trip(1000, 64);
}

#[test]
fn round_trip_material_bounds() {
    assert_round_trip(2, 1);
    assert_round_trip(2, MAX_MATERIAL_LEN);
}

#[test]
fn round_trip_max_batch() {
    assert_round_trip(MAX_BATCH_KEYS, 32);
}

#[test]
fn each_seal_uses_a_fresh_ephemeral_key() {
    let a = sealed(2, 32);
    let b = sealed(2, 32);
    assert_ne!(a.enc, b.enc);
    assert_ne!(a.keys[0].ciphertext, b.keys[0].ciphertext);
}

#[test]
fn fixed_ephemeral_ikm_is_deterministic() {
    let m = materials(3, 32);
    let seal = |ikm: &[u8; 32]| {
        seal_with_ephemeral_ikm(&recipient().public_key(), &ctx(), &to_wrap(&m), ikm).unwrap()
    };
    assert_eq!(seal(&[7; 32]), seal(&[7; 32]));
    assert_ne!(seal(&[7; 32]).enc, seal(&[8; 32]).enc);
}

// ---------------------------------------------------------------------------------------------
// RFC 9180 known answer: our ephemeral-key shim and identity conversion give hpke exactly the
// RFC's inputs (Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305,
// Base mode, sequence number 0).

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn rfc9180_a2_base_known_answer() {
    let ikm_e: [u8; 32] = unhex("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b");
    let sk_r: [u8; 32] = unhex("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb");
    let pk_r: [u8; 32] = unhex("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a");
    let enc_want: [u8; 32] =
        unhex("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a");
    let info = b"Ode on a Grecian Urn";
    let aad = b"Count-0";
    let pt = b"Beauty is truth, truth beauty";
    let ct_want = hex::decode(
        "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
    )
    .unwrap();

    let identity = HpkeIdentity::from_secret(&SecretBytes::new(sk_r.to_vec())).unwrap();
    assert_eq!(identity.public_key(), pk_r);

    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&pk_r).unwrap();
    let mut rng = EphemeralIkm::new(&ikm_e);
    let (enc, mut sender) =
        hpke::setup_sender_with_rng::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, info, &mut rng).unwrap();
    assert!(rng.used_exactly_once());
    assert_eq!(enc.to_bytes().as_slice(), &enc_want);
    assert_eq!(sender.seal(pt, aad).unwrap(), ct_want);

    let sk = identity.hpke_private_key().unwrap();
    let mut receiver =
        hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &sk, &enc, info).unwrap();
    assert_eq!(receiver.open(&ct_want, aad).unwrap(), pt);
}

#[test]
fn ephemeral_ikm_is_handed_out_once() {
    let ikm = [9u8; 32];
    let mut r = EphemeralIkm::new(&ikm);
    let mut a = [0u8; 16];
    r.fill(&mut a);
    assert!(!r.used_exactly_once(), "half drawn");
    r.fill(&mut a);
    assert_eq!(a, [9; 16]);
    assert!(r.used_exactly_once());
    let mut b = [1u8; 1];
    r.fill(&mut b);
    assert_eq!(b, [0]);
    assert!(!r.used_exactly_once(), "overdrawn");

    let mut r = EphemeralIkm::new(&ikm);
    let mut big = [1u8; 33];
    r.fill(&mut big);
    assert_eq!(big, [0; 33]);
    assert!(!r.used_exactly_once());
    assert_eq!(r.try_next_u32(), Ok(0));
}

// ---------------------------------------------------------------------------------------------
// exact bytes (SPEC.md "Transfer wrapping")

#[test]
fn info_and_aad_bytes() {
    let mut want = b"lockbox/v1/transfer\0".to_vec();
    want.extend_from_slice(&[0x42; 16]);
    want.extend_from_slice(&[0, 0, 0, 3]);
    want.extend_from_slice(b"\0\0\0\x06node-a\0\0\0\x06node-b");
    assert_eq!(transfer_info(&ctx()), want);

    assert_eq!(
        transfer_key_aad("k1", 0x0102_0304),
        b"lockbox/v1/transfer-key\0\0\0\0\x02k1\x01\x02\x03\x04".to_vec()
    );
}

#[test]
fn batch_message_bytes() {
    let batch = SealedBatch {
        suite: SUITE_X25519_SHA256_CHACHA20,
        enc: vec![0xee; 32],
        keys: vec![
            SealedKey {
                key_id: "k1".into(),
                version: 1,
                ciphertext: vec![0xc1; 17],
                attributes: vec![0xa1; 3],
            },
            SealedKey {
                key_id: "key-2".into(),
                version: 7,
                ciphertext: vec![0xc2; 48],
                attributes: Vec::new(),
            },
        ],
    };
    let mut want = vec![0x42; 16];
    want.extend_from_slice(&[0, 0, 0, 3]);
    want.extend_from_slice(b"\0\0\0\x06node-a\0\0\0\x06node-b");
    want.extend_from_slice(&[0, 0, 0, 0x20, 0, 1, 0, 3]);
    want.extend_from_slice(&[0, 0, 0, 32]);
    want.extend_from_slice(&[0xee; 32]);
    want.extend_from_slice(&[0, 0, 0, 2]);
    want.extend_from_slice(b"\0\0\0\x02k1\0\0\0\x01\0\0\0\x11");
    want.extend_from_slice(&[0xc1; 17]);
    want.extend_from_slice(&[0, 0, 0, 3, 0xa1, 0xa1, 0xa1]);
    want.extend_from_slice(b"\0\0\0\x05key-2\0\0\0\x07\0\0\0\x30");
    want.extend_from_slice(&[0xc2; 48]);
    want.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(batch_message(&ctx(), &batch), want);

    let sig = sign_batch(&source(), &ctx(), &batch);
    verify_signature(
        &source().public_key(),
        "lockbox/v1/transfer-batch",
        &want,
        &sig,
    )
    .unwrap();
    verify_batch(&source().public_key(), &ctx(), &batch, &sig).unwrap();
}

#[test]
fn key_attributes_bytes() {
    let mut want = vec![1];
    want.extend_from_slice(b"\0\0\0\x06active\0\0\0\x08same-key");
    want.extend_from_slice(&[0, 0, 0, 2]);
    want.extend_from_slice(b"\0\0\0\x01a\0\0\0\x02x1\0\0\0\x01b\0\0\0\0");
    // Labels in any order encode the same: sorted by name.
    for labels in [[("a", "x1"), ("b", "")], [("b", ""), ("a", "x1")]] {
        assert_eq!(key_attributes(true, "active", "same-key", labels), want);
    }
    assert_eq!(
        key_attributes(false, "", "", []),
        vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    // Each field is length-prefixed: moving bytes between fields changes the encoding.
    assert_ne!(
        key_attributes(true, "ab", "", []),
        key_attributes(true, "a", "b", [])
    );
    assert_ne!(
        key_attributes(true, "", "", [("ab", "")]),
        key_attributes(true, "", "", [("a", "b")])
    );
}

#[test]
fn every_attribute_is_signed() {
    let materials = materials(1, 32);
    let base = (true, "active", "", vec![("tenant", "a")]);
    let attrs = |(current, state, policy, labels): (bool, &str, &str, Vec<(&str, &str)>)| {
        key_attributes(current, state, policy, labels)
    };
    let signed = attrs(base.clone());
    let wrap = vec![KeyToWrap {
        key_id: &materials[0].0,
        version: materials[0].1,
        material: &materials[0].2,
        attributes: &signed,
    }];
    let batch = seal_batch(&recipient().public_key(), &ctx(), &wrap).unwrap();
    let sig = sign_batch(&source(), &ctx(), &batch);
    verify_batch(&source().public_key(), &ctx(), &batch, &sig).unwrap();
    for changed in [
        (false, "active", "", vec![("tenant", "a")]),
        (true, "retired", "", vec![("tenant", "a")]),
        (true, "active", "new-key", vec![("tenant", "a")]),
        (true, "active", "", vec![("tenant", "b")]),
        (true, "active", "", vec![]),
        (true, "active", "", vec![("tenant", "a"), ("x", "y")]),
    ] {
        let mut b = batch.clone();
        b.keys[0].attributes = attrs(changed.clone());
        assert!(
            matches!(
                verify_batch(&source().public_key(), &ctx(), &b, &sig),
                Err(CryptoError::BadBatchSignature { batch: 3 })
            ),
            "{changed:?}"
        );
    }
    // Oversized attributes are refused before any signature work, naming the key.
    let mut b = batch.clone();
    b.keys[0].attributes = vec![0; MAX_ATTRIBUTES_LEN + 1];
    let e = verify_batch(&source().public_key(), &ctx(), &b, &sig).unwrap_err();
    assert!(e.to_string().contains("attributes are 98305 bytes"), "{e}");
}

#[test]
fn suite_id_layout() {
    assert_eq!(SUITE_X25519_SHA256_CHACHA20, 0x0020_0001_0003);
    assert_eq!(
        CryptoError::UnsupportedSuite(0x647a_0001_0003).to_string(),
        "unsupported transfer suite 0x647a00010003"
    );
}

// ---------------------------------------------------------------------------------------------
// tampering: which layer catches what

/// A signed 3-key batch and its materials.
fn signed3() -> (SealedBatch, [u8; 64]) {
    let batch = sealed(3, 32);
    let sig = sign_batch(&source(), &ctx(), &batch);
    (batch, sig)
}

fn open(c: &BatchContext<'_>, b: &SealedBatch) -> Result<Vec<(String, u32, SecretBytes)>> {
    open_batch(&recipient(), c, b)
}

fn verify(c: &BatchContext<'_>, b: &SealedBatch, sig: &[u8]) -> Result<()> {
    verify_batch(&source().public_key(), c, b, sig)
}

/// Opening fails on the key at `pos` as the batch now names it.
fn assert_unwrap_fails_at(r: Result<Vec<(String, u32, SecretBytes)>>, b: &SealedBatch, pos: usize) {
    match r {
        Err(CryptoError::UnwrapFailed {
            key_id,
            version,
            batch,
        }) => {
            assert_eq!(key_id, b.keys[pos].key_id);
            assert_eq!(version, b.keys[pos].version);
            assert_eq!(batch, ctx().batch);
        }
        other => panic!("expected unwrap failure at key {pos}, got {other:?}"),
    }
}

fn assert_bad_signature(r: Result<()>) {
    assert!(
        matches!(r, Err(CryptoError::BadBatchSignature { batch: 3 })),
        "{r:?}"
    );
}

#[test]
fn wrong_recipient_fails_on_the_first_key() {
    let (b, sig) = signed3();
    let other = HpkeIdentity::from_secret(&SecretBytes::new(vec![0x5c; 32])).unwrap();
    assert_unwrap_fails_at(open_batch(&other, &ctx(), &b), &b, 0);
    // The signature does not name the recipient key; it is right, the recipient is not.
    verify(&ctx(), &b, &sig).unwrap();
}

#[test]
fn tampered_enc_fails_unwrap_and_signature() {
    let (mut b, sig) = signed3();
    b.enc[5] ^= 0x01;
    assert_unwrap_fails_at(open(&ctx(), &b), &b, 0);
    assert_bad_signature(verify(&ctx(), &b, &sig));
}

#[test]
fn low_order_enc_fails_decapsulation() {
    let (mut b, _) = signed3();
    b.enc = vec![0; 32];
    let err = open(&ctx(), &b).unwrap_err();
    assert!(
        matches!(&err, CryptoError::BadBatch { batch: 3, reason } if reason.contains("decapsulation")),
        "{err}"
    );
}

#[test]
fn tampered_ciphertext_fails_at_that_key() {
    for pos in 0..3 {
        for byte in [0, 20, 47] {
            let (mut b, sig) = signed3();
            b.keys[pos].ciphertext[byte] ^= 0x80;
            assert_unwrap_fails_at(open(&ctx(), &b), &b, pos);
            assert_bad_signature(verify(&ctx(), &b, &sig));
        }
    }
}

#[test]
fn swapped_key_ids_fail() {
    let (mut b, sig) = signed3();
    let id0 = b.keys[0].key_id.clone();
    b.keys[0].key_id = b.keys[1].key_id.clone();
    b.keys[1].key_id = id0;
    assert_unwrap_fails_at(open(&ctx(), &b), &b, 0);
    assert_bad_signature(verify(&ctx(), &b, &sig));
}

#[test]
fn changed_version_fails() {
    let (mut b, sig) = signed3();
    b.keys[1].version += 1;
    assert_unwrap_fails_at(open(&ctx(), &b), &b, 1);
    assert_bad_signature(verify(&ctx(), &b, &sig));
}

#[test]
fn reordered_keys_fail() {
    // Whole entries swapped: each AAD still matches its ciphertext, but the HPKE sequence
    // number (the nonce) does not.
    let (mut b, sig) = signed3();
    b.keys.swap(1, 2);
    assert_unwrap_fails_at(open(&ctx(), &b), &b, 1);
    assert_bad_signature(verify(&ctx(), &b, &sig));

    let (mut b, sig) = signed3();
    b.keys.remove(0);
    assert_unwrap_fails_at(open(&ctx(), &b), &b, 0);
    assert_bad_signature(verify(&ctx(), &b, &sig));
}

#[test]
fn truncated_batch_is_caught_by_the_signature_only() {
    // Dropping trailing keys leaves every remaining (position, key) pair valid: HPKE alone
    // cannot see it. The signature covers the key count, hence verify_and_open_batch.
    let (mut b, sig) = signed3();
    b.keys.pop();
    assert_eq!(open(&ctx(), &b).unwrap().len(), 2);
    assert_bad_signature(verify(&ctx(), &b, &sig));
    assert!(matches!(
        verify_and_open_batch(&recipient(), &source().public_key(), &ctx(), &b, &sig),
        Err(CryptoError::BadBatchSignature { .. })
    ));
}

#[test]
fn key_spliced_from_another_batch_fails() {
    let (mut b, sig) = signed3();
    let other = sealed(3, 32);
    b.keys[2] = other.keys[2].clone();
    assert_unwrap_fails_at(open(&ctx(), &b), &b, 2);
    assert_bad_signature(verify(&ctx(), &b, &sig));
}

#[test]
fn changed_context_fails() {
    let (b, sig) = signed3();
    let other_grant = [0x43; 16];
    let contexts = [
        BatchContext { batch: 4, ..ctx() },
        BatchContext {
            grant_id: &other_grant,
            ..ctx()
        },
        BatchContext {
            source_node: "node-c",
            ..ctx()
        },
        BatchContext {
            dest_node: "node-c",
            ..ctx()
        },
        // Moving bytes across the node boundary changes the length prefixes.
        BatchContext {
            source_node: "node-an",
            dest_node: "ode-b",
            ..ctx()
        },
    ];
    for c in &contexts {
        match open(c, &b) {
            Err(CryptoError::UnwrapFailed { key_id, batch, .. }) => {
                assert_eq!(key_id, b.keys[0].key_id);
                assert_eq!(batch, c.batch);
            }
            other => panic!("{c:?}: {other:?}"),
        }
        assert!(
            matches!(
                verify(c, &b, &sig),
                Err(CryptoError::BadBatchSignature { .. })
            ),
            "{c:?}"
        );
    }
}

#[test]
fn bad_signatures_fail() {
    let (b, sig) = signed3();
    let pk = source().public_key();
    let other = SigningIdentity::from_secret(&SecretBytes::new(vec![0xa2; 32])).unwrap();
    assert_bad_signature(verify_batch(&other.public_key(), &ctx(), &b, &sig));
    assert_bad_signature(verify(&ctx(), &b, &sign_batch(&other, &ctx(), &b)));
    // Right key and message, another domain.
    let grant_domain = source().sign(GRANT_DOMAIN, &batch_message(&ctx(), &b));
    assert_bad_signature(verify(&ctx(), &b, &grant_domain));
    assert!(matches!(
        verify_batch(&pk, &ctx(), &b, &sig[..63]),
        Err(CryptoError::BadLength {
            expected: 64,
            got: 63,
            ..
        })
    ));
    assert!(matches!(
        verify_batch(&pk, &ctx(), &b, &[sig.as_slice(), &[0]].concat()),
        Err(CryptoError::BadLength { got: 65, .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// shape checks (before any cryptography)

fn bad_reason(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(CryptoError::BadBatch { batch: 3, reason }) => reason,
        other => panic!("expected BadBatch, got {other:?}"),
    }
}

#[test]
fn unsupported_suite_is_refused_first() {
    let (mut b, sig) = signed3();
    b.suite = 0x647a_0001_0003;
    b.enc.clear();
    assert!(matches!(
        open(&ctx(), &b),
        Err(CryptoError::UnsupportedSuite(0x647a_0001_0003))
    ));
    assert!(matches!(
        verify(&ctx(), &b, &sig),
        Err(CryptoError::UnsupportedSuite(_))
    ));
}

#[test]
fn enc_length_is_checked() {
    for len in [0, 31, 33, 1120] {
        let (mut b, sig) = signed3();
        b.enc.resize(len, 7);
        let want = |r: &Result<_>| matches!(r, Err(CryptoError::BadLength { what: "hpke enc", expected: 32, got }) if *got == len);
        assert!(want(&open(&ctx(), &b).map(|_| ())));
        assert!(want(&verify(&ctx(), &b, &sig)));
    }
}

#[test]
fn ciphertext_length_is_checked() {
    for len in [0, 16, 81, 1000] {
        let (mut b, sig) = signed3();
        b.keys[1].ciphertext.resize(len, 0);
        let reason = bad_reason(open(&ctx(), &b));
        assert!(reason.contains(&b.keys[1].key_id), "{reason}");
        assert!(reason.contains(&format!("ciphertext is {len} bytes, not 17 to 80")));
        bad_reason(verify(&ctx(), &b, &sig));
    }
}

#[test]
fn duplicate_key_is_refused() {
    let (mut b, sig) = signed3();
    b.keys[2] = b.keys[0].clone();
    assert!(bad_reason(open(&ctx(), &b)).ends_with("appears twice"));
    bad_reason(verify(&ctx(), &b, &sig));
    // Same id, other version: fine (a key's versions travel together).
    let m = [
        ("k".to_string(), 1, SecretBytes::new(vec![1; 32])),
        ("k".to_string(), 2, SecretBytes::new(vec![2; 32])),
    ];
    let b = seal_batch(&recipient().public_key(), &ctx(), &to_wrap(&m)).unwrap();
    assert_eq!(open(&ctx(), &b).unwrap().len(), 2);
}

#[test]
fn batch_size_is_bounded() {
    let fake = |n: usize| SealedBatch {
        suite: SUITE_X25519_SHA256_CHACHA20,
        enc: vec![9; 32],
        keys: (0..n)
            .map(|i| SealedKey {
                key_id: key_id(i),
                version: 1,
                ciphertext: vec![0; 48],
                attributes: Vec::new(),
            })
            .collect(),
    };
    let sig = [0u8; 64];
    assert_eq!(bad_reason(open(&ctx(), &fake(0))), "0 keys, not 1 to 10000");
    assert_eq!(
        bad_reason(open(&ctx(), &fake(MAX_BATCH_KEYS + 1))),
        "10001 keys, not 1 to 10000"
    );
    bad_reason(verify(&ctx(), &fake(MAX_BATCH_KEYS + 1), &sig));

    let pk = recipient().public_key();
    assert_eq!(
        bad_reason(seal_batch(&pk, &ctx(), &[])),
        "0 keys, not 1 to 10000"
    );
    let m = materials(MAX_BATCH_KEYS + 1, 1);
    assert_eq!(
        bad_reason(seal_batch(&pk, &ctx(), &to_wrap(&m))),
        "10001 keys, not 1 to 10000"
    );
}

#[test]
fn seal_refuses_bad_keys() {
    let pk = recipient().public_key();
    let seal = |id: &str, version: u32, material: Vec<u8>| {
        let m = [
            (key_id(0), 1, SecretBytes::new(vec![1; 32])),
            (id.to_string(), version, SecretBytes::new(material)),
        ];
        seal_batch(&pk, &ctx(), &to_wrap(&m))
    };
    assert_eq!(
        bad_reason(seal("k2", 1, vec![])),
        "key k2 version 1: material is 0 bytes, not 1 to 64"
    );
    assert_eq!(
        bad_reason(seal("k2", 1, vec![0; 65])),
        "key k2 version 1: material is 65 bytes, not 1 to 64"
    );
    assert_eq!(
        bad_reason(seal("", 1, vec![0; 32])),
        "key  version 1: key id is 0 bytes, not 1 to 255"
    );
    let long = "x".repeat(MAX_KEY_ID_LEN + 1);
    assert!(bad_reason(seal(&long, 1, vec![0; 32])).ends_with("key id is 256 bytes, not 1 to 255"));
    assert!(seal(&"x".repeat(MAX_KEY_ID_LEN), 1, vec![0; 32]).is_ok());
    assert_eq!(
        bad_reason(seal(&key_id(0), 1, vec![0; 32])),
        format!("key {} version 1: appears twice", key_id(0))
    );
    assert!(seal(&key_id(0), 2, vec![0; 32]).is_ok());
}

#[test]
fn node_names_are_bounded() {
    let m = materials(1, 32);
    let pk = recipient().public_key();
    let long = "n".repeat(MAX_NODE_NAME_LEN + 1);
    let (b, sig) = signed3();
    for (c, want) in [
        (
            BatchContext {
                source_node: "",
                ..ctx()
            },
            "source node name is 0 bytes, not 1 to 255",
        ),
        (
            BatchContext {
                dest_node: &long,
                ..ctx()
            },
            "destination node name is 256 bytes, not 1 to 255",
        ),
    ] {
        assert_eq!(bad_reason(seal_batch(&pk, &c, &to_wrap(&m))), want);
        assert_eq!(bad_reason(open(&c, &b)), want);
        assert_eq!(bad_reason(verify(&c, &b, &sig)), want);
    }
    let longest = "n".repeat(MAX_NODE_NAME_LEN);
    let c = BatchContext {
        source_node: &longest,
        dest_node: &longest,
        ..ctx()
    };
    let b = seal_batch(&pk, &c, &to_wrap(&m)).unwrap();
    assert_eq!(open(&c, &b).unwrap().len(), 1);
}

#[test]
fn low_order_recipient_key_is_refused() {
    let m = materials(1, 32);
    let reason = bad_reason(seal_batch(&[0; 32], &ctx(), &to_wrap(&m)));
    assert!(reason.contains("encapsulation failed"), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// messages

#[test]
fn unwrap_error_names_the_key_escaped() {
    let m = [(
        "evil\nkey\u{1b}[31m".to_string(),
        9,
        SecretBytes::new(vec![1; 32]),
    )];
    let mut b = seal_batch(&recipient().public_key(), &ctx(), &to_wrap(&m)).unwrap();
    b.keys[0].ciphertext[0] ^= 1;
    let err = open(&ctx(), &b).unwrap_err().to_string();
    assert_eq!(
        err,
        "cannot unwrap key evil\\nkey\\u{1b}[31m version 9 in batch 3: authentication failed \
         (tampered, relabelled or reordered, another batch context, or not sealed to this node)"
    );
    assert_eq!(
        CryptoError::BadBatchSignature { batch: 7 }.to_string(),
        "bad signature on transfer batch 7"
    );
}

#[test]
fn opened_material_debug_is_redacted() {
    let opened = open(&ctx(), &sealed(1, 32)).unwrap();
    let d = format!("{opened:?}");
    assert!(d.contains("redacted"), "{d}");
    assert!(!d.contains(&hex::encode([0u8; 32])));
}

// ---------------------------------------------------------------------------------------------
// properties

mod props {
    use super::*;
    use proptest::prelude::*;

    /// A copy of the reference batch, its context and signature, one byte changed.
    struct Mutated {
        grant: [u8; 16],
        batch: u32,
        source: String,
        dest: String,
        sealed: SealedBatch,
        sig: [u8; 64],
        in_signature: bool,
    }

    /// Flips byte `i` (counted across every signed field, then the signature) of a copy of the
    /// reference batch. String bytes are flipped within ASCII so they stay UTF-8.
    fn mutate(b: &SealedBatch, sig: &[u8; 64], i: usize, flip: u8) -> Mutated {
        let mut grant = GRANT;
        let mut batch = ctx().batch.to_be_bytes();
        let mut src = ctx().source_node.as_bytes().to_vec();
        let mut dst = ctx().dest_node.as_bytes().to_vec();
        let mut sealed = b.clone();
        let mut suite = sealed.suite.to_be_bytes();
        let mut sig = *sig;
        let mut i = i;
        let hit = |field: &mut [u8], i: &mut usize| -> bool {
            if *i < field.len() {
                field[*i] ^= flip;
                true
            } else {
                *i -= field.len();
                false
            }
        };
        let in_fields = hit(&mut grant, &mut i)
            || hit(&mut batch, &mut i)
            || hit(&mut src, &mut i)
            || hit(&mut dst, &mut i)
            || hit(&mut suite, &mut i)
            || hit(&mut sealed.enc, &mut i)
            || sealed.keys.iter_mut().any(|k| {
                let mut id = std::mem::take(&mut k.key_id).into_bytes();
                let mut version = k.version.to_be_bytes();
                let r = hit(&mut id, &mut i)
                    || hit(&mut version, &mut i)
                    || hit(&mut k.ciphertext, &mut i);
                k.key_id = String::from_utf8(id).unwrap();
                k.version = u32::from_be_bytes(version);
                r
            });
        if !in_fields {
            assert!(hit(&mut sig, &mut i), "index out of range");
        }
        sealed.suite = u64::from_be_bytes(suite);
        Mutated {
            grant,
            batch: u32::from_be_bytes(batch),
            source: String::from_utf8(src).unwrap(),
            dest: String::from_utf8(dst).unwrap(),
            sealed,
            sig,
            in_signature: !in_fields,
        }
    }

    fn reference() -> (SealedBatch, [u8; 64], usize) {
        let b = sealed(3, 32);
        let sig = sign_batch(&source(), &ctx(), &b);
        let signed_fields = 16
            + 4
            + ctx().source_node.len()
            + ctx().dest_node.len()
            + 8
            + b.enc.len()
            + b.keys
                .iter()
                .map(|k| k.key_id.len() + 4 + k.ciphertext.len())
                .sum::<usize>();
        (b, sig, signed_fields + 64)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_single_byte_change_fails(
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=0x7f,
        ) {
            let (b, sig, total) = reference();
            let m = mutate(&b, &sig, pos.index(total), flip);
            let c = BatchContext {
                grant_id: &m.grant,
                batch: m.batch,
                source_node: &m.source,
                dest_node: &m.dest,
            };
            let pk = source().public_key();
            prop_assert!(verify_batch(&pk, &c, &m.sealed, &m.sig).is_err());
            prop_assert!(verify_and_open_batch(&recipient(), &pk, &c, &m.sealed, &m.sig).is_err());
            // Everything but the signature is also bound by HPKE itself.
            prop_assert_eq!(open_batch(&recipient(), &c, &m.sealed).is_ok(), m.in_signature);
        }

        #[test]
        fn junk_never_panics(
            suite_ok in any::<bool>(),
            enc in proptest::collection::vec(any::<u8>(), 0..40),
            keys in proptest::collection::vec(
                ("[a-z0-9-]{0,8}", any::<u32>(), proptest::collection::vec(any::<u8>(), 0..90)),
                0..4,
            ),
            sig in proptest::collection::vec(any::<u8>(), 0..70),
        ) {
            let b = SealedBatch {
                suite: if suite_ok { SUITE_X25519_SHA256_CHACHA20 } else { 1 },
                enc,
                keys: keys
                    .into_iter()
                    .map(|(key_id, version, ciphertext)| SealedKey { key_id, version, ciphertext, attributes: Vec::new() })
                    .collect(),
            };
            prop_assert!(open_batch(&recipient(), &ctx(), &b).is_err());
            prop_assert!(verify_batch(&source().public_key(), &ctx(), &b, &sig).is_err());
        }
    }
}
