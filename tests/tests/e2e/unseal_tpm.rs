//! The `tpm2` and `tpm2+peers` unseal methods with real daemons and a real software TPM
//! (swtpm, started by each test): a restart unseals with the host's TPM; a copy of the data
//! dir beside another TPM stays sealed (and its recovery passphrase still opens it); with
//! `tpm2+peers` neither the TPM nor the peers alone unseal.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lockbox_tests::cluster::Cluster;
use lockbox_tests::{Node, NodeOptions, UnsealMethod};
use lockbox_tpm::swtpm::Swtpm;
use serde_json::Value;

const RECOVERY: &str = "tpm recovery passphrase";

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn swtpm() -> (tempfile::TempDir, Swtpm) {
    let dir = tempfile::Builder::new()
        .prefix("lbxtpm")
        .tempdir_in("/tmp")
        .unwrap();
    let tpm = Swtpm::start(dir.path()).unwrap();
    (dir, tpm)
}

#[test]
fn tpm2_restart_unseals_and_a_copy_beside_another_tpm_stays_sealed() {
    let (_d1, tpm) = swtpm();
    let mut node = Node::start(NodeOptions {
        node_id: "host-a".into(),
        unseal: UnsealMethod::Tpm2 {
            tcti: tpm.tcti(),
            recovery: Some(RECOVERY.into()),
        },
        ..NodeOptions::default()
    });
    let s = node.wait_status(Duration::from_secs(30), "unsealed by the TPM", |s| {
        s["sealed"] == false
    });
    assert_eq!(s["unseal"]["method"], "tpm2", "{s}");
    assert_eq!(s["unseal"]["unsealed_by"], "tpm2", "{s}");
    assert_eq!(s["unseal"]["recovery"], true, "{s}");
    let key = node.create_key(&[]);
    let bytes = node.key_bytes(&key);

    node.restart();
    node.wait_status(Duration::from_secs(30), "unsealed again", |s| {
        s["sealed"] == false
    });
    assert_eq!(node.key_bytes(&key), bytes);
    node.stop();

    // The data dir copied beside another TPM (another host's, or a new one): sealed, and the
    // status says why.
    let (_d2, other) = swtpm();
    let mut opts = node.opts().clone();
    opts.unseal = UnsealMethod::Tpm2 {
        tcti: other.tcti(),
        recovery: Some(RECOVERY.into()),
    };
    let mut copy = Node::new_uninit(opts);
    lockbox_tests::copy_dir(&node.data_dir(), &copy.data_dir());
    copy.spawn_ready();
    let s = copy.wait_status(Duration::from_secs(30), "the TPM part reported", |s| {
        names(&s["unseal"]["missing"]) == ["tpm2"]
    });
    assert_eq!(s["sealed"], true, "{s}");
    let err = s["unseal"]["missing_errors"]["tpm2"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("tpm2"), "{err}");
    let again = copy.ctl_err(&["unseal"]);
    assert!(again.contains("still sealed"), "{again}");
    // The recovery passphrase opens it all the same.
    let rf = copy.recovery_file();
    let s = copy.ctl_json(&["unseal", "--passphrase-file", rf.to_str().unwrap()]);
    assert_eq!(s["sealed"], false, "{s}");
    assert_eq!(copy.key_bytes(&key), bytes);
    copy.stop();
}

#[test]
fn tpm2_peers_needs_both_parts() {
    let (_d1, tpm) = swtpm();
    let mut c = Cluster::start(&["host-a", "host-b", "host-c"], "");
    let key = c.node("host-a").create_key(&[]);
    let bytes = c.node("host-a").key_bytes(&key);
    // From keyfile to tpm2+peers on the running node.
    let a = c.node_mut("host-a");
    a.opts_mut().unseal = UnsealMethod::Tpm2Peers {
        tcti: tpm.tcti(),
        peers: vec!["host-b".into(), "host-c".into()],
        threshold: 2,
        recovery: Some(RECOVERY.into()),
    };
    a.write_config();
    a.write_secrets();
    let rf = a.recovery_file();
    let s = a.ctl_json(&[
        "unseal",
        "enroll",
        "--recovery-passphrase-file",
        rf.to_str().unwrap(),
    ]);
    assert_eq!(s["unseal"]["method"], "tpm2+peers", "{s}");
    assert_eq!(s["unseal"]["recovery"], true, "{s}");

    // Both parts there: a restart unseals.
    c.node_mut("host-a").restart();
    let s = c
        .node("host-a")
        .wait_status(Duration::from_secs(60), "unsealed", |s| {
            s["sealed"] == false
        });
    assert_eq!(s["unseal"]["unsealed_by"], "tpm2+peers", "{s}");
    assert_eq!(
        names(&s["unseal"]["answered"]),
        ["tpm2", "host-b", "host-c"],
        "{s}"
    );
    assert_eq!(c.node("host-a").key_bytes(&key), bytes);

    // The TPM without enough peers: sealed.
    c.node_mut("host-b").stop();
    c.node_mut("host-a").restart();
    let s = c
        .node("host-a")
        .wait_status(Duration::from_secs(30), "host-b missing", |s| {
            names(&s["unseal"]["missing"]) == ["host-b"]
        });
    assert_eq!(s["sealed"], true, "{s}");
    assert_eq!(names(&s["unseal"]["answered"]), ["tpm2", "host-c"], "{s}");
    c.node_mut("host-b").spawn_ready();
    c.node("host-a")
        .wait_status(Duration::from_secs(60), "unsealed", |s| {
            s["sealed"] == false
        });

    // Every peer up but another TPM: sealed.
    c.node_mut("host-a").stop();
    let (_d2, other) = swtpm();
    let a = c.node_mut("host-a");
    a.opts_mut().unseal = UnsealMethod::Tpm2Peers {
        tcti: other.tcti(),
        peers: vec!["host-b".into(), "host-c".into()],
        threshold: 2,
        recovery: Some(RECOVERY.into()),
    };
    a.write_config();
    a.spawn_ready();
    let s = c
        .node("host-a")
        .wait_status(Duration::from_secs(30), "tpm2 missing", |s| {
            names(&s["unseal"]["missing"]) == ["tpm2"]
        });
    assert_eq!(s["sealed"], true, "{s}");
    std::thread::sleep(Duration::from_secs(2));
    let a = c.node("host-a");
    assert_eq!(a.status()["sealed"], true);
    // The recovery passphrase opens this variant too.
    let rf = a.recovery_file();
    let s = a.ctl_json(&["unseal", "--passphrase-file", rf.to_str().unwrap()]);
    assert_eq!(s["sealed"], false, "{s}");
    assert_eq!(s["unseal"]["unsealed_by"], "recovery", "{s}");
    assert_eq!(a.key_bytes(&key), bytes);
}
