//! Crash tests for MOVE transfers (DESIGN.md §2.6, §7): a destination that dies mid-stream
//! stores nothing and the source keeps everything; a source that dies after the destination's
//! receipt but before its tombstones completes the grant exactly once on retry. At every step
//! each key is on at least one host, with its original bytes.
//!
//! The crashes are exact, not raced: `LOCKBOX_FAILPOINT` makes the daemon `exit(86)` at the
//! named step, without flushing, as a `kill -9` there would.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use lockbox_tests::Node;
use lockbox_tests::cluster::Cluster;

/// The exit code of a failpoint.
const FAILPOINT_EXIT: i32 = 86;

/// Creates `n` keys with a few concurrent CLI callers (one at a time takes ~10 ms each in a
/// debug build); returns all their ids.
fn create_keys(node: &Node, n: usize) -> Vec<String> {
    const THREADS: usize = 4;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let count = n / THREADS + usize::from(t < n % THREADS);
                s.spawn(move || (0..count).map(|_| node.create_key(&[])).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// A spread of keys (first, every 97th, last) with their bytes as `holder` returns them.
fn sample(holder: &Node, keys: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut ids: Vec<&String> = keys.iter().step_by(97).collect();
    ids.push(keys.last().unwrap());
    ids.dedup();
    ids.into_iter()
        .map(|k| (k.clone(), holder.key_bytes(k)))
        .collect()
}

/// Key ids `node` lists (active keys only: tombstones are left out).
fn listed(node: &Node) -> BTreeSet<String> {
    node.ctl_json(&["key", "list"])["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_string())
        .collect()
}

/// Invariant 6: every key is active on at least one of the two hosts.
fn assert_no_key_on_zero_hosts(a: &Node, b: &Node, keys: &[String]) {
    let held: BTreeSet<String> = listed(a).union(&listed(b)).cloned().collect();
    let lost: Vec<&String> = keys.iter().filter(|k| !held.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} keys are on no host, e.g. {:?}",
        lost.len(),
        keys.len(),
        &lost[..lost.len().min(3)]
    );
}

fn transfer_err(node: &Node, grant: &Path) -> String {
    node.ctl_err(&["transfer", grant.to_str().unwrap()])
}

fn transfer(node: &Node, grant: &Path) -> serde_json::Value {
    node.ctl_json(&["transfer", grant.to_str().unwrap()])
}

fn assert_audit_ok(node: &Node) {
    let v = node.ctl_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

/// Waits for a daemon to hit its failpoint, and checks it exited there and nowhere else.
fn assert_died_at_failpoint(c: &mut Cluster, name: &str, failpoint: &str) {
    let node = c.node_mut(name);
    let st = node.wait_exit(Duration::from_secs(20));
    assert_eq!(
        st.code(),
        Some(FAILPOINT_EXIT),
        "{name} exited with {st}, not at a failpoint; log:\n{}",
        node.log_contents()
    );
    assert!(
        node.log_contents()
            .contains(&format!("failpoint {failpoint}: exiting now")),
        "{name} did not log the failpoint; log:\n{}",
        node.log_contents()
    );
}

/// Records of `node`'s audit log with this action and outcome whose detail names the grant.
fn audit_count(node: &Node, action: &str, outcome: &str, grant_hex: &str) -> usize {
    let tail = node.ctl_json(&["audit", "tail", "-n", "10000"]);
    tail["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["action"] == action
                && r["outcome"] == outcome
                && r["detail"].as_str().unwrap_or("").contains(grant_hex)
        })
        .count()
}

#[test]
fn a_destination_killed_mid_stream_stores_nothing_and_the_retry_moves_everything() {
    const N: usize = 1500; // two batches of at most 1000: the failpoint fires on the second
    let mut c = Cluster::start(&["host-a", "host-b"], "");
    c.restart_with_failpoint("host-b", Some("dest-mid-stream"));

    let keys = create_keys(c.node("host-a"), N);
    assert_eq!(c.node("host-a").status()["key_count"], N);
    let before = sample(c.node("host-a"), &keys);
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let g = c.grant(&refs, "host-a", "host-b", "move", "10m");
    let grant_hex = Cluster::grant_id_hex(&g);

    // The destination dies on batch #1; the source reports the failure.
    let err = transfer_err(c.node("host-a"), &g);
    assert!(
        err.contains("host-b"),
        "the error should name the peer: {err}"
    );
    assert_died_at_failpoint(&mut c, "host-b", "dest-mid-stream");

    // The source is unchanged: every key active, same bytes, nothing tombstoned.
    let a = c.node("host-a");
    assert_eq!(a.status()["key_count"], N);
    assert_eq!(listed(a).len(), N);
    for (k, bytes) in &before {
        assert_eq!(a.describe(k)["state"], "active", "{k}");
        assert_eq!(&a.key_bytes(k), bytes, "{k}");
    }
    assert_audit_ok(a);

    // Back up (without the failpoint), the destination holds none of the keys: the first
    // batch it had opened was never stored on its own.
    c.restart_with_failpoint("host-b", None);
    let b = c.node("host-b");
    assert_eq!(b.status()["key_count"], 0);
    assert!(listed(b).is_empty());
    for (k, _) in before.iter().take(3) {
        let e = b.ctl_err(&["key", "describe", k]);
        assert!(e.contains("unknown key"), "{e}");
    }
    assert_no_key_on_zero_hosts(c.node("host-a"), b, &keys);

    // The same grant again: nothing consumed it, so it now moves everything.
    let r = transfer(c.node("host-a"), &g);
    assert_eq!(r["fresh"], true, "{r}");
    assert_eq!(r["grant_id"], grant_hex.as_str());
    assert_eq!(r["key_ids"].as_array().unwrap().len(), N);
    let (a, b) = (c.node("host-a"), c.node("host-b"));
    assert_eq!(b.status()["key_count"], N);
    assert_eq!(a.status()["key_count"], 0);
    for (k, bytes) in &before {
        assert_eq!(&b.key_bytes(k), bytes, "{k} arrived with other bytes");
        let t = a.describe(k);
        assert_eq!(t["state"], "moved", "{t}");
        assert_eq!(t["moved_to_node"], "host-b", "{t}");
        assert_eq!(t["moved_by_grant"], grant_hex.as_str(), "{t}");
    }
    assert_no_key_on_zero_hosts(a, b, &keys);
    assert_eq!(listed(b), keys.iter().cloned().collect::<BTreeSet<_>>());

    // Each end recorded the grant's success exactly once, and both chains verify.
    assert_eq!(audit_count(b, "transfer-receive", "ok", &grant_hex), 1);
    assert_eq!(audit_count(a, "transfer-send", "ok", &grant_hex), 1);
    assert_audit_ok(a);
    assert_audit_ok(b);
}

/// Source crash after a verified receipt, before completion: run with `n` keys.
fn source_killed_after_the_receipt(n: usize) {
    let mut c = Cluster::start(&["host-a", "host-b"], "");
    c.restart_with_failpoint("host-a", Some("source-after-receipt"));

    let keys = create_keys(c.node("host-a"), n);
    // Every key's bytes for a few keys, a spread of them for many (the counts and key lists
    // cover the rest).
    let all_bytes = if n <= 10 {
        keys.iter()
            .map(|k| (k.clone(), c.node("host-a").key_bytes(k)))
            .collect()
    } else {
        sample(c.node("host-a"), &keys)
    };
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let g = c.grant(&refs, "host-a", "host-b", "move", "10m");
    let grant_hex = Cluster::grant_id_hex(&g);

    // The source dies right after it verified the receipt: the call fails.
    let err = transfer_err(c.node("host-a"), &g);
    assert!(!err.is_empty());
    assert_died_at_failpoint(&mut c, "host-a", "source-after-receipt");

    // The receipt was durable: the destination holds every key, with the right bytes.
    let b = c.node("host-b");
    assert_eq!(b.status()["key_count"], n);
    for (k, bytes) in &all_bytes {
        assert_eq!(&b.key_bytes(k), bytes, "{k}");
        let d = b.describe(k);
        assert_eq!(d["origin"]["kind"], "received", "{d}");
        assert_eq!(d["origin"]["grant_id"], grant_hex.as_str(), "{d}");
    }

    // The source never recorded completion: after a restart it still holds the keys active.
    c.restart_with_failpoint("host-a", None);
    let a = c.node("host-a");
    assert_eq!(a.status()["key_count"], n);
    for (k, bytes) in &all_bytes {
        assert_eq!(a.describe(k)["state"], "active", "{k}");
        assert_eq!(&a.key_bytes(k), bytes, "{k}");
    }
    assert_eq!(audit_count(a, "transfer-send", "ok", &grant_hex), 0);

    // Retry: the destination answers its stored receipt (nothing stored twice), and the
    // source completes the grant now: fresh at the source, same grant id.
    let r = transfer(a, &g);
    assert_eq!(
        r["fresh"], true,
        "the source completes the grant on this retry: {r}"
    );
    assert_eq!(r["grant_id"], grant_hex.as_str(), "{r}");
    assert_eq!(r["op"], "move");
    assert_eq!(r["dest_node"], "host-b");
    let ids: Vec<&str> = r["key_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids, refs);
    let (a, b) = (c.node("host-a"), c.node("host-b"));
    assert_eq!(a.status()["key_count"], 0);
    assert_eq!(
        b.status()["key_count"],
        n,
        "the destination stored nothing twice"
    );
    for (k, bytes) in &all_bytes {
        let t = a.describe(k);
        assert_eq!(t["state"], "moved", "{t}");
        assert_eq!(t["moved_by_grant"], grant_hex.as_str(), "{t}");
        assert_eq!(&b.key_bytes(k), bytes, "{k}");
    }
    assert_no_key_on_zero_hosts(a, b, &keys);
    assert_eq!(audit_count(a, "transfer-send", "ok", &grant_hex), 1);
    assert_eq!(audit_count(b, "transfer-receive", "ok", &grant_hex), 1);

    // A third run changes nothing and says so, with the same receipt.
    let r3 = transfer(a, &g);
    assert_eq!(r3["fresh"], false, "{r3}");
    assert_eq!(r3["grant_id"], r["grant_id"]);
    assert_eq!(r3["stored_unix_ms"], r["stored_unix_ms"]);
    assert_eq!(a.status()["key_count"], 0);
    assert_eq!(b.status()["key_count"], n);
    assert_eq!(audit_count(a, "transfer-send", "ok", &grant_hex), 1);
    assert_eq!(audit_count(b, "transfer-receive", "ok", &grant_hex), 1);

    assert_audit_ok(a);
    assert_audit_ok(b);
}

#[test]
fn a_source_killed_after_the_receipt_completes_one_key_once_on_retry() {
    source_killed_after_the_receipt(1);
}

#[test]
fn a_source_killed_after_the_receipt_completes_three_keys_once_on_retry() {
    source_killed_after_the_receipt(3);
}

#[test]
fn a_source_killed_after_the_receipt_completes_a_two_batch_move_once_on_retry() {
    // The retry's destination answers its stored receipt right after the header, while the
    // source still streams two batches: the source must still complete.
    source_killed_after_the_receipt(1500);
}

/// A key rekeyed at the source between the destination's receipt and the source's completion
/// (the source crashed in between, an operator rekeyed it after the restart) must not lose its
/// new version to the MOVE: the retry gets the destination's stored receipt, which lists only
/// the versions it received, and the source refuses to tombstone.
#[test]
fn a_move_does_not_shred_a_version_added_after_the_keys_were_sent() {
    let mut c = Cluster::start(&["host-a", "host-b"], "");
    c.restart_with_failpoint("host-a", Some("source-after-receipt"));
    let k = c.node("host-a").create_key(&[]);
    let v1 = c.node("host-a").key_bytes(&k);
    let g = c.grant(&[&k], "host-a", "host-b", "move", "10m");
    let grant_hex = Cluster::grant_id_hex(&g);
    let err = transfer_err(c.node("host-a"), &g);
    assert!(!err.is_empty());
    assert_died_at_failpoint(&mut c, "host-a", "source-after-receipt");
    c.restart_with_failpoint("host-a", None);

    // Version 2 exists only at the source.
    let a = c.node("host-a");
    let begun = a.ctl_json(&["key", "rekey", &k]);
    assert_eq!(begun["state"], "rekeying", "{begun}");
    let v2 = a.key_bytes_version(&k, 2);

    let err = transfer_err(a, &g);
    assert!(err.contains(&k), "{err}");
    assert!(err.contains("did not receive"), "{err}");
    assert!(err.contains("[2]"), "{err}");

    // Nothing was removed at the source; the destination keeps version 1.
    let (a, b) = (c.node("host-a"), c.node("host-b"));
    assert_eq!(a.describe(&k)["state"], "rekeying");
    assert_eq!(a.key_bytes_version(&k, 1), v1);
    assert_eq!(a.key_bytes_version(&k, 2), v2);
    assert_eq!(b.key_bytes(&k), v1);
    assert_eq!(audit_count(a, "transfer-send", "ok", &grant_hex), 0);
    assert_audit_ok(a);
}

/// The same race without a crash: a key rekeyed at the source while its MOVE is in flight
/// (after it was read and sent, before the source completes) keeps its new version. The
/// completion re-reads each key; a key whose record changed since it was read is checked
/// afresh, and one changed key refuses the whole completion. The untouched key beside it stays
/// too: a MOVE completes whole or not at all.
#[test]
fn a_key_rekeyed_while_its_move_is_in_flight_keeps_its_new_version() {
    let mut c = Cluster::start(&["host-a", "host-b"], "");
    // The source pauses after the destination's receipt: the window to rekey in.
    c.restart_with_failpoint("host-a", Some("pause:source-after-receipt:8000"));
    let changed = c.node("host-a").create_key(&[]);
    let untouched = c.node("host-a").create_key(&[]);
    let v1 = c.node("host-a").key_bytes(&changed);
    let other = c.node("host-a").key_bytes(&untouched);
    let g = c.grant(&[&changed, &untouched], "host-a", "host-b", "move", "10m");
    let grant_hex = Cluster::grant_id_hex(&g);

    let err = std::thread::scope(|s| {
        let moving = s.spawn(|| transfer_err(c.node("host-a"), &g));
        // The destination stores the keys before it signs the receipt: once it lists them,
        // the source is in its pause.
        let b = c.node("host-b");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !listed(b).contains(&changed) {
            assert!(
                std::time::Instant::now() < deadline,
                "the destination never stored the keys; source log:\n{}",
                c.node("host-a").log_contents()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let begun = c.node("host-a").ctl_json(&["key", "rekey", &changed]);
        assert_eq!(begun["state"], "rekeying", "{begun}");
        moving.join().unwrap()
    });
    assert!(
        c.node("host-a")
            .log_contents()
            .contains("failpoint source-after-receipt: pausing"),
        "the source did not pause where the test rekeyed"
    );
    assert!(err.contains(&changed), "{err}");
    assert!(err.contains("did not receive"), "{err}");
    assert!(err.contains("[2]"), "{err}");

    // Nothing was removed at the source, and the destination keeps what it received.
    let (a, b) = (c.node("host-a"), c.node("host-b"));
    assert_eq!(a.describe(&changed)["state"], "rekeying");
    assert_eq!(a.key_bytes_version(&changed, 1), v1);
    assert_eq!(a.describe(&untouched)["state"], "active");
    assert_eq!(a.key_bytes(&untouched), other);
    assert_eq!(b.key_bytes(&changed), v1);
    assert_eq!(b.key_bytes(&untouched), other);
    assert_eq!(audit_count(a, "transfer-send", "ok", &grant_hex), 0);
    assert_no_key_on_zero_hosts(a, b, &[changed.clone(), untouched.clone()]);
    assert_audit_ok(a);
    assert_audit_ok(b);
}

/// The destination seals received keys while the delivery streams in, and stores them at its
/// end. A KEK rotation in between (the keys sealed under a KEK that is gone once it finishes)
/// must not leave them unreadable: they are sealed again under the new KEK when stored, and
/// read back after a restart (the old KEK is not in the keyring any more).
#[test]
fn keys_received_across_a_destination_kek_rotation_are_stored_under_the_new_kek() {
    let mut c = Cluster::start(&["host-a", "host-b"], "");
    c.restart_with_failpoint("host-b", Some("pause:dest-before-store:4000"));
    let keys: Vec<String> = (0..3).map(|_| c.node("host-a").create_key(&[])).collect();
    let bytes: Vec<Vec<u8>> = keys.iter().map(|k| c.node("host-a").key_bytes(k)).collect();
    let kek_before = c.node("host-b").status()["kek_id"].as_u64().unwrap();
    let ids: Vec<&str> = keys.iter().map(String::as_str).collect();
    let g = c.grant(&ids, "host-a", "host-b", "copy", "10m");

    let receipt = std::thread::scope(|s| {
        let copying = s.spawn(|| {
            c.node("host-a")
                .ctl_json(&["transfer", g.to_str().unwrap()])
        });
        let b = c.node("host-b");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !b
            .log_contents()
            .contains("failpoint dest-before-store: pausing")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the destination never paused; its log:\n{}",
                b.log_contents()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = b.ctl_json(&["kek", "rotate"]);
        assert!(r["new_kek_id"].as_u64().unwrap() > kek_before, "{r}");
        copying.join().unwrap()
    });
    assert_eq!(
        receipt["key_ids"].as_array().map(Vec::len),
        Some(3),
        "{receipt}"
    );
    for (k, want) in keys.iter().zip(&bytes) {
        assert_eq!(&c.node("host-b").key_bytes(k), want);
    }
    c.restart_with_failpoint("host-b", None);
    let b = c.node("host-b");
    for (k, want) in keys.iter().zip(&bytes) {
        assert_eq!(&b.key_bytes(k), want);
    }
    assert_audit_ok(b);
}
