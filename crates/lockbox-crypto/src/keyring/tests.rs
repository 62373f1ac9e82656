#![allow(clippy::unwrap_used)]
use super::*;

/// Cheap parameters: 64 MiB Argon2 is too slow for unit tests.
const FAST: Argon2Params = Argon2Params {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

fn keyfile(byte: u8) -> SecretBytes {
    SecretBytes::new(vec![byte; 32])
}

fn keyfile_ring() -> (Keyring, Unsealed, SecretBytes) {
    let kf = keyfile(0x42);
    let (k, u) = Keyring::create(UnsealSecret::Keyfile(&kf), FAST).unwrap();
    (k, u, kf)
}

#[test]
fn keyfile_create_encode_decode_unseal() {
    let (k, u, kf) = keyfile_ring();
    assert_eq!(k.method(), UnsealMethod::Keyfile);
    assert_eq!(k.argon_params(), None);
    assert_eq!(k.kek_ids(), vec![1]);
    assert_eq!(k.current_kek_id(), 1);
    let bytes = k.encode();
    assert_eq!(bytes.len(), HEADER_LEN + WRAPPED_LEN + 2 + 76);
    let k2 = Keyring::decode(&bytes).unwrap();
    assert_eq!(k2.encode(), bytes);
    let u2 = k2.unseal(UnsealSecret::Keyfile(&kf)).unwrap();
    let sealed = u.seal(RecordKind::Material, b"k", b"v").unwrap();
    assert_eq!(
        u2.open(RecordKind::Material, b"k", &sealed)
            .unwrap()
            .expose_secret(),
        b"v"
    );
}

#[test]
fn passphrase_round_trip_and_wrong_passphrase() {
    let pass = SecretBytes::new(b"correct horse".to_vec());
    let (k, u) = Keyring::create(UnsealSecret::Passphrase(&pass), FAST).unwrap();
    assert_eq!(k.argon_params(), Some(FAST));
    let k = Keyring::decode(&k.encode()).unwrap();
    let u2 = k.unseal(UnsealSecret::Passphrase(&pass)).unwrap();
    assert_eq!(u2.current_kek().id(), u.current_kek().id());
    let wrong = SecretBytes::new(b"correct horse!".to_vec());
    assert!(matches!(
        k.unseal(UnsealSecret::Passphrase(&wrong)),
        Err(CryptoError::WrongUnsealSecret)
    ));
}

#[test]
fn empty_passphrase_and_bad_params_are_refused() {
    let empty = SecretBytes::new(Vec::new());
    assert!(matches!(
        Keyring::create(UnsealSecret::Passphrase(&empty), FAST),
        Err(CryptoError::Kdf(_))
    ));
    let pass = SecretBytes::new(b"p".to_vec());
    for bad in [
        Argon2Params {
            memory_kib: 4,
            ..FAST
        },
        Argon2Params {
            iterations: 0,
            ..FAST
        },
        Argon2Params {
            parallelism: 0,
            ..FAST
        },
        Argon2Params {
            memory_kib: Argon2Params::MAX_MEMORY_KIB + 1,
            ..FAST
        },
    ] {
        assert!(matches!(
            Keyring::create(UnsealSecret::Passphrase(&pass), bad),
            Err(CryptoError::Kdf(_))
        ));
    }
    assert!(Argon2Params::default().check().is_ok());
}

#[test]
fn wrong_keyfile_and_method_mismatch() {
    let (k, _, _) = keyfile_ring();
    assert!(matches!(
        k.unseal(UnsealSecret::Keyfile(&keyfile(0x43))),
        Err(CryptoError::WrongUnsealSecret)
    ));
    let short = SecretBytes::new(vec![0x42; 31]);
    assert!(matches!(
        k.unseal(UnsealSecret::Keyfile(&short)),
        Err(CryptoError::BadLength {
            expected: 32,
            got: 31,
            ..
        })
    ));
    let pass = SecretBytes::new(b"x".to_vec());
    assert!(matches!(
        k.unseal(UnsealSecret::Passphrase(&pass)),
        Err(CryptoError::UnsealMethodMismatch {
            keyring: "keyfile",
            given: "passphrase"
        })
    ));
}

#[test]
fn tampered_argon_params_fail_unseal() {
    let pass = SecretBytes::new(b"pw".to_vec());
    let (k, _) = Keyring::create(UnsealSecret::Passphrase(&pass), FAST).unwrap();
    let mut bytes = k.encode();
    // Iterations 1 -> 2: still in range, so decode accepts it; the AAD catches it.
    bytes[13] = 2;
    let k = Keyring::decode(&bytes).unwrap();
    assert!(matches!(
        k.unseal(UnsealSecret::Passphrase(&pass)),
        Err(CryptoError::WrongUnsealSecret)
    ));
}

#[test]
fn tampered_wrapped_kek_is_integrity_failure() {
    let (k, _, kf) = keyfile_ring();
    let mut bytes = k.encode();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let k = Keyring::decode(&bytes).unwrap();
    assert!(matches!(
        k.unseal(UnsealSecret::Keyfile(&kf)),
        Err(CryptoError::IntegrityFailed {
            kind: "wrapped-kek"
        })
    ));
}

#[test]
fn add_kek_then_retain_current_only() {
    let (k1, u1, kf) = keyfile_ring();
    let old = u1.seal(RecordKind::Material, b"m", b"old").unwrap();

    let (k2, u2) = k1.add_kek(&u1).unwrap();
    assert_eq!(k2.kek_ids(), vec![1, 2]);
    assert_eq!(k2.current_kek_id(), 2);
    assert_eq!(u2.current_kek().id(), 2);
    assert_eq!(
        k1.kek_ids(),
        vec![1],
        "add_kek must not change the original"
    );
    // Both KEKs open during the rotation, from memory and after a reload.
    let new = u2.seal(RecordKind::Material, b"m", b"new").unwrap();
    assert_eq!(sealed_kek_id(&new).unwrap(), 2);
    let reloaded = Keyring::decode(&k2.encode())
        .unwrap()
        .unseal(UnsealSecret::Keyfile(&kf))
        .unwrap();
    for u in [&u2, &reloaded] {
        assert_eq!(
            u.open(RecordKind::Material, b"m", &old)
                .unwrap()
                .expose_secret(),
            b"old"
        );
        assert_eq!(
            u.open(RecordKind::Material, b"m", &new)
                .unwrap()
                .expose_secret(),
            b"new"
        );
    }

    let (k3, u3) = k2.retain_current_only(&u2).unwrap();
    assert_eq!(k3.kek_ids(), vec![2]);
    assert_eq!(u3.kek_ids(), vec![2]);
    let reloaded = Keyring::decode(&k3.encode())
        .unwrap()
        .unseal(UnsealSecret::Keyfile(&kf))
        .unwrap();
    for u in [&u3, &reloaded] {
        assert!(matches!(
            u.open(RecordKind::Material, b"m", &old),
            Err(CryptoError::UnknownKek(1))
        ));
        assert!(u.open(RecordKind::Material, b"m", &new).is_ok());
    }

    // The next rotation continues from the highest id.
    let (k4, _) = k3.add_kek(&u3).unwrap();
    assert_eq!(k4.kek_ids(), vec![2, 3]);
}

#[test]
fn foreign_unsealed_is_refused() {
    let (k1, u1, _) = keyfile_ring();
    let (k2, _, _) = keyfile_ring();
    assert!(matches!(k2.add_kek(&u1), Err(CryptoError::Malformed(_))));
    assert!(matches!(
        k2.retain_current_only(&u1),
        Err(CryptoError::Malformed(_))
    ));
    let (k1b, _) = k1.add_kek(&u1).unwrap();
    // An Unsealed from before the rotation step does not match the new keyring.
    assert!(matches!(
        k1b.retain_current_only(&u1),
        Err(CryptoError::Malformed(_))
    ));
}

fn peer_slot(key: &SecretBytes) -> crate::assist::PeerSlot {
    let ids: Vec<crate::assist::AssistIdentity> = (0..3)
        .map(|_| crate::assist::AssistIdentity::generate().unwrap())
        .collect();
    let names = ["b", "c", "d"];
    let peers: Vec<crate::assist::AssistPeer<'_>> = ids
        .iter()
        .zip(names)
        .map(|(i, node)| crate::assist::AssistPeer {
            node,
            public_key: i.public_key(),
        })
        .collect();
    crate::assist::PeerSlot::enroll(key, "a", &peers, 2).unwrap()
}

#[test]
fn rewrap_changes_slots_and_keeps_keks() {
    let (k, u, kf) = keyfile_ring();
    let sealed = u.seal(RecordKind::Material, b"k", b"v").unwrap();
    let slot_key = SecretBytes::new(vec![9; 32]);
    let pw = SecretBytes::new(b"recover me".to_vec());
    // keyfile -> peers with a recovery passphrase: version 2, both open the same KEKs.
    let p = k
        .rewrap(
            &u,
            NewSlot::Peers(peer_slot(&slot_key), &slot_key),
            RecoveryChange::Set(&pw, FAST),
        )
        .unwrap();
    assert_eq!(p.version(), KEYRING_VERSION_SLOTS);
    assert_eq!(p.method(), UnsealMethod::Peers);
    assert!(p.has_recovery() && p.peer_slot().is_some());
    let p = Keyring::decode(&p.encode()).unwrap();
    for secret in [
        UnsealSecret::PeersKey(&slot_key),
        UnsealSecret::Passphrase(&pw),
    ] {
        let opened = p.unseal(secret).unwrap();
        assert_eq!(
            opened
                .open(RecordKind::Material, b"k", &sealed)
                .unwrap()
                .expose_secret(),
            b"v"
        );
    }
    assert!(matches!(
        p.unseal(UnsealSecret::Keyfile(&kf)),
        Err(CryptoError::UnsealMethodMismatch { .. })
    ));
    assert!(matches!(
        p.unseal(UnsealSecret::Passphrase(&SecretBytes::new(
            b"nope".to_vec()
        ))),
        Err(CryptoError::WrongUnsealSecret)
    ));
    // Rotation keeps the slots.
    let (p2, u2) = p
        .add_kek(&p.unseal(UnsealSecret::PeersKey(&slot_key)).unwrap())
        .unwrap();
    let p2 = Keyring::decode(&p2.encode()).unwrap();
    assert_eq!(p2.kek_ids(), vec![1, 2]);
    assert!(p2.unseal(UnsealSecret::Passphrase(&pw)).is_ok());
    // peers -> keyfile keeping recovery: still version 2, the recovery slot byte for byte.
    let kf2 = keyfile(0x43);
    let back = p2
        .rewrap(&u2, NewSlot::Keyfile(&kf2), RecoveryChange::Keep)
        .unwrap();
    assert_eq!(back.method(), UnsealMethod::Keyfile);
    assert!(back.unseal(UnsealSecret::Keyfile(&kf2)).is_ok());
    assert!(back.unseal(UnsealSecret::Passphrase(&pw)).is_ok());
    assert!(back.unseal(UnsealSecret::Keyfile(&kf)).is_err());
    // ... and dropping recovery returns to the version-1 layout.
    let plain = back
        .rewrap(&u2, NewSlot::Keyfile(&kf2), RecoveryChange::Drop)
        .unwrap();
    assert_eq!(plain.version(), KEYRING_VERSION);
    assert!(!plain.has_recovery());
    let plain = Keyring::decode(&plain.encode()).unwrap();
    assert!(plain.unseal(UnsealSecret::Keyfile(&kf2)).is_ok());
    assert!(matches!(
        plain.unseal(UnsealSecret::Passphrase(&pw)),
        Err(CryptoError::UnsealMethodMismatch { .. })
    ));
    // An Unsealed of another keyring is refused.
    let (_, other, _) = keyfile_ring();
    assert!(
        k.rewrap(&other, NewSlot::Keyfile(&kf2), RecoveryChange::Keep)
            .is_err()
    );
}

#[test]
fn tpm2_and_tpm2_peers_slots_need_their_keys() {
    let (k, u, _) = keyfile_ring();
    let sealed = u.seal(RecordKind::Material, b"k", b"v").unwrap();
    let tpm_key = SecretBytes::new(vec![7; 32]);
    let peers_key = SecretBytes::new(vec![8; 32]);
    let blob = vec![0xab; 300];
    let t = k
        .rewrap(
            &u,
            NewSlot::Tpm2(blob.clone(), &tpm_key),
            RecoveryChange::Keep,
        )
        .unwrap();
    assert_eq!(t.version(), KEYRING_VERSION_SLOTS);
    assert_eq!(t.method(), UnsealMethod::Tpm2);
    assert_eq!(t.tpm2_blob(), Some(&blob[..]));
    assert!(t.peer_slot().is_none());
    let t = Keyring::decode(&t.encode()).unwrap();
    let opened = t.unseal(UnsealSecret::Tpm2Key(&tpm_key)).unwrap();
    assert_eq!(
        opened
            .open(RecordKind::Material, b"k", &sealed)
            .unwrap()
            .expose_secret(),
        b"v"
    );
    assert!(matches!(
        t.unseal(UnsealSecret::Tpm2Key(&peers_key)),
        Err(CryptoError::WrongUnsealSecret)
    ));
    // The blob is authenticated: another object in the slot makes it fail.
    let mut bytes = t.encode();
    let at = bytes.iter().position(|b| *b == 0xab).unwrap();
    bytes[at] ^= 1;
    assert!(matches!(
        Keyring::decode(&bytes)
            .unwrap()
            .unseal(UnsealSecret::Tpm2Key(&tpm_key)),
        Err(CryptoError::WrongUnsealSecret)
    ));

    let both = k
        .rewrap(
            &u,
            NewSlot::Tpm2Peers {
                blob: blob.clone(),
                tpm_key: &tpm_key,
                slot: peer_slot(&peers_key),
                peers_key: &peers_key,
            },
            RecoveryChange::Keep,
        )
        .unwrap();
    let both = Keyring::decode(&both.encode()).unwrap();
    assert_eq!(both.method(), UnsealMethod::Tpm2Peers);
    assert!(both.peer_slot().is_some() && both.tpm2_blob().is_some());
    assert!(
        both.unseal(UnsealSecret::Tpm2PeersKeys {
            tpm: &tpm_key,
            peers: &peers_key
        })
        .is_ok()
    );
    // Either part alone, or swapped, opens nothing.
    for (tpm, peers) in [
        (&tpm_key, &tpm_key),
        (&peers_key, &peers_key),
        (&peers_key, &tpm_key),
    ] {
        assert!(matches!(
            both.unseal(UnsealSecret::Tpm2PeersKeys { tpm, peers }),
            Err(CryptoError::WrongUnsealSecret)
        ));
    }
    assert!(matches!(
        both.unseal(UnsealSecret::Tpm2Key(&tpm_key)),
        Err(CryptoError::UnsealMethodMismatch { .. })
    ));
    assert!(matches!(
        both.unseal(UnsealSecret::PeersKey(&peers_key)),
        Err(CryptoError::UnsealMethodMismatch { .. })
    ));
    // An empty or oversized object is refused when the slot is made.
    assert!(
        k.rewrap(
            &u,
            NewSlot::Tpm2(Vec::new(), &tpm_key),
            RecoveryChange::Keep
        )
        .is_err()
    );
    assert!(
        k.rewrap(
            &u,
            NewSlot::Tpm2(vec![1; MAX_TPM2_BLOB + 1], &tpm_key),
            RecoveryChange::Keep
        )
        .is_err()
    );
}

#[test]
fn v2_decode_every_truncation_and_flip_is_refused_or_fails_unseal() {
    let (k, u, _) = keyfile_ring();
    let slot_key = SecretBytes::new(vec![9; 32]);
    let pw = SecretBytes::new(b"recover me".to_vec());
    let p = k
        .rewrap(
            &u,
            NewSlot::Peers(peer_slot(&slot_key), &slot_key),
            RecoveryChange::Set(&pw, FAST),
        )
        .unwrap();
    let bytes = p.encode();
    for n in 0..bytes.len() {
        assert!(Keyring::decode(&bytes[..n]).is_err(), "truncated to {n}");
    }
    // Every single-bit flip in the slot part (before the KEKs) is refused by decode or makes
    // the slot it falls in fail to open the root secret.
    let slots_end = bytes.len() - 2 - 76;
    for i in 0..slots_end {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        if let Ok(d) = Keyring::decode(&b) {
            let both = d.unseal(UnsealSecret::PeersKey(&slot_key)).is_ok()
                && d.unseal(UnsealSecret::Passphrase(&pw)).is_ok();
            assert!(!both, "flip at {i} left both slots opening");
        }
    }
}

#[test]
fn decode_is_strict() {
    let (k, _, _) = keyfile_ring();
    let bytes = k.encode();
    let is_malformed = |b: &[u8]| matches!(Keyring::decode(b), Err(CryptoError::Malformed(_)));
    for n in 0..bytes.len() {
        assert!(is_malformed(&bytes[..n]), "truncated to {n}");
    }
    assert!(is_malformed(&[bytes.as_slice(), &[0]].concat()));
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(is_malformed(&b));
    let mut b = bytes.clone();
    b[4] = 3;
    assert!(matches!(
        Keyring::decode(&b),
        Err(CryptoError::UnsupportedVersion {
            what: "keyring",
            version: 3
        })
    ));
    // Version 2 has another layout: these bytes are not a slot list.
    let mut b = bytes.clone();
    b[4] = 2;
    assert!(is_malformed(&b));
    let mut b = bytes.clone();
    b[5] = 3;
    assert!(is_malformed(&b));
    // Keyfile keyrings carry zero Argon2 parameters.
    let mut b = bytes.clone();
    b[9] = 1;
    assert!(is_malformed(&b));
    // Zero KEKs.
    let mut b = bytes[..HEADER_LEN + WRAPPED_LEN].to_vec();
    b.extend_from_slice(&[0, 0]);
    assert!(is_malformed(&b));
    // KEK id 0.
    let mut b = bytes.clone();
    b[HEADER_LEN + WRAPPED_LEN + 2..HEADER_LEN + WRAPPED_LEN + 6].fill(0);
    assert!(is_malformed(&b));
}

#[test]
fn decode_rejects_unordered_keks() {
    let (k1, u1, _) = keyfile_ring();
    let (k2, _) = k1.add_kek(&u1).unwrap();
    let bytes = k2.encode();
    let first = HEADER_LEN + WRAPPED_LEN + 2;
    let mut swapped = bytes[..first].to_vec();
    swapped.extend_from_slice(&bytes[first + 76..]);
    swapped.extend_from_slice(&bytes[first..first + 76]);
    assert!(matches!(
        Keyring::decode(&swapped),
        Err(CryptoError::Malformed(_))
    ));
}

#[test]
fn debug_is_redacted() {
    let (k, u, _) = keyfile_ring();
    let d = format!("{u:?}");
    assert!(d.contains("redacted"));
    let root = hex::encode(*u.root);
    assert!(!d.contains(&root));
    let kek = hex::encode(u.current_kek().key_bytes());
    assert!(!d.contains(&kek));
    let kf = keyfile(0x42);
    let secret = format!("{:?}", UnsealSecret::Keyfile(&kf));
    assert!(secret.contains("redacted") && !secret.contains("66"));
    // The keyring holds only ciphertext; it must still not print the unwrapped keys.
    let dk = format!("{k:?}");
    assert!(!dk.contains(&root) && !dk.contains(&kek));
}

mod props {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_single_byte_change_fails(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let (k, _, kf) = keyfile_ring();
            let mut bytes = k.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= flip;
            let opened = Keyring::decode(&bytes).and_then(|k| k.unseal(UnsealSecret::Keyfile(&kf)));
            prop_assert!(opened.is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Keyring::decode(&bytes);
        }
    }
}

#[test]
fn a_passphrase_is_one_line_of_text() {
    for (text, want) in [
        (&b"secret words"[..], &b"secret words"[..]),
        (b"secret words\n", b"secret words"),
        (b"secret words\r\n", b"secret words"),
        (b"secret words\n\n", b"secret words"),
        (b" spaces kept ", b" spaces kept "),
    ] {
        assert_eq!(passphrase_line(text).unwrap(), want);
    }
    for (text, e) in [
        (&b""[..], PassphraseLineError::Empty),
        (b"\r\n", PassphraseLineError::Empty),
        (b"first\nsecond\n", PassphraseLineError::MoreThanOneLine),
        (b"first\rsecond", PassphraseLineError::MoreThanOneLine),
        (b"\xff\xfe", PassphraseLineError::NotUtf8),
    ] {
        assert_eq!(passphrase_line(text), Err(e), "{text:?}");
    }
}
