//! Config errors exit 78 naming the field; `init` never clobbers an initialized data dir.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use lockbox_tests::{Node, NodeOptions, binaries, describe_output, run_with_timeout};
use serde_json::json;

/// EX_CONFIG from sysexits.h.
const EX_CONFIG: i32 = 78;

/// Runs `lockboxd [init] --config F` on `text` and asserts exit 78 with `field` named on stderr.
fn assert_bad_config(text: &str, field: &str) {
    let node = Node::new_uninit(NodeOptions::default());
    std::fs::write(node.config_path(), text).unwrap();
    for init in [false, true] {
        let mut cmd = Command::new(&binaries().lockboxd);
        if init {
            cmd.arg("init");
        }
        cmd.arg("--config").arg(node.config_path());
        let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
        let what = if init { "lockboxd init" } else { "lockboxd" };
        assert_eq!(
            out.status.code(),
            Some(EX_CONFIG),
            "{what} on a bad config must exit {EX_CONFIG}:\n{}\nconfig:\n{text}",
            describe_output(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(field),
            "{what}: the error must name `{field}`: {stderr}"
        );
    }
    assert!(
        !node.data_dir().join("keyring").exists(),
        "a bad config must not initialize anything"
    );
}

fn good_config() -> String {
    Node::new_uninit(NodeOptions::default()).config_text()
}

#[test]
fn good_config_is_accepted() {
    // The baseline the bad-config tests edit really does work.
    let node = Node::keyfile();
    assert_eq!(node.status()["sealed"], json!(false));
}

#[test]
fn unknown_top_level_field_exits_78_naming_it() {
    let text = good_config().replacen("version = 1\n", "version = 1\nfrobnicate_level = 3\n", 1);
    assert_bad_config(&text, "frobnicate_level");
}

#[test]
fn unknown_field_in_a_table_exits_78_naming_it() {
    let text = good_config().replacen(
        "method = \"keyfile\"\n",
        "method = \"keyfile\"\nkeyfile_perms = 420\n",
        1,
    );
    assert_bad_config(&text, "keyfile_perms");
}

#[test]
fn missing_node_id_exits_78_naming_it() {
    let text: String = good_config()
        .lines()
        .filter(|l| !l.starts_with("node_id"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!text.contains("node_id"));
    assert_bad_config(&text, "node_id");
}

#[test]
fn bad_clone_policy_value_exits_78_naming_it() {
    let text = good_config().replace(
        "clone_policy = \"same-key\"",
        "clone_policy = \"sometimes\"",
    );
    assert!(text.contains("sometimes"));
    assert_bad_config(&text, "clone_policy");
}

#[test]
fn init_twice_refuses_and_changes_nothing() {
    let mut node = Node::keyfile();
    let id = node.create_key(&["--length", "64"]);
    let bytes = node.key_bytes(&id);
    node.stop();
    let keyring = std::fs::read(node.keyring_path()).unwrap();
    let keyfile = std::fs::read(node.keyfile_path()).unwrap();

    let out = node.init_output();
    assert!(
        !out.status.success(),
        "a second init must fail:\n{}",
        describe_output(&out)
    );
    assert!(!out.stderr.is_empty(), "a refused init says why");
    assert_eq!(std::fs::read(node.keyring_path()).unwrap(), keyring);
    assert_eq!(std::fs::read(node.keyfile_path()).unwrap(), keyfile);

    node.spawn_ready();
    assert_eq!(node.key_bytes(&id), bytes);
    assert_eq!(node.status()["key_count"], json!(1));
}

#[test]
fn init_twice_with_another_passphrase_keeps_the_first() {
    let mut node = Node::start(NodeOptions::passphrase("first passphrase"));
    node.unseal();
    let id = node.create_key(&[]);
    let bytes = node.key_bytes(&id);
    node.stop();

    std::fs::write(node.passphrase_file(), "second passphrase").unwrap();
    let out = node.init_output();
    assert!(
        !out.status.success(),
        "a second init must fail:\n{}",
        describe_output(&out)
    );
    node.spawn_ready();
    let pf = node.passphrase_file();
    let err = node.ctl_err(&["unseal", "--passphrase-file", pf.to_str().unwrap()]);
    assert!(err.contains("wrong unseal secret"), "{err}");
    std::fs::write(node.passphrase_file(), "first passphrase").unwrap();
    node.unseal();
    assert_eq!(node.key_bytes(&id), bytes);
}

#[test]
fn sigterm_exits_cleanly() {
    let mut node = Node::keyfile();
    node.create_key(&[]);
    node.stop();
    let mut sealed = Node::start(NodeOptions::passphrase("a long enough passphrase"));
    sealed.stop();
}
