//! Per-key work of a large transfer, spread over the machine's cores.
//!
//! An evacuation reads, opens and seals every key of a lockbox. Done on one thread, each of
//! its phases leaves the other cores idle (the source reads while the destination waits, then
//! the reverse), so the keys are split into one contiguous chunk per core. The work itself is
//! unchanged: each item is handled exactly as the one-thread loop would, results come back in
//! the items' order, and the first error (in item order) is returned.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

/// Below this many items one thread does the job: starting threads would cost more than the
/// work (one key is ~10 µs of opening or sealing).
const MIN_ITEMS: usize = 2048;
/// At most this many threads per job, whatever the machine: a lockbox serves other callers
/// while it evacuates.
const MAX_THREADS: usize = 8;

/// The cores this process may use, asked once: `available_parallelism` reads the affinity
/// mask and cgroup quota files on every call (tens of microseconds, more than a one-key
/// transfer's work).
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(NonZeroUsize::get)
            .unwrap_or(1)
    })
}

/// Maps `f` over `items` in order, on up to one scoped thread per core when there are enough
/// items to be worth it. A thread that cannot be started leaves its chunk to the caller's
/// thread.
pub(crate) fn try_map<T, R, E, F>(items: &[T], f: F) -> Result<Vec<R>, E>
where
    T: Sync,
    R: Send,
    E: Send,
    F: Fn(&T) -> Result<R, E> + Sync,
{
    if items.len() < MIN_ITEMS {
        return items.iter().map(&f).collect();
    }
    let threads = cores()
        .min(MAX_THREADS)
        .min(items.len() / (MIN_ITEMS / 2))
        .max(1);
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let mut chunks = items.chunks(chunk);
        // The caller's thread takes the first chunk itself.
        let first = chunks.next().unwrap_or(&[]);
        let handles: Vec<_> = chunks
            .map(|part| {
                let spawned = std::thread::Builder::new()
                    .name("lockbox-par".into())
                    .spawn_scoped(s, move || part.iter().map(f).collect::<Result<Vec<R>, E>>());
                (part, spawned)
            })
            .collect();
        let mut out: Vec<R> = Vec::with_capacity(items.len());
        out.extend(first.iter().map(f).collect::<Result<Vec<R>, E>>()?);
        for (part, spawned) in handles {
            let results = match spawned {
                Ok(h) => match h.join() {
                    Ok(r) => r,
                    // Keep a worker's panic a panic, as it would be on one thread.
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                Err(_) => part.iter().map(f).collect(),
            };
            out.extend(results?);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_at_every_size() {
        for n in [0, 1, 5, MIN_ITEMS - 1, MIN_ITEMS, MIN_ITEMS * 3 + 7] {
            let items: Vec<usize> = (0..n).collect();
            let out: Vec<usize> = try_map(&items, |i| Ok::<_, ()>(i * 2)).unwrap_or_default();
            assert_eq!(
                out,
                items.iter().map(|i| i * 2).collect::<Vec<_>>(),
                "n = {n}"
            );
        }
    }

    #[test]
    fn the_first_error_in_item_order_is_returned() {
        let items: Vec<usize> = (0..MIN_ITEMS * 4).collect();
        let bad = [MIN_ITEMS * 3 + 1, MIN_ITEMS + 5];
        let r = try_map(&items, |i| if bad.contains(i) { Err(*i) } else { Ok(*i) });
        assert_eq!(r, Err(MIN_ITEMS + 5));
    }
}
