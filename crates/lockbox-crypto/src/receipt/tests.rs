#![allow(clippy::unwrap_used)]
use super::*;
use crate::grant::GRANT_DOMAIN;
use crate::secret::SecretBytes;

const K1: &str = "5f0c2a3e-8d7b-4c1a-9e2f-0a1b2c3d4e5f";
const K2: &str = "9b1d4c7e-2a3f-4e5d-8c6b-7a8f9e0d1c2b";
const GRANT_ID: [u8; 16] = [0x42; 16];

fn dest() -> SigningIdentity {
    SigningIdentity::from_secret(&SecretBytes::new(vec![0xd0; 32])).unwrap()
}

fn other() -> SigningIdentity {
    SigningIdentity::from_secret(&SecretBytes::new(vec![0xd1; 32])).unwrap()
}

fn key_ids() -> Vec<String> {
    vec![K1.into(), K2.into()]
}

fn stored(key_id: &str, versions: &[u32]) -> StoredVersions {
    StoredVersions {
        key_id: key_id.into(),
        versions: versions.to_vec(),
    }
}

/// A receipt for a MOVE of K1 (versions 1, 2) and K2 (version 3) from node-a to node-b.
fn body() -> ReceiptBody {
    ReceiptBody {
        grant_id: GRANT_ID.to_vec(),
        op: GrantOp::Move as i32,
        source_node: "node-a".into(),
        dest_node: "node-b".into(),
        key_ids: key_ids(),
        stored_unix_ms: 1_750_000_000_000,
        stored: vec![stored(K1, &[1, 2]), stored(K2, &[3])],
    }
}

fn expect(keys: &[String]) -> ReceiptExpectation<'_> {
    ReceiptExpectation {
        grant_id: &GRANT_ID,
        op: GrantOp::Move,
        source_node: "node-a",
        dest_node: "node-b",
        key_ids: keys,
    }
}

/// `body` encoded without the checks of `sign_receipt` and signed by the destination, as a
/// faulty or malicious destination could.
fn signed_raw(bytes: &[u8]) -> (Vec<u8>, [u8; 64]) {
    (bytes.to_vec(), dest().sign(RECEIPT_DOMAIN, bytes))
}

fn signed_body(b: &ReceiptBody) -> (Vec<u8>, [u8; 64]) {
    signed_raw(&b.encode_to_vec())
}

fn verify_bytes(body: &[u8], sig: &[u8]) -> Result<ReceiptBody, ReceiptError> {
    let keys = key_ids();
    verify_receipt(&dest().public_key(), body, sig, &expect(&keys))
}

fn verify_edited(f: impl FnOnce(&mut ReceiptBody)) -> Result<ReceiptBody, ReceiptError> {
    let mut b = body();
    f(&mut b);
    let (raw, sig) = signed_body(&b);
    verify_bytes(&raw, &sig)
}

#[test]
fn sign_then_verify_returns_the_body() {
    let r = sign_receipt(&dest(), &body()).unwrap();
    assert_eq!(r.body, body().encode_to_vec());
    assert_eq!(verify_bytes(&r.body, &r.signature).unwrap(), body());
}

#[test]
fn signed_bytes_are_domain_nul_body() {
    // Pinned independently of `SigningIdentity::sign`: strict Ed25519 over the exact bytes.
    let r = sign_receipt(&dest(), &body()).unwrap();
    let msg = [b"lockbox/v1/receipt".as_slice(), &[0], &r.body].concat();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&dest().public_key()).unwrap();
    key.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&r.signature))
        .unwrap();
    assert_eq!(RECEIPT_DOMAIN, "lockbox/v1/receipt");
}

#[test]
fn receipts_signed_as_the_daemon_did_still_verify() {
    // lockboxd signed `ReceiptBody.encode_to_vec()` with `sign("lockbox/v1/receipt", ..)`;
    // those receipts are stored at both ends and returned again on retries.
    let raw = body().encode_to_vec();
    let sig = dest().sign("lockbox/v1/receipt", &raw);
    assert_eq!(verify_bytes(&raw, &sig).unwrap(), body());
    // And from destinations that predate `stored`.
    let mut old = body();
    old.stored.clear();
    let raw = old.encode_to_vec();
    let sig = dest().sign("lockbox/v1/receipt", &raw);
    assert_eq!(verify_bytes(&raw, &sig).unwrap(), old);
}

#[test]
fn expectation_for_grant_takes_every_field_from_the_grant() {
    let grant = VerifiedGrant {
        body: lockbox_proto::v1::GrantBody {
            grant_id: GRANT_ID.to_vec(),
            key_ids: key_ids(),
            source_node: "node-a".into(),
            dest_node: "node-b".into(),
            op: GrantOp::Move as i32,
            not_before_unix_ms: 1,
            expires_unix_ms: 2,
            ..Default::default()
        },
        grant_id: GRANT_ID,
        body_sha256: [0; 32],
        valid_signers: vec!["ctl-1".into()],
    };
    let e = ReceiptExpectation::for_grant(&grant);
    assert_eq!(e.grant_id, &GRANT_ID);
    assert_eq!(e.op, GrantOp::Move);
    assert_eq!((e.source_node, e.dest_node), ("node-a", "node-b"));
    assert_eq!(e.key_ids, key_ids().as_slice());
    let r = sign_receipt(&dest(), &body()).unwrap();
    verify_receipt(&dest().public_key(), &r.body, &r.signature, &e).unwrap();
}

#[test]
fn stored_entries_in_any_order_and_empty_stored_are_accepted() {
    verify_edited(|b| b.stored.reverse()).unwrap();
    verify_edited(|b| b.stored.clear()).unwrap();
    verify_edited(|b| b.stored_unix_ms = 0).unwrap();
    verify_edited(|b| b.stored[0].versions = vec![1, u32::MAX]).unwrap();
}

#[test]
fn sizes_are_checked_first() {
    let big = vec![0u8; MAX_RECEIPT_LEN + 1];
    assert_eq!(
        verify_bytes(&big, &[0; 64]).unwrap_err(),
        ReceiptError::TooLarge(MAX_RECEIPT_LEN + 1)
    );
    // Even with a signature of the wrong length: the body is bounded first.
    assert_eq!(verify_bytes(&big, &[0; 3]).unwrap_err().code(), "too_large");
    let (raw, sig) = signed_body(&body());
    for len in [0, 63, 65, 128] {
        let mut s = sig.to_vec();
        s.resize(len, 0);
        assert_eq!(
            verify_bytes(&raw, &s).unwrap_err(),
            ReceiptError::BadSignatureLength(len)
        );
    }
}

#[test]
fn bad_signatures_are_refused() {
    let (raw, sig) = signed_body(&body());
    let mut flipped = sig;
    flipped[7] ^= 0x01;
    assert_eq!(
        verify_bytes(&raw, &flipped).unwrap_err(),
        ReceiptError::BadSignature
    );
    // Another node's key, another domain, an edited body.
    let by_other = other().sign(RECEIPT_DOMAIN, &raw);
    assert_eq!(
        verify_bytes(&raw, &by_other).unwrap_err(),
        ReceiptError::BadSignature
    );
    let other_domain = dest().sign(GRANT_DOMAIN, &raw);
    assert_eq!(
        verify_bytes(&raw, &other_domain).unwrap_err(),
        ReceiptError::BadSignature
    );
    let mut edited = raw.clone();
    *edited.last_mut().unwrap() ^= 0x01;
    assert_eq!(
        verify_bytes(&edited, &sig).unwrap_err(),
        ReceiptError::BadSignature
    );
    // A small-order public key never verifies (strict).
    let mut small = [0u8; 32];
    small[0] = 1;
    let keys = key_ids();
    assert_eq!(
        verify_receipt(&small, &raw, &sig, &expect(&keys)).unwrap_err(),
        ReceiptError::BadSignature
    );
}

#[test]
fn signature_is_checked_before_the_body_is_read() {
    // A body for the wrong grant that is also badly signed: the signature is reported.
    let mut b = body();
    b.grant_id = vec![0; 16];
    let raw = b.encode_to_vec();
    let sig = other().sign(RECEIPT_DOMAIN, &raw);
    assert_eq!(
        verify_bytes(&raw, &sig).unwrap_err(),
        ReceiptError::BadSignature
    );
    let (garbage, _) = signed_raw(&[0xff; 8]);
    assert_eq!(
        verify_bytes(&garbage, &[0; 64]).unwrap_err(),
        ReceiptError::BadSignature
    );
}

#[test]
fn strict_decoding() {
    let malformed = |raw: &[u8]| {
        let (raw, sig) = signed_raw(raw);
        verify_bytes(&raw, &sig).unwrap_err()
    };
    assert_eq!(
        malformed(&[0xff; 8]),
        ReceiptError::Malformed("body is not a protobuf ReceiptBody")
    );
    let canonical = ReceiptError::Malformed(
        "body is not canonically encoded (unknown, repeated, reordered or default-valued fields)",
    );
    // An unknown field (tag 15, varint).
    let mut unknown = body().encode_to_vec();
    unknown.extend_from_slice(&[0x78, 0x01]);
    assert_eq!(malformed(&unknown), canonical);
    // grant_id written twice (decoding keeps the last).
    let mut twice = body().encode_to_vec();
    twice.extend_from_slice(&[0x0a, 0x10]);
    twice.extend_from_slice(&GRANT_ID);
    assert_eq!(malformed(&twice), canonical);
    // Versions unpacked (each as its own varint field): decodes to the same body.
    let entry = |key: &str, versions: &[u32]| {
        let mut e = vec![0x0a, key.len() as u8];
        e.extend_from_slice(key.as_bytes());
        for &v in versions {
            e.extend_from_slice(&[0x10, v as u8]);
        }
        e
    };
    let mut unpacked = ReceiptBody {
        stored: vec![],
        ..body()
    }
    .encode_to_vec();
    for (k, v) in [(K1, &[1u32, 2][..]), (K2, &[3][..])] {
        let e = entry(k, v);
        unpacked.push(0x3a);
        unpacked.push(e.len() as u8);
        unpacked.extend_from_slice(&e);
    }
    assert_eq!(ReceiptBody::decode(unpacked.as_slice()).unwrap(), body());
    assert_eq!(malformed(&unpacked), canonical);
    // The empty body decodes (all defaults) and is canonical; it fails on the grant id.
    assert_eq!(malformed(&[]).code(), "wrong_grant_id");
}

#[test]
fn every_field_must_match_the_grant() {
    let e = verify_edited(|b| b.grant_id[15] ^= 1).unwrap_err();
    assert_eq!(e.code(), "wrong_grant_id");
    assert_eq!(
        e.to_string(),
        format!(
            "receipt is for grant {}43, not {}",
            "42".repeat(15),
            "42".repeat(16)
        )
    );
    assert_eq!(
        verify_edited(|b| b.grant_id.truncate(15))
            .unwrap_err()
            .code(),
        "wrong_grant_id"
    );
    let long = verify_edited(|b| b.grant_id = vec![0x42; 40]).unwrap_err();
    assert!(long.to_string().contains(&format!("{}…", "42".repeat(16))));

    for (op, name) in [
        (GrantOp::Copy as i32, "copy"),
        (GrantOp::Replicate as i32, "replicate"),
        (9, "unknown (9)"),
    ] {
        let e = verify_edited(|b| b.op = op).unwrap_err();
        assert_eq!(
            e,
            ReceiptError::WrongOp {
                expected: "move".into(),
                got: name.into()
            }
        );
    }
    assert_eq!(
        verify_edited(|b| b.source_node = "node-c".into()).unwrap_err(),
        ReceiptError::WrongSource {
            expected: "node-a".into(),
            got: "node-c".into()
        }
    );
    assert_eq!(
        verify_edited(|b| b.dest_node = "node-a".into()).unwrap_err(),
        ReceiptError::WrongDestination {
            expected: "node-b".into(),
            got: "node-a".into()
        }
    );
    // Escaped in the message.
    let e = verify_edited(|b| b.dest_node = "node-b\n\u{1b}[31m".into()).unwrap_err();
    assert!(!e.to_string().contains('\n') && !e.to_string().contains('\u{1b}'));
}

#[test]
fn key_ids_must_be_the_grants_in_order() {
    let e = verify_edited(|b| b.key_ids.reverse()).unwrap_err();
    assert_eq!(
        e,
        ReceiptError::WrongKeyIds {
            index: 0,
            expected: Some(K1.into()),
            got: Some(K2.into())
        }
    );
    let e = verify_edited(|b| {
        b.key_ids.pop();
        b.stored.pop();
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "receipt key ids differ from the grant's at position 1: the grant has {K2}, the \
             receipt no key id"
        )
    );
    let e = verify_edited(|b| b.key_ids.push(K1.into())).unwrap_err();
    assert_eq!(
        e,
        ReceiptError::WrongKeyIds {
            index: 2,
            expected: None,
            got: Some(K1.into())
        }
    );
}

#[test]
fn stored_must_be_well_formed() {
    let bad = |f: fn(&mut ReceiptBody)| verify_edited(f).unwrap_err();
    assert_eq!(
        bad(|b| b.stored[1].key_id = "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b".into()),
        ReceiptError::StoredKeyNotInGrant("0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b".into())
    );
    assert_eq!(
        bad(|b| b.stored[1] = stored(K1, &[3])),
        ReceiptError::StoredKeyTwice(K1.into())
    );
    assert_eq!(
        bad(|b| {
            b.stored.pop();
        }),
        ReceiptError::StoredKeyMissing(K2.into())
    );
    assert_eq!(
        bad(|b| b.stored[0].versions.clear()),
        ReceiptError::NoStoredVersions(K1.into())
    );
    assert_eq!(
        bad(|b| b.stored[0].versions = vec![0, 1]),
        ReceiptError::StoredVersionZero(K1.into())
    );
    assert_eq!(
        bad(|b| b.stored[0].versions = vec![2, 0]),
        ReceiptError::StoredVersionZero(K1.into())
    );
    assert_eq!(
        bad(|b| b.stored[0].versions = vec![2, 1]),
        ReceiptError::StoredVersionsUnsorted {
            key_id: K1.into(),
            previous: 2,
            version: 1
        }
    );
    assert_eq!(
        bad(|b| b.stored[1].versions = vec![3, 3]),
        ReceiptError::StoredVersionsUnsorted {
            key_id: K2.into(),
            previous: 3,
            version: 3
        }
    );
}

#[test]
fn fields_are_checked_before_stored() {
    let e = verify_edited(|b| {
        b.op = GrantOp::Copy as i32;
        b.stored[0].versions.clear();
    })
    .unwrap_err();
    assert_eq!(e.code(), "wrong_op");
}

#[test]
fn sign_refuses_what_verify_would() {
    let refuse = |f: fn(&mut ReceiptBody)| {
        let mut b = body();
        f(&mut b);
        sign_receipt(&dest(), &b).unwrap_err()
    };
    assert_eq!(
        refuse(|b| b.grant_id.truncate(15)),
        ReceiptError::Malformed("grant id is not 16 bytes")
    );
    assert_eq!(
        refuse(|b| b.op = GrantOp::Unspecified as i32),
        ReceiptError::Malformed("op is not copy, move or replicate")
    );
    assert_eq!(
        refuse(|b| b.stored[1].versions = vec![]).code(),
        "no_stored_versions"
    );
    assert_eq!(
        refuse(|b| b.stored[0].versions = vec![2, 1]).code(),
        "stored_versions_unsorted"
    );
    assert_eq!(
        refuse(|b| b.stored[1].key_id = "x".into()).code(),
        "stored_key_not_in_grant"
    );
    assert_eq!(
        refuse(|b| {
            b.stored.pop();
        })
        .code(),
        "stored_key_missing"
    );
    let mut huge = body();
    huge.key_ids = vec!["k".repeat(1 << 20); 65];
    huge.stored.clear();
    assert_eq!(
        sign_receipt(&dest(), &huge).unwrap_err().code(),
        "too_large"
    );
    // No `stored` (as an old destination would sign) is still signed.
    let mut old = body();
    old.stored.clear();
    sign_receipt(&dest(), &old).unwrap();
}

#[test]
fn codes_are_distinct() {
    let all = [
        ReceiptError::TooLarge(0),
        ReceiptError::BadSignatureLength(0),
        ReceiptError::BadSignature,
        ReceiptError::Malformed(""),
        ReceiptError::WrongGrantId {
            expected: String::new(),
            got: String::new(),
        },
        ReceiptError::WrongOp {
            expected: String::new(),
            got: String::new(),
        },
        ReceiptError::WrongSource {
            expected: String::new(),
            got: String::new(),
        },
        ReceiptError::WrongDestination {
            expected: String::new(),
            got: String::new(),
        },
        ReceiptError::WrongKeyIds {
            index: 0,
            expected: None,
            got: None,
        },
        ReceiptError::StoredKeyNotInGrant(String::new()),
        ReceiptError::StoredKeyTwice(String::new()),
        ReceiptError::StoredKeyMissing(String::new()),
        ReceiptError::NoStoredVersions(String::new()),
        ReceiptError::StoredVersionZero(String::new()),
        ReceiptError::StoredVersionsUnsorted {
            key_id: String::new(),
            previous: 0,
            version: 0,
        },
    ];
    let codes: HashSet<&str> = all.iter().map(ReceiptError::code).collect();
    assert_eq!(codes.len(), all.len());
}

// ---------------------------------------------------------------------------------------------
// properties

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_single_byte_change_fails(
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let r = sign_receipt(&dest(), &body()).unwrap();
            let (mut raw, mut sig) = (r.body, r.signature);
            let i = pos.index(raw.len() + sig.len());
            if i < raw.len() {
                raw[i] ^= flip;
            } else {
                sig[i - raw.len()] ^= flip;
            }
            prop_assert!(verify_bytes(&raw, &sig).is_err());
        }

        #[test]
        fn signed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (raw, sig) = signed_raw(&body);
            let _ = verify_bytes(&raw, &sig);
        }

        #[test]
        fn what_sign_accepts_verify_accepts(
            versions in proptest::collection::vec(
                proptest::collection::btree_set(1u32.., 1..6), 2..=2),
            stored_unix_ms in any::<u64>(),
            with_stored in any::<bool>(),
        ) {
            let mut b = body();
            b.stored_unix_ms = stored_unix_ms;
            b.stored = if with_stored {
                vec![
                    stored(K2, &versions[1].iter().copied().collect::<Vec<_>>()),
                    stored(K1, &versions[0].iter().copied().collect::<Vec<_>>()),
                ]
            } else {
                vec![]
            };
            let r = sign_receipt(&dest(), &b).unwrap();
            prop_assert_eq!(verify_bytes(&r.body, &r.signature).unwrap(), b);
        }
    }
}
