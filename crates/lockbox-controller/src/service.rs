//! The Controller gRPC service: thin handlers over policy, signing and the audit log.
//! Who is calling is read once per request from the verified TLS peer certificate.

use std::sync::Arc;
use std::time::Duration;

use lockbox_crypto::SigningIdentity;
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::controller_server::Controller;
use lockbox_tls::{Role, SpiffeId};
use tonic::{Request, Response, Status};

use crate::audit::{self, AuditLog};
use crate::config::ControllerConfig;
use crate::metrics::ControllerMetrics;
use crate::policy::{self, Ask, Op};
use crate::positions::{self, Position};
use crate::recent::Recent;
use crate::refusals::{AUDITED_REFUSALS_PER_WINDOW, REFUSAL_WINDOW, RefusalAudit, RefusalBudgets};
use crate::revoked::{Revocations, RevokedSet, rfc3339};

/// How long a signed revocation list is served again to every lockbox that asks, as long as
/// the revoked set has not changed: a list can be ~13 MB, and signing it for each of a flood of
/// requests (any lockbox may ask, and every peer asks before each assist) would cost a core.
const SIGNED_LIST_REUSE: Duration = Duration::from_secs(1);

/// The last signed revocation list, with the set it was made from and when.
type SignedList = (Arc<RevokedSet>, std::time::Instant, pb::SignedRevocations);

/// A vouch is served again to the same node and TLS key while it is younger than this share
/// of its lifetime (a tenth: 30 s of the default 300 s): a lockbox asking in a loop then costs
/// one signature and one audit record per such period, not one per request. The checks
/// (identity, allowed_nodes, revocation) still run on every request first.
const VOUCH_REUSE_DIVISOR: u32 = 10;
/// Most (node, TLS key) pairs whose last vouch is kept for re-serving.
const VOUCH_REUSE_MAX: usize = 4096;

/// Longest an attestation is served again for the very same request (node, trust domain and
/// every key it names, the proof checked each time): a lockbox restarting or asking in a loop
/// costs one signature and one audit record per minute, not one per request. At most a tenth
/// of `attestation_ttl`.
const ATTESTATION_REUSE: Duration = Duration::from_secs(60);

/// Shared state of one controller.
pub struct ControllerService {
    config: ControllerConfig,
    signer: Arc<SigningIdentity>,
    audit: Arc<AuditLog>,
    metrics: Arc<ControllerMetrics>,
    revocations: Arc<Revocations>,
    /// The last list signed, re-served for [`SIGNED_LIST_REUSE`] while the set is unchanged.
    signed_list: std::sync::Mutex<Option<SignedList>>,
    /// Recent vouches, re-served (see [`VOUCH_REUSE_DIVISOR`]).
    recent_vouches: Recent<(String, [u8; 32]), pb::SignedVouch>,
    /// Recent attestations, re-served (see [`ATTESTATION_REUSE`]).
    recent_attestations: Recent<Vec<u8>, pb::SignedAttestation>,
    /// How many refusals of each caller were audited lately ([`AUDITED_REFUSALS_PER_WINDOW`]).
    refusal_budgets: std::sync::Mutex<RefusalBudgets>,
    /// Held from reading a node's audit position to writing the new one (`positions.rs`), so
    /// two attestations in flight never compare against a position the other is replacing.
    positions: tokio::sync::Mutex<()>,
    /// Nodes whose rollback was recorded, or whose position was written on its own, within
    /// [`POSITION_WRITES_EVERY`]: at most one of each per node in that time.
    rollbacks_recorded: Recent<String, ()>,
    positions_written: Recent<String, ()>,
}

/// How often a node can make this controller record a rollback, or write its position apart
/// from an attestation record (`positions.rs`).
const POSITION_WRITES_EVERY: Duration = Duration::from_secs(60);

/// A refused request of a lockbox about itself (`Attest`, `Vouch`), with the outcome the vouch
/// metric counts (`metrics::VOUCH_OUTCOMES`): `revoked` or `refused`.
struct LockboxRefusal {
    status: Status,
    outcome: &'static str,
}

impl ControllerService {
    /// Builds the service.
    pub fn new(
        config: ControllerConfig,
        signer: Arc<SigningIdentity>,
        audit: Arc<AuditLog>,
        metrics: Arc<ControllerMetrics>,
        revocations: Arc<Revocations>,
    ) -> Self {
        ControllerService {
            config,
            signer,
            audit,
            metrics,
            revocations,
            signed_list: std::sync::Mutex::new(None),
            recent_vouches: Recent::new(VOUCH_REUSE_MAX),
            recent_attestations: Recent::new(VOUCH_REUSE_MAX),
            refusal_budgets: std::sync::Mutex::new(RefusalBudgets::default()),
            positions: tokio::sync::Mutex::new(()),
            rollbacks_recorded: Recent::new(VOUCH_REUSE_MAX),
            positions_written: Recent::new(VOUCH_REUSE_MAX),
        }
    }

    /// The signed list of `revoked`: the last one signed if it was made from this very set
    /// less than [`SIGNED_LIST_REUSE`] ago (a revocation makes a new set, so it is never
    /// served late), else a new one.
    fn signed_list(&self, revoked: Arc<RevokedSet>) -> Result<pb::SignedRevocations, Status> {
        let mut last = self.signed_list.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((set, at, signed)) = last.as_ref()
            && Arc::ptr_eq(set, &revoked)
            && at.elapsed() < SIGNED_LIST_REUSE
        {
            return Ok(signed.clone());
        }
        // Sorted by name: the set is a BTreeMap of ASCII names, so its order is bytewise.
        let body = pb::RevocationsBody {
            trust_domain: self.config.trust_domain.clone(),
            revoked: revoked
                .iter()
                .map(|(node, r)| pb::Revocation {
                    node: node.clone(),
                    revoked_unix_ms: r.revoked_unix_ms,
                    reason: r.reason.clone(),
                })
                .collect(),
            issued_unix_ms: now_ms(),
            issuer_key_id: self.config.key_id.clone(),
        };
        let bytes = lockbox_crypto::encode_revocations_body(&body).map_err(|e| {
            tracing::error!(error = %e, "cannot encode the revocation list");
            Status::internal(format!("cannot encode the revocation list: {e}"))
        })?;
        let sig = lockbox_crypto::sign_revocations_body(&self.signer, &self.config.key_id, &bytes);
        let signed = pb::SignedRevocations {
            body: bytes,
            signatures: vec![sig],
        };
        *last = Some((revoked, std::time::Instant::now(), signed.clone()));
        Ok(signed)
    }

    /// The checks every request about a lockbox itself passes (`Attest`, `Vouch`): the caller
    /// is a lockbox identity, in `allowed_nodes` when set, and not revoked here. Each refusal
    /// is audited under `action`; `Err` carries whether the node was revoked.
    async fn lockbox_caller_checks(
        &self,
        caller: &SpiffeId,
        action: &str,
        what: &str,
    ) -> Result<(), LockboxRefusal> {
        let actor = caller.uri();
        let refused = |status| LockboxRefusal {
            status,
            outcome: "refused",
        };
        if caller.role != Role::Lockbox {
            let s = Status::permission_denied(format!(
                "only lockbox identities may {what}; caller is {actor}"
            ));
            return Err(refused(self.refuse(&actor, action, s).await));
        }
        // Only a node `revoke` can name: one this controller stood for but could not revoke
        // (a name over 128 bytes, which certificates allow) could never be cut off.
        if let Err(why) = crate::revoked::check_node_name(&caller.name) {
            let s = Status::permission_denied(format!(
                "this controller attests and vouches only for nodes it can revoke: {why}"
            ));
            return Err(refused(self.refuse(&actor, action, s).await));
        }
        if let Some(allowed) = &self.config.allowed_nodes
            && !allowed.iter().any(|n| n == &caller.name)
        {
            let s = Status::permission_denied(format!(
                "node {} is not in this controller's allowed_nodes",
                caller.name
            ));
            return Err(refused(self.refuse(&actor, action, s).await));
        }
        let revoked = match self.revocations.current().await {
            Ok(set) => set,
            Err(e) => {
                // Fail closed: a list that cannot be read may revoke this very node.
                let s = Status::unavailable(format!(
                    "this controller cannot read its revocation list, so it vouches for and \
                     attests no node: {e}"
                ));
                return Err(refused(self.refuse(&actor, action, s).await));
            }
        };
        if let Some(r) = revoked.get(&caller.name) {
            let reason = if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            };
            let s = Status::permission_denied(format!(
                "node {} was revoked at {} by this controller ({}){reason}",
                caller.name,
                rfc3339(r.revoked_unix_ms),
                self.config.key_id
            ));
            return Err(LockboxRefusal {
                status: self.refuse(&actor, action, s).await,
                outcome: "revoked",
            });
        }
        Ok(())
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<SpiffeId, Status> {
        let id = lockbox_tls::peer_spiffe_id(req)
            .map_err(|e| Status::unauthenticated(format!("caller identity: {e}")))?;
        if id.trust_domain != self.config.trust_domain {
            return Err(Status::permission_denied(format!(
                "caller {id} is not in trust domain {}",
                self.config.trust_domain
            )));
        }
        Ok(id)
    }

    /// Counts a policy refusal and returns it as a status.
    fn policy_refusal(&self, r: policy::Refusal) -> Status {
        self.metrics.policy_refused(r.rule);
        Status::permission_denied(r.message)
    }

    /// Audits a refusal and returns it as a status.
    async fn refuse(&self, caller: &str, action: &str, status: Status) -> Status {
        let decision = self
            .refusal_budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .decide(caller, std::time::Instant::now());
        let detail = match decision {
            RefusalAudit::Record => status.message().to_string(),
            RefusalAudit::NoteOverBudget => format!(
                "more than {AUDITED_REFUSALS_PER_WINDOW} refusals of this caller in {} s: its \
                 further refusals are counted, not recorded one by one, until fewer were; this \
                 one: {}",
                REFUSAL_WINDOW.as_secs(),
                status.message()
            ),
            RefusalAudit::Skip => return status,
        };
        if let Err(e) = self
            .audit
            .append(&self.signer, caller, action, "refused", detail)
            .await
        {
            tracing::error!(error = %e, "cannot audit a refusal");
        }
        status
    }
}

use lockbox_runtime::now_unix_ms as now_ms;

/// How far in the future a grant's `not_before` may be when it is cosigned (clock skew
/// between controllers).
const COSIGN_SKEW_MS: u64 = 60_000;

fn op_from_pb(op: i32) -> Option<Op> {
    match pb::GrantOp::try_from(op) {
        Ok(op) => Op::from_grant_op(op),
        _ => None,
    }
}

impl ControllerService {
    /// Compares a node's reported audit position with the one remembered
    /// (`positions.rs`). A rollback is recorded (with the new position, one batch), counted
    /// and logged at once, and the position is then the one to go on from; otherwise returns
    /// the position to write with the attestation's record, if it moved. Called under the
    /// `positions` lock.
    async fn check_position(
        &self,
        actor: &str,
        node: &str,
        now: Position,
    ) -> Result<Option<Position>, Status> {
        let key = positions::key(node);
        let known = match self.audit.mark(&key).map_err(audit_err)? {
            None => None,
            Some(bytes) => match Position::decode(&bytes) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(node, error = %e, "an unreadable audit position: taking the new one");
                    None
                }
            },
        };
        let seen = positions::compare(known.as_ref(), &now);
        let Some(detail) = positions::rollback_detail(node, &seen, &now) else {
            return Ok(seen.remember().then_some(now));
        };
        self.metrics.audit_rollback();
        let node_name = node.to_string();
        if self
            .rollbacks_recorded
            .get(&node_name, POSITION_WRITES_EVERY)
            .is_some()
        {
            tracing::warn!(node, %detail, "audit rollback detected again within a minute: counted, not recorded");
            return Ok(None);
        }
        tracing::warn!(node, %detail, "audit rollback detected");
        let record = audit::event(actor, "audit-rollback", "detected", detail);
        self.audit
            .append_marked(&self.signer, vec![record], (&key, &now.encode()))
            .await
            .map_err(audit_err)?;
        self.rollbacks_recorded
            .put(node_name, (), POSITION_WRITES_EVERY);
        Ok(None)
    }
}

fn audit_err(e: crate::ControllerError) -> Status {
    tracing::error!(error = %e, "audit log write failed");
    Status::internal("the controller cannot write its audit log")
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn attest(
        &self,
        req: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::SignedAttestation>, Status> {
        let attested = self.attest_node(req).await;
        self.metrics
            .attestation(if attested.is_ok() { "ok" } else { "refused" });
        attested
    }

    async fn issue_grant(
        &self,
        req: Request<pb::IssueGrantRequest>,
    ) -> Result<Response<pb::SignedGrant>, Status> {
        let op = lockbox_crypto::op_name(req.get_ref().op);
        let issued = self.issue_grant_counted(req).await;
        self.metrics
            .grant(op, if issued.is_ok() { "issued" } else { "refused" });
        issued
    }

    async fn vouch(
        &self,
        req: Request<pb::VouchRequest>,
    ) -> Result<Response<pb::SignedVouch>, Status> {
        match self.vouch_node(req).await {
            Ok(v) => {
                self.metrics.vouch("ok");
                Ok(v)
            }
            Err(r) => {
                self.metrics.vouch(r.outcome);
                Err(r.status)
            }
        }
    }

    async fn revocations(
        &self,
        req: Request<pb::RevocationsRequest>,
    ) -> Result<Response<pb::SignedRevocations>, Status> {
        let caller = self.caller(&req)?;
        let actor = caller.uri();
        if caller.role != Role::Lockbox {
            let s = Status::permission_denied(format!(
                "only lockbox identities may ask for the revocation list; caller is {actor}"
            ));
            return Err(self.refuse(&actor, "revocations", s).await);
        }
        let revoked = match self.revocations.current().await {
            Ok(set) => set,
            Err(e) => {
                let s = Status::unavailable(format!(
                    "this controller cannot read its revocation list: {e}"
                ));
                return Err(self.refuse(&actor, "revocations", s).await);
            }
        };
        self.signed_list(revoked).map(Response::new)
    }

    async fn cosign_grant(
        &self,
        req: Request<pb::CosignGrantRequest>,
    ) -> Result<Response<pb::SignedGrant>, Status> {
        // The op of the body, once the caller is checked and the body decoded (nothing of a
        // request is parsed before its caller is known).
        let mut op = "unspecified";
        let cosigned = self.cosign_grant_counted(req, &mut op).await;
        self.metrics.grant(
            op,
            if cosigned.is_ok() {
                "cosigned"
            } else {
                "refused"
            },
        );
        cosigned
    }
}

impl ControllerService {
    async fn attest_node(
        &self,
        req: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::SignedAttestation>, Status> {
        let caller = self.caller(&req)?;
        let actor = caller.uri();
        let spki = match lockbox_tls::peer_spki_sha256(&req) {
            Ok(s) => s,
            Err(e) => return Err(Status::unauthenticated(format!("caller certificate: {e}"))),
        };
        let r = req.into_inner();
        self.lockbox_caller_checks(&caller, "attest", "be attested")
            .await
            .map_err(|r| r.status)?;
        if r.hpke_kem_id != lockbox_crypto::HPKE_KEM_X25519 {
            let s =
                Status::invalid_argument(format!("unsupported HPKE KEM {:#06x}", r.hpke_kem_id));
            return Err(self.refuse(&actor, "attest", s).await);
        }
        if r.hpke_public_key.len() != 32 || r.signing_public_key.len() != 32 {
            let s = Status::invalid_argument("public keys must be 32 bytes");
            return Err(self.refuse(&actor, "attest", s).await);
        }
        // Empty from a node that predates peer-assisted unseal; covered by the proof if not.
        let assist: Option<[u8; 32]> = match r.assist_public_key.as_slice() {
            [] => None,
            k => match <[u8; 32]>::try_from(k) {
                Ok(k) => Some(k),
                Err(_) => {
                    let s = Status::invalid_argument(format!(
                        "the assist public key must be 32 bytes, got {}",
                        k.len()
                    ));
                    return Err(self.refuse(&actor, "attest", s).await);
                }
            },
        };
        let msg = lockbox_crypto::attest_request_message(
            &caller.name,
            &caller.trust_domain,
            r.hpke_kem_id,
            &r.hpke_public_key,
            &r.signing_public_key,
            &spki,
            assist.as_ref(),
        );
        if let Err(e) = lockbox_crypto::verify_attest_request(&r.signing_public_key, &msg, &r.proof)
        {
            let s = Status::permission_denied(format!(
                "proof of possession of the signing key failed: {e}"
            ));
            return Err(self.refuse(&actor, "attest", s).await);
        }
        let mut signing_key = [0u8; 32];
        signing_key.copy_from_slice(&r.signing_public_key);
        let position = match positions::from_request(
            signing_key,
            r.audit_checkpoint_seq,
            &r.audit_checkpoint_hash,
        ) {
            Ok(p) => p,
            Err(e) => {
                let s = Status::invalid_argument(format!("attestation refused: {e}"));
                return Err(self.refuse(&actor, "attest", s).await);
            }
        };
        // From here to the write of the new position, one attestation at a time.
        let _positions = self.positions.lock().await;
        let remember = match position {
            Some(p) => self.check_position(&actor, &caller.name, p).await?,
            None => None,
        };
        let reuse = ATTESTATION_REUSE.min(self.config.attestation_ttl / 10);
        if let Some(signed) = self.recent_attestations.get(&msg, reuse) {
            // No attestation record to ride with: the position alone, once a minute at most
            // (a position not written only lags, which never reads as a rollback).
            if let Some(p) = remember
                && self
                    .positions_written
                    .get(&caller.name, POSITION_WRITES_EVERY)
                    .is_none()
            {
                let key = positions::key(&caller.name);
                self.audit
                    .append_marked(&self.signer, Vec::new(), (&key, &p.encode()))
                    .await
                    .map_err(audit_err)?;
                self.positions_written
                    .put(caller.name.clone(), (), POSITION_WRITES_EVERY);
            }
            return Ok(Response::new(signed));
        }
        let now = now_ms();
        let body = pb::AttestationBody {
            node: caller.name.clone(),
            trust_domain: caller.trust_domain.clone(),
            hpke_public_key: r.hpke_public_key,
            hpke_kem_id: r.hpke_kem_id,
            signing_public_key: r.signing_public_key,
            tls_spki_sha256: spki.to_vec(),
            not_before_unix_ms: now.saturating_sub(1000),
            expires_unix_ms: now + self.config.attestation_ttl.as_millis() as u64,
            issuer_key_id: self.config.key_id.clone(),
            assist_public_key: r.assist_public_key,
        };
        // Checked as verifiers will (a signing key of small order, an assist key that is no
        // ristretto255 point): never sign what peers refuse.
        let body = match lockbox_crypto::encode_attestation_body(&body) {
            Ok(b) => b,
            Err(e) => {
                let s = Status::invalid_argument(format!("attestation refused: {e}"));
                return Err(self.refuse(&actor, "attest", s).await);
            }
        };
        let sig = lockbox_crypto::sign_attestation_body(&self.signer, &self.config.key_id, &body);
        let detail = format!(
            "node {} tls-spki {} assist {} ttl {}{}",
            caller.name,
            hex::encode(spki),
            assist.map_or_else(|| "none".to_string(), hex::encode),
            humantime::format_duration(self.config.attestation_ttl),
            position.map_or_else(String::new, |p| format!(
                " audit-checkpoint {} {}",
                p.seq,
                hex::encode(p.hash)
            )),
        );
        match remember {
            // The new position in the same batch as the record of the attestation.
            Some(p) => {
                let key = positions::key(&caller.name);
                let record = audit::event(&actor, "attest", "ok", detail);
                self.audit
                    .append_marked(&self.signer, vec![record], (&key, &p.encode()))
                    .await
            }
            None => {
                self.audit
                    .append(&self.signer, &actor, "attest", "ok", detail)
                    .await
            }
        }
        .map_err(audit_err)?;
        let signed = pb::SignedAttestation {
            body,
            signatures: vec![sig],
        };
        self.recent_attestations.put(msg, signed.clone(), reuse);
        Ok(Response::new(signed))
    }

    /// `Vouch`: a short-lived statement that this controller stands for the calling lockbox
    /// (its node name, trust domain and the TLS key of this very connection) now. Refused, and
    /// audited, for anything but a lockbox identity, a node outside `allowed_nodes`, or a
    /// node revoked here.
    async fn vouch_node(
        &self,
        req: Request<pb::VouchRequest>,
    ) -> Result<Response<pb::SignedVouch>, LockboxRefusal> {
        let refused = |status| LockboxRefusal {
            status,
            outcome: "refused",
        };
        let caller = self.caller(&req).map_err(refused)?;
        let actor = caller.uri();
        let spki = lockbox_tls::peer_spki_sha256(&req)
            .map_err(|e| refused(Status::unauthenticated(format!("caller certificate: {e}"))))?;
        self.lockbox_caller_checks(&caller, "vouch", "be vouched for")
            .await?;
        let reuse = self.config.vouch_ttl / VOUCH_REUSE_DIVISOR;
        let key = (caller.name.clone(), spki);
        if let Some(signed) = self.recent_vouches.get(&key, reuse) {
            return Ok(Response::new(signed));
        }
        let now = now_ms();
        let ttl_ms = u64::try_from(self.config.vouch_ttl.as_millis()).unwrap_or(u64::MAX);
        let body = pb::VouchBody {
            node: caller.name.clone(),
            trust_domain: caller.trust_domain.clone(),
            tls_spki_sha256: spki.to_vec(),
            not_before_unix_ms: now,
            expires_unix_ms: now.saturating_add(ttl_ms),
            issuer_key_id: self.config.key_id.clone(),
        };
        let bytes = match lockbox_crypto::encode_vouch_body(&body) {
            Ok(b) => b,
            Err(e) => {
                let s = Status::invalid_argument(format!("vouch refused: {e}"));
                return Err(refused(self.refuse(&actor, "vouch", s).await));
            }
        };
        let sig = lockbox_crypto::sign_vouch_body(&self.signer, &self.config.key_id, &bytes);
        self.audit
            .append(
                &self.signer,
                &actor,
                "vouch",
                "ok",
                format!(
                    "node {} tls-spki {} ttl {}",
                    caller.name,
                    hex::encode(spki),
                    humantime::format_duration(self.config.vouch_ttl)
                ),
            )
            .await
            .map_err(|e| refused(audit_err(e)))?;
        let signed = pb::SignedVouch {
            body: bytes,
            signatures: vec![sig],
        };
        self.recent_vouches.put(key, signed.clone(), reuse);
        Ok(Response::new(signed))
    }

    async fn issue_grant_counted(
        &self,
        req: Request<pb::IssueGrantRequest>,
    ) -> Result<Response<pb::SignedGrant>, Status> {
        let caller = self.caller(&req)?;
        let actor = caller.uri();
        let r = req.into_inner();
        match self.issue(&caller, &r).await {
            Ok((signed, summary)) => {
                self.audit
                    .append(&self.signer, &actor, "issue-grant", "ok", summary)
                    .await
                    .map_err(audit_err)?;
                Ok(Response::new(signed))
            }
            Err(s) => Err(self.refuse(&actor, "issue-grant", s).await),
        }
    }

    async fn cosign_grant_counted(
        &self,
        req: Request<pb::CosignGrantRequest>,
        op: &mut &'static str,
    ) -> Result<Response<pb::SignedGrant>, Status> {
        let caller = self.caller(&req)?;
        let actor = caller.uri();
        let r = req.into_inner();
        match self.cosign(&caller, r.grant, op).await {
            Ok((signed, summary)) => {
                self.audit
                    .append(&self.signer, &actor, "cosign-grant", "ok", summary)
                    .await
                    .map_err(audit_err)?;
                Ok(Response::new(signed))
            }
            Err(s) => Err(self.refuse(&actor, "cosign-grant", s).await),
        }
    }
}

impl ControllerService {
    /// Checks, in order of cost, each before any later work: the caller's role, the
    /// request's shape (op, node names, reason, a key count), the policy (a caller without a
    /// rule, or past its `max_keys`, gets no key id parsed), every key id, the revocations;
    /// then signs.
    async fn issue(
        &self,
        caller: &SpiffeId,
        r: &pb::IssueGrantRequest,
    ) -> Result<(pb::SignedGrant, String), Status> {
        if caller.role == Role::Lockbox {
            return Err(Status::permission_denied(format!(
                "lockbox identities may not issue grants; caller is {caller}"
            )));
        }
        let op = op_from_pb(r.op)
            .ok_or_else(|| Status::invalid_argument("op must be copy, move or replicate"))?;
        validate_shape(r.key_ids.len(), &r.source_node, &r.dest_node, &r.reason)?;
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds));
        let uri = caller.uri();
        let ttl = policy::decide(
            &self.config.policy,
            &Ask {
                caller: &uri,
                op,
                from: &r.source_node,
                to: &r.dest_node,
                ttl,
                keys: r.key_ids.len(),
            },
        )
        .map_err(|r| self.policy_refusal(r))?;
        validate_key_ids(&r.key_ids)?;
        self.refuse_revoked(&r.source_node, &r.dest_node).await?;
        let grant_id =
            lockbox_crypto::random_array::<16>().map_err(|e| Status::internal(e.to_string()))?;
        let now = now_ms();
        let body = pb::GrantBody {
            grant_id: grant_id.to_vec(),
            key_ids: r.key_ids.clone(),
            source_node: r.source_node.clone(),
            dest_node: r.dest_node.clone(),
            op: r.op,
            not_before_unix_ms: now.saturating_sub(1000),
            expires_unix_ms: now + ttl.as_millis() as u64,
            requested_by: uri.clone(),
            issuer_key_id: self.config.key_id.clone(),
            reason: r.reason.clone(),
            trust_domain: self.config.trust_domain.clone(),
        };
        let bytes = lockbox_crypto::encode_grant_body(&body)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sig = lockbox_crypto::sign_grant_body(&self.signer, &self.config.key_id, &bytes);
        let summary = grant_summary(&body, &ttl);
        Ok((
            pb::SignedGrant {
                body: bytes,
                signatures: vec![sig],
            },
            summary,
        ))
    }

    async fn cosign(
        &self,
        caller: &SpiffeId,
        grant: Option<pb::SignedGrant>,
        op_label: &mut &'static str,
    ) -> Result<(pb::SignedGrant, String), Status> {
        if caller.role == Role::Lockbox {
            return Err(Status::permission_denied(format!(
                "lockbox identities may not cosign grants; caller is {caller}"
            )));
        }
        let mut grant = grant.ok_or_else(|| Status::invalid_argument("no grant given"))?;
        if grant.signatures.len() > lockbox_crypto::trust::MAX_SIGNATURES {
            return Err(Status::invalid_argument(format!(
                "grant carries {} signatures, more than {}",
                grant.signatures.len(),
                lockbox_crypto::trust::MAX_SIGNATURES
            )));
        }
        // Strictly, as verifiers decode it: canonical encoding, every field bounded.
        let body = lockbox_crypto::decode_grant_body(&grant.body)
            .map_err(|e| Status::invalid_argument(format!("grant refused: {e}")))?;
        *op_label = lockbox_crypto::op_name(body.op);
        if body.trust_domain != self.config.trust_domain {
            return Err(Status::permission_denied(format!(
                "grant is for trust domain {:?}, not {}",
                body.trust_domain, self.config.trust_domain
            )));
        }
        if grant
            .signatures
            .iter()
            .any(|s| s.key_id == self.config.key_id)
        {
            return Err(Status::already_exists(format!(
                "grant already carries a signature by {}",
                self.config.key_id
            )));
        }
        // A cosign adds a signature to a grant another controller issued, never to a body
        // someone built: one of its signatures must verify under a controller this one trusts
        // (`[[controllers]]` in its config), and be the issuer's.
        let issuer = grant
            .signatures
            .iter()
            .find(|s| {
                self.config
                    .cosign_from
                    .get(&s.key_id)
                    .is_some_and(|public| {
                        lockbox_crypto::verify_signature(
                            public,
                            lockbox_crypto::GRANT_DOMAIN,
                            &grant.body,
                            &s.signature,
                        )
                        .is_ok()
                    })
            })
            .ok_or_else(|| {
                Status::permission_denied(if self.config.cosign_from.is_empty() {
                    "this controller cosigns only grants issued by the controllers in its \
                     [[controllers]] config, and it has none"
                        .to_string()
                } else {
                    "the grant carries no valid signature of a controller this one trusts \
                     (a cosign adds a signature to a grant another controller issued)"
                        .to_string()
                })
            })?;
        if body.issuer_key_id != issuer.key_id {
            return Err(Status::permission_denied(format!(
                "the grant names issuer {:?} but is signed by {}",
                body.issuer_key_id.chars().take(64).collect::<String>(),
                issuer.key_id
            )));
        }
        self.check_signatures(&grant)?;
        // Every check of IssueGrant, as if this controller issued it.
        validate_shape(
            body.key_ids.len(),
            &body.source_node,
            &body.dest_node,
            &body.reason,
        )?;
        match lockbox_tls::SpiffeId::parse(&body.requested_by) {
            // IssueGrant serves orchestrators and admins only (lockboxes are refused, and
            // controllers do not get past the handshake): a body naming another requester
            // was not issued under any policy.
            Ok(id)
                if id.trust_domain == self.config.trust_domain
                    && matches!(id.role, Role::Orchestrator | Role::Admin) => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                    "requested_by {:?} is not the SPIFFE id of an orchestrator or admin of \
                     trust domain {}",
                    body.requested_by.chars().take(64).collect::<String>(),
                    self.config.trust_domain
                )));
            }
        }
        let now = now_ms();
        if body.expires_unix_ms <= now {
            return Err(Status::failed_precondition("grant expired"));
        }
        if body.not_before_unix_ms > now.saturating_add(COSIGN_SKEW_MS) {
            return Err(Status::failed_precondition("grant is not valid yet"));
        }
        let op = op_from_pb(body.op)
            .ok_or_else(|| Status::invalid_argument("op must be copy, move or replicate"))?;
        let remaining = Duration::from_millis(body.expires_unix_ms - now);
        let uri = caller.uri();
        policy::decide(
            &self.config.policy,
            &Ask {
                caller: &uri,
                op,
                from: &body.source_node,
                to: &body.dest_node,
                ttl: Some(remaining),
                keys: body.key_ids.len(),
            },
        )
        .map_err(|r| self.policy_refusal(r))?;
        validate_key_ids(&body.key_ids)?;
        self.refuse_revoked(&body.source_node, &body.dest_node)
            .await?;
        let sig = lockbox_crypto::sign_grant_body(&self.signer, &self.config.key_id, &grant.body);
        grant.signatures.push(sig);
        Ok((grant, grant_summary(&body, &remaining)))
    }
}

impl ControllerService {
    /// Refuses a grant that names a node revoked here, as source or destination: a revoked
    /// node gets no attestation or vouch from this controller, and no key either (the
    /// attestation it still holds lives up to `attestation_ttl`, and verifiers do not consult
    /// revocations on transfers). Fails closed when the list cannot be read.
    async fn refuse_revoked(&self, source: &str, dest: &str) -> Result<(), Status> {
        let revoked = self.revocations.current().await.map_err(|e| {
            Status::unavailable(format!(
                "this controller cannot read its revocation list, so it signs no grant: {e}"
            ))
        })?;
        for (side, node) in [("source", source), ("destination", dest)] {
            if let Some(r) = revoked.get(node) {
                let reason = if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.reason)
                };
                return Err(Status::permission_denied(format!(
                    "the {side} node {node} was revoked at {} by this controller ({}){reason}; \
                     no grant names a revoked node",
                    rfc3339(r.revoked_unix_ms),
                    self.config.key_id
                )));
            }
        }
        Ok(())
    }

    /// Every signature a grant to cosign carries, checked before it is signed again (what
    /// this controller returns carries them all): at most one per key id, each key id one a
    /// controller config accepts, each 64 bytes, and each of a controller this one trusts
    /// valid. A lockbox refuses a grant with a bad signature of a controller it trusts, so one
    /// that carries such a signature is refused here rather than cosigned in vain.
    fn check_signatures(&self, grant: &pb::SignedGrant) -> Result<(), Status> {
        let mut seen = std::collections::BTreeSet::new();
        for s in &grant.signatures {
            crate::config::check_key_id(&s.key_id).map_err(|why| {
                Status::invalid_argument(format!("grant refused: a signature's key id: {why}"))
            })?;
            if !seen.insert(s.key_id.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "grant refused: two signatures by {}",
                    s.key_id
                )));
            }
            if s.signature.len() != 64 {
                return Err(Status::invalid_argument(format!(
                    "grant refused: the signature by {} is {} bytes, not 64",
                    s.key_id,
                    s.signature.len()
                )));
            }
            if let Some(public) = self.config.cosign_from.get(&s.key_id)
                && lockbox_crypto::verify_signature(
                    public,
                    lockbox_crypto::GRANT_DOMAIN,
                    &grant.body,
                    &s.signature,
                )
                .is_err()
            {
                return Err(Status::permission_denied(format!(
                    "grant refused: bad signature from controller {} (the body was changed \
                     after it signed, or the signature is not its)",
                    s.key_id
                )));
            }
        }
        Ok(())
    }
}

/// The cheap checks of a grant request, made before the policy is asked: at least one key id,
/// node names, source and destination distinct, the reason one line of at most 1024 bytes.
fn validate_shape(keys: usize, source: &str, dest: &str, reason: &str) -> Result<(), Status> {
    if keys == 0 {
        return Err(Status::invalid_argument(
            "a grant names at least one key id",
        ));
    }
    let node_ok = |n: &str| crate::revoked::check_node_name(n).is_ok();
    if !node_ok(source) || !node_ok(dest) {
        return Err(Status::invalid_argument(
            "source and destination must be node names (letters, digits, - _ .)",
        ));
    }
    if source == dest {
        return Err(Status::invalid_argument(
            "source and destination are the same node",
        ));
    }
    if reason.len() > 1024 {
        return Err(Status::invalid_argument("reason longer than 1024 bytes"));
    }
    // Lockboxes audit it and `lockboxctl grant inspect` prints it: one line of text.
    if reason.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "reason may not contain control characters (newlines, tabs, escapes)",
        ));
    }
    Ok(())
}

/// Every key id of a grant: canonical UUIDs, none twice.
fn validate_key_ids(key_ids: &[String]) -> Result<(), Status> {
    let mut seen = std::collections::BTreeSet::new();
    for k in key_ids {
        // Grants carry key ids in one canonical spelling (lower-case hyphenated), the one
        // lockboxes store: two spellings of one key would otherwise count as two keys.
        let canonical = uuid::Uuid::parse_str(k)
            .map_err(|_| {
                Status::invalid_argument(format!("key id \"{}\" is not a UUID", quote(k)))
            })?
            .hyphenated()
            .to_string();
        if canonical != *k {
            return Err(Status::invalid_argument(format!(
                "key id {k:?} must be written in canonical form ({canonical})"
            )));
        }
        if !seen.insert(canonical) {
            return Err(Status::invalid_argument(format!(
                "key id {k} appears twice"
            )));
        }
    }
    Ok(())
}

/// A prefix of a string from a request, for a refusal (which is returned and audited): at
/// most 64 bytes, the rest counted.
fn quote(s: &str) -> String {
    crate::audit::bounded(s, 64)
}

fn grant_summary(body: &pb::GrantBody, ttl: &Duration) -> String {
    let op = op_from_pb(body.op).map(|o| o.as_str()).unwrap_or("?");
    format!(
        "grant {} {} {} -> {} keys {} ttl {} reason {:?}",
        hex::encode(&body.grant_id),
        op,
        body.source_node,
        body.dest_node,
        body.key_ids.len(),
        humantime::format_duration(Duration::from_secs(ttl.as_secs())),
        body.reason
    )
}
