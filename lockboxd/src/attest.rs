//! This node's attestation: the controller-signed statement binding our node name to our HPKE
//! and Ed25519 public keys and our TLS key. Fetched at start, renewed at half-life, kept on
//! disk so a restart during a controller outage still has it, and reported by `status`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lockbox_crypto::{AttestationContext, TrustedControllers, verify_attestation};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::controller_client::ControllerClient;
use lockbox_tls::{ClientTls, Expect, Role, TlsFiles};
use prost::Message;

use crate::config::ControllerRef;
use crate::custody::Custody;

/// What `status` shows about the attestation.
#[derive(Debug, Clone, Default)]
pub struct AttestationStatus {
    /// none | valid | expired
    pub state: &'static str,
    /// Expiry of the current attestation (0 when none).
    pub expires_unix_ms: u64,
    /// The last renewal failure, if the last attempt failed.
    pub error: String,
}

#[derive(Default)]
struct State {
    current: Option<(pb::SignedAttestation, u64, u64)>,
    error: String,
}

/// Keeps this node attested.
pub struct Attestor {
    custody: Arc<Custody>,
    tls: TlsFiles,
    controllers: Vec<ControllerRef>,
    trusted: TrustedControllers,
    skew: Duration,
    path: PathBuf,
    state: RwLock<State>,
}

use crate::custody::now_ms;

impl Attestor {
    /// Prepares the attestor; loads a previously saved attestation if it still verifies.
    pub fn new(
        custody: Arc<Custody>,
        tls: TlsFiles,
        controllers: Vec<ControllerRef>,
        trusted: TrustedControllers,
        skew: Duration,
        data_dir: PathBuf,
    ) -> Arc<Attestor> {
        let a = Arc::new(Attestor {
            custody,
            tls,
            controllers,
            trusted,
            skew,
            path: data_dir.join("attestation"),
            state: RwLock::new(State::default()),
        });
        if let Ok(bytes) = std::fs::read(&a.path)
            && let Ok(signed) = pb::SignedAttestation::decode(bytes.as_slice())
        {
            match a.check(&signed, true) {
                Ok((nb, exp)) => a.set(Some((signed, nb, exp)), String::new()),
                Err(e) => tracing::info!(error = %e, "ignoring the saved attestation"),
            }
        }
        a
    }

    fn set(&self, current: Option<(pb::SignedAttestation, u64, u64)>, error: String) {
        let mut g = match self.state.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if current.is_some() {
            g.current = current;
        }
        g.error = error;
    }

    /// The current attestation, when one is valid now.
    pub fn current(&self) -> Option<pb::SignedAttestation> {
        let g = match self.state.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.current
            .as_ref()
            .filter(|(_, _, exp)| *exp > now_ms())
            .map(|(s, _, _)| s.clone())
    }

    /// For `status`.
    pub fn status(&self) -> AttestationStatus {
        let g = match self.state.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match &g.current {
            None => AttestationStatus {
                state: "none",
                expires_unix_ms: 0,
                error: g.error.clone(),
            },
            Some((_, _, exp)) => AttestationStatus {
                state: if *exp > now_ms() { "valid" } else { "expired" },
                expires_unix_ms: *exp,
                error: g.error.clone(),
            },
        }
    }

    /// Checks an attestation of ours: signed by a trusted controller, for this node, this TLS
    /// key and our current public keys. `allow_expired` keeps an expired one for display.
    fn check(
        &self,
        signed: &pb::SignedAttestation,
        allow_expired: bool,
    ) -> Result<(u64, u64), String> {
        let (_, spki) = lockbox_tls::load_own_cert(&self.tls).map_err(|e| e.to_string())?;
        let node = self.custody.node_id().to_string();
        let ctx = AttestationContext {
            now_unix_ms: now_ms(),
            skew_ms: self.skew.as_millis() as u64,
            threshold: 1,
            expected_node: Some(&node),
            peer_tls_spki_sha256: Some(&spki),
        };
        let v = match verify_attestation(signed, &self.trusted, &ctx) {
            Ok(v) => v,
            Err(lockbox_crypto::AttestationError::Expired { .. }) if allow_expired => {
                let body = pb::AttestationBody::decode(signed.body.as_slice())
                    .map_err(|e| e.to_string())?;
                return Ok((body.not_before_unix_ms, body.expires_unix_ms));
            }
            Err(e) => return Err(e.to_string()),
        };
        if let Ok(keys) = self.custody.public_keys()
            && (keys.0 != v.hpke_public_key || keys.1 != v.signing_public_key)
        {
            return Err("attestation names other public keys than this node's".into());
        }
        // Peers enroll shares to the attested assist key: one that is not ours would make
        // every share enrolled to us unopenable. An attestation without one (from a
        // controller that predates it) is kept: it still serves transfers.
        if let Some(attested) = v.assist_public_key
            && attested != self.custody.assist_public_key()
        {
            return Err("attestation names another assist key than this node's".into());
        }
        Ok((v.body.not_before_unix_ms, v.body.expires_unix_ms))
    }

    /// Asks each controller in turn for a fresh attestation.
    async fn fetch(&self) -> Result<(pb::SignedAttestation, u64, u64), String> {
        let client_tls = ClientTls::load(&self.tls).map_err(|e| e.to_string())?;
        let (_, spki) = lockbox_tls::load_own_cert(&self.tls).map_err(|e| e.to_string())?;
        let request = self
            .custody
            .attest_request(client_tls.trust_domain(), &spki)
            .map_err(|e| e.to_string())?;
        // Where our audit chain stands (durable): the controller notices a data dir that
        // comes back behind what it reported before (custody/position.rs).
        let (audit_seq, audit_hash) = self
            .custody
            .audit_position()
            .await
            .map_err(|e| format!("audit position: {e}"))?;
        let request = pb::AttestRequest {
            hpke_public_key: request.hpke_public_key.to_vec(),
            hpke_kem_id: request.hpke_kem_id,
            signing_public_key: request.signing_public_key.to_vec(),
            proof: request.proof,
            assist_public_key: request.assist_public_key.to_vec(),
            audit_checkpoint_seq: audit_seq,
            audit_checkpoint_hash: audit_hash.to_vec(),
        };
        let mut errors = Vec::new();
        for c in &self.controllers {
            let expect = Expect::role(Role::Controller);
            let channel = match client_tls.connect(&c.url, expect).await {
                Ok(ch) => ch,
                Err(e) => {
                    errors.push(format!("{} ({}): {e}", c.key_id, c.url));
                    continue;
                }
            };
            let mut client = ControllerClient::new(channel);
            match client.attest(request.clone()).await {
                Ok(resp) => {
                    let signed = resp.into_inner();
                    match self.check(&signed, false) {
                        Ok((nb, exp)) => return Ok((signed, nb, exp)),
                        Err(e) => errors.push(format!("{}: bad attestation: {e}", c.key_id)),
                    }
                }
                Err(s) => errors.push(format!("{} ({}): {}", c.key_id, c.url, s.message())),
            }
        }
        Err(errors.join("; "))
    }

    /// Runs forever: renew at half-life; on failure retry with backoff (1 s doubling to 60 s)
    /// while keeping the old attestation until it expires.
    ///
    /// Once after every unseal it asks at once, even with a saved attestation still good: the
    /// request reports where our audit chain stands (custody/position.rs), and a start is
    /// when a data dir restored from an older copy shows; failing that, it goes on by the
    /// saved attestation's schedule.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        let mut reported = false;
        loop {
            if self.custody.public_keys().is_err() {
                // Sealed: nothing to attest with until an unseal.
                reported = false;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let due = if !reported {
                reported = true;
                0
            } else {
                let g = match self.state.read() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                g.current
                    .as_ref()
                    .map(|(_, nb, exp)| nb + (exp.saturating_sub(*nb)) / 2)
                    .unwrap_or(0)
            };
            let now = now_ms();
            if now < due {
                tokio::time::sleep(Duration::from_millis((due - now).min(5_000))).await;
                continue;
            }
            match self.fetch().await {
                Ok((signed, nb, exp)) => {
                    let bytes = signed.encode_to_vec();
                    if let Err(e) = lockbox_store::write_file_atomic(&self.path, &bytes, 0o644) {
                        tracing::warn!(error = %e, "cannot save the attestation");
                    }
                    tracing::info!(expires_unix_ms = exp, "attested by the controller");
                    self.set(Some((signed, nb, exp)), String::new());
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "attestation failed");
                    self.set(None, e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}
