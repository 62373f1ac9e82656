//! The controller over real mTLS on 127.0.0.1, with certificates made at run time: who may
//! attest and who may issue, policy refusals that name the rule, M-of-N grants checked by a
//! real lockboxd, and attestation expiry.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use lockbox_tests::cluster::{Controller, Pki, TRUST_DOMAIN, lockboxctl};
use lockbox_tests::{Node, NodeOptions, describe_output};

const CINDER: &str = "spiffe://example.org/orchestrator/cinder";

fn policy() -> String {
    format!(
        "[[policy]]\ncaller = \"{CINDER}\"\nops = [\"copy\", \"move\"]\nfrom = [\"host-*\"]\nto = [\"*\"]\nmax_ttl = \"15m\"\nmax_keys = 100\n"
    )
}

fn args(v: &[&str], extra: Vec<String>) -> Vec<String> {
    v.iter().map(|s| s.to_string()).chain(extra).collect()
}

fn issue(
    id: &lockbox_tests::cluster::Identity,
    ctl: &Controller,
    key: &str,
    op: &str,
    out: &std::path::Path,
) -> std::process::Output {
    lockboxctl(&args(
        &[
            "grant",
            "issue",
            "--key",
            key,
            "--from",
            "host-a",
            "--to",
            "host-b",
            "--op",
            op,
            "--ttl",
            "10m",
            "--reason",
            "test",
            "-o",
            out.to_str().unwrap(),
        ],
        id.ctl_flags(&ctl.url),
    ))
}

fn lockbox_with_controllers(
    pki: &Pki,
    node: &str,
    controllers: &[&Controller],
    threshold: usize,
) -> Node {
    let id = pki.issue("lockbox", node);
    let mut opts = NodeOptions {
        node_id: node.into(),
        ..NodeOptions::default()
    };
    opts.extra_top = format!("grant_threshold = {threshold}\n");
    opts.extra_tables = id.tls_table();
    for c in controllers {
        opts.extra_tables.push('\n');
        opts.extra_tables.push_str(&c.block);
    }
    Node::start(opts)
}

fn wait_for_state(node: &Node, want: &str, within: Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let s = node.status();
        if s["attestation_state"] == want {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attestation never became {want}: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn orchestrator_issues_within_policy_and_is_refused_outside_it() {
    let pki = Pki::new(TRUST_DOMAIN);
    let ctl = Controller::start(&pki, "ctl-1", &policy(), "24h");
    let cinder = pki.issue("orchestrator", "cinder");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.grant");
    let key = "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60";

    let out = issue(&cinder, &ctl, key, "copy", &file);
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("-----BEGIN LOCKBOX GRANT-----"), "{text}");

    // Inspect with the controller's key: the signature is valid and the fields are there.
    let out = lockboxctl(&args(
        &[
            "--json",
            "grant",
            "inspect",
            file.to_str().unwrap(),
            "--trust-key",
        ],
        vec![format!("ctl-1={}", ctl.public_key())],
    ));
    assert!(out.status.success(), "{}", describe_output(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["op"], "copy");
    assert_eq!(v["source_node"], "host-a");
    assert_eq!(v["key_ids"][0], key);
    assert_eq!(v["requested_by"], CINDER);
    assert_eq!(v["signatures"][0]["valid"], true, "{v}");

    // Outside the policy: refused, and the refusal names the rule and the reason.
    let out = issue(&cinder, &ctl, key, "replicate", &file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy[0]") && err.contains("op replicate"),
        "{err}"
    );

    // An unknown caller has no rule at all.
    let nova = pki.issue("orchestrator", "nova");
    let out = issue(&nova, &ctl, key, "copy", &file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no policy rule allows caller"),
        "{err}"
    );

    // The controller's own audit log recorded the grant and both refusals.
    drop(out);
    let mut ctl = ctl;
    ctl.stop();
    let out = ctl.audit_verify();
    assert!(out.status.success(), "{}", describe_output(&out));
}

#[test]
fn a_lockbox_identity_may_attest_but_not_issue_grants() {
    let pki = Pki::new(TRUST_DOMAIN);
    let ctl = Controller::start(&pki, "ctl-1", &policy(), "24h");
    let node = lockbox_with_controllers(&pki, "host-a", &[&ctl], 1);
    let s = wait_for_state(&node, "valid", Duration::from_secs(20));
    assert!(
        s["attestation_expires_unix_ms"].as_u64().unwrap() > 0,
        "{s}"
    );

    let host = pki.issue("lockbox", "host-x");
    let dir = tempfile::tempdir().unwrap();
    let out = issue(
        &host,
        &ctl,
        "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60",
        "copy",
        &dir.path().join("g"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lockbox identities may not issue grants"),
        "{err}"
    );
}

#[test]
fn certificates_from_another_ca_fail_the_handshake() {
    let pki = Pki::new(TRUST_DOMAIN);
    let ctl = Controller::start(&pki, "ctl-1", &policy(), "24h");
    let rogue_pki = Pki::new(TRUST_DOMAIN);
    let rogue = rogue_pki.issue("orchestrator", "cinder");
    let dir = tempfile::tempdir().unwrap();
    // A client certificate from another CA (same name, same trust domain) is refused.
    let out = issue(
        &rogue,
        &ctl,
        "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60",
        "copy",
        &dir.path().join("g"),
    );
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(!dir.path().join("g").exists());
    // And a client trusting only the other CA refuses the controller.
    let mut mixed = pki.issue("orchestrator", "cinder");
    mixed.ca = rogue.ca.clone();
    let out = issue(
        &mixed,
        &ctl,
        "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60",
        "copy",
        &dir.path().join("g"),
    );
    assert!(!out.status.success(), "{}", describe_output(&out));
}

#[test]
fn two_of_three_controllers_must_sign() {
    let pki = Pki::new(TRUST_DOMAIN);
    let c1 = Controller::start(&pki, "ctl-1", &policy(), "24h");
    let mut c2 = Controller::start(&pki, "ctl-2", &policy(), "24h");
    let mut c3 = Controller::start(&pki, "ctl-3", &policy(), "24h");
    let node = lockbox_with_controllers(&pki, "host-a", &[&c1, &c2, &c3], 2);
    let key = node.create_key(&[]);
    let cinder = pki.issue("orchestrator", "cinder");
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.grant");
    let out = issue(&cinder, &c1, &key, "move", &one);
    assert!(out.status.success(), "{}", describe_output(&out));

    // One signature of two required: refused, saying so.
    let err = node.ctl_err(&["grant", "verify", one.to_str().unwrap()]);
    assert!(err.contains("threshold not met"), "{err}");

    // The same controller signing twice still counts once.
    let twice = dir.path().join("twice.grant");
    let mut g = lockbox_crypto::grant_from_text(&std::fs::read_to_string(&one).unwrap()).unwrap();
    let sig = g.signatures[0].clone();
    g.signatures.push(sig);
    std::fs::write(&twice, lockbox_crypto::grant_to_text(&g)).unwrap();
    let err = node.ctl_err(&["grant", "verify", twice.to_str().unwrap()]);
    assert!(err.contains("threshold not met"), "{err}");
    // And the controller refuses to cosign its own grant again.
    let out = lockboxctl(&args(
        &["grant", "cosign", one.to_str().unwrap()],
        cinder.ctl_flags(&c1.url),
    ));
    assert!(!out.status.success(), "{}", describe_output(&out));

    // A controller cosigns only grants of the controllers it trusts: ctl-2 does not know
    // ctl-1 yet.
    let two = dir.path().join("two.grant");
    let cosign_at = |c: &Controller, from: &Path, to: &Path| {
        lockboxctl(&args(
            &[
                "grant",
                "cosign",
                from.to_str().unwrap(),
                "-o",
                to.to_str().unwrap(),
            ],
            cinder.ctl_flags(&c.url),
        ))
    };
    let out = cosign_at(&c2, &one, &two);
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[[controllers]]"),
        "{}",
        describe_output(&out)
    );
    c2.trust(&[&c1]);
    c3.trust(&[&c1]);

    // A body nobody issued (an orchestrator's own, unsigned or signed by a key no controller
    // has) is not cosigned, whatever it says.
    let mut forged =
        lockbox_crypto::grant_from_text(&std::fs::read_to_string(&one).unwrap()).unwrap();
    let mut body = lockbox_crypto::decode_grant_body(&forged.body).unwrap();
    body.grant_id = vec![9; 16];
    body.requested_by = "spiffe://example.org/admin/mallory".into();
    forged.body = lockbox_crypto::encode_grant_body(&body).unwrap();
    let forged_path = dir.path().join("forged.grant");
    for signatures in [Vec::new(), forged.signatures.clone()] {
        forged.signatures = signatures;
        std::fs::write(&forged_path, lockbox_crypto::grant_to_text(&forged)).unwrap();
        let out = cosign_at(&c2, &forged_path, &two);
        assert!(!out.status.success(), "{}", describe_output(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no valid signature of a controller"),
            "{}",
            describe_output(&out)
        );
    }

    // A cosign by a second controller makes it acceptable.
    let out = lockboxctl(&args(
        &[
            "grant",
            "cosign",
            one.to_str().unwrap(),
            "-o",
            two.to_str().unwrap(),
        ],
        cinder.ctl_flags(&c2.url),
    ));
    assert!(out.status.success(), "{}", describe_output(&out));
    let v = node.ctl_json(&["grant", "verify", two.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v}");
    let mut signers: Vec<String> = v["valid_signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    signers.sort();
    assert_eq!(signers, ["ctl-1", "ctl-2"]);

    // A grant for a key this node does not hold is refused as the source.
    let other = dir.path().join("other.grant");
    let out = issue(
        &cinder,
        &c1,
        "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60",
        "copy",
        &other,
    );
    assert!(out.status.success(), "{}", describe_output(&out));
    let out2 = lockboxctl(&args(
        &[
            "grant",
            "cosign",
            other.to_str().unwrap(),
            "-o",
            other.to_str().unwrap(),
        ],
        cinder.ctl_flags(&c3.url),
    ));
    assert!(out2.status.success(), "{}", describe_output(&out2));
    let err = node.ctl_err(&["grant", "verify", other.to_str().unwrap()]);
    assert!(err.contains("unknown key"), "{err}");
}

#[test]
fn an_expired_attestation_is_reported_in_status() {
    let pki = Pki::new(TRUST_DOMAIN);
    let mut ctl = Controller::start(&pki, "ctl-1", &policy(), "4s");
    let node = lockbox_with_controllers(&pki, "host-a", &[&ctl], 1);
    let s = wait_for_state(&node, "valid", Duration::from_secs(20));
    let first_expiry = s["attestation_expires_unix_ms"].as_u64().unwrap();
    // Renewed at half-life while the controller is up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = node.status();
        if s["attestation_expires_unix_ms"].as_u64().unwrap() > first_expiry {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never renewed: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Controller gone: the attestation runs out and status says so, with the reason.
    ctl.stop();
    let s = wait_for_state(&node, "expired", Duration::from_secs(15));
    assert!(!s["attestation_error"].as_str().unwrap().is_empty(), "{s}");
    // Key operations keep working through the outage.
    let key = node.create_key(&[]);
    assert_eq!(node.key_bytes(&key).len(), 32);
}

/// The controller's grant methods are capped, as the request streams in, at what its policy
/// could allow (the most keys a rule allows, each id at its bound): eight `IssueGrant` and
/// `CosignGrant` calls of 48 MiB from an orchestrator are cut off and leave the controller's
/// memory where it was; a grant asked for normally is issued after them.
#[test]
fn oversized_grant_requests_are_cut_off_without_buffering() {
    let pki = Pki::new(TRUST_DOMAIN);
    let ctl = Controller::start(&pki, "ctl-1", &policy(), "1h");
    let cinder = pki.issue("orchestrator", "cinder");
    let rogue = lockbox_tests::rogue::Rogue::new(
        lockbox_tls::TlsFiles {
            cert: cinder.cert.clone(),
            key: cinder.key.clone(),
            ca: cinder.ca.clone(),
        },
        "cinder",
    );
    let pid = ctl.pid().unwrap();
    let before = lockbox_tests::rss_kib(pid);
    for path in [
        "/lockbox.v1.Controller/IssueGrant",
        "/lockbox.v1.Controller/CosignGrant",
    ]
    .iter()
    .cycle()
    .take(8)
    {
        let e = rogue
            .oversized_call(
                &ctl.url,
                lockbox_tls::Expect::role(lockbox_tls::Role::Controller),
                path,
                48 << 20,
            )
            .unwrap_err();
        assert_ne!(e.code, tonic::Code::Ok, "{e}");
    }
    let after = lockbox_tests::rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "the controller grew from {before} KiB to {after} KiB"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = issue(
        &cinder,
        &ctl,
        "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60",
        "copy",
        &dir.path().join("g"),
    );
    assert!(out.status.success(), "{}", describe_output(&out));
}
