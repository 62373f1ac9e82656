//! A data dir restored whole from an older copy (keyring, watermark and store agreeing with
//! each other, as after a filesystem snapshot is rolled back) passes every check on the host;
//! the controller catches it, because each node reports its audit position when it is attested
//! (SECURITY.md, controller `positions.rs`). Restarts and crashes are not reported.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lockbox_tests::Node;
use lockbox_tests::cluster::Cluster;

/// How many times `node` was attested so far (its log says so each time).
fn attestations(node: &Node) -> usize {
    node.log_contents()
        .matches("attested by the controller")
        .count()
}

/// Waits until `node` has been attested more than `before` times.
fn wait_attested_after(node: &Node, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while attestations(node) <= before {
        assert!(
            Instant::now() < deadline,
            "not attested again: {}",
            node.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rollbacks(c: &mut Cluster) -> Vec<String> {
    c.controller.stop();
    let found = c
        .controller
        .audit_records()
        .into_iter()
        .filter(|(_, action, _, _)| action == "audit-rollback")
        .map(|(_, _, outcome, detail)| format!("{outcome}: {detail}"))
        .collect();
    c.controller.spawn();
    found
}

#[test]
fn a_data_dir_restored_from_an_older_copy_is_reported_by_the_controller() {
    let mut c = Cluster::start(&["host-a"], "");
    let old_key = c.node("host-a").create_key(&[]);
    let old_bytes = c.node("host-a").key_bytes(&old_key);
    c.node_mut("host-a").stop();
    let copy = tempfile::tempdir().unwrap();
    lockbox_tests::copy_dir(&c.node("host-a").data_dir(), copy.path());

    // A start, a clean restart and a crash are not rollbacks: each start reports a position
    // at least as far as the last one reported.
    let n = attestations(c.node("host-a"));
    c.node_mut("host-a").spawn_ready();
    wait_attested_after(c.node("host-a"), n);
    let a = c.node("host-a");
    a.ctl_json(&["key", "destroy", &old_key]);
    let kept = a.create_key(&[]);
    let n = attestations(c.node("host-a"));
    c.node_mut("host-a").kill9();
    c.node_mut("host-a").spawn_ready();
    wait_attested_after(c.node("host-a"), n);
    let n = attestations(c.node("host-a"));
    c.node_mut("host-a").restart();
    wait_attested_after(c.node("host-a"), n);
    assert!(c.node("host-a").key_bytes(&kept).len() == 32);
    assert_eq!(rollbacks(&mut c), Vec::<String>::new());

    // The old copy put back: every local check passes and the destroyed key is back, but the
    // controller records the rollback, once.
    c.node_mut("host-a").stop();
    let data = c.node("host-a").data_dir();
    std::fs::remove_dir_all(&data).unwrap();
    lockbox_tests::copy_dir(copy.path(), &data);
    let n = attestations(c.node("host-a"));
    c.node_mut("host-a").spawn_ready();
    wait_attested_after(c.node("host-a"), n);
    let a = c.node("host-a");
    assert_eq!(a.key_bytes(&old_key), old_bytes);
    assert!(
        c.controller.log().contains("audit rollback detected"),
        "{}",
        c.controller.log()
    );
    let found = rollbacks(&mut c);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("detected: node host-a reports audit checkpoint")
            && found[0].contains("restored from an older copy"),
        "{found:?}"
    );
    // From there the restored node goes on: its next start is no new rollback.
    let n = attestations(c.node("host-a"));
    c.node_mut("host-a").restart();
    wait_attested_after(c.node("host-a"), n);
    assert_eq!(rollbacks(&mut c).len(), 1);
}

/// The controller's side, driven by a client that reports positions of its choosing: a
/// position that cannot be read is refused by name; one behind, or on another chain at the
/// same number, is recorded when it first shows (also when the attestation itself is re-served
/// from the controller's recent ones), at most once a minute per node (a node reporting
/// rollbacks in a loop is counted, not recorded each time); the same position again is not.
#[test]
fn the_controller_compares_positions_strictly() {
    let mut c = Cluster::start(&["host-a", "host-b"], "");
    let url = c.controller.url.clone();
    let rogue = lockbox_tests::rogue::Rogue::new(c.lockbox_tls("host-a"), "host-a");
    for (seq, hash, why) in [
        (0, vec![7u8; 32], "hash without a sequence number"),
        (5, vec![], "must be 32 bytes, got 0"),
        (5, vec![7u8; 31], "must be 32 bytes, got 31"),
        (5, vec![7u8; 33], "must be 32 bytes, got 33"),
    ] {
        let e = rogue.attest_at(&url, seq, &hash).unwrap_err();
        assert_eq!(e.code, tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message.contains(why), "{e:?}");
    }
    // Another signing key than host-a's own: a new identity, taken as it comes.
    rogue.attest_at(&url, 10, &[1; 32]).unwrap();
    rogue.attest_at(&url, 12, &[2; 32]).unwrap();
    rogue.attest_at(&url, 12, &[2; 32]).unwrap();
    rogue.attest_at(&url, 11, &[3; 32]).unwrap();
    rogue.attest_at(&url, 11, &[3; 32]).unwrap();
    // Within the minute: counted and logged, not recorded.
    for seq in (1..=10).rev() {
        rogue.attest_at(&url, seq, &[5; 32]).unwrap();
    }
    // The same number on another chain, on another node.
    let b = lockbox_tests::rogue::Rogue::new(c.lockbox_tls("host-b"), "host-b");
    b.attest_at(&url, 7, &[3; 32]).unwrap();
    b.attest_at(&url, 7, &[4; 32]).unwrap();
    assert_eq!(
        c.controller.log().matches("counted, not recorded").count(),
        10,
        "{}",
        c.controller.log()
    );
    let found = rollbacks(&mut c);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("node host-a reports audit checkpoint 11 (0303")
            && found[0].contains("behind checkpoint 12"),
        "{found:?}"
    );
    assert!(
        found[1].contains("node host-b reports audit checkpoint 7 (0404")
            && found[1].contains("another chain than checkpoint 7 (0303"),
        "{found:?}"
    );
}
