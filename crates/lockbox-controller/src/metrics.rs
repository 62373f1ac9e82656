//! The controller's Prometheus metrics (docs/operations.md "Monitoring"): grants issued,
//! cosigned and refused, attestations, vouches, and which policy rule refused. Label values come from
//! fixed sets (ops, outcomes, rule names): never a node name, caller or key id from a request.

use std::sync::Arc;

use lockbox_metrics::{RpcMetrics, add};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: &'static str,
}

/// The metrics of one controller.
pub struct ControllerMetrics {
    registry: Arc<Registry>,
    rpc: RpcMetrics,
    grants: Family<GrantLabels, Counter>,
    attestations: Family<OutcomeLabel, Counter>,
    vouches: Family<OutcomeLabel, Counter>,
    policy_refusals: Family<RuleLabel, Counter>,
    audit_rollbacks: Counter,
}

/// The outcomes [`ControllerMetrics::vouch`] counts: `revoked` apart from other refusals, so
/// that a revoked node still asking (a stolen host trying to unseal) stands out.
pub const VOUCH_OUTCOMES: [&str; 3] = ["ok", "revoked", "refused"];

impl std::fmt::Debug for ControllerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerMetrics").finish_non_exhaustive()
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics::new()
    }
}

impl ControllerMetrics {
    /// Registers every metric (the names are a contract: the alerts and the dashboard in
    /// deploy/ use them).
    pub fn new() -> ControllerMetrics {
        let mut r = Registry::default();
        let rpc = RpcMetrics::register(&mut r, "lockbox_controller");
        let grants = add(
            &mut r,
            "lockbox_controller_grants",
            "Grant requests by op and outcome (issued, cosigned, refused)",
            Family::<GrantLabels, Counter>::default(),
        );
        let attestations = add(
            &mut r,
            "lockbox_controller_attestations",
            "Attestation requests by outcome (ok, refused)",
            Family::<OutcomeLabel, Counter>::default(),
        );
        let vouches = add(
            &mut r,
            "lockbox_controller_vouches",
            "Vouch requests by outcome (ok, revoked: the node is revoked here, refused: any other check)",
            Family::<OutcomeLabel, Counter>::default(),
        );
        let policy_refusals = add(
            &mut r,
            "lockbox_controller_policy_refusals",
            "Grant requests the policy refused, by the check that refused (caller, op, source, destination, max_keys, max_ttl)",
            Family::<RuleLabel, Counter>::default(),
        );
        let audit_rollbacks = add(
            &mut r,
            "lockbox_controller_audit_rollbacks",
            "Attestations whose node reported an audit checkpoint behind, or on another chain than, the one it reported before (a data dir restored from an older copy)",
            Counter::default(),
        );
        lockbox_metrics::register_build_info(
            &mut r,
            "lockbox_controller_build_info",
            "The lockbox-controller version running (value 1)",
            env!("CARGO_PKG_VERSION"),
        );
        lockbox_metrics::register_start_time(&mut r);
        // Every series of a fixed label set exists from the start at 0, so that `increase()`
        // sees the first refusal (a series born at 1 has no earlier sample).
        for (_, op) in lockbox_crypto::OP_NAMES {
            for outcome in ["issued", "cosigned", "refused"] {
                let _ = grants.get_or_create(&GrantLabels { op, outcome });
            }
        }
        for outcome in ["ok", "refused"] {
            let _ = attestations.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in VOUCH_OUTCOMES {
            let _ = vouches.get_or_create(&OutcomeLabel { outcome });
        }
        for rule in crate::policy::RULES {
            let _ = policy_refusals.get_or_create(&RuleLabel { rule });
        }
        ControllerMetrics {
            registry: Arc::new(r),
            rpc,
            grants,
            attestations,
            vouches,
            policy_refusals,
            audit_rollbacks,
        }
    }

    /// Counts a node found behind its earlier audit position (`positions.rs`).
    pub fn audit_rollback(&self) {
        self.audit_rollbacks.inc();
    }

    /// The registry the endpoint serves.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The per-request counters and histograms, for the server's layer.
    pub fn rpc(&self) -> &RpcMetrics {
        &self.rpc
    }

    /// Counts a grant request's end: `op` is a grant op name (`lockbox_crypto::op_name`),
    /// `outcome` one of issued, cosigned, refused.
    pub fn grant(&self, op: &'static str, outcome: &'static str) {
        self.grants
            .get_or_create(&GrantLabels { op, outcome })
            .inc();
    }

    /// Counts an attestation request's end (`ok` or `refused`).
    pub fn attestation(&self, outcome: &'static str) {
        self.attestations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a vouch request's end (one of [`VOUCH_OUTCOMES`]).
    pub fn vouch(&self, outcome: &'static str) {
        self.vouches.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a policy refusal under the check that refused.
    pub fn policy_refused(&self, rule: &'static str) {
        self.policy_refusals
            .get_or_create(&RuleLabel { rule })
            .inc();
    }
}
