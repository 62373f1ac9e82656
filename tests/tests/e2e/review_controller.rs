//! Adversarial review of the controller and lockboxctl: inputs they took that they must refuse,
//! and refusals that still changed something. Each test names its finding; each failed before
//! its fix (see the commit that fixed it).
//!
//! Controller: a grant naming a revoked node; a node whose name `revoke` cannot take attested
//! and vouched for; a refusal that quoted a whole request into the audit log; a grant reason
//! with escape sequences; key ids parsed for a caller no rule serves; junk signatures and a
//! lockbox "requester" cosigned; config and signing key files read unbounded (a FIFO hung the
//! start), a signing key others may read accepted, unbounded ttls; `audit-verify` making the
//! log it was asked to verify.
//!
//! lockboxctl: files read unbounded or waited on; a passphrase file's first line (or nothing)
//! sent; labels given twice collapsed; flags the controller refuses sent anyway (an audit
//! record each); an unusable `-o` found only after the grant or backup was made; grant fields
//! printed raw to the terminal.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lockbox_proto::v1 as pb;
use lockbox_tests::cluster::{
    Controller, Identity, Pki, TRUST_DOMAIN, lockbox_tls_files, lockboxctl, open_policy,
};
use lockbox_tests::rogue::{Rogue, random_uuid};
use lockbox_tests::{Node, binaries, describe_output, run_with_timeout};

const CINDER: &str = "spiffe://example.org/orchestrator/cinder";

/// `lockbox-controller <args> --config <config>`.
fn controller_cli(config: &Path, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new(&binaries().controller)
            .args(args)
            .arg("--config")
            .arg(config),
        Duration::from_secs(20),
    )
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", describe_output(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "accepted: {}", describe_output(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every record of a stopped controller's audit log, as (action, outcome, detail).
fn audit_records(ctl: &Controller) -> Vec<(String, String, String)> {
    ctl.audit_records()
        .into_iter()
        .map(|(_, action, outcome, detail)| (action, outcome, detail))
        .collect()
}

/// `lockboxctl grant issue` by `id` at `ctl`, `extra` flags after the usual ones.
fn issue(id: &Identity, ctl: &Controller, from: &str, to: &str, extra: &[&str]) -> Output {
    let mut args: Vec<String> = [
        "grant",
        "issue",
        "--key",
        "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60",
        "--from",
        from,
        "--to",
        to,
        "--op",
        "copy",
        "--ttl",
        "5m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(id.ctl_flags(&ctl.url));
    lockboxctl(&args)
}

fn rogue(id: &Identity, name: &str) -> Rogue {
    Rogue::new(
        lockbox_tls::TlsFiles {
            cert: id.cert.clone(),
            key: id.key.clone(),
            ca: id.ca.clone(),
        },
        name,
    )
}

fn grant_request(keys: Vec<String>, reason: &str) -> pb::IssueGrantRequest {
    pb::IssueGrantRequest {
        key_ids: keys,
        source_node: "host-a".into(),
        dest_node: "host-b".into(),
        op: pb::GrantOp::Copy as i32,
        ttl_seconds: 60,
        reason: reason.into(),
    }
}

// ---- controller -------------------------------------------------------------------------

/// Finding 1: `revoke` stopped attestations and vouches, but the controller went on signing
/// grants that move keys to (or from) the revoked node, whose attestation stays valid for up
/// to `attestation_ttl` (24 h by default) and which no verifier checks against revocations.
#[test]
fn a_grant_naming_a_revoked_node_is_refused_at_issue_and_cosign() {
    let pki = Pki::new(TRUST_DOMAIN);
    let c1 = Controller::start(&pki, "ctl-1", &open_policy(), "1h");
    let mut c2 = Controller::start(&pki, "ctl-2", &open_policy(), "1h");
    c2.trust(&[&c1]);
    let cinder = pki.issue("orchestrator", "cinder");

    ok(&controller_cli(
        c1.config_path(),
        &["revoke", "host-b", "--reason", "stolen"],
    ));
    for (from, to) in [("host-a", "host-b"), ("host-b", "host-a")] {
        let err = refused(&issue(&cinder, &c1, from, to, &[]));
        assert!(
            err.contains("host-b was revoked") && err.contains("stolen"),
            "{from} -> {to}: {err}"
        );
    }
    ok(&issue(&cinder, &c1, "host-a", "host-c", &[]));

    // Revoked at the cosigner only: the cosigner refuses.
    ok(&controller_cli(c2.config_path(), &["revoke", "host-c"]));
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.grant");
    ok(&issue(
        &cinder,
        &c1,
        "host-a",
        "host-c",
        &["-o", g.to_str().unwrap()],
    ));
    let mut args: Vec<String> = vec!["grant".into(), "cosign".into(), g.display().to_string()];
    args.extend(cinder.ctl_flags(&c2.url));
    let err = refused(&lockboxctl(&args));
    assert!(err.contains("host-c was revoked"), "{err}");

    // Lifted: granted again.
    ok(&controller_cli(c1.config_path(), &["unrevoke", "host-b"]));
    ok(&issue(&cinder, &c1, "host-a", "host-b", &[]));
}

/// Finding 2: certificates allow node names of any length, `revoke` takes at most 128 bytes:
/// a lockbox named with 129 was attested and vouched for (so its peers helped it unseal) and
/// could never be revoked.
#[test]
fn a_lockbox_whose_name_revoke_cannot_take_gets_no_attestation_or_vouch() {
    let pki = Pki::new(TRUST_DOMAIN);
    let ctl = Controller::start(&pki, "ctl-1", &open_policy(), "1h");
    let long = "h".repeat(129);
    let r = Rogue::new(lockbox_tls_files(&pki, &long), &long);
    let e = r.vouch(&ctl.url).unwrap_err();
    assert_eq!(e.code, tonic::Code::PermissionDenied, "{e}");
    assert!(e.message.contains("only for nodes it can revoke"), "{e}");
    let e = r.attest(&ctl.url).unwrap_err();
    assert_eq!(e.code, tonic::Code::PermissionDenied, "{e}");
    let err = refused(&controller_cli(ctl.config_path(), &["revoke", &long]));
    assert!(err.contains("at most 128"), "{err}");

    // 128 bytes: vouched for, and revocable.
    let max = "h".repeat(128);
    let r = Rogue::new(lockbox_tls_files(&pki, &max), &max);
    r.vouch(&ctl.url).unwrap();
    ok(&controller_cli(ctl.config_path(), &["revoke", &max]));
    assert_eq!(
        r.vouch(&ctl.url).unwrap_err().code,
        tonic::Code::PermissionDenied
    );
}

/// Finding 3: a refused grant request quoted its key id whole, in the reply and in the audit
/// record: one request, one megabyte of audit log (60 a minute per caller within the refusal
/// budget).
#[test]
fn a_refused_grant_request_leaves_a_bounded_audit_record() {
    let pki = Pki::new(TRUST_DOMAIN);
    let mut ctl = Controller::start(&pki, "ctl-1", &open_policy(), "1h");
    let cinder = rogue(&pki.issue("orchestrator", "cinder"), "cinder");
    let huge = "x".repeat(1 << 20);
    let e = cinder
        .issue_grant(&ctl.url, grant_request(vec![huge], "ticket"))
        .unwrap_err();
    ctl.stop();
    let records = audit_records(&ctl);
    for (action, _, detail) in &records {
        assert!(detail.len() <= 1100, "{action}: {} bytes", detail.len());
    }
    let refusal = records
        .iter()
        .find(|(a, o, _)| a == "issue-grant" && o == "refused")
        .expect("the refusal is audited");
    assert!(refusal.2.contains("is not a UUID"), "{}", refusal.2);
    // The reply is short too (before, the 1 MB message did not fit the reply's headers: the
    // caller got an h2 error instead of the reason).
    let start: String = e.message.chars().take(200).collect();
    assert_eq!(e.code, tonic::Code::InvalidArgument, "{start}");
    assert!(e.message.len() < 1024, "reply of {} bytes", e.message.len());
}

/// Finding 4: a grant's reason could carry newlines and terminal escape sequences, signed
/// into the grant that `grant inspect` prints and lockboxes audit.
#[test]
fn a_grant_reason_must_be_one_line_of_text() {
    let pki = Pki::new(TRUST_DOMAIN);
    let ctl = Controller::start(&pki, "ctl-1", &open_policy(), "1h");
    let cinder = rogue(&pki.issue("orchestrator", "cinder"), "cinder");
    for reason in [
        "vol1\nsecond line",
        "\u{1b}]0;pwned\u{7}\u{1b}[2J",
        "tab\there",
    ] {
        let e = cinder
            .issue_grant(&ctl.url, grant_request(vec![random_uuid()], reason))
            .unwrap_err();
        assert_eq!(e.code, tonic::Code::InvalidArgument, "{reason:?}: {e}");
        assert!(e.message.contains("control characters"), "{e}");
    }
    cinder
        .issue_grant(
            &ctl.url,
            grant_request(vec![random_uuid()], "vol-1 ticket #42 (ünïcode ok)"),
        )
        .unwrap();
}

/// Finding 5: key ids were parsed (all of them, up to the request cap) before the policy was
/// asked whether the caller has a rule at all, or may name that many keys.
#[test]
fn the_callers_rule_is_checked_before_key_ids_are_parsed() {
    let pki = Pki::new(TRUST_DOMAIN);
    let policy = format!(
        "[[policy]]\ncaller = \"{CINDER}\"\nops = [\"copy\"]\nmax_ttl = \"15m\"\nmax_keys = 2\n"
    );
    let ctl = Controller::start(&pki, "ctl-1", &policy, "1h");
    let nova = rogue(&pki.issue("orchestrator", "nova"), "nova");
    let e = nova
        .issue_grant(&ctl.url, grant_request(vec!["not-a-uuid".into()], ""))
        .unwrap_err();
    assert!(e.message.contains("no policy rule allows caller"), "{e}");
    let cinder = rogue(&pki.issue("orchestrator", "cinder"), "cinder");
    let keys = vec![random_uuid(), random_uuid(), "not-a-uuid".into()];
    let e = cinder
        .issue_grant(&ctl.url, grant_request(keys, ""))
        .unwrap_err();
    assert!(e.message.contains("exceed max_keys 2"), "{e}");
}

/// Finding 6: a cosign added its signature to whatever signatures came with the grant (a bad
/// one of a controller lockboxes trust, which makes them refuse the grant; two under one key
/// id; a 5 KB key id) and to a body naming a lockbox as its requester, which no IssueGrant
/// serves.
#[test]
fn cosign_refuses_junk_signatures_and_a_requester_no_issue_serves() {
    let pki = Pki::new(TRUST_DOMAIN);
    let c1 = Controller::start(&pki, "ctl-1", &open_policy(), "1h");
    let c3 = Controller::start(&pki, "ctl-3", &open_policy(), "1h");
    let mut c2 = Controller::start(&pki, "ctl-2", &open_policy(), "1h");
    c2.trust(&[&c1, &c3]);
    let cinder = rogue(&pki.issue("orchestrator", "cinder"), "cinder");
    let grant = cinder
        .issue_grant(&c1.url, grant_request(vec![random_uuid()], "t"))
        .unwrap();
    let with = |key_id: &str, sig: Vec<u8>| {
        let mut g = grant.clone();
        g.signatures.push(pb::Signature {
            key_id: key_id.into(),
            signature: sig,
        });
        g
    };
    for (what, g, expect) in [
        (
            "a bad signature of a trusted controller",
            with("ctl-3", vec![7; 64]),
            "bad signature from controller ctl-3",
        ),
        (
            "two signatures under one key id",
            with("ctl-1", vec![7; 64]),
            "two signatures by ctl-1",
        ),
        (
            "a 5 KB key id",
            with(&"k".repeat(5000), vec![7; 64]),
            "key id",
        ),
        ("a 3-byte signature", with("ctl-9", vec![7; 3]), "not 64"),
    ] {
        let e = cinder.cosign_grant(&c2.url, g).unwrap_err();
        assert!(e.message.contains(expect), "{what}: {e}");
    }
    cinder.cosign_grant(&c2.url, grant.clone()).unwrap();

    // A body ctl-1 signed that names a lockbox as requester (a compromised ctl-1).
    let mut body = lockbox_crypto::decode_grant_body(&grant.body).unwrap();
    body.grant_id = lockbox_crypto::random_array::<16>().unwrap().to_vec();
    body.requested_by = "spiffe://example.org/lockbox/host-a".into();
    let bytes = lockbox_crypto::encode_grant_body(&body).unwrap();
    let sig = lockbox_crypto::sign_grant_body(&c1.signing_identity(), "ctl-1", &bytes);
    let forged = pb::SignedGrant {
        body: bytes,
        signatures: vec![sig],
    };
    let e = cinder.cosign_grant(&c2.url, forged).unwrap_err();
    assert!(e.message.contains("orchestrator or admin"), "{e}");
}

fn mkfifo(path: &Path) {
    let out = Command::new("mkfifo").arg(path).output().unwrap();
    assert!(out.status.success(), "mkfifo: {}", describe_output(&out));
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// Finding 7: the config file and the signing key were read whole, whatever they were: a FIFO
/// hung the controller (and every subcommand), a signing key others may read was used, a bad
/// key file exited 1 rather than 78, and an unbounded `attestation_ttl` was taken.
#[test]
fn controller_files_are_read_bounded_and_the_signing_key_kept_private() {
    let pki = Pki::new(TRUST_DOMAIN);
    let mut ctl = Controller::start(&pki, "ctl-1", &open_policy(), "1h");
    ctl.stop();
    let config = ctl.config_path().to_path_buf();
    let text = std::fs::read_to_string(&config).unwrap();
    let key = config.parent().unwrap().join("signing.key");
    let dir = tempfile::tempdir().unwrap();
    let exit = |out: &Output| out.status.code();

    // The signing key readable by others: refused at start and by `show`, naming the field.
    set_mode(&key, 0o644);
    for args in [&["show"][..], &[][..]] {
        let out = controller_cli(&config, args);
        let err = refused(&out);
        assert_eq!(exit(&out), Some(78), "{args:?}: {err}");
        assert!(
            err.contains("signing_key") && err.contains("chmod 600"),
            "{args:?}: {err}"
        );
    }
    set_mode(&key, 0o600);
    ok(&controller_cli(&config, &["show"]));

    // A FIFO in place of the key, and of the config: refused, not waited on.
    let fifo_key = dir.path().join("key.fifo");
    mkfifo(&fifo_key);
    let cfg = dir.path().join("fifo-key.toml");
    std::fs::write(
        &cfg,
        text.replace(&key.display().to_string(), &fifo_key.display().to_string()),
    )
    .unwrap();
    let out = controller_cli(&cfg, &["show"]);
    assert_eq!(exit(&out), Some(78), "{}", describe_output(&out));
    assert!(refused(&out).contains("FIFO"), "{}", describe_output(&out));
    let fifo_cfg = dir.path().join("config.fifo");
    mkfifo(&fifo_cfg);
    let out = controller_cli(&fifo_cfg, &["show"]);
    assert_eq!(exit(&out), Some(78), "{}", describe_output(&out));

    // A config of 2 MiB: refused by its size.
    let big = dir.path().join("big.toml");
    std::fs::write(&big, format!("{text}\n#{}\n", "x".repeat(2 << 20))).unwrap();
    let out = controller_cli(&big, &["show"]);
    assert_eq!(exit(&out), Some(78), "{}", describe_output(&out));
    assert!(
        refused(&out).contains("1048576"),
        "{}",
        describe_output(&out)
    );

    // An attestation that would outlive every cut-off.
    let long = dir.path().join("long.toml");
    std::fs::write(
        &long,
        text.replace(
            "attestation_ttl = \"1h\"",
            "attestation_ttl = \"1000years\"",
        ),
    )
    .unwrap();
    let out = controller_cli(&long, &["show"]);
    assert_eq!(exit(&out), Some(78), "{}", describe_output(&out));
    assert!(
        refused(&out).contains("attestation_ttl"),
        "{}",
        describe_output(&out)
    );
}

/// Finding 8: `audit-verify` of a data dir without an audit log (deleted, or a wrong
/// `data_dir`) made an empty log there and reported "audit log ok: 0 records".
#[test]
fn audit_verify_without_an_audit_log_refuses_and_creates_nothing() {
    let pki = Pki::new(TRUST_DOMAIN);
    let mut ctl = Controller::start(&pki, "ctl-1", &open_policy(), "1h");
    ctl.stop();
    ok(&ctl.audit_verify());
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let text = std::fs::read_to_string(ctl.config_path()).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        text.replace(
            &ctl.data_dir().display().to_string(),
            &missing.display().to_string(),
        ),
    )
    .unwrap();
    let err = refused(&controller_cli(&cfg, &["audit-verify"]));
    assert!(err.contains("no audit log"), "{err}");
    assert!(!missing.exists(), "audit-verify made {}", missing.display());
}

// ---- lockboxctl ---------------------------------------------------------------------------

/// `lockboxctl <args>` under a 2 GB address-space limit: a command that reads a file whole
/// fails (allocation) instead of filling the machine, so the test fails rather than the host.
fn lockboxctl_limited(args: &[&str]) -> Output {
    run_with_timeout(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 2000000 && exec \"$0\" \"$@\"")
            .arg(&binaries().lockboxctl)
            .args(args),
        Duration::from_secs(20),
    )
}

/// Finding 9: grant, backup, identity, recipient and passphrase files were read whole
/// (`/dev/zero` until memory ran out) and FIFOs waited on (a FIFO nobody writes hung the
/// command); a backup's size was checked by `stat`, which says 0 for a device or FIFO.
#[test]
fn lockboxctl_reads_its_files_bounded_and_never_waits_on_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let err = refused(&lockboxctl_limited(&["grant", "inspect", "/dev/zero"]));
    assert!(err.contains("more than 1048576 bytes"), "{err}");
    let fifo = dir.path().join("grant.fifo");
    mkfifo(&fifo);
    let err = refused(&lockboxctl_limited(&[
        "grant",
        "inspect",
        fifo.to_str().unwrap(),
    ]));
    assert!(err.contains("does not start with"), "{err}");

    let id = dir.path().join("r.key");
    ok(&lockboxctl(&[
        "backup".into(),
        "keygen".into(),
        "-o".into(),
        id.display().to_string(),
    ]));
    let err = refused(&lockboxctl_limited(&[
        "backup",
        "restore",
        "/dev/zero",
        "--identity",
        id.to_str().unwrap(),
    ]));
    assert!(
        err.contains("more than 67108864 bytes") && err.contains("nothing imported"),
        "{err}"
    );
    let err = refused(&lockboxctl_limited(&[
        "backup",
        "restore",
        "/dev/zero",
        "--identity",
        "/dev/zero",
    ]));
    assert!(err.contains("more than 65536 bytes"), "{err}");

    let node = Node::keyfile();
    for (file, expect) in [
        (Path::new("/dev/zero"), "more than 65536 bytes"),
        (fifo.as_path(), "is empty"),
    ] {
        let out = run_with_timeout(
            Command::new("sh")
                .arg("-c")
                .arg("ulimit -v 2000000 && exec \"$0\" \"$@\"")
                .arg(&binaries().lockboxctl)
                .arg("--socket")
                .arg(node.socket())
                .args(["unseal", "--passphrase-file"])
                .arg(file),
            Duration::from_secs(20),
        );
        let err = refused(&out);
        assert!(err.contains(expect), "{}: {err}", file.display());
    }
}

/// Finding 10: a passphrase file's first line was sent and the rest ignored (lockboxd `init`
/// takes the whole file, so the two disagree on what one file holds), and an empty file sent
/// an empty passphrase, which lockboxd reads as "none given": `unseal --passphrase-file EMPTY`
/// unsealed through the key file, ignoring the file it was given.
#[test]
fn a_passphrase_file_holds_one_line_and_is_not_empty() {
    let node = Node::keyfile();
    node.ctl_json(&["seal"]);
    let dir = tempfile::tempdir().unwrap();
    for (name, text, expect) in [
        ("empty", "", "is empty"),
        ("newline", "\n", "is empty"),
        (
            "two-lines",
            "first passphrase\nsecond line\n",
            "more than one line",
        ),
    ] {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        let err = node.ctl_err(&["unseal", "--passphrase-file", f.to_str().unwrap()]);
        assert!(err.contains(expect), "{name}: {err}");
        assert_eq!(
            node.status()["sealed"],
            true,
            "{name}: the node was unsealed"
        );
    }
    node.ctl_json(&["unseal"]);
}

fn audit_count(node: &Node, action: &str) -> usize {
    let v = node.ctl_json(&["audit", "tail", "-n", "10000"]);
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == action)
        .count()
}

/// Finding 11: `--label a=1 --label a=2` silently kept one of them (a key was made with
/// `a=2`); `backup export -o` into a missing directory (or onto a directory) sealed and audited
/// the export before finding it could not write it.
#[test]
fn labels_and_outputs_are_checked_before_lockboxd_is_asked() {
    let node = Node::keyfile();
    let before = audit_count(&node, "create");
    let err = node.ctl_err(&["key", "create", "--label", "a=1", "--label", "a=2"]);
    assert!(err.contains("given twice"), "{err}");
    assert_eq!(
        node.ctl_json(&["key", "list"])["keys"],
        serde_json::json!([])
    );
    assert_eq!(
        audit_count(&node, "create"),
        before,
        "refusals reached lockboxd"
    );
    let err = node.ctl_err(&["key", "list", "--label", "a=1", "--label", "a=2"]);
    assert!(err.contains("given twice"), "{err}");

    node.create_key(&["--label", "vol=1"]);
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("r.key");
    node.ctl_json(&["backup", "keygen", "-o", id.to_str().unwrap()]);
    let recipient = format!("{}.pub", id.display());
    let exports = audit_count(&node, "backup-export");
    for out in [
        dir.path().join("no/such/dir/b.backup"),
        dir.path().to_path_buf(),
    ] {
        let err = node.ctl_err(&[
            "backup",
            "export",
            "--recipient",
            &recipient,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(err.contains(out.to_str().unwrap()), "{err}");
    }
    assert_eq!(
        audit_count(&node, "backup-export"),
        exports,
        "an export was made that could not be written"
    );
    let b = dir.path().join("b.backup");
    node.ctl_json(&[
        "backup",
        "export",
        "--recipient",
        &recipient,
        "-o",
        b.to_str().unwrap(),
    ]);
    // Only the backup, its identity and recipient: no temporary file left.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

/// Finding 12: `grant issue` sent flags the controller refuses (each refusal an audit record
/// there) and wrote `-o` only after the grant was issued (a missing directory lost an issued,
/// audited grant); `grant inspect --trust-key` took two keys under one id, keeping the last.
#[test]
fn grant_flags_and_output_are_checked_before_the_controller_is_asked() {
    let pki = Pki::new(TRUST_DOMAIN);
    let mut ctl = Controller::start(&pki, "ctl-1", &open_policy(), "1h");
    let cinder = pki.issue("orchestrator", "cinder");
    let dir = tempfile::tempdir().unwrap();
    let lost = dir.path().join("no/such/dir/g.grant");
    let good_key = "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60";
    let whole = dir.path().display().to_string();
    let lost = lost.display().to_string();
    // (key, from, to, extra flags, what the refusal says)
    let cases: Vec<(&str, &str, &str, Vec<&str>, &str)> = vec![
        (
            "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f6",
            "host-a",
            "host-b",
            vec![],
            "is not a UUID",
        ),
        (good_key, "host-b", "host-b", vec![], "same node"),
        (good_key, "host-a", "host/../b", vec![], "node name"),
        (
            good_key,
            "host-a",
            "host-b",
            vec!["--reason", "two\nlines"],
            "control characters",
        ),
        (
            good_key,
            "host-a",
            "host-b",
            vec!["-o", &lost],
            "nothing was asked yet",
        ),
        (
            good_key,
            "host-a",
            "host-b",
            vec!["-o", &whole],
            "is a directory",
        ),
    ];
    for (key, from, to, extra, expect) in &cases {
        let mut args: Vec<String> = [
            "grant", "issue", "--key", key, "--from", from, "--to", to, "--op", "copy",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(cinder.ctl_flags(&ctl.url));
        let err = refused(&lockboxctl(&args));
        assert!(err.contains(expect), "{key} {from} {to} {extra:?}: {err}");
    }
    let g = dir.path().join("g.grant");
    ok(&issue(
        &cinder,
        &ctl,
        "host-a",
        "host-b",
        &["-o", g.to_str().unwrap()],
    ));
    let key = ctl.public_key();
    let err = refused(&lockboxctl(&[
        "grant".into(),
        "inspect".into(),
        g.display().to_string(),
        "--trust-key".into(),
        format!("ctl-1={key}"),
        "--trust-key".into(),
        format!("ctl-1={key}"),
    ]));
    assert!(err.contains("given twice"), "{err}");
    ctl.stop();
    let records = audit_records(&ctl);
    let grants: Vec<_> = records
        .iter()
        .filter(|(a, _, _)| a == "issue-grant")
        .collect();
    assert_eq!(
        grants.len(),
        1,
        "only the good request reached the controller: {grants:?}"
    );
}

/// Finding 13: `grant inspect` printed what a grant file says (unverified: inspecting is how
/// one looks at a grant before trusting it) raw, so a crafted reason, key id or signer id
/// drove the terminal of whoever inspected it.
#[test]
fn grant_inspect_escapes_what_a_grant_file_says() {
    let signer = lockbox_crypto::SigningIdentity::generate().unwrap();
    let body = pb::GrantBody {
        grant_id: vec![1; 16],
        key_ids: vec!["k\u{1b}[31m".into()],
        source_node: "host-a\r".into(),
        dest_node: "host-b".into(),
        op: pb::GrantOp::Copy as i32,
        not_before_unix_ms: 1,
        expires_unix_ms: 2,
        requested_by: CINDER.into(),
        issuer_key_id: "ctl-1".into(),
        reason: "\u{1b}]0;owned\u{7}\u{1b}[2J".into(),
        trust_domain: TRUST_DOMAIN.into(),
    };
    let bytes = lockbox_crypto::encode_grant_body(&body).unwrap();
    let mut sig = lockbox_crypto::sign_grant_body(&signer, "ctl-1", &bytes);
    sig.key_id = "ctl-\u{1b}[1m".into();
    let text = lockbox_crypto::grant_to_text(&pb::SignedGrant {
        body: bytes,
        signatures: vec![sig],
    });
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("crafted.grant");
    std::fs::write(&f, text).unwrap();
    let out = lockboxctl(&["grant".into(), "inspect".into(), f.display().to_string()]);
    let shown = ok(&out);
    assert!(
        !shown.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters: {shown:?}"
    );
    assert!(shown.contains("\\u{1b}]0;owned"), "{shown}");
}

/// Finding 14: `lockboxd init --passphrase-file` took the whole file (inner newlines included,
/// unbounded, waiting on a FIFO), so a two-line file set a passphrase that neither `lockboxctl
/// unseal` (one line per file) nor a terminal prompt can give: the node opened only with its
/// recovery slot, if it had one. init now reads the file as lockboxctl does (one rule,
/// `lockbox_crypto::passphrase_line`), bounded, without waiting on a FIFO nobody writes to.
#[test]
fn lockboxd_init_refuses_a_passphrase_file_lockboxctl_cannot_send() {
    let node = Node::new_uninit(lockbox_tests::NodeOptions::passphrase(
        "first passphrase\nsecond line\n",
    ));
    let out = node.init_output();
    let err = refused(&out);
    assert!(err.contains("more than one line"), "{err}");
    assert!(!node.keyring_path().exists(), "init made a keyring");

    let file = node.passphrase_file();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &file).unwrap();
    let err = refused(&node.init_output());
    assert!(err.contains("more than 65536 bytes"), "{err}");
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    let err = refused(&node.init_output());
    assert!(err.contains("is empty"), "{err}");
    assert!(!node.keyring_path().exists(), "init made a keyring");
}
