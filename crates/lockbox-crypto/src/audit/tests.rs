#![allow(clippy::unwrap_used)]
use super::*;
use crate::secret::SecretBytes;

fn identity(byte: u8) -> SigningIdentity {
    SigningIdentity::from_secret(&SecretBytes::new(vec![byte; 32])).unwrap()
}

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        time_unix_ms: 1_700_000_000_000 + n,
        actor: "spiffe://example.org/admin/alice".into(),
        action: "key.create".into(),
        key_id: format!("key-{n}"),
        outcome: "ok".into(),
        detail: String::new(),
    }
}

/// A chain of `n` entries with a checkpoint on every third, as stored bytes.
fn chain(id: &SigningIdentity, n: u64) -> Vec<Vec<u8>> {
    let mut prev = GENESIS_HASH;
    let mut out = Vec::new();
    for seq in 1..=n {
        let entry = AuditEntry {
            seq,
            prev_hash: prev,
            event: event(seq),
            checkpoint: (seq % 3 == 0).then(|| sign_checkpoint(id, seq, &prev)),
        };
        prev = entry.hash();
        out.push(entry.encode());
    }
    out
}

fn verify(
    id: &SigningIdentity,
    entries: &[(u64, Vec<u8>)],
) -> std::result::Result<ChainSummary, AuditChainError> {
    let mut v = ChainVerifier::new(id.public_key());
    for (seq, bytes) in entries {
        v.push(*seq, bytes)?;
    }
    Ok(v.summary())
}

fn numbered(entries: Vec<Vec<u8>>) -> Vec<(u64, Vec<u8>)> {
    (1..).zip(entries).collect()
}

#[test]
fn encode_decode_round_trip() {
    let id = identity(1);
    let entry = AuditEntry {
        seq: 3,
        prev_hash: [7; 32],
        event: AuditEvent {
            detail: "ünïcode".into(),
            ..event(3)
        },
        checkpoint: Some(sign_checkpoint(&id, 3, &[7; 32])),
    };
    let bytes = entry.encode();
    assert_eq!(AuditEntry::decode(&bytes).unwrap(), entry);
    let plain = AuditEntry {
        checkpoint: None,
        ..entry.clone()
    };
    assert_eq!(AuditEntry::decode(&plain.encode()).unwrap(), plain);
    assert_ne!(plain.hash(), entry.hash());
}

#[test]
fn hash_is_domain_separated() {
    let e = AuditEntry {
        seq: 1,
        prev_hash: GENESIS_HASH,
        event: AuditEvent::default(),
        checkpoint: None,
    };
    let plain: [u8; 32] = Sha256::digest(e.encode()).into();
    assert_ne!(e.hash(), plain);
}

#[test]
fn decode_is_strict() {
    let id = identity(1);
    let bytes = chain(&id, 3).pop().unwrap();
    for n in 0..bytes.len() {
        assert!(AuditEntry::decode(&bytes[..n]).is_err(), "truncated to {n}");
    }
    assert!(matches!(
        AuditEntry::decode(&[bytes.as_slice(), &[0]].concat()),
        Err(CryptoError::Malformed("audit entry (trailing bytes)"))
    ));
    let mut b = bytes.clone();
    b[0] = 9;
    assert!(matches!(
        AuditEntry::decode(&b),
        Err(CryptoError::UnsupportedVersion { version: 9, .. })
    ));
    let flag = bytes.len() - 97;
    let mut b = bytes.clone();
    b[flag] = 2;
    assert!(matches!(
        AuditEntry::decode(&b),
        Err(CryptoError::Malformed(_))
    ));
    // Invalid UTF-8 in the actor field (right after version, seq, prev_hash, time, length).
    let mut b = bytes;
    b[1 + 8 + 32 + 8 + 4] = 0xff;
    assert!(matches!(
        AuditEntry::decode(&b),
        Err(CryptoError::Malformed(_))
    ));
}

#[test]
fn valid_chain_verifies() {
    let id = identity(1);
    let entries = numbered(chain(&id, 7));
    let s = verify(&id, &entries).unwrap();
    assert_eq!(s.records, 7);
    assert_eq!(s.checkpoints, 2);
    assert_eq!(s.head_seq, 7);
    let last = AuditEntry::decode(&entries[6].1).unwrap();
    assert_eq!(s.head_hash, last.hash());
    let empty = ChainVerifier::new(id.public_key()).summary();
    assert_eq!(
        (empty.records, empty.head_seq, empty.head_hash),
        (0, 0, GENESIS_HASH)
    );
}

#[test]
fn edited_entry_breaks_the_chain() {
    let id = identity(1);
    let mut entries = numbered(chain(&id, 4));
    let mut e = AuditEntry::decode(&entries[1].1).unwrap();
    e.event.outcome = "denied".into();
    entries[1].1 = e.encode();
    let err = verify(&id, &entries).unwrap_err();
    assert_eq!(err.seq, 2);
    assert!(err.reason.starts_with("hash chain broken"), "{err}");
}

#[test]
fn dropped_entry_is_missing() {
    let id = identity(1);
    let mut entries = numbered(chain(&id, 4));
    entries.remove(1);
    let err = verify(&id, &entries).unwrap_err();
    assert_eq!(err.seq, 3);
    assert_eq!(err.reason, "missing record: expected seq 2, found 3");
}

#[test]
fn reordered_and_restored_entries_fail() {
    let id = identity(1);
    let entries = numbered(chain(&id, 4));
    let mut swapped = entries.clone();
    swapped.swap(1, 2);
    assert!(
        verify(&id, &swapped)
            .unwrap_err()
            .reason
            .contains("missing record")
    );

    // Bytes of entry 3 moved under key 2 (entry 2 deleted).
    let moved = vec![entries[0].clone(), (2, entries[2].1.clone())];
    assert_eq!(
        verify(&id, &moved).unwrap_err().reason,
        "stored under seq 2 but says 3"
    );

    let replayed = vec![entries[0].clone(), entries[1].clone(), entries[1].clone()];
    assert!(
        verify(&id, &replayed)
            .unwrap_err()
            .reason
            .starts_with("out of order")
    );
}

#[test]
fn rewritten_chain_needs_the_identity_key() {
    let id = identity(1);
    let forger = identity(2);
    // The attacker recomputes every hash but must sign checkpoints with their own key.
    let forged = numbered(chain(&forger, 3));
    let err = verify(&id, &forged).unwrap_err();
    assert_eq!(err.seq, 3);
    assert!(err.reason.starts_with("checkpoint signed by untrusted key"));

    // Claiming the trusted key as signer does not help without its secret.
    let mut entries = numbered(chain(&forger, 3));
    let mut e = AuditEntry::decode(&entries[2].1).unwrap();
    if let Some(cp) = &mut e.checkpoint {
        cp.signer = id.public_key();
    }
    entries[2].1 = e.encode();
    assert_eq!(
        verify(&id, &entries).unwrap_err().reason,
        "checkpoint signature does not verify"
    );
}

#[test]
fn failed_push_leaves_state_unchanged() {
    let id = identity(1);
    let entries = chain(&id, 2);
    let mut v = ChainVerifier::new(id.public_key());
    v.push(1, &entries[0]).unwrap();
    let before = v.summary();
    assert!(v.push(2, b"garbage").is_err());
    assert_eq!(v.summary(), before);
    v.push(2, &entries[1]).unwrap();
}

#[test]
fn error_display_names_seq() {
    let e = AuditChainError {
        seq: 5,
        reason: "hash chain broken: record edited, removed or reordered".into(),
    };
    assert_eq!(
        e.to_string(),
        "audit record 5: hash chain broken: record edited, removed or reordered"
    );
}

mod props {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::identity::verify_signature;
    use proptest::prelude::*;

    proptest! {
        /// Any single-byte change to a signed checkpoint (signer, signature, or the signed
        /// seq/prev_hash) fails verification.
        #[test]
        fn any_single_byte_change_to_checkpoint_fails(
            seq in any::<u64>(),
            prev in any::<[u8; 32]>(),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let id = identity(9);
            let cp = sign_checkpoint(&id, seq, &prev);
            let mut all = [&cp.signer[..], &cp.signature[..], &checkpoint_message(seq, &prev)[..]].concat();
            prop_assert!(verify_signature(&cp.signer, CHECKPOINT_DOMAIN, &all[96..], &all[32..96]).is_ok());
            let i = pos.index(all.len());
            all[i] ^= flip;
            let signer: [u8; 32] = all[..32].try_into().unwrap();
            prop_assert!(verify_signature(&signer, CHECKPOINT_DOMAIN, &all[96..], &all[32..96]).is_err());
        }

        /// Any single-byte change to any entry of a checkpointed chain is caught once the next
        /// entry (or its checkpoint) is verified.
        #[test]
        fn any_single_byte_change_to_chain_fails(
            which in 0usize..3,
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let id = identity(9);
            let mut entries = numbered(chain(&id, 4));
            let bytes = &mut entries[which].1;
            let i = pos.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(verify(&id, &entries).is_err());
        }

        #[test]
        fn round_trip(
            seq in any::<u64>(),
            time in any::<u64>(),
            actor in ".{0,20}",
            detail in ".{0,40}",
            cp in proptest::option::of((any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 64))),
        ) {
            let entry = AuditEntry {
                seq,
                prev_hash: [seq as u8; 32],
                event: AuditEvent { time_unix_ms: time, actor, detail, ..AuditEvent::default() },
                checkpoint: cp.map(|(signer, sig)| Checkpoint { signer, signature: sig.try_into().unwrap() }),
            };
            prop_assert_eq!(AuditEntry::decode(&entry.encode()).unwrap(), entry);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = AuditEntry::decode(&bytes);
        }
    }
}
