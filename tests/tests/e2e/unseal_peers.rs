//! Peer-assisted unseal (DESIGN.md §5.5) with real daemons: a lockbox whose root secret is
//! split among its peers restarts unattended when t of them answer, stays sealed (and says
//! which are missing) when fewer do, stays sealed when its data dir is copied off the cluster
//! or the controller revoked it, and a whole cluster cold-starts. A peer answers only the
//! owner itself, and what a peer holds does not unseal the owner.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use lockbox_crypto::assist::AssistIdentity;
use lockbox_crypto::{Keyring, SecretBytes, UnsealSecret};
use lockbox_proto::v1 as pb;
use lockbox_tests::cluster::Cluster;
use lockbox_tests::rogue::Rogue;
use lockbox_tests::{Node, UnsealMethod, binaries, describe_output, run_with_timeout};
use serde_json::Value;

const RECOVERY: &str = "correct horse recovery staple";

/// Switches `name` to the peers method over `peers` (threshold `t`) with `lockboxctl unseal
/// enroll`, as an operator would: edit the config, enroll, no restart.
fn enroll_peers(c: &mut Cluster, name: &str, peers: &[&str], t: u32, recovery: bool) -> Value {
    let node = c.node_mut(name);
    node.opts_mut().unseal = UnsealMethod::Peers {
        peers: peers.iter().map(|p| p.to_string()).collect(),
        threshold: t,
        recovery: recovery.then(|| RECOVERY.to_string()),
    };
    node.write_config();
    node.write_secrets();
    let rf = node.recovery_file();
    let mut args = vec!["unseal", "enroll"];
    if recovery {
        args.extend(["--recovery-passphrase-file", rf.to_str().unwrap()]);
    }
    let v = node.ctl_json(&args);
    assert_eq!(v["unseal"]["method"], "peers", "{v}");
    assert_eq!(v["unseal_method"], "peers", "{v}");
    assert_eq!(v["unseal"]["recovery"], recovery, "{v}");
    v
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn audit_tail(node: &Node) -> String {
    node.ctl_json(&["audit", "tail", "-n", "200"]).to_string()
}

#[test]
fn peers_restart_with_two_of_three_recovery_and_back_to_keyfile() {
    let mut c = Cluster::start(&["host-a", "host-b", "host-c", "host-d"], "");
    let key = c.node("host-a").create_key(&[]);
    let bytes = c.node("host-a").key_bytes(&key);
    enroll_peers(&mut c, "host-a", &["host-b", "host-c", "host-d"], 2, true);

    // The key file is still on disk, but no slot of the keyring opens with it any more.
    let a = c.node("host-a");
    let keyring = Keyring::decode(&std::fs::read(a.keyring_path()).unwrap()).unwrap();
    let keyfile = SecretBytes::new(std::fs::read(a.keyfile_path()).unwrap());
    assert!(keyring.unseal(UnsealSecret::Keyfile(&keyfile)).is_err());
    assert!(keyring.peer_slot().is_some() && keyring.has_recovery());

    // Only host-b up: host-a restarts sealed and names who is missing.
    c.node_mut("host-c").stop();
    c.node_mut("host-d").stop();
    c.node_mut("host-a").restart();
    let a = c.node("host-a");
    let s = a.wait_status(Duration::from_secs(30), "missing peers reported", |s| {
        names(&s["unseal"]["missing"]).len() == 2
    });
    assert_eq!(s["sealed"], true, "{s}");
    assert_eq!(names(&s["unseal"]["answered"]), ["host-b"], "{s}");
    assert_eq!(names(&s["unseal"]["missing"]), ["host-c", "host-d"], "{s}");
    assert!(
        s["unseal"]["missing_errors"]["host-c"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{s}"
    );
    let human = String::from_utf8_lossy(&a.ctl_plain(&["status"]).stdout).into_owned();
    assert!(human.contains("missing:  host-c"), "{human}");
    let err = a.ctl_err(&["unseal"]);
    assert!(
        err.contains("still sealed") && err.contains("2 needed"),
        "{err}"
    );

    // A second peer comes back: host-a unseals by itself.
    c.node_mut("host-c").spawn_ready();
    let a = c.node("host-a");
    let s = a.wait_status(Duration::from_secs(60), "unsealed by its peers", |s| {
        s["sealed"] == false
    });
    assert_eq!(s["unseal"]["unsealed_by"], "peers", "{s}");
    assert_eq!(names(&s["unseal"]["answered"]), ["host-b", "host-c"], "{s}");
    assert_eq!(a.key_bytes(&key), bytes);
    // Each helper audited what it did, naming the owner.
    for peer in ["host-b", "host-c"] {
        let tail = audit_tail(c.node(peer));
        assert!(
            tail.contains("unseal-assist") && tail.contains("owner host-a"),
            "{peer}: {tail}"
        );
    }

    // The recovery passphrase opens the slot whatever the peers do; a wrong one is refused.
    let a = c.node("host-a");
    a.ctl_json(&["seal"]);
    let wrong = a.dir().join("wrong.pass");
    std::fs::write(&wrong, "not the recovery passphrase").unwrap();
    let err = a.ctl_err(&["unseal", "--passphrase-file", wrong.to_str().unwrap()]);
    assert!(err.contains("wrong unseal secret"), "{err}");
    assert_eq!(a.status()["sealed"], true);
    let rf = a.recovery_file();
    let s = a.ctl_json(&["unseal", "--passphrase-file", rf.to_str().unwrap()]);
    assert_eq!(s["sealed"], false, "{s}");
    assert_eq!(s["unseal"]["unsealed_by"], "recovery", "{s}");

    // Back to the key file: the config drops recovery, so the slot goes too.
    let a = c.node_mut("host-a");
    a.opts_mut().unseal = UnsealMethod::Keyfile;
    a.write_config();
    let s = a.ctl_json(&["unseal", "enroll"]);
    assert_eq!(s["unseal"]["method"], "keyfile", "{s}");
    assert_eq!(s["unseal"]["recovery"], false, "{s}");
    let tail = audit_tail(a);
    assert!(
        tail.contains("method keyfile, recovery removed")
            && tail.contains("method peers (2 of host-b,host-c,host-d), recovery set"),
        "{tail}"
    );
    // No peer needed any more.
    c.node_mut("host-b").stop();
    c.node_mut("host-c").stop();
    c.node_mut("host-a").restart();
    let a = c.node("host-a");
    assert_eq!(a.status()["sealed"], false);
    assert_eq!(a.key_bytes(&key), bytes);
}

#[test]
fn copied_data_dir_revoked_node_and_wrong_owner_stay_sealed() {
    let mut c = Cluster::start(&["host-a", "host-b", "host-c", "host-d"], "");
    let key = c.node("host-a").create_key(&[]);
    enroll_peers(&mut c, "host-a", &["host-b", "host-c", "host-d"], 2, false);

    // A peer's view: host-b's assist key file and host-a's whole keyring open host-b's own
    // share and nothing more; one share of a 2-of-3 split does not unseal host-a.
    let keyring =
        Keyring::decode(&std::fs::read(c.node("host-a").keyring_path()).unwrap()).unwrap();
    let slot = keyring.peer_slot().unwrap().clone();
    let b_file = std::fs::read(c.node("host-b").data_dir().join("assist.key")).unwrap();
    let b = AssistIdentity::from_file_bytes(&b_file).unwrap();
    let mut unseal = slot.begin_unseal("host-a").unwrap();
    let req = unseal.requests()[0].clone();
    assert_eq!(req.peer_node, "host-b");
    let answer = b.for_owner("host-a").unwrap().answer(&req.blinded).unwrap();
    assert!(!unseal.add_answer(req.peer, &answer).unwrap());
    assert!(
        unseal.finish().is_err(),
        "one share must not rebuild the slot key"
    );
    // The answer host-b gives any other caller, or its base key, opens nothing of host-a's.
    for wrong in [
        b.for_owner("host-c").unwrap(),
        b.for_owner("host-b").unwrap(),
    ] {
        let mut unseal = slot.begin_unseal("host-a").unwrap();
        let req = unseal.requests()[0].clone();
        let y = wrong.answer(&req.blinded).unwrap();
        assert!(unseal.add_answer(req.peer, &y).is_err());
    }

    // A node asking for another owner is refused and audited by the peer.
    let ctl_url = c.controller.url.clone();
    let as_b = Rogue::new(c.lockbox_tls("host-b"), "host-b");
    let vouch_b = as_b.vouch(&ctl_url).unwrap();
    let point = AssistIdentity::generate().unwrap().public_key().to_vec();
    let request = |vouch: &pb::SignedVouch, owner: &str| pb::AssistRequest {
        vouch: Some(vouch.clone()),
        owner_node: owner.into(),
        enrollment_id: slot.enrollment_id().to_vec(),
        blinded: point.clone(),
    };
    let e = as_b
        .assist(&c.peer_url("host-c"), "host-c", request(&vouch_b, "host-a"))
        .unwrap_err();
    assert_eq!(e.code, tonic::Code::PermissionDenied, "{e}");
    assert!(e.message.contains("names owner"), "{e}");
    let tail = audit_tail(c.node("host-c"));
    assert!(
        tail.contains("refused") && tail.contains("names owner"),
        "{tail}"
    );
    // host-b's own vouch does not pass as host-a's (another node, another TLS key).
    let as_a = Rogue::new(c.lockbox_tls("host-a"), "host-a");
    let e = as_a
        .assist(&c.peer_url("host-c"), "host-c", request(&vouch_b, "host-a"))
        .unwrap_err();
    assert!(e.message.contains("vouch"), "{e}");
    let vouch_a = as_a.vouch(&ctl_url).unwrap();

    // host-a's data dir (config and TLS files alike) copied elsewhere and started with no
    // peer reachable: it stays sealed, naming every peer as missing.
    c.node_mut("host-a").stop();
    for p in ["host-b", "host-c", "host-d"] {
        c.node_mut(p).stop();
    }
    let mut copy = Node::new_uninit(c.node("host-a").opts().clone());
    lockbox_tests::copy_dir(&c.node("host-a").data_dir(), &copy.data_dir());
    copy.spawn_ready();
    let s = copy.wait_status(Duration::from_secs(30), "all peers missing", |s| {
        names(&s["unseal"]["missing"]).len() == 3
    });
    assert_eq!(s["sealed"], true, "{s}");
    let err = copy.ctl_err(&["key", "get", &key]);
    assert!(err.contains("sealed"), "{err}");

    // The controller revokes host-a: with every peer back, the copy still gets no help.
    let out = run_with_timeout(
        Command::new(&binaries().controller)
            .arg("revoke")
            .arg("--config")
            .arg(c.controller.config_path())
            .arg("host-a")
            .arg("--reason")
            .arg("chassis left the data centre"),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", describe_output(&out));
    for p in ["host-b", "host-c", "host-d"] {
        c.node_mut(p).spawn_ready();
    }
    let s = copy.wait_status(Duration::from_secs(60), "revocation named", |s| {
        s["unseal"]["missing_errors"]
            .to_string()
            .contains("revoked")
    });
    assert_eq!(s["sealed"], true, "{s}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(copy.status()["sealed"], true);
    // Even with a vouch it got before the revocation, a peer refuses host-a by name, and
    // lists the revocation in its status.
    let e = as_a
        .assist(&c.peer_url("host-b"), "host-b", request(&vouch_a, "host-a"))
        .unwrap_err();
    assert_eq!(e.code, tonic::Code::PermissionDenied, "{e}");
    assert!(e.message.contains("revoked"), "{e}");
    let s = c.node("host-b").status();
    assert_eq!(names(&s["revoked_nodes"]), ["host-a"], "{s}");
    copy.stop();
}

#[test]
fn whole_cluster_cold_start_unseals() {
    let mut c = Cluster::start(&["host-a", "host-b", "host-c"], "");
    let keys: Vec<(String, Vec<u8>)> = ["host-a", "host-b", "host-c"]
        .iter()
        .map(|n| {
            let k = c.node(n).create_key(&[]);
            let b = c.node(n).key_bytes(&k);
            (k, b)
        })
        .collect();
    enroll_peers(&mut c, "host-a", &["host-b", "host-c"], 2, false);
    enroll_peers(&mut c, "host-b", &["host-a", "host-c"], 2, false);
    enroll_peers(&mut c, "host-c", &["host-a", "host-b"], 2, false);
    for n in ["host-a", "host-b", "host-c"] {
        c.node_mut(n).stop();
    }
    // All at once: each is sealed, and each helps the others while sealed.
    for n in ["host-a", "host-b", "host-c"] {
        c.node_mut(n).spawn();
    }
    for n in ["host-a", "host-b", "host-c"] {
        c.node_mut(n).wait_ready();
    }
    for ((n, (k, b)), _) in ["host-a", "host-b", "host-c"].iter().zip(&keys).zip(0..) {
        let node = c.node(n);
        let s = node.wait_status(Duration::from_secs(60), "cold start unsealed", |s| {
            s["sealed"] == false
        });
        assert_eq!(s["unseal"]["unsealed_by"], "peers", "{n}: {s}");
        assert_eq!(&node.key_bytes(k), b, "{n}");
    }
}

/// An enrollment whose keyring cannot be written changes nothing: the keyring file keeps its
/// bytes, the node keeps its method and unseals as before, and the refusal is audited. Here a
/// directory stands where the new keyring's temporary file goes.
#[test]
fn an_enrollment_that_cannot_write_the_keyring_changes_nothing() {
    let mut node = Node::start(lockbox_tests::NodeOptions::default());
    let key = node.create_key(&[]);
    let before = std::fs::read(node.keyring_path()).unwrap();
    node.opts_mut().unseal = UnsealMethod::Passphrase("a new passphrase".into());
    node.write_config();
    node.write_secrets();
    let pf = node.passphrase_file();
    let blocker = node.data_dir().join(".keyring.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let err = node.ctl_err(&[
        "unseal",
        "enroll",
        "--passphrase-file",
        pf.to_str().unwrap(),
    ]);
    assert!(err.contains("keyring"), "{err}");
    assert_eq!(std::fs::read(node.keyring_path()).unwrap(), before);
    assert_eq!(node.status()["unseal"]["method"], "keyfile");
    assert!(audit_tail(&node).contains("unseal-enroll"), "not audited");

    // Once the path is clear the same enrollment goes through.
    std::fs::remove_dir(&blocker).unwrap();
    let s = node.ctl_json(&[
        "unseal",
        "enroll",
        "--passphrase-file",
        pf.to_str().unwrap(),
    ]);
    assert_eq!(s["unseal"]["method"], "passphrase", "{s}");
    assert_ne!(std::fs::read(node.keyring_path()).unwrap(), before);
    let bytes = node.key_bytes(&key);
    assert_eq!(bytes.len(), 32);
}

/// `lockboxd init` with `method = "peers"` enrolls at once: with a peer down it fails naming
/// that peer and leaves no data dir behind; with the peers up it succeeds, and the new lockbox
/// unseals at its first start and at every restart while 2 of its 3 peers answer. Here host-a's
/// chassis is replaced: a new data dir under host-a's identity and address.
#[test]
fn init_with_peers_names_an_unreachable_peer_then_enrolls() {
    let mut c = Cluster::start(&["host-a", "host-b", "host-c", "host-d"], "");
    c.node_mut("host-a").stop();
    c.node_mut("host-d").stop();
    let mut opts = c.node("host-a").opts().clone();
    opts.unseal = UnsealMethod::Peers {
        peers: vec!["host-b".into(), "host-c".into(), "host-d".into()],
        threshold: 2,
        recovery: Some(RECOVERY.into()),
    };
    let mut a = Node::new_uninit(opts);

    let out = a.init_output();
    assert!(!out.status.success(), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("host-d"), "{err}");
    assert!(!err.contains("host-b") && !err.contains("host-c"), "{err}");
    assert!(!a.keyring_path().exists(), "a failed init left a keyring");
    assert!(!a.db_dir().exists(), "a failed init left a store");

    c.node_mut("host-d").spawn_ready();
    let out = a.init_output();
    assert!(out.status.success(), "{}", describe_output(&out));
    a.spawn_ready();
    let s = a.wait_status(Duration::from_secs(60), "unsealed by its peers", |s| {
        s["sealed"] == false
    });
    assert_eq!(s["unseal"]["method"], "peers", "{s}");
    assert_eq!(s["unseal"]["unsealed_by"], "peers", "{s}");
    assert_eq!(s["unseal"]["recovery"], true, "{s}");
    let key = a.create_key(&[]);
    let bytes = a.key_bytes(&key);

    // Two of the three peers up: a restart unseals alone.
    c.node_mut("host-d").stop();
    // A second init is refused for what it is, before any peer is asked (host-d is down).
    let out = a.init_output();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("already initialized"),
        "{err}"
    );
    a.restart();
    let s = a.wait_status(Duration::from_secs(60), "unsealed again", |s| {
        s["sealed"] == false
    });
    assert_eq!(names(&s["unseal"]["answered"]), ["host-b", "host-c"], "{s}");
    assert_eq!(a.key_bytes(&key), bytes);
    a.stop();
}
