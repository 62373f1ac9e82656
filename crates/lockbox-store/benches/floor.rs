//! What the index costs per create, with nothing else running: the floor under lockboxd's
//! create throughput and CPU per create that no handler or RPC change can go below.
//!
//! A create writes two records (the key's sealed metadata, ~555 bytes under its UUID, holding
//! its material inline; an audit entry ~250 bytes under the next sequence number) plus two node
//! records (key count, sealed audit head) that a group of concurrent creates rewrites once.
//! With `FLOOR_LAYOUT=shared`, the layout before session 6 (still what a snapshot's shared
//! material uses): four records, the material (~90 bytes) under a time-ordered material id and
//! a reference beside metadata of ~440 bytes. This bench writes exactly those shapes:
//!
//! 1. through [`lockbox_store::Store`] in groups of 64 creates (what 64 concurrent callers
//!    produce), each group awaited durable: the whole process's CPU per create (fjall's journal
//!    append and memtable insert, the `fdatasync`, and the engine's background flushes and
//!    compactions as far as they ran) and creates/s;
//! 2. through the store one create at a time (concurrency 1), each awaited durable: the
//!    store's part of a single create's latency;
//! 3. the reads and writes both ends of a MOVE make per key, through two stores (tombstones
//!    ~470 bytes), each step awaited durable.
//!
//! (Before the store moved to fjall, a first part measured sled 0.34.7's insert alone; the
//! figures are in BENCHMARKS.md.)
//!
//! `cargo bench -p lockbox-store --bench floor` (optionally `-- N`: creates per run, default
//! 100,000). The databases live in a temp dir under the current directory. With
//! `FLOOR_RANDOM_MATERIAL_IDS=1` (shared layout) material ids are fully random, as lockboxd
//! made them before session 5 (for comparison).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use lockbox_store::{Batch, Ns, Store};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Non-cryptographic id generator (xorshift64*): bench data only.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn hex(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes * 2 + 16);
        while s.len() < bytes * 2 {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(bytes * 2);
        s
    }

    fn uuid(&mut self) -> String {
        let h = self.hex(16);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

/// Whether to write the shared layout (`FLOOR_LAYOUT=shared`) instead of inline material.
fn shared_layout() -> bool {
    std::env::var("FLOOR_LAYOUT").is_ok_and(|v| v == "shared")
}

/// Sizes of lockboxd's sealed records (JSON metadata of a 32-byte key without labels, plus
/// the 45-byte seal): metadata with its material inline, metadata pointing to a shared
/// material, a `moved` tombstone, a sealed material.
const META_INLINE: usize = 555;
const META_SHARED: usize = 440;
const TOMBSTONE: usize = 470;
const MATERIAL: usize = 90;

/// The records of one create: (namespace, id, value), the key record first. Material ids
/// are time-ordered, as lockboxd makes them (`seq` stands for the clock): 16 ordered hex
/// digits, 16 random.
fn create_records(ids: &mut Ids, seq: u64) -> Vec<(Ns, Vec<u8>, Vec<u8>)> {
    let key_id = ids.uuid();
    let audit = (Ns::Audit, seq.to_be_bytes().to_vec(), vec![0x61; 250]);
    if !shared_layout() {
        return vec![
            (Ns::Keys, key_id.into_bytes(), vec![0x6b; META_INLINE]),
            audit,
        ];
    }
    let material_id = if std::env::var_os("FLOOR_RANDOM_MATERIAL_IDS").is_some() {
        ids.hex(16)
    } else {
        format!("{:016x}{}", (1u64 << 56) + seq, ids.hex(8))
    };
    let reference = format!("{material_id}/{key_id}");
    vec![
        (Ns::Keys, key_id.into_bytes(), vec![0x6b; META_SHARED]),
        (
            Ns::Materials,
            material_id.into_bytes(),
            vec![0x6d; MATERIAL],
        ),
        (Ns::MaterialRefs, reference.into_bytes(), Vec::new()),
        audit,
    ]
}

/// One create's batch as lockboxd applies it: its four records and the two node records.
fn create_batch(ids: &mut Ids, seq: u64) -> Batch {
    let mut b = Batch::new();
    for (ns, id, value) in create_records(ids, seq) {
        b.put(ns, &id, &value);
    }
    b.put(Ns::Node, b"key-count", &seq.to_be_bytes());
    b.put(Ns::Node, b"audit-head", &[0x68; 80]);
    b
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cpu_us(clock: rustix::time::ClockId) -> f64 {
    let t = rustix::time::clock_gettime(clock);
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

/// CPU time of every thread of this process, in µs.
fn process_cpu_us() -> f64 {
    cpu_us(rustix::time::ClockId::ProcessCPUTime)
}

/// One create at a time, each awaited durable: the store's share of a concurrency-1 create's
/// latency (a log write and `fdatasync`, and the hand-offs to and from the log writer).
fn one_at_a_time(n: usize, dir: &Path) {
    let rt = runtime();
    let store = Store::open(&dir.join("serial"), 64 << 20).unwrap();
    let mut ids = Ids(0x1234_5678_9abc_def1);
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let b = create_batch(&mut ids, i as u64 + 1);
        let t = Instant::now();
        let generation = store.apply(b).unwrap();
        rt.block_on(store.durable(generation)).unwrap();
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    println!(
        "Store, one create at a time, each durable: {n} creates in {secs:.2} s = {:.0} \
         creates/s; latency p50 {:.3} ms p99 {:.3} ms",
        n as f64 / secs,
        latencies[n / 2],
        latencies[n * 99 / 100],
    );
}

fn through_store(n: usize, dir: &Path) {
    let rt = runtime();
    let store = Store::open(&dir.join("store"), 64 << 20).unwrap();
    let mut ids = Ids(0x2545_f491_4f6c_dd1d);
    let groups: Vec<Vec<Batch>> = (0..n.div_ceil(64))
        .map(|g| {
            (g * 64..n.min(g * 64 + 64))
                .map(|i| create_batch(&mut ids, i as u64 + 1))
                .collect()
        })
        .collect();
    let cpu_before = process_cpu_us();
    let start = Instant::now();
    let mut last = 0;
    for group in groups {
        for b in group {
            last = store.apply(b).unwrap();
        }
        rt.block_on(store.durable(last)).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_us() - cpu_before;
    println!(
        "Store, groups of 64 creates, each durable: {n} creates in {secs:.2} s = {:.0} \
         creates/s; process CPU {:.1} µs per create (engine flushes and compactions included \
         as far as they ran in that time)",
        n as f64 / secs,
        cpu / n as f64
    );
}

/// The store's share of moving keys (DESIGN.md §7, issue 4's evacuation): what both ends
/// write and read per key, with no crypto, RPC or encoding. Source: read each key's record
/// (and, in the shared layout, its material), in key order as `read_for_transfer` does; at
/// completion, write one batch that replaces each record with a tombstone (shared layout: after
/// re-reading the record and looking up the material's references, and removing the material
/// and its reference too). Destination: one batch per 1,000 keys of key records (shared
/// layout: and their materials and references). Both awaited durable.
fn evacuation(n: usize, dir: &Path) {
    let shared = shared_layout();
    let rt = runtime();
    let source = Store::open(&dir.join("source"), 64 << 20).unwrap();
    let dest = Store::open(&dir.join("dest"), 64 << 20).unwrap();
    let mut ids = Ids(0x0bad_cafe_f00d_d00d);
    // (key id, material id in the shared layout)
    let mut keys: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(n);
    let mut last = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut b = Batch::new();
        for i in chunk {
            let records = create_records(&mut ids, *i as u64);
            for (ns, id, value) in &records {
                if *ns != Ns::Audit {
                    b.put(*ns, id, value);
                }
            }
            let material = records
                .iter()
                .find(|(ns, _, _)| *ns == Ns::Materials)
                .map(|r| r.1.clone());
            keys.push((records[0].1.clone(), material));
        }
        last = source.apply(b).unwrap();
    }
    rt.block_on(source.durable(last)).unwrap();
    keys.sort();

    let start = Instant::now();
    let c0 = process_cpu_us();
    for (k, m) in &keys {
        assert!(source.get(Ns::Keys, k).unwrap().is_some());
        if let Some(m) = m {
            assert!(source.get(Ns::Materials, m).unwrap().is_some());
        }
    }
    let read = process_cpu_us() - c0;

    let c1 = process_cpu_us();
    let mut received = 0u64;
    for chunk in keys.chunks(1000) {
        let mut b = Batch::new();
        for (k, _) in chunk {
            if !shared {
                b.put(Ns::Keys, k, &[0x6b; META_INLINE]);
                continue;
            }
            // The destination stores each key under a material id of its own, time-ordered
            // (random, before session 5).
            received += 1;
            let m = if std::env::var_os("FLOOR_RANDOM_MATERIAL_IDS").is_some() {
                ids.hex(16).into_bytes()
            } else {
                format!("{:016x}{}", (2u64 << 56) + received, ids.hex(8)).into_bytes()
            };
            b.put(Ns::Materials, &m, &[0x6d; MATERIAL]);
            b.put(Ns::Keys, k, &[0x6b; META_SHARED]);
            let mut r = m;
            r.push(b'/');
            r.extend_from_slice(k);
            b.put(Ns::MaterialRefs, &r, b"");
        }
        last = dest.apply(b).unwrap();
    }
    rt.block_on(dest.durable(last)).unwrap();
    let stored = process_cpu_us() - c1;

    let c2 = process_cpu_us();
    for chunk in keys.chunks(1000) {
        let mut b = Batch::new();
        for (k, m) in chunk {
            b.put(Ns::Keys, k, &[0x74; TOMBSTONE]);
            let Some(m) = m else { continue };
            assert!(source.get(Ns::Keys, k).unwrap().is_some());
            let mut prefix = m.clone();
            prefix.push(b'/');
            let refs: Vec<_> = source
                .scan_prefix(Ns::MaterialRefs, &prefix)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(refs.len(), 1);
            b.remove(Ns::Materials, m);
            let mut r = prefix;
            r.extend_from_slice(k);
            b.remove(Ns::MaterialRefs, &r);
        }
        last = source.apply(b).unwrap();
    }
    rt.block_on(source.durable(last)).unwrap();
    let completed = process_cpu_us() - c2;
    let secs = start.elapsed().as_secs_f64();
    let per = |us: f64| us / n as f64;
    println!(
        "Store, moving {n} keys ({secs:.2} s, one step at a time): CPU per key: source reads \
         {:.1} µs, destination writes {:.1}, source completion {:.1}; together {:.1} µs",
        per(read),
        per(stored),
        per(completed),
        per(read + stored + completed),
    );
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir_in(".").unwrap();
    println!(
        "layout: {}",
        if shared_layout() {
            "shared (material and reference records beside the metadata)"
        } else {
            "inline (material in the key record)"
        }
    );
    through_store(n, dir.path());
    one_at_a_time(5_000.min(n), dir.path());
    evacuation(n, dir.path());
}
