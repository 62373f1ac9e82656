//! Every decoder that takes bytes from outside the process, as a fuzz target: grant files and
//! bodies, attestations, receipts, transfer batches, backup files, sealed records, the keyring,
//! audit entries, store journals, key records, both daemons' config files, SPIFFE ids and
//! certificates, TPM sealed slots.
//!
//! Each target takes arbitrary bytes and must return without panicking, whatever they are.
//! Where a signature stands in front of a decoder, the target signs the input with a fixed key
//! first, so the fuzzer reaches the checks behind it (a hostile but authenticated peer sends
//! exactly that). `fuzz/` runs them under libFuzzer (`deploy/fuzz.sh`); this crate's test runs
//! each over its seeds and mutations of them for a few seconds, in every `cargo test`.

use std::path::Path;
use std::sync::OnceLock;

use lockbox_crypto::{
    AttestationContext, BatchContext, GrantContext, GrantSide, HpkeIdentity, ReceiptExpectation,
    SecretBytes, SigningIdentity, TrustedControllers,
};
use lockbox_proto::v1 as pb;
use prost::Message;

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: &[(&str, Target)] = &[
    ("grant_text", grant_text),
    ("grant_body", grant_body),
    ("attestation", attestation),
    ("receipt", receipt),
    ("batch", batch),
    ("backup", backup),
    ("sealed_record", sealed_record),
    ("keyring", keyring),
    ("audit_entry", audit_entry),
    ("journal", journal),
    ("key_record", key_record),
    ("config_lockboxd", config_lockboxd),
    ("config_controller", config_controller),
    ("spiffe", spiffe),
    ("assist", assist),
    ("vouch", vouch),
    ("revocations", revocations),
    ("revoked_file", revoked_file),
    ("tpm_slot", tpm_slot),
];

/// Fixed keys, so a run is reproducible from its inputs.
struct Keys {
    controller: SigningIdentity,
    node: SigningIdentity,
    hpke: HpkeIdentity,
    trusted: TrustedControllers,
    unsealed: lockbox_crypto::Unsealed,
    backup: lockbox_crypto::BackupIdentity,
    assist: lockbox_crypto::AssistIdentity,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let seed = |b: u8| SecretBytes::new(vec![b; 32]);
        let controller = SigningIdentity::from_secret(&seed(1)).expect("a 32-byte seed");
        let mut trusted = TrustedControllers::new();
        trusted.insert("ctl-1".into(), controller.public_key());
        let keyfile = seed(4);
        let (_, unsealed) = lockbox_crypto::Keyring::create(
            lockbox_crypto::UnsealSecret::Keyfile(&keyfile),
            lockbox_crypto::Argon2Params {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
        )
        .expect("a keyring");
        Keys {
            controller,
            node: SigningIdentity::from_secret(&seed(2)).expect("a 32-byte seed"),
            hpke: HpkeIdentity::from_secret(&seed(3)).expect("a 32-byte seed"),
            trusted,
            unsealed,
            backup: lockbox_crypto::BackupIdentity::generate().expect("an identity"),
            // 5 followed by zeros: a canonical, nonzero scalar.
            assist: lockbox_crypto::AssistIdentity::from_secret(&SecretBytes::new(
                std::iter::once(5u8).chain([0u8; 31]).collect(),
            ))
            .expect("a canonical scalar"),
        }
    })
}

const NOW: u64 = 1_800_000_000_000;
const GRANT_ID: [u8; 16] = [9; 16];

fn utf8(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A grant file's text (`lockboxctl grant …`, `grant verify FILE`).
pub fn grant_text(data: &[u8]) {
    if let Some(text) = utf8(data) {
        let _ = lockbox_crypto::grant_from_text(text);
    }
}

/// A grant body, signed by a trusted controller: every body rule and both sides' checks.
pub fn grant_body(data: &[u8]) {
    let _ = lockbox_crypto::decode_grant_body(data);
    let k = keys();
    let signed = pb::SignedGrant {
        body: data.to_vec(),
        signatures: vec![lockbox_crypto::sign_grant_body(
            &k.controller,
            "ctl-1",
            data,
        )],
    };
    for side in [GrantSide::Source, GrantSide::Destination] {
        let ctx = GrantContext {
            now_unix_ms: NOW,
            skew_ms: 30_000,
            threshold: 1,
            self_node: "host-a",
            peer_node: Some("host-b"),
            side,
            key_ids: None,
        };
        let _ = lockbox_crypto::verify_grant(&signed, &k.trusted, &ctx, &|_| false);
    }
}

/// An attestation body, signed by a trusted controller.
pub fn attestation(data: &[u8]) {
    let _ = lockbox_crypto::decode_attestation_body(data);
    let k = keys();
    let signed = pb::SignedAttestation {
        body: data.to_vec(),
        signatures: vec![lockbox_crypto::sign_attestation_body(
            &k.controller,
            "ctl-1",
            data,
        )],
    };
    let spki = [5u8; 32];
    let ctx = AttestationContext {
        now_unix_ms: NOW,
        skew_ms: 30_000,
        threshold: 1,
        expected_node: Some("host-b"),
        peer_tls_spki_sha256: Some(&spki),
    };
    if let Ok(v) = lockbox_crypto::verify_attestation(&signed, &k.trusted, &ctx) {
        let _ = lockbox_crypto::check_attestation_claims(&v, &ctx);
    }
}

/// A controller's vouch body (peer-assisted unseal), signed by a trusted controller: every
/// check a helping peer makes behind the signature.
pub fn vouch(data: &[u8]) {
    let _ = lockbox_crypto::decode_vouch_body(data);
    let k = keys();
    let signed = pb::SignedVouch {
        body: data.to_vec(),
        signatures: vec![lockbox_crypto::sign_vouch_body(
            &k.controller,
            "ctl-1",
            data,
        )],
    };
    let spki = [5u8; 32];
    let ctx = lockbox_crypto::VouchContext {
        now_unix_ms: NOW,
        skew_ms: 30_000,
        threshold: 1,
        expected_node: "host-a",
        peer_tls_spki_sha256: &spki,
    };
    let _ = lockbox_crypto::verify_vouch(&signed, &k.trusted, &ctx);
}

/// A controller's revocation list body, signed by a trusted controller, as peers fetch and
/// keep it.
pub fn revocations(data: &[u8]) {
    let _ = lockbox_crypto::decode_revocations_body(data);
    let k = keys();
    let signed = pb::SignedRevocations {
        body: data.to_vec(),
        signatures: vec![lockbox_crypto::sign_revocations_body(
            &k.controller,
            "ctl-1",
            data,
        )],
    };
    if let Ok(v) = lockbox_crypto::verify_revocations(&signed, &k.trusted) {
        let _ = v.find("host-a");
    }
}

/// The controller's `data_dir/revoked` file: what parses must re-encode to the same text.
pub fn revoked_file(data: &[u8]) {
    if let Some(text) = utf8(data)
        && let Ok(f) = lockbox_controller::revoked::RevokedFile::parse(text)
    {
        assert_eq!(
            f.encode(),
            text,
            "a revoked file that parses re-encodes identically"
        );
    }
}

/// A TPM sealed slot as the keyring file holds it (`lockbox-tpm`'s format, checked before any
/// byte reaches the TPM): what decodes re-encodes to exactly the same bytes and names a
/// storage key only in version 2.
pub fn tpm_slot(data: &[u8]) {
    if let Ok(s) = lockbox_tpm::SealedSlot::decode(data) {
        assert_eq!(
            s.encode(),
            data,
            "a slot that decodes re-encodes identically"
        );
        assert_eq!(s.srk_name().is_some(), data.first() == Some(&2));
    }
}

/// A receipt body, signed by the destination: every field check behind the signature.
pub fn receipt(data: &[u8]) {
    let k = keys();
    let signature = k.node.sign(lockbox_crypto::RECEIPT_DOMAIN, data);
    let key_ids = ["0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60".to_string()];
    let expected = ReceiptExpectation {
        grant_id: &GRANT_ID,
        op: pb::GrantOp::Move,
        source_node: "host-a",
        dest_node: "host-b",
        key_ids: &key_ids,
    };
    let _ = lockbox_crypto::verify_receipt(&k.node.public_key(), data, &signature, &expected);
}

/// A transfer batch as it travels (`SealedBatch` protobuf), signed by the source and opened
/// by the destination.
pub fn batch(data: &[u8]) {
    let Ok(wire) = pb::SealedBatch::decode(data) else {
        return;
    };
    let sealed = lockbox_crypto::SealedBatch::from_wire(&wire);
    let k = keys();
    let ctx = BatchContext {
        grant_id: &GRANT_ID,
        batch: wire.batch,
        source_node: "host-a",
        dest_node: "host-b",
    };
    let signature = lockbox_crypto::sign_batch(&k.node, &ctx, &sealed);
    let _ = lockbox_crypto::verify_and_open_batch(
        &k.hpke,
        &k.node.public_key(),
        &ctx,
        &sealed,
        &signature,
    );
}

/// A backup file: its header, and opening it.
pub fn backup(data: &[u8]) {
    let _ = lockbox_crypto::inspect_backup(data);
    let _ = lockbox_crypto::open_backup(&keys().backup, data);
    if let Some(text) = utf8(data) {
        let _ = lockbox_crypto::BackupIdentity::from_file_text(text);
        let _ = lockbox_crypto::BackupRecipient::parse(text);
    }
}

/// A sealed record of the store, opened under the node's KEKs.
pub fn sealed_record(data: &[u8]) {
    let u = &keys().unsealed;
    let _ = lockbox_crypto::sealed_kek_id(data);
    let _ = lockbox_crypto::seal_fingerprint(data);
    for kind in [
        lockbox_crypto::RecordKind::KeyMeta,
        lockbox_crypto::RecordKind::Material,
        lockbox_crypto::RecordKind::AuditHead,
    ] {
        let _ = u.open(kind, b"record", data);
    }
}

/// The keyring file (both versions), and unsealing it with a key file or a peers slot key
/// (not a passphrase: Argon2 at the bounds a file may name is slow on purpose). What decodes
/// must re-encode to the same bytes: one encoding per keyring.
pub fn keyring(data: &[u8]) {
    if let Ok(ring) = lockbox_crypto::Keyring::decode(data) {
        assert_eq!(
            ring.encode(),
            data,
            "a keyring that decodes re-encodes identically"
        );
        let secret = SecretBytes::new(vec![4; 32]);
        let _ = ring.unseal(lockbox_crypto::UnsealSecret::Keyfile(&secret));
        let _ = ring.unseal(lockbox_crypto::UnsealSecret::PeersKey(&secret));
        let _ = ring.peer_slot().map(|s| s.begin_unseal("host-a"));
    }
}

/// An audit record, alone and as the chain's first.
pub fn audit_entry(data: &[u8]) {
    let _ = lockbox_crypto::AuditEntry::decode(data);
    let mut chain = lockbox_crypto::ChainVerifier::new(keys().node.public_key());
    let _ = chain.push(1, data);
}

/// A store journal file, through the check `Store::open` runs before the engine reads it.
pub fn journal(data: &[u8]) {
    // One directory per thread, in memory where there is a tmpfs, rewritten for each input:
    // the check reads a directory of journal files, and making and removing a directory on
    // disk per input was most of this target's time.
    thread_local! {
        static DIR: Option<tempfile::TempDir> = {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                tempfile::tempdir_in(shm).ok()
            } else {
                tempfile::tempdir().ok()
            }
        };
    }
    DIR.with(|dir| {
        if let Some(dir) = dir
            && std::fs::write(dir.path().join("0.jnl"), data).is_ok()
        {
            let _ = lockbox_store::check_journals(dir.path());
        }
    });
}

/// Peer-assisted unseal: the assist key file (read at every start), a peer slot with its
/// enrolled shares (kept in the keyring), one enrolled share, and the input a peer answers
/// (a blinded point from the network). What decodes must encode back to the same bytes.
pub fn assist(data: &[u8]) {
    let _ = lockbox_crypto::AssistIdentity::from_file_bytes(data);
    if let Ok(slot) = lockbox_crypto::PeerSlot::decode(data) {
        assert_eq!(slot.encode(), data, "a peer slot decoded from other bytes");
        let _ = slot.begin_unseal(slot.owner_node());
    }
    if let Ok(share) = lockbox_crypto::EnrolledShare::decode(data) {
        assert_eq!(
            share.encode(),
            data,
            "an enrolled share decoded from other bytes"
        );
    }
    if let Ok(point) = <[u8; 32]>::try_from(data) {
        let _ = keys().assist.answer(&point);
    }
}

/// A key's metadata record, after it was opened (the strict stored shape).
pub fn key_record(data: &[u8]) {
    let _ = serde_json::from_slice::<lockboxd::custody::KeyMeta>(data);
}

/// lockboxd's config file.
pub fn config_lockboxd(data: &[u8]) {
    if let Some(text) = utf8(data) {
        let _ = lockboxd::config::Config::parse(text, Path::new("fuzz.toml"));
    }
}

/// The controller's config file.
pub fn config_controller(data: &[u8]) {
    if let Some(text) = utf8(data) {
        let _ = lockbox_controller::ControllerConfig::parse(text, Path::new("fuzz.toml"));
    }
}

/// A SPIFFE id, and a certificate's (DER) SPIFFE id and key hash.
pub fn spiffe(data: &[u8]) {
    if let Some(text) = utf8(data) {
        let _ = lockbox_tls::SpiffeId::parse(text);
        let _ = lockbox_tls::check_trust_domain(text);
    }
    let _ = lockbox_tls::spiffe_id_of_cert(data);
    let _ = lockbox_tls::spki_sha256(data);
}

pub mod seeds;
