//! The daemon's Prometheus metrics (docs/operations.md "Monitoring"): what an operator of a
//! storage fleet learns from monitoring rather than from logs: a sealed node, an attestation
//! about to lapse, failing transfers, slow syncs, refused grants.
//!
//! Every label value comes from a small fixed set (key states, gRPC method and code names, grant
//! ops, the checks of grant verification): a scrape never carries a key id, a label of a key,
//! a node name taken from a request, or anything secret. Metrics are kept whether or not the
//! endpoint is on (atomic adds); only the per-request layer is left out when it is off.

use std::sync::Arc;

use lockbox_metrics::{RpcMetrics, add};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::custody::KeyState;
use crate::error::CustodyError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferLabels {
    role: &'static str,
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferKeysLabels {
    role: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The outcomes `lockbox_unseal_assists_total{outcome}` counts at a helping peer.
pub const ASSIST_OUTCOMES: [&str; 3] = ["answered", "refused", "rate_limited"];

/// The reasons `lockbox_grants_refused_total{reason}` counts: every `GrantError::code` and
/// the reuse of a grant id with another body.
const GRANT_REFUSALS: [&str; 11] = [
    "malformed",
    "unknown_signer",
    "bad_signature",
    "threshold_not_met",
    "not_yet_valid",
    "expired",
    "wrong_source",
    "wrong_destination",
    "key_not_covered",
    "already_consumed",
    "grant_id_reused",
];

/// The key states `lockbox_keys{state}` reports, in the order of [`KeyCounts`].
pub const KEY_STATES: [&str; 4] = ["active", "replica", "destroyed", "moved"];

/// How many key records are in each state (the order of [`KEY_STATES`]).
pub type KeyCounts = [u64; 4];

/// Which [`KEY_STATES`] entry a key's state is counted under.
pub fn state_index(state: &KeyState) -> usize {
    match state {
        KeyState::Active => 0,
        KeyState::Replica => 1,
        KeyState::Destroyed => 2,
        KeyState::Moved(_) => 3,
    }
}

/// Which end of a transfer this node was, for `lockbox_transfers_total{role}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the keys.
    Source,
    /// We received them.
    Destination,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Destination => "destination",
        }
    }
}

/// The metrics of one lockboxd.
pub struct Metrics {
    registry: Arc<Registry>,
    rpc: RpcMetrics,
    sealed: Gauge,
    keys: Family<StateLabel, Gauge>,
    sync_duration: Histogram,
    sync_batch: Histogram,
    transfers: Family<TransferLabels, Counter>,
    transferred_keys: Family<TransferKeysLabels, Counter>,
    grants_refused: Family<ReasonLabel, Counter>,
    attestation_expiry: Gauge,
    kek_rotations: Counter,
    audit_records: Counter,
    memory_locked: Gauge,
    assists: Family<OutcomeLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(false)
    }
}

impl Metrics {
    /// Registers every metric (names are a contract: docs/operations.md, the alerts and the
    /// dashboard in deploy/ use them). `attested`: the node has `[tls]` and controllers, so
    /// it holds (or should hold) a controller attestation; a standalone lockbox exports no
    /// attestation expiry rather than a 0 that reads as "missing".
    pub fn new(attested: bool) -> Metrics {
        let mut r = Registry::default();
        let rpc = RpcMetrics::register(&mut r, "lockbox");
        let sealed = add(
            &mut r,
            "lockbox_sealed",
            "1 while this lockbox is sealed (it serves no key), else 0",
            Gauge::default(),
        );
        let keys = add(
            &mut r,
            "lockbox_keys",
            "Key records by state (destroyed and moved are tombstones); absent while sealed after an upgrade, until the first unseal counts them",
            Family::<StateLabel, Gauge>::default(),
        );
        let sync_duration = Histogram::new(lockbox_metrics::latency_buckets());
        r.register_with_unit(
            "lockbox_store_sync_duration",
            "Time of one journal write and fdatasync of the store (one per group commit)",
            Unit::Seconds,
            sync_duration.clone(),
        );
        let sync_batch = add(
            &mut r,
            "lockbox_store_sync_batch_size",
            "Committed write batches made durable by one sync (group commit)",
            Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        );
        let transfers = add(
            &mut r,
            "lockbox_transfers",
            "Transfers run by this node, by role (source or destination), grant op and outcome (ok, refused: a check said no; failed: the peer, network or disk)",
            Family::<TransferLabels, Counter>::default(),
        );
        let transferred_keys = add(
            &mut r,
            "lockbox_transferred_keys",
            "Keys sent or received in completed transfers (a retry answered with the stored receipt counts none)",
            Family::<TransferKeysLabels, Counter>::default(),
        );
        let grants_refused = add(
            &mut r,
            "lockbox_grants_refused",
            "Grants refused by this node, by the check that failed",
            Family::<ReasonLabel, Counter>::default(),
        );
        let attestation_expiry = Gauge::default();
        if attested {
            r.register(
                "lockbox_attestation_expiry_timestamp_seconds",
                "When this node's controller attestation expires (unix seconds); 0 while it holds none",
                attestation_expiry.clone(),
            );
        }
        let kek_rotations = add(
            &mut r,
            "lockbox_kek_rotations",
            "KEK rotations completed since start (by hand, by shred_rotation, or resumed at unseal)",
            Counter::default(),
        );
        let audit_records = add(
            &mut r,
            "lockbox_audit_records",
            "Audit records written since start (refusals included)",
            Counter::default(),
        );
        let memory_locked = add(
            &mut r,
            "lockbox_memory_locked",
            "1 when the daemon's memory is locked (mlockall), so key material cannot reach swap",
            Gauge::default(),
        );
        let assists = add(
            &mut r,
            "lockbox_unseal_assists",
            "Peer-assisted unseal requests this node handled as a helping peer, by outcome (answered; refused: not the owner, no valid vouch, revoked, malformed; rate_limited)",
            Family::<OutcomeLabel, Counter>::default(),
        );
        for outcome in ASSIST_OUTCOMES {
            let _ = assists.get_or_create(&OutcomeLabel { outcome });
        }
        lockbox_metrics::register_build_info(
            &mut r,
            "lockbox_build_info",
            "The lockboxd version running (value 1)",
            env!("CARGO_PKG_VERSION"),
        );
        lockbox_metrics::register_start_time(&mut r);
        // Every series of a fixed label set exists from the start at 0, so that `increase()`
        // sees the first failure or refusal (a series born at 1 has no earlier sample).
        for role in [Role::Source, Role::Destination] {
            for (_, op) in lockbox_crypto::OP_NAMES {
                for outcome in ["ok", "refused", "failed"] {
                    let _ = transfers.get_or_create(&TransferLabels {
                        role: role.label(),
                        op,
                        outcome,
                    });
                }
                let _ = transferred_keys.get_or_create(&TransferKeysLabels {
                    role: role.label(),
                    op,
                });
            }
        }
        for reason in GRANT_REFUSALS {
            let _ = grants_refused.get_or_create(&ReasonLabel { reason });
        }
        Metrics {
            registry: Arc::new(r),
            rpc,
            sealed,
            keys,
            sync_duration,
            sync_batch,
            transfers,
            transferred_keys,
            grants_refused,
            attestation_expiry,
            kek_rotations,
            audit_records,
            memory_locked,
            assists,
        }
    }

    /// Counts one assist request handled as a helping peer (`outcome` one of
    /// [`ASSIST_OUTCOMES`]).
    pub fn assist(&self, outcome: &'static str) {
        self.assists.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// The registry the endpoint serves.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The per-request counters and histograms, for the servers' layers.
    pub fn rpc(&self) -> &RpcMetrics {
        &self.rpc
    }

    /// Records whether the node is sealed.
    pub fn set_sealed(&self, sealed: bool) {
        self.sealed.set(i64::from(sealed));
    }

    /// Records the key counts by state (`None`: not known until the next unseal).
    pub fn set_keys(&self, counts: Option<&KeyCounts>) {
        match counts {
            Some(counts) => {
                for (state, n) in KEY_STATES.iter().zip(counts) {
                    self.keys
                        .get_or_create(&StateLabel { state })
                        .set(i64::try_from(*n).unwrap_or(i64::MAX));
                }
            }
            None => self.keys.clear(),
        }
    }

    /// Records one sync of the store.
    pub fn observe_sync(&self, stats: lockbox_store::SyncStats) {
        self.sync_duration.observe(stats.duration.as_secs_f64());
        self.sync_batch.observe(stats.batches as f64);
    }

    /// Records a transfer's end. `op` is a grant op name (`lockbox_crypto::op_name`:
    /// "unspecified" when the grant did not decode); `keys` counts the keys a fresh completion
    /// moved (0 for a retry answered from the record).
    pub fn transfer(
        &self,
        role: Role,
        op: &'static str,
        result: std::result::Result<u64, tonic::Code>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(code) if refusal(code) => "refused",
            Err(_) => "failed",
        };
        self.transfers
            .get_or_create(&TransferLabels {
                role: role.label(),
                op,
                outcome,
            })
            .inc();
        if let Ok(keys) = result
            && keys > 0
        {
            self.transferred_keys
                .get_or_create(&TransferKeysLabels {
                    role: role.label(),
                    op,
                })
                .inc_by(keys);
        }
    }

    /// Counts a refused grant when `err` is one (any other error is not counted here).
    pub fn grant_refused(&self, err: &CustodyError) {
        let reason = match err {
            CustodyError::Grant(g) => g.code(),
            CustodyError::GrantIdReused { .. } => "grant_id_reused",
            _ => return,
        };
        self.grants_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Records when the attestation held now expires (`None`: none held).
    pub fn set_attestation_expiry(&self, expires_unix_ms: Option<u64>) {
        let secs = expires_unix_ms.map_or(0, |ms| ms / 1000);
        self.attestation_expiry
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    /// Counts a completed KEK rotation.
    pub fn kek_rotated(&self) {
        self.kek_rotations.inc();
    }

    /// Counts audit records written.
    pub fn audit_written(&self, n: u64) {
        self.audit_records.inc_by(n);
    }

    /// Records whether memory is locked.
    pub fn set_memory_locked(&self, locked: bool) {
        self.memory_locked.set(i64::from(locked));
    }
}

/// Whether a gRPC code means "a check said no" (the request was wrong or not allowed) rather
/// than "something failed" (peer, network, disk).
fn refusal(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        InvalidArgument
            | PermissionDenied
            | Unauthenticated
            | NotFound
            | AlreadyExists
            | FailedPrecondition
            | OutOfRange
            | ResourceExhausted
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &m.registry).unwrap();
        s
    }

    #[test]
    fn every_metric_of_the_contract_is_registered() {
        let m = Metrics::new(true);
        m.set_keys(Some(&[3, 1, 2, 0]));
        m.transfer(Role::Source, "move", Ok(5));
        m.grant_refused(&CustodyError::Grant(lockbox_crypto::GrantError::Expired {
            expires_unix_ms: 1,
            now_unix_ms: 2,
        }));
        let t = text(&m);
        for name in [
            "lockbox_sealed ",
            "lockbox_keys{state=\"active\"} 3",
            "lockbox_keys{state=\"moved\"} 0",
            "lockbox_store_sync_duration_seconds_bucket",
            "lockbox_store_sync_batch_size_bucket",
            "lockbox_transfers_total{role=\"source\",op=\"move\",outcome=\"ok\"} 1",
            "lockbox_transferred_keys_total{role=\"source\",op=\"move\"} 5",
            "lockbox_grants_refused_total{reason=\"expired\"} 1",
            "lockbox_attestation_expiry_timestamp_seconds ",
            "lockbox_kek_rotations_total ",
            "lockbox_audit_records_total ",
            "lockbox_memory_locked ",
            "lockbox_unseal_assists_total{outcome=\"rate_limited\"} 0",
            "lockbox_build_info{version=",
        ] {
            assert!(t.contains(name), "{name} missing from:\n{t}");
        }
    }

    /// Every check of grant verification has its series from the start.
    #[test]
    fn every_grant_error_code_is_a_listed_reason() {
        use lockbox_crypto::GrantError as G;
        let s = String::new;
        for e in [
            G::Malformed(s()),
            G::UnknownSigner(s()),
            G::BadSignature(s()),
            G::ThresholdNotMet {
                valid: 0,
                required: 1,
            },
            G::NotYetValid {
                not_before_unix_ms: 0,
                now_unix_ms: 0,
            },
            G::Expired {
                expires_unix_ms: 0,
                now_unix_ms: 0,
            },
            G::WrongSource {
                expected: s(),
                got: s(),
            },
            G::WrongDestination {
                expected: s(),
                got: s(),
            },
            G::KeyNotCovered(s()),
            G::AlreadyConsumed(s()),
        ] {
            assert!(GRANT_REFUSALS.contains(&e.code()), "{}", e.code());
        }
    }

    #[test]
    fn refusals_and_failures_are_told_apart() {
        let m = Metrics::new(true);
        m.transfer(
            Role::Destination,
            "copy",
            Err(tonic::Code::PermissionDenied),
        );
        m.transfer(Role::Destination, "copy", Err(tonic::Code::Unavailable));
        m.transfer(Role::Destination, "copy", Ok(0));
        let t = text(&m);
        assert!(t.contains("outcome=\"refused\"} 1"), "{t}");
        assert!(t.contains("outcome=\"failed\"} 1"), "{t}");
        assert!(
            t.contains("lockbox_transferred_keys_total{role=\"destination\",op=\"copy\"} 0"),
            "{t}"
        );
        assert!(t.contains("lockbox_grants_refused_total{reason=\"bad_signature\"} 0"));
    }
}
