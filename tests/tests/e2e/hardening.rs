//! Process hardening of a running lockboxd (DESIGN.md §2 invariant 8, issue 5): core dumps
//! off, memory locked when RLIMIT_MEMLOCK allows it, `[hardening] mlock` honoured, and
//! `status --json` telling the truth about both.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockbox_tests::{
    Node, NodeOptions, READY_TIMEOUT, binaries, describe_output, run_with_timeout,
};
use serde_json::json;

/// EX_CONFIG from sysexits.h.
const EX_CONFIG: i32 = 78;

/// One line of `/proc/PID/<file>` starting with `key`, whitespace-split after the key.
fn proc_line(pid: u32, file: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} in /proc/{pid}/{file}:\n{text}"));
    line[key.len()..]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The soft limit of this (test) process, e.g. "unlimited" or "8388608".
fn own_limit(key: &str) -> String {
    proc_line(std::process::id(), "limits", key)[0].clone()
}

/// Locked memory of a process, in kB (`VmLck`).
fn vm_lck_kb(pid: u32) -> u64 {
    proc_line(pid, "status", "VmLck:")[0].parse().unwrap()
}

/// Whether this (test) process holds CAP_IPC_LOCK, which lifts RLIMIT_MEMLOCK (root, here).
fn has_ipc_lock() -> bool {
    let eff = proc_line(std::process::id(), "status", "CapEff:")[0].clone();
    u64::from_str_radix(&eff, 16).unwrap() & (1 << 14) != 0
}

/// Whether a child of this process can lock its memory: an unlimited RLIMIT_MEMLOCK, or
/// CAP_IPC_LOCK.
fn children_can_lock() -> bool {
    own_limit("Max locked memory") == "unlimited" || has_ipc_lock()
}

/// How to start the daemon: `limit` for RLIMIT_MEMLOCK (`None`: inherit ours) and whether it
/// may keep CAP_IPC_LOCK (without it, via `setpriv`, the limit binds even for root).
fn spawn_with_memlock(node: &Node, limit: Option<&str>, ipc_lock: bool) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.log_path())
        .unwrap();
    let script = match limit {
        Some(l) => format!("ulimit -l {l} && exec \"$@\""),
        None => "exec \"$@\"".to_owned(),
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg("sh");
    if !ipc_lock && has_ipc_lock() {
        cmd.args(["setpriv", "--bounding-set=-ipc_lock"]);
    }
    cmd.arg(&binaries().lockboxd)
        .arg("--config")
        .arg(node.config_path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Whether `setpriv` can run here (needed to drop CAP_IPC_LOCK when we hold it).
fn can_drop_ipc_lock() -> bool {
    !has_ipc_lock()
        || Command::new("setpriv")
            .args(["--bounding-set=-ipc_lock", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

/// Waits for `child` to serve `status`, or returns its exit code if it stops first.
fn wait_ready_or_exit(node: &Node, child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        if node.socket().exists() && node.ctl(&["status"]).status.success() {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "lockboxd not ready; log:\n{}",
            node.log_contents()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether this process may start a child with an unlimited RLIMIT_MEMLOCK (root, or an
/// unlimited hard limit).
fn can_raise_memlock() -> bool {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -l unlimited")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The node's log from byte `mark` on (what the current daemon wrote).
fn log_since(node: &Node, mark: usize) -> String {
    node.log_contents()
        .get(mark..)
        .unwrap_or_default()
        .to_owned()
}

fn stop(child: &mut Child) {
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "lockboxd did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn with_mlock(mode: &str) -> NodeOptions {
    NodeOptions {
        extra_tables: format!("[hardening]\nmlock = \"{mode}\"\n"),
        ..NodeOptions::default()
    }
}

#[test]
fn core_dumps_are_disabled_and_status_says_so() {
    let node = Node::keyfile();
    let pid = node.pid().unwrap();
    let core = proc_line(pid, "limits", "Max core file size");
    assert_eq!(&core[..2], ["0", "0"], "RLIMIT_CORE must be 0/0: {core:?}");
    let s = node.status();
    assert_eq!(s["core_dumps_disabled"], json!(true), "{s}");
    assert!(s["memory_locked"].is_boolean(), "{s}");
    // Locked exactly when this environment allowed it (the daemon inherits our limit and
    // capabilities).
    let can_lock = children_can_lock();
    assert_eq!(s["memory_locked"], json!(can_lock), "{s}");
    if can_lock {
        assert!(vm_lck_kb(pid) > 0);
    } else {
        assert_eq!(vm_lck_kb(pid), 0);
        let log = node.log_contents();
        assert!(
            log.contains("memory is NOT locked") && log.contains("LimitMEMLOCK=infinity"),
            "one warning saying how to fix it:\n{log}"
        );
    }
    // The human status says it too.
    let out = node.ctl_plain(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("core:") && text.contains("dumps disabled"),
        "{text}"
    );
}

#[test]
fn memory_is_locked_when_the_limit_allows_it() {
    // `required` starts when the limit allows locking.
    let node = Node::new_uninit(with_mlock("required"));
    node.init();
    let mut child = if can_raise_memlock() {
        spawn_with_memlock(&node, Some("unlimited"), false)
    } else if has_ipc_lock() {
        spawn_with_memlock(&node, None, true)
    } else {
        eprintln!("skipped: neither an unlimited RLIMIT_MEMLOCK nor CAP_IPC_LOCK here");
        return;
    };
    assert_eq!(
        wait_ready_or_exit(&node, &mut child),
        None,
        "{}",
        node.log_contents()
    );
    let pid = child.id();
    let s = node.status();
    assert_eq!(s["memory_locked"], json!(true), "{s}");
    assert_eq!(s["core_dumps_disabled"], json!(true), "{s}");
    assert!(
        vm_lck_kb(pid) > 0,
        "VmLck must be non-zero once mlockall ran"
    );
    // Keys still work with every page locked.
    let id = node.create_key(&["--length", "64"]);
    assert_eq!(node.key_bytes(&id).len(), 64);
    stop(&mut child);
}

#[test]
fn required_mlock_refuses_to_start_under_a_finite_limit() {
    if !can_drop_ipc_lock() {
        eprintln!("skipped: cannot drop CAP_IPC_LOCK here (no setpriv)");
        return;
    }
    let node = Node::new_uninit(with_mlock("required"));
    node.init();
    let mut child = spawn_with_memlock(&node, Some("64"), false);
    let code = wait_ready_or_exit(&node, &mut child);
    assert_eq!(
        code,
        Some(EX_CONFIG),
        "must exit 78; log:\n{}",
        node.log_contents()
    );
    let log = node.log_contents();
    assert!(
        log.contains("memory locking is required") && log.contains("LimitMEMLOCK=infinity"),
        "{log}"
    );
}

#[test]
fn auto_mlock_under_a_finite_limit_runs_unlocked_with_one_warning() {
    if !can_drop_ipc_lock() {
        eprintln!("skipped: cannot drop CAP_IPC_LOCK here (no setpriv)");
        return;
    }
    let node = Node::new_uninit(with_mlock("auto"));
    node.init();
    let mark = node.log_contents().len();
    let mut child = spawn_with_memlock(&node, Some("64"), false);
    assert_eq!(wait_ready_or_exit(&node, &mut child), None);
    let s = node.status();
    assert_eq!(s["memory_locked"], json!(false), "{s}");
    assert_eq!(s["core_dumps_disabled"], json!(true), "{s}");
    assert_eq!(vm_lck_kb(child.id()), 0);
    node.create_key(&[]);
    stop(&mut child);
    let log = log_since(&node, mark);
    assert_eq!(
        log.matches("memory is NOT locked").count(),
        1,
        "exactly one warning:\n{log}"
    );
    assert!(log.contains("ulimit -l unlimited"), "{log}");
}

#[test]
fn off_mlock_does_not_lock() {
    let node = Node::new_uninit(with_mlock("off"));
    node.init();
    let mark = node.log_contents().len();
    // Keeps our limit and capabilities: locking would be allowed, but is off.
    let mut child = spawn_with_memlock(&node, None, true);
    assert_eq!(wait_ready_or_exit(&node, &mut child), None);
    assert_eq!(node.status()["memory_locked"], json!(false));
    assert_eq!(vm_lck_kb(child.id()), 0);
    stop(&mut child);
    let log = log_since(&node, mark);
    assert!(!log.contains("memory is NOT locked"), "{log}");
    assert!(log.contains("memory locking is off"), "{log}");
}

#[test]
fn bad_mlock_value_exits_78_naming_the_field() {
    let node = Node::new_uninit(with_mlock("sometimes"));
    for init in [false, true] {
        let mut cmd = Command::new(&binaries().lockboxd);
        if init {
            cmd.arg("init");
        }
        cmd.arg("--config").arg(node.config_path());
        let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
        assert_eq!(
            out.status.code(),
            Some(EX_CONFIG),
            "{}",
            describe_output(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("hardening.mlock"), "{stderr}");
    }
    let unknown = Node::new_uninit(NodeOptions {
        extra_tables: "[hardening]\nswap = false\n".into(),
        ..NodeOptions::default()
    });
    let out = run_with_timeout(
        Command::new(&binaries().lockboxd)
            .arg("--config")
            .arg(unknown.config_path()),
        Duration::from_secs(20),
    );
    assert_eq!(
        out.status.code(),
        Some(EX_CONFIG),
        "{}",
        describe_output(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("swap"));
}

/// An allowed local caller cannot make lockboxd buffer a huge request to a method that takes
/// small fields: the socket's small methods are capped at 1 MiB as the body streams in (the
/// service's own limit is sized for a backup file). Eight `CreateKey` calls carrying a 48 MiB
/// label are cut off, create nothing, audit nothing and leave the daemon's memory where it
/// was; a normal call is answered after them.
#[test]
fn oversized_socket_requests_are_cut_off_without_buffering() {
    let node = Node::keyfile();
    let pid = node.pid().unwrap();
    let audit_before = node.status()["audit_records"].clone();
    let before = lockbox_tests::rss_kib(pid);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = node.socket();
    rt.block_on(async {
        let channel = lockbox_tests::unix_channel(&socket).await;
        for _ in 0..8 {
            let mut client = lockbox_proto::v1::lockbox_client::LockboxClient::new(channel.clone())
                .max_encoding_message_size(64 << 20);
            let request = lockbox_proto::v1::CreateKeyRequest {
                length: 32,
                labels: [("volume".to_string(), "x".repeat(48 << 20))].into(),
                ..Default::default()
            };
            let e = client.create_key(request).await.unwrap_err();
            assert_ne!(e.code(), tonic::Code::Ok, "{e}");
        }
    });
    let after = lockbox_tests::rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "lockboxd grew from {before} KiB to {after} KiB"
    );
    let status = node.status();
    assert_eq!(status["key_count"], json!(0));
    assert_eq!(status["audit_records"], audit_before);
    node.create_key(&[]);
}
