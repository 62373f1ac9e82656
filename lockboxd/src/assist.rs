//! Peer-assisted unseal, the helping peer's side (DESIGN.md §5.5): whom this node answers,
//! and the revocations it knows.
//!
//! A request is answered only when, in this order (identity before work): the caller is a
//! lockbox of our trust domain (mTLS), the caller is within its rate limit (before anything
//! of the request is looked at, so a flood of requests, well-formed or not, costs at most one
//! audit record per window), the request is bounded and well-formed, it names the caller as
//! owner, a trusted controller currently vouches for the caller and its TLS key, and no
//! controller has revoked it. The answer uses
//! the per-owner key of the caller (SPEC.md "Per-owner assist keys"), so even a vouched node
//! replaying another node's request learns nothing that opens that node's shares. Every
//! outcome is audited (owner, enrollment id, outcome); rate-limited requests are audited once
//! per window so a flood cannot fill the log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use lockbox_crypto::{TrustedControllers, VouchContext, verify_revocations, verify_vouch};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::controller_client::ControllerClient;
use lockbox_tls::{ClientTls, Expect, Role, SpiffeId, TlsFiles};
use prost::Message;
use tonic::Status;

use crate::config::ControllerRef;
use crate::custody::{Caller, Custody, now_ms};

/// Requests one caller may make per [`RATE_WINDOW`]: an owner's unseal loop asks each peer
/// once per round, with backoff from 1 s, so a dozen rounds fit in a minute.
pub const RATE_LIMIT: usize = 20;
/// See [`RATE_LIMIT`].
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Callers tracked by the limiter at once (authenticated lockboxes only; the oldest goes).
const RATE_CALLERS: usize = 4096;
/// How long an assist waits for a controller's revocation list before using the known one.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `Revocations` answer read from a controller: the largest body a list may have
/// (`MAX_REVOCATIONS_BODY_LEN`, about 13 MB at every bound) and room for its signatures.
/// The gRPC client's default (4 MiB) would refuse a large, valid list, and the peer would
/// silently keep its older one.
const MAX_REVOCATIONS_RESPONSE: usize =
    lockbox_crypto::vouch::MAX_REVOCATIONS_BODY_LEN + (64 << 10);
/// How far in the future a list's `issued_unix_ms` may be (the largest `clock_skew`): a list
/// from further ahead would be "newer" than every list its controller signs until then, so
/// no later revocation of that controller would replace it.
const MAX_LIST_FUTURE_MS: u64 = 10 * 60 * 1000;

/// One controller's latest signed list, verified.
#[derive(Clone)]
struct Known {
    issued_unix_ms: u64,
    revoked: Vec<(String, u64, String)>,
    signed: pb::SignedRevocations,
}

/// The revocations this node knows, per controller: refreshed from the controllers (on each
/// assist request and periodically) and kept in `data_dir/revocations` so a restart during a
/// controller outage still refuses revoked nodes. A revocation by any trusted controller
/// counts; a controller's newer list replaces its older one (so an unrevoke propagates).
pub struct Revocations {
    path: PathBuf,
    tls: TlsFiles,
    controllers: Vec<ControllerRef>,
    trusted: TrustedControllers,
    /// Our trust domain: a list for another domain is refused.
    trust_domain: String,
    known: RwLock<BTreeMap<String, Known>>,
    /// Held while the lists are saved: concurrent assists refresh (and save) at once, and two
    /// writers of the one temporary file would interleave their bytes, or an older snapshot
    /// would be renamed over a newer one.
    saving: Mutex<()>,
}

impl Revocations {
    /// Loads the saved lists (each verified again; a damaged file is logged and ignored: the
    /// next refresh fetches the lists again).
    pub fn new(
        data_dir: &std::path::Path,
        tls: TlsFiles,
        controllers: Vec<ControllerRef>,
        trusted: TrustedControllers,
        trust_domain: String,
    ) -> Arc<Self> {
        let r = Revocations {
            path: data_dir.join("revocations"),
            tls,
            controllers,
            trusted,
            trust_domain,
            known: RwLock::new(BTreeMap::new()),
            saving: Mutex::new(()),
        };
        match r.load() {
            Ok(n) if n > 0 => tracing::info!(lists = n, "loaded the known revocations"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring the saved revocations"),
        }
        Arc::new(r)
    }

    fn load(&self) -> Result<usize, String> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt as _;
        // A regular file only: a symlink is not followed, a FIFO not waited on.
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        if !f.metadata().is_ok_and(|m| m.is_file()) {
            return Err(format!("{}: not a regular file", self.path.display()));
        }
        // One list per trusted controller, each at most what a controller may send.
        let max = self.max_file_len();
        let mut bytes = Vec::new();
        f.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
            return Err(format!(
                "{}: larger than {max} bytes (one list per trusted controller)",
                self.path.display()
            ));
        }
        let saved = pb::SignedRevocationsList::decode(bytes.as_slice())
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut n = 0;
        for s in saved.lists {
            if self.accept(s).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Most bytes of the saved lists: one list per trusted controller.
    fn max_file_len(&self) -> u64 {
        let lists = u64::try_from(self.trusted.len().max(1)).unwrap_or(u64::MAX);
        let per_list = u64::try_from(MAX_REVOCATIONS_RESPONSE).unwrap_or(u64::MAX);
        lists.saturating_mul(per_list)
    }

    fn save(&self) {
        // The snapshot is taken under the lock too, so the last file written is the newest.
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let lists: Vec<pb::SignedRevocations> = self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|k| k.signed.clone())
            .collect();
        let bytes = pb::SignedRevocationsList { lists }.encode_to_vec();
        if let Err(e) = lockbox_store::write_file_atomic(&self.path, &bytes, 0o644) {
            tracing::warn!(error = %e, "cannot save the known revocations");
        }
    }

    /// Verifies a list and keeps it if it is its controller's newest. Returns whether it
    /// changed what this node knows.
    fn accept(&self, signed: pb::SignedRevocations) -> Result<bool, String> {
        self.accept_at(signed, now_ms())
    }

    /// [`Revocations::accept`] at `now_unix_ms`.
    fn accept_at(&self, signed: pb::SignedRevocations, now_unix_ms: u64) -> Result<bool, String> {
        let v = verify_revocations(&signed, &self.trusted).map_err(|e| e.to_string())?;
        if v.trust_domain != self.trust_domain {
            return Err(format!(
                "a revocation list of trust domain {}, not {}",
                crate::custody::quote(&v.trust_domain),
                self.trust_domain
            ));
        }
        if v.issued_unix_ms > now_unix_ms.saturating_add(MAX_LIST_FUTURE_MS) {
            return Err(format!(
                "a revocation list of controller {} issued in the future ({} unix ms, now is \
                 {now_unix_ms}): its controller's clock is wrong",
                crate::custody::quote(&v.issuer_key_id),
                v.issued_unix_ms
            ));
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = known.get(&v.issuer_key_id)
            && k.issued_unix_ms >= v.issued_unix_ms
        {
            return Ok(false);
        }
        known.insert(
            v.issuer_key_id.clone(),
            Known {
                issued_unix_ms: v.issued_unix_ms,
                revoked: v
                    .revoked
                    .iter()
                    .map(|r| (r.node.clone(), r.revoked_unix_ms, r.reason.clone()))
                    .collect(),
                signed,
            },
        );
        Ok(true)
    }

    /// Asks every controller for its list (each bounded by `timeout`) and keeps the newer
    /// ones; unreachable controllers leave what is known.
    pub async fn refresh(&self, timeout: Duration) {
        let tls = match ClientTls::load(&self.tls) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "revocations: local TLS identity");
                return;
            }
        };
        let mut changed = false;
        for c in &self.controllers {
            let fetched = tokio::time::timeout(timeout, async {
                let ch = tls
                    .connect(&c.url, Expect::role(Role::Controller))
                    .await
                    .map_err(|e| e.to_string())?;
                fetch_list(ch).await
            })
            .await;
            match fetched {
                Ok(Ok(signed)) => match self.accept(signed) {
                    Ok(c) => changed |= c,
                    Err(e) => tracing::warn!(controller = %c.key_id, error = %e,
                        "revocations: refused a list"),
                },
                Ok(Err(e)) => tracing::debug!(controller = %c.key_id, error = %e,
                    "revocations: controller unreachable"),
                Err(_) => tracing::debug!(controller = %c.key_id, "revocations: timed out"),
            }
        }
        if changed {
            self.save();
        }
    }

    /// Refreshes every `every` for the life of the daemon.
    pub async fn run(self: Arc<Self>, every: Duration) {
        loop {
            self.refresh(Duration::from_secs(10)).await;
            tokio::time::sleep(every).await;
        }
    }

    /// Why `node` is revoked, if a controller revoked it.
    pub fn revoked(&self, node: &str) -> Option<String> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        known.iter().find_map(|(issuer, k)| {
            k.revoked
                .iter()
                .find(|(n, _, _)| n == node)
                .map(|(_, at, reason)| {
                    format!("revoked by controller {issuer} at {at} (unix ms): {reason:?}")
                })
        })
    }

    /// Every node some controller revoked, sorted, for `status`.
    pub fn list(&self) -> Vec<String> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<String> = known
            .values()
            .flat_map(|k| k.revoked.iter().map(|(n, _, _)| n.clone()))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Asks one controller (over `ch`) for its signed revocation list, reading an answer as large
/// as a valid list can be.
async fn fetch_list(ch: tonic::transport::Channel) -> Result<pb::SignedRevocations, String> {
    ControllerClient::new(ch)
        .max_decoding_message_size(MAX_REVOCATIONS_RESPONSE)
        .revocations(pb::RevocationsRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_owned())
}

/// One caller's requests in the current window.
#[derive(Default)]
struct Window {
    /// When the requests let through in the last [`RATE_WINDOW`] arrived.
    admitted: VecDeque<Instant>,
    /// When a refusal of this caller was last audited.
    refusal_audited: Option<Instant>,
}

/// Requests per caller in the current window.
#[derive(Default)]
struct Limiter {
    seen: HashMap<String, Window>,
    order: VecDeque<String>,
}

impl Limiter {
    /// `Ok(())` to go ahead; `Err(audit)` when over the limit, `audit` true for at most one
    /// refusal per caller per [`RATE_WINDOW`] (the one that is audited).
    fn check(&mut self, caller: &str) -> Result<(), bool> {
        self.check_at(caller, Instant::now())
    }

    /// [`Limiter::check`] at `now`. Only admitted requests use up the budget: a refused one
    /// neither extends the caller's wait nor, within a window, adds an audit record.
    fn check_at(&mut self, caller: &str, now: Instant) -> Result<(), bool> {
        if !self.seen.contains_key(caller) {
            if self.seen.len() >= RATE_CALLERS
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
            self.order.push_back(caller.to_owned());
        }
        let w = self.seen.entry(caller.to_owned()).or_default();
        let expired = |t: &Instant| now.saturating_duration_since(*t) > RATE_WINDOW;
        while w.admitted.front().is_some_and(expired) {
            w.admitted.pop_front();
        }
        if w.admitted.len() >= RATE_LIMIT {
            let audit = w.refusal_audited.is_none_or(|t| expired(&t));
            if audit {
                w.refusal_audited = Some(now);
            }
            return Err(audit);
        }
        w.admitted.push_back(now);
        Ok(())
    }

    /// The rate limit as a refusal: [`Limiter::check`] with its status.
    fn admit(&mut self, caller: &str) -> Result<(), (Status, bool)> {
        self.check(caller).map_err(|audit| {
            (
                Status::resource_exhausted(format!(
                    "rate limited: {caller} allows {RATE_LIMIT} assist requests per {} s",
                    RATE_WINDOW.as_secs()
                )),
                audit,
            )
        })
    }
}

/// The checks of an assist request that need no key and no controller, in order: the caller's
/// rate limit first (so that no request beyond it, well-formed or not, costs an audit record
/// or any parsing), then the request's shape, then that it names the caller as owner. Returns
/// the blinded point.
fn screen(
    limiter: &Mutex<Limiter>,
    caller: &SpiffeId,
    req: &pb::AssistRequest,
) -> Result<[u8; 32], (Status, bool)> {
    limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(&caller.name)?;
    let bad = |m: String| (Status::invalid_argument(m), true);
    if req.owner_node.len() > 255 {
        return Err(bad("owner node name longer than 255 bytes".into()));
    }
    if req.enrollment_id.len() != 16 {
        return Err(bad(format!(
            "enrollment id must be 16 bytes, got {}",
            req.enrollment_id.len()
        )));
    }
    let blinded: [u8; 32] = req.blinded.as_slice().try_into().map_err(|_| {
        bad(format!(
            "blinded point must be 32 bytes, got {}",
            req.blinded.len()
        ))
    })?;
    if req.owner_node != caller.name {
        return Err((
            Status::permission_denied(format!(
                "the request names owner {} but the caller is {}: a lockbox is helped \
                 only to unseal itself",
                crate::custody::quote(&req.owner_node),
                caller.name
            )),
            true,
        ));
    }
    Ok(blinded)
}

/// The checks and the answer of `Peer.AssistKey` and `Peer.Assist`.
pub struct AssistDesk {
    custody: Arc<Custody>,
    revocations: Arc<Revocations>,
    limiter: Mutex<Limiter>,
}

impl AssistDesk {
    /// Builds the desk.
    pub fn new(custody: Arc<Custody>, revocations: Arc<Revocations>) -> Self {
        AssistDesk {
            custody,
            revocations,
            limiter: Mutex::new(Limiter::default()),
        }
    }

    /// The revocations this node knows.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// `AssistKey`: the caller (a lockbox, checked by the peer API) gets the key this node
    /// answers it with. Public; answered sealed or not.
    pub fn assist_key(&self, caller: &SpiffeId) -> Result<pb::AssistKeyResponse, Status> {
        let (base, owner) = self
            .custody
            .assist_key_for(&caller.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(pb::AssistKeyResponse {
            assist_public_key: base.to_vec(),
            owner_public_key: owner.to_vec(),
        })
    }

    /// `Assist`: see the module doc for the checks, in order.
    pub async fn assist(
        &self,
        caller: &SpiffeId,
        spki: &[u8; 32],
        req: pb::AssistRequest,
    ) -> Result<pb::AssistResponse, Status> {
        let who = Caller {
            actor: caller.uri(),
        };
        let enrollment = if req.enrollment_id.len() == 16 {
            hex::encode(&req.enrollment_id)
        } else {
            String::from("-")
        };
        match self.check(caller, spki, &req).await {
            Ok(blinded) => {
                let answer = self
                    .custody
                    .assist_answer(&who, &caller.name, &enrollment, &blinded)
                    .await
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                tracing::info!(owner = %caller.name, enrollment, "helped a peer unseal");
                self.custody.metrics().assist("answered");
                Ok(pb::AssistResponse {
                    answer: answer.to_vec(),
                })
            }
            Err((status, audit)) => {
                // Logged as audited: at most once per window for a caller over its limit.
                if audit {
                    tracing::warn!(caller = %caller, error = %status.message(),
                        "refused an assist request");
                } else {
                    tracing::debug!(caller = %caller, error = %status.message(),
                        "refused an assist request");
                }
                self.custody
                    .metrics()
                    .assist(if status.code() == tonic::Code::ResourceExhausted {
                        "rate_limited"
                    } else {
                        "refused"
                    });
                if audit {
                    let detail = format!(
                        "owner {} enrollment {enrollment}: {}",
                        crate::custody::quote(&req.owner_node),
                        status.message()
                    );
                    if let Err(e) = self
                        .custody
                        .audit_any(&who, "unseal-assist", "refused", detail)
                        .await
                    {
                        tracing::error!(error = %e, "cannot audit a refused assist");
                    }
                }
                Err(status)
            }
        }
    }

    /// The checks of [`AssistDesk::assist`]; on refusal, the status and whether to audit it.
    async fn check(
        &self,
        caller: &SpiffeId,
        spki: &[u8; 32],
        req: &pb::AssistRequest,
    ) -> Result<[u8; 32], (Status, bool)> {
        let blinded = screen(&self.limiter, caller, req)?;
        let vouch = req.vouch.as_ref().ok_or_else(|| {
            (
                Status::permission_denied("the request carries no controller vouch"),
                true,
            )
        })?;
        let ctx = VouchContext {
            now_unix_ms: now_ms(),
            skew_ms: self.custody.clock_skew_ms(),
            threshold: 1,
            expected_node: &caller.name,
            peer_tls_spki_sha256: spki,
        };
        let v = verify_vouch(vouch, &self.custody.trusted_controllers(), &ctx).map_err(|e| {
            (
                Status::permission_denied(format!("no valid controller vouch: {e}")),
                true,
            )
        })?;
        if v.trust_domain != caller.trust_domain {
            return Err((
                Status::permission_denied(format!(
                    "no valid controller vouch: it is for trust domain {}, the caller is of {}",
                    crate::custody::quote(&v.trust_domain),
                    caller.trust_domain
                )),
                true,
            ));
        }
        self.revocations.refresh(REFRESH_TIMEOUT).await;
        if let Some(why) = self.revocations.revoked(&caller.name) {
            return Err((
                Status::permission_denied(format!("node {} is {why}", caller.name)),
                true,
            ));
        }
        Ok(blinded)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limiter_allows_the_limit_then_refuses_and_audits_once() {
        let mut l = Limiter::default();
        for _ in 0..RATE_LIMIT {
            assert_eq!(l.check("a"), Ok(()));
        }
        assert_eq!(l.check("a"), Err(true));
        assert_eq!(l.check("a"), Err(false));
        // Another caller has its own budget.
        assert_eq!(l.check("b"), Ok(()));
    }

    fn lockbox(name: &str) -> SpiffeId {
        SpiffeId::new("td.example", Role::Lockbox, name).unwrap()
    }

    /// Audited refusals among `n` requests `req` of `caller` in one window.
    fn audited(
        limiter: &Mutex<Limiter>,
        caller: &SpiffeId,
        req: &pb::AssistRequest,
        n: usize,
    ) -> usize {
        (0..n)
            .filter(|_| matches!(screen(limiter, caller, req), Err((_, true))))
            .count()
    }

    #[test]
    fn malformed_requests_are_rate_limited_before_they_cost_an_audit_record() {
        let limiter = Mutex::new(Limiter::default());
        let caller = lockbox("host-a");
        let req = pb::AssistRequest {
            vouch: None,
            owner_node: "host-a".into(),
            enrollment_id: vec![0; 15],
            blinded: vec![0; 32],
        };
        // The limit's worth are refused as malformed (and audited), then one rate-limit
        // refusal is audited, and the rest of the flood nothing.
        assert_eq!(
            audited(&limiter, &caller, &req, RATE_LIMIT * 10),
            RATE_LIMIT + 1
        );
        let (status, audit) = screen(&limiter, &caller, &req).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("rate limited"), "{status:?}");
        assert!(!audit);
    }

    #[test]
    fn requests_naming_another_owner_are_rate_limited_before_they_cost_an_audit_record() {
        let limiter = Mutex::new(Limiter::default());
        let caller = lockbox("host-a");
        let req = pb::AssistRequest {
            vouch: None,
            owner_node: "host-b".into(),
            enrollment_id: vec![0; 16],
            blinded: vec![0; 32],
        };
        assert_eq!(
            audited(&limiter, &caller, &req, RATE_LIMIT * 10),
            RATE_LIMIT + 1
        );
        // Another caller has its own budget, and its request is checked as before.
        let (status, audit) = screen(&limiter, &lockbox("host-c"), &req).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("names owner"), "{status:?}");
        assert!(audit);
    }

    #[test]
    fn a_well_formed_request_passes_the_screen() {
        let limiter = Mutex::new(Limiter::default());
        let req = pb::AssistRequest {
            vouch: None,
            owner_node: "host-a".into(),
            enrollment_id: vec![7; 16],
            blinded: vec![9; 32],
        };
        assert_eq!(screen(&limiter, &lockbox("host-a"), &req).unwrap(), [9; 32]);
    }

    #[test]
    fn a_flooding_caller_is_audited_once_per_window_and_refusals_do_not_extend_its_wait() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..RATE_LIMIT {
            assert_eq!(l.check_at("a", t0), Ok(()));
        }
        let (mut admitted, mut audited) = (Vec::new(), Vec::new());
        // One request a second for three minutes.
        for s in 1..=180u64 {
            match l.check_at("a", t0 + Duration::from_secs(s)) {
                Ok(()) => admitted.push(s),
                Err(true) => audited.push(s),
                Err(false) => {}
            }
        }
        // The budget comes back a window after the admitted requests, however many were
        // refused meanwhile.
        assert_eq!(admitted.first(), Some(&61), "{admitted:?}");
        // At most one audited refusal per window: the first of each.
        assert_eq!(audited, vec![1, 81, 142]);
        assert!(
            audited
                .windows(2)
                .all(|w| w[1] - w[0] > RATE_WINDOW.as_secs())
        );
        // Twenty admitted a window, never more: 61-80, then 122-141 as those expire.
        assert_eq!(admitted.len(), 2 * RATE_LIMIT, "{admitted:?}");
    }

    /// A list of `issuer` revoking `nodes` (each with a reason of `reason_len` bytes).
    fn list(
        issuer: &lockbox_crypto::SigningIdentity,
        key_id: &str,
        issued_unix_ms: u64,
        nodes: &[String],
        reason_len: usize,
    ) -> pb::SignedRevocations {
        let body = pb::RevocationsBody {
            trust_domain: "td.example".into(),
            revoked: nodes
                .iter()
                .map(|n| pb::Revocation {
                    node: n.clone(),
                    revoked_unix_ms: 1,
                    reason: "r".repeat(reason_len),
                })
                .collect(),
            issued_unix_ms,
            issuer_key_id: key_id.into(),
        };
        let body = lockbox_crypto::encode_revocations_body(&body).unwrap();
        let sig = lockbox_crypto::sign_revocations_body(issuer, key_id, &body);
        pb::SignedRevocations {
            body,
            signatures: vec![sig],
        }
    }

    fn controller(byte: u8) -> lockbox_crypto::SigningIdentity {
        lockbox_crypto::SigningIdentity::from_secret(&lockbox_crypto::SecretBytes::new(vec![
            byte;
            32
        ]))
        .unwrap()
    }

    fn revocations(dir: &std::path::Path, controllers: &[(&str, u8)]) -> Arc<Revocations> {
        let mut trusted = TrustedControllers::new();
        for (id, byte) in controllers {
            trusted.insert((*id).into(), controller(*byte).public_key());
        }
        let none = PathBuf::from("/nonexistent");
        Revocations::new(
            dir,
            TlsFiles {
                cert: none.clone(),
                key: none.clone(),
                ca: none,
            },
            Vec::new(),
            trusted,
            "td.example".into(),
        )
    }

    /// `count` sorted node names of the largest length, starting with `prefix`.
    fn long_names(prefix: &str, count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("{prefix}{i:05}{}", "x".repeat(255 - prefix.len() - 5)))
            .collect()
    }

    #[test]
    fn a_list_issued_far_in_the_future_is_refused_and_does_not_block_later_lists() {
        let dir = tempfile::tempdir().unwrap();
        let r = revocations(dir.path(), &[("ctl-1", 1)]);
        let now = 1_750_000_000_000;
        let ctl = controller(1);
        let future = list(&ctl, "ctl-1", now + 3_600_000, &["host-x".into()], 0);
        let e = r.accept_at(future, now).unwrap_err();
        assert!(e.contains("issued in the future"), "{e}");
        assert_eq!(r.revoked("host-x"), None);
        // Within the skew is fine; and the next list of that controller replaces it.
        let soon = list(&ctl, "ctl-1", now + 60_000, &["host-x".into()], 0);
        assert_eq!(r.accept_at(soon, now), Ok(true));
        assert!(r.revoked("host-x").is_some());
        let later = list(&ctl, "ctl-1", now + 120_000, &[], 0);
        assert_eq!(r.accept_at(later, now + 120_000), Ok(true));
        assert_eq!(r.revoked("host-x"), None);
    }

    #[test]
    fn the_saved_lists_of_two_controllers_at_their_largest_load_again() {
        let dir = tempfile::tempdir().unwrap();
        let ids = [("ctl-1", 1), ("ctl-2", 2)];
        let r = revocations(dir.path(), &ids);
        let now = now_ms();
        let max = lockbox_crypto::vouch::MAX_REVOCATIONS;
        let reason = lockbox_crypto::vouch::MAX_REVOCATION_REASON_LEN;
        for (prefix, (id, byte)) in ["a", "b"].iter().zip(ids) {
            let l = list(&controller(byte), id, now, &long_names(prefix, max), reason);
            assert!(l.encoded_len() <= MAX_REVOCATIONS_RESPONSE);
            assert_eq!(r.accept(l), Ok(true));
        }
        r.save();
        let again = revocations(dir.path(), &ids);
        assert!(again.revoked(&long_names("a", 1)[0]).is_some());
        assert!(again.revoked(&long_names("b", max)[max - 1]).is_some());
    }

    /// The saved lists are read only from a regular file: a FIFO there (which would hang the
    /// start) or a symlink is refused at once, and nothing is known revoked from it.
    #[test]
    fn the_saved_lists_are_read_only_from_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = revocations(dir.path(), &[("ctl-1", 1)]);
        let path = r.path.clone();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let started = std::time::Instant::now();
        let e = r.load().unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        assert!(r.load().is_err());
    }

    #[test]
    fn a_save_waits_for_the_one_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let r = revocations(dir.path(), &[("ctl-1", 1)]);
        let l = list(&controller(1), "ctl-1", now_ms(), &["host-x".into()], 0);
        assert_eq!(r.accept(l), Ok(true));
        let path = dir.path().join("revocations");
        // Another assist's save is in progress: this one neither writes the shared temporary
        // file meanwhile nor renames an older snapshot over a newer one.
        let in_progress = r.saving.lock().unwrap();
        std::thread::scope(|scope| {
            let saver = scope.spawn(|| r.save());
            std::thread::sleep(Duration::from_millis(300));
            assert!(!path.exists(), "saved while another save was in progress");
            assert!(!dir.path().join(".revocations.tmp").exists());
            drop(in_progress);
            saver.join().unwrap();
        });
        assert_eq!(revocations(dir.path(), &[("ctl-1", 1)]).list(), ["host-x"]);
    }

    /// A save killed part-way leaves its temporary file (any bytes) beside the lists saved
    /// before: the next start loads those and ignores the leftover, and the next save
    /// replaces it.
    #[test]
    fn a_save_killed_midway_leaves_the_lists_saved_before() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = [("ctl-1", 1)];
        let r = revocations(dir.path(), &ctl);
        let now = now_ms();
        let l = list(&controller(1), "ctl-1", now, &["host-x".into()], 0);
        assert_eq!(r.accept(l), Ok(true));
        r.save();
        let tmp = dir.path().join(".revocations.tmp");
        std::fs::write(&tmp, b"\x0a\xff half a list").unwrap();
        let again = revocations(dir.path(), &ctl);
        assert_eq!(again.list(), ["host-x"]);
        let names = ["host-x".to_string(), "host-y".to_string()];
        let l = list(&controller(1), "ctl-1", now + 1, &names, 0);
        assert_eq!(again.accept(l), Ok(true));
        again.save();
        assert!(!tmp.exists());
        assert_eq!(revocations(dir.path(), &ctl).list(), names);
    }

    /// A controller that answers `Revocations` with one fixed list.
    struct Fixed(pb::SignedRevocations);

    #[tonic::async_trait]
    impl lockbox_proto::v1::controller_server::Controller for Fixed {
        async fn attest(
            &self,
            _: tonic::Request<pb::AttestRequest>,
        ) -> Result<tonic::Response<pb::SignedAttestation>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn issue_grant(
            &self,
            _: tonic::Request<pb::IssueGrantRequest>,
        ) -> Result<tonic::Response<pb::SignedGrant>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn cosign_grant(
            &self,
            _: tonic::Request<pb::CosignGrantRequest>,
        ) -> Result<tonic::Response<pb::SignedGrant>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn vouch(
            &self,
            _: tonic::Request<pb::VouchRequest>,
        ) -> Result<tonic::Response<pb::SignedVouch>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn revocations(
            &self,
            _: tonic::Request<pb::RevocationsRequest>,
        ) -> Result<tonic::Response<pb::SignedRevocations>, Status> {
            Ok(tonic::Response::new(self.0.clone()))
        }
    }

    #[tokio::test]
    async fn a_list_larger_than_the_grpc_default_is_fetched() {
        let max = lockbox_crypto::vouch::MAX_REVOCATIONS;
        let reason = lockbox_crypto::vouch::MAX_REVOCATION_REASON_LEN;
        let big = list(&controller(1), "ctl-1", 1, &long_names("a", max), reason);
        assert!(
            big.encoded_len() > 4 << 20,
            "larger than tonic's default limit"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            lockbox_proto::v1::controller_server::ControllerServer::new(Fixed(big.clone()))
                .max_encoding_message_size(64 << 20);
        let served = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        assert_eq!(fetch_list(ch).await.unwrap(), big);
        served.abort();
    }

    #[test]
    fn limiter_tracks_a_bounded_number_of_callers() {
        let mut l = Limiter::default();
        for i in 0..RATE_CALLERS + 10 {
            assert_eq!(l.check(&format!("n{i}")), Ok(()));
        }
        assert!(l.seen.len() <= RATE_CALLERS);
    }
}
