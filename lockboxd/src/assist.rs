//! Peer-assisted unseal, the helping peer's side (DESIGN.md §5.5): whom this node answers,
//! and the revocations it knows.
//!
//! A request is answered only when, in this order (identity before work): the caller is a
//! lockbox of our trust domain (mTLS), the request is bounded and well-formed, it names the
//! caller as owner, the caller is within its rate limit, a trusted controller currently
//! vouches for the caller and its TLS key, and no controller has revoked it. The answer uses
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
/// Most bytes of the saved revocation lists read at start.
const MAX_REVOCATIONS_FILE: u64 = 16 << 20;

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
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let mut bytes = Vec::new();
        f.take(MAX_REVOCATIONS_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        if bytes.len() as u64 > MAX_REVOCATIONS_FILE {
            return Err(format!("{}: larger than 16 MiB", self.path.display()));
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

    fn save(&self) {
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
        let v = verify_revocations(&signed, &self.trusted).map_err(|e| e.to_string())?;
        if v.trust_domain != self.trust_domain {
            return Err(format!(
                "a revocation list of trust domain {}, not {}",
                crate::custody::quote(&v.trust_domain),
                self.trust_domain
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
                ControllerClient::new(ch)
                    .revocations(pb::RevocationsRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_owned())
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

/// Requests per caller in the current window.
#[derive(Default)]
struct Limiter {
    seen: HashMap<String, VecDeque<Instant>>,
    order: VecDeque<String>,
}

impl Limiter {
    /// `Ok(())` to go ahead; `Err(first)` when over the limit, `first` true for the first
    /// refusal of the window (the one that is audited).
    fn check(&mut self, caller: &str) -> Result<(), bool> {
        let now = Instant::now();
        if !self.seen.contains_key(caller) {
            if self.seen.len() >= RATE_CALLERS
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
            self.order.push_back(caller.to_owned());
        }
        let q = self.seen.entry(caller.to_owned()).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > RATE_WINDOW)
        {
            q.pop_front();
        }
        if q.len() >= RATE_LIMIT {
            // Count refusals too (bounded), so only the first one of a window is audited.
            let first = q.len() == RATE_LIMIT;
            if q.len() < RATE_LIMIT * 2 {
                q.push_back(now);
            }
            return Err(first);
        }
        q.push_back(now);
        Ok(())
    }
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
                tracing::warn!(caller = %caller, error = %status.message(),
                    "refused an assist request");
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
        if let Err(first) = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&caller.name)
        {
            return Err((
                Status::resource_exhausted(format!(
                    "rate limited: {} allows {RATE_LIMIT} assist requests per {} s",
                    caller.name,
                    RATE_WINDOW.as_secs()
                )),
                first,
            ));
        }
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

    #[test]
    fn limiter_tracks_a_bounded_number_of_callers() {
        let mut l = Limiter::default();
        for i in 0..RATE_CALLERS + 10 {
            assert_eq!(l.check(&format!("n{i}")), Ok(()));
        }
        assert!(l.seen.len() <= RATE_CALLERS);
    }
}
