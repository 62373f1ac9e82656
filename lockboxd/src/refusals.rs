//! The peer API's budget of refused deliveries per caller: a caller refused too often lately
//! is refused unread, so that one lockbox certificate sending garbage in a loop cannot make
//! this node write (and sync) an audit record per request.

/// Refused deliveries a caller may have in [`REFUSAL_WINDOW`] before its next ones are
/// refused unread. Every refusal is audited and synced; without a bound, one lockbox
/// certificate sending garbage in a loop would grow the audit log and use the disk at request
/// rate. A source that works gets no refusals; one retrying a real failure stays far below.
pub const REFUSALS_PER_WINDOW: usize = 60;
/// The window of [`REFUSALS_PER_WINDOW`].
pub const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Most callers tracked (the oldest is forgotten first).
const REFUSAL_CALLERS: usize = 4096;

/// Recent refused deliveries, by caller (mTLS identity).
#[derive(Default)]
pub(crate) struct RefusalBudget {
    seen: std::collections::HashMap<String, RefusalWindow>,
    order: std::collections::VecDeque<String>,
}

#[derive(Default)]
struct RefusalWindow {
    /// When this caller's deliveries were refused, within the window.
    refused: std::collections::VecDeque<std::time::Instant>,
    /// When a delivery refused unread (over the budget) was last audited.
    over_audited: Option<std::time::Instant>,
}

impl RefusalBudget {
    /// `None` when `caller` may be heard; `Some(audit)` when it is over its budget, `audit`
    /// true at most once per window (that refusal is audited, the others only counted).
    pub(crate) fn over(&mut self, caller: &str, now: std::time::Instant) -> Option<bool> {
        let w = self.seen.get_mut(caller)?;
        let expired = |t: &std::time::Instant| now.saturating_duration_since(*t) > REFUSAL_WINDOW;
        while w.refused.front().is_some_and(expired) {
            w.refused.pop_front();
        }
        if w.refused.len() < REFUSALS_PER_WINDOW {
            return None;
        }
        let audit = w.over_audited.is_none_or(|t| expired(&t));
        if audit {
            w.over_audited = Some(now);
        }
        Some(audit)
    }

    /// Counts a refused delivery of `caller`.
    pub(crate) fn refused(&mut self, caller: &str, now: std::time::Instant) {
        if !self.seen.contains_key(caller) {
            if self.seen.len() >= REFUSAL_CALLERS
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
            self.order.push_back(caller.to_owned());
        }
        let w = self.seen.entry(caller.to_owned()).or_default();
        w.refused.push_back(now);
        // Only the last REFUSALS_PER_WINDOW matter.
        while w.refused.len() > REFUSALS_PER_WINDOW {
            w.refused.pop_front();
        }
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A caller is heard until it has `REFUSALS_PER_WINDOW` refusals in the window; then it is
    /// refused unread, audited once per window, and heard again once old refusals expire.
    /// Another caller is not affected.
    #[test]
    fn a_caller_refused_too_often_is_refused_unread_and_audited_once_per_window() {
        let mut b = RefusalBudget::default();
        let t0 = Instant::now();
        let (a, other) = ("spiffe://d/lockbox/rogue", "spiffe://d/lockbox/good");
        for i in 0..REFUSALS_PER_WINDOW {
            assert_eq!(b.over(a, t0), None, "refusal {i} is still heard");
            b.refused(a, t0);
        }
        assert_eq!(
            b.over(a, t0),
            Some(true),
            "the first over the budget is audited"
        );
        for s in 1..30 {
            let t = t0 + Duration::from_secs(s);
            assert_eq!(b.over(a, t), Some(false), "audited once per window");
        }
        assert_eq!(b.over(other, t0), None);
        // Refused unread, it neither extends its wait nor grows its record.
        let later = t0 + REFUSAL_WINDOW + Duration::from_secs(1);
        assert_eq!(b.over(a, later), None, "heard again once the window passed");
        assert!(b.seen[a].refused.is_empty());
    }

    /// The table of callers is bounded: the oldest caller is forgotten first.
    #[test]
    fn the_callers_tracked_are_bounded() {
        let mut b = RefusalBudget::default();
        let t = Instant::now();
        for i in 0..REFUSAL_CALLERS + 10 {
            b.refused(&format!("spiffe://d/lockbox/n{i}"), t);
        }
        assert_eq!(b.seen.len(), REFUSAL_CALLERS);
        assert!(!b.seen.contains_key("spiffe://d/lockbox/n0"));
    }
}
