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
    // Health too: whether a node is sealed or failing is not for every local user.
    let e = health(&node.socket()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not allowed"), "{e}");

    // Allowed again: the refused calls changed nothing.
    node.stop();
    node.opts_mut().allowed_uids = Some(vec![0]);
    node.write_config();
    node.spawn_ready();
    assert_eq!(node.key_bytes(&id), bytes);
    assert_eq!(node.status()["key_count"], json!(1));
    assert_eq!(
        health(&node.socket()).unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// A `grpc.health.v1` check on the Unix socket, as a monitoring agent makes it.
fn health(
    socket: &std::path::Path,
) -> Result<tonic_health::pb::health_check_response::ServingStatus, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = lockbox_tests::unix_channel(socket).await;
        let reply = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(reply.into_inner().status())
    })
}

fn material_ids(node: &Node) -> BTreeSet<Vec<u8>> {
    let store = node.open_store();
    store
        .iter_after(Ns::Materials, None)
        .map(|r| r.unwrap().0)
        .collect()
}

/// Replaces one record of a stopped node's database with a copy with one byte flipped.
fn flip_record(node: &Node, ns: Ns, id: &[u8]) {
    let store = node.open_store();
    let sealed = store.get(ns, id).unwrap().unwrap();
    let mut b = lockbox_store::Batch::new();
    b.put(ns, id, &flip_middle_byte(&sealed));
    store.apply(b).unwrap();
    store.flush_blocking().unwrap();
}

/// Sealed records are authenticated: an edited material fails to open, the others still do.
/// Both places material lives are tried: a key's own record (where a key's material is while
/// no other key id shares it) and a shared material record (after a snapshot).
#[test]
fn tampered_material_fails_integrity_check() {
    let mut node = Node::keyfile();
    let inline = node.create_key(&[]);
    let inline_bytes = node.key_bytes(&inline);
    node.stop();
    assert!(
        material_ids(&node).is_empty(),
        "a key's material is in its own record until it is shared"
    );

    node.spawn_ready();
    let shared = node.create_key(&[]);
    let shared_bytes = node.key_bytes(&shared);
    let snap = json_str(&node.ctl_json(&["key", "snapshot", &shared]), "key_id");
    node.stop();
    let first = material_ids(&node);
    assert_eq!(
        first.len(),
        1,
        "the snapshot moved one material to a shared record"
    );
    let shared_material = first.into_iter().next().unwrap();

    node.spawn_ready();
    let mut others = Vec::new();
    for _ in 0..3 {
        let id = node.create_key(&[]);
        others.push((id.clone(), node.key_bytes(&id)));
    }
    node.stop();
    assert_eq!(material_ids(&node).len(), 1);

    flip_record(&node, Ns::Keys, inline.as_bytes());
    flip_record(&node, Ns::Materials, &shared_material);

    node.spawn_ready();
    for (victim, bytes) in [
        (&inline, &inline_bytes),
        (&shared, &shared_bytes),
        (&snap, &shared_bytes),
    ] {
        let err = node.ctl_err(&["key", "get", victim]);
        assert!(err.to_lowercase().contains("integrity"), "{victim}: {err}");
        assert!(!err.contains(&hex::encode(bytes)));
    }
    for (id, bytes) in &others {
        assert_eq!(&node.key_bytes(id), bytes);
    }
}

/// Two keys' records swapped (each one's sealed bytes under the other's id) open for neither:
/// the seal binds the key id, so a key can never silently become another's.
#[test]
fn swapped_key_records_fail_integrity_check() {
    let mut node = Node::keyfile();
    let a = node.create_key(&[]);
    let b = node.create_key(&[]);
    let b_bytes = node.key_bytes(&b);
    node.stop();
    {
        let store = node.open_store();
        let va = store.get(Ns::Keys, a.as_bytes()).unwrap().unwrap();
        let vb = store.get(Ns::Keys, b.as_bytes()).unwrap().unwrap();
        let mut batch = lockbox_store::Batch::new();
        batch.put(Ns::Keys, a.as_bytes(), &vb);
        batch.put(Ns::Keys, b.as_bytes(), &va);
        store.apply(batch).unwrap();
        store.flush_blocking().unwrap();
    }
    node.spawn_ready();
    for id in [&a, &b] {
        let out = node.ctl(&["key", "get", id]);
        assert!(!out.status.success(), "a swapped key record opened");
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(stderr.contains("integrity"), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&hex::encode(&b_bytes)));
    }
}

/// A shared material record moved under another id (swapped) fails too: the AAD binds the
/// id. (Snapshots put each key's material in a shared record.)
#[test]
fn swapped_material_records_fail_integrity_check() {
    let mut node = Node::keyfile();
    let a = node.create_key(&[]);
    node.ctl_json(&["key", "snapshot", &a]);
    node.stop();
    let ma = material_ids(&node).into_iter().next().unwrap();
    node.spawn_ready();
    let b = node.create_key(&[]);
    let b_bytes = node.key_bytes(&b);
    node.ctl_json(&["key", "snapshot", &b]);
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

/// The assist key (peer-assisted unseal) is made by `init` in its own 0600 file, outside the
/// keyring, and its public half shows in `status` sealed or not; a data dir without one (an
/// earlier release's) gets one at start; a file others can read, or one damaged, stops the
/// start naming the file.
#[test]
fn the_assist_key_is_made_once_kept_private_and_checked_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let mut node = Node::start(NodeOptions::passphrase("correct horse battery"));
    let path = node.data_dir().join("assist.key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let sealed = node.status();
    assert_eq!(sealed["sealed"], true);
    let public = sealed["assist_public_key"].as_str().unwrap().to_string();
    assert_eq!(public.len(), 64, "{sealed}");
    node.restart();
    assert_eq!(node.status()["assist_public_key"], public.as_str());

    // An earlier release's data dir: the key is made at start.
    node.stop();
    std::fs::remove_file(&path).unwrap();
    node.spawn_ready();
    let fresh = node.status()["assist_public_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fresh.len(), 64);
    assert_ne!(fresh, public);

    // Readable by others: refused, naming the file.
    node.stop();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start_failure(&mut node);
    assert!(
        err.contains("assist.key") && err.contains("chmod 600"),
        "{err}"
    );

    // Damaged: refused, naming the file.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let err = start_failure(&mut node);
    assert!(err.contains("assist.key"), "{err}");
}

/// Runs the daemon expecting it to stop at start; returns its stderr.
fn start_failure(node: &mut Node) -> String {
    let out = lockbox_tests::run_with_timeout(
        std::process::Command::new(&lockbox_tests::binaries().lockboxd)
            .arg("--config")
            .arg(node.config_path()),
        std::time::Duration::from_secs(20),
    );
    assert!(
        !out.status.success(),
        "{}",
        lockbox_tests::describe_output(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
