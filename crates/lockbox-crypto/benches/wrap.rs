//! Transfer wrapping throughput (DESIGN.md §7, STACK.md "What the hardware allows"): the source
//! runs `seal_batch` + `sign_batch` per batch, the destination `verify_batch` + `open_batch`.
//! One thread, so the figures are per core. No criterion: a plain timed loop over the real
//! functions.
//!
//! `cargo bench -p lockbox-crypto --bench wrap` (optionally `-- S` to time each row for at least
//! S seconds; default 2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use lockbox_crypto::*;

const GRANT: [u8; 16] = [7; 16];

fn ctx() -> BatchContext<'static> {
    BatchContext {
        grant_id: &GRANT,
        batch: 0,
        source_node: "node-a",
        dest_node: "node-b",
    }
}

/// Runs `f` for at least `min_secs` (and 3 times), after a short warm-up; returns how many
/// runs and the seconds they took.
fn time<T>(min_secs: f64, mut f: impl FnMut() -> T) -> (usize, f64) {
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < min_secs / 10.0 {
        black_box(f());
    }
    let start = Instant::now();
    let mut runs = 0;
    loop {
        black_box(f());
        runs += 1;
        let secs = start.elapsed().as_secs_f64();
        if runs >= 3 && secs >= min_secs {
            return (runs, secs);
        }
    }
}

fn report(label: &str, batch: usize, (batches, secs): (usize, f64)) {
    let keys = (batch * batches) as f64;
    println!(
        "{label:<12} batch {batch:>4}: {batches:>6} batches in {secs:.2} s: {:>7.0} keys/s, {:>6.0} batches/s ({:>7.1} µs per batch)",
        keys / secs,
        batches as f64 / secs,
        secs * 1e6 / batches as f64,
    );
}

fn run(batch: usize, min_secs: f64) {
    let dest = HpkeIdentity::generate().unwrap();
    let source = SigningIdentity::generate().unwrap();
    let materials: Vec<(String, SecretBytes)> = (0..batch)
        .map(|i| {
            (
                format!("{i:08x}-8d7b-4c1a-9e2f-0a1b2c3d4e5f"),
                SecretBytes::random(32).unwrap(),
            )
        })
        .collect();
    let keys: Vec<KeyToWrap<'_>> = materials
        .iter()
        .map(|(id, m)| KeyToWrap {
            key_id: id,
            version: 1,
            material: m,
            attributes: &[],
        })
        .collect();
    let dest_pk = dest.public_key();
    let source_pk = source.public_key();

    let seal_and_sign = || {
        let sealed = seal_batch(&dest_pk, &ctx(), black_box(&keys)).unwrap();
        let sig = sign_batch(&source, &ctx(), &sealed);
        (sealed, sig)
    };
    report("seal+sign", batch, time(min_secs, seal_and_sign));

    let (sealed, sig) = seal_and_sign();
    let verify_and_open = || {
        verify_batch(&source_pk, &ctx(), black_box(&sealed), &sig).unwrap();
        open_batch(&dest, &ctx(), black_box(&sealed)).unwrap()
    };
    assert_eq!(verify_and_open().len(), batch);
    report("verify+open", batch, time(min_secs, verify_and_open));
}

fn main() {
    let min_secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2.0);
    println!("one thread (per core), 32-byte keys, 36-byte key ids");
    for batch in [1, 100, 1000] {
        run(batch, min_secs);
    }
}
