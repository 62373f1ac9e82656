//! Thin gRPC adapters over [`Custody`]: take the request apart, call the domain, convert the
//! result. Proto types stop here. Caller authorization happens once, in [`authorize`].

use std::collections::BTreeMap;
use std::sync::Arc;

use lockbox_crypto::{RecoveryChange, SecretBytes, UnsealMethod, UnsealSecret};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::lockbox_server::Lockbox;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::assist::Revocations;
use crate::attest::Attestor;
use crate::config::ClonePolicy;
use crate::custody::{self, Caller, CloneMode, Custody, Enroll, KeyInfo, KeyState};
use crate::transfer::Transfers;
use crate::unseal_peers::PeerUnsealer;

/// Seals a fresh slot key to the TPM `policy` names.
async fn seal_tpm(policy: &crate::config::Policy) -> Result<(Vec<u8>, SecretBytes), Status> {
    let cfg = policy.tpm2.as_ref().ok_or_else(|| {
        Status::failed_precondition("the tpm2 methods need [unseal.tpm2] in the config")
    })?;
    crate::tpm::seal_new_key(cfg)
        .await
        .map_err(Status::unavailable)
}

/// The audit detail of a TPM enrollment: the TPM and the PCRs it is bound to.
fn tpm_detail(policy: &crate::config::Policy, method: &str) -> String {
    match &policy.tpm2 {
        Some(t) if !t.pcrs.is_empty() => format!("method {method} (pcrs {:?})", t.pcrs),
        _ => format!("method {method}"),
    }
}

/// Refuses a passphrase shorter than 8 bytes, naming which one.
fn check_passphrase_len(p: &SecretBytes, what: &str) -> Result<(), Status> {
    if p.len() < 8 {
        return Err(Status::invalid_argument(format!(
            "invalid argument: {what} too short (at least 8 bytes)"
        )));
    }
    Ok(())
}

/// Which local users may talk to the socket.
#[derive(Debug, Clone)]
pub struct Access {
    /// Allowed uids.
    pub uids: Vec<u32>,
    /// Allowed gids.
    pub gids: Vec<u32>,
}

/// The interceptor: reads SO_PEERCRED once per request, refuses callers outside [`Access`],
/// and leaves a [`Caller`] in the request extensions for the audit log.
pub fn authorize(
    access: Arc<Access>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred);
        let Some(cred) = cred else {
            return Err(Status::permission_denied(
                "permission denied: the caller's credentials are unknown",
            ));
        };
        let (uid, gid) = (cred.uid(), cred.gid());
        if !access.uids.contains(&uid) && !access.gids.contains(&gid) {
            tracing::warn!(
                uid,
                gid,
                "refused a caller not in allowed_uids/allowed_gids"
            );
            return Err(Status::permission_denied(format!(
                "permission denied: uid {uid} (gid {gid}) is not allowed on this socket"
            )));
        }
        let actor = match cred.pid() {
            Some(pid) => format!("uid:{uid} gid:{gid} pid:{pid}"),
            None => format!("uid:{uid} gid:{gid}"),
        };
        req.extensions_mut().insert(Caller { actor });
        Ok(req)
    }
}

fn caller<T>(req: &Request<T>) -> Caller {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| Caller {
            actor: "unknown".into(),
        })
}

/// The Unix-socket service.
#[derive(Clone)]
pub struct LocalApi {
    custody: Arc<Custody>,
    attestor: Option<Arc<Attestor>>,
    transfers: Option<Arc<Transfers>>,
    unsealer: Option<Arc<PeerUnsealer>>,
    revocations: Option<Arc<Revocations>>,
    /// The config file lockboxd was started with (`EnrollUnseal` re-reads its `[unseal]`).
    config_source: std::path::PathBuf,
}

impl LocalApi {
    /// Wraps the domain (and the attestor, when controllers are configured).
    pub fn new(
        custody: Arc<Custody>,
        attestor: Option<Arc<Attestor>>,
        transfers: Option<Arc<Transfers>>,
    ) -> Self {
        LocalApi {
            custody,
            attestor,
            transfers,
            unsealer: None,
            revocations: None,
            config_source: std::path::PathBuf::new(),
        }
    }

    /// Adds what peer-assisted unseal needs: the unsealer (asking peers, enrolling), the
    /// revocations this node knows, and the config file to re-read on `EnrollUnseal`.
    pub fn with_unseal(
        mut self,
        unsealer: Option<Arc<PeerUnsealer>>,
        revocations: Option<Arc<Revocations>>,
        config_source: std::path::PathBuf,
    ) -> Self {
        self.unsealer = unsealer;
        self.revocations = revocations;
        self.config_source = config_source;
        self
    }

    fn unseal_info(&self) -> pb::UnsealInfo {
        let slots = self.custody.slot_info();
        let progress = self
            .unsealer
            .as_ref()
            .map(|u| u.progress())
            .unwrap_or_default();
        pb::UnsealInfo {
            method: slots.method.as_str().into(),
            answered: progress.answered,
            missing: progress.missing.iter().map(|(p, _)| p.clone()).collect(),
            missing_errors: progress.missing.into_iter().map(|(_, e)| e).collect(),
            recovery: slots.recovery,
            unsealed_by: progress.unsealed_by,
        }
    }

    /// A new peer slot for `policy`'s peers (every one must be reachable and attested).
    async fn enroll_peers(
        &self,
        policy: &crate::config::Policy,
    ) -> Result<(lockbox_crypto::assist::PeerSlot, SecretBytes), Status> {
        let reach = self
            .unsealer
            .as_ref()
            .and_then(|u| u.reach())
            .ok_or_else(|| {
                Status::failed_precondition(
                    "the peers methods need [tls] and [[controllers]] in the config lockboxd \
                     was started with",
                )
            })?;
        reach
            .enroll(
                self.custody.node_id(),
                &policy.unseal_peers,
                policy.unseal_threshold,
            )
            .await
            .map_err(Status::unavailable)
    }

    /// `EnrollUnseal`: the slots the config's `[unseal]` asks for, replacing the keyring's.
    async fn enroll(&self, who: &Caller, req: pb::EnrollUnsealRequest) -> Result<(), Status> {
        let (config, policy) = crate::config::Config::load(&self.config_source)
            .map_err(|e| Status::failed_precondition(format!("re-reading the config: {e}")))?;
        if config.node_id != self.custody.node_id() {
            return Err(Status::failed_precondition(format!(
                "{} now names node {}, but this lockboxd is {}",
                self.config_source.display(),
                config.node_id,
                self.custody.node_id()
            )));
        }
        let argon = lockbox_crypto::Argon2Params {
            memory_kib: config.unseal.argon2_memory_kib,
            iterations: config.unseal.argon2_iterations,
            parallelism: 1,
        };
        let recovery_pass = SecretBytes::new(req.recovery_passphrase);
        let passphrase = SecretBytes::new(req.passphrase);
        let had_recovery = self.custody.slot_info().recovery;
        let (recovery, recovery_note) = match (policy.recovery, recovery_pass.is_empty()) {
            (true, false) => {
                check_passphrase_len(&recovery_pass, "recovery passphrase")?;
                (RecoveryChange::Set(&recovery_pass, argon), "recovery set")
            }
            (true, true) if had_recovery => (RecoveryChange::Keep, "recovery kept"),
            (true, true) => {
                return Err(Status::invalid_argument(
                    "invalid argument: [unseal] recovery = \"passphrase\" and this keyring has no \
                     recovery slot yet: give --recovery-passphrase-file",
                ));
            }
            (false, _) if had_recovery => (RecoveryChange::Drop, "recovery removed"),
            (false, _) => (RecoveryChange::Drop, "no recovery"),
        };
        let keyfile;
        let peers;
        let tpm;
        let (primary, detail) = match policy.method {
            UnsealMethod::Keyfile => {
                custody::ensure_keyfile(&config.unseal.keyfile)?;
                keyfile = custody::read_keyfile(&config.unseal.keyfile)?;
                (Enroll::Keyfile(&keyfile), "method keyfile".to_string())
            }
            UnsealMethod::Passphrase => {
                check_passphrase_len(&passphrase, "passphrase")?;
                (
                    Enroll::Passphrase(&passphrase, argon),
                    "method passphrase".to_string(),
                )
            }
            UnsealMethod::Peers => {
                peers = self.enroll_peers(&policy).await?;
                (
                    Enroll::Peers(peers.0.clone(), &peers.1),
                    format!(
                        "method peers ({} of {})",
                        policy.unseal_threshold,
                        policy.unseal_peers.join(",")
                    ),
                )
            }
            UnsealMethod::Tpm2 => {
                tpm = seal_tpm(&policy).await?;
                (
                    Enroll::Tpm2(tpm.0.clone(), &tpm.1),
                    tpm_detail(&policy, "tpm2"),
                )
            }
            UnsealMethod::Tpm2Peers => {
                tpm = seal_tpm(&policy).await?;
                peers = self.enroll_peers(&policy).await?;
                (
                    Enroll::Tpm2Peers {
                        blob: tpm.0.clone(),
                        tpm_key: &tpm.1,
                        slot: peers.0.clone(),
                        peers_key: &peers.1,
                    },
                    format!(
                        "{} and peers ({} of {})",
                        tpm_detail(&policy, "tpm2+peers"),
                        policy.unseal_threshold,
                        policy.unseal_peers.join(",")
                    ),
                )
            }
        };
        self.custody
            .enroll_slots(who, primary, recovery, format!("{detail}, {recovery_note}"))
            .await?;
        Ok(())
    }

    async fn status_pb(&self) -> pb::StatusResponse {
        let mut s = status_to_pb(self.custody.status().await);
        if let Some(a) = &self.attestor {
            let st = a.status();
            s.attestation_state = st.state.into();
            s.attestation_expires_unix_ms = st.expires_unix_ms;
            s.attestation_error = st.error;
        } else {
            s.attestation_state = "none".into();
            s.attestation_error = "no [[controllers]] configured".into();
        }
        s.unseal = Some(self.unseal_info());
        s.revoked_nodes = self
            .revocations
            .as_ref()
            .map(|r| r.list())
            .unwrap_or_default();
        let h = crate::hardening::current();
        s.memory_locked = h.memory_locked;
        s.core_dumps_disabled = h.core_dumps_disabled;
        s
    }
}

fn policy_from_pb(p: i32) -> Result<Option<ClonePolicy>, Status> {
    match pb::ClonePolicy::try_from(p) {
        Ok(pb::ClonePolicy::Unspecified) => Ok(None),
        Ok(pb::ClonePolicy::Deny) => Ok(Some(ClonePolicy::Deny)),
        Ok(pb::ClonePolicy::SameKey) => Ok(Some(ClonePolicy::SameKey)),
        Ok(pb::ClonePolicy::NewKey) => Ok(Some(ClonePolicy::NewKey)),
        Err(_) => Err(Status::invalid_argument(format!(
            "invalid argument: unknown clone policy {p}"
        ))),
    }
}

fn policy_to_pb(p: ClonePolicy) -> pb::ClonePolicy {
    match p {
        ClonePolicy::Deny => pb::ClonePolicy::Deny,
        ClonePolicy::SameKey => pb::ClonePolicy::SameKey,
        ClonePolicy::NewKey => pb::ClonePolicy::NewKey,
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn info_to_pb(i: KeyInfo) -> pb::KeyInfo {
    let m = i.meta;
    pb::KeyInfo {
        state: m.state_name().into(),
        key_id: m.key_id,
        length: m.length,
        labels: m.labels.into_iter().collect(),
        created_unix_ms: m.created_unix_ms,
        origin: Some(pb::Origin {
            kind: m.origin.kind.as_str().into(),
            from_key_id: m.origin.from_key_id,
            from_node: m.origin.from_node,
            grant_id: m.origin.grant_id,
        }),
        moved_to_node: match &m.state {
            KeyState::Moved(t) => t.node.clone(),
            _ => String::new(),
        },
        moved_by_grant: match &m.state {
            KeyState::Moved(t) => t.grant_id.clone(),
            _ => String::new(),
        },
        clone_policy: policy_to_pb(i.clone_policy) as i32,
        current_version: m.current_version,
        versions: m
            .versions
            .iter()
            .map(|v| pb::KeyVersion {
                version: v.version,
                state: v.state.as_str().into(),
                created_unix_ms: v.created_unix_ms,
            })
            .collect(),
        shares_material_with: i.shares_material_with,
    }
}

fn status_to_pb(s: custody::NodeStatus) -> pb::StatusResponse {
    pb::StatusResponse {
        node_id: s.node_id,
        sealed: s.sealed,
        unseal_method: s.unseal_method.into(),
        kek_id: s.kek_id,
        key_count: s.key_count,
        version: env!("CARGO_PKG_VERSION").into(),
        audit_records: s.audit_records,
        uptime_seconds: s.uptime_seconds,
        hpke_public_key: s.hpke_public_key.unwrap_or_default(),
        signing_public_key: s.signing_public_key.unwrap_or_default(),
        assist_public_key: s.assist_public_key,
        ..Default::default()
    }
}

type R<T> = Result<Response<T>, Status>;

/// The stream `Transfer` answers with.
pub type TransferStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::TransferProgress, Status>> + Send>,
>;

#[tonic::async_trait]
impl Lockbox for LocalApi {
    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> R<pb::CreateKeyResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        let policy = policy_from_pb(r.clone_policy)?;
        let key_id = (!r.key_id.is_empty()).then_some(r.key_id);
        let (key_id, created, needs) = self
            .custody
            .create(&who, r.length, labels(r.labels), policy, key_id)
            .await?;
        crate::settle::answer_needs(needs);
        Ok(Response::new(pb::CreateKeyResponse { key_id, created }))
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> R<pb::GetKeyResponse> {
        let r = req.into_inner();
        let released = self.custody.get(&r.key_id, r.version)?;
        crate::settle::answer_needs(released.needs);
        // The response owns a copy that prost will drop without zeroizing; this is the one
        // place plaintext is meant to leave, and only over the Unix socket.
        Ok(Response::new(pb::GetKeyResponse {
            key_id: released.key_id,
            version: released.version,
            material: released.material.expose_secret().to_vec(),
        }))
    }

    async fn describe_key(&self, req: Request<pb::DescribeKeyRequest>) -> R<pb::KeyInfo> {
        let r = req.into_inner();
        Ok(Response::new(info_to_pb(self.custody.describe(&r.key_id)?)))
    }

    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> R<pb::ListKeysResponse> {
        let r = req.into_inner();
        let (keys, next) = self.custody.list(
            &labels(r.labels),
            r.page_size as usize,
            &r.page_token,
            r.include_destroyed,
        )?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.into_iter().map(info_to_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn snapshot_key(&self, req: Request<pb::SnapshotKeyRequest>) -> R<pb::CreateKeyResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        let key_id = self
            .custody
            .snapshot(&who, &r.key_id, labels(r.labels))
            .await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key_id,
            created: true,
        }))
    }

    async fn clone_key(&self, req: Request<pb::CloneKeyRequest>) -> R<pb::CreateKeyResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        let mode = match pb::CloneMode::try_from(r.mode) {
            Ok(pb::CloneMode::SameKey) => CloneMode::SameKey,
            Ok(pb::CloneMode::NewKey) => CloneMode::NewKey,
            _ => {
                return Err(Status::invalid_argument(
                    "invalid argument: clone mode must be same-key or new-key",
                ));
            }
        };
        let key_id = self
            .custody
            .clone_key(&who, &r.key_id, mode, labels(r.labels))
            .await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key_id,
            created: true,
        }))
    }

    async fn rekey_key(&self, req: Request<pb::RekeyKeyRequest>) -> R<pb::KeyInfo> {
        let who = caller(&req);
        let r = req.into_inner();
        let info = self.custody.rekey(&who, &r.key_id, r.commit).await?;
        Ok(Response::new(info_to_pb(info)))
    }

    async fn destroy_key(&self, req: Request<pb::DestroyKeyRequest>) -> R<pb::DestroyKeyResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        let d = self.custody.destroy(&who, &r.key_id, r.cascade).await?;
        Ok(Response::new(pb::DestroyKeyResponse {
            destroyed_key_ids: d.key_ids,
            material_shredded: d.material_shredded,
            kek_rotated: d.kek_rotated,
        }))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> R<pb::StatusResponse> {
        Ok(Response::new(self.status_pb().await))
    }

    async fn seal(&self, req: Request<pb::SealRequest>) -> R<pb::StatusResponse> {
        let who = caller(&req);
        self.custody.seal(&who).await?;
        Ok(Response::new(self.status_pb().await))
    }

    async fn unseal(&self, req: Request<pb::UnsealRequest>) -> R<pb::StatusResponse> {
        let who = caller(&req);
        let passphrase = SecretBytes::new(req.into_inner().passphrase);
        let method = self.custody.unseal_method();
        if !passphrase.is_empty() {
            // The passphrase slot, or the recovery slot of any other method.
            let was_sealed = self.custody.status().await.sealed;
            self.custody
                .unseal(&who, UnsealSecret::Passphrase(&passphrase))
                .await?;
            if let (true, Some(u)) = (was_sealed, &self.unsealer) {
                u.unsealed_by(if method == UnsealMethod::Passphrase {
                    "passphrase"
                } else {
                    "recovery"
                });
            }
            return Ok(Response::new(self.status_pb().await));
        }
        match method {
            UnsealMethod::Passphrase => {
                return Err(Status::invalid_argument(
                    "invalid argument: this lockbox unseals with a passphrase (--passphrase-file)",
                ));
            }
            UnsealMethod::Peers | UnsealMethod::Tpm2 | UnsealMethod::Tpm2Peers => {
                let u = self.unsealer.as_ref().ok_or_else(|| {
                    Status::failed_precondition("this lockboxd runs without its unsealer")
                })?;
                u.attempt().await.map_err(|e| {
                    Status::unavailable(format!(
                        "still sealed: {e} (or give the recovery passphrase with --passphrase-file)"
                    ))
                })?;
            }
            UnsealMethod::Keyfile => {
                let path = self.custody.keyfile_path();
                let secret = custody::read_keyfile(&path)?;
                self.custody
                    .unseal(&who, UnsealSecret::Keyfile(&secret))
                    .await?;
            }
        }
        Ok(Response::new(self.status_pb().await))
    }

    async fn enroll_unseal(&self, req: Request<pb::EnrollUnsealRequest>) -> R<pb::StatusResponse> {
        let who = caller(&req);
        self.enroll(&who, req.into_inner()).await?;
        Ok(Response::new(self.status_pb().await))
    }

    async fn rotate_kek(&self, req: Request<pb::RotateKekRequest>) -> R<pb::RotateKekResponse> {
        let who = caller(&req);
        let r = self.custody.rotate_kek(&who).await?;
        Ok(Response::new(pb::RotateKekResponse {
            old_kek_id: r.old_kek_id,
            new_kek_id: r.new_kek_id,
            records_resealed: r.records_resealed,
        }))
    }

    async fn audit_tail(&self, req: Request<pb::AuditTailRequest>) -> R<pb::AuditTailResponse> {
        let n = match req.into_inner().count {
            0 => 20,
            n => n.min(10_000) as usize,
        };
        let records = self
            .custody
            .audit_tail(n)?
            .into_iter()
            .map(|v| pb::AuditRecord {
                seq: v.entry.seq,
                time_unix_ms: v.entry.event.time_unix_ms,
                actor: v.entry.event.actor,
                action: v.entry.event.action,
                key_id: v.entry.event.key_id,
                outcome: v.entry.event.outcome,
                detail: v.entry.event.detail,
                hash: v.hash,
            })
            .collect();
        Ok(Response::new(pb::AuditTailResponse { records }))
    }

    async fn audit_verify(
        &self,
        _req: Request<pb::AuditVerifyRequest>,
    ) -> R<pb::AuditVerifyResponse> {
        let r = self.custody.audit_verify().await?;
        Ok(Response::new(pb::AuditVerifyResponse {
            ok: r.ok,
            records: r.records,
            checkpoints: r.checkpoints,
            bad_seq: r.bad_seq,
            error: r.error,
        }))
    }

    async fn verify_grant(
        &self,
        req: Request<pb::VerifyGrantRequest>,
    ) -> R<pb::VerifyGrantResponse> {
        let Some(grant) = req.into_inner().grant else {
            return Err(Status::invalid_argument("invalid argument: no grant given"));
        };
        match self.custody.verify_grant_as_source(&grant) {
            Ok(v) => Ok(Response::new(pb::VerifyGrantResponse {
                ok: true,
                error: String::new(),
                grant_id: hex::encode(v.grant_id),
                op: v.body.op,
                source_node: v.body.source_node,
                dest_node: v.body.dest_node,
                key_ids: v.body.key_ids,
                expires_unix_ms: v.body.expires_unix_ms,
                valid_signers: v.valid_signers,
            })),
            Err(e @ crate::error::CustodyError::Sealed) => Err(e.into()),
            Err(e) => Ok(Response::new(pb::VerifyGrantResponse {
                ok: false,
                error: e.to_string(),
                ..Default::default()
            })),
        }
    }

    type TransferStream = TransferStream;

    async fn transfer(&self, req: Request<pb::TransferRequest>) -> R<TransferStream> {
        let who = caller(&req);
        let Some(transfers) = self.transfers.clone() else {
            return Err(Status::failed_precondition(
                "transfers need [tls] and [[controllers]] in this lockbox's config",
            ));
        };
        let Some(grant) = req.into_inner().grant else {
            return Err(Status::invalid_argument("invalid argument: no grant given"));
        };
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::channel(16);
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let run = transfers.run(&who, &grant, progress_tx);
            tokio::pin!(run);
            let result = loop {
                tokio::select! {
                    r = &mut run => break r,
                    Some(p) = progress_rx.recv() => {
                        let _ = out_tx.send(Ok(pb::TransferProgress {
                            sent: p.sent,
                            total: p.total,
                            receipt: None,
                        })).await;
                    }
                }
            };
            let msg = match result {
                Ok(o) => Ok(pb::TransferProgress {
                    sent: o.receipt.key_ids.len() as u64,
                    total: o.receipt.key_ids.len() as u64,
                    receipt: Some(pb::TransferReceipt {
                        grant_id: hex::encode(&o.receipt.grant_id),
                        op: o.receipt.op,
                        source_node: o.receipt.source_node,
                        dest_node: o.receipt.dest_node,
                        key_ids: o.receipt.key_ids,
                        stored_unix_ms: o.receipt.stored_unix_ms,
                        fresh: o.fresh,
                    }),
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = out_tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn promote_key(&self, req: Request<pb::PromoteKeyRequest>) -> R<pb::KeyInfo> {
        let who = caller(&req);
        let r = req.into_inner();
        let info = self.custody.promote(&who, &r.key_id).await?;
        Ok(Response::new(info_to_pb(info)))
    }

    async fn export_backup(
        &self,
        req: Request<pb::ExportBackupRequest>,
    ) -> R<pb::ExportBackupResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        let e = self
            .custody
            .export_backup(&who, &r.recipients, &labels(r.labels))
            .await?;
        Ok(Response::new(pb::ExportBackupResponse {
            backup: e.bytes,
            keys: e.keys,
            materials: e.materials,
            recipient_fingerprints: e.fingerprints,
        }))
    }

    async fn restore_backup(
        &self,
        req: Request<pb::RestoreBackupRequest>,
    ) -> R<pb::RestoreBackupResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        if !r.keys.is_empty()
            || !r.materials.is_empty()
            || !r.source_node.is_empty()
            || r.created_unix_ms != 0
            || !r.backup_sha256.is_empty()
            || r.backup.is_empty()
        {
            return Err(Status::invalid_argument(
                "invalid argument: a restore sends the backup file and the identity that opens \
                 it (lockboxd opens it: what it imports and the provenance it audits come from \
                 an authenticated backup); keys or provenance from the caller are refused \
                 (a lockboxctl older than this lockboxd sends them: upgrade it)",
            ));
        }
        let identity = zeroize::Zeroizing::new(r.identity);
        let done = self
            .custody
            .restore_backup(&who, &r.backup, &identity)
            .await?;
        Ok(Response::new(pb::RestoreBackupResponse {
            restored: done.restored,
            skipped: done.skipped,
        }))
    }
}
