//! Durability under injected faults (issue 19): nothing is acknowledged before it is durable,
//! a failed sync is never acknowledged nor seen, and the daemon stops for a restart instead of
//! running half-alive. The faults are injected into real daemons with `LOCKBOX_STORE_FAULT`
//! (lockbox-store's test hook: a delay before each journal sync, or a sync that fails as an
//! `fdatasync` returning EIO does).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lockbox_tests::{Node, NodeOptions};

const KEY_ID: &str = "7d1c2a8e-5b3f-4c6d-9e0a-1b2c3d4e5f60";

fn node_with_fault(fault: &str) -> Node {
    Node::start(NodeOptions {
        env: vec![("LOCKBOX_STORE_FAULT".into(), fault.into())],
        ..NodeOptions::default()
    })
}

fn restart_without_faults(node: &mut Node) {
    node.opts_mut().env.clear();
    node.spawn_ready();
}

/// A hedging client sends the same create twice. The second call finds the key the first one
/// applied and answers "already there": that answer must wait until the key is durable, or a
/// crash right after it loses a key the client was told exists.
#[test]
fn a_repeated_create_is_answered_only_once_the_key_is_durable() {
    let mut node = node_with_fault("sync-delay-ms:1500");
    let first = {
        let socket = node.socket();
        std::thread::spawn(move || {
            let mut cmd = std::process::Command::new(&lockbox_tests::binaries().lockboxctl);
            cmd.arg("--socket")
                .arg(socket)
                .args(["key", "create", "--key-id", KEY_ID]);
            lockbox_tests::run_with_timeout(&mut cmd, Duration::from_secs(30))
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    let second = node.ctl(&["key", "create", "--key-id", KEY_ID]);
    let waited = started.elapsed();
    assert!(second.status.success(), "{second:?}");
    // Acknowledged: a crash now must not lose the key.
    node.kill9();
    let _ = first.join();
    restart_without_faults(&mut node);
    let got = node.ctl(&["key", "get", KEY_ID, "--format", "hex"]);
    assert!(
        got.status.success(),
        "the key acknowledged after {waited:?} is gone after kill -9: {}",
        String::from_utf8_lossy(&got.stderr)
    );
}

/// A sync fails: the write it covered is not acknowledged and nobody reads it; the daemon
/// reports the failure and stops with EX_TEMPFAIL (75) for systemd to restart it. After the
/// restart everything acknowledged is there. The failed write may or may not have reached the
/// disk (as after a real EIO): retrying the same create is safe either way.
#[test]
fn a_failed_sync_is_never_acknowledged_and_the_daemon_stops_for_a_restart() {
    let flag = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let flag_path = flag.to_path_buf();
    std::fs::remove_file(&flag_path).unwrap();
    let mut node = node_with_fault(&format!("sync-error-when:{}", flag_path.display()));
    let kept = node.create_key(&[]);
    std::fs::write(&flag_path, b"fail").unwrap();
    let out = node.ctl(&["key", "create", "--key-id", KEY_ID]);
    assert!(
        !out.status.success(),
        "a create whose sync failed was acknowledged"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store failed"), "{err}");
    // Until it stops, the daemon serves nothing from the failed store, not even a read of
    // the key whose sync failed.
    let read = node.ctl(&["key", "get", KEY_ID, "--format", "hex"]);
    assert!(!read.status.success(), "{read:?}");
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(75), "{}", node.log_contents());
    assert!(node.log_contents().contains("the store failed"));
    std::fs::remove_file(&flag_path).unwrap();

    restart_without_faults(&mut node);
    node.key_bytes(&kept);
    // The retry succeeds (created now, or found whole if the failed write reached the disk),
    // and the key is usable; the node works normally.
    let again = node.ctl_json(&["key", "create", "--key-id", KEY_ID]);
    assert!(again["created"].is_boolean(), "{again}");
    node.key_bytes(KEY_ID);
    node.create_key(&[]);
    node.stop();
}
