//! Invariant 9: the audit log is hash-chained; `audit verify` detects edited, dropped and
//! reordered records.
#![allow(clippy::unwrap_used)]

use lockbox_store::{Batch, Ns, Store};
use lockbox_tests::{Node, audit_record_seq, describe_output, flip_middle_byte, json_str};
use serde_json::json;

/// A node with a dozen audit records of various kinds.
fn busy_node() -> Node {
    let node = Node::keyfile();
    let a = node.create_key(&["--label", "vol=a"]);
    let b = node.create_key(&["--length", "64"]);
    node.key_bytes(&a);
    node.ctl_json(&["key", "snapshot", &a]);
    node.ctl_json(&["key", "clone", &b, "--mode", "new-key"]);
    node.ctl_json(&["key", "rekey", &b]);
    node.ctl_json(&["key", "rekey", &b, "--commit"]);
    node.ctl_json(&["kek", "rotate"]);
    node.ctl_json(&["seal"]);
    node.ctl_json(&["unseal"]);
    node.ctl_json(&["key", "destroy", &a, "--cascade"]);
    for _ in 0..3 {
        node.create_key(&[]);
    }
    node
}

fn assert_verifies(node: &Node) -> serde_json::Value {
    let v = node.ctl_json(&["audit", "verify"]);
    assert_eq!(v["ok"], json!(true), "{v}");
    assert!(v["checkpoints"].is_u64(), "{v}");
    v
}

fn audit_entries(store: &Store) -> Vec<(u64, Vec<u8>)> {
    store
        .iter_after(Ns::Audit, None)
        .map(|r| {
            let (k, v) = r.unwrap();
            (u64::from_be_bytes(k.as_slice().try_into().unwrap()), v)
        })
        .collect()
}

/// Stops the node, lets `tamper` change its audit records, restarts it, and returns the
/// `audit record N` that `audit verify` names (after checking it fails properly).
fn tamper_and_verify(tamper: impl FnOnce(&Store, &[(u64, Vec<u8>)])) -> (Node, u64, String) {
    let mut node = busy_node();
    let v = assert_verifies(&node);
    assert!(v["records"].as_u64().unwrap() >= 10, "{v}");
    node.stop();
    {
        let store = node.open_store();
        let entries = audit_entries(&store);
        assert!(entries.len() >= 10, "{} audit records", entries.len());
        let seqs: Vec<u64> = entries.iter().map(|e| e.0).collect();
        let expect: Vec<u64> = (1..=entries.len() as u64).collect();
        assert_eq!(seqs, expect, "audit ids are 1.. big-endian u64");
        tamper(&store, &entries);
        store.flush_blocking().unwrap();
    }
    node.spawn_ready();
    let out = node.ctl(&["audit", "verify"]);
    assert!(
        !out.status.success(),
        "audit verify must fail on a tampered log:\n{}",
        describe_output(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let seq = audit_record_seq(&stderr).unwrap_or_else(|| {
        panic!("stderr must name the bad record (\"audit record N\"): {stderr}")
    });
    // The JSON body, if printed, agrees.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        assert_eq!(v["ok"], json!(false), "{v}");
        assert_eq!(v["bad_seq"].as_u64(), Some(seq), "{v}");
        assert!(!json_str(&v, "error").is_empty(), "{v}");
    }
    (node, seq, stderr)
}

const TARGET: u64 = 4;

#[test]
fn audit_verify_ok_on_a_fresh_busy_node() {
    let fresh = Node::keyfile();
    let v = assert_verifies(&fresh);
    assert!(
        v["records"].as_u64().unwrap() >= 1,
        "init is audited (invariant 9): {v}"
    );

    let mut node = busy_node();
    let v = assert_verifies(&node);
    let records = v["records"].as_u64().unwrap();
    assert_eq!(
        Some(records),
        node.status()["audit_records"].as_u64(),
        "verify walks every record"
    );
    // Survives restart and kill -9, and keeps appending.
    node.restart();
    assert_verifies(&node);
    node.create_key(&[]);
    node.kill9();
    node.spawn_ready();
    let v = assert_verifies(&node);
    assert!(v["records"].as_u64().unwrap() > records, "{v}");
}

#[test]
fn audit_verify_detects_an_edited_record() {
    let (_node, seq, stderr) = tamper_and_verify(|store, entries| {
        let (s, v) = &entries[(TARGET - 1) as usize];
        assert_eq!(*s, TARGET);
        let mut b = Batch::new();
        b.put(Ns::Audit, &TARGET.to_be_bytes(), &flip_middle_byte(v));
        store.apply(b).unwrap();
    });
    assert_eq!(
        seq, TARGET,
        "the edited record is the first bad one: {stderr}"
    );
}

#[test]
fn audit_verify_detects_a_deleted_record() {
    let (_node, seq, stderr) = tamper_and_verify(|store, entries| {
        assert!(entries.len() as u64 > TARGET + 1);
        let mut b = Batch::new();
        b.remove(Ns::Audit, &TARGET.to_be_bytes());
        store.apply(b).unwrap();
    });
    assert!(
        seq == TARGET || seq == TARGET + 1,
        "verify names record {seq}, expected {TARGET} (missing) or {} (gap): {stderr}",
        TARGET + 1
    );
}

#[test]
fn audit_verify_detects_reordered_records() {
    let (_node, seq, stderr) = tamper_and_verify(|store, entries| {
        let (_, a) = &entries[(TARGET - 1) as usize];
        let (_, b) = &entries[TARGET as usize];
        assert_ne!(a, b);
        let mut batch = Batch::new();
        batch.put(Ns::Audit, &TARGET.to_be_bytes(), b);
        batch.put(Ns::Audit, &(TARGET + 1).to_be_bytes(), a);
        store.apply(batch).unwrap();
    });
    assert_eq!(
        seq, TARGET,
        "the first swapped record is the first bad one: {stderr}"
    );
}

#[test]
fn audit_verify_detects_a_value_forged_from_another_record() {
    // Replace a record by a copy of an earlier one (a replay): same bytes, wrong place.
    let (_node, seq, stderr) = tamper_and_verify(|store, entries| {
        let (_, earlier) = &entries[1];
        let mut batch = Batch::new();
        batch.put(Ns::Audit, &(TARGET + 2).to_be_bytes(), earlier);
        store.apply(batch).unwrap();
    });
    assert_eq!(seq, TARGET + 2, "{stderr}");
}

/// A refused request is audited with a short, escaped prefix of what it refused, never the
/// whole input: one 100 KB label name once went into the log whole (a 20 MB one added 274 MB
/// on disk and broke `audit tail`).
#[test]
fn refusals_quote_a_short_prefix_and_every_record_is_capped() {
    let node = Node::keyfile();
    let huge = "x".repeat(100_000);
    let label = format!("{huge}=v");
    let err = node.ctl_err(&["key", "create", "--label", &label]);
    assert!(err.contains("label name"), "{}", &err[..err.len().min(300)]);
    assert!(
        err.len() < 1024,
        "the error quotes a prefix: {} bytes",
        err.len()
    );
    let bad_id = format!("{huge}\u{1b}[31m");
    let err = node.ctl_err(&["key", "describe", &bad_id]);
    assert!(
        err.contains("is not a UUID"),
        "{}",
        &err[..err.len().min(300)]
    );
    assert!(err.len() < 1024, "{} bytes", err.len());
    assert!(!err.contains('\u{1b}'), "escaped: {err:?}");
    node.ctl_err(&["key", "destroy", &bad_id]);

    let tail = node.ctl_json(&["audit", "tail", "-n", "5"]);
    let records = tail["records"].as_array().unwrap();
    let refused: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["outcome"] == "refused")
        .collect();
    assert_eq!(refused.len(), 2, "{tail}");
    for r in refused {
        let size = r.to_string().len();
        assert!(size < 2048, "an audit record of {size} bytes: {r}");
        assert!(!r["detail"].as_str().unwrap().contains('\u{1b}'), "{r}");
    }
    assert_verifies(&node);
}

/// A store rolled back to an older copy (its records and its sealed head consistent with each
/// other) while the data dir kept its audit watermark: the node refuses to unseal, naming the
/// watermark, instead of serving the older state (an acknowledged key gone and `audit verify`
/// content with it). Put back, the store serves again. (A destroy in between would have
/// rotated the KEK, and the old copy would not open at all.)
#[test]
fn a_store_rolled_back_behind_its_audit_watermark_refuses_to_unseal() {
    let mut node = Node::keyfile();
    let kept = node.create_key(&[]);
    node.stop();
    let old = tempfile::tempdir().unwrap();
    lockbox_tests::copy_dir(&node.data_dir().join("db"), old.path());

    node.spawn_ready();
    node.ctl_json(&["key", "rekey", &kept]);
    let acknowledged = node.create_key(&[]);
    node.stop(); // a clean stop checkpoints and writes the watermark
    assert!(node.data_dir().join("audit-watermark").is_file());
    let current = tempfile::tempdir().unwrap();
    lockbox_tests::copy_dir(&node.data_dir().join("db"), current.path());

    std::fs::remove_dir_all(node.data_dir().join("db")).unwrap();
    lockbox_tests::copy_dir(old.path(), &node.data_dir().join("db"));
    node.spawn();
    let status = node.wait_exit(std::time::Duration::from_secs(30));
    assert!(!status.success(), "lockboxd served a rolled-back store");
    let log = node.log_contents();
    assert!(log.contains("refusing to unseal"), "{log}");
    assert!(log.contains("audit-watermark"), "{log}");

    std::fs::remove_dir_all(node.data_dir().join("db")).unwrap();
    lockbox_tests::copy_dir(current.path(), &node.data_dir().join("db"));
    node.spawn_ready();
    assert_eq!(node.describe(&kept)["state"], "rekeying");
    node.key_bytes(&acknowledged);
    assert_verifies(&node);
}
