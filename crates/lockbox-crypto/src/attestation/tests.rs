#![allow(clippy::unwrap_used)]
use std::collections::BTreeSet;

use super::*;
use crate::grant::GRANT_DOMAIN;
use crate::identity::HpkeIdentity;
use crate::secret::SecretBytes;

const T0: u64 = 1_750_000_000_000;
const NOT_BEFORE: u64 = T0;
const EXPIRES: u64 = T0 + 86_400_000;
const TLS: [u8; 32] = [0x77; 32];

fn controller(byte: u8) -> SigningIdentity {
    SigningIdentity::from_secret(&SecretBytes::new(vec![byte; 32])).unwrap()
}

fn node_signing() -> SigningIdentity {
    controller(0x51)
}

fn node_hpke() -> HpkeIdentity {
    HpkeIdentity::from_secret(&SecretBytes::new(vec![0x61; 32])).unwrap()
}

fn body() -> AttestationBody {
    AttestationBody {
        node: "node-b".into(),
        trust_domain: "example.org".into(),
        hpke_public_key: node_hpke().public_key().to_vec(),
        hpke_kem_id: HPKE_KEM_X25519,
        signing_public_key: node_signing().public_key().to_vec(),
        tls_spki_sha256: TLS.to_vec(),
        not_before_unix_ms: NOT_BEFORE,
        expires_unix_ms: EXPIRES,
        issuer_key_id: "ctl-1".into(),
        assist_public_key: Vec::new(),
    }
}

/// The assist key in bodies and requests that carry one: the ristretto255 generator, a
/// proper group element.
fn assist_key() -> [u8; 32] {
    curve25519_dalek::constants::RISTRETTO_BASEPOINT_COMPRESSED.to_bytes()
}

fn body_with_assist() -> AttestationBody {
    AttestationBody {
        assist_public_key: assist_key().to_vec(),
        ..body()
    }
}

fn trusted() -> TrustedControllers {
    let mut t = TrustedControllers::new();
    for i in 1..=3u8 {
        t.insert(format!("ctl-{i}"), controller(i).public_key());
    }
    t
}

fn signed_bytes(bytes: Vec<u8>, signers: &[u8]) -> SignedAttestation {
    let signatures = signers
        .iter()
        .map(|&i| sign_attestation_body(&controller(i), &format!("ctl-{i}"), &bytes))
        .collect();
    SignedAttestation {
        body: bytes,
        signatures,
    }
}

fn signed(body: &AttestationBody, signers: &[u8]) -> SignedAttestation {
    signed_bytes(encode_attestation_body(body).unwrap(), signers)
}

fn ctx() -> AttestationContext<'static> {
    AttestationContext {
        now_unix_ms: T0 + 1_000,
        skew_ms: 0,
        threshold: 1,
        expected_node: Some("node-b"),
        peer_tls_spki_sha256: Some(&TLS),
    }
}

fn verify(
    a: &SignedAttestation,
    c: &AttestationContext<'_>,
) -> std::result::Result<VerifiedAttestation, AttestationError> {
    verify_attestation(a, &trusted(), c)
}

fn err(a: &SignedAttestation, c: &AttestationContext<'_>) -> AttestationError {
    verify(a, c).unwrap_err()
}

#[test]
fn verifies_and_extracts_keys() {
    let v = verify(&signed(&body(), &[2]), &ctx()).unwrap();
    assert_eq!(v.body, body());
    assert_eq!(v.hpke_public_key, node_hpke().public_key());
    assert_eq!(v.signing_public_key, node_signing().public_key());
    assert_eq!(v.tls_spki_sha256, TLS);
    assert_eq!(v.assist_public_key, None);
    assert_eq!(v.valid_signers, ["ctl-2"]);
    // Nothing expected: only signatures and time are checked.
    let open = AttestationContext {
        expected_node: None,
        peer_tls_spki_sha256: None,
        ..ctx()
    };
    verify(&signed(&body(), &[2]), &open).unwrap();
}

#[test]
fn signatures_are_domain_separated() {
    let bytes = encode_attestation_body(&body()).unwrap();
    let sig = sign_attestation_body(&controller(1), "ctl-1", &bytes);
    assert_eq!(
        sig.signature,
        controller(1).sign("lockbox/v1/attestation", &bytes)
    );
    // A grant signature over the same bytes is not an attestation signature.
    let a = SignedAttestation {
        body: bytes.clone(),
        signatures: vec![Signature {
            key_id: "ctl-1".into(),
            signature: controller(1).sign(GRANT_DOMAIN, &bytes).to_vec(),
        }],
    };
    assert_eq!(
        err(&a, &ctx()),
        AttestationError::BadSignature("ctl-1".into())
    );
}

type Edit = fn(&mut AttestationBody);

#[test]
fn encode_refuses_what_verifiers_refuse() {
    let cases: [(&str, Edit); 10] = [
        ("empty node name", |b| b.node.clear()),
        ("empty trust domain", |b| b.trust_domain.clear()),
        ("hpke public key is not 32 bytes", |b| {
            b.hpke_public_key.pop();
        }),
        ("signing public key is not 32 bytes", |b| {
            b.signing_public_key.push(0);
        }),
        ("signing public key is not a usable ed25519 key", |b| {
            // The identity point: small order.
            b.signing_public_key = [&[1u8][..], &[0; 31]].concat();
        }),
        ("signing public key is not a usable ed25519 key", |b| {
            b.signing_public_key = not_a_point().to_vec();
        }),
        ("tls spki hash is not 32 bytes", |b| {
            b.tls_spki_sha256.clear()
        }),
        ("not_before is not before expires", |b| {
            b.not_before_unix_ms = EXPIRES;
        }),
        ("not_before is not before expires", |b| {
            b.not_before_unix_ms = EXPIRES + 1;
        }),
        ("empty node name", |b| *b = AttestationBody::default()),
    ];
    for (reason, edit) in cases {
        let mut b = body();
        edit(&mut b);
        assert_eq!(
            encode_attestation_body(&b).unwrap_err().to_string(),
            format!("malformed attestation body ({reason})")
        );
        let a = signed_bytes(b.encode_to_vec(), &[1]);
        assert_eq!(err(&a, &ctx()), AttestationError::Malformed(reason.into()));
    }
}

fn not_a_point() -> [u8; 32] {
    (2u8..)
        .map(|b| [b; 32])
        .find(|k| VerifyingKey::from_bytes(k).is_err())
        .unwrap()
}

#[test]
fn unsupported_kem() {
    let mut b = body();
    b.hpke_kem_id = 0x647a; // X-Wing
    assert_eq!(
        encode_attestation_body(&b).unwrap_err().to_string(),
        "malformed attestation body (unsupported hpke kem)"
    );
    let e = err(&signed_bytes(b.encode_to_vec(), &[1]), &ctx());
    assert_eq!(e, AttestationError::UnsupportedKem(0x647a));
    assert_eq!(e.to_string(), "unsupported hpke kem 0x647a");
    b.hpke_kem_id = 0;
    assert_eq!(
        err(&signed_bytes(b.encode_to_vec(), &[1]), &ctx()),
        AttestationError::UnsupportedKem(0)
    );
}

#[test]
fn decoding_is_strict() {
    let bytes = encode_attestation_body(&body()).unwrap();
    let mut unknown = bytes.clone();
    unknown.extend_from_slice(&[0x58, 0x01]); // field 11
    let mut repeated = bytes.clone();
    repeated.extend_from_slice(&[0x0a, 0x01, b'x']); // node again
    for (name, raw, reason) in [
        ("garbage", vec![0xff; 5], "body is not a protobuf"),
        ("unknown field", unknown, "body is not canonically encoded"),
        (
            "repeated field",
            repeated,
            "body is not canonically encoded",
        ),
    ] {
        match err(&signed_bytes(raw, &[1]), &ctx()) {
            AttestationError::Malformed(m) => assert!(m.starts_with(reason), "{name}: {m}"),
            e => panic!("{name}: {e}"),
        }
    }
    assert_eq!(decode_attestation_body(&bytes).unwrap(), body());
    let mut a = signed(&body(), &[1]);
    let s = a.signatures[0].clone();
    a.signatures.resize(MAX_SIGNATURES + 1, s);
    assert_eq!(
        err(&a, &ctx()),
        AttestationError::Malformed("33 signatures, at most 32 allowed".into())
    );
}

#[test]
fn signers_and_threshold() {
    let two = AttestationContext {
        threshold: 2,
        ..ctx()
    };
    // Unknown signer: named only when the threshold fails.
    let bytes = encode_attestation_body(&body()).unwrap();
    let mut a = signed_bytes(bytes.clone(), &[1]);
    a.signatures
        .push(sign_attestation_body(&controller(9), "ctl-9", &bytes));
    assert_eq!(verify(&a, &ctx()).unwrap().valid_signers, ["ctl-1"]);
    let e = err(&a, &two);
    assert_eq!(e, AttestationError::UnknownSigner("ctl-9".into()));
    assert_eq!(
        e.to_string(),
        "attestation signed by unknown controller key ctl-9"
    );
    // Bad signature from a trusted key: fatal even when the threshold is met.
    let mut a = signed(&body(), &[1, 2, 3]);
    a.signatures[1].signature[40] ^= 1;
    assert_eq!(
        err(&a, &two),
        AttestationError::BadSignature("ctl-2".into())
    );
    // 2 of 3.
    assert_eq!(
        err(&signed(&body(), &[3]), &two),
        AttestationError::ThresholdNotMet {
            valid: 1,
            required: 2
        }
    );
    assert_eq!(
        verify(&signed(&body(), &[3, 1]), &two)
            .unwrap()
            .valid_signers,
        ["ctl-3", "ctl-1"]
    );
    // Counted once.
    assert_eq!(
        err(&signed(&body(), &[2, 2]), &two),
        AttestationError::ThresholdNotMet {
            valid: 1,
            required: 2
        }
    );
    assert_eq!(
        err(&signed(&body(), &[]), &ctx()),
        AttestationError::ThresholdNotMet {
            valid: 0,
            required: 1
        }
    );
}

#[test]
fn skew_boundaries() {
    let a = signed(&body(), &[1]);
    let at = |now: u64, skew: u64| {
        verify(
            &a,
            &AttestationContext {
                now_unix_ms: now,
                skew_ms: skew,
                ..ctx()
            },
        )
        .map(|_| ())
    };
    for skew in [0, 60_000] {
        assert_eq!(at(NOT_BEFORE - skew, skew), Ok(()));
        assert_eq!(
            at(NOT_BEFORE - skew - 1, skew),
            Err(AttestationError::NotYetValid {
                not_before_unix_ms: NOT_BEFORE,
                now_unix_ms: NOT_BEFORE - skew - 1
            })
        );
        assert_eq!(at(EXPIRES + skew - 1, skew), Ok(()));
        assert_eq!(
            at(EXPIRES + skew, skew),
            Err(AttestationError::Expired {
                expires_unix_ms: EXPIRES,
                now_unix_ms: EXPIRES + skew
            })
        );
    }
}

#[test]
fn wrong_node_and_tls_key() {
    let a = signed(&body(), &[1]);
    let e = err(
        &a,
        &AttestationContext {
            expected_node: Some("node-c"),
            ..ctx()
        },
    );
    assert_eq!(
        e,
        AttestationError::WrongNode {
            expected: "node-c".into(),
            got: "node-b".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "wrong node: expected node-c, attestation names node-b"
    );
    let other = [0x78; 32];
    let e = err(
        &a,
        &AttestationContext {
            peer_tls_spki_sha256: Some(&other),
            ..ctx()
        },
    );
    assert_eq!(e, AttestationError::WrongTlsKey);
    assert_eq!(
        e.to_string(),
        "attestation does not match the peer's tls key"
    );
}

#[test]
fn claims_of_a_verified_attestation_are_checked_against_each_call() {
    // What a destination that remembers a verified attestation re-checks on every delivery:
    // the same verdicts as a full verification at that moment, for that peer.
    let v = verify(&signed(&body(), &[1]), &ctx()).unwrap();
    assert_eq!(check_attestation_claims(&v, &ctx()), Ok(()));
    let later = AttestationContext {
        now_unix_ms: EXPIRES,
        ..ctx()
    };
    assert_eq!(
        check_attestation_claims(&v, &later),
        Err(AttestationError::Expired {
            expires_unix_ms: EXPIRES,
            now_unix_ms: EXPIRES
        })
    );
    assert_eq!(
        check_attestation_claims(&v, &later),
        verify(&signed(&body(), &[1]), &later).map(|_| ())
    );
    let early = AttestationContext {
        now_unix_ms: NOT_BEFORE - 1,
        ..ctx()
    };
    assert!(matches!(
        check_attestation_claims(&v, &early),
        Err(AttestationError::NotYetValid { .. })
    ));
    let elsewhere = AttestationContext {
        expected_node: Some("node-c"),
        ..ctx()
    };
    assert!(matches!(
        check_attestation_claims(&v, &elsewhere),
        Err(AttestationError::WrongNode { .. })
    ));
    let other = [0x78; 32];
    let other_tls = AttestationContext {
        peer_tls_spki_sha256: Some(&other),
        ..ctx()
    };
    assert_eq!(
        check_attestation_claims(&v, &other_tls),
        Err(AttestationError::WrongTlsKey)
    );
}

#[test]
fn checks_run_in_spec_order() {
    let mut b = body();
    b.not_before_unix_ms = T0 + 10_000;
    let other = [0u8; 32];
    let c = AttestationContext {
        threshold: 2,
        expected_node: Some("node-x"),
        peer_tls_spki_sha256: Some(&other),
        ..ctx()
    };
    let code = |a: &SignedAttestation, c: &AttestationContext<'_>| err(a, c).code();
    let mut kem = b.clone();
    kem.hpke_kem_id = 1;
    assert_eq!(
        code(&signed_bytes(kem.encode_to_vec(), &[9]), &c),
        "unsupported_kem"
    );
    let mut bad = signed(&b, &[1, 9]);
    bad.signatures[0].signature[0] ^= 1;
    assert_eq!(code(&bad, &c), "bad_signature");
    assert_eq!(code(&signed(&b, &[1, 9]), &c), "unknown_signer");
    assert_eq!(code(&signed(&b, &[1]), &c), "threshold_not_met");
    let c = AttestationContext { threshold: 1, ..c };
    assert_eq!(code(&signed(&b, &[1]), &c), "not_yet_valid");
    let c = AttestationContext {
        now_unix_ms: T0 + 10_000,
        ..c
    };
    assert_eq!(code(&signed(&b, &[1]), &c), "wrong_node");
    let c = AttestationContext {
        expected_node: Some("node-b"),
        ..c
    };
    assert_eq!(code(&signed(&b, &[1]), &c), "wrong_tls_key");
}

#[test]
fn error_codes_are_distinct_and_messages_lowercase() {
    let all = [
        AttestationError::Malformed("x".into()),
        AttestationError::UnknownSigner("x".into()),
        AttestationError::BadSignature("x".into()),
        AttestationError::ThresholdNotMet {
            valid: 0,
            required: 1,
        },
        AttestationError::NotYetValid {
            not_before_unix_ms: 1,
            now_unix_ms: 0,
        },
        AttestationError::Expired {
            expires_unix_ms: 1,
            now_unix_ms: 2,
        },
        AttestationError::WrongNode {
            expected: "a".into(),
            got: "b".into(),
        },
        AttestationError::WrongTlsKey,
        AttestationError::UnsupportedKem(7),
    ];
    let codes: BTreeSet<&str> = all.iter().map(AttestationError::code).collect();
    assert_eq!(codes.len(), all.len());
    for e in &all {
        let m = e.to_string();
        assert!(m.starts_with(|c: char| c.is_ascii_lowercase()), "{m}");
    }
}

// ---------------------------------------------------------------------------------------------
// proof of possession

fn request_message() -> Vec<u8> {
    attest_request_message(
        "node-b",
        "example.org",
        HPKE_KEM_X25519,
        &node_hpke().public_key(),
        &node_signing().public_key(),
        &TLS,
        None,
    )
}

#[test]
fn attest_request_message_layout() {
    let msg = request_message();
    let mut want = Vec::new();
    want.extend_from_slice(&6u32.to_be_bytes());
    want.extend_from_slice(b"node-b");
    want.extend_from_slice(&11u32.to_be_bytes());
    want.extend_from_slice(b"example.org");
    want.extend_from_slice(&[0, 0, 0, 0x20]);
    want.extend_from_slice(&32u32.to_be_bytes());
    want.extend_from_slice(&node_hpke().public_key());
    want.extend_from_slice(&32u32.to_be_bytes());
    want.extend_from_slice(&node_signing().public_key());
    want.extend_from_slice(&TLS);
    assert_eq!(msg, want);
    // Length prefixes keep field boundaries apart.
    let m = |n: &str, d: &str| attest_request_message(n, d, 0x20, &[], &[], &TLS, None);
    assert_ne!(m("ab", "c"), m("a", "bc"));
}

#[test]
fn proof_of_possession() {
    let id = node_signing();
    let pk = id.public_key();
    let msg = request_message();
    let proof = sign_attest_request(&id, &msg);
    assert_eq!(proof.len(), 64);
    assert_eq!(proof, id.sign(ATTEST_REQUEST_DOMAIN, &msg));
    verify_attest_request(&pk, &msg, &proof).unwrap();

    // The controller rebuilds the message from what it sees; any difference fails.
    let hpke = node_hpke().public_key();
    let variants = [
        attest_request_message("node-c", "example.org", 0x20, &hpke, &pk, &TLS, None),
        attest_request_message("node-b", "example.net", 0x20, &hpke, &pk, &TLS, None),
        attest_request_message("node-b", "example.org", 0x21, &hpke, &pk, &TLS, None),
        attest_request_message("node-b", "example.org", 0x20, &[0; 32], &pk, &TLS, None),
        attest_request_message("node-b", "example.org", 0x20, &hpke, &[0; 32], &TLS, None),
        attest_request_message("node-b", "example.org", 0x20, &hpke, &pk, &[0; 32], None),
    ];
    for other in &variants {
        assert!(matches!(
            verify_attest_request(&pk, other, &proof),
            Err(CryptoError::BadSignature)
        ));
    }
    // Someone else's key, a proof for another purpose, a flipped bit.
    assert!(matches!(
        verify_attest_request(&controller(1).public_key(), &msg, &proof),
        Err(CryptoError::BadSignature)
    ));
    let grant_sig = id.sign(GRANT_DOMAIN, &msg);
    assert!(matches!(
        verify_attest_request(&pk, &msg, &grant_sig),
        Err(CryptoError::BadSignature)
    ));
    let mut flipped = proof.clone();
    flipped[63] ^= 0x10;
    assert!(matches!(
        verify_attest_request(&pk, &msg, &flipped),
        Err(CryptoError::BadSignature)
    ));
    // Lengths.
    assert!(matches!(
        verify_attest_request(&pk[..31], &msg, &proof),
        Err(CryptoError::BadLength {
            expected: 32,
            got: 31,
            ..
        })
    ));
    assert!(matches!(
        verify_attest_request(&pk, &msg, &proof[..63]),
        Err(CryptoError::BadLength {
            expected: 64,
            got: 63,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// assist public key

#[test]
fn assist_key_is_optional_and_checked_when_present() {
    let v = verify(&signed(&body_with_assist(), &[1]), &ctx()).unwrap();
    assert_eq!(v.assist_public_key, Some(assist_key()));
    assert_eq!(v.body, body_with_assist());
    // Present, it changes the signed bytes: it cannot be stripped or swapped unnoticed.
    let with = signed(&body_with_assist(), &[1]);
    let without = signed(&body(), &[1]);
    assert_ne!(with.body, without.body);
    let swapped = SignedAttestation {
        body: without.body.clone(),
        signatures: with.signatures.clone(),
    };
    assert_eq!(
        err(&swapped, &ctx()),
        AttestationError::BadSignature("ctl-1".into())
    );

    let cases: [(&str, Vec<u8>); 5] = [
        (
            "assist public key is not 32 bytes",
            assist_key()[..31].to_vec(),
        ),
        (
            "assist public key is not 32 bytes",
            [&assist_key()[..], &[0]].concat(),
        ),
        // All ones: above the field prime, so not a canonical encoding.
        (
            "assist public key is not a usable ristretto255 point",
            vec![0xff; 32],
        ),
        // The identity: every answer to it would be the identity too.
        (
            "assist public key is not a usable ristretto255 point",
            vec![0; 32],
        ),
        // A negative field element (low bit set) is never a canonical ristretto255 encoding.
        ("assist public key is not a usable ristretto255 point", {
            let mut k = assist_key().to_vec();
            k[0] |= 1;
            k
        }),
    ];
    for (reason, key) in cases {
        let b = AttestationBody {
            assist_public_key: key,
            ..body()
        };
        assert_eq!(
            encode_attestation_body(&b).unwrap_err().to_string(),
            format!("malformed attestation body ({reason})")
        );
        let a = signed_bytes(b.encode_to_vec(), &[1]);
        assert_eq!(err(&a, &ctx()), AttestationError::Malformed(reason.into()));
    }
}

#[test]
fn attest_request_message_appends_the_assist_key_when_sent() {
    let without = request_message();
    let with = attest_request_message(
        "node-b",
        "example.org",
        HPKE_KEM_X25519,
        &node_hpke().public_key(),
        &node_signing().public_key(),
        &TLS,
        Some(&assist_key()),
    );
    let mut want = without.clone();
    want.extend_from_slice(&32u32.to_be_bytes());
    want.extend_from_slice(&assist_key());
    assert_eq!(with, want);

    // A proof covers the key: it does not verify without it, nor with another one.
    let id = node_signing();
    let pk = id.public_key();
    let proof = sign_attest_request(&id, &with);
    verify_attest_request(&pk, &with, &proof).unwrap();
    assert!(matches!(
        verify_attest_request(&pk, &without, &proof),
        Err(CryptoError::BadSignature)
    ));
    let other = attest_request_message(
        "node-b",
        "example.org",
        HPKE_KEM_X25519,
        &node_hpke().public_key(),
        &pk,
        &TLS,
        Some(&[0x42; 32]),
    );
    assert!(matches!(
        verify_attest_request(&pk, &other, &proof),
        Err(CryptoError::BadSignature)
    ));
    // An older node's proof (no key) still verifies against a message without one.
    let old = sign_attest_request(&id, &without);
    verify_attest_request(&pk, &without, &old).unwrap();
    assert!(verify_attest_request(&pk, &with, &old).is_err());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_single_byte_change_fails(
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut a = signed(&body(), &[1]);
            let i = pos.index(a.body.len() + 64);
            if i < a.body.len() {
                a.body[i] ^= flip;
            } else {
                a.signatures[0].signature[i - a.body.len()] ^= flip;
            }
            prop_assert!(verify(&a, &ctx()).is_err());
        }

        #[test]
        fn decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = verify(&signed_bytes(body, &[1]), &ctx());
        }
    }
}
