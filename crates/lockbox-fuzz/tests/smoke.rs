//! Every fuzz target over its seeds and mutations of them, for about a second each: the smoke
//! run of every `cargo test` (`deploy/fuzz.sh` runs them under libFuzzer for real). A panic is
//! a failure, with the input that caused it printed.

use std::time::{Duration, Instant};

/// xorshift64*: mutations that are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `seed`: flipped bits, changed, inserted or removed bytes, a cut.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => v.truncate(rng.below(v.len() + 1)),
        }
    }
    v
}

#[test]
fn every_target_survives_its_seeds_and_their_mutations() {
    for (name, target) in lockbox_fuzz::TARGETS {
        let seeds = lockbox_fuzz::seeds::seeds(name);
        assert!(!seeds.is_empty(), "target {name} has no seed");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let deadline = Instant::now() + Duration::from_millis(800);
        let mut runs = 0u64;
        for seed in &seeds {
            target(seed);
            runs += 1;
        }
        while Instant::now() < deadline {
            let seed = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed);
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(
                outcome.is_ok(),
                "target {name} panicked on input {}",
                hex(&input)
            );
            runs += 1;
        }
        eprintln!("{name}: {runs} inputs");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `fuzz/` has one cargo-fuzz target per entry of `TARGETS`, each calling the function of the
/// same name (the nightly build that runs them is not part of CI, so this keeps them in step).
#[test]
fn the_cargo_fuzz_targets_are_exactly_the_targets() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".rs")
                .map(String::from)
        })
        .collect();
    files.sort();
    let mut names: Vec<String> = lockbox_fuzz::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    names.sort();
    assert_eq!(files, names);
    let manifest =
        std::fs::read_to_string(dir.join("../Cargo.toml")).unwrap_or_else(|e| panic!("{e}"));
    for name in &names {
        let body = std::fs::read_to_string(dir.join(format!("{name}.rs"))).unwrap_or_default();
        assert!(
            body.contains(&format!("lockbox_fuzz::{name}(data)")),
            "fuzz/fuzz_targets/{name}.rs calls lockbox_fuzz::{name}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml lists {name}"
        );
    }
}

/// The TPM slot seeds are real slots (captured from swtpm), so the fuzzer starts inside the
/// format (version 2, one bound to PCRs 0 and 7).
#[test]
fn the_tpm_slot_seeds_decode() {
    for seed in lockbox_fuzz::seeds::seeds("tpm_slot") {
        let slot = lockbox_tpm::SealedSlot::decode(&seed).expect("a seed slot decodes");
        assert_eq!(slot.encode(), seed);
        assert!(slot.srk_name().is_some());
    }
}
