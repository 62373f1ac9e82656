#![allow(clippy::unwrap_used)]
use std::cell::Cell;

use super::*;
use crate::attestation::ATTESTATION_DOMAIN;
use crate::identity::verify_signature;
use crate::secret::SecretBytes;

const T0: u64 = 1_750_000_000_000;
const NOT_BEFORE: u64 = T0;
const EXPIRES: u64 = T0 + 300_000;

fn controller(byte: u8) -> SigningIdentity {
    SigningIdentity::from_secret(&SecretBytes::new(vec![byte; 32])).unwrap()
}

fn body() -> GrantBody {
    GrantBody {
        grant_id: vec![0x42; 16],
        key_ids: vec!["k1".into(), "k2".into()],
        source_node: "node-a".into(),
        dest_node: "node-b".into(),
        op: GrantOp::Move as i32,
        not_before_unix_ms: NOT_BEFORE,
        expires_unix_ms: EXPIRES,
        requested_by: "spiffe://example.org/orchestrator/cinder".into(),
        issuer_key_id: "ctl-1".into(),
        reason: "migrate vol-1".into(),
        trust_domain: "example.org".into(),
    }
}

/// Controllers ctl-1, ctl-2, ctl-3 (seeds 1, 2, 3), all trusted.
fn trusted() -> TrustedControllers {
    let mut t = TrustedControllers::new();
    for i in 1..=3u8 {
        t.insert(format!("ctl-{i}"), controller(i).public_key());
    }
    t
}

/// `bytes` signed by ctl-N for each N in `signers`.
fn signed_bytes(bytes: Vec<u8>, signers: &[u8]) -> SignedGrant {
    let signatures = signers
        .iter()
        .map(|&i| sign_grant_body(&controller(i), &format!("ctl-{i}"), &bytes))
        .collect();
    SignedGrant {
        body: bytes,
        signatures,
    }
}

fn signed(body: &GrantBody, signers: &[u8]) -> SignedGrant {
    signed_bytes(encode_grant_body(body).unwrap(), signers)
}

fn ctx(side: GrantSide) -> GrantContext<'static> {
    let (me, peer) = match side {
        GrantSide::Source => ("node-a", "node-b"),
        GrantSide::Destination => ("node-b", "node-a"),
    };
    GrantContext {
        now_unix_ms: T0 + 1_000,
        skew_ms: 0,
        threshold: 1,
        self_node: me,
        peer_node: Some(peer),
        side,
        key_ids: None,
    }
}

fn never(_: &[u8; 16]) -> bool {
    false
}

fn verify(g: &SignedGrant, c: &GrantContext<'_>) -> std::result::Result<VerifiedGrant, GrantError> {
    verify_grant(g, &trusted(), c, &never)
}

fn err(g: &SignedGrant, c: &GrantContext<'_>) -> GrantError {
    verify(g, c).unwrap_err()
}

// ---------------------------------------------------------------------------------------------
// signing and encoding

#[test]
fn verifies_at_source_and_destination() {
    let g = signed(&body(), &[1]);
    for side in [GrantSide::Source, GrantSide::Destination] {
        let v = verify(&g, &ctx(side)).unwrap();
        assert_eq!(v.body, body());
        assert_eq!(v.grant_id, [0x42; 16]);
        assert_eq!(v.valid_signers, ["ctl-1"]);
    }
}

#[test]
fn signature_covers_domain_and_exact_bytes() {
    let bytes = encode_grant_body(&body()).unwrap();
    assert_eq!(bytes, body().encode_to_vec());
    let id = controller(1);
    let sig = sign_grant_body(&id, "ctl-1", &bytes);
    assert_eq!(sig.key_id, "ctl-1");
    assert_eq!(sig.signature, id.sign("lockbox/v1/grant", &bytes));
    verify_signature(&id.public_key(), GRANT_DOMAIN, &bytes, &sig.signature).unwrap();
    // Not valid as a signature for another purpose.
    assert!(
        verify_signature(&id.public_key(), ATTESTATION_DOMAIN, &bytes, &sig.signature).is_err()
    );
}

type Edit = fn(&mut GrantBody);

#[test]
fn encode_refuses_what_verifiers_refuse() {
    let cases: [(&str, Edit); 10] = [
        ("grant id is not 16 bytes", |b| b.grant_id.truncate(15)),
        ("grant id is not 16 bytes", |b| b.grant_id.clear()),
        ("no key ids", |b| b.key_ids.clear()),
        ("empty key id", |b| b.key_ids.push(String::new())),
        ("duplicate key id", |b| b.key_ids.push("k1".into())),
        ("op is not copy, move or replicate", |b| b.op = 0),
        ("op is not copy, move or replicate", |b| b.op = 4),
        ("not_before is not before expires", |b| {
            b.expires_unix_ms = NOT_BEFORE
        }),
        ("empty node name", |b| b.dest_node.clear()),
        ("source and destination are the same node", |b| {
            b.dest_node = "node-a".into()
        }),
    ];
    for (reason, edit) in cases {
        let mut b = body();
        edit(&mut b);
        let e = encode_grant_body(&b).unwrap_err();
        assert_eq!(e.to_string(), format!("malformed grant body ({reason})"));
        // The same body signed anyway (a controller bypassing encode_grant_body) is refused
        // by verifiers with the same reason, before its signature is even looked at.
        let g = signed_bytes(b.encode_to_vec(), &[1]);
        assert_eq!(
            err(&g, &ctx(GrantSide::Source)),
            GrantError::Malformed(reason.into())
        );
    }
    for op in [GrantOp::Copy, GrantOp::Move, GrantOp::Replicate] {
        let mut b = body();
        b.op = op as i32;
        encode_grant_body(&b).unwrap();
    }
}

#[test]
fn decoding_is_strict() {
    let bytes = encode_grant_body(&body()).unwrap();
    let mut unknown_field = bytes.clone();
    unknown_field.extend_from_slice(&[0x60, 0x01]); // field 12, varint 1
    let mut explicit_default = vec![0x28, 0x00]; // op = 0 written out
    explicit_default.extend_from_slice(&bytes);
    let mut repeated_field = bytes.clone();
    repeated_field.extend_from_slice(&[0x1a, 0x01, b'x']); // source_node again, last wins
    let mut reordered = body();
    reordered.reason.clear();
    let mut reordered = reordered.encode_to_vec();
    reordered.splice(0..0, [0x52, 0x01, b'r']); // reason (10) before grant_id (1)
    let mut bad_utf8 = body();
    bad_utf8.source_node = "node-\u{e9}".into();
    let mut bad_utf8 = bad_utf8.encode_to_vec();
    let at = bad_utf8.windows(2).position(|w| w == [0xc3, 0xa9]).unwrap();
    bad_utf8[at] = 0xff;
    let cases = [
        ("not protobuf", vec![0xff; 8], "body is not a protobuf"),
        (
            "truncated",
            bytes[..bytes.len() - 1].to_vec(),
            "body is not a protobuf",
        ),
        ("bad utf-8", bad_utf8, "body is not a protobuf"),
        (
            "unknown field",
            unknown_field,
            "body is not canonically encoded",
        ),
        (
            "explicit default",
            explicit_default,
            "body is not canonically encoded",
        ),
        (
            "repeated field",
            repeated_field,
            "body is not canonically encoded",
        ),
        ("reordered", reordered, "body is not canonically encoded"),
        ("empty", Vec::new(), "grant id is not 16 bytes"),
    ];
    for (name, raw, reason) in cases {
        let g = signed_bytes(raw.clone(), &[1]);
        match err(&g, &ctx(GrantSide::Source)) {
            GrantError::Malformed(m) => assert!(m.starts_with(reason), "{name}: {m}"),
            e => panic!("{name}: {e}"),
        }
        assert!(decode_grant_body(&raw).is_err(), "{name}");
    }
    assert_eq!(decode_grant_body(&bytes).unwrap(), body());
}

#[test]
fn too_many_signatures_is_malformed() {
    let mut g = signed(&body(), &[1]);
    let first = g.signatures[0].clone();
    g.signatures.resize(MAX_SIGNATURES, first);
    verify(&g, &ctx(GrantSide::Source)).unwrap();
    g.signatures.push(g.signatures[0].clone());
    assert_eq!(
        err(&g, &ctx(GrantSide::Source)),
        GrantError::Malformed("33 signatures, at most 32 allowed".into())
    );
}

// ---------------------------------------------------------------------------------------------
// signatures and threshold

#[test]
fn unknown_signer() {
    let b = encode_grant_body(&body()).unwrap();
    let stranger = sign_grant_body(&controller(9), "ctl-9", &b);
    let g = SignedGrant {
        body: b.clone(),
        signatures: vec![stranger.clone()],
    };
    let e = err(&g, &ctx(GrantSide::Source));
    assert_eq!(e, GrantError::UnknownSigner("ctl-9".into()));
    assert_eq!(
        e.to_string(),
        "grant signed by unknown controller key ctl-9"
    );

    // A known key id with the stranger's signature is a bad signature, not an unknown one.
    let mut impostor = stranger.clone();
    impostor.key_id = "ctl-1".into();
    let g = SignedGrant {
        body: b.clone(),
        signatures: vec![impostor],
    };
    assert_eq!(
        err(&g, &ctx(GrantSide::Source)),
        GrantError::BadSignature("ctl-1".into())
    );

    // Unknown signers are skipped when the threshold is met without them...
    let mut g = signed_bytes(b.clone(), &[2]);
    g.signatures.insert(0, stranger.clone());
    assert_eq!(
        verify(&g, &ctx(GrantSide::Source)).unwrap().valid_signers,
        ["ctl-2"]
    );
    // ...and named when it is not.
    let c = GrantContext {
        threshold: 2,
        ..ctx(GrantSide::Source)
    };
    assert_eq!(err(&g, &c), GrantError::UnknownSigner("ctl-9".into()));

    // An attacker-chosen key id is escaped before it reaches a message.
    let mut evil = stranger;
    evil.key_id = "ctl\nFAKE LOG LINE".into();
    let g = SignedGrant {
        body: b,
        signatures: vec![evil],
    };
    assert_eq!(
        err(&g, &ctx(GrantSide::Source)),
        GrantError::UnknownSigner("ctl\\nFAKE LOG LINE".into())
    );
}

#[test]
fn bad_signature_from_trusted_key_is_fatal() {
    let c = ctx(GrantSide::Source);
    // Even with the threshold met by the others, in any position.
    for pos in 0..3 {
        let mut g = signed(&body(), &[1, 2, 3]);
        g.signatures[pos].signature[5] ^= 1;
        let e = err(&g, &c);
        assert_eq!(e, GrantError::BadSignature(format!("ctl-{}", pos + 1)));
        assert_eq!(
            e.to_string(),
            format!("bad signature from controller key ctl-{}", pos + 1)
        );
    }
    let mut g = signed(&body(), &[1]);
    g.signatures[0].signature.pop();
    assert_eq!(err(&g, &c), GrantError::BadSignature("ctl-1".into()));
    g.signatures[0].signature.clear();
    assert_eq!(err(&g, &c), GrantError::BadSignature("ctl-1".into()));

    // A signature over the same bytes for another purpose.
    let b = encode_grant_body(&body()).unwrap();
    let g = SignedGrant {
        body: b.clone(),
        signatures: vec![Signature {
            key_id: "ctl-1".into(),
            signature: controller(1).sign(ATTESTATION_DOMAIN, &b).to_vec(),
        }],
    };
    assert_eq!(err(&g, &c), GrantError::BadSignature("ctl-1".into()));

    // A body edited after signing, still well-formed.
    let mut edited = body();
    edited.dest_node = "node-c".into();
    let mut g = signed(&body(), &[1]);
    g.body = encode_grant_body(&edited).unwrap();
    assert_eq!(err(&g, &c), GrantError::BadSignature("ctl-1".into()));
}

#[test]
fn two_of_three() {
    let c = GrantContext {
        threshold: 2,
        ..ctx(GrantSide::Destination)
    };
    for one in 1..=3 {
        let e = err(&signed(&body(), &[one]), &c);
        assert_eq!(
            e,
            GrantError::ThresholdNotMet {
                valid: 1,
                required: 2
            }
        );
        assert_eq!(
            e.to_string(),
            "threshold not met: 1 valid signature(s) from distinct controllers, 2 required"
        );
    }
    for pair in [[1, 2], [1, 3], [3, 2]] {
        let v = verify(&signed(&body(), &pair), &c).unwrap();
        assert_eq!(v.valid_signers, pair.map(|i| format!("ctl-{i}")));
    }
    assert_eq!(
        verify(&signed(&body(), &[1, 2, 3]), &c)
            .unwrap()
            .valid_signers
            .len(),
        3
    );
    let three = GrantContext { threshold: 3, ..c };
    assert_eq!(
        err(&signed(&body(), &[1, 2]), &three),
        GrantError::ThresholdNotMet {
            valid: 2,
            required: 3
        }
    );
}

#[test]
fn distinct_signers_are_counted_once() {
    let c = GrantContext {
        threshold: 2,
        ..ctx(GrantSide::Source)
    };
    // One controller signing twice.
    let g = signed(&body(), &[1, 1]);
    assert_eq!(
        err(&g, &c),
        GrantError::ThresholdNotMet {
            valid: 1,
            required: 2
        }
    );
    // One controller trusted under two key ids.
    let mut t = trusted();
    t.insert("ctl-1-alias".into(), controller(1).public_key());
    let mut g = signed(&body(), &[1]);
    g.signatures
        .push(sign_grant_body(&controller(1), "ctl-1-alias", &g.body));
    assert_eq!(
        verify_grant(&g, &t, &c, &never).unwrap_err(),
        GrantError::ThresholdNotMet {
            valid: 1,
            required: 2
        }
    );
    let ok = GrantContext { threshold: 1, ..c };
    assert_eq!(
        verify_grant(&g, &t, &ok, &never).unwrap().valid_signers,
        ["ctl-1"]
    );
}

#[test]
fn no_signatures_and_zero_threshold() {
    let g = signed(&body(), &[]);
    assert_eq!(
        err(&g, &ctx(GrantSide::Source)),
        GrantError::ThresholdNotMet {
            valid: 0,
            required: 1
        }
    );
    let zero = GrantContext {
        threshold: 0,
        ..ctx(GrantSide::Source)
    };
    assert_eq!(
        err(&g, &zero),
        GrantError::ThresholdNotMet {
            valid: 0,
            required: 1
        }
    );
    verify(&signed(&body(), &[1]), &zero).unwrap();
    // Nothing trusted: nothing verifies.
    assert_eq!(
        verify_grant(
            &signed(&body(), &[1]),
            &TrustedControllers::new(),
            &ctx(GrantSide::Source),
            &never
        )
        .unwrap_err(),
        GrantError::UnknownSigner("ctl-1".into())
    );
}

// ---------------------------------------------------------------------------------------------
// time

#[test]
fn skew_boundaries() {
    let g = signed(&body(), &[1]);
    let at = |now: u64, skew: u64| {
        verify(
            &g,
            &GrantContext {
                now_unix_ms: now,
                skew_ms: skew,
                ..ctx(GrantSide::Source)
            },
        )
        .map(|_| ())
    };
    for skew in [0, 30_000] {
        // now + skew == not_before: valid; one ms earlier: not yet.
        assert_eq!(at(NOT_BEFORE - skew, skew), Ok(()));
        assert_eq!(
            at(NOT_BEFORE - skew - 1, skew),
            Err(GrantError::NotYetValid {
                not_before_unix_ms: NOT_BEFORE,
                now_unix_ms: NOT_BEFORE - skew - 1
            })
        );
        // now - skew == expires - 1: valid; == expires: expired.
        assert_eq!(at(EXPIRES + skew - 1, skew), Ok(()));
        assert_eq!(
            at(EXPIRES + skew, skew),
            Err(GrantError::Expired {
                expires_unix_ms: EXPIRES,
                now_unix_ms: EXPIRES + skew
            })
        );
    }
    assert_eq!(at(0, 0).unwrap_err().code(), "not_yet_valid");
    assert_eq!(at(u64::MAX, 0).unwrap_err().code(), "expired");
    assert_eq!(at(u64::MAX, u64::MAX), Ok(())); // saturates, no overflow
    assert_eq!(
        at(EXPIRES, 0).unwrap_err().to_string(),
        format!("grant expired at {EXPIRES} (unix ms), now is {EXPIRES}")
    );
}

// ---------------------------------------------------------------------------------------------
// nodes, keys, consumption

#[test]
fn node_mismatches_on_each_side() {
    let g = signed(&body(), &[1]);
    let with = |side, me: &'static str, peer: Option<&'static str>| GrantContext {
        self_node: me,
        peer_node: peer,
        ..ctx(side)
    };
    use GrantSide::{Destination, Source};
    let src = |got: &str| GrantError::WrongSource {
        expected: "node-a".into(),
        got: got.into(),
    };
    let dst = |got: &str| GrantError::WrongDestination {
        expected: "node-b".into(),
        got: got.into(),
    };
    // Source side: the grant's source must be me, its destination my peer.
    assert_eq!(
        err(&g, &with(Source, "node-x", Some("node-b"))),
        src("node-x")
    );
    assert_eq!(
        err(&g, &with(Source, "node-a", Some("node-x"))),
        dst("node-x")
    );
    assert_eq!(
        err(&g, &with(Source, "node-b", Some("node-a"))),
        src("node-b")
    );
    verify(&g, &with(Source, "node-a", None)).unwrap();
    // Destination side: the grant's destination must be me, its source my peer.
    assert_eq!(
        err(&g, &with(Destination, "node-x", Some("node-a"))),
        dst("node-x")
    );
    assert_eq!(
        err(&g, &with(Destination, "node-b", Some("node-x"))),
        src("node-x")
    );
    assert_eq!(
        err(&g, &with(Destination, "node-a", Some("node-b"))),
        dst("node-a")
    );
    verify(&g, &with(Destination, "node-b", None)).unwrap();
    // Self is checked before the peer.
    assert_eq!(
        err(&g, &with(Source, "node-x", Some("node-y"))),
        src("node-x")
    );
    assert_eq!(
        src("node-x").to_string(),
        "wrong source: grant names node-a, the source here is node-x"
    );
    assert_eq!(
        dst("node-x").to_string(),
        "wrong destination: grant names node-b, the destination here is node-x"
    );
}

#[test]
fn key_not_covered() {
    let g = signed(&body(), &[1]);
    let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let with = |k: &[String]| {
        verify(
            &g,
            &GrantContext {
                key_ids: Some(k),
                ..ctx(GrantSide::Source)
            },
        )
        .map(|_| ())
    };
    assert_eq!(with(&keys(&["k1", "k2"])), Ok(()));
    assert_eq!(with(&keys(&["k2"])), Ok(()));
    assert_eq!(with(&keys(&[])), Ok(()));
    let e = with(&keys(&["k1", "k3", "k4"])).unwrap_err();
    assert_eq!(e, GrantError::KeyNotCovered("k3".into()));
    assert_eq!(e.to_string(), "key k3 is not covered by the grant");
    assert_eq!(
        with(&keys(&["K1"])),
        Err(GrantError::KeyNotCovered("K1".into()))
    );
}

#[test]
fn consumed_is_checked_last() {
    let g = signed(&body(), &[1]);
    let asked = Cell::new(0);
    let consumed = |id: &[u8; 16]| {
        asked.set(asked.get() + 1);
        *id == [0x42; 16]
    };
    let e = verify_grant(&g, &trusted(), &ctx(GrantSide::Destination), &consumed).unwrap_err();
    assert_eq!(e, GrantError::AlreadyConsumed("42".repeat(16)));
    assert_eq!(
        e.to_string(),
        format!("grant {} already consumed", "42".repeat(16))
    );
    assert_eq!(asked.get(), 1);
    // A grant failing an earlier check never reaches the store.
    let late = GrantContext {
        now_unix_ms: EXPIRES,
        ..ctx(GrantSide::Destination)
    };
    assert_eq!(
        verify_grant(&g, &trusted(), &late, &consumed)
            .unwrap_err()
            .code(),
        "expired"
    );
    let mut other = body();
    other.grant_id = vec![0x43; 16];
    verify_grant(
        &signed(&other, &[1]),
        &trusted(),
        &ctx(GrantSide::Destination),
        &consumed,
    )
    .unwrap();
    assert_eq!(asked.get(), 2);
}

#[test]
fn checks_run_in_spec_order() {
    // Every check fails; each fix reveals the next one.
    let mut b = body();
    b.not_before_unix_ms = T0 + 100_000;
    let mut g = signed(&b, &[1, 9]);
    g.signatures[0].signature[0] ^= 1;
    let keys = vec!["k9".to_string()];
    let c = GrantContext {
        threshold: 2,
        self_node: "node-x",
        key_ids: Some(&keys),
        ..ctx(GrantSide::Source)
    };
    let always = |_: &[u8; 16]| true;
    let run = |g: &SignedGrant, c: &GrantContext<'_>| {
        verify_grant(g, &trusted(), c, &always).unwrap_err().code()
    };
    let mut too_many = g.clone();
    too_many.signatures = vec![g.signatures[1].clone(); MAX_SIGNATURES + 1];
    assert_eq!(run(&too_many, &c), "malformed");
    assert_eq!(run(&g, &c), "bad_signature");
    let g = signed(&b, &[1, 9]);
    assert_eq!(run(&g, &c), "unknown_signer");
    let g = signed(&b, &[1]);
    assert_eq!(run(&g, &c), "threshold_not_met");
    let c = GrantContext { threshold: 1, ..c };
    assert_eq!(run(&g, &c), "not_yet_valid");
    let c = GrantContext {
        now_unix_ms: T0 + 100_000,
        ..c
    };
    assert_eq!(run(&g, &c), "wrong_source");
    let c = GrantContext {
        self_node: "node-a",
        ..c
    };
    assert_eq!(run(&g, &c), "key_not_covered");
    let c = GrantContext { key_ids: None, ..c };
    assert_eq!(run(&g, &c), "already_consumed");
    verify_grant(&g, &trusted(), &c, &never).unwrap();
}

#[test]
fn error_codes_are_distinct_and_messages_lowercase() {
    let all = [
        GrantError::Malformed("x".into()),
        GrantError::UnknownSigner("x".into()),
        GrantError::BadSignature("x".into()),
        GrantError::ThresholdNotMet {
            valid: 0,
            required: 1,
        },
        GrantError::NotYetValid {
            not_before_unix_ms: 1,
            now_unix_ms: 0,
        },
        GrantError::Expired {
            expires_unix_ms: 1,
            now_unix_ms: 2,
        },
        GrantError::WrongSource {
            expected: "a".into(),
            got: "b".into(),
        },
        GrantError::WrongDestination {
            expected: "a".into(),
            got: "b".into(),
        },
        GrantError::KeyNotCovered("x".into()),
        GrantError::AlreadyConsumed("00".into()),
    ];
    let codes: BTreeSet<&str> = all.iter().map(GrantError::code).collect();
    assert_eq!(codes.len(), all.len());
    for e in &all {
        let m = e.to_string();
        assert!(m.starts_with(|c: char| c.is_ascii_lowercase()), "{m}");
        assert!(
            e.code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
        );
    }
    assert_eq!(all[0].to_string(), "malformed grant: x");
}

// ---------------------------------------------------------------------------------------------
// inspect

#[test]
fn inspect_reports_each_signature() {
    let mut g = signed(&body(), &[1, 9, 2]);
    g.signatures[2].signature[3] ^= 1;
    let (b, sigs) = inspect_grant(&g, &trusted()).unwrap();
    assert_eq!(b, body());
    assert_eq!(
        sigs,
        [
            ("ctl-1".to_string(), Ok(())),
            (
                "ctl-9".to_string(),
                Err(GrantError::UnknownSigner("ctl-9".into()))
            ),
            (
                "ctl-2".to_string(),
                Err(GrantError::BadSignature("ctl-2".into()))
            ),
        ]
    );
    // An expired grant for other nodes still inspects.
    let mut old = body();
    old.expires_unix_ms = 1;
    old.not_before_unix_ms = 0;
    let (_, sigs) = inspect_grant(&signed(&old, &[3]), &trusted()).unwrap();
    assert_eq!(sigs, [("ctl-3".to_string(), Ok(()))]);
    // A malformed body does not.
    let g = signed_bytes(vec![0xff; 4], &[1]);
    assert_eq!(
        inspect_grant(&g, &trusted()).unwrap_err().code(),
        "malformed"
    );
}

// ---------------------------------------------------------------------------------------------
// text armor

#[test]
fn text_round_trip() {
    let g = signed(&body(), &[1, 2]);
    let text = grant_to_text(&g);
    assert!(text.starts_with("-----BEGIN LOCKBOX GRANT-----\n"));
    assert!(text.ends_with("\n-----END LOCKBOX GRANT-----\n"));
    let lines: Vec<&str> = text.lines().collect();
    let inner = &lines[1..lines.len() - 1];
    assert!(inner.len() > 2);
    assert!(inner[..inner.len() - 1].iter().all(|l| l.len() == 64));
    assert!((1..=64).contains(&inner[inner.len() - 1].len()));
    assert_eq!(BASE64.decode(inner.concat()).unwrap(), g.encode_to_vec());
    assert_eq!(grant_from_text(&text).unwrap(), g);
    verify(&grant_from_text(&text).unwrap(), &ctx(GrantSide::Source)).unwrap();
}

#[test]
fn text_tolerates_whitespace_and_rewrapping() {
    let g = signed(&body(), &[1]);
    let text = grant_to_text(&g);
    let b64 = BASE64.encode(g.encode_to_vec());
    let rewrapped = format!(
        "{GRANT_TEXT_BEGIN}\n{}\n{}\n{GRANT_TEXT_END}",
        &b64[..76],
        &b64[76..]
    );
    let variants = [
        format!("\n\n  {text}  \n\n"),
        text.replace('\n', "\r\n"),
        text.lines().map(|l| format!("    {l}\n")).collect(),
        text.trim_end().to_string(),
        rewrapped,
        format!("{GRANT_TEXT_BEGIN}\n{b64}\n{GRANT_TEXT_END}"),
    ];
    for v in &variants {
        assert_eq!(grant_from_text(v).unwrap(), g, "{v:?}");
    }
}

#[test]
fn text_refuses_anything_else() {
    let g = signed(&body(), &[1]);
    let text = grant_to_text(&g);
    let b64 = BASE64.encode(g.encode_to_vec());
    let wrap = |inner: &str| format!("{GRANT_TEXT_BEGIN}\n{inner}\n{GRANT_TEXT_END}\n");
    let mut with_unknown_field = g.encode_to_vec();
    with_unknown_field.extend_from_slice(&[0x18, 0x01]);
    let cases = [
        ("empty", String::new(), "text does not start with"),
        ("base64 only", b64.clone(), "text does not start with"),
        (
            "preamble",
            format!("grant:\n{text}"),
            "text does not start with",
        ),
        (
            "other label",
            text.replace("LOCKBOX GRANT-----\n", "LOCKBOX ATTESTATION-----\n"),
            "text does not start with",
        ),
        (
            "no end",
            text.replace(GRANT_TEXT_END, ""),
            "text does not end with",
        ),
        (
            "wrong end",
            text.replace("END LOCKBOX GRANT", "END LOCKBOX GRANTS"),
            "grant text holds a line that is not base64",
        ),
        ("trailer", format!("{text}thanks\n"), "text after"),
        ("two grants", format!("{text}{text}"), "text after"),
        (
            "blank line",
            text.replacen('\n', "\n\n", 2),
            "blank line inside",
        ),
        (
            "header",
            text.replacen('\n', "\nComment: from bob\n", 1),
            "grant text holds a line that is not base64",
        ),
        (
            "url-safe base64",
            wrap(&format!("-{}", &b64[1..])),
            "grant text holds a line that is not base64",
        ),
        ("no data", wrap("").replace("\n\n", "\n"), "no data between"),
        (
            "bad length",
            wrap(&format!("{b64}A")),
            "grant text is not valid base64",
        ),
        (
            "extra padding",
            wrap(&format!("{b64}====")),
            "grant text is not valid base64",
        ),
        (
            "padding inside",
            wrap(&format!("AA==\n{b64}")),
            "grant text is not valid base64",
        ),
        (
            "not protobuf",
            wrap(&BASE64.encode([0xff; 9])),
            "grant text does not hold a protobuf SignedGrant",
        ),
        (
            "unknown field",
            wrap(&BASE64.encode(&with_unknown_field)),
            "grant text does not hold a canonically encoded signed grant",
        ),
        (
            "huge",
            format!("{GRANT_TEXT_BEGIN}\n{}", "A".repeat(MAX_GRANT_TEXT_LEN)),
            "grant text is longer than 1 MiB",
        ),
    ];
    for (name, t, want) in cases {
        match grant_from_text(&t) {
            Err(GrantError::Malformed(m)) => assert!(m.starts_with(want), "{name}: {m}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // Non-canonical trailing bits: "AAAAAA==" is 4 zero bytes; "AAAAAB==" sets a bit that
    // padding says is unused.
    assert_eq!(BASE64.encode([0u8; 4]), "AAAAAA==");
    match grant_from_text(&wrap("AAAAAB==")) {
        Err(GrantError::Malformed(m)) => assert!(m.starts_with("grant text is not valid base64")),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// properties

mod props {
    use super::*;
    use proptest::prelude::*;

    fn reference() -> (SignedGrant, GrantContext<'static>) {
        let c = GrantContext {
            threshold: 2,
            ..ctx(GrantSide::Source)
        };
        (signed(&body(), &[1, 3]), c)
    }

    proptest! {
        #[test]
        fn any_single_byte_change_fails(
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (mut g, c) = reference();
            prop_assert!(verify(&g, &c).is_ok());
            let sig_len = g.signatures[0].signature.len() + g.signatures[1].signature.len();
            let i = pos.index(g.body.len() + sig_len);
            if i < g.body.len() {
                g.body[i] ^= flip;
            } else {
                let j = i - g.body.len();
                let (s, k) = if j < 64 { (0, j) } else { (1, j - 64) };
                g.signatures[s].signature[k] ^= flip;
            }
            prop_assert!(verify(&g, &c).is_err());
        }

        #[test]
        fn any_single_byte_change_of_the_envelope_fails(
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (g, c) = reference();
            let mut bytes = g.encode_to_vec();
            let i = pos.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok(g2) = SignedGrant::decode(bytes.as_slice()) {
                prop_assert!(verify(&g2, &c).is_err());
            }
        }

        #[test]
        fn decoders_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            text in ".{0,300}",
        ) {
            let g = signed_bytes(body, &[1]);
            let _ = verify(&g, &ctx(GrantSide::Destination));
            let _ = inspect_grant(&g, &trusted());
            let _ = grant_from_text(&text);
            let _ = grant_from_text(&format!("{GRANT_TEXT_BEGIN}\n{text}\n{GRANT_TEXT_END}"));
        }

        #[test]
        fn text_round_trips(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            sigs in proptest::collection::vec(("[a-z0-9-]{0,12}", proptest::collection::vec(any::<u8>(), 0..70)), 0..4),
        ) {
            let g = SignedGrant {
                body,
                signatures: sigs.into_iter().map(|(key_id, signature)| Signature { key_id, signature }).collect(),
            };
            let text = grant_to_text(&g);
            if g.encode_to_vec().is_empty() {
                prop_assert!(grant_from_text(&text).is_err());
            } else {
                prop_assert_eq!(grant_from_text(&text).unwrap(), g);
            }
        }
    }
}

#[test]
fn op_names_round_trip_and_anything_else_is_unspecified() {
    for (op, name) in OP_NAMES {
        assert_eq!(op_name(op as i32), name);
        assert_eq!(parse_op(name), Some(op));
    }
    assert_eq!(op_name(GrantOp::Unspecified as i32), "unspecified");
    assert_eq!(op_name(99), "unspecified");
    assert_eq!(parse_op("unspecified"), None);
    assert_eq!(parse_op("Move"), None);
}
