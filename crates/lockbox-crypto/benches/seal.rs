//! Record sealing cost (DESIGN.md §5.4) at the sizes lockboxd seals and opens on every create,
//! get and transferred key: material (32/64 bytes), key metadata (~300 bytes), and larger
//! records for comparison. One thread. This is the bench behind `.cargo/config.toml`'s choice
//! of Poly1305 backend: run it with and without that flag to compare.
//!
//! `cargo bench -p lockbox-crypto --bench seal` (optionally `-- S`: time each row for at least
//! S seconds; default 1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use lockbox_crypto::{Kek, RecordKind};

/// Mean µs per call of `f`, run for at least `min_secs` after a short warm-up.
fn per_call<T>(min_secs: f64, mut f: impl FnMut() -> T) -> f64 {
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < min_secs / 10.0 {
        black_box(f());
    }
    let start = Instant::now();
    let mut runs = 0u64;
    loop {
        for _ in 0..256 {
            black_box(f());
        }
        runs += 256;
        let secs = start.elapsed().as_secs_f64();
        if secs >= min_secs {
            return secs * 1e6 / runs as f64;
        }
    }
}

fn main() {
    let min_secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1.0);
    let kek = Kek::generate(1).unwrap();
    let id = b"5f0c6d1e-8d7b-4c1a-9e2f-0a1b2c3d4e5f";
    println!("one thread; XChaCha20-Poly1305 record seal/open (lockbox_crypto::Kek)");
    for len in [32usize, 64, 300, 1000, 4000, 16000] {
        let plain = vec![0x5a; len];
        let seal = per_call(min_secs, || {
            kek.seal(RecordKind::KeyMeta, id, black_box(&plain))
                .unwrap()
        });
        let sealed = kek.seal(RecordKind::KeyMeta, id, &plain).unwrap();
        let open = per_call(min_secs, || {
            kek.open(RecordKind::KeyMeta, id, black_box(&sealed))
                .unwrap()
        });
        println!("{len:>6} bytes: seal {seal:>6.2} µs, open {open:>6.2} µs");
    }
}
