//! The slot format without a TPM: public areas built from the same template the TPM fills in.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tss_esapi::{
    interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm},
    structures::{Digest, KeyedHashScheme, PublicBuilder, PublicKeyedHashParameters},
};

use super::*;

/// A public area as TPM2_Create returns it for our template: `unique` filled in.
fn sealed_public(pcr_bound: bool) -> Public {
    let policy = if pcr_bound {
        Digest::try_from(vec![0x5a; 32]).unwrap()
    } else {
        Digest::default()
    };
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(template::sealed_object_attributes(pcr_bound).unwrap())
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::try_from(vec![0xa5; 32]).unwrap())
        .build()
        .unwrap()
}

/// A storage key name as a TPM reports it: SHA-256 algorithm id, then a digest.
fn srk_name() -> Vec<u8> {
    let mut name = vec![0x00, 0x0B];
    name.extend_from_slice(&[0x3c; 32]);
    name
}

fn slot(pcrs: &[u32]) -> SealedSlot {
    let private = Private::try_from(vec![0x42; 126]).unwrap();
    SealedSlot::from_tpm(
        pcrs.to_vec(),
        &srk_name(),
        &sealed_public(!pcrs.is_empty()),
        &private,
    )
    .unwrap()
}

fn decode_problem(bytes: &[u8]) -> (&'static str, &'static str) {
    match SealedSlot::decode(bytes) {
        Err(TpmError::Decode { field, problem }) => (field, problem),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

/// Re-assembles an encoding from its parts, to build malformed ones.
fn assemble(version: u8, pcrs: &[u8], public: &[u8], private: &[u8]) -> Vec<u8> {
    let mut out = vec![version, pcrs.len() as u8];
    out.extend_from_slice(pcrs);
    for blob in [public, private] {
        out.extend_from_slice(&(blob.len() as u16).to_be_bytes());
        out.extend_from_slice(blob);
    }
    out
}

#[test]
fn round_trips_bound_and_unbound() {
    for pcrs in [&[][..], &[7], &[0, 4, 7, 23]] {
        let s = slot(pcrs);
        let bytes = s.encode();
        assert_eq!(bytes[0], SLOT_FORMAT_VERSION);
        assert_eq!(usize::from(bytes[1]), pcrs.len());
        let back = SealedSlot::decode(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.pcrs(), pcrs);
        assert_eq!(back.srk_name(), Some(&srk_name()[..]));
        assert_eq!(
            &bytes[2 + pcrs.len()..2 + pcrs.len() + SRK_NAME_LEN],
            &srk_name()[..]
        );
        // The stored blobs are TPM2Bs: their own size leads.
        let size = usize::from(u16::from_be_bytes([s.public_blob()[0], s.public_blob()[1]]));
        assert_eq!(size + 2, s.public_blob().len());
        assert_eq!(s.private_blob().len(), 128);
    }
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    let bytes = slot(&[7]).encode();
    for n in 0..bytes.len() {
        assert!(
            SealedSlot::decode(&bytes[..n]).is_err(),
            "a slot cut to {n} of {} bytes decoded",
            bytes.len()
        );
    }
    for extra in [0u8, 1, 0xff] {
        let mut long = bytes.clone();
        long.push(extra);
        assert_eq!(
            decode_problem(&long),
            ("slot", "trailing bytes after the private blob")
        );
    }
}

/// Version 1 (enrolled before names were pinned) still decodes, pins nothing, and re-encodes
/// as version 1: one value, one encoding.
#[test]
fn version_1_slots_decode_without_a_pin() {
    for pcrs in [&[][..], &[7u32][..]] {
        let s = slot(pcrs);
        let pcr_bytes: Vec<u8> = pcrs.iter().map(|&p| p as u8).collect();
        let v1 = assemble(1, &pcr_bytes, s.public_blob(), s.private_blob());
        let back = SealedSlot::decode(&v1).unwrap();
        assert_eq!(back.srk_name(), None);
        assert_eq!(back.pcrs(), pcrs);
        assert_eq!(back.encode(), v1);
        // The same bytes with a version-2 tag lack the name: refused, not misread.
        let mut as_v2 = v1.clone();
        as_v2[0] = 2;
        assert!(SealedSlot::decode(&as_v2).is_err());
    }
}

#[test]
fn a_pinned_name_must_be_a_sha256_name() {
    let s = slot(&[]);
    let bytes = s.encode();
    let at = 2; // no PCRs: the name follows the count
    for (i, v) in [(0usize, 0x01u8), (1, 0x04), (1, 0x0C)] {
        let mut bad = bytes.clone();
        bad[at + i] = v;
        assert_eq!(
            decode_problem(&bad),
            (
                "storage key name",
                "not a SHA-256 TPM name (00 0B and 32 bytes)"
            )
        );
    }
    // What the TPM hands to `from_tpm` is checked the same way.
    let private = Private::try_from(vec![0x42; 126]).unwrap();
    for name in [&srk_name()[..33], &[0x00, 0x04, 1, 2][..]] {
        assert!(SealedSlot::from_tpm(vec![], name, &sealed_public(false), &private).is_err());
    }
}

#[test]
fn refuses_unknown_versions() {
    let mut bytes = slot(&[]).encode();
    for v in [0u8, 3, 0xff] {
        bytes[0] = v;
        assert_eq!(
            decode_problem(&bytes),
            ("version", "not a version this build knows")
        );
    }
    assert_eq!(decode_problem(&[]), ("version", "truncated"));
}

#[test]
fn refuses_bad_pcr_lists() {
    let s = slot(&[3, 7]);
    let (public, private) = (s.public_blob().to_vec(), s.private_blob().to_vec());
    let cases: [(&[u8], &str); 4] = [
        (&[7, 3], "not strictly ascending"),
        (&[7, 7], "not strictly ascending"),
        (&[3, 24], "index above 23"),
        (&[0xff], "index above 23"),
    ];
    for (pcrs, problem) in cases {
        let bytes = assemble(1, pcrs, &public, &private);
        assert_eq!(decode_problem(&bytes), ("PCR list", problem), "{pcrs:?}");
    }
    let mut bytes = assemble(1, &[], &public, &private);
    bytes[1] = 25;
    assert_eq!(decode_problem(&bytes), ("PCR list", "more than 24 PCRs"));
    // All 24, ascending, is a valid list.
    let all: Vec<u8> = (0..24).collect();
    assert!(SealedSlot::decode(&assemble(1, &all, &public, &private)).is_ok());
}

#[test]
fn blob_lengths_are_bounded_before_reading() {
    let s = slot(&[]);
    let public = s.public_blob().to_vec();
    // A length prefix above 4096 (or zero) is refused on its own, with no bytes behind it.
    for len in [0u16, 4097, u16::MAX] {
        let mut bytes = vec![1, 0];
        bytes.extend_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode_problem(&bytes),
            ("public blob", "length prefix out of range 1..=4096")
        );
        let mut bytes = assemble(1, &[], &public, &[]);
        bytes.truncate(bytes.len() - 2);
        bytes.extend_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode_problem(&bytes),
            ("private blob", "length prefix out of range 1..=4096")
        );
    }
    // Exactly 4096 passes the outer bound; a TPM2B_PRIVATE that large does not exist.
    let mut big = vec![0u8; 4096];
    big[..2].copy_from_slice(&4094u16.to_be_bytes());
    assert_eq!(
        decode_problem(&assemble(1, &[], &public, &big)),
        ("private blob", "larger than a TPM2B_PRIVATE")
    );
    assert_eq!(MAX_BLOB_LEN, 4096);
}

#[test]
fn inner_tpm2b_sizes_must_match() {
    let s = slot(&[]);
    let (public, private) = (s.public_blob().to_vec(), s.private_blob().to_vec());
    let mut bad_public = public.clone();
    bad_public[1] ^= 1;
    assert_eq!(
        decode_problem(&assemble(1, &[], &bad_public, &private)),
        ("public blob", "TPM2B size does not match the length prefix")
    );
    let mut bad_private = private.clone();
    bad_private[1] = bad_private[1].wrapping_sub(1);
    assert_eq!(
        decode_problem(&assemble(1, &[], &public, &bad_private)),
        (
            "private blob",
            "TPM2B size does not match the length prefix"
        )
    );
    assert_eq!(
        decode_problem(&assemble(1, &[], &public, &[0])),
        ("private blob", "shorter than its TPM2B size field")
    );
    assert_eq!(
        decode_problem(&assemble(1, &[], &public, &[0, 0])),
        (
            "private blob",
            "TPM2B size does not match the length prefix"
        )
    );
}

#[test]
fn public_area_must_be_canonical_and_complete() {
    let s = slot(&[]);
    let private = s.private_blob().to_vec();
    // One byte more inside a consistent TPM2B: the TSS parser would ignore it; we do not.
    let mut area = s.public_blob()[2..].to_vec();
    area.push(0);
    let mut public = (area.len() as u16).to_be_bytes().to_vec();
    public.extend_from_slice(&area);
    assert_eq!(
        decode_problem(&assemble(1, &[], &public, &private)),
        ("public blob", "not canonical, or trailing bytes")
    );
    // Garbage that is not a TPMT_PUBLIC at all.
    assert_eq!(
        decode_problem(&assemble(1, &[], &[0, 3, 0xde, 0xad, 0xbe], &private)),
        ("public blob", "does not parse as a TPMT_PUBLIC")
    );
}

#[test]
fn public_area_must_match_the_pcr_list_and_be_a_sealed_object() {
    let bound = slot(&[7]);
    let unbound = slot(&[]);
    let problem = (
        "public blob",
        "not a lockbox sealed object matching the PCR list",
    );
    // A PCR-bound object presented as unbound, and the reverse.
    assert_eq!(
        decode_problem(&assemble(1, &[], bound.public_blob(), bound.private_blob())),
        problem
    );
    assert_eq!(
        decode_problem(&assemble(
            1,
            &[7],
            unbound.public_blob(),
            unbound.private_blob()
        )),
        problem
    );
    // Another kind of object: the storage key template.
    let srk = template::storage_primary().unwrap().marshall().unwrap();
    let mut public = (srk.len() as u16).to_be_bytes().to_vec();
    public.extend_from_slice(&srk);
    assert_eq!(
        decode_problem(&assemble(1, &[], &public, unbound.private_blob())),
        problem
    );
}

proptest! {
    /// Decoding arbitrary bytes never panics.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SealedSlot::decode(&bytes);
    }

    /// Whatever a corrupted slot decodes to, it re-encodes to exactly the bytes decoded.
    #[test]
    fn accepted_bytes_reencode_identically(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        bound in any::<bool>(),
    ) {
        let mut bytes = slot(if bound { &[0, 7] } else { &[] }).encode();
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if let Ok(s) = SealedSlot::decode(&bytes) {
            prop_assert_eq!(s.encode(), bytes);
        }
    }
}
