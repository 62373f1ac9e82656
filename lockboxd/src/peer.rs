//! The peer API (mTLS, lockbox identities only): `Identity` answers this node's attestation;
//! `Deliver` is the destination half of DESIGN.md §7. Everything is verified again here —
//! the caller's TLS identity, its attestation, the grant, every batch signature and seal —
//! before anything is stored, and storing is one atomic batch with the grant's consumption.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use lockbox_crypto::{
    AttestationContext, AttestationError, BatchContext, GrantSide, SealedBatch,
    TRANSFER_BATCH_FORMAT, VerifiedAttestation, check_attestation_claims, verify_attestation,
    verify_batch,
};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::peer_server::Peer;
use lockbox_tls::Role;
use tonic::{Request, Response, Status, Streaming};

use crate::attest::Attestor;
use crate::custody::{Caller, Custody, Incoming, ReceivedKey};
use crate::error::CustodyError;
use crate::refusals::{REFUSAL_WINDOW, REFUSALS_PER_WINDOW, RefusalBudget};

/// Keys per batch the destination accepts (the source sends fewer).
pub const MAX_BATCH_KEYS: usize = 10_000;

/// The peer service of one lockbox.
pub struct PeerApi {
    custody: Arc<Custody>,
    attestor: Arc<Attestor>,
    trust_domain: String,
    /// Source attestations whose signatures verified, by their exact signed bytes: a source
    /// presents the same attestation on every transfer until it renews it, and its Ed25519
    /// verification was one of five on a one-key transfer's critical path. The claims (time
    /// window, node, TLS key) are still checked on every delivery. The trusted controllers
    /// and threshold are fixed for the daemon's life, so an entry stays valid; bounded.
    verified_attestations: Mutex<Vec<(pb::SignedAttestation, VerifiedAttestation)>>,
    /// One permit per delivery being received ([`MAX_CONCURRENT_DELIVERIES`]).
    deliveries: Arc<tokio::sync::Semaphore>,
    /// Bytes of batches held by the deliveries being received, all together.
    in_flight: Arc<std::sync::atomic::AtomicU64>,
    /// Peer-assisted unseal: whom this node helps, and how.
    assist: Arc<crate::assist::AssistDesk>,
    /// Refused deliveries per caller ([`RefusalBudget`]).
    refusals: Mutex<RefusalBudget>,
}

/// Bytes one delivery holds, counted in [`PeerApi::in_flight`] until the delivery ends
/// (stored or refused), whatever way it ends.
struct Held {
    total: Arc<std::sync::atomic::AtomicU64>,
    mine: u64,
}

impl Held {
    /// Counts `n` more bytes; false (and nothing counted) when all deliveries together would
    /// pass [`MAX_DELIVERY_BYTES`].
    fn add(&mut self, n: u64) -> bool {
        use std::sync::atomic::Ordering;
        let before = self.total.fetch_add(n, Ordering::SeqCst);
        if before.saturating_add(n) > MAX_DELIVERY_BYTES {
            self.total.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        self.mine += n;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total
            .fetch_sub(self.mine, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Source attestations remembered at once (about one per peer node; renewed ones replace).
const ATTESTATION_MEMO: usize = 64;
/// Most versions of one key a delivery may carry (a key gains one per rekey; hundreds is
/// already far beyond any real key's history).
pub const MAX_VERSIONS_PER_KEY: usize = 256;
/// Most bytes (sealed material and attributes) one delivery may bring, all batches together,
/// and all the deliveries being received together: what the destination holds until they are
/// stored. A 1,000,000-key evacuation with
/// short labels is about 150 MB.
pub const MAX_DELIVERY_BYTES: u64 = 1 << 30;
/// The largest message of a delivery (its header, whose grant names every key, or one batch),
/// and so the peer service's decode limit: what one delivery makes this lockbox buffer at once
/// before any check can run. Sources cut batches at a quarter of it (`transfer::BATCH_BYTES`);
/// a grant of up to about 200,000 keys fits in a header.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Deliveries received at once; another is refused by name until one ends. With
/// [`MAX_MESSAGE_BYTES`] this bounds what hostile sources can make a destination buffer
/// (memory that `mlockall` then keeps), whatever the number of connections and streams.
pub const MAX_CONCURRENT_DELIVERIES: usize = 8;
/// The longest a source may leave a delivery without sending its next message: a source that
/// stalls gives its delivery slot back after this instead of holding it to the request timeout.
pub const DELIVERY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The next message of a delivery, or a refusal naming the stall once the source has sent
/// nothing for [`DELIVERY_IDLE`].
async fn next_message(
    stream: &mut Streaming<pb::DeliverRequest>,
) -> Result<Option<pb::DeliverRequest>, Status> {
    match tokio::time::timeout(DELIVERY_IDLE, stream.message()).await {
        Ok(m) => m,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the source sent nothing for {} s",
            DELIVERY_IDLE.as_secs()
        ))),
    }
}

impl PeerApi {
    /// Builds the service.
    pub fn new(
        custody: Arc<Custody>,
        attestor: Arc<Attestor>,
        trust_domain: String,
        assist: Arc<crate::assist::AssistDesk>,
    ) -> Self {
        PeerApi {
            assist,
            custody,
            attestor,
            trust_domain,
            verified_attestations: Mutex::new(Vec::new()),
            deliveries: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_DELIVERIES)),
            refusals: Mutex::new(RefusalBudget::default()),
            in_flight: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// [`verify_attestation`], skipping the signature checks for bytes that already passed
    /// them here.
    fn verify_source_attestation(
        &self,
        signed: &pb::SignedAttestation,
        ctx: &AttestationContext<'_>,
    ) -> Result<VerifiedAttestation, AttestationError> {
        let known = self
            .verified_attestations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(s, _)| s == signed)
            .map(|(_, v)| v.clone());
        if let Some(v) = known {
            check_attestation_claims(&v, ctx)?;
            return Ok(v);
        }
        let v = verify_attestation(signed, &self.custody.trusted_controllers(), ctx)?;
        let mut memo = self
            .verified_attestations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A renewal replaces the node's previous attestation; the oldest goes when full.
        memo.retain(|(_, old)| old.body.node != v.body.node);
        if memo.len() >= ATTESTATION_MEMO {
            memo.remove(0);
        }
        memo.push((signed.clone(), v.clone()));
        Ok(v)
    }

    /// The caller must be a lockbox of our trust domain; anyone else is refused, logged and
    /// audited.
    async fn caller<T>(
        &self,
        req: &Request<T>,
        action: &str,
    ) -> Result<lockbox_tls::SpiffeId, Status> {
        let id = lockbox_tls::peer_spiffe_id(req)
            .map_err(|e| Status::unauthenticated(format!("peer identity: {e}")))?;
        if id.role != Role::Lockbox || id.trust_domain != self.trust_domain {
            let why = format!(
                "the peer API serves lockboxes of {} only; caller is {id}",
                self.trust_domain
            );
            tracing::warn!(caller = %id, action, "refused a peer that is not a lockbox");
            let who = Caller { actor: id.uri() };
            self.custody.audit_refused(&who, action, why.clone()).await;
            return Err(Status::permission_denied(why));
        }
        Ok(id)
    }
}

use crate::custody::now_ms;

#[tonic::async_trait]
impl Peer for PeerApi {
    async fn identity(
        &self,
        req: Request<pb::IdentityRequest>,
    ) -> Result<Response<pb::SignedAttestation>, Status> {
        self.caller(&req, "peer-identity").await?;
        match self.attestor.current() {
            Some(a) => Ok(Response::new(a)),
            None => Err(Status::failed_precondition(
                "this lockbox has no valid attestation (controller unreachable, or sealed)",
            )),
        }
    }

    async fn assist_key(
        &self,
        req: Request<pb::AssistKeyRequest>,
    ) -> Result<Response<pb::AssistKeyResponse>, Status> {
        let caller = self.caller(&req, "unseal-assist-key").await?;
        self.assist.assist_key(&caller).map(Response::new)
    }

    async fn assist(
        &self,
        req: Request<pb::AssistRequest>,
    ) -> Result<Response<pb::AssistResponse>, Status> {
        let caller = self.caller(&req, "unseal-assist").await?;
        let spki = lockbox_tls::peer_spki_sha256(&req)
            .map_err(|e| Status::unauthenticated(format!("peer certificate: {e}")))?;
        self.assist
            .assist(&caller, &spki, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn deliver(
        &self,
        req: Request<Streaming<pb::DeliverRequest>>,
    ) -> Result<Response<pb::Receipt>, Status> {
        let mut seen = Delivery::default();
        // Who is asking, before anything of the request is read: a caller whose deliveries
        // were refused too often lately is refused unread (see `REFUSALS_PER_WINDOW`).
        let name = lockbox_tls::peer_spiffe_id(&req).ok().map(|id| id.uri());
        let over = name.as_deref().and_then(|n| {
            self.refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .over(n, std::time::Instant::now())
        });
        let result = if let (Some(audit), Some(name)) = (over, name.as_deref()) {
            let why = format!(
                "{REFUSALS_PER_WINDOW} deliveries from {name} were refused in the last {} s: \
                 its deliveries are refused unread until fewer were",
                REFUSAL_WINDOW.as_secs()
            );
            if audit {
                let who = Caller {
                    actor: name.to_owned(),
                };
                self.custody
                    .audit_refused(&who, "transfer-receive", why.clone())
                    .await;
            }
            Err(Status::resource_exhausted(why))
        } else {
            let result = match self.deliveries.clone().try_acquire_owned() {
                Ok(_permit) => self.deliver_counted(req, &mut seen).await,
                Err(_) => Err(Status::resource_exhausted(format!(
                    "this lockbox is receiving {MAX_CONCURRENT_DELIVERIES} deliveries already; \
                     run the transfer again when one has ended"
                ))),
            };
            // Refusals count against the caller; being busy or unavailable here does not.
            if let (Err(status), Some(name)) = (&result, name.as_deref())
                && !matches!(
                    status.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                )
            {
                self.refusals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .refused(name, std::time::Instant::now());
            }
            result
        };
        let outcome = match &result {
            Ok(_) => Ok(seen.keys),
            Err(status) => Err(status.code()),
        };
        self.custody
            .metrics()
            .transfer(crate::metrics::Role::Destination, seen.op, outcome);
        result
    }
}

/// What a delivery's metrics need to know of it: the grant's op (a fixed set of names) and how
/// many keys a fresh completion stored (0 for a retry answered from the record).
struct Delivery {
    op: &'static str,
    keys: u64,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            op: "unspecified",
            keys: 0,
        }
    }
}

impl PeerApi {
    async fn deliver_counted(
        &self,
        req: Request<Streaming<pb::DeliverRequest>>,
        seen: &mut Delivery,
    ) -> Result<Response<pb::Receipt>, Status> {
        let source = self.caller(&req, "transfer-receive").await?;
        let spki = lockbox_tls::peer_spki_sha256(&req)
            .map_err(|e| Status::unauthenticated(format!("peer certificate: {e}")))?;
        let who = Caller {
            actor: source.uri(),
        };
        let mut stream = req.into_inner();
        let header = match next_message(&mut stream).await? {
            Some(pb::DeliverRequest {
                msg: Some(pb::deliver_request::Msg::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a delivery starts with its header",
                ));
            }
        };
        let grant = header
            .grant
            .ok_or_else(|| Status::invalid_argument("the header carries no grant"))?;
        if let Ok(body) = lockbox_crypto::decode_grant_body(&grant.body) {
            seen.op = lockbox_crypto::op_name(body.op);
        }
        let attestation = header
            .source_attestation
            .ok_or_else(|| Status::invalid_argument("the header carries no source attestation"))?;

        // The grant first: a replay of a completed grant answers with the same receipt.
        let verified =
            match self
                .custody
                .verify_grant(&grant, GrantSide::Destination, Some(&source.name))
            {
                Ok(v) => v,
                Err(e) => {
                    let grant_id = lockbox_crypto::decode_grant_body(&grant.body)
                        .map(|b| hex::encode(b.grant_id))
                        .unwrap_or_default();
                    self.custody
                        .audit_transfer_failure(&who, "transfer-receive", &grant_id, &e)
                        .await;
                    return Err(Status::from(e));
                }
            };
        let grant_hex = hex::encode(verified.grant_id);
        let fail = |e: CustodyError| {
            let custody = self.custody.clone();
            let who = who.clone();
            let grant_hex = grant_hex.clone();
            async move {
                custody
                    .audit_transfer_failure(&who, "transfer-receive", &grant_hex, &e)
                    .await;
                Status::from(e)
            }
        };
        // A used grant id under another body is refused, and audited like every refusal.
        let record = match self
            .custody
            .grant_record(&verified, crate::custody::GrantRole::Destination)
        {
            Ok(r) => r,
            Err(e) => return Err(fail(e).await),
        };
        if let Some(r) = record {
            return Ok(Response::new(pb::Receipt {
                body: r.body,
                signature: r.signature,
            }));
        }
        if self.custody.public_keys().is_err() {
            return Err(fail(CustodyError::Sealed).await);
        }

        // The source's attestation: signed by our controllers, for the node TLS says is
        // calling, with the TLS key it is calling from.
        let ctx = AttestationContext {
            now_unix_ms: now_ms(),
            skew_ms: self.custody.clock_skew_ms(),
            threshold: 1,
            expected_node: Some(&source.name),
            peer_tls_spki_sha256: Some(&spki),
        };
        let source_att = match self.verify_source_attestation(&attestation, &ctx) {
            Ok(a) => a,
            Err(e) => {
                let err = CustodyError::InvalidArgument(format!("source attestation invalid: {e}"));
                return Err(fail(err).await);
            }
        };
        let replicate = verified.body.op == pb::GrantOp::Replicate as i32;
        if let Err(e) = self
            .custody
            .check_receivable(&verified.body.key_ids, replicate)
        {
            // A concurrent delivery of this same grant may have just stored it: then this
            // one is a retry and gets the same receipt.
            if let Ok(Some(r)) = self
                .custody
                .grant_record(&verified, crate::custody::GrantRole::Destination)
            {
                return Ok(Response::new(pb::Receipt {
                    body: r.body,
                    signature: r.signature,
                }));
            }
            return Err(fail(e).await);
        }

        let wanted: BTreeSet<&str> = verified.body.key_ids.iter().map(String::as_str).collect();
        let mut received: BTreeSet<(String, u32)> = BTreeSet::new();
        let mut versions_of: std::collections::HashMap<String, usize> =
            std::collections::HashMap::new();
        let mut delivered_bytes = 0u64;
        let mut held = Held {
            total: self.in_flight.clone(),
            mine: 0,
        };
        // A large delivery's keys go to a sealing thread as soon as each batch is opened and
        // checked, so the per-key sealing runs while later batches stream in. A small one (a
        // volume's key: latency matters, not throughput) is sealed here at its end, without
        // a thread hand-off. Small means both the grant (signed by the controllers) and the
        // source's declared total say so: a source cannot make this handler seal a large
        // grant's keys on the runtime's thread by understating its total. Either way only
        // where sealing runs changes, not what is checked or stored.
        let now = now_ms();
        let (to_sealer, batches) = std::sync::mpsc::channel::<Vec<Incoming>>();
        let expected = header.total_keys.max(verified.body.key_ids.len() as u64);
        let sealer = if expected > SEAL_GROUP as u64 {
            let custody = self.custody.clone();
            let grant = verified.clone();
            Sealer::Thread(tokio::task::spawn_blocking(move || {
                seal_as_they_come(&custody, &grant, now, batches)
            }))
        } else {
            Sealer::Here(batches)
        };
        let mut next_batch = 0u32;
        loop {
            let msg = match next_message(&mut stream).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    let e = CustodyError::InvalidArgument(
                        "the source closed the stream before its end marker".into(),
                    );
                    return Err(fail(e).await);
                }
                Err(s) => {
                    let e = CustodyError::InvalidArgument(format!(
                        "stream from the source broke: {}",
                        s.message()
                    ));
                    return Err(fail(e).await);
                }
            };
            let batch = match msg.msg {
                Some(pb::deliver_request::Msg::Batch(b)) => b,
                Some(pb::deliver_request::Msg::End(_)) => break,
                _ => {
                    let e =
                        CustodyError::InvalidArgument("unexpected message in a delivery".into());
                    return Err(fail(e).await);
                }
            };
            if batch.batch != next_batch || batch.keys.len() > MAX_BATCH_KEYS {
                let e = CustodyError::InvalidArgument(format!(
                    "batch {} out of order or too large (expected batch {next_batch}, at most {MAX_BATCH_KEYS} keys)",
                    batch.batch
                ));
                return Err(fail(e).await);
            }
            if batch.signature_format != TRANSFER_BATCH_FORMAT {
                let e = CustodyError::InvalidArgument(format!(
                    "batch {} is signed in format {}, this lockbox verifies format {TRANSFER_BATCH_FORMAT} \
                     (the source runs an older lockbox that does not sign key attributes: upgrade it)",
                    batch.batch, batch.signature_format
                ));
                return Err(fail(e).await);
            }
            next_batch += 1;
            if next_batch == 2 {
                crate::failpoint::hit("dest-mid-stream");
            }
            // Bounded before anything of the batch is opened or kept.
            let batch_bytes = batch
                .keys
                .iter()
                .map(|k| {
                    let labels: usize = k.labels.iter().map(|(n, v)| n.len() + v.len()).sum();
                    (k.ciphertext.len()
                        + k.key_id.len()
                        + labels
                        + k.clone_policy.len()
                        + k.version_state.len()) as u64
                })
                .sum::<u64>();
            delivered_bytes += batch_bytes;
            if delivered_bytes > MAX_DELIVERY_BYTES {
                let e = CustodyError::InvalidArgument(format!(
                    "the delivery is larger than {} MiB (batch {}): refused",
                    MAX_DELIVERY_BYTES >> 20,
                    batch.batch
                ));
                return Err(fail(e).await);
            }
            if !held.add(batch_bytes) {
                let e = CustodyError::InvalidArgument(format!(
                    "this lockbox holds {} MiB of deliveries in progress already (at most {} MiB \
                     in all; batch {}): run the transfer again when they have ended",
                    self.in_flight.load(std::sync::atomic::Ordering::SeqCst) >> 20,
                    MAX_DELIVERY_BYTES >> 20,
                    batch.batch
                ));
                return Err(fail(e).await);
            }
            let sealed = SealedBatch::from_wire(&batch);
            let bctx = BatchContext {
                grant_id: &verified.grant_id,
                batch: batch.batch,
                source_node: &verified.body.source_node,
                dest_node: &verified.body.dest_node,
            };
            if let Err(e) = verify_batch(
                &source_att.signing_public_key,
                &bctx,
                &sealed,
                &batch.signature,
            ) {
                let e =
                    CustodyError::InvalidArgument(format!("batch {} signature: {e}", batch.batch));
                return Err(fail(e).await);
            }
            let opened = match self.custody.open_transfer_batch(&bctx, &sealed) {
                Ok(o) => o,
                Err(e) => return Err(fail(e).await),
            };
            let mut incoming = Vec::with_capacity(opened.len());
            for ((key_id, version, material), meta) in opened.into_iter().zip(batch.keys) {
                if !wanted.contains(key_id.as_str()) {
                    let e = CustodyError::Grant(lockbox_crypto::GrantError::KeyNotCovered(key_id));
                    self.custody.metrics().grant_refused(&e);
                    return Err(fail(e).await);
                }
                if !received.insert((key_id.clone(), version)) {
                    let e = CustodyError::InvalidArgument(format!(
                        "key {key_id} version {version} sent twice"
                    ));
                    return Err(fail(e).await);
                }
                let count = versions_of.entry(key_id.clone()).or_default();
                *count += 1;
                if *count > MAX_VERSIONS_PER_KEY {
                    let e = CustodyError::InvalidArgument(format!(
                        "key {key_id}: more than {MAX_VERSIONS_PER_KEY} versions in one delivery"
                    ));
                    return Err(fail(e).await);
                }
                let labels: BTreeMap<String, String> = meta.labels.into_iter().collect();
                match Incoming::new(
                    key_id,
                    version,
                    &meta.version_state,
                    meta.current,
                    labels,
                    &meta.clone_policy,
                    material,
                ) {
                    Ok(k) => incoming.push(k),
                    Err(e) => return Err(fail(e).await),
                }
            }
            if to_sealer.send(incoming).is_err() {
                // The sealer stopped on an error: it is reported below.
                break;
            }
        }
        drop(to_sealer);
        let sealed = match sealer {
            Sealer::Thread(thread) => thread.await.unwrap_or_else(|e| {
                Err(CustodyError::Transfer(format!(
                    "sealing the received keys failed: {e}"
                )))
            }),
            Sealer::Here(batches) => seal_as_they_come(&self.custody, &verified, now, batches),
        };
        let keys = match sealed {
            Ok(keys) => keys,
            Err(e) => return Err(fail(e).await),
        };
        let got: BTreeSet<&str> = received.iter().map(|(k, _)| k.as_str()).collect();
        if let Some(missing) = wanted.iter().find(|k| !got.contains(*k)) {
            let e =
                CustodyError::InvalidArgument(format!("the delivery ended without key {missing}"));
            return Err(fail(e).await);
        }
        crate::failpoint::pause("dest-before-store").await;
        let fresh = keys.len() as u64;
        match self.custody.receive(&who, &verified, now, keys).await {
            Ok(r) => {
                seen.keys = fresh;
                Ok(Response::new(pb::Receipt {
                    body: r.body,
                    signature: r.signature,
                }))
            }
            Err(e) => Err(fail(e).await),
        }
    }
}

/// Keys sealed per group on the sealing thread: enough to split over the cores
/// (`par::try_map`), few enough that sealing keeps pace with the stream.
const SEAL_GROUP: usize = 4096;

/// Where a delivery's keys are sealed as they arrive (see `deliver`).
enum Sealer {
    /// On a blocking thread beside the stream (a large delivery).
    Thread(tokio::task::JoinHandle<Result<Vec<ReceivedKey>, CustodyError>>),
    /// In the handler, from this queue, once the stream has ended (a small one).
    Here(std::sync::mpsc::Receiver<Vec<Incoming>>),
}

/// The sealing thread of a delivery: groups the opened versions by key as they arrive (a
/// source sends each key's versions together) and seals complete keys in groups, until the
/// handler closes the channel. Stops at the first error; the handler then reports it.
fn seal_as_they_come(
    custody: &Custody,
    grant: &lockbox_crypto::VerifiedGrant,
    now: u64,
    batches: std::sync::mpsc::Receiver<Vec<Incoming>>,
) -> Result<Vec<ReceivedKey>, CustodyError> {
    let seal = |group: &mut Vec<(String, Vec<Incoming>)>, out: &mut Vec<ReceivedKey>| {
        let sealed = crate::par::try_map(group, |(key_id, versions)| {
            custody.seal_received(grant, now, key_id, versions)
        })?;
        // The plaintext versions are dropped (zeroized) here.
        group.clear();
        out.extend(sealed);
        Ok::<_, CustodyError>(())
    };
    let mut out = Vec::new();
    let mut group: Vec<(String, Vec<Incoming>)> = Vec::with_capacity(SEAL_GROUP);
    // The key whose versions are still arriving (the last one of the latest batch).
    let mut open: Option<(String, Vec<Incoming>)> = None;
    for batch in batches {
        for i in batch {
            match &mut open {
                Some((key_id, versions)) if *key_id == i.key_id => versions.push(i),
                _ => {
                    let next = (i.key_id.clone(), vec![i]);
                    if let Some(mut done) = open.replace(next) {
                        done.1.sort_by_key(|v| v.version);
                        group.push(done);
                    }
                }
            }
        }
        if group.len() >= SEAL_GROUP {
            seal(&mut group, &mut out)?;
        }
    }
    if let Some(mut done) = open {
        done.1.sort_by_key(|v| v.version);
        group.push(done);
    }
    seal(&mut group, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod held_tests {
    use super::*;

    /// Deliveries share one budget: what one holds is refused to another until it ends.
    #[test]
    fn deliveries_share_one_byte_budget_released_when_they_end() {
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut a = Held {
            total: total.clone(),
            mine: 0,
        };
        let mut b = Held {
            total: total.clone(),
            mine: 0,
        };
        assert!(a.add(MAX_DELIVERY_BYTES - 10));
        assert!(!b.add(11), "past the budget in all");
        assert!(b.add(10));
        assert!(!a.add(1));
        drop(a);
        assert_eq!(total.load(std::sync::atomic::Ordering::SeqCst), 10);
        assert!(b.add(1 << 20));
        drop(b);
        assert_eq!(total.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
