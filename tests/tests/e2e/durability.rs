//! Durability under injected faults (issue 19): nothing is acknowledged before it is durable,
//! a failed sync is never acknowledged nor seen, and the daemon stops for a restart instead of
//! running half-alive. The faults are injected into real daemons with `LOCKBOX_STORE_FAULT`
//! (lockbox-store's test hook: a delay before each journal sync, or a sync that fails as an
//! `fdatasync` returning EIO does).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lockbox_tests::cluster::Cluster;
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

/// `key create --key-id KEY_ID` on another thread: with a held-up sync it is applied (readable)
/// long before it is durable and answered.
fn create_in_background(node: &Node) -> std::thread::JoinHandle<std::process::Output> {
    let socket = node.socket();
    std::thread::spawn(move || {
        let mut cmd = std::process::Command::new(&lockbox_tests::binaries().lockboxctl);
        cmd.arg("--socket")
            .arg(socket)
            .args(["key", "create", "--key-id", KEY_ID]);
        lockbox_tests::run_with_timeout(&mut cmd, Duration::from_secs(30))
    })
}

/// A hedging client sends the same create twice. The second call finds the key the first one
/// applied and answers "already there": that answer must wait until the key is durable, or a
/// crash right after it loses a key the client was told exists.
#[test]
fn a_repeated_create_is_answered_only_once_the_key_is_durable() {
    let mut node = node_with_fault("sync-delay-ms:1500");
    let first = create_in_background(&node);
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

/// A get of a key whose create is applied but not yet durable hands out its bytes only once
/// the create is durable (the get waits for the write behind the record it read, not for
/// nothing): a volume encrypted with bytes a crash then loses would be unreadable. Fails if
/// GetKey answers without waiting.
#[test]
fn a_get_of_a_key_not_yet_durable_waits_for_it() {
    let mut node = node_with_fault("sync-delay-ms:1500");
    let first = create_in_background(&node);
    // Poll until the create is applied (readable); each get that answers must be durable.
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let out = node.ctl(&["key", "get", KEY_ID, "--format", "hex"]);
        if out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "{out:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    node.kill9();
    let _ = first.join();
    restart_without_faults(&mut node);
    let again = node.ctl(&["key", "get", KEY_ID, "--format", "hex"]);
    assert!(
        again.status.success(),
        "a key whose bytes were handed out is gone after kill -9: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(again.stdout, got.stdout, "the bytes handed out changed");
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

/// `key rekey --commit` retried after the commit took effect (its answer lost to a crash)
/// reports the committed state instead of "no rekey in progress".
#[test]
fn a_retried_rekey_commit_reports_the_committed_state() {
    let mut node = Node::keyfile();
    let id = node.create_key(&[]);
    node.ctl_json(&["key", "rekey", &id]);
    let first = node.ctl_json(&["key", "rekey", &id, "--commit"]);
    node.kill9();
    node.spawn_ready();
    let again = node.ctl_json(&["key", "rekey", &id, "--commit"]);
    assert_eq!(
        again["current_version"], first["current_version"],
        "{again}"
    );
    assert_eq!(again["current_version"], serde_json::json!(2), "{again}");
    // A key that was never rekeyed still refuses a commit, saying why.
    let other = node.create_key(&[]);
    let err = node.ctl_err(&["key", "rekey", &other, "--commit"]);
    assert!(err.contains("no rekey in progress"), "{err}");
}

/// An init that did not finish (killed before it wrote the keyring) is no dead end: both init
/// and lockboxd name what happened and what to do, and following that works.
#[test]
fn an_unfinished_init_says_how_to_finish_it() {
    let mut node = Node::new_uninit(NodeOptions::default());
    node.init();
    // What a crash before the keyring's write leaves: the store without a keyring.
    std::fs::remove_file(node.keyring_path()).unwrap();
    let out = node.init_output();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("did not finish") && said.contains("remove"),
        "{said}"
    );
    node.spawn();
    assert!(node.try_wait_ready().is_err());
    assert!(
        node.log_contents().contains("did not finish"),
        "{}",
        node.log_contents()
    );
    std::fs::remove_dir_all(node.db_dir()).unwrap();
    node.init();
    node.spawn_ready();
    node.create_key(&[]);
}

/// Restarts a cluster node with `LOCKBOX_STORE_FAULT` set to `fault` (or cleared), attested.
fn restart_with_fault(c: &mut Cluster, name: &str, fault: Option<&str>) {
    c.restart_with_env(name, "LOCKBOX_STORE_FAULT", fault);
}

/// A MOVE retried while the destination's write of the first attempt is still on its way to
/// the disk: the destination's "already received, here is the receipt" must wait until the
/// keys are durable, or the source tombstones keys a destination crash then loses.
#[test]
fn a_move_retried_while_the_destination_sync_is_held_up_leaves_every_key_on_a_host() {
    let mut c = Cluster::start(&["host-a", "host-b"], "");
    restart_with_fault(&mut c, "host-b", Some("sync-delay-ms:2000"));
    let keys: Vec<String> = (0..5).map(|_| c.node("host-a").create_key(&[])).collect();
    let bytes: Vec<Vec<u8>> = keys.iter().map(|k| c.node("host-a").key_bytes(k)).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let g = c.grant(&refs, "host-a", "host-b", "move", "10m");

    let first = {
        let socket = c.node("host-a").socket();
        let grant = g.clone();
        std::thread::spawn(move || {
            let mut cmd = std::process::Command::new(&lockbox_tests::binaries().lockboxctl);
            cmd.arg("--socket").arg(socket).arg("transfer").arg(grant);
            lockbox_tests::run_with_timeout(&mut cmd, Duration::from_secs(60))
        })
    };
    // The destination has applied the first attempt's keys and waits on its sync.
    std::thread::sleep(Duration::from_millis(900));
    let retry = c.node("host-a").ctl(&["transfer", g.to_str().unwrap()]);
    assert!(retry.status.success(), "{retry:?}");
    // The source completed the MOVE (its keys are tombstones): the destination crashes now.
    assert_eq!(c.node("host-a").describe(&keys[0])["state"], "moved");
    c.node_mut("host-b").kill9();
    let _ = first.join();
    restart_with_fault(&mut c, "host-b", None);
    for (k, b) in keys.iter().zip(&bytes) {
        assert_eq!(&c.node("host-b").key_bytes(k), b, "{k} is on no host");
    }
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Out of file descriptors: the daemon does not spin on a failing `accept` (it backs off and
/// says why in its log), and serves again by itself once descriptors are free.
#[test]
fn out_of_file_descriptors_the_daemon_backs_off_and_recovers_by_itself() {
    let node = Node::keyfile();
    let pid = node.pid().unwrap();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 8;
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(st.success(), "prlimit failed");
    // Enough connections to use every descriptor the daemon has left, and more waiting.
    let held: Vec<_> = (0..limit + 16)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(node.socket()).ok())
        .collect();
    assert!(held.len() > 16, "only {} connections", held.len());
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "lockboxd used {used:.2} s of CPU in 2 s while it could not accept"
    );
    assert!(
        node.log_contents().contains("cannot accept a connection"),
        "{}",
        node.log_contents()
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(1500));
    node.create_key(&[]);
}
