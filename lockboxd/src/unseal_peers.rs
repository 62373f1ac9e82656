//! Peer-assisted unseal, the owner's side (DESIGN.md §5.5): enrolling a peer slot to the
//! peers' per-owner assist keys, and asking t of n peers for help while sealed.
//!
//! At enrollment each peer is reached over mTLS, its attestation checked (controller-signed,
//! naming the peer and the TLS key of the connection, carrying its assist key), and its
//! per-owner key read over a connection pinned to that TLS key. At start the node gets a
//! short-lived vouch from a controller with its TLS identity alone (it is sealed), sends
//! every peer a fresh blinded request in parallel, and unseals as soon as t answers open
//! their shares; otherwise it asks again with backoff, forever while sealed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lockbox_crypto::assist::{AssistPeer, PeerSlot};
use lockbox_crypto::{
    AttestationContext, SecretBytes, TrustedControllers, UnsealMethod, UnsealSecret,
    verify_attestation,
};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::controller_client::ControllerClient;
use lockbox_proto::v1::peer_client::PeerClient;
use lockbox_tls::{ClientTls, Expect, Role, TlsFiles};

use crate::config::ControllerRef;
use crate::custody::{Caller, Custody, now_ms};

/// How long one peer or controller call may take before it counts as missing.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between two rounds of asking while sealed.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Most bytes kept of an error text another host sent.
const MAX_REMOTE_TEXT: usize = 512;

/// Text a peer or a controller sent (a gRPC status message), as this node keeps it in
/// `status` (`missing_errors`) and its logs: control characters escaped, so a rogue peer
/// cannot drive the terminal of whoever reads `lockboxctl status`, and cut to
/// [`MAX_REMOTE_TEXT`] bytes, saying how much was cut.
fn remote_text(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.char_indices() {
        if out.len() >= MAX_REMOTE_TEXT {
            out.push_str(&format!("… ({} more bytes)", s.len() - i));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Where the peers and controllers are, and who this node is to them.
#[derive(Clone)]
pub struct Reach {
    /// This node's TLS identity and the cluster CA.
    pub tls: TlsFiles,
    /// `[peers]`: node → `host:port` of its peer API.
    pub addresses: HashMap<String, String>,
    /// The controllers asked for vouches, in order.
    pub controllers: Vec<ControllerRef>,
    /// Controller keys trusted for attestations.
    pub trusted: TrustedControllers,
    /// Tolerated clock skew.
    pub skew_ms: u64,
}

/// What `status` shows of the last round of asking.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Peers whose answers opened their share, in slot order.
    pub answered: Vec<String>,
    /// Peers not (yet) answered, with why.
    pub missing: Vec<(String, String)>,
    /// How the node was last unsealed: peers, keyfile, passphrase or recovery.
    pub unsealed_by: String,
}

/// A peer's per-owner assist key, as enrollment learned it.
pub struct PeerKey {
    /// The peer's node name.
    pub node: String,
    /// Its assist key for this owner.
    pub owner_key: [u8; 32],
}

impl Reach {
    async fn client(&self) -> Result<ClientTls, String> {
        ClientTls::load(&self.tls).map_err(|e| format!("local TLS identity: {e}"))
    }

    async fn peer_channel(
        &self,
        tls: &ClientTls,
        node: &str,
        expect: Expect,
    ) -> Result<tonic::transport::Channel, String> {
        let addr = self
            .addresses
            .get(node)
            .ok_or_else(|| format!("no address for {node} in [peers]"))?;
        let url = format!("https://{addr}");
        match tokio::time::timeout(CALL_TIMEOUT, tls.connect(&url, expect)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("unreachable at {addr}: {e}")),
            Err(_) => Err(format!(
                "unreachable at {addr}: no answer in {CALL_TIMEOUT:?}"
            )),
        }
    }

    /// Reads `peer`'s assist key for this node (SPEC.md "Per-owner assist keys"; the peer
    /// derives it for the caller's mTLS identity): attestation verified, then the key over a
    /// channel pinned to the attested TLS key, whose base key must be the attested one.
    pub async fn owner_key(&self, peer: &str) -> Result<PeerKey, String> {
        let tls = self.client().await?;
        let channel = self
            .peer_channel(&tls, peer, Expect::named(Role::Lockbox, peer))
            .await?;
        let signed = tokio::time::timeout(
            CALL_TIMEOUT,
            PeerClient::new(channel).identity(pb::IdentityRequest {}),
        )
        .await
        .map_err(|_| "no attestation in time".to_string())?
        .map_err(|s| format!("attestation: {}", remote_text(s.message())))?
        .into_inner();
        let ctx = AttestationContext {
            now_unix_ms: now_ms(),
            skew_ms: self.skew_ms,
            threshold: 1,
            expected_node: Some(peer),
            peer_tls_spki_sha256: None,
        };
        let attested = verify_attestation(&signed, &self.trusted, &ctx)
            .map_err(|e| format!("attestation invalid: {e}"))?;
        let attested_key = attested
            .assist_public_key
            .ok_or("its attestation carries no assist key (upgrade it)")?;
        let channel = self
            .peer_channel(
                &tls,
                peer,
                Expect::attested(Role::Lockbox, peer, attested.tls_spki_sha256),
            )
            .await?;
        let resp = tokio::time::timeout(
            CALL_TIMEOUT,
            PeerClient::new(channel).assist_key(pb::AssistKeyRequest {}),
        )
        .await
        .map_err(|_| "no assist key in time".to_string())?
        .map_err(|s| format!("assist key: {}", remote_text(s.message())))?
        .into_inner();
        if resp.assist_public_key != attested_key {
            return Err("its assist key is not the one its attestation names".into());
        }
        let owner_key: [u8; 32] = resp
            .owner_public_key
            .as_slice()
            .try_into()
            .map_err(|_| "its per-owner assist key is not 32 bytes".to_string())?;
        Ok(PeerKey {
            node: peer.to_owned(),
            owner_key,
        })
    }

    /// Enrolls a new peer slot for `owner`: every peer must answer (a clear error names each
    /// that does not); the slot key is fresh and random.
    pub async fn enroll(
        &self,
        owner: &str,
        peers: &[String],
        threshold: u8,
    ) -> Result<(PeerSlot, SecretBytes), String> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, p) in peers.iter().enumerate() {
            let reach = self.clone();
            let p = p.clone();
            tasks.spawn(async move { (i, p.clone(), reach.owner_key(&p).await) });
        }
        let mut keys: Vec<Option<PeerKey>> = (0..peers.len()).map(|_| None).collect();
        let mut errors = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, _, Ok(k))) => keys[i] = Some(k),
                Ok((_, p, Err(e))) => errors.push(format!("peer {p}: {e}")),
                Err(e) => errors.push(format!("enrollment task failed: {e}")),
            }
        }
        if !errors.is_empty() {
            errors.sort();
            return Err(format!(
                "cannot enroll the peers slot: {}",
                errors.join("; ")
            ));
        }
        let keys: Vec<PeerKey> = keys.into_iter().flatten().collect();
        let enroll_to: Vec<AssistPeer<'_>> = keys
            .iter()
            .map(|k| AssistPeer {
                node: &k.node,
                public_key: k.owner_key,
            })
            .collect();
        let slot_key = SecretBytes::random(lockbox_crypto::keyring::PEERS_SLOT_KEY_LEN)
            .map_err(|e| e.to_string())?;
        let slot = PeerSlot::enroll(&slot_key, owner, &enroll_to, threshold)
            .map_err(|e| format!("cannot enroll the peers slot: {e}"))?;
        Ok((slot, slot_key))
    }

    /// A controller's current vouch for this node, from the first controller that gives one.
    pub async fn vouch(&self) -> Result<pb::SignedVouch, String> {
        let tls = self.client().await?;
        let mut errors = Vec::new();
        for c in &self.controllers {
            let channel = match tokio::time::timeout(
                CALL_TIMEOUT,
                tls.connect(&c.url, Expect::role(Role::Controller)),
            )
            .await
            {
                Ok(Ok(ch)) => ch,
                Ok(Err(e)) => {
                    errors.push(format!("{}: {e}", c.key_id));
                    continue;
                }
                Err(_) => {
                    errors.push(format!("{}: no answer in {CALL_TIMEOUT:?}", c.key_id));
                    continue;
                }
            };
            match tokio::time::timeout(
                CALL_TIMEOUT,
                ControllerClient::new(channel).vouch(pb::VouchRequest {}),
            )
            .await
            {
                Ok(Ok(v)) => return Ok(v.into_inner()),
                Ok(Err(s)) => errors.push(format!("{}: {}", c.key_id, remote_text(s.message()))),
                Err(_) => errors.push(format!("{}: no vouch in {CALL_TIMEOUT:?}", c.key_id)),
            }
        }
        Err(format!(
            "no controller vouches for this node: {}",
            errors.join("; ")
        ))
    }

    /// Asks one peer to answer a blinded point.
    async fn ask(
        &self,
        peer: &str,
        vouch: pb::SignedVouch,
        owner: &str,
        enrollment_id: [u8; 16],
        blinded: [u8; 32],
    ) -> Result<[u8; 32], String> {
        let tls = self.client().await?;
        let channel = self
            .peer_channel(&tls, peer, Expect::named(Role::Lockbox, peer))
            .await?;
        let req = pb::AssistRequest {
            vouch: Some(vouch),
            owner_node: owner.to_owned(),
            enrollment_id: enrollment_id.to_vec(),
            blinded: blinded.to_vec(),
        };
        let resp = tokio::time::timeout(CALL_TIMEOUT, PeerClient::new(channel).assist(req))
            .await
            .map_err(|_| format!("no answer in {CALL_TIMEOUT:?}"))?
            .map_err(|s| format!("refused: {}", remote_text(s.message())))?
            .into_inner();
        resp.answer
            .as_slice()
            .try_into()
            .map_err(|_| "its answer is not 32 bytes".to_string())
    }
}

/// Unseals this node without a person: with its TPM (`tpm2`), its peers' help (`peers`), or
/// both (`tpm2+peers`), at start and on `lockboxctl unseal`.
pub struct PeerUnsealer {
    custody: Arc<Custody>,
    /// Where the peers and controllers are; `None` without `[tls]` and `[[controllers]]`
    /// (then only the TPM part can run).
    reach: Option<Reach>,
    /// The TPM the tpm2 methods use (`[unseal.tpm2] tcti` of the start-up config).
    tcti: Option<String>,
    progress: RwLock<Progress>,
}

/// The name under which the TPM appears in `status`'s answered and missing lists.
pub const TPM_PART: &str = "tpm2";

impl PeerUnsealer {
    /// Builds the unsealer; [`PeerUnsealer::run`] does the asking.
    pub fn new(custody: Arc<Custody>, reach: Option<Reach>, tcti: Option<String>) -> Arc<Self> {
        Arc::new(PeerUnsealer {
            custody,
            reach,
            tcti,
            progress: RwLock::new(Progress::default()),
        })
    }

    /// Where the peers and controllers are (also for enrollment), when configured.
    pub fn reach(&self) -> Option<&Reach> {
        self.reach.as_ref()
    }

    /// The last round's outcome, for `status`.
    pub fn progress(&self) -> Progress {
        self.progress
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_progress(&self, p: Progress) {
        *self.progress.write().unwrap_or_else(|p| p.into_inner()) = p;
    }

    /// Records how the node was unsealed when it was not by this unsealer.
    pub fn unsealed_by(&self, how: &str) {
        let mut p = self.progress();
        p.unsealed_by = how.to_owned();
        self.set_progress(p);
    }

    /// The TPM part: the key the slot's TPM object unseals.
    async fn tpm_key(&self) -> Result<SecretBytes, String> {
        let tcti = self
            .tcti
            .as_deref()
            .ok_or("tpm2: the config lockboxd was started with has no [unseal.tpm2]")?;
        let blob = self
            .custody
            .tpm2_blob()
            .ok_or("tpm2: the keyring has no tpm2 slot")?;
        crate::tpm::unseal_key(tcti, &blob).await
    }

    /// One round for the keyring's method. `Ok(true)` once the node is unsealed (by this
    /// round or already).
    pub async fn attempt(&self) -> Result<bool, String> {
        if !self.custody.status().await.sealed {
            return Ok(true);
        }
        let method = self.custody.unseal_method();
        let (tpm, peers) = match method {
            UnsealMethod::Tpm2 => (true, false),
            UnsealMethod::Peers => (false, true),
            UnsealMethod::Tpm2Peers => (true, true),
            other => {
                return Err(format!(
                    "the {} method does not unseal by itself",
                    other.as_str()
                ));
            }
        };
        let mut progress = Progress::default();
        let tpm_key = if tpm {
            match self.tpm_key().await {
                Ok(k) => {
                    progress.answered.push(TPM_PART.into());
                    Some(k)
                }
                Err(e) => {
                    progress.missing.push((TPM_PART.into(), e.clone()));
                    if !peers {
                        self.set_progress(progress);
                        return Err(e);
                    }
                    None
                }
            }
        } else {
            None
        };
        let peers_key = if peers {
            match self.peers_round(&mut progress).await {
                Ok(k) => Some(k),
                Err(e) => {
                    self.set_progress(progress);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let secret = match (&tpm_key, &peers_key) {
            (Some(t), Some(p)) => UnsealSecret::Tpm2PeersKeys { tpm: t, peers: p },
            (Some(t), None) if !peers => UnsealSecret::Tpm2Key(t),
            (None, Some(p)) if !tpm => UnsealSecret::PeersKey(p),
            _ => {
                self.set_progress(progress);
                return Err("the TPM part is missing (see status)".into());
            }
        };
        let caller = Caller {
            actor: format!(
                "lockboxd ({} {})",
                method.as_str(),
                progress.answered.join(",")
            ),
        };
        // Recorded before the keyring opens, so no `status` sees the node unsealed without
        // knowing how; taken back if it does not open.
        progress.unsealed_by = method.as_str().into();
        self.set_progress(progress.clone());
        if let Err(e) = self.custody.unseal(&caller, secret).await {
            progress.unsealed_by.clear();
            self.set_progress(progress);
            return Err(format!("unseal with the {} part(s): {e}", method.as_str()));
        }
        Ok(true)
    }

    /// The peers part: a vouch, then every peer asked in parallel with a fresh blinded point;
    /// the rebuilt slot key once t answers open their shares. Records who answered and who
    /// is missing in `progress`.
    async fn peers_round(&self, progress: &mut Progress) -> Result<SecretBytes, String> {
        let Some(reach) = &self.reach else {
            return Err("the peers method needs [tls] and [[controllers]]".into());
        };
        let Some(slot) = self.custody.peer_slot() else {
            return Err("the keyring has no peers slot".into());
        };
        let owner = self.custody.node_id().to_owned();
        let peers: Vec<String> = slot
            .shares()
            .iter()
            .map(|s| s.peer_node().to_owned())
            .collect();
        let vouch = match reach.vouch().await {
            Ok(v) => v,
            Err(e) => {
                progress
                    .missing
                    .extend(peers.iter().map(|p| (p.clone(), e.clone())));
                return Err(e);
            }
        };
        let mut unseal = slot
            .begin_unseal(&owner)
            .map_err(|e| format!("peers slot: {e}"))?;
        let enrollment = slot.enrollment_id();
        let mut tasks = tokio::task::JoinSet::new();
        for r in unseal.requests() {
            let reach = reach.clone();
            let (peer, vouch, owner) = (r.peer_node.clone(), vouch.clone(), owner.clone());
            let (position, blinded) = (r.peer, r.blinded);
            tasks.spawn(async move {
                let answer = reach.ask(&peer, vouch, &owner, enrollment, blinded).await;
                (position, peer, answer)
            });
        }
        let mut answered: Vec<(usize, String)> = Vec::new();
        let mut missing: Vec<(String, String)> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((position, peer, answer)) = joined else {
                continue;
            };
            match answer.and_then(|a| {
                unseal
                    .add_answer(position, &a)
                    .map_err(|e| format!("its answer does not open the share: {e}"))
            }) {
                Ok(_) => answered.push((position, peer)),
                Err(e) => missing.push((peer, e)),
            }
        }
        answered.sort();
        missing.sort();
        let answered: Vec<String> = answered.into_iter().map(|(_, p)| p).collect();
        progress.answered.extend(answered.iter().cloned());
        progress.missing.extend(missing.iter().cloned());
        if !unseal.is_ready() {
            return Err(format!(
                "{} of {} peers answered, {} needed; missing: {}",
                answered.len(),
                peers.len(),
                slot.threshold(),
                missing
                    .iter()
                    .map(|(p, e)| format!("{p} ({e})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        unseal.finish().map_err(|e| format!("peers slot: {e}"))
    }

    /// At start: asks until the node is unsealed (by this unsealer, or by an operator with
    /// the recovery passphrase), with backoff (1 s doubling to 30 s) while peers are part of
    /// the method; a lone TPM is asked once (`lockboxctl unseal` asks again).
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.attempt().await {
                Ok(_) => {
                    tracing::info!(
                        method = self.custody.unseal_method().as_str(),
                        "unsealed without a person"
                    );
                    return;
                }
                Err(e) => {
                    if !self.custody.status().await.sealed {
                        return;
                    }
                    if self.custody.unseal_method() == UnsealMethod::Tpm2 {
                        tracing::error!(error = %e, "tpm2 unseal failed: staying sealed");
                        return;
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "still sealed");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_peers_error_text_is_escaped_and_bounded() {
        assert_eq!(
            remote_text("no valid controller vouch: expired"),
            "no valid controller vouch: expired"
        );
        let hostile = format!(
            "\u{1b}[2J\u{1b}]0;owned\u{7}\nfake line{}",
            "x".repeat(64 << 10)
        );
        let kept = remote_text(&hostile);
        assert!(!kept.chars().any(char::is_control), "{kept:?}");
        assert!(kept.starts_with("\\u{1b}[2J"), "{kept:?}");
        assert!(kept.len() < MAX_REMOTE_TEXT + 64, "{}", kept.len());
        assert!(kept.ends_with("more bytes)"), "{kept:?}");
    }
}
