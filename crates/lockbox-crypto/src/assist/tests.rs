#![allow(clippy::unwrap_used)]
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_COMPRESSED;

use super::shamir::interpolate_unchecked;
use super::*;

/// The group order ℓ, little-endian: the smallest scalar encoding that is not canonical.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// A canonical scalar encoding (the top byte keeps it below ℓ).
fn scalar(b: u8) -> [u8; 32] {
    let mut s = [b; 32];
    s[31] = 0x05;
    s
}

fn peer(b: u8) -> AssistIdentity {
    AssistIdentity::from_secret(&SecretBytes::new(scalar(b).to_vec())).unwrap()
}

fn ctx<'a>(owner_node: &'a str, peer_node: &'a str) -> EnrollContext<'a> {
    EnrollContext {
        owner_node,
        peer_node,
        enrollment_id: [7; ENROLLMENT_ID_LEN],
    }
}

fn share() -> SecretBytes {
    SecretBytes::new((0u8..34).collect())
}

/// One request and answer by `answering`, recovered under `expected`.
fn exchange(
    enrolled: &EnrolledShare,
    answering: &AssistIdentity,
    expected: &EnrollContext<'_>,
) -> AssistResult<SecretBytes> {
    let (r, x) = blind(enrolled)?;
    let y = answering.answer(&x)?;
    recover(enrolled, expected, r, &y)
}

// ---------------------------------------------------------------------------------------------
// assist key file

#[test]
fn key_file_round_trips() {
    let id = AssistIdentity::generate().unwrap();
    let file = id.to_file_bytes();
    assert_eq!(file.len(), ASSIST_KEY_FILE_LEN);
    assert_eq!(&file.expose_secret()[..5], b"LBAK\x01");
    assert_eq!(&file.expose_secret()[37..], &id.public_key());
    let back = AssistIdentity::from_file_bytes(file.expose_secret()).unwrap();
    assert_eq!(back.public_key(), id.public_key());
    let x = RISTRETTO_BASEPOINT_COMPRESSED.to_bytes();
    assert_eq!(back.answer(&x).unwrap(), id.answer(&x).unwrap());
    // An answer to the generator is the public key: Y = s·G = S.
    assert_eq!(id.answer(&x).unwrap(), id.public_key());
    assert_ne!(
        AssistIdentity::generate().unwrap().public_key(),
        id.public_key()
    );
}

#[test]
fn key_file_every_truncation_and_extension_is_refused() {
    let file = peer(0x11).to_file_bytes();
    let bytes = file.expose_secret();
    for len in 0..bytes.len() {
        let err = AssistIdentity::from_file_bytes(&bytes[..len]).unwrap_err();
        assert!(
            matches!(err, AssistError::KeyFileLength(l) if l == len),
            "{len}: {err}"
        );
    }
    let longer = [bytes, &[0][..]].concat();
    assert!(matches!(
        AssistIdentity::from_file_bytes(&longer),
        Err(AssistError::KeyFileLength(70))
    ));
}

#[test]
fn key_file_every_bit_flip_is_refused_by_name() {
    let file = peer(0x11).to_file_bytes();
    let bytes = file.expose_secret();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.to_vec();
            flipped[i] ^= 1 << bit;
            let code = AssistIdentity::from_file_bytes(&flipped)
                .unwrap_err()
                .code();
            let allowed: &[&str] = match i {
                0..4 => &["key_file_magic"],
                4 => &["unsupported_version"],
                5..37 => &["non_canonical_scalar", "zero_scalar", "key_file_mismatch"],
                _ => &["key_file_mismatch"],
            };
            assert!(allowed.contains(&code), "byte {i} bit {bit}: {code}");
        }
    }
}

#[test]
fn key_file_and_secret_refuse_non_canonical_and_zero_scalars() {
    let file = |s: &[u8; 32], public: &[u8; 32]| [&b"LBAK\x01"[..], s, public].concat();
    let public = peer(0x11).public_key();
    assert!(matches!(
        AssistIdentity::from_file_bytes(&file(&ELL, &public)),
        Err(AssistError::NonCanonicalScalar)
    ));
    assert!(matches!(
        AssistIdentity::from_file_bytes(&file(&[0; 32], &public)),
        Err(AssistError::ZeroScalar)
    ));
    let mut high = scalar(0x11);
    high[31] |= 0x80;
    assert!(matches!(
        AssistIdentity::from_file_bytes(&file(&high, &public)),
        Err(AssistError::NonCanonicalScalar)
    ));
    for (s, code) in [(ELL, "non_canonical_scalar"), ([0; 32], "zero_scalar")] {
        let err = AssistIdentity::from_secret(&SecretBytes::new(s.to_vec())).unwrap_err();
        assert_eq!(err.code(), code);
    }
    let mut ell_minus_one = ELL;
    ell_minus_one[0] -= 1;
    AssistIdentity::from_secret(&SecretBytes::new(ell_minus_one.to_vec())).unwrap();
    assert!(matches!(
        AssistIdentity::from_secret(&SecretBytes::new(vec![1; 31])),
        Err(AssistError::Crypto(CryptoError::BadLength { got: 31, .. }))
    ));
    let mut magic = file(&scalar(0x11), &public);
    magic[..4].copy_from_slice(b"LBKR");
    assert!(matches!(
        AssistIdentity::from_file_bytes(&magic),
        Err(AssistError::KeyFileMagic)
    ));
}

#[test]
fn answer_refuses_identity_and_non_canonical_points() {
    let p = peer(0x11);
    assert!(matches!(
        p.answer(&[0; 32]),
        Err(AssistError::IdentityPoint {
            what: "blinded point"
        })
    ));
    // 2^255 − 1 is not a reduced field element; 1 is a "negative" s; both are refused.
    let mut negative = [0; 32];
    negative[0] = 1;
    for bad in [[0xff; 32], negative] {
        assert!(matches!(
            p.answer(&bad),
            Err(AssistError::NonCanonicalPoint {
                what: "blinded point"
            })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// the exchange

#[test]
fn per_owner_keys_are_deterministic_distinct_and_do_not_cross() {
    let p = peer(3);
    let a = p.for_owner("owner-a").unwrap();
    assert_eq!(a.public_key(), p.for_owner("owner-a").unwrap().public_key());
    let b = p.for_owner("owner-b").unwrap();
    assert_ne!(a.public_key(), b.public_key());
    assert_ne!(a.public_key(), p.public_key());
    // Another peer's derivation for the same owner differs too.
    assert_ne!(
        peer(4).for_owner("owner-a").unwrap().public_key(),
        a.public_key()
    );
    // A share enrolled to A's key opens with A's answers, never with the answer the peer
    // gives B (a vouched node replaying A's request under its own name).
    let context = ctx("owner-a", "peer-1");
    let enrolled = enroll(&a.public_key(), &share(), &context).unwrap();
    assert!(exchange(&enrolled, &a, &context).is_ok());
    assert!(matches!(
        exchange(&enrolled, &b, &context),
        Err(AssistError::ShareAuthFailed)
    ));
    assert!(matches!(
        exchange(&enrolled, &p, &context),
        Err(AssistError::ShareAuthFailed)
    ));
    assert!(matches!(
        p.for_owner(""),
        Err(AssistError::BadParameters(_))
    ));
    assert!(matches!(
        p.for_owner(&"x".repeat(256)),
        Err(AssistError::BadParameters(_))
    ));
}

#[test]
fn round_trip_one_peer() {
    let p = AssistIdentity::generate().unwrap();
    let context = ctx("owner-a", "peer-1");
    let enrolled = enroll(&p.public_key(), &share(), &context).unwrap();
    assert_eq!(enrolled.context(), context);
    assert_eq!(enrolled.peer_public_key(), p.public_key());
    let encoded = enrolled.encode();
    assert_eq!(EnrolledShare::decode(&encoded).unwrap(), enrolled);
    // header 1 + 16 + (4 + 7) + (4 + 6) + 32 + 32, nonce 24, lp(34 + 16)
    assert_eq!(encoded.len(), 102 + 24 + 4 + 50);
    let opened = exchange(&enrolled, &p, &context).unwrap();
    assert_eq!(opened.expose_secret(), share().expose_secret());
    // Enrolling again picks a new c: another commitment, another ciphertext.
    let again = enroll(&p.public_key(), &share(), &context).unwrap();
    assert_ne!(again.commitment(), enrolled.commitment());
    assert_ne!(again.encode(), encoded);
}

#[test]
fn blinded_points_differ_per_request_and_are_not_the_commitment() {
    let p = peer(0x11);
    let enrolled = enroll(&p.public_key(), &share(), &ctx("owner-a", "peer-1")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..32 {
        let (_, x) = blind(&enrolled).unwrap();
        assert_ne!(x, enrolled.commitment());
        assert!(seen.insert(x), "a blinded point repeated");
    }
}

#[test]
fn a_wrong_or_tampered_answer_does_not_open() {
    let p = peer(0x11);
    let other = peer(0x22);
    let context = ctx("owner-a", "peer-1");
    let enrolled = enroll(&p.public_key(), &share(), &context).unwrap();
    assert!(matches!(
        exchange(&enrolled, &other, &context),
        Err(AssistError::ShareAuthFailed)
    ));
    // A valid point that is not the answer.
    let (r, _) = blind(&enrolled).unwrap();
    assert!(matches!(
        recover(
            &enrolled,
            &context,
            r,
            &RISTRETTO_BASEPOINT_COMPRESSED.to_bytes()
        ),
        Err(AssistError::ShareAuthFailed)
    ));
    // The right peer's answer to another request of the same share.
    let (_, x1) = blind(&enrolled).unwrap();
    let (r2, _) = blind(&enrolled).unwrap();
    let y1 = p.answer(&x1).unwrap();
    assert!(matches!(
        recover(&enrolled, &context, r2, &y1),
        Err(AssistError::ShareAuthFailed)
    ));
    // Answers that are not group elements are named as such.
    for (bad, code) in [
        ([0; 32], "identity_point"),
        ([0xff; 32], "non_canonical_point"),
    ] {
        let (r, _) = blind(&enrolled).unwrap();
        let err = recover(&enrolled, &context, r, &bad).unwrap_err();
        assert_eq!(err.code(), code);
        assert!(err.to_string().contains("peer answer"), "{err}");
    }
}

#[test]
fn a_peers_answer_for_another_owners_enrollment_does_not_open() {
    let p = peer(0x11);
    let ctx_a = ctx("owner-a", "peer-1");
    let ctx_b = ctx("owner-b", "peer-1");
    let share_a = enroll(&p.public_key(), &share(), &ctx_a).unwrap();
    let share_b = enroll(&p.public_key(), &share(), &ctx_b).unwrap();
    // Owner B gets an honest answer for its own request ...
    let (r_b, x_b) = blind(&share_b).unwrap();
    let y_b = p.answer(&x_b).unwrap();
    // ... which does not open A's share, even with A's own context.
    assert!(matches!(
        recover(&share_a, &ctx_a, r_b, &y_b),
        Err(AssistError::ShareAuthFailed)
    ));
    // And A's share under B's context is refused before any arithmetic.
    let (r, x) = blind(&share_a).unwrap();
    let y = p.answer(&x).unwrap();
    let err = recover(&share_a, &ctx_b, r, &y).unwrap_err();
    assert!(
        matches!(
            err,
            AssistError::ContextMismatch {
                field: "owner node",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "enrolled share is for owner node owner-a, not owner-b"
    );
    // Both open with their own answers.
    assert!(exchange(&share_a, &p, &ctx_a).is_ok());
    assert!(exchange(&share_b, &p, &ctx_b).is_ok());
}

#[test]
fn context_mismatch_names_the_field() {
    let p = peer(0x11);
    let context = ctx("owner-a", "peer-1");
    let enrolled = enroll(&p.public_key(), &share(), &context).unwrap();
    let other_id = EnrollContext {
        enrollment_id: [8; ENROLLMENT_ID_LEN],
        ..context
    };
    for (expected, field) in [
        (ctx("owner-b", "peer-1"), "owner node"),
        (ctx("owner-a", "peer-2"), "peer node"),
        (other_id, "enrollment id"),
    ] {
        let err = exchange(&enrolled, &p, &expected).unwrap_err();
        assert!(
            matches!(err, AssistError::ContextMismatch { field: f, .. } if f == field),
            "{err}"
        );
    }
}

#[test]
fn enroll_refuses_bad_inputs() {
    let p = peer(0x11).public_key();
    let long = "n".repeat(256);
    let cases: [(&[u8; 32], SecretBytes, EnrollContext<'_>, &str); 7] = [
        (&[0; 32], share(), ctx("a", "b"), "identity_point"),
        (&[0xff; 32], share(), ctx("a", "b"), "non_canonical_point"),
        (&p, share(), ctx("", "b"), "bad_parameters"),
        (&p, share(), ctx("a", ""), "bad_parameters"),
        (&p, share(), ctx(&long, "b"), "bad_parameters"),
        (
            &p,
            SecretBytes::new(Vec::new()),
            ctx("a", "b"),
            "bad_parameters",
        ),
        (
            &p,
            SecretBytes::new(vec![1; 67]),
            ctx("a", "b"),
            "bad_parameters",
        ),
    ];
    for (key, secret, context, code) in cases {
        let err = enroll(key, &secret, &context).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    let longest = "n".repeat(255);
    let enrolled = enroll(&p, &SecretBytes::new(vec![1; 66]), &ctx(&longest, "b")).unwrap();
    assert_eq!(EnrolledShare::decode(&enrolled.encode()).unwrap(), enrolled);
}

#[test]
fn enrolled_share_every_truncation_is_refused() {
    let p = peer(0x11);
    let bytes = enroll(&p.public_key(), &share(), &ctx("owner-a", "peer-1"))
        .unwrap()
        .encode();
    for len in 0..bytes.len() {
        let err = EnrolledShare::decode(&bytes[..len]).unwrap_err();
        assert_eq!(err.code(), "truncated", "{len}: {err}");
    }
    let longer = [&bytes[..], &[0]].concat();
    assert!(matches!(
        EnrolledShare::decode(&longer),
        Err(AssistError::Malformed {
            reason: "trailing bytes",
            ..
        })
    ));
}

/// A bit flip anywhere is refused: by the decoder where the structure shows it, otherwise by
/// the exchange (the header is in the KDF info and the AAD, the rest is the AEAD's).
#[test]
fn enrolled_share_every_bit_flip_is_refused() {
    let p = peer(0x11);
    let context = ctx("owner-a", "peer-1");
    let bytes = enroll(&p.public_key(), &share(), &context)
        .unwrap()
        .encode();
    let mut by_decoder = 0;
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1 << bit;
            match EnrolledShare::decode(&flipped) {
                Err(_) => by_decoder += 1,
                Ok(tampered) => {
                    let err = exchange(&tampered, &p, &context).unwrap_err();
                    assert!(
                        matches!(
                            err,
                            AssistError::ShareAuthFailed | AssistError::ContextMismatch { .. }
                        ),
                        "byte {i} bit {bit}: {err}"
                    );
                }
            }
        }
    }
    // The version, the length prefixes and most point bits are caught by decoding alone.
    assert!(by_decoder > 8 * 12, "{by_decoder}");
}

#[test]
fn enrolled_share_decoding_names_each_check() {
    let p = peer(0x11);
    let enrolled = enroll(&p.public_key(), &share(), &ctx("owner-a", "peer-1")).unwrap();
    let good = enrolled.encode();
    // Offsets: version 0, id 1..17, lp(owner) 17..28, lp(peer) 28..38, S 38..70, C 70..102,
    // nonce 102..126, lp(sealed) 126..
    let with = |at: usize, patch: &[u8]| {
        let mut b = good.clone();
        b[at..at + patch.len()].copy_from_slice(patch);
        b
    };
    let cases = [
        (with(0, &[2]), "unsupported_version"),
        (with(38, &[0; 32]), "identity_point"),
        (with(38, &[0xff; 32]), "non_canonical_point"),
        (with(70, &[0; 32]), "identity_point"),
        (with(70, &[0xff; 32]), "non_canonical_point"),
        (with(21, &[0xff]), "malformed"),
    ];
    for (bytes, code) in cases {
        assert_eq!(EnrolledShare::decode(&bytes).unwrap_err().code(), code);
    }
    let empty_owner = [&good[..17], &[0, 0, 0, 0], &good[28..]].concat();
    assert!(matches!(
        EnrolledShare::decode(&empty_owner),
        Err(AssistError::Malformed {
            reason: "owner node name is not 1 to 255 bytes",
            ..
        })
    ));
    let short_sealed = [&good[..126], &[0, 0, 0, 16], &[0; 16]].concat();
    assert!(matches!(
        EnrolledShare::decode(&short_sealed),
        Err(AssistError::Malformed { .. })
    ));
    assert_eq!(
        EnrolledShare::decode(&with(38, &peer(0x22).public_key()))
            .unwrap()
            .peer_public_key(),
        peer(0x22).public_key()
    );
}

#[test]
fn deterministic_entry_points_are_deterministic() {
    let p = peer(0x11);
    let context = ctx("owner-a", "peer-1");
    let a = enroll_deterministic(&p.public_key(), &share(), &context, &scalar(3), [9; 24]).unwrap();
    let b = enroll_deterministic(&p.public_key(), &share(), &context, &scalar(3), [9; 24]).unwrap();
    assert_eq!(a, b);
    let (r, x) = blind_deterministic(&a, &scalar(4)).unwrap();
    assert_eq!(blind_deterministic(&a, &scalar(4)).unwrap().1, x);
    let y = p.answer(&x).unwrap();
    assert_eq!(
        recover(&a, &context, r, &y).unwrap().expose_secret(),
        share().expose_secret()
    );
    for bad in [ELL, [0; 32]] {
        assert!(enroll_deterministic(&p.public_key(), &share(), &context, &bad, [0; 24]).is_err());
        assert!(blind_deterministic(&a, &bad).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Shamir

fn secret32() -> SecretBytes {
    SecretBytes::new((100u8..132).collect())
}

fn pick(shares: &[SecretBytes], mask: u32) -> Vec<SecretBytes> {
    shares
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| SecretBytes::new(s.expose_secret().to_vec()))
        .collect()
}

#[test]
fn every_threshold_subset_recovers_and_every_smaller_one_does_not() {
    let secret = secret32();
    for (t, n) in [(2u8, 2u8), (2, 3), (3, 3), (3, 5), (4, 6), (5, 6)] {
        let shares = split(&secret, t, n).unwrap();
        assert_eq!(shares.len(), usize::from(n));
        for (i, s) in shares.iter().enumerate() {
            assert_eq!(s.len(), 2 + 32);
            assert_eq!(share_threshold(s).unwrap(), t);
            assert_eq!(usize::from(share_index(s).unwrap()), i + 1);
        }
        for mask in 1u32..(1 << n) {
            let subset = pick(&shares, mask);
            let k = subset.len();
            if k >= usize::from(t) {
                let got = combine(&subset).unwrap();
                assert_eq!(
                    got.expose_secret(),
                    secret.expose_secret(),
                    "t={t} {mask:b}"
                );
            } else {
                let err = combine(&subset).unwrap_err();
                assert!(
                    matches!(err, AssistError::NotEnoughShares { got, need } if got == k && need == usize::from(t)),
                    "{err}"
                );
                // Interpolating them anyway does not give the secret.
                if let Ok(guess) = interpolate_unchecked(&subset) {
                    assert_ne!(guess.expose_secret(), secret.expose_secret());
                }
            }
        }
    }
}

#[test]
fn sixteen_of_sixteen_needs_all_sixteen() {
    let secret = SecretBytes::new(vec![0x5a; 64]);
    let shares = split(&secret, 16, 16).unwrap();
    assert_eq!(
        combine(&shares).unwrap().expose_secret(),
        secret.expose_secret()
    );
    assert!(matches!(
        combine(&shares[1..]),
        Err(AssistError::NotEnoughShares { got: 15, need: 16 })
    ));
    assert_ne!(
        interpolate_unchecked(&shares[1..]).unwrap().expose_secret(),
        secret.expose_secret()
    );
}

#[test]
fn splits_are_random() {
    let a = split(&secret32(), 2, 3).unwrap();
    let b = split(&secret32(), 2, 3).unwrap();
    assert_ne!(a[0].expose_secret(), b[0].expose_secret());
}

#[test]
fn split_refuses_bad_parameters() {
    let s = secret32();
    for (secret, t, n) in [
        (&s, 0, 3),
        (&s, 1, 3),
        (&s, 4, 3),
        (&s, 2, 17),
        (&s, 17, 17),
        (&s, 2, 0),
        (&SecretBytes::new(Vec::new()), 2, 3),
        (&SecretBytes::new(vec![1; 65]), 2, 3),
    ] {
        let err = split(secret, t, n).unwrap_err();
        assert_eq!(err.code(), "bad_parameters", "t={t} n={n}: {err}");
    }
    split(&SecretBytes::new(vec![1]), 2, 2).unwrap();
    assert!(split_deterministic(&s, 2, 3, &[0; 31]).is_err());
}

#[test]
fn combine_refuses_shares_that_do_not_belong_together() {
    let a = split(&secret32(), 2, 3).unwrap();
    let b3 = split(&secret32(), 3, 3).unwrap();
    let short = split(&SecretBytes::new(vec![1; 16]), 2, 3).unwrap();
    let copy = |s: &SecretBytes| SecretBytes::new(s.expose_secret().to_vec());
    let raw = |v: &[u8]| SecretBytes::new(v.to_vec());
    let cases: Vec<(Vec<SecretBytes>, &str)> = vec![
        (vec![], "not_enough_shares"),
        (vec![copy(&a[0]), copy(&a[0])], "duplicate_share_index"),
        (vec![copy(&a[0]), copy(&b3[1])], "malformed_share"),
        (vec![copy(&a[0]), copy(&short[1])], "malformed_share"),
        (vec![copy(&a[0]), raw(&[2, 2])], "malformed_share"),
        (vec![copy(&a[0]), raw(&[2, 0, 1])], "malformed_share"),
        (vec![copy(&a[0]), raw(&[2, 17, 1])], "malformed_share"),
        (vec![raw(&[1, 1, 1])], "malformed_share"),
        (vec![raw(&[17, 1, 1])], "malformed_share"),
        (
            vec![copy(&a[0]), raw(&[&[2, 2][..], &[0; 65]].concat())],
            "malformed_share",
        ),
    ];
    for (shares, code) in cases {
        let err = combine(&shares).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
}

/// GF(2^8) with the AES polynomial, bit by bit: an independent check of the field vsss-rs
/// uses and of how the coefficients given are drawn.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    r
}

#[test]
fn split_evaluates_the_polynomial_with_the_coefficients_given() {
    let secret = SecretBytes::new(vec![0x00, 0x53, 0xff]);
    let coefficients = [0x01, 0x02, 0xca, 0x11, 0x80, 0x7f];
    let shares = split_deterministic(&secret, 3, 4, &coefficients).unwrap();
    for (i, share) in shares.iter().enumerate() {
        let x = u8::try_from(i + 1).unwrap();
        let want: Vec<u8> = secret
            .expose_secret()
            .iter()
            .enumerate()
            .map(|(j, &b)| {
                let (a1, a2) = (coefficients[2 * j], coefficients[2 * j + 1]);
                b ^ gf_mul(a1, x) ^ gf_mul(a2, gf_mul(x, x))
            })
            .collect();
        assert_eq!(share.expose_secret(), [&[3, x][..], &want].concat());
    }
}

// ---------------------------------------------------------------------------------------------
// peer slots

fn peers() -> Vec<AssistIdentity> {
    vec![peer(0x11), peer(0x22), peer(0x33)]
}

const NODES: [&str; 3] = ["peer-1", "peer-2", "peer-3"];

fn slot_for(ids: &[AssistIdentity], key: &SecretBytes, t: u8) -> PeerSlot {
    let list: Vec<AssistPeer<'_>> = ids
        .iter()
        .zip(NODES)
        .map(|(id, node)| AssistPeer {
            node,
            public_key: id.public_key(),
        })
        .collect();
    PeerSlot::enroll(key, "owner-a", &list, t).unwrap()
}

#[test]
fn slot_unseals_with_any_threshold_of_its_peers() {
    let ids = peers();
    let key = SecretBytes::new(vec![0x42; 32]);
    let slot = slot_for(&ids, &key, 2);
    assert_eq!(slot.threshold(), 2);
    assert_eq!(slot.owner_node(), "owner-a");
    assert_eq!(PeerSlot::decode(&slot.encode()).unwrap(), slot);
    for order in [[0, 1], [1, 0], [0, 2], [2, 1]] {
        let mut u = slot.begin_unseal("owner-a").unwrap();
        let requests = u.requests().to_vec();
        assert_eq!(requests.len(), 3);
        assert!(
            !u.add_answer(
                order[0],
                &ids[order[0]].answer(&requests[order[0]].blinded).unwrap()
            )
            .unwrap()
        );
        assert!(
            u.add_answer(
                order[1],
                &ids[order[1]].answer(&requests[order[1]].blinded).unwrap()
            )
            .unwrap()
        );
        assert_eq!(u.answered(), vec![NODES[order[0]], NODES[order[1]]]);
        assert_eq!(u.finish().unwrap().expose_secret(), key.expose_secret());
    }
    // All three answering works too.
    let mut u = slot.begin_unseal("owner-a").unwrap();
    for (i, id) in ids.iter().enumerate() {
        let y = id.answer(&u.requests()[i].blinded).unwrap();
        u.add_answer(i, &y).unwrap();
    }
    assert_eq!(u.finish().unwrap().expose_secret(), key.expose_secret());
}

#[test]
fn slot_refuses_too_few_wrong_and_repeated_answers() {
    let ids = peers();
    let key = SecretBytes::new(vec![0x42; 32]);
    let slot = slot_for(&ids, &key, 2);
    let mut u = slot.begin_unseal("owner-a").unwrap();
    let x0 = u.requests()[0].blinded;
    let x1 = u.requests()[1].blinded;
    // Peer 2 answers the request meant for peer 1.
    assert!(matches!(
        u.add_answer(0, &ids[1].answer(&x0).unwrap()),
        Err(AssistError::ShareAuthFailed)
    ));
    // The request is used up; a right answer now has nothing to open with.
    assert!(matches!(
        u.add_answer(0, &ids[0].answer(&x0).unwrap()),
        Err(AssistError::NoPendingRequest(0))
    ));
    assert!(matches!(
        u.add_answer(7, &ids[0].answer(&x0).unwrap()),
        Err(AssistError::NoPendingRequest(7))
    ));
    assert!(!u.add_answer(1, &ids[1].answer(&x1).unwrap()).unwrap());
    assert!(matches!(
        u.finish(),
        Err(AssistError::NotEnoughShares { got: 1, need: 2 })
    ));
    assert!(matches!(
        slot.begin_unseal("owner-b"),
        Err(AssistError::ContextMismatch {
            field: "owner node",
            ..
        })
    ));
}

#[test]
fn slot_enroll_refuses_bad_peer_sets() {
    let ids = peers();
    let key = SecretBytes::new(vec![0x42; 32]);
    let p = |node, i: usize| AssistPeer {
        node,
        public_key: ids[i].public_key(),
    };
    let many: Vec<AssistIdentity> = (1..=17).map(|b| peer(b * 3)).collect();
    let names: Vec<String> = (1..=17).map(|i| format!("peer-{i}")).collect();
    let seventeen: Vec<AssistPeer<'_>> = many
        .iter()
        .zip(&names)
        .map(|(id, node)| AssistPeer {
            node,
            public_key: id.public_key(),
        })
        .collect();
    let cases: Vec<(Vec<AssistPeer<'_>>, u8)> = vec![
        (vec![], 2),
        (vec![p("peer-1", 0), p("peer-2", 1)], 1),
        (vec![p("peer-1", 0), p("peer-2", 1)], 3),
        (vec![p("peer-1", 0), p("peer-1", 1)], 2),
        (vec![p("peer-1", 0), p("peer-2", 0)], 2),
        (vec![p("peer-1", 0), p("owner-a", 1)], 2),
        (seventeen, 2),
    ];
    for (list, t) in cases {
        let err = PeerSlot::enroll(&key, "owner-a", &list, t).unwrap_err();
        assert_eq!(err.code(), "bad_parameters", "{err}");
    }
}

#[test]
fn slot_decoding_is_strict() {
    let ids = peers();
    let slot = slot_for(&ids, &SecretBytes::new(vec![0x42; 32]), 2);
    let good = slot.encode();
    for len in 0..good.len() {
        assert!(PeerSlot::decode(&good[..len]).is_err(), "{len}");
    }
    let codes = |b: &[u8]| PeerSlot::decode(b).unwrap_err().code();
    assert_eq!(codes(&[&good[..], &[0]].concat()), "malformed");
    let mut v2 = good.clone();
    v2[0] = 2;
    assert_eq!(codes(&v2), "unsupported_version");
    for t in [0, 1, 4] {
        let mut b = good.clone();
        b[1] = t;
        assert_eq!(codes(&b), "malformed", "t={t}");
    }
    let mut n0 = good.clone();
    n0[2] = 0;
    assert_eq!(codes(&n0), "malformed");
    // A share from another enrollment of the same owner and peer.
    let other = slot_for(&ids, &SecretBytes::new(vec![0x43; 32]), 2);
    let mut mixed = slot.shares().to_vec();
    mixed[2] = other.shares()[2].clone();
    assert!(matches!(
        PeerSlot::from_shares(2, mixed),
        Err(AssistError::Malformed {
            reason: "shares of different owners or enrollments",
            ..
        })
    ));
    let mut dup = slot.shares().to_vec();
    dup[2] = dup[1].clone();
    assert!(PeerSlot::from_shares(2, dup).is_err());
}

// ---------------------------------------------------------------------------------------------
// redaction

#[test]
fn debug_of_secrets_is_redacted() {
    let p = peer(0x11);
    let d = format!("{p:?}");
    assert!(d.contains("[redacted]") && d.contains(&hex::encode(p.public_key())));
    assert!(!d.contains(&hex::encode(scalar(0x11))));
    assert!(!d.contains("17, 17"));

    let enrolled = enroll(&p.public_key(), &share(), &ctx("owner-a", "peer-1")).unwrap();
    let (r, _) = blind_deterministic(&enrolled, &scalar(0x44)).unwrap();
    assert_eq!(format!("{r:?}"), "BlindingSecret([redacted])");

    let shares = split(&SecretBytes::new(vec![0x99; 32]), 2, 2).unwrap();
    assert!(format!("{shares:?}").contains("[redacted]"));
    assert!(!format!("{shares:?}").contains("153"));

    let ids = peers();
    let slot = slot_for(&ids, &SecretBytes::new(vec![0x99; 32]), 2);
    let mut u = slot.begin_unseal("owner-a").unwrap();
    let y = ids[0].answer(&u.requests()[0].blinded).unwrap();
    u.add_answer(0, &y).unwrap();
    let d = format!("{u:?}");
    assert!(d.contains("BlindingSecret([redacted])") && d.contains("SecretBytes([redacted])"));
}

#[test]
fn errors_have_distinct_codes() {
    let all = [
        AssistError::KeyFileLength(0),
        AssistError::KeyFileMagic,
        AssistError::UnsupportedVersion {
            what: "x",
            version: 2,
        },
        AssistError::NonCanonicalScalar,
        AssistError::ZeroScalar,
        AssistError::KeyFileMismatch,
        AssistError::NonCanonicalPoint { what: "x" },
        AssistError::IdentityPoint { what: "x" },
        AssistError::Truncated("x"),
        AssistError::Malformed {
            what: "x",
            reason: "y",
        },
        AssistError::ContextMismatch {
            field: "x",
            expected: String::new(),
            found: String::new(),
        },
        AssistError::ShareAuthFailed,
        AssistError::BadParameters(String::new()),
        AssistError::MalformedShare("x"),
        AssistError::DuplicateShareIndex(1),
        AssistError::NotEnoughShares { got: 0, need: 2 },
        AssistError::NoPendingRequest(0),
        AssistError::Crypto(CryptoError::Random),
    ];
    let codes: std::collections::HashSet<_> = all.iter().map(AssistError::code).collect();
    assert_eq!(codes.len(), all.len());
}
