#![allow(clippy::unwrap_used)]
use std::collections::BTreeSet;

use super::*;
use crate::attestation::ATTESTATION_DOMAIN;
use crate::secret::SecretBytes;

const T0: u64 = 1_750_000_000_000;
const TTL: u64 = 300_000;
const TLS: [u8; 32] = [0x77; 32];

fn controller(byte: u8) -> SigningIdentity {
    SigningIdentity::from_secret(&SecretBytes::new(vec![byte; 32])).unwrap()
}

fn trusted() -> TrustedControllers {
    let mut t = TrustedControllers::new();
    for i in 1..=3u8 {
        t.insert(format!("ctl-{i}"), controller(i).public_key());
    }
    t
}

fn vouch_body() -> VouchBody {
    VouchBody {
        node: "node-a".into(),
        trust_domain: "example.org".into(),
        tls_spki_sha256: TLS.to_vec(),
        not_before_unix_ms: T0,
        expires_unix_ms: T0 + TTL,
        issuer_key_id: "ctl-1".into(),
    }
}

fn vouch_bytes(bytes: Vec<u8>, signers: &[u8]) -> SignedVouch {
    let signatures = signers
        .iter()
        .map(|&i| sign_vouch_body(&controller(i), &format!("ctl-{i}"), &bytes))
        .collect();
    SignedVouch {
        body: bytes,
        signatures,
    }
}

fn vouch(body: &VouchBody, signers: &[u8]) -> SignedVouch {
    vouch_bytes(encode_vouch_body(body).unwrap(), signers)
}

/// A body no encoder would sign, signed anyway (a compromised or buggy controller).
fn vouch_raw(body: &VouchBody, signers: &[u8]) -> SignedVouch {
    vouch_bytes(body.encode_to_vec(), signers)
}

fn ctx() -> VouchContext<'static> {
    VouchContext {
        now_unix_ms: T0 + 1_000,
        skew_ms: 0,
        threshold: 1,
        expected_node: "node-a",
        peer_tls_spki_sha256: &TLS,
    }
}

fn verr(v: &SignedVouch, c: &VouchContext<'_>) -> VouchError {
    verify_vouch(v, &trusted(), c).unwrap_err()
}

fn edit(f: impl FnOnce(&mut VouchBody)) -> VouchBody {
    let mut b = vouch_body();
    f(&mut b);
    b
}

#[test]
fn vouch_verifies_and_reports_its_claims() {
    let v = verify_vouch(&vouch(&vouch_body(), &[2]), &trusted(), &ctx()).unwrap();
    assert_eq!(
        v,
        VerifiedVouch {
            node: "node-a".into(),
            trust_domain: "example.org".into(),
            tls_spki_sha256: TLS,
            not_before_unix_ms: T0,
            expires_unix_ms: T0 + TTL,
            issuer_key_id: "ctl-1".into(),
            valid_signers: vec!["ctl-2".into()],
        }
    );
    // Two of three, unknown signers skipped.
    let two = vouch(&vouch_body(), &[9, 1, 3]);
    let c = VouchContext {
        threshold: 2,
        ..ctx()
    };
    assert_eq!(
        verify_vouch(&two, &trusted(), &c).unwrap().valid_signers,
        ["ctl-1", "ctl-3"]
    );
}

#[test]
fn vouch_signatures_are_domain_separated() {
    let bytes = encode_vouch_body(&vouch_body()).unwrap();
    let sig = sign_vouch_body(&controller(1), "ctl-1", &bytes);
    assert_eq!(
        sig.signature,
        controller(1).sign("lockbox/v1/vouch", &bytes)
    );
    for domain in [ATTESTATION_DOMAIN, REVOCATIONS_DOMAIN] {
        let v = SignedVouch {
            body: bytes.clone(),
            signatures: vec![Signature {
                key_id: "ctl-1".into(),
                signature: controller(1).sign(domain, &bytes).to_vec(),
            }],
        };
        assert_eq!(
            verr(&v, &ctx()),
            VouchError::BadSignature("ctl-1".into()),
            "{domain}"
        );
    }
}

#[test]
fn vouch_refusals_in_order() {
    let good = vouch(&vouch_body(), &[1]);
    // 1. decoding
    let mut many = good.clone();
    many.signatures = vec![good.signatures[0].clone(); MAX_SIGNATURES + 1];
    assert!(matches!(verr(&many, &ctx()), VouchError::Malformed(m) if m.contains("33 signatures")));
    assert!(matches!(
        verr(&vouch_bytes(vec![0xff; 4], &[1]), &ctx()),
        VouchError::Malformed(m) if m.contains("not a protobuf")
    ));
    let mut extra = encode_vouch_body(&vouch_body()).unwrap();
    extra.extend_from_slice(&[0x38, 0x01]); // field 7, varint 1: unknown here
    assert!(matches!(
        verr(&vouch_bytes(extra, &[1]), &ctx()),
        VouchError::Malformed(m) if m.contains("canonically")
    ));
    for (body, reason) in [
        (edit(|b| b.node.clear()), "empty node name"),
        (
            edit(|b| b.node = "n".repeat(256)),
            "node name longer than 255 bytes",
        ),
        (edit(|b| b.trust_domain.clear()), "empty trust domain"),
        (
            edit(|b| b.trust_domain = "d".repeat(256)),
            "trust domain longer than 255 bytes",
        ),
        (
            edit(|b| {
                b.tls_spki_sha256.pop();
            }),
            "tls spki hash is not 32 bytes",
        ),
        (
            edit(|b| b.tls_spki_sha256.clear()),
            "tls spki hash is not 32 bytes",
        ),
        (
            edit(|b| b.expires_unix_ms = b.not_before_unix_ms),
            "not_before is not before expires",
        ),
        (
            edit(|b| b.issuer_key_id = "k".repeat(129)),
            "issuer key id longer than 128 bytes",
        ),
    ] {
        assert_eq!(
            verr(&vouch_raw(&body, &[1]), &ctx()),
            VouchError::Malformed(reason.into()),
            "{reason}"
        );
        assert!(
            matches!(encode_vouch_body(&body), Err(CryptoError::Malformed(m)) if m.contains(reason)),
            "{reason}"
        );
    }
    // The longest names are fine.
    let long = edit(|b| {
        b.node = "n".repeat(255);
        b.trust_domain = "d".repeat(255);
    });
    let c = VouchContext {
        expected_node: &long.node,
        ..ctx()
    };
    verify_vouch(&vouch(&long, &[1]), &trusted(), &c).unwrap();

    // Lifetime: one hour is the most, refused by name past it, even if validly signed.
    let hour = edit(|b| b.expires_unix_ms = T0 + MAX_VOUCH_LIFETIME_MS);
    verify_vouch(&vouch(&hour, &[1]), &trusted(), &ctx()).unwrap();
    let long = edit(|b| b.expires_unix_ms = T0 + MAX_VOUCH_LIFETIME_MS + 1);
    assert_eq!(
        verr(&vouch_raw(&long, &[1]), &ctx()),
        VouchError::LifetimeTooLong {
            lifetime_ms: MAX_VOUCH_LIFETIME_MS + 1,
            max_ms: MAX_VOUCH_LIFETIME_MS
        }
    );
    assert!(encode_vouch_body(&long).is_err());
    // The body is checked before signatures: a long vouch from an unknown key is still named
    // for its lifetime.
    assert_eq!(
        verr(&vouch_raw(&long, &[9]), &ctx()).code(),
        "lifetime_too_long"
    );

    // 2. a trusted key's bad signature, even beside a good one
    let mut flipped = vouch(&vouch_body(), &[1, 2]);
    flipped.signatures[1].signature[5] ^= 1;
    assert_eq!(
        verr(&flipped, &ctx()),
        VouchError::BadSignature("ctl-2".into())
    );
    let mut short = good.clone();
    short.signatures[0].signature.truncate(63);
    assert_eq!(
        verr(&short, &ctx()),
        VouchError::BadSignature("ctl-1".into())
    );

    // 3. threshold
    assert_eq!(
        verr(&vouch(&vouch_body(), &[9]), &ctx()),
        VouchError::UnknownSigner("ctl-9".into())
    );
    assert_eq!(
        verr(&vouch(&vouch_body(), &[]), &ctx()),
        VouchError::ThresholdNotMet {
            valid: 0,
            required: 1
        }
    );
    let two = VouchContext {
        threshold: 2,
        ..ctx()
    };
    assert_eq!(
        verr(&vouch(&vouch_body(), &[1, 1]), &two),
        VouchError::ThresholdNotMet {
            valid: 1,
            required: 2
        }
    );
    // A threshold of 0 counts as 1.
    let zero = VouchContext {
        threshold: 0,
        ..ctx()
    };
    assert_eq!(
        verr(&vouch(&vouch_body(), &[]), &zero).code(),
        "threshold_not_met"
    );

    // 4. time, with skew both ways
    let at = |now: u64, skew: u64| VouchContext {
        now_unix_ms: now,
        skew_ms: skew,
        ..ctx()
    };
    assert_eq!(
        verr(&good, &at(T0 - 1, 0)),
        VouchError::NotYetValid {
            not_before_unix_ms: T0,
            now_unix_ms: T0 - 1
        }
    );
    verify_vouch(&good, &trusted(), &at(T0 - 1_000, 1_000)).unwrap();
    assert_eq!(
        verr(&good, &at(T0 + TTL, 0)),
        VouchError::Expired {
            expires_unix_ms: T0 + TTL,
            now_unix_ms: T0 + TTL
        }
    );
    verify_vouch(&good, &trusted(), &at(T0 + TTL + 999, 1_000)).unwrap();
    assert_eq!(verr(&good, &at(T0 + TTL + 1_000, 1_000)).code(), "expired");

    // 5. node
    let other = VouchContext {
        expected_node: "node-b",
        ..ctx()
    };
    assert_eq!(
        verr(&good, &other),
        VouchError::WrongNode {
            expected: "node-b".into(),
            got: "node-a".into()
        }
    );
    // 6. the caller's TLS key
    let key = [0x78; 32];
    let other = VouchContext {
        peer_tls_spki_sha256: &key,
        ..ctx()
    };
    assert_eq!(verr(&good, &other), VouchError::WrongTlsKey);

    // Order: an expired vouch for another node is named for its time first.
    let both = VouchContext {
        now_unix_ms: T0 + TTL,
        expected_node: "node-b",
        ..ctx()
    };
    assert_eq!(verr(&good, &both).code(), "expired");
}

// ---------------------------------------------------------------------------------------------
// revocation lists

fn revocation(node: &str, at: u64, reason: &str) -> Revocation {
    Revocation {
        node: node.into(),
        revoked_unix_ms: at,
        reason: reason.into(),
    }
}

fn list_body() -> RevocationsBody {
    RevocationsBody {
        trust_domain: "example.org".into(),
        revoked: vec![
            revocation("node-c", T0 - 5_000, "disk stolen"),
            revocation("node-d", T0 - 1_000, ""),
        ],
        issued_unix_ms: T0,
        issuer_key_id: "ctl-2".into(),
    }
}

fn list_bytes(bytes: Vec<u8>, signers: &[u8]) -> SignedRevocations {
    let signatures = signers
        .iter()
        .map(|&i| sign_revocations_body(&controller(i), &format!("ctl-{i}"), &bytes))
        .collect();
    SignedRevocations {
        body: bytes,
        signatures,
    }
}

fn list(body: &RevocationsBody, signers: &[u8]) -> SignedRevocations {
    list_bytes(encode_revocations_body(body).unwrap(), signers)
}

fn lerr(l: &SignedRevocations) -> RevocationsError {
    verify_revocations(l, &trusted()).unwrap_err()
}

fn edit_list(f: impl FnOnce(&mut RevocationsBody)) -> RevocationsBody {
    let mut b = list_body();
    f(&mut b);
    b
}

#[test]
fn revocation_list_verifies_with_one_signature() {
    let v = verify_revocations(&list(&list_body(), &[2]), &trusted()).unwrap();
    assert_eq!(v.issuer_key_id, "ctl-2");
    assert_eq!(v.trust_domain, "example.org");
    assert_eq!(v.issued_unix_ms, T0);
    assert_eq!(
        v.revoked,
        [
            RevokedNode {
                node: "node-c".into(),
                revoked_unix_ms: T0 - 5_000,
                reason: "disk stolen".into()
            },
            RevokedNode {
                node: "node-d".into(),
                revoked_unix_ms: T0 - 1_000,
                reason: String::new()
            },
        ]
    );
    assert_eq!(v.find("node-d").unwrap().revoked_unix_ms, T0 - 1_000);
    assert!(v.find("node-a").is_none());
    assert!(v.find("node-").is_none());
    // An empty list is a list ("nobody is revoked"), and other signers may add theirs.
    let empty = edit_list(|b| b.revoked.clear());
    let v = verify_revocations(&list(&empty, &[9, 2, 3]), &trusted()).unwrap();
    assert!(v.revoked.is_empty());
    assert_eq!(
        sign_revocations_body(&controller(1), "ctl-1", b"x").signature,
        controller(1).sign("lockbox/v1/revocations", b"x")
    );
}

#[test]
fn revocation_list_refusals() {
    let good = list(&list_body(), &[2]);
    // 1. size and decoding
    let mut many = good.clone();
    many.signatures = vec![good.signatures[0].clone(); MAX_SIGNATURES + 1];
    assert!(matches!(lerr(&many), RevocationsError::Malformed(m) if m.contains("33 signatures")));
    assert!(matches!(
        lerr(&list_bytes(vec![0; MAX_REVOCATIONS_BODY_LEN + 1], &[2])),
        RevocationsError::Malformed(m) if m.contains("at most 16777216")
    ));
    assert!(matches!(
        lerr(&list_bytes(vec![0xff; 3], &[2])),
        RevocationsError::Malformed(m) if m.contains("not a protobuf")
    ));
    let mut extra = encode_revocations_body(&list_body()).unwrap();
    extra.extend_from_slice(&[0x28, 0x01]); // field 5: unknown here
    assert!(matches!(
        lerr(&list_bytes(extra, &[2])),
        RevocationsError::Malformed(m) if m.contains("canonically")
    ));
    let too_many = edit_list(|b| {
        b.revoked = (0..=MAX_REVOCATIONS)
            .map(|i| revocation(&format!("n{i:05}"), 1, ""))
            .collect();
    });
    for (body, reason) in [
        (edit_list(|b| b.trust_domain.clear()), "empty trust domain"),
        (
            edit_list(|b| b.trust_domain = "d".repeat(256)),
            "trust domain longer than 255 bytes",
        ),
        (
            edit_list(|b| b.issuer_key_id.clear()),
            "empty issuer key id",
        ),
        (
            edit_list(|b| b.issuer_key_id = "k".repeat(129)),
            "issuer key id longer than 128 bytes",
        ),
        (too_many, "more than 10000 revocations"),
        (edit_list(|b| b.revoked[0].node.clear()), "empty node name"),
        (
            edit_list(|b| b.revoked[1].node = format!("node-d{}", "x".repeat(250))),
            "node name longer than 255 bytes",
        ),
        (
            edit_list(|b| b.revoked[0].reason = "r".repeat(1025)),
            "reason longer than 1024 bytes",
        ),
        (
            edit_list(|b| b.revoked.swap(0, 1)),
            "nodes not sorted by name or listed twice",
        ),
        (
            edit_list(|b| b.revoked[1].node = "node-c".into()),
            "nodes not sorted by name or listed twice",
        ),
    ] {
        assert_eq!(
            lerr(&list_bytes(body.encode_to_vec(), &[2])),
            RevocationsError::Malformed(reason.into()),
            "{reason}"
        );
        assert!(
            matches!(encode_revocations_body(&body), Err(CryptoError::Malformed(m)) if m.contains(reason)),
            "{reason}"
        );
    }
    // At the bounds: fine.
    let full = edit_list(|b| {
        b.revoked = (0..MAX_REVOCATIONS)
            .map(|i| revocation(&format!("n{i:05}"), 1, ""))
            .collect();
        b.revoked[0].reason = "r".repeat(1024);
        b.revoked[1].node = format!("n00001{}", "x".repeat(249));
    });
    assert_eq!(
        verify_revocations(&list(&full, &[2]), &trusted())
            .unwrap()
            .revoked
            .len(),
        MAX_REVOCATIONS
    );

    // 2. signatures: a bad one is fatal even beside a good one; unknown ones are skipped.
    let mut flipped = list(&list_body(), &[2, 3]);
    flipped.signatures[1].signature[0] ^= 1;
    assert_eq!(
        lerr(&flipped),
        RevocationsError::BadSignature("ctl-3".into())
    );
    let vouch_domain = SignedRevocations {
        body: good.body.clone(),
        signatures: vec![Signature {
            key_id: "ctl-2".into(),
            signature: controller(2).sign(VOUCH_DOMAIN, &good.body).to_vec(),
        }],
    };
    assert_eq!(
        lerr(&vouch_domain),
        RevocationsError::BadSignature("ctl-2".into())
    );
    assert_eq!(
        lerr(&list(&list_body(), &[9])),
        RevocationsError::UnknownSigner("ctl-9".into())
    );
    assert_eq!(lerr(&list(&list_body(), &[])), RevocationsError::NotSigned);

    // 3. the issuer must be a signer: ctl-1 may not publish ctl-2's list.
    assert_eq!(
        lerr(&list(&list_body(), &[1])),
        RevocationsError::IssuerNotSigner("ctl-2".into())
    );
    // ...nor may an untrusted issuer hide behind a trusted signer.
    let nine = edit_list(|b| b.issuer_key_id = "ctl-9".into());
    assert_eq!(
        lerr(&list(&nine, &[9, 1])),
        RevocationsError::IssuerNotSigner("ctl-9".into())
    );
}

#[test]
fn error_codes_are_distinct_and_messages_lowercase() {
    let vouch_errors = [
        VouchError::Malformed("x".into()),
        VouchError::LifetimeTooLong {
            lifetime_ms: 2,
            max_ms: 1,
        },
        VouchError::UnknownSigner("k".into()),
        VouchError::BadSignature("k".into()),
        VouchError::ThresholdNotMet {
            valid: 0,
            required: 1,
        },
        VouchError::NotYetValid {
            not_before_unix_ms: 1,
            now_unix_ms: 0,
        },
        VouchError::Expired {
            expires_unix_ms: 1,
            now_unix_ms: 2,
        },
        VouchError::WrongNode {
            expected: "a".into(),
            got: "b".into(),
        },
        VouchError::WrongTlsKey,
    ];
    let codes: BTreeSet<&str> = vouch_errors.iter().map(VouchError::code).collect();
    assert_eq!(codes.len(), vouch_errors.len());
    let list_errors = [
        RevocationsError::Malformed("x".into()),
        RevocationsError::UnknownSigner("k".into()),
        RevocationsError::BadSignature("k".into()),
        RevocationsError::NotSigned,
        RevocationsError::IssuerNotSigner("k".into()),
    ];
    let codes: BTreeSet<&str> = list_errors.iter().map(RevocationsError::code).collect();
    assert_eq!(codes.len(), list_errors.len());
    let messages = vouch_errors
        .iter()
        .map(ToString::to_string)
        .chain(list_errors.iter().map(ToString::to_string));
    for m in messages {
        assert!(m.starts_with(|c: char| c.is_ascii_lowercase()), "{m}");
    }
}
