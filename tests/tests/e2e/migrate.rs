//! A data dir written by the sled-based store of earlier releases: the new lockboxd refuses it
//! with the way out, `lockbox-migrate` moves it, and every key, snapshot, tombstone and audit
//! record reads back. The old-format dir is made from a real lockboxd's records (the same
//! sealed bytes under the same keys), split between sled and an unchecked log segment as a
//! crash of the earlier daemon left them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use lockbox_store::Ns;
use lockbox_tests::{Node, binaries, json_str, run_with_timeout};

fn migrate(node: &Node) -> std::process::Output {
    let mut cmd = std::process::Command::new(&binaries().migrate);
    cmd.arg("--data-dir").arg(node.data_dir());
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

#[test]
fn a_sled_data_dir_is_refused_then_migrated_and_every_record_reads_back() {
    let mut node = Node::keyfile();
    let a = node.create_key(&["--label", "vol=a"]);
    let gone = node.create_key(&[]);
    let snap = json_str(&node.ctl_json(&["key", "snapshot", &a]), "key_id");
    node.ctl_json(&["key", "destroy", &gone]);
    let a_bytes = node.key_bytes(&a);
    let last = node.create_key(&[]);
    let last_bytes = node.key_bytes(&last);
    node.stop();

    // The records as they are, then the old layout: the last key's record and the newest
    // audit records only in the log (acknowledged, not yet checkpointed into sled), plus a
    // record the log puts and removes again.
    let mut records = BTreeMap::new();
    {
        let store = node.open_store();
        for ns in Ns::ALL {
            for r in store.iter_after(ns, None) {
                let (id, v) = r.unwrap();
                let mut k = vec![ns.prefix()];
                k.extend_from_slice(&id);
                records.insert(k, v);
            }
        }
    }
    let mut last_key = vec![Ns::Keys.prefix()];
    last_key.extend_from_slice(last.as_bytes());
    let newest_audit: Vec<Vec<u8>> = records
        .keys()
        .filter(|k| k[0] == Ns::Audit.prefix())
        .rev()
        .take(3)
        .cloned()
        .collect();
    let mut in_sled = records.clone();
    let mut log_batch = Vec::new();
    for k in newest_audit.iter().chain([&last_key]) {
        let v = in_sled.remove(k).unwrap();
        log_batch.push((k.clone(), Some(v)));
    }
    let junk = b"kzz-not-a-key".to_vec();
    let in_log = vec![
        vec![(junk.clone(), Some(b"x".to_vec()))],
        log_batch,
        vec![(junk, None)],
    ];
    std::fs::remove_dir_all(node.db_dir()).unwrap();
    lockbox_migrate::legacy::write(&node.db_dir(), &in_sled, &in_log).unwrap();

    // The new daemon does not guess: it names the tool.
    node.spawn();
    let status = node.try_wait_ready().unwrap_err();
    assert!(!status.success());
    assert!(
        node.log_contents().contains("lockbox-migrate"),
        "{}",
        node.log_contents()
    );

    let out = migrate(&node);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("migrated {} records", records.len())),
        "{said}"
    );
    assert!(node.data_dir().join("db.sled-old").join("conf").is_file());

    node.spawn_ready();
    assert_eq!(node.key_bytes(&a), a_bytes);
    assert_eq!(node.key_bytes(&snap), a_bytes);
    assert_eq!(node.key_bytes(&last), last_bytes);
    let d = node.describe(&gone);
    assert_eq!(d["state"], "destroyed", "{d}");
    let verify = node.ctl_json(&["audit", "verify"]);
    assert_eq!(verify["ok"], serde_json::json!(true), "{verify}");
    node.create_key(&[]);
    node.stop();

    // Running it again changes nothing.
    let again = migrate(&node);
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
}
