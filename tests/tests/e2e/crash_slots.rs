//! Crash tests for the changes that span several files: the keyring (unseal slots, KEKs), the
//! store, the audit watermark and the assist key. A kill at each step (a failpoint:
//! `LOCKBOX_FAILPOINT` makes lockboxd `exit(86)` there, without flushing, as `kill -9` would)
//! must leave a node that starts, unseals with the old or the new slots, reads every
//! acknowledged key with its bytes, and whose audit log says what happened and verifies.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use lockbox_crypto::Keyring;
use lockbox_tests::{Node, NodeOptions, UnsealMethod, describe_output};
use serde_json::Value;

/// The exit code of a failpoint.
const FAILPOINT_EXIT: i32 = 86;
const PASSPHRASE: &str = "a passphrase for crash tests";

/// Sets (or clears) the node's failpoint for its next start and for `lockboxd init`.
fn set_failpoint(node: &mut Node, failpoint: Option<&str>) {
    let env = &mut node.opts_mut().env;
    env.retain(|(k, _)| k != "LOCKBOX_FAILPOINT");
    if let Some(f) = failpoint {
        env.push(("LOCKBOX_FAILPOINT".into(), f.into()));
    }
}

/// Runs `args`, which must make the daemon stop at `failpoint`, and reaps it.
fn crash_with(node: &mut Node, failpoint: &str, args: &[&str]) {
    let out = node.ctl(args);
    assert!(
        !out.status.success(),
        "{args:?} answered although the daemon should have died at {failpoint}:\n{}",
        describe_output(&out)
    );
    let st = node.wait_exit(Duration::from_secs(20));
    assert_eq!(
        st.code(),
        Some(FAILPOINT_EXIT),
        "not stopped at {failpoint} ({st}); log:\n{}",
        node.log_contents()
    );
}

/// Starts the daemon (without failpoint) and fails the test with the log if it does not come
/// up: a node that cannot restart after a crash is the finding.
fn restart_after_crash(node: &mut Node, after: &str) {
    set_failpoint(node, None);
    node.spawn();
    if let Err(st) = node.try_wait_ready() {
        panic!(
            "lockboxd does not start again after a crash at {after} ({st}); log:\n{}",
            node.log_contents()
        );
    }
}

fn audit_records(node: &Node) -> Vec<Value> {
    node.ctl_json(&["audit", "tail", "-n", "10000"])["records"]
        .as_array()
        .unwrap()
        .clone()
}

fn assert_audit_verifies(node: &Node, after: &str) {
    let v = node.ctl_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "audit verify after a crash at {after}: {v}");
}

/// The keyring fingerprint an audit record's detail names (`keyring <method> <hex>`).
fn keyring_named(detail: &str) -> Option<String> {
    let rest = &detail[detail.find("keyring ")? + "keyring ".len()..];
    let mut words = rest.split([' ', ',', ';']);
    let _method = words.next()?;
    words.next().map(str::to_owned)
}

fn kek_ids(node: &Node) -> Vec<u32> {
    Keyring::decode(&std::fs::read(node.keyring_path()).unwrap())
        .unwrap()
        .kek_ids()
}

/// A passphrase node holding one key, whose config now says `keyfile`: `unseal enroll` will
/// switch it. The failpoint is set for the daemon's next start.
fn passphrase_node_to_switch(failpoint: &str) -> (Node, String, Vec<u8>) {
    let mut node = Node::start(NodeOptions::passphrase(PASSPHRASE));
    node.unseal();
    let key = node.create_key(&[]);
    let bytes = node.key_bytes(&key);
    node.opts_mut().unseal = UnsealMethod::Keyfile;
    node.write_config();
    set_failpoint(&mut node, Some(failpoint));
    node.stop();
    node.spawn_ready();
    // The keyring still says passphrase: the node starts sealed.
    assert_eq!(node.status()["sealed"], true);
    node.unseal();
    (node, key, bytes)
}

/// `unseal enroll` killed before the keyring file is replaced: the node restarts with its old
/// slots, no record claims the enrollment took effect, the audit log verifies, and the same
/// enrollment then goes through (over what a kill inside the atomic write leaves behind).
#[test]
fn enroll_killed_before_the_keyring_is_replaced_keeps_the_old_slots() {
    let fp = "enroll-before-keyring";
    let (mut node, key, bytes) = passphrase_node_to_switch(fp);
    let before_keyring = std::fs::read(node.keyring_path()).unwrap();
    crash_with(&mut node, fp, &["unseal", "enroll"]);
    assert_eq!(std::fs::read(node.keyring_path()).unwrap(), before_keyring);

    restart_after_crash(&mut node, fp);
    let s = node.status();
    assert_eq!(s["sealed"], true, "{s}");
    assert_eq!(s["unseal"]["method"], "passphrase", "{s}");
    node.unseal();
    assert_eq!(node.key_bytes(&key), bytes);
    let records = audit_records(&node);
    let enrolls: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "unseal-enroll")
        .collect();
    assert!(
        enrolls.iter().all(|r| r["outcome"] != "ok"),
        "a record claims an enrollment that did not happen: {enrolls:?}"
    );
    // A record of the attempt names the keyring it was writing; the unseal after the crash
    // names the keyring it opened: another one.
    let unsealed_with = records
        .iter()
        .rev()
        .find(|r| r["action"] == "unseal" && r["outcome"] == "ok")
        .and_then(|r| keyring_named(r["detail"].as_str().unwrap()));
    for r in &enrolls {
        let named = keyring_named(r["detail"].as_str().unwrap());
        assert!(named.is_some(), "{r}");
        assert_ne!(named, unsealed_with, "{r}");
    }
    assert_audit_verifies(&node, fp);

    // What a kill inside the atomic replace would leave; the retry goes through.
    std::fs::write(node.data_dir().join(".keyring.tmp"), b"half a keyr").unwrap();
    let s = node.ctl_json(&["unseal", "enroll"]);
    assert_eq!(s["unseal"]["method"], "keyfile", "{s}");
    node.restart();
    assert_eq!(node.status()["sealed"], false);
    assert_eq!(node.key_bytes(&key), bytes);
    assert_audit_verifies(&node, fp);
}

/// `unseal enroll` killed after the keyring file was replaced but before the enrollment's
/// audit record was written: the node restarts with the new slots (the key file unseals it),
/// and the audit log still shows the enrollment, naming the keyring the node then opened.
#[test]
fn enroll_killed_after_the_keyring_is_replaced_is_audited() {
    let fp = "enroll-after-keyring";
    let (mut node, key, bytes) = passphrase_node_to_switch(fp);
    crash_with(&mut node, fp, &["unseal", "enroll"]);

    restart_after_crash(&mut node, fp);
    let s = node.status();
    assert_eq!(
        s["sealed"], false,
        "the new key file slot did not unseal: {s}"
    );
    assert_eq!(s["unseal"]["method"], "keyfile", "{s}");
    assert_eq!(node.key_bytes(&key), bytes);
    let records = audit_records(&node);
    let enroll = records
        .iter()
        .rev()
        .find(|r| r["action"] == "unseal-enroll")
        .unwrap_or_else(|| {
            panic!(
                "the node unseals by a method no audit record says was enrolled: {}",
                Value::from(records.clone())
            )
        });
    let unsealed_with = records
        .iter()
        .rev()
        .find(|r| r["action"] == "unseal" && r["outcome"] == "ok")
        .and_then(|r| keyring_named(r["detail"].as_str().unwrap()));
    assert!(unsealed_with.is_some(), "{records:?}");
    assert_eq!(
        keyring_named(enroll["detail"].as_str().unwrap()),
        unsealed_with,
        "the enrollment's record and the unseal after the crash name different keyrings"
    );
    assert_audit_verifies(&node, fp);
}

/// A KEK rotation killed at each of its steps (new KEK in the keyring; re-sealed records
/// durable; old KEK dropped): the node restarts, the rotation is finished (one KEK, the new
/// one), every acknowledged key reads back with its bytes, a destroyed key stays unreadable,
/// and the audit log verifies.
#[test]
fn kek_rotation_killed_at_each_step_restarts_with_every_key() {
    let mut node = Node::keyfile();
    let a = node.create_key(&[]);
    let b = node.create_key(&["--length", "64"]);
    let snap = node.ctl_json(&["key", "snapshot", &a]);
    let snap = snap["key_id"].as_str().unwrap().to_owned();
    let gone = node.create_key(&[]);
    node.ctl_json(&["key", "destroy", &gone]);
    let keys: Vec<(String, Vec<u8>)> = [&a, &b, &snap]
        .into_iter()
        .map(|k| (k.clone(), node.key_bytes(k)))
        .collect();
    for fp in [
        "rotate-after-add-kek",
        "rotate-before-drop",
        "rotate-after-drop",
    ] {
        let kek = node.status()["kek_id"].as_u64().unwrap();
        set_failpoint(&mut node, Some(fp));
        node.restart();
        crash_with(&mut node, fp, &["kek", "rotate"]);
        restart_after_crash(&mut node, fp);
        assert_eq!(node.status()["kek_id"].as_u64(), Some(kek + 1), "{fp}");
        assert_eq!(kek_ids(&node), [u32::try_from(kek + 1).unwrap()], "{fp}");
        for (k, bytes) in &keys {
            assert_eq!(&node.key_bytes(k), bytes, "{fp}: key {k}");
        }
        node.ctl_err(&["key", "get", &gone]);
        assert_audit_verifies(&node, fp);
    }
    node.create_key(&[]);
}

/// A KEK rotation of more records than one re-seal batch, killed after the first batch is
/// durable (records under both KEKs): the next start finishes it with every key intact.
#[test]
fn kek_rotation_killed_between_reseal_batches_restarts_with_every_key() {
    let fp = "rotate-after-reseal-batch";
    let mut node = Node::keyfile();
    let ids = node.create_keys_bulk(2100);
    let mut sample: Vec<&String> = ids.iter().step_by(150).collect();
    sample.push(ids.last().unwrap());
    let keys: Vec<(String, Vec<u8>)> = sample
        .into_iter()
        .map(|k| (k.clone(), node.key_bytes(k)))
        .collect();
    set_failpoint(&mut node, Some(fp));
    node.restart();
    crash_with(&mut node, fp, &["kek", "rotate"]);
    restart_after_crash(&mut node, fp);
    assert_eq!(node.status()["kek_id"], 2);
    assert_eq!(node.status()["key_count"], 2100);
    assert_eq!(kek_ids(&node), [2]);
    for (k, bytes) in &keys {
        assert_eq!(&node.key_bytes(k), bytes, "key {k}");
    }
    assert_audit_verifies(&node, fp);
}

/// The audit watermark a checkpoint wrote under the old KEK, landing after a KEK rotation
/// dropped that KEK: a checkpoint's writer (the 1000th record, a seal) releases the writer lock
/// before its batch is durable and writes the watermark after, so a rotation can checkpoint,
/// write its own watermark and drop the old KEK in between (both woken by one sync). A kill
/// before the next checkpoint rewrites it must not leave a node that never starts again:
/// nothing was rolled back. The test puts the older watermark file in place as that late
/// write does (no failpoint can order two tasks woken by one sync).
#[test]
fn a_watermark_sealed_under_a_retired_kek_does_not_stop_the_restart() {
    let mut node = Node::keyfile();
    let key = node.create_key(&[]);
    let bytes = node.key_bytes(&key);
    node.ctl_json(&["seal"]); // a checkpoint: the watermark, under KEK 1
    node.ctl_json(&["unseal"]);
    let watermark = node.data_dir().join("audit-watermark");
    let late = std::fs::read(&watermark).unwrap();
    assert_eq!(lockbox_crypto::sealed_kek_id(&late).unwrap(), 1);
    let r = node.ctl_json(&["kek", "rotate"]);
    assert_eq!(r["new_kek_id"], 2, "{r}");
    std::fs::write(&watermark, &late).unwrap();
    node.kill9();

    restart_after_crash(&mut node, "a late watermark write");
    assert!(
        node.log_contents().contains("a finished rotation retired"),
        "the start does not say why it did not check the watermark"
    );
    assert_eq!(node.status()["sealed"], false);
    assert_eq!(node.key_bytes(&key), bytes);
    // The start wrote a current watermark, so the rollback check is back in force.
    let now = std::fs::read(&watermark).unwrap();
    assert_eq!(lockbox_crypto::sealed_kek_id(&now).unwrap(), 2);
    assert_audit_verifies(&node, "a late watermark write");
    node.restart();
    assert_eq!(node.key_bytes(&key), bytes);
}

/// `lockboxd init` killed at each step: it never says it initialized; what it left either lets
/// `init` run again, or makes both `init` and a start say what to do (remove the unfinished
/// store), after which `init` works and the node serves.
#[test]
fn init_killed_midway_says_what_to_do_and_can_be_run_again() {
    for fp in ["init-after-assist", "keyfile-created", "init-after-store"] {
        let mut node = Node::new_uninit(NodeOptions::default());
        set_failpoint(&mut node, Some(fp));
        let out = node.init_output();
        assert_eq!(
            out.status.code(),
            Some(FAILPOINT_EXIT),
            "{fp}: {}",
            describe_output(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("initialized"),
            "{fp}: {}",
            describe_output(&out)
        );
        assert!(!node.keyring_path().exists(), "{fp}");
        set_failpoint(&mut node, None);
        if node.db_dir().exists() {
            node.spawn();
            let st = node.wait_exit(Duration::from_secs(20));
            assert!(!st.success(), "{fp}: started on a half-made data dir");
            let log = node.log_contents();
            assert!(log.contains("an init that did not finish"), "{fp}: {log}");
            let again = node.init_output();
            assert!(!again.status.success(), "{fp}");
            let err = String::from_utf8_lossy(&again.stderr);
            assert!(
                err.contains("an init that did not finish") && err.contains("remove"),
                "{fp}: {err}"
            );
            std::fs::remove_dir_all(node.db_dir()).unwrap();
        }
        let out = node.init_output();
        assert!(
            out.status.success(),
            "{fp}: init does not run again after a kill:\n{}",
            describe_output(&out)
        );
        node.spawn_ready();
        let k = node.create_key(&[]);
        assert_eq!(node.key_bytes(&k).len(), 32, "{fp}");
        node.restart();
        assert_eq!(node.key_bytes(&k).len(), 32, "{fp}");
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The assist key made at the first start of a data dir without one, killed mid-write: what
/// the atomic write leaves (a partial temporary file, no key) does not stop the next start,
/// which makes the key (0600); a leftover temporary file beside a key changes nothing.
#[test]
fn an_assist_key_write_killed_midway_does_not_stop_the_start() {
    let mut node = Node::keyfile();
    let key = node.create_key(&[]);
    let assist = node.data_dir().join("assist.key");
    let tmp = node.data_dir().join(".assist.key.tmp");
    node.kill9();
    std::fs::remove_file(&assist).unwrap();
    std::fs::write(&tmp, b"\x01\x02half").unwrap();
    node.spawn_ready();
    assert_eq!(mode(&assist), 0o600);
    let first = node.status()["assist_public_key"].clone();
    assert!(first.as_str().is_some_and(|k| k.len() == 64), "{first}");
    node.kill9();
    std::fs::write(&tmp, b"\x01\x02half").unwrap();
    node.spawn_ready();
    assert_eq!(node.status()["assist_public_key"], first);
    assert_eq!(node.key_bytes(&key).len(), 32);
}
