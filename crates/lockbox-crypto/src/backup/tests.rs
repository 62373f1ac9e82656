#![allow(clippy::unwrap_used)]
use super::*;

fn identity(seed: u8) -> BackupIdentity {
    BackupIdentity {
        key: HpkeIdentity::from_secret(&SecretBytes::new(vec![seed; 32])).unwrap(),
    }
}

fn key_id(i: u8) -> String {
    format!("{i:08x}-8d7b-4c1a-9e2f-0a1b2c3d4e5f")
}

fn version(v: u32, state: BackupVersionState, material: u32) -> BackupVersion {
    BackupVersion {
        version: v,
        state,
        created_unix_ms: 1_700_000_000_000 + u64::from(v),
        material,
    }
}

/// Three keys: one with two versions (a rekey in progress), a snapshot sharing its first
/// material, and a 64-byte replica with labels.
fn contents() -> BackupContents {
    let mut labels = BTreeMap::new();
    labels.insert("pool".to_string(), "tank".to_string());
    labels.insert("volume".to_string(), "vol-1".to_string());
    BackupContents {
        materials: vec![
            SecretBytes::new(vec![0x11; 32]),
            SecretBytes::new(vec![0x22; 32]),
            SecretBytes::new(vec![0x33; 64]),
        ],
        keys: vec![
            BackupKey {
                key_id: key_id(1),
                labels: labels.clone(),
                created_unix_ms: 1,
                origin: BackupOrigin {
                    kind: "created".into(),
                    ..Default::default()
                },
                clone_policy: String::new(),
                replica: false,
                current_version: 1,
                versions: vec![
                    version(1, BackupVersionState::Active, 0),
                    version(2, BackupVersionState::Rekeying, 1),
                ],
            },
            BackupKey {
                key_id: key_id(2),
                labels: BTreeMap::new(),
                created_unix_ms: 2,
                origin: BackupOrigin {
                    kind: "snapshot".into(),
                    from_key_id: key_id(1),
                    ..Default::default()
                },
                clone_policy: "deny".into(),
                replica: false,
                current_version: 1,
                versions: vec![version(1, BackupVersionState::Active, 0)],
            },
            BackupKey {
                key_id: key_id(3),
                labels,
                created_unix_ms: 3,
                origin: BackupOrigin {
                    kind: "received".into(),
                    from_key_id: String::new(),
                    from_node: "host-a".into(),
                    grant_id: "00ff".into(),
                },
                clone_policy: "new-key".into(),
                replica: true,
                current_version: 1,
                versions: vec![version(1, BackupVersionState::Active, 2)],
            },
        ],
    }
}

fn sealed_to(ids: &[&BackupIdentity]) -> Vec<u8> {
    let recipients: Vec<_> = ids.iter().map(|i| i.recipient()).collect();
    seal_backup(&recipients, "host-b", 1_700_000_000_123, &contents()).unwrap()
}

fn assert_same(a: &BackupContents, b: &BackupContents) {
    assert_eq!(a.keys, b.keys);
    assert_eq!(a.materials.len(), b.materials.len());
    for (x, y) in a.materials.iter().zip(&b.materials) {
        assert_eq!(x.expose_secret(), y.expose_secret());
    }
}

#[test]
fn round_trip() {
    let id = identity(7);
    let bytes = sealed_to(&[&id]);
    let opened = open_backup(&id, &bytes).unwrap();
    assert_same(&opened.contents, &contents());
    assert_eq!(opened.header.source_node, "host-b");
    assert_eq!(opened.header.created_unix_ms, 1_700_000_000_123);
    assert_eq!(opened.header.version, BACKUP_VERSION);
    assert_eq!(opened.header.recipients, vec![id.recipient().fingerprint()]);
    assert_eq!(inspect_backup(&bytes).unwrap(), opened.header);
}

#[test]
fn empty_backup_round_trips() {
    let id = identity(7);
    let bytes = seal_backup(&[id.recipient()], "n", 0, &BackupContents::default()).unwrap();
    let opened = open_backup(&id, &bytes).unwrap();
    assert!(opened.contents.keys.is_empty() && opened.contents.materials.is_empty());
}

#[test]
fn each_of_two_recipients_opens_it() {
    let (a, b) = (identity(1), identity(2));
    let bytes = sealed_to(&[&a, &b]);
    for id in [&a, &b] {
        assert_same(&open_backup(id, &bytes).unwrap().contents, &contents());
    }
}

#[test]
fn wrong_identity_is_refused_by_name() {
    let (a, b, c) = (identity(1), identity(2), identity(3));
    let bytes = sealed_to(&[&a, &b]);
    let err = open_backup(&c, &bytes).unwrap_err();
    assert!(
        matches!(err, BackupError::NoStanza { recipients: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("no stanza for this identity"),
        "{err}"
    );
}

#[test]
fn payload_holds_no_plaintext_material() {
    let bytes = sealed_to(&[&identity(1)]);
    for m in [[0x11u8; 16], [0x22; 16], [0x33; 16]] {
        assert!(!bytes.windows(16).any(|w| w == m), "material in the clear");
    }
}

#[test]
fn every_single_byte_flip_is_refused() {
    let (a, b) = (identity(1), identity(2));
    let bytes = sealed_to(&[&a, &b]);
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = bytes.clone();
            t[i] ^= bit;
            assert!(
                open_backup(&a, &t).is_err(),
                "flipping bit {bit:#04x} of byte {i} went unnoticed"
            );
        }
    }
}

#[test]
fn flips_name_the_part_that_failed() {
    let id = identity(1);
    let other = identity(2);
    let bytes = sealed_to(&[&id, &other]);
    let prefix_len = FIXED_HEADER_LEN + 4 + "host-b".len() + 2;
    let flip = |i: usize| {
        let mut t = bytes.clone();
        t[i] ^= 1;
        open_backup(&id, &t).unwrap_err()
    };
    assert!(matches!(flip(0), BackupError::BadMagic));
    assert!(matches!(flip(4), BackupError::UnsupportedVersion(0)));
    assert!(matches!(flip(12), BackupError::UnsupportedSuite(_)));
    // The created time is bound into every stanza.
    assert!(matches!(flip(14), BackupError::StanzaAuthFailed));
    // Our stanza's enc and wrapped key.
    assert!(matches!(
        flip(prefix_len + 40),
        BackupError::StanzaAuthFailed
    ));
    assert!(matches!(
        flip(prefix_len + 100),
        BackupError::StanzaAuthFailed
    ));
    // The other recipient's stanza: only the header mac notices.
    assert!(matches!(
        flip(prefix_len + BACKUP_STANZA_LEN + 40),
        BackupError::HeaderAuthFailed
    ));
    let mac_at = prefix_len + 2 * BACKUP_STANZA_LEN;
    assert!(matches!(flip(mac_at + 3), BackupError::HeaderAuthFailed));
    assert!(matches!(
        flip(bytes.len() - 1),
        BackupError::PayloadAuthFailed
    ));
    assert!(matches!(
        flip(mac_at + BACKUP_MAC_LEN + 2),
        BackupError::PayloadAuthFailed
    ));
}

#[test]
fn every_truncation_and_extension_is_refused() {
    let id = identity(1);
    let bytes = sealed_to(&[&id]);
    for n in 0..bytes.len() {
        let err = open_backup(&id, &bytes[..n]).unwrap_err();
        assert!(
            matches!(
                err,
                BackupError::Truncated(_) | BackupError::PayloadAuthFailed
            ),
            "cut to {n} bytes: {err}"
        );
    }
    assert!(matches!(
        open_backup(&id, &bytes[..3]).unwrap_err(),
        BackupError::Truncated("magic")
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        open_backup(&id, &longer).unwrap_err(),
        BackupError::PayloadAuthFailed
    ));
}

#[test]
fn swapped_stanzas_are_refused() {
    let (a, b) = (identity(1), identity(2));
    let bytes = sealed_to(&[&a, &b]);
    let at = FIXED_HEADER_LEN + 4 + "host-b".len() + 2;
    let mut t = bytes.clone();
    let (first, second) = t[at..at + 2 * BACKUP_STANZA_LEN].split_at_mut(BACKUP_STANZA_LEN);
    first.swap_with_slice(second);
    assert!(matches!(
        open_backup(&a, &t).unwrap_err(),
        BackupError::HeaderAuthFailed
    ));
}

#[test]
fn other_files_are_refused_by_name() {
    let id = identity(1);
    assert!(matches!(
        open_backup(&id, b"-----BEGIN LOCKBOX GRANT-----").unwrap_err(),
        BackupError::BadMagic
    ));
    assert!(matches!(
        open_backup(&id, b"").unwrap_err(),
        BackupError::Truncated("magic")
    ));
    let mut v2 = sealed_to(&[&id]);
    v2[4] = 2;
    let err = open_backup(&id, &v2).unwrap_err();
    assert!(
        err.to_string().contains("unsupported backup version 2"),
        "{err}"
    );
}

#[test]
fn recipients_and_identities_parse_strictly() {
    let id = identity(9);
    let r = id.recipient();
    let text = r.to_string();
    assert!(text.starts_with(RECIPIENT_PREFIX));
    assert_eq!(BackupRecipient::parse(&text).unwrap(), r);
    for bad in [
        "",
        "lockbox-recipient1:",
        "age1qqqq",
        &text[..text.len() - 4],
        &format!("{text} "),
        &text.replace(RECIPIENT_PREFIX, IDENTITY_PREFIX),
    ] {
        assert!(
            matches!(
                BackupRecipient::parse(bad),
                Err(BackupError::BadRecipient(_))
            ),
            "{bad:?}"
        );
    }
    let secret_line = id.to_file_text().lines().last().unwrap().to_owned();
    let err = BackupRecipient::parse(&secret_line)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a recipient"), "{err}");
    assert!(
        !err.contains(&secret_line[IDENTITY_PREFIX.len()..][..8]),
        "secret echoed: {err}"
    );
    let file = id.to_file_text();
    assert!(
        file.contains(&text),
        "the identity file names its recipient"
    );
    let back = BackupIdentity::from_file_text(&file).unwrap();
    assert_eq!(back.recipient(), r);
    let err = BackupIdentity::from_file_text(&format!("{text}\n")).unwrap_err();
    assert!(err.to_string().contains("recipient"), "{err}");
    assert!(BackupIdentity::from_file_text("# nothing\n").is_err());
    assert!(BackupIdentity::from_file_text(&format!("{}{}", &*file, &*file)).is_err());
    let d = format!("{id:?}");
    assert!(d.contains("redacted") && !d.contains(&file.lines().last().unwrap()[20..]));
}

#[test]
fn sealing_refuses_what_a_reader_would_refuse() {
    let id = identity(1);
    let r = [id.recipient()];
    assert!(matches!(
        seal_backup(&[], "n", 0, &contents()),
        Err(BackupError::BadRecipient(_))
    ));
    assert!(matches!(
        seal_backup(&[r[0], r[0]], "n", 0, &contents()),
        Err(BackupError::BadRecipient(_))
    ));
    assert!(matches!(
        seal_backup(
            &[BackupRecipient::from_public_key([0; 32])],
            "n",
            0,
            &contents()
        ),
        Err(BackupError::BadRecipient(_))
    ));
    assert!(matches!(
        seal_backup(&r, "", 0, &contents()),
        Err(BackupError::Malformed(_))
    ));
    let bad: [fn(&mut BackupContents); 6] = [
        |c| c.keys.swap(0, 1),
        |c| c.keys[1].versions[0].material = 7,
        |c| c.keys[0].versions[0].material = 1,
        |c| c.keys[0].current_version = 5,
        |c| c.keys[0].versions.swap(0, 1),
        |c| c.materials.push(SecretBytes::new(vec![1; 32])),
    ];
    for (i, edit) in bad.iter().enumerate() {
        let mut c = contents();
        edit(&mut c);
        assert!(
            matches!(seal_backup(&r, "n", 0, &c), Err(BackupError::Malformed(_))),
            "case {i}"
        );
    }
}

#[test]
fn payload_decoder_checks_its_rules() {
    let c = contents();
    let encoded = encode_payload(&c).unwrap();
    assert_eq!(encoded.len(), payload_len(&c));
    assert_same(&decode_payload(&encoded).unwrap(), &c);
    let mut trailing = encoded.to_vec();
    trailing.push(0);
    assert!(decode_payload(&trailing).is_err());
    for n in 0..encoded.len() {
        assert!(decode_payload(&encoded[..n]).is_err(), "cut to {n}");
    }
}

/// `BackupContents` and `OpenedBackup` derive Debug: their key material must still print as
/// `[redacted]` (SecretBytes' own Debug), never as bytes, in any representation.
#[test]
fn debug_of_contents_and_opened_backups_shows_no_material() {
    let c = contents();
    let id = identity(9);
    let bytes = seal_backup(&[id.recipient()], "n", 0, &c).unwrap();
    let opened = open_backup(&id, &bytes).unwrap();
    for text in [format!("{c:?}"), format!("{c:#?}"), format!("{opened:?}")] {
        assert!(text.contains("redacted"), "{text}");
        for needle in [
            "17, 17, 17",
            "0x11",
            "111111",
            "EREREREREREREREREREREQ",
            "34, 34",
            "51, 51",
        ] {
            assert!(
                !text.contains(needle),
                "material printed ({needle}): {text}"
            );
        }
    }
}
