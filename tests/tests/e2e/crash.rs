//! Invariant 6: an acknowledged write survives `kill -9`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use lockbox_tests::Node;
use serde_json::json;

fn check_all(node: &Node, keys: &[(String, Option<Vec<u8>>)]) {
    let mut missing = Vec::new();
    for (id, bytes) in keys {
        let out = node.ctl(&["key", "get", id, "--format", "hex"]);
        if !out.status.success() {
            missing.push(format!(
                "{id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = hex::decode(v["key"].as_str().unwrap()).unwrap();
        if let Some(b) = bytes {
            assert_eq!(&got, b, "key {id} came back with different bytes");
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged keys lost after kill -9, e.g.:\n{}",
        missing.len(),
        keys.len(),
        missing
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn acknowledged_keys_survive_sigkill() {
    const N: usize = 200;
    let mut node = Node::keyfile();
    let mut keys = Vec::with_capacity(N);
    for i in 0..N {
        let label = format!("n={i}");
        let id = node.create_key(&["--label", &label]);
        let bytes = node.key_bytes(&id);
        keys.push((id, Some(bytes)));
    }
    node.kill9();
    node.spawn_ready();
    check_all(&node, &keys);
    assert_eq!(node.status()["key_count"], json!(N));
    // And the survivors work normally afterwards.
    let id = node.create_key(&[]);
    node.key_bytes(&id);
}

#[test]
fn concurrent_acknowledged_keys_survive_sigkill() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 50;
    let mut node = Node::keyfile();
    let shared = Arc::new(node.socket());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let socket = shared.clone();
            std::thread::spawn(move || {
                let ctl = &lockbox_tests::binaries().lockboxctl;
                let run = |args: &[&str]| {
                    let mut cmd = std::process::Command::new(ctl);
                    cmd.arg("--socket").arg(&*socket).arg("--json").args(args);
                    let out = lockbox_tests::run_with_timeout(&mut cmd, lockbox_tests::CTL_TIMEOUT);
                    assert!(
                        out.status.success(),
                        "{args:?}: {}",
                        lockbox_tests::describe_output(&out)
                    );
                    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
                };
                let mut keys = Vec::with_capacity(PER_THREAD);
                for i in 0..PER_THREAD {
                    let label = format!("t{t}={i}");
                    let v = run(&["key", "create", "--label", &label]);
                    let id = v["key_id"].as_str().unwrap().to_owned();
                    // The last create of each thread is not followed by a read: the kill comes
                    // right after its acknowledgement.
                    let bytes = if i + 1 < PER_THREAD {
                        let g = run(&["key", "get", &id, "--format", "hex"]);
                        Some(hex::decode(g["key"].as_str().unwrap()).unwrap())
                    } else {
                        None
                    };
                    keys.push((id, bytes));
                }
                keys
            })
        })
        .collect();
    let mut keys = Vec::new();
    for h in handles {
        keys.extend(h.join().unwrap());
    }
    node.kill9();
    assert_eq!(keys.len(), THREADS * PER_THREAD);
    node.spawn_ready();
    check_all(&node, &keys);
    assert_eq!(node.status()["key_count"], json!(THREADS * PER_THREAD));
}

#[test]
fn destroy_and_rotation_survive_sigkill() {
    let mut node = Node::keyfile();
    let keep = node.create_key(&[]);
    let keep_bytes = node.key_bytes(&keep);
    let gone = node.create_key(&[]);
    node.ctl_json(&["key", "destroy", &gone]);
    let r = node.ctl_json(&["kek", "rotate"]);
    node.kill9();
    node.spawn_ready();
    assert_eq!(node.status()["kek_id"], r["new_kek_id"]);
    assert_eq!(node.describe(&gone)["state"], json!("destroyed"));
    node.ctl_err(&["key", "get", &gone]);
    assert_eq!(node.key_bytes(&keep), keep_bytes);
}
