//! How many refusals of each caller the controller records one by one: past a budget a
//! minute, one record says the rest are counted, so that an identity asking in a loop for what
//! it may not have cannot grow the audit log (and its syncs) at request rate.

/// Refusals audited one by one per caller in [`REFUSAL_WINDOW`]; past that, a caller's
/// refusals are still refused and counted in the metrics, and one record says they are no longer
/// recorded one by one until the window moves on. Without a bound, any identity of the CA
/// asking for what it may not have, in a loop, grows the audit log (and its syncs) at request
/// rate.
pub const AUDITED_REFUSALS_PER_WINDOW: usize = 60;
/// The window of [`AUDITED_REFUSALS_PER_WINDOW`].
pub const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Most callers whose refusals are tracked (the oldest is forgotten first).
const REFUSAL_CALLERS: usize = 4096;

/// Per caller: when its refusals were audited in the window, and when the "no longer recorded
/// one by one" record was last written.
#[derive(Default)]
struct RefusalLog {
    audited: std::collections::VecDeque<std::time::Instant>,
    noted: Option<std::time::Instant>,
}

/// What to do with one refusal of a caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RefusalAudit {
    /// Record it.
    Record,
    /// Record that this caller's refusals are past the budget (once per window).
    NoteOverBudget,
    /// Count it only.
    Skip,
}

/// The refusal budgets of the callers seen lately.
#[derive(Default)]
pub(crate) struct RefusalBudgets {
    callers: std::collections::HashMap<String, RefusalLog>,
    order: std::collections::VecDeque<String>,
}

impl RefusalBudgets {
    pub(crate) fn decide(&mut self, caller: &str, now: std::time::Instant) -> RefusalAudit {
        if !self.callers.contains_key(caller) {
            if self.callers.len() >= REFUSAL_CALLERS
                && let Some(old) = self.order.pop_front()
            {
                self.callers.remove(&old);
            }
            self.order.push_back(caller.to_owned());
        }
        let log = self.callers.entry(caller.to_owned()).or_default();
        let expired = |t: &std::time::Instant| now.saturating_duration_since(*t) > REFUSAL_WINDOW;
        while log.audited.front().is_some_and(expired) {
            log.audited.pop_front();
        }
        if log.audited.len() < AUDITED_REFUSALS_PER_WINDOW {
            log.audited.push_back(now);
            return RefusalAudit::Record;
        }
        if log.noted.is_none_or(|t| expired(&t)) {
            log.noted = Some(now);
            return RefusalAudit::NoteOverBudget;
        }
        RefusalAudit::Skip
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A caller's refusals are recorded up to the budget, then one record says so per window,
    /// then they are only counted, until the window moves on; another caller is not affected.
    #[test]
    fn refusals_are_recorded_up_to_the_budget_then_noted_once_per_window() {
        let mut b = RefusalBudgets::default();
        let t0 = Instant::now();
        let (a, other) = ("spiffe://d/orchestrator/loop", "spiffe://d/admin/alice");
        for _ in 0..AUDITED_REFUSALS_PER_WINDOW {
            assert_eq!(b.decide(a, t0), RefusalAudit::Record);
        }
        assert_eq!(b.decide(a, t0), RefusalAudit::NoteOverBudget);
        for s in 1..30 {
            let t = t0 + Duration::from_secs(s);
            assert_eq!(b.decide(a, t), RefusalAudit::Skip);
        }
        assert_eq!(b.decide(other, t0), RefusalAudit::Record);
        let later = t0 + REFUSAL_WINDOW + Duration::from_secs(1);
        assert_eq!(b.decide(a, later), RefusalAudit::Record);
    }

    #[test]
    fn the_callers_tracked_are_bounded() {
        let mut b = RefusalBudgets::default();
        let t = Instant::now();
        for i in 0..REFUSAL_CALLERS + 5 {
            b.decide(&format!("spiffe://d/admin/u{i}"), t);
        }
        assert_eq!(b.callers.len(), REFUSAL_CALLERS);
        assert!(!b.callers.contains_key("spiffe://d/admin/u0"));
    }
}
