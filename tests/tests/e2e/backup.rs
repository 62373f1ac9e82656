//! Offline backups (DESIGN.md §8) through real daemons: `backup keygen`, `export` from one
//! lockboxd and `restore` into a fresh one; tampered, truncated and conflicting backups are
//! refused whole; the file holds no plaintext; both ends audit and their chains verify.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lockbox_tests::{Node, NodeOptions, find_needles, json_str, leak_needles};
use serde_json::{Value, json};

fn node(name: &str) -> Node {
    Node::start(NodeOptions {
        node_id: name.into(),
        ..NodeOptions::default()
    })
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `backup keygen -o DIR/NAME`: returns the identity path and the recipient string.
fn keygen(node: &Node, name: &str) -> (PathBuf, String) {
    let id = node.dir().join(name);
    let v = node.ctl_json(&["backup", "keygen", "-o", path_str(&id)]);
    assert_eq!(json_str(&v, "identity"), path_str(&id), "{v}");
    (id, json_str(&v, "recipient"))
}

fn labels(info: &Value) -> BTreeMap<String, String> {
    info["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn audit_actions(node: &Node) -> Vec<Value> {
    let v = node.ctl_json(&["audit", "tail", "-n", "200"]);
    v["records"].as_array().unwrap().clone()
}

fn assert_audit_ok(node: &Node) {
    let v = node.ctl_json(&["audit", "verify"]);
    assert_eq!(v["ok"], json!(true), "{v}");
}

fn key_count(node: &Node) -> u64 {
    node.status()["key_count"].as_u64().unwrap()
}

/// A lockbox with a 32-byte key and its snapshot, a 64-byte key with a same-key clone and a
/// rekey in progress (two versions). Returns (k1, snapshot, k2, clone).
fn populate(a: &Node) -> (String, String, String, String) {
    let k1 = a.create_key(&["--label", "volume=vol1", "--label", "pool=tank"]);
    let snap = json_str(
        &a.ctl_json(&["key", "snapshot", &k1, "--label", "snap=daily"]),
        "key_id",
    );
    let k2 = a.create_key(&["--length", "64", "--label", "volume=vol2"]);
    let clone = json_str(
        &a.ctl_json(&["key", "clone", &k2, "--mode", "same-key"]),
        "key_id",
    );
    a.ctl_json(&["key", "rekey", &k2]);
    (k1, snap, k2, clone)
}

#[test]
fn keygen_writes_a_private_identity_and_a_public_recipient() {
    let a = node("host-a");
    let (id, recipient) = keygen(&a, "recovery.key");
    assert!(recipient.starts_with("lockbox-recipient1:"), "{recipient}");
    let mode = std::fs::metadata(&id).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the identity file must be private");
    let text = std::fs::read_to_string(&id).unwrap();
    assert!(text.contains("lockbox-identity1:"), "{text}");
    let public = std::fs::read_to_string(a.dir().join("recovery.key.pub")).unwrap();
    assert_eq!(public, format!("{recipient}\n"));
    // Never overwritten.
    let err = a.ctl_err(&["backup", "keygen", "-o", path_str(&id)]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&id).unwrap(), text);
}

#[test]
fn backup_round_trip_into_a_fresh_lockbox() {
    let a = node("host-a");
    let (k1, snap, k2, clone) = populate(&a);
    let (id1, _) = keygen(&a, "r1.key");
    let (id2, recipient2) = keygen(&a, "r2.key");
    let pub1 = a.dir().join("r1.key.pub");
    let file = a.dir().join("keys.lbkb");

    // One recipient as a .pub file, one as a string.
    let v = a.ctl_json(&[
        "backup",
        "export",
        "--recipient",
        path_str(&pub1),
        "--recipient",
        &recipient2,
        "-o",
        path_str(&file),
    ]);
    assert_eq!(v["keys"], json!(4), "{v}");
    assert_eq!(
        v["materials"],
        json!(3),
        "shared materials are stored once: {v}"
    );
    assert_eq!(v["recipients"], json!(2), "{v}");
    assert_eq!(json_str(&v, "file"), path_str(&file));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // No plaintext key bytes in the file, in any encoding.
    let bytes = std::fs::read(&file).unwrap();
    let mut needles = Vec::new();
    for k in [&k1, &snap, &k2, &clone] {
        needles.extend(leak_needles(&a.key_bytes(k)));
    }
    needles.extend(leak_needles(&a.key_bytes_version(&k2, 2)));
    assert!(
        find_needles(&bytes, &needles).is_empty(),
        "the backup file holds plaintext key material"
    );

    // Each recipient alone restores it into its own fresh lockbox.
    for identity in [&id1, &id2] {
        let b = node("host-b");
        assert_eq!(key_count(&b), 0);
        let r = b.ctl_json(&[
            "backup",
            "restore",
            path_str(&file),
            "--identity",
            path_str(identity),
        ]);
        assert_eq!(r["restored"], json!(4), "{r}");
        assert_eq!(r["skipped"], json!(0), "{r}");
        assert_eq!(key_count(&b), 4);
        for k in [&k1, &snap, &k2, &clone] {
            assert_eq!(b.key_bytes(k), a.key_bytes(k), "key {k}");
            let (da, db) = (a.describe(k), b.describe(k));
            assert_eq!(labels(&db), labels(&da), "labels of {k}");
            assert_eq!(db["origin"], da["origin"], "origin of {k}");
            assert_eq!(db["state"], da["state"]);
            assert_eq!(db["versions"], da["versions"], "versions of {k}");
            assert_eq!(db["current_version"], da["current_version"]);
            assert_eq!(db["clone_policy"], da["clone_policy"]);
        }
        assert_eq!(b.key_bytes_version(&k2, 2), a.key_bytes_version(&k2, 2));
        // Snapshots and same-key clones still share one material.
        assert_eq!(b.describe(&snap)["shares_material_with"], json!([k1]));
        assert_eq!(b.describe(&clone)["shares_material_with"], json!([k2]));
        // The restored lockbox works on them as usual.
        let snap2 = json_str(&b.ctl_json(&["key", "snapshot", &k1]), "key_id");
        assert_eq!(b.key_bytes(&snap2), a.key_bytes(&k1));

        // Idempotent-ish: again, everything is already there.
        let again = b.ctl_json(&[
            "backup",
            "restore",
            path_str(&file),
            "--identity",
            path_str(identity),
        ]);
        assert_eq!(again["restored"], json!(0), "{again}");
        assert_eq!(again["skipped"], json!(4), "{again}");
        assert_eq!(key_count(&b), 5);

        assert_audit_ok(&b);
        let restores: Vec<Value> = audit_actions(&b)
            .into_iter()
            .filter(|r| r["action"] == json!("backup-restore"))
            .collect();
        assert_eq!(restores.len(), 2, "{restores:?}");
        let detail = json_str(&restores[0], "detail");
        assert!(
            detail.contains("host-a") && detail.contains("4 keys restored"),
            "{detail}"
        );
    }

    // Restoring into the source itself skips everything.
    let r = a.ctl_json(&[
        "backup",
        "restore",
        path_str(&file),
        "--identity",
        path_str(&id1),
    ]);
    assert_eq!(
        (r["restored"].clone(), r["skipped"].clone()),
        (json!(0), json!(4))
    );

    // The export is audited with its recipients' fingerprints; no key bytes in the log.
    assert_audit_ok(&a);
    let export = audit_actions(&a)
        .into_iter()
        .find(|r| r["action"] == json!("backup-export"))
        .expect("an export record");
    let detail = json_str(&export, "detail");
    assert!(
        detail.contains("4 keys") && detail.contains("2 recipient(s)"),
        "{detail}"
    );
    for fp in v["recipient_fingerprints"].as_array().unwrap() {
        assert!(detail.contains(fp.as_str().unwrap()), "{detail}");
    }
    assert!(!json_str(&export, "actor").is_empty());
}

#[test]
fn label_filter_exports_only_matching_keys() {
    let a = node("host-a");
    let (k1, snap, _, _) = populate(&a);
    let (id, recipient) = keygen(&a, "r.key");
    let file = a.dir().join("vol1.lbkb");
    let v = a.ctl_json(&[
        "backup",
        "export",
        "--recipient",
        &recipient,
        "--label",
        "volume=vol1",
        "-o",
        path_str(&file),
    ]);
    assert_eq!(v["keys"], json!(2), "k1 and its snapshot: {v}");
    assert_eq!(v["materials"], json!(1), "{v}");
    let b = node("host-b");
    let r = b.ctl_json(&[
        "backup",
        "restore",
        path_str(&file),
        "--identity",
        path_str(&id),
    ]);
    let mut restored: Vec<String> = r["restored_key_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    restored.sort();
    let mut want = vec![k1, snap];
    want.sort();
    assert_eq!(restored, want);
}

#[test]
fn tampered_truncated_or_foreign_backups_are_refused_whole() {
    let a = node("host-a");
    populate(&a);
    let (id, recipient) = keygen(&a, "r.key");
    let (other, _) = keygen(&a, "other.key");
    let file = a.dir().join("keys.lbkb");
    a.ctl_json(&[
        "backup",
        "export",
        "--recipient",
        &recipient,
        "-o",
        path_str(&file),
    ]);
    let good = std::fs::read(&file).unwrap();
    let b = node("host-b");
    let restore = |bytes: &[u8], identity: &Path| {
        let f = b.dir().join("candidate.lbkb");
        std::fs::write(&f, bytes).unwrap();
        b.ctl_err(&[
            "backup",
            "restore",
            path_str(&f),
            "--identity",
            path_str(identity),
        ])
    };

    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    // "host-a": the stanza starts at byte 49, our fingerprint first; the mac at 161.
    for (at, expect) in [
        (good.len() / 2, "authentication failed: the payload"),
        (good.len() - 1, "authentication failed: the payload"),
        (200, "authentication failed: the payload"),
        (60, "no stanza for this identity"),
        (100, "authentication failed: the stanza"),
        (170, "header mac mismatch"),
        (20, "authentication failed: the stanza"),
    ] {
        let mut t = good.clone();
        t[at] ^= 0x01;
        cases.push((format!("byte {at} flipped"), t, expect));
    }
    cases.push((
        "cut inside the payload".into(),
        good[..good.len() - 7].to_vec(),
        "authentication failed",
    ));
    cases.push((
        "cut inside the header".into(),
        good[..40].to_vec(),
        "truncated",
    ));
    cases.push(("cut to nothing".into(), Vec::new(), "truncated"));
    let mut extended = good.clone();
    extended.extend_from_slice(b"more");
    cases.push(("extended".into(), extended, "authentication failed"));
    let mut magic = good.clone();
    magic[0] = b'X';
    cases.push(("bad magic".into(), magic, "bad magic"));
    let mut version = good.clone();
    version[4] = 9;
    cases.push((
        "future version".into(),
        version,
        "unsupported backup version 9",
    ));
    for (what, bytes, expect) in &cases {
        let err = restore(bytes, &id);
        assert!(err.contains(expect), "{what}: {err}");
        assert!(err.contains("nothing imported"), "{what}: {err}");
        assert_eq!(key_count(&b), 0, "{what}: something was imported");
    }
    let err = restore(&good, &other);
    assert!(err.contains("no stanza for this identity"), "{err}");
    let err = restore(&good, &a.dir().join("r.key.pub"));
    assert!(
        err.contains("recipient") && err.contains("not an identity"),
        "{err}"
    );
    assert_eq!(key_count(&b), 0);
    // Refused before the daemon was asked: nothing about it in b's audit log.
    assert!(
        !audit_actions(&b)
            .iter()
            .any(|r| r["action"] == json!("backup-restore"))
    );
    // The good file still restores.
    let f = b.dir().join("good.lbkb");
    std::fs::write(&f, &good).unwrap();
    let r = b.ctl_json(&[
        "backup",
        "restore",
        path_str(&f),
        "--identity",
        path_str(&id),
    ]);
    assert_eq!(r["restored"], json!(4), "{r}");
    assert_audit_ok(&b);
}

#[test]
fn a_key_id_with_other_material_refuses_the_whole_restore() {
    let a = node("host-a");
    let (k1, _, _, _) = populate(&a);
    let (id, recipient) = keygen(&a, "r.key");
    let file = a.dir().join("keys.lbkb");
    a.ctl_json(&[
        "backup",
        "export",
        "--recipient",
        &recipient,
        "-o",
        path_str(&file),
    ]);

    let b = node("host-b");
    // The same key id, other material.
    b.ctl_json(&["key", "create", "--key-id", &k1]);
    let before = b.key_bytes(&k1);
    let err = b.ctl_err(&[
        "backup",
        "restore",
        path_str(&file),
        "--identity",
        path_str(&id),
    ]);
    assert!(
        err.contains("nothing imported") && err.contains(&k1) && err.contains("different material"),
        "{err}"
    );
    assert_eq!(key_count(&b), 1, "nothing else was imported");
    assert_eq!(b.key_bytes(&k1), before);
    let refused = audit_actions(&b)
        .into_iter()
        .find(|r| r["action"] == json!("backup-restore"))
        .expect("the refusal is audited");
    assert_eq!(refused["outcome"], json!("refused"));
    assert_audit_ok(&b);

    // A destroyed tombstone refuses too (ids are never reused).
    let c = node("host-c");
    c.ctl_json(&["key", "create", "--key-id", &k1]);
    c.ctl_json(&["key", "destroy", &k1]);
    let err = c.ctl_err(&[
        "backup",
        "restore",
        path_str(&file),
        "--identity",
        path_str(&id),
    ]);
    assert!(err.contains("destroyed here"), "{err}");
    assert_eq!(key_count(&c), 0);
}

#[test]
fn export_refuses_bad_recipients_and_needs_one() {
    let a = node("host-a");
    a.create_key(&[]);
    let out = a.dir().join("x.lbkb");
    let err = a.ctl_err(&[
        "backup",
        "export",
        "--recipient",
        "lockbox-recipient1:AAAA",
        "-o",
        path_str(&out),
    ]);
    assert!(err.contains("bad recipient"), "{err}");
    let err = a.ctl_err(&[
        "backup",
        "export",
        "--recipient",
        "/nonexistent/r.pub",
        "-o",
        path_str(&out),
    ]);
    assert!(err.contains("neither"), "{err}");
    let out_plain = a.ctl(&["backup", "export", "-o", path_str(&out)]);
    assert!(!out_plain.status.success(), "--recipient is required");
    assert!(!out.exists(), "nothing written on a refusal");
}

/// A restore imports only what an authenticated backup holds, with the provenance its header
/// gives: keys sent by a client beside a made-up source node and file hash (what a restore
/// request once was) are refused, import nothing and are audited as refused.
#[test]
fn a_restore_without_a_backup_file_is_refused_and_imports_nothing() {
    let node = Node::keyfile();
    let forged_id = "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60";
    let request = lockbox_proto::v1::RestoreBackupRequest {
        materials: vec![vec![7; 32]],
        keys: vec![lockbox_proto::v1::RestoreKey {
            key_id: forged_id.into(),
            origin: Some(lockbox_proto::v1::Origin {
                kind: "received".into(),
                from_node: "host-evil".into(),
                ..Default::default()
            }),
            replica: true,
            current_version: 1,
            versions: vec![lockbox_proto::v1::RestoreKeyVersion {
                version: 1,
                state: "active".into(),
                created_unix_ms: 1,
                material: 0,
            }],
            ..Default::default()
        }],
        source_node: "host-evil".into(),
        created_unix_ms: 1,
        backup_sha256: "00".repeat(32),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = node.socket();
    let e = rt
        .block_on(async {
            let channel = lockbox_tests::unix_channel(&socket).await;
            lockbox_proto::v1::lockbox_client::LockboxClient::new(channel)
                .restore_backup(request)
                .await
        })
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.message()
            .contains("keys or provenance from the caller are refused"),
        "{e}"
    );
    assert_eq!(node.status()["key_count"], json!(0));
    let err = node.ctl_err(&["key", "describe", forged_id]);
    assert!(err.contains("unknown key"), "{err}");
}
