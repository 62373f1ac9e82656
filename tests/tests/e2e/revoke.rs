//! Revoking a node at the controller (DESIGN.md §5.5): a real `lockbox-controller` process over
//! real mTLS with certificates made at run time. A lockbox identity gets a vouch that verifies;
//! `lockbox-controller revoke` (controller running) makes the controller refuse that node's
//! vouches and attestations by name, without a restart, and puts it on the signed revocation
//! list; `unrevoke` restores it; a revocation made while the controller is stopped holds at its
//! next start; every change is in the controller's audit log exactly once and `audit-verify`
//! passes.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::time::Duration;

use lockbox_crypto::{
    TrustedControllers, VouchContext, decode_public_key, verify_revocations, verify_vouch,
};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::controller_client::ControllerClient;
use lockbox_tests::cluster::{Controller, Pki, TRUST_DOMAIN, lockbox_tls_files};
use lockbox_tests::rogue::Rogue;
use lockbox_tests::{binaries, describe_output, run_with_timeout};
use lockbox_tls::{ClientTls, Expect, Role, TlsFiles};

/// A client of the controller's API with one TLS identity.
struct Client {
    rt: tokio::runtime::Runtime,
    tls: TlsFiles,
}

impl Client {
    fn new(tls: TlsFiles) -> Client {
        lockbox_tls::install_default_provider();
        // A worker thread of its own, so that a dropped channel's connection is closed at once
        // (a current-thread runtime would leave it open until the controller's drain timeout).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Client { rt, tls }
    }

    fn controller(&self, url: &str) -> ControllerClient<tonic::transport::Channel> {
        self.rt.block_on(async {
            let tls = ClientTls::load(&self.tls).unwrap();
            ControllerClient::new(
                tls.connect(url, Expect::role(Role::Controller))
                    .await
                    .unwrap(),
            )
        })
    }

    fn vouch(&self, url: &str) -> Result<pb::SignedVouch, tonic::Status> {
        let mut c = self.controller(url);
        self.rt
            .block_on(c.vouch(pb::VouchRequest {}))
            .map(tonic::Response::into_inner)
    }

    fn revocations(&self, url: &str) -> Result<pb::SignedRevocations, tonic::Status> {
        let mut c = self.controller(url);
        self.rt
            .block_on(c.revocations(pb::RevocationsRequest {}))
            .map(tonic::Response::into_inner)
    }

    /// SHA-256 of this identity's certificate SPKI: what a vouch for it must name.
    fn spki(&self) -> [u8; 32] {
        lockbox_tls::load_own_cert(&self.tls).unwrap().1
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn trusted(ctl: &Controller) -> TrustedControllers {
    let mut t = TrustedControllers::new();
    t.insert(
        ctl.key_id.clone(),
        decode_public_key(&ctl.public_key()).unwrap(),
    );
    t
}

/// `lockbox-controller <args> --config <the controller's config>`.
fn controller_cli(ctl: &Controller, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new(&binaries().controller)
            .args(args)
            .arg("--config")
            .arg(ctl.config_path()),
        Duration::from_secs(30),
    )
}

fn count(records: &[(String, String, String, String)], action: &str, detail: &str) -> usize {
    records
        .iter()
        .filter(|(_, a, _, d)| a == action && d.contains(detail))
        .count()
}

fn assert_ok(out: &Output) -> (String, String) {
    assert!(out.status.success(), "{}", describe_output(out));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_revoked_node_gets_no_vouch_and_no_attestation_until_unrevoked() {
    let pki = Pki::new(TRUST_DOMAIN);
    let mut ctl = Controller::start(&pki, "ctl-1", "", "1h");
    let trusted = trusted(&ctl);
    let host_a = Client::new(lockbox_tls_files(&pki, "host-a"));
    let host_b = Client::new(lockbox_tls_files(&pki, "host-b"));
    let spki_a = host_a.spki();

    // A vouch for the caller, its TLS key, for vouch_ttl_secs (default 300 s).
    let v = host_a.vouch(&ctl.url).unwrap();
    let ctx = VouchContext {
        now_unix_ms: now_ms(),
        skew_ms: 5_000,
        threshold: 1,
        expected_node: "host-a",
        peer_tls_spki_sha256: &spki_a,
    };
    let verified = verify_vouch(&v, &trusted, &ctx).unwrap();
    assert_eq!(verified.node, "host-a");
    assert_eq!(verified.trust_domain, TRUST_DOMAIN);
    assert_eq!(verified.valid_signers, ["ctl-1"]);
    assert_eq!(
        verified.expires_unix_ms - verified.not_before_unix_ms,
        300_000
    );
    // It is host-a's, not host-b's.
    let spki_b = host_b.spki();
    let as_b = VouchContext {
        expected_node: "host-b",
        peer_tls_spki_sha256: &spki_b,
        ..ctx
    };
    assert_eq!(
        verify_vouch(&v, &trusted, &as_b).unwrap_err().code(),
        "wrong_node"
    );
    // Only lockbox identities get vouches or the list.
    let cinder = pki.issue("orchestrator", "cinder");
    let cinder = Client::new(TlsFiles {
        cert: cinder.cert,
        key: cinder.key,
        ca: cinder.ca,
    });
    let e = cinder.vouch(&ctl.url).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("only lockbox identities"), "{e:?}");
    assert_eq!(
        cinder.revocations(&ctl.url).unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    // The signed list is empty.
    let list = verify_revocations(&host_b.revocations(&ctl.url).unwrap(), &trusted).unwrap();
    assert_eq!(list.issuer_key_id, "ctl-1");
    assert!(list.revoked.is_empty());

    // Attested before the revocation.
    let rogue_a = Rogue::new(lockbox_tls_files(&pki, "host-a"), "host-a");
    let first = rogue_a.attest(&ctl.url).unwrap();
    // The same request again at once: the attestation already signed (one signature and one
    // audit record a minute for a node asking in a loop).
    assert_eq!(rogue_a.attest(&ctl.url).unwrap(), first);

    // Revoke while the controller runs: it records the change when it reads it.
    let (out, err) = assert_ok(&controller_cli(
        &ctl,
        &["revoke", "host-a", "--reason", "stolen from rack 4"],
    ));
    assert!(out.contains("node host-a revoked"), "{out}");
    assert!(err.contains("the controller is running"), "{err}");
    let (out, _) = assert_ok(&controller_cli(&ctl, &["revoke", "host-a"]));
    assert!(
        out.contains("node host-a is already revoked") && out.contains("nothing changed"),
        "{out}"
    );
    // Bad names change nothing.
    let out = controller_cli(&ctl, &["revoke", "host a"]);
    assert!(!out.status.success(), "{}", describe_output(&out));

    // Refused by name, without a restart: vouches and attestations.
    let e = host_a.vouch(&ctl.url).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("node host-a was revoked at")
            && e.message().contains("by this controller")
            && e.message().contains("stolen from rack 4"),
        "{e:?}"
    );
    let e = rogue_a.attest(&ctl.url).unwrap_err();
    assert_eq!(e.code, tonic::Code::PermissionDenied, "{e}");
    assert!(e.message.contains("node host-a was revoked at"), "{e}");
    // Others are not affected; asked again at once, the same vouch is served again (one
    // signature and one audit record per 30 s, not per request).
    let first = host_b.vouch(&ctl.url).unwrap();
    assert_eq!(host_b.vouch(&ctl.url).unwrap(), first);

    // The signed list names it, as `revocations --json` does.
    let list = verify_revocations(&host_b.revocations(&ctl.url).unwrap(), &trusted).unwrap();
    let r = list.find("host-a").unwrap();
    assert_eq!(r.reason, "stolen from rack 4");
    assert!(r.revoked_unix_ms <= list.issued_unix_ms);
    assert_eq!(list.revoked.len(), 1);
    let (out, _) = assert_ok(&controller_cli(&ctl, &["revocations", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["revoked"][0]["node"], "host-a", "{v}");
    assert_eq!(v["revoked"][0]["reason"], "stolen from rack 4", "{v}");
    assert_eq!(v["revoked"][0]["revoked_unix_ms"], r.revoked_unix_ms, "{v}");
    assert_eq!(
        v["changes_not_yet_audited"], 0,
        "recorded at the vouch: {v}"
    );

    // Unrevoke: help and attestations again.
    let (out, _) = assert_ok(&controller_cli(&ctl, &["unrevoke", "host-a"]));
    assert!(out.contains("node host-a unrevoked"), "{out}");
    let v = host_a.vouch(&ctl.url).unwrap();
    verify_vouch(
        &v,
        &trusted,
        &VouchContext {
            now_unix_ms: now_ms(),
            ..ctx
        },
    )
    .unwrap();
    rogue_a.attest(&ctl.url).unwrap();
    assert!(
        verify_revocations(&host_b.revocations(&ctl.url).unwrap(), &trusted)
            .unwrap()
            .revoked
            .is_empty()
    );

    // Revoked while the controller is stopped: the command records it, and it holds at the
    // next start.
    ctl.stop();
    let (_, err) = assert_ok(&controller_cli(
        &ctl,
        &["revoke", "host-b", "--reason", "rma"],
    ));
    assert!(err.contains("recorded in the audit log"), "{err}");
    ctl.spawn();
    let e = host_b.vouch(&ctl.url).unwrap_err();
    assert!(e.message().contains("node host-b was revoked at"), "{e:?}");
    host_a.vouch(&ctl.url).unwrap();
    ctl.stop();

    // The audit log is intact and names every change exactly once, and the refusals.
    let out = ctl.audit_verify();
    assert!(out.status.success(), "{}", describe_output(&out));
    let records = ctl.audit_records();
    assert_eq!(
        count(&records, "revoke", "node host-a revoked at"),
        1,
        "{records:#?}"
    );
    assert_eq!(
        count(&records, "unrevoke", "node host-a unrevoked at"),
        1,
        "{records:#?}"
    );
    assert_eq!(
        count(&records, "revoke", "node host-b revoked at"),
        1,
        "{records:#?}"
    );
    let revoke_a = records
        .iter()
        .find(|(_, a, _, d)| a == "revoke" && d.contains("host-a"))
        .unwrap();
    assert!(revoke_a.0.starts_with("uid:"), "{revoke_a:?}");
    assert!(revoke_a.3.contains("stolen from rack 4"), "{revoke_a:?}");
    let refused = |action: &str, node: &str| {
        records
            .iter()
            .filter(|(actor, a, o, d)| {
                a == action
                    && o == "refused"
                    && actor.ends_with(&format!("/lockbox/{node}"))
                    && d.contains("was revoked at")
            })
            .count()
    };
    assert_eq!(refused("vouch", "host-a"), 1);
    assert_eq!(refused("attest", "host-a"), 1);
    assert_eq!(refused("vouch", "host-b"), 1);
    assert!(count(&records, "vouch", "node host-a tls-spki") >= 2);
    assert_eq!(count(&records, "revocations-changed", ""), 0);
}

#[test]
fn a_damaged_revocation_list_stops_the_controller_naming_it() {
    let pki = Pki::new(TRUST_DOMAIN);
    let mut ctl = Controller::start(&pki, "ctl-1", "", "1h");
    ctl.stop();
    let path = ctl.data_dir().join("revoked");
    std::fs::write(&path, "lockbox-controller revoked 1\nid nothex\n").unwrap();
    let out = run_with_timeout(
        Command::new(&binaries().controller)
            .arg("--config")
            .arg(ctl.config_path()),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("line 2"),
        "{err}"
    );
    // The CLI refuses to change it too, naming it.
    let out = controller_cli(&ctl, &["revoke", "host-a"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&path.display().to_string()),
        "{}",
        describe_output(&out)
    );
}

/// An identity asking a controller for what it may not have, in a loop, gets every refusal but
/// cannot grow the audit log at request rate: 60 refusals a minute are recorded one by one,
/// then one record says the rest are only counted.
#[test]
fn a_caller_refused_in_a_loop_is_audited_up_to_a_budget() {
    let pki = Pki::new(TRUST_DOMAIN);
    let mut ctl = Controller::start(&pki, "ctl-1", "", "1h");
    let cinder = pki.issue("orchestrator", "cinder");
    let cinder = Client::new(TlsFiles {
        cert: cinder.cert,
        key: cinder.key,
        ca: cinder.ca,
    });
    for _ in 0..75 {
        let e = cinder.vouch(&ctl.url).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }
    ctl.stop();
    let records = ctl.audit_records();
    let refused = count(&records, "vouch", "only lockbox identities");
    assert_eq!(
        refused, 61,
        "60 recorded one by one, then the note: {records:#?}"
    );
    assert_eq!(
        count(
            &records,
            "vouch",
            "further refusals are counted, not recorded one by one"
        ),
        1
    );
}
