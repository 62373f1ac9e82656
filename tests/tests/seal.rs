//! Sealing, unsealing, caller authorization, and tampering with sealed material.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use lockbox_store::Ns;
use lockbox_tests::{Node, NodeOptions, flip_middle_byte, json_str};
use serde_json::json;

const PASSPHRASE: &str = "correct horse battery staple";

fn assert_sealed_error(node: &Node, args: &[&str]) {
    let err = node.ctl_err(args);
    assert!(
        err.to_lowercase().contains("sealed"),
        "{args:?} on a sealed daemon must say so: {err}"
    );
}

/// Invariant: sealed, the daemon answers only status and unseal.
#[test]
fn sealed_passphrase_daemon_refuses_key_operations() {
    let mut node = Node::start(NodeOptions::passphrase(PASSPHRASE));
    let s = node.status();
    assert_eq!(
        s["sealed"],
        json!(true),
        "passphrase node starts sealed: {s}"
    );
    assert_eq!(s["unseal_method"], json!("passphrase"));

    assert_sealed_error(&node, &["key", "create"]);
    assert_sealed_error(&node, &["key", "list"]);
    assert_sealed_error(
        &node,
        &["key", "get", "00000000-0000-4000-8000-000000000000"],
    );

    // Unseal, make a key, restart: sealed again, and the key is out of reach until unsealed.
    node.unseal();
    let id = node.create_key(&[]);
    let bytes = node.key_bytes(&id);
    node.restart();
    assert_eq!(node.status()["sealed"], json!(true));
    assert_sealed_error(&node, &["key", "get", &id]);
    assert_sealed_error(&node, &["key", "get", &id, "--format", "raw"]);
    assert_sealed_error(&node, &["key", "create"]);
    assert_sealed_error(&node, &["key", "list"]);
    assert_sealed_error(&node, &["key", "describe", &id]);
    assert_sealed_error(&node, &["kek", "rotate"]);
    node.unseal();
    assert_eq!(node.key_bytes(&id), bytes);
    assert_eq!(node.status()["key_count"], json!(1));
}

#[test]
fn seal_and_unseal_a_keyfile_node() {
    let node = Node::keyfile();
    let id = node.create_key(&[]);
    let bytes = node.key_bytes(&id);
    assert_eq!(node.status()["sealed"], json!(false));

    let s = node.ctl_json(&["seal"]);
    assert_eq!(s["sealed"], json!(true), "seal returns the status: {s}");
    assert_eq!(node.status()["sealed"], json!(true));
    assert_sealed_error(&node, &["key", "get", &id]);
    assert_sealed_error(&node, &["key", "create"]);
    assert_sealed_error(&node, &["key", "list"]);
    assert_sealed_error(&node, &["key", "snapshot", &id]);
    assert_sealed_error(&node, &["key", "destroy", &id]);

    let s = node.ctl_json(&["unseal"]);
    assert_eq!(s["sealed"], json!(false), "{s}");
    assert_eq!(node.key_bytes(&id), bytes);
    assert_eq!(node.describe(&id)["state"], json!("active"));
    node.create_key(&[]);

    // Seal and unseal are audited (invariant 9).
    let tail = node.ctl_json(&["audit", "tail", "-n", "10"]);
    let actions: Vec<String> = tail["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json_str(r, "action").to_lowercase())
        .collect();
    assert!(actions.iter().any(|a| a.contains("unseal")), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|a| a.contains("seal") && !a.contains("unseal")),
        "{actions:?}"
    );
}

#[test]
fn wrong_passphrase_keeps_the_daemon_sealed() {
    let node = Node::start(NodeOptions::passphrase(PASSPHRASE));
    let wrong = node.dir().join("wrong");
    std::fs::write(&wrong, "not the passphrase").unwrap();
    let err = node.ctl_err(&["unseal", "--passphrase-file", wrong.to_str().unwrap()]);
    assert!(err.contains("wrong unseal secret"), "{err}");
    assert_eq!(node.status()["sealed"], json!(true));
    assert_sealed_error(&node, &["key", "create"]);

    node.unseal();
    assert_eq!(node.status()["sealed"], json!(false));
    node.create_key(&[]);
}

/// Invariant 2: plaintext leaves only to callers whose uid/gid the config allows.
#[test]
fn caller_uid_not_allowed_is_refused() {
    let mut node = Node::keyfile();
    let id = node.create_key(&[]);
    let bytes = node.key_bytes(&id);
    node.stop();

    // The tests run as root: a list naming only another uid excludes us.
    node.opts_mut().allowed_uids = Some(vec![12345]);
    node.write_config();
    node.spawn_ready();
    let denied = |args: &[&str]| {
        let err = node.ctl_err(args).to_lowercase();
        assert!(
            err.contains("permission denied") || err.contains("not allowed"),
            "{args:?}: {err}"
        );
        assert!(!err.contains(&hex::encode(&bytes)));
    };
    denied(&["key", "get", &id]);
    denied(&["key", "get", &id, "--format", "raw"]);
    denied(&["key", "create"]);
    denied(&["key", "list"]);
    denied(&["key", "destroy", &id]);
    let out = node.ctl_plain(&["key", "get", &id, "--format", "raw"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no material to a refused caller");

    // Allowed again: the refused calls changed nothing.
    node.stop();
    node.opts_mut().allowed_uids = Some(vec![0]);
    node.write_config();
    node.spawn_ready();
    assert_eq!(node.key_bytes(&id), bytes);
    assert_eq!(node.status()["key_count"], json!(1));
}

fn material_ids(node: &Node) -> BTreeSet<Vec<u8>> {
    let store = node.open_store();
    store
        .iter_after(Ns::Materials, None)
        .map(|r| r.unwrap().0)
        .collect()
}

/// Sealed records are authenticated: an edited material fails to open, the others still do.
#[test]
fn tampered_material_fails_integrity_check() {
    let mut node = Node::keyfile();
    let victim = node.create_key(&[]);
    let victim_bytes = node.key_bytes(&victim);
    node.stop();
    let first = material_ids(&node);
    assert_eq!(first.len(), 1, "one material per created key");
    let victim_material = first.into_iter().next().unwrap();

    node.spawn_ready();
    let mut others = Vec::new();
    for _ in 0..3 {
        let id = node.create_key(&[]);
        others.push((id.clone(), node.key_bytes(&id)));
    }
    node.stop();
    assert_eq!(material_ids(&node).len(), 4);

    {
        let store = node.open_store();
        let sealed = store.get(Ns::Materials, &victim_material).unwrap().unwrap();
        let mut b = lockbox_store::Batch::new();
        b.put(Ns::Materials, &victim_material, &flip_middle_byte(&sealed));
        store.apply(b).unwrap();
        store.flush_blocking().unwrap();
    }

    node.spawn_ready();
    let err = node.ctl_err(&["key", "get", &victim]);
    assert!(err.to_lowercase().contains("integrity"), "{err}");
    assert!(!err.contains(&hex::encode(&victim_bytes)));
    for (id, bytes) in &others {
        assert_eq!(&node.key_bytes(id), bytes);
    }
}

/// A material record moved under another id (swapped) fails too: the AAD binds the id.
#[test]
fn swapped_material_records_fail_integrity_check() {
    let mut node = Node::keyfile();
    let a = node.create_key(&[]);
    node.stop();
    let ma = material_ids(&node).into_iter().next().unwrap();
    node.spawn_ready();
    let b = node.create_key(&[]);
    let b_bytes = node.key_bytes(&b);
    node.stop();
    let mb = material_ids(&node).into_iter().find(|m| *m != ma).unwrap();
    {
        let store = node.open_store();
        let va = store.get(Ns::Materials, &ma).unwrap().unwrap();
        let vb = store.get(Ns::Materials, &mb).unwrap().unwrap();
        let mut batch = lockbox_store::Batch::new();
        // Put b's sealed material under a's id: a must not silently become b's key.
        batch.put(Ns::Materials, &ma, &vb);
        batch.put(Ns::Materials, &mb, &va);
        store.apply(batch).unwrap();
        store.flush_blocking().unwrap();
    }
    node.spawn_ready();
    let err = node.ctl_err(&["key", "get", &a]);
    assert!(err.to_lowercase().contains("integrity"), "{err}");
    let out = node.ctl(&["key", "get", &b]);
    assert!(!out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&hex::encode(&b_bytes)),
        "a swapped record must not open"
    );
}
