//! Statements signed lately, served again to the same request for a short while: a caller
//! asking in a loop then costs one signature and one audit record per period, not one per
//! request. The checks in front of them still run on every request.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What was signed for each request key, and when; at most `max` entries (past that, the
/// expired ones go, then all if none had expired).
pub(crate) struct Recent<K, V> {
    max: usize,
    items: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Recent<K, V> {
    /// An empty table of at most `max` entries.
    pub(crate) fn new(max: usize) -> Self {
        Recent {
            max,
            items: Mutex::new(HashMap::new()),
        }
    }

    /// What was signed for `key` less than `reuse` ago, if anything.
    pub(crate) fn get(&self, key: &K, reuse: Duration) -> Option<V> {
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        items
            .get(key)
            .filter(|(at, _)| at.elapsed() < reuse)
            .map(|(_, v)| v.clone())
    }

    /// Keeps `value`, signed now for `key`; `reuse` says which older entries may go.
    pub(crate) fn put(&self, key: K, value: V, reuse: Duration) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if items.len() >= self.max {
            items.retain(|_, (at, _)| at.elapsed() < reuse);
            if items.len() >= self.max {
                items.clear();
            }
        }
        items.insert(key, (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_again_while_young_and_bounded() {
        let r = Recent::new(2);
        let long = Duration::from_secs(60);
        r.put("a", 1, long);
        assert_eq!(r.get(&"a", long), Some(1));
        assert_eq!(
            r.get(&"a", Duration::ZERO),
            None,
            "too old for a zero window"
        );
        assert_eq!(r.get(&"b", long), None);
        r.put("b", 2, long);
        // Full, nothing expired: cleared before the third goes in.
        r.put("c", 3, long);
        assert_eq!(r.get(&"a", long), None);
        assert_eq!(r.get(&"c", long), Some(3));
    }
}
