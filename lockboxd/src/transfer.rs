//! The source half of a transfer (DESIGN.md §7): verify the grant, reach the destination over
//! mTLS, check its attestation against the TLS peer, seal the keys to its HPKE key in signed
//! batches (one HPKE context per batch), stream them, check the receipt, then complete the
//! grant here (a MOVE tombstones only after the receipt). Any failure leaves this node
//! unchanged and names the step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lockbox_crypto::{
    AttestationContext, BatchContext, GrantSide, KeyToWrap, TRANSFER_BATCH_FORMAT,
    VerifiedAttestation, VerifiedGrant, seal_batch, verify_attestation, wire_key_attributes,
};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::peer_client::PeerClient;
use lockbox_tls::{ClientTls, Expect, Role, TlsFiles};
use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::attest::Attestor;
use crate::custody::{AsRead, Caller, Custody, GrantRole, Outgoing, StoredReceipt};
use crate::error::CustodyError;

const STREAM_CLOSED: &str = "the destination closed the stream";

/// Key versions per sealed batch: one HPKE encapsulation amortized over this many AEAD seals.
pub const BATCH_KEYS: usize = 1000;
/// Estimated bytes per sealed batch: a batch is also cut here, so that keys with many labels
/// stay far below the destination's message limit (`peer::MAX_MESSAGE_BYTES`).
pub const BATCH_BYTES: usize = crate::peer::MAX_MESSAGE_BYTES / 4;

/// A generous estimate of one key version's bytes in a batch: id, sealed material (at most 64
/// bytes plus the AEAD tag), labels and the other attributes with their framing.
fn wire_estimate(k: &Outgoing, i: usize) -> usize {
    let labels: usize = k
        .meta()
        .labels
        .iter()
        .map(|(l, v)| l.len() + v.len() + 8)
        .sum();
    k.key_id.len() + k.versions[i].material.expose_secret().len() + labels + 128
}

/// Splits the key versions of a delivery into batches of at most [`BATCH_KEYS`] versions and
/// about [`BATCH_BYTES`] bytes (a version larger alone gets a batch of its own).
fn batch_ranges(flat: &[(&Outgoing, usize)]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (k, v)) in flat.iter().enumerate() {
        let size = wire_estimate(k, *v);
        if i > start && (i - start == BATCH_KEYS || bytes + size > BATCH_BYTES) {
            ranges.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < flat.len() {
        ranges.push(start..flat.len());
    }
    ranges
}

/// Progress reported to the caller while a transfer runs.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Key versions sent so far.
    pub sent: u64,
    /// Of this many.
    pub total: u64,
}

/// What the caller gets at the end.
#[derive(Debug, Clone)]
pub struct TransferOutcome {
    /// The destination's receipt.
    pub receipt: pb::ReceiptBody,
    /// False when the grant had already completed (a retry).
    pub fresh: bool,
}

/// Errors of a transfer, each naming its step.
fn step(step: &str, e: impl std::fmt::Display) -> CustodyError {
    CustodyError::Transfer(format!("{step}: {e}"))
}

use crate::custody::now_ms;

/// A verified destination: its attestation and a channel pinned to its attested TLS key.
#[derive(Clone)]
struct Destination {
    attestation: VerifiedAttestation,
    channel: Channel,
}

/// Runs transfers with this lockbox as the source. Keeps one pinned connection per peer, so
/// a one-key transfer costs a few round trips, not a TLS handshake.
pub struct Transfers {
    custody: Arc<Custody>,
    attestor: Arc<Attestor>,
    tls: TlsFiles,
    peers: HashMap<String, String>,
    cache: Mutex<HashMap<String, Destination>>,
}

impl Transfers {
    /// Builds the runner; `peers` maps node names to `host:port` of their peer API.
    pub fn new(
        custody: Arc<Custody>,
        attestor: Arc<Attestor>,
        tls: TlsFiles,
        peers: HashMap<String, String>,
    ) -> Self {
        Transfers {
            custody,
            attestor,
            tls,
            peers,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, node: &str) -> Option<Destination> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(node)
            .filter(|d| d.attestation.body.expires_unix_ms > now_ms() + 5_000)
            .cloned()
    }

    fn forget(&self, node: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }

    /// Connects to `node`, fetches and verifies its attestation, and pins a channel to the
    /// attested TLS key (DESIGN.md invariant 4).
    async fn destination(&self, node: &str) -> Result<Destination, CustodyError> {
        if let Some(d) = self.cached(node) {
            return Ok(d);
        }
        let addr = self.peers.get(node).ok_or_else(|| {
            step(
                "destination unreachable",
                format!("no address for node {node} in [peers]"),
            )
        })?;
        let url = format!("https://{addr}");
        let tls = ClientTls::load(&self.tls).map_err(|e| step("local TLS identity", e))?;
        let channel = tls
            .connect(&url, Expect::named(Role::Lockbox, node))
            .await
            .map_err(|e| step(&format!("destination {node} unreachable"), e))?;
        let signed = PeerClient::new(channel)
            .identity(pb::IdentityRequest {})
            .await
            .map_err(|s| {
                step(
                    &format!("destination {node} attestation"),
                    lockbox_tls::error_chain(&s),
                )
            })?
            .into_inner();
        let trusted = self.custody.trusted_controllers();
        let ctx = AttestationContext {
            now_unix_ms: now_ms(),
            skew_ms: self.custody.clock_skew_ms(),
            threshold: 1,
            expected_node: Some(node),
            peer_tls_spki_sha256: None,
        };
        let attestation = verify_attestation(&signed, &trusted, &ctx)
            .map_err(|e| step(&format!("destination {node} attestation invalid"), e))?;
        let channel = tls
            .connect(
                &url,
                Expect::attested(Role::Lockbox, node, attestation.tls_spki_sha256),
            )
            .await
            .map_err(|e| step(&format!("destination {node} attestation invalid"), e))?;
        let d = Destination {
            attestation,
            channel,
        };
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), d.clone());
        Ok(d)
    }

    /// Runs a grant. Retrying a completed grant returns its receipt again; retrying one the
    /// destination completed but we did not (a crash in between) completes it here once.
    pub async fn run(
        &self,
        caller: &Caller,
        grant: &pb::SignedGrant,
        progress: mpsc::Sender<Progress>,
    ) -> Result<TransferOutcome, CustodyError> {
        // The op as the body says, for the metrics' label only (a fixed set of names).
        let op = lockbox_crypto::decode_grant_body(&grant.body)
            .map_or("unspecified", |b| lockbox_crypto::op_name(b.op));
        let result = self.run_counted(caller, grant, progress).await;
        let metrics = self.custody.metrics();
        match &result {
            Ok(o) => {
                let keys = if o.fresh {
                    o.receipt.key_ids.len() as u64
                } else {
                    0
                };
                metrics.transfer(crate::metrics::Role::Source, op, Ok(keys));
            }
            Err(e) => {
                metrics.transfer(crate::metrics::Role::Source, op, Err(e.code()));
            }
        }
        result
    }

    async fn run_counted(
        &self,
        caller: &Caller,
        grant: &pb::SignedGrant,
        progress: mpsc::Sender<Progress>,
    ) -> Result<TransferOutcome, CustodyError> {
        // A refused grant is audited like any other refusal (DESIGN.md invariant 5), under the
        // grant id its body names, if it has one.
        let checked = self
            .custody
            .verify_grant(grant, GrantSide::Source, None)
            .and_then(|v| {
                let record = self.custody.grant_record(&v, GrantRole::Source)?;
                Ok((v, record))
            });
        let (verified, record) = match checked {
            Ok(v) => v,
            Err(e) => {
                let grant_hex = lockbox_crypto::decode_grant_body(&grant.body)
                    .map(|b| hex::encode(b.grant_id))
                    .unwrap_or_default();
                self.custody
                    .audit_transfer_failure(caller, "transfer-send", &grant_hex, &e)
                    .await;
                return Err(e);
            }
        };
        let grant_hex = hex::encode(verified.grant_id);
        if let Some(r) = record {
            // The record may be a concurrent run's, applied but not yet durable: say
            // "completed" only once it is (the stream's messages pass no response gate).
            self.custody.store().settled().await?;
            return Ok(TransferOutcome {
                receipt: decode_receipt(&r)?,
                fresh: false,
            });
        }
        match self.run_fresh(caller, grant, &verified, progress).await {
            Ok(o) => Ok(o),
            Err(e) => {
                self.custody
                    .audit_transfer_failure(caller, "transfer-send", &grant_hex, &e)
                    .await;
                Err(e)
            }
        }
    }

    async fn run_fresh(
        &self,
        caller: &Caller,
        grant: &pb::SignedGrant,
        verified: &VerifiedGrant,
        progress: mpsc::Sender<Progress>,
    ) -> Result<TransferOutcome, CustodyError> {
        let dest = verified.body.dest_node.clone();
        let own = self.attestor.current().ok_or_else(|| {
            step(
                "source attestation",
                "this node has no valid attestation (is a controller reachable?)",
            )
        })?;
        // Read (and check) every key before anything leaves: unknown, moved or replica keys
        // fail here, at the source, with nothing sent.
        let keys = self.custody.read_for_transfer(&verified.body.key_ids)?;
        let d = self.destination(&dest).await?;
        let total: u64 = keys.iter().map(|k| k.versions.len() as u64).sum();

        let mut client = PeerClient::new(d.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let header = pb::DeliverRequest {
            msg: Some(pb::deliver_request::Msg::Header(pb::DeliverHeader {
                grant: Some(grant.clone()),
                source_attestation: Some(own),
                total_keys: total,
            })),
        };
        let flat: Vec<(&Outgoing, usize)> = keys
            .iter()
            .flat_map(|k| (0..k.versions.len()).map(move |i| (k, i)))
            .collect();
        let mut stream_closed = false;
        let ranges = batch_ranges(&flat);
        let response = if ranges.len() <= 1 {
            // One batch (the common one-volume transfer): seal it before calling, then send
            // header, batch and end marker as one ready stream, so they leave in one write
            // and no task or channel sits between this code and the connection.
            let batch = self.batch_message(0, &flat, verified, &d)?;
            let end = pb::DeliverRequest {
                msg: Some(pb::deliver_request::Msg::End(pb::DeliverEnd {})),
            };
            let response = client
                .deliver(tokio_stream::iter([header, batch, end]))
                .await;
            let _ = progress.try_send(Progress { sent: total, total });
            response
        } else {
            let (tx, rx) = mpsc::channel::<pb::DeliverRequest>(4);
            let call = tokio::spawn(async move {
                client
                    .deliver(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            });
            let sent_ok = self
                .send_batches(header, &flat, &ranges, verified, &d, tx, &progress, total)
                .await;
            stream_closed =
                matches!(&sent_ok, Err(CustodyError::Transfer(m)) if m.contains(STREAM_CLOSED));
            if let Err(e) = sent_ok
                && !stream_closed
            {
                // A local failure (sealing, signing): the destination saw a truncated stream
                // and stores nothing; report our own cause, not its complaint.
                call.abort();
                return Err(e);
            }
            call.await
                .map_err(|e| step("delivery", format!("task failed: {e}")))?
        };
        // The keys have left (or failed to): drop their plaintext now, keep what a MOVE's
        // completion checks against.
        drop(flat);
        let as_read: Vec<AsRead> = keys.into_iter().map(Outgoing::into_as_read).collect();
        let receipt = match response {
            Ok(r) => r.into_inner(),
            Err(s) => {
                if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
                    self.forget(&dest);
                }
                let what = if s.message().contains("sealed") {
                    format!("destination {dest} is sealed")
                } else if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) {
                    format!("destination {dest} unreachable or gone mid-transfer")
                } else {
                    format!("destination {dest} refused")
                };
                return Err(step(&what, lockbox_tls::error_chain(&s)));
            }
        };
        if stream_closed {
            return Err(step("delivery", STREAM_CLOSED));
        }
        let stored = StoredReceipt {
            body: receipt.body,
            signature: receipt.signature,
        };
        // Signature by the destination's attested key, then every field against the grant.
        let body = lockbox_crypto::verify_receipt(
            &d.attestation.signing_public_key,
            &stored.body,
            &stored.signature,
            &lockbox_crypto::ReceiptExpectation::for_grant(verified),
        )
        .map_err(|e| step(&format!("receipt from {dest}"), e))?;
        crate::failpoint::hit("source-after-receipt");
        crate::failpoint::pause("source-after-receipt").await;
        let fresh = self
            .custody
            .complete_as_source(caller, verified, &stored, as_read)
            .await?;
        Ok(TransferOutcome {
            receipt: body,
            fresh,
        })
    }

    #[allow(clippy::too_many_arguments)] // one call site; every argument is a different thing
    async fn send_batches(
        &self,
        header: pb::DeliverRequest,
        flat: &[(&Outgoing, usize)],
        ranges: &[std::ops::Range<usize>],
        verified: &VerifiedGrant,
        d: &Destination,
        tx: mpsc::Sender<pb::DeliverRequest>,
        progress: &mpsc::Sender<Progress>,
        total: u64,
    ) -> Result<(), CustodyError> {
        let closed = || step("delivery", STREAM_CLOSED);
        tx.send(header).await.map_err(|_| closed())?;
        let mut sent = 0u64;
        for (n, range) in ranges.iter().enumerate() {
            let chunk = &flat[range.clone()];
            let msg = self.batch_message(n as u32, chunk, verified, d)?;
            tx.send(msg).await.map_err(|_| closed())?;
            sent += chunk.len() as u64;
            let _ = progress.try_send(Progress { sent, total });
        }
        tx.send(pb::DeliverRequest {
            msg: Some(pb::deliver_request::Msg::End(pb::DeliverEnd {})),
        })
        .await
        .map_err(|_| closed())?;
        Ok(())
    }

    /// Seals one batch of (key, version index) pairs to the destination's HPKE key (one
    /// encapsulation, one AEAD seal per key binding its id and version) and signs it.
    fn batch_message(
        &self,
        n: u32,
        chunk: &[(&Outgoing, usize)],
        verified: &VerifiedGrant,
        d: &Destination,
    ) -> Result<pb::DeliverRequest, CustodyError> {
        let ctx = BatchContext {
            grant_id: &verified.grant_id,
            batch: n,
            source_node: &verified.body.source_node,
            dest_node: &verified.body.dest_node,
        };
        // What travels beside each key, built once: the attributes signed are computed from
        // the very fields sent, as the destination will compute them.
        let mut wire_keys: Vec<pb::WrappedKey> = chunk
            .iter()
            .map(|(k, i)| {
                let meta = k.meta();
                pb::WrappedKey {
                    key_id: k.key_id.clone(),
                    version: k.versions[*i].version,
                    ciphertext: Vec::new(),
                    labels: meta
                        .labels
                        .iter()
                        .map(|(l, v)| (l.clone(), v.clone()))
                        .collect(),
                    clone_policy: meta
                        .clone_policy
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    version_state: k.versions[*i].state.as_str().into(),
                    current: k.versions[*i].version == meta.current_version,
                }
            })
            .collect();
        let attributes: Vec<Vec<u8>> = wire_keys.iter().map(wire_key_attributes).collect();
        let wrap: Vec<KeyToWrap<'_>> = chunk
            .iter()
            .zip(&attributes)
            .map(|((k, i), attributes)| KeyToWrap {
                key_id: &k.key_id,
                version: k.versions[*i].version,
                material: &k.versions[*i].material,
                attributes,
            })
            .collect();
        let sealed = seal_batch(&d.attestation.hpke_public_key, &ctx, &wrap)?;
        let signature = self.custody.sign_transfer_batch(&ctx, &sealed)?;
        for (w, s) in wire_keys.iter_mut().zip(sealed.keys) {
            w.ciphertext = s.ciphertext;
        }
        Ok(pb::DeliverRequest {
            msg: Some(pb::deliver_request::Msg::Batch(pb::SealedBatch {
                batch: n,
                suite: sealed.suite,
                enc: sealed.enc,
                keys: wire_keys,
                signature: signature.to_vec(),
                signature_format: TRANSFER_BATCH_FORMAT,
            })),
        })
    }
}

fn decode_receipt(r: &StoredReceipt) -> Result<pb::ReceiptBody, CustodyError> {
    pb::ReceiptBody::decode(r.body.as_slice())
        .map_err(|e| CustodyError::Corrupt(format!("stored receipt: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A lockbox with no controllers in a temporary data dir, unsealed, with its transfer
    /// runner (which never gets past grant verification here: there is no peer to reach).
    async fn runner(dir: &std::path::Path) -> (Arc<Custody>, Transfers) {
        let custody = crate::custody::test_support::custody(dir, "").await;
        let tls = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
        };
        let attestor = Attestor::new(
            custody.clone(),
            tls.clone(),
            Vec::new(),
            custody.trusted_controllers(),
            std::time::Duration::from_secs(60),
            dir.join("data"),
        );
        let transfers = Transfers::new(custody.clone(), attestor, tls, HashMap::new());
        (custody, transfers)
    }

    /// A grant the source refuses is audited there (`transfer-send`, refused, naming the
    /// grant and the check), as the destination audits the grants it refuses.
    #[tokio::test]
    async fn a_grant_refused_at_the_source_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let (custody, transfers) = runner(dir.path()).await;
        let now = now_ms();
        let body = lockbox_crypto::GrantBody {
            grant_id: vec![0xab; 16],
            key_ids: vec!["8d19909b-21b6-428c-943e-d5dfc880254d".into()],
            source_node: "host-a".into(),
            dest_node: "host-b".into(),
            op: pb::GrantOp::Copy as i32,
            not_before_unix_ms: now - 1000,
            expires_unix_ms: now + 60_000,
            ..Default::default()
        };
        let bytes = lockbox_crypto::encode_grant_body(&body).unwrap();
        let signer = lockbox_crypto::SigningIdentity::generate().unwrap();
        let grant = pb::SignedGrant {
            signatures: vec![lockbox_crypto::sign_grant_body(&signer, "rogue", &bytes)],
            body: bytes,
        };
        let records = custody.audit_tail(10_000).unwrap().len();
        let (tx, _rx) = mpsc::channel(1);
        let who = Caller {
            actor: "uid:0".into(),
        };
        let e = match transfers.run(&who, &grant, tx).await {
            Ok(_) => panic!("an unsigned grant was run"),
            Err(e) => e,
        };
        assert!(e.to_string().contains("threshold not met"), "{e}");
        let tail = custody.audit_tail(10_000).unwrap();
        assert_eq!(tail.len(), records + 1, "one refusal record");
        let last = &tail[tail.len() - 1].entry.event;
        assert_eq!(last.action, "transfer-send");
        assert_eq!(last.outcome, "refused");
        assert!(last.detail.contains(&"ab".repeat(16)), "{}", last.detail);
        assert!(last.detail.contains("threshold not met"), "{}", last.detail);
    }
}
