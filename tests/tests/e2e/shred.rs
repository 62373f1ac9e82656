//! Invariant 7: a destroyed key is unrecoverable from the disk after the next KEK rotation, even
//! by someone who holds the current unseal secret and an old copy of the database.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use lockbox_crypto::{Keyring, RecordKind, SecretBytes, UnsealSecret};
use lockbox_tests::{
    Node, NodeOptions, ShredRotation, copy_dir, describe_output, json_str, sealed_materials,
};
use serde_json::json;

/// The plaintexts of those of `records` that open under the keyring file `keyring` unsealed
/// with `keyfile`.
fn opening(keyring: &Path, keyfile: &Path, records: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Vec<u8>> {
    let keyring = Keyring::decode(&std::fs::read(keyring).unwrap()).unwrap();
    let secret = SecretBytes::new(std::fs::read(keyfile).unwrap());
    let unsealed = keyring.unseal(UnsealSecret::Keyfile(&secret)).unwrap();
    records
        .iter()
        .filter_map(|(id, sealed)| {
            unsealed
                .open(RecordKind::Material, id.as_slice(), sealed.as_slice())
                .ok()
                .map(|p| p.expose_secret().to_vec())
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn destroyed_key_is_unrecoverable_after_kek_rotation() {
    let mut node = Node::start(NodeOptions {
        shred_rotation: Some(ShredRotation::Immediate),
        ..NodeOptions::default()
    });
    let victim = node.create_key(&[]);
    let victim_bytes = node.key_bytes(&victim);
    let keep = node.create_key(&["--length", "64"]);
    let keep_bytes = node.key_bytes(&keep);
    let kek_before = node.status()["kek_id"].as_u64().unwrap();

    // A consistent copy of the data dir before the destroy: what an attacker may have kept.
    node.stop();
    let old_data = node.dir().join("old-data");
    copy_dir(&node.data_dir(), &old_data);
    let old_materials = sealed_materials(
        &old_data.join("db"),
        &old_data.join("keyring"),
        &node.keyfile_path(),
    );
    assert_eq!(old_materials.len(), 2, "one material per created key");
    // Our use of the crypto API is right: the old keyring opens every old record.
    let opened = opening(
        &old_data.join("keyring"),
        &node.keyfile_path(),
        &old_materials,
    );
    assert_eq!(
        opened.len(),
        2,
        "the keyring of the copy must open its own records"
    );
    assert!(
        opened.iter().any(|p| contains(p, &victim_bytes)),
        "the copy holds the victim's material"
    );

    node.spawn_ready();
    let r = node.ctl_json(&["key", "destroy", &victim]);
    assert_eq!(r["destroyed_key_ids"], json!([victim]), "{r}");
    assert_eq!(r["material_shredded"], json!(true), "{r}");
    assert_eq!(
        r["kek_rotated"],
        json!(true),
        "shred_rotation = \"immediate\" rotates the KEK: {r}"
    );
    assert!(node.status()["kek_id"].as_u64().unwrap() > kek_before);
    assert_eq!(node.key_bytes(&keep), keep_bytes);
    node.stop();

    // The new keyring opens the live records of the new db...
    let new_materials =
        sealed_materials(&node.db_dir(), &node.keyring_path(), &node.keyfile_path());
    assert_eq!(
        new_materials.len(),
        1,
        "the destroyed material is gone: {new_materials:?}"
    );
    let opened = opening(&node.keyring_path(), &node.keyfile_path(), &new_materials);
    assert_eq!(opened.len(), 1);
    assert!(contains(&opened[0], &keep_bytes));
    // ...and not one record of the old db, the destroyed key's included.
    assert_eq!(
        opening(&node.keyring_path(), &node.keyfile_path(), &old_materials).len(),
        0,
        "a record sealed under the old KEK opens with the new keyring: the old KEK survived"
    );

    // The daemon agrees: old db + new keyring + the same unseal key cannot serve the victim.
    let mut mixed = Node::new_uninit(NodeOptions::default());
    copy_dir(&old_data, &mixed.data_dir());
    std::fs::copy(node.keyring_path(), mixed.keyring_path()).unwrap();
    std::fs::copy(node.keyfile_path(), mixed.keyfile_path()).unwrap();
    mixed.spawn();
    match mixed.try_wait_ready() {
        Ok(()) => {
            let out = mixed.ctl(&["key", "get", &victim, "--format", "hex"]);
            assert!(
                !out.status.success(),
                "the destroyed key came back from an old db:\n{}",
                describe_output(&out)
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("error"), "{stderr}");
            assert!(!String::from_utf8_lossy(&out.stdout).contains(&hex::encode(&victim_bytes)));
            let out = mixed.ctl_plain(&["key", "get", &victim, "--format", "raw"]);
            assert!(!out.status.success());
            assert!(out.stdout.is_empty());
        }
        Err(st) => {
            assert!(!st.success(), "a daemon that cannot serve must not exit 0");
            // Refusing to start on a keyring that does not match the db is also safe; the
            // store-level check above is the proof.
            eprintln!(
                "mixed node refused to start ({st}); log:\n{}",
                mixed.log_contents()
            );
        }
    }
    drop(mixed);

    // The real node still serves the kept key.
    node.spawn_ready();
    assert_eq!(node.key_bytes(&keep), keep_bytes);
    let d = node.describe(&victim);
    assert_eq!(json_str(&d, "state"), "destroyed");
}

#[test]
fn batched_shred_rotation_rotates_after_n_destroys() {
    let node = Node::start(NodeOptions {
        shred_rotation: Some(ShredRotation::Every(2)),
        ..NodeOptions::default()
    });
    let a = node.create_key(&[]);
    let b = node.create_key(&[]);
    let c = node.create_key(&[]);
    let c_bytes = node.key_bytes(&c);
    let kek0 = node.status()["kek_id"].as_u64().unwrap();
    let r = node.ctl_json(&["key", "destroy", &a]);
    assert_eq!(r["kek_rotated"], json!(false), "{r}");
    assert_eq!(node.status()["kek_id"].as_u64(), Some(kek0));
    let r = node.ctl_json(&["key", "destroy", &b]);
    assert_eq!(r["kek_rotated"], json!(true), "{r}");
    assert!(node.status()["kek_id"].as_u64().unwrap() > kek0);
    assert_eq!(node.key_bytes(&c), c_bytes);
}

/// A MOVE shreds the source's copy like a destroy does: with `shred_rotation = "immediate"`
/// the source rotates its KEK, so an old copy of its database opened with the new keyring
/// yields none of the moved keys' material. The tombstones are sealed under the new KEK in the
/// MOVE's own batch (the rotation does not re-seal them): they must still read back after a
/// restart, with no rotation left to resume.
#[test]
fn a_moved_key_is_unrecoverable_at_the_source_after_its_kek_rotation() {
    let mut c = lockbox_tests::cluster::Cluster::start(&["host-a", "host-b"], "");
    let a = c.node("host-a");
    let keep = a.create_key(&[]);
    let keep_bytes = a.key_bytes(&keep);
    let moved: Vec<String> = (0..3).map(|_| a.create_key(&[])).collect();
    let moved_bytes: Vec<Vec<u8>> = moved.iter().map(|k| a.key_bytes(k)).collect();
    let kek_before = a.status()["kek_id"].as_u64().unwrap();

    let a = c.node_mut("host-a");
    a.stop();
    let old_data = a.dir().join("old-data");
    copy_dir(&a.data_dir(), &old_data);
    c.restart_with_failpoint("host-a", None);

    let ids: Vec<&str> = moved.iter().map(String::as_str).collect();
    let g = c.grant(&ids, "host-a", "host-b", "move", "10m");
    let a = c.node("host-a");
    let r = a.ctl_json(&["transfer", g.to_str().unwrap()]);
    assert_eq!(r["key_ids"].as_array().map(Vec::len), Some(3), "{r}");
    assert!(
        a.status()["kek_id"].as_u64().unwrap() > kek_before,
        "the MOVE shredded material, so the source rotated its KEK"
    );
    for (k, bytes) in moved.iter().zip(&moved_bytes) {
        assert_eq!(&c.node("host-b").key_bytes(k), bytes);
        assert_eq!(a.describe(k)["state"], "moved");
    }
    assert_eq!(a.key_bytes(&keep), keep_bytes);
    assert_eq!(a.ctl_json(&["audit", "verify"])["ok"], true);

    let a = c.node_mut("host-a");
    a.stop();
    let old_materials = sealed_materials(
        &old_data.join("db"),
        &old_data.join("keyring"),
        &a.keyfile_path(),
    );
    assert_eq!(old_materials.len(), 4, "the copy holds every material");
    assert_eq!(
        opening(&old_data.join("keyring"), &a.keyfile_path(), &old_materials).len(),
        4,
        "the copy's own keyring opens its records"
    );
    assert_eq!(
        opening(&a.keyring_path(), &a.keyfile_path(), &old_materials).len(),
        0,
        "a moved key's material opens with the source's new keyring: the old KEK survived"
    );
    let left = sealed_materials(&a.db_dir(), &a.keyring_path(), &a.keyfile_path());
    let opened = opening(&a.keyring_path(), &a.keyfile_path(), &left);
    assert_eq!(opened.len(), 1, "only the kept key's material is left");
    assert!(contains(&opened[0], &keep_bytes));

    // The tombstones (sealed under the new KEK) read back after a restart, and no rotation
    // was left half done.
    c.restart_with_failpoint("host-a", None);
    let a = c.node("host-a");
    for k in &moved {
        let d = a.describe(k);
        assert_eq!(d["state"], "moved", "{d}");
        assert_eq!(d["moved_to_node"], "host-b", "{d}");
    }
    assert_eq!(a.key_bytes(&keep), keep_bytes);
    assert!(
        !a.log_contents()
            .contains("resuming an interrupted KEK rotation"),
        "{}",
        a.log_contents()
    );
    assert_eq!(a.ctl_json(&["audit", "verify"])["ok"], true);
}
