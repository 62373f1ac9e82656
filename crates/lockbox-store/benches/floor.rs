//! What the index costs per create, with nothing else running: the floor under lockboxd's
//! create throughput and CPU per create that no handler or RPC change can go below.
//!
//! A create writes four records (sealed material ~90 bytes under a random material id, sealed
//! metadata ~300 bytes under the key's UUID, the material reference, an audit entry ~250 bytes
//! under the next sequence number) plus two node records (key count, sealed audit head) that a
//! group of concurrent creates rewrites once. This bench writes exactly those shapes:
//!
//! 1. straight into sled 0.34.7, configured as [`lockbox_store::Store`] configures it, one
//!    record at a time: the CPU each insert costs (this thread's time only);
//! 2. through [`lockbox_store::Store`] in groups of 64 creates (what 64 concurrent callers
//!    produce), each group awaited durable, and at the end the index awaited too: the whole
//!    process's CPU per create (log encode, write and `fdatasync`, overlay, the indexer's sled
//!    inserts, checkpoints) and creates/s;
//! 3. through the store one create at a time (concurrency 1), each awaited durable: the
//!    store's part of a single create's latency;
//! 4. the reads and writes both ends of a MOVE make per key, through two stores.
//!
//! `cargo bench -p lockbox-store --bench floor` (optionally `-- N`: creates per run, default
//! 100,000). The databases live in a temp dir under the current directory. With
//! `FLOOR_RANDOM_MATERIAL_IDS=1` material ids are fully random, as lockboxd made them before
//! session 5 (for comparison).
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

/// The four records of one create: (namespace, id, value). Material ids are time-ordered,
/// as lockboxd makes them (`seq` stands for the clock): 16 ordered hex digits, 16 random.
fn create_records(ids: &mut Ids, seq: u64) -> [(Ns, Vec<u8>, Vec<u8>); 4] {
    let material_id = if std::env::var_os("FLOOR_RANDOM_MATERIAL_IDS").is_some() {
        ids.hex(16)
    } else {
        format!("{:016x}{}", (1u64 << 56) + seq, ids.hex(8))
    };
    let key_id = ids.uuid();
    let reference = format!("{material_id}/{key_id}");
    [
        (Ns::Materials, material_id.into_bytes(), vec![0x6d; 90]),
        (Ns::Keys, key_id.into_bytes(), vec![0x6b; 300]),
        (Ns::MaterialRefs, reference.into_bytes(), Vec::new()),
        (Ns::Audit, seq.to_be_bytes().to_vec(), vec![0x61; 250]),
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

/// CPU time of the calling thread, in µs (one `clock_gettime`, ~0.3 µs: cheap enough to
/// bracket a single insert).
fn thread_cpu_us() -> f64 {
    cpu_us(rustix::time::ClockId::ThreadCPUTime)
}

/// CPU time of every thread of this process, in µs.
fn process_cpu_us() -> f64 {
    cpu_us(rustix::time::ClockId::ProcessCPUTime)
}

fn raw_sled(n: usize, dir: &Path) {
    let db = sled::Config::new()
        .path(dir.join("raw"))
        .cache_capacity(64 << 20)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap();
    let mut ids = Ids(0x9e37_79b9_7f4a_7c15);
    let creates: Vec<_> = (1..=n as u64)
        .map(|seq| create_records(&mut ids, seq))
        .collect();
    let mut per_kind = [0.0f64; 4];
    let start = Instant::now();
    for create in &creates {
        for (i, (ns, id, value)) in create.iter().enumerate() {
            let mut key = Vec::with_capacity(id.len() + 1);
            key.push(ns.prefix());
            key.extend_from_slice(id);
            let before = thread_cpu_us();
            db.insert(key, value.as_slice()).unwrap();
            per_kind[i] += thread_cpu_us() - before;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let per = |us: f64| us / n as f64;
    println!(
        "sled 0.34.7 insert, one record at a time, {n} creates ({} records) in {secs:.2} s: \
         CPU per record: material {:.1} µs, metadata {:.1}, reference {:.1}, audit {:.1}; \
         per create {:.1} µs",
        n * 4,
        per(per_kind[0]),
        per(per_kind[1]),
        per(per_kind[2]),
        per(per_kind[3]),
        per(per_kind.iter().sum()),
    );
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
    let durable_secs = start.elapsed().as_secs_f64();
    // The indexer runs behind the log: wait for it, so that its sled inserts are counted.
    rt.block_on(store.indexed(last)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_us() - cpu_before;
    println!(
        "Store, groups of 64 creates, each durable ({durable_secs:.2} s), then indexed: {n} \
         creates in {secs:.2} s = {:.0} creates/s; process CPU {:.1} µs per create",
        n as f64 / secs,
        cpu / n as f64
    );
}

/// The store's share of moving keys (DESIGN.md §7, issue 4's evacuation): what both ends
/// write and read per key, with no crypto, RPC or encoding. Source: read each key's metadata
/// and material (in key order, as `read_for_transfer` does), then, at completion, read the
/// metadata again, look up the material's references, and write one batch that replaces the
/// metadata with a tombstone and removes the material and its reference. Destination: one
/// batch per 1,000 keys of metadata, material and reference. Both awaited durable and indexed.
fn evacuation(n: usize, dir: &Path) {
    let rt = runtime();
    let source = Store::open(&dir.join("source"), 64 << 20).unwrap();
    let dest = Store::open(&dir.join("dest"), 64 << 20).unwrap();
    let mut ids = Ids(0x0bad_cafe_f00d_d00d);
    let mut keys: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(n);
    let mut last = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut b = Batch::new();
        for i in chunk {
            let [m, k, r, _] = create_records(&mut ids, *i as u64);
            b.put(m.0, &m.1, &m.2);
            b.put(k.0, &k.1, &k.2);
            b.put(r.0, &r.1, &r.2);
            keys.push((k.1, m.1));
        }
        last = source.apply(b).unwrap();
    }
    rt.block_on(source.durable(last)).unwrap();
    rt.block_on(source.indexed(last)).unwrap();
    keys.sort();

    let start = Instant::now();
    let c0 = process_cpu_us();
    for (k, m) in &keys {
        assert!(source.get(Ns::Keys, k).unwrap().is_some());
        assert!(source.get(Ns::Materials, m).unwrap().is_some());
    }
    let read = process_cpu_us() - c0;

    let c1 = process_cpu_us();
    let mut received = 0u64;
    for chunk in keys.chunks(1000) {
        let mut b = Batch::new();
        for (k, source_material) in chunk {
            // The destination seals each key under a material id of its own, time-ordered
            // (random, before session 5).
            received += 1;
            let m = if std::env::var_os("FLOOR_RANDOM_MATERIAL_IDS").is_some() {
                source_material.clone()
            } else {
                format!("{:016x}{}", (2u64 << 56) + received, ids.hex(8)).into_bytes()
            };
            b.put(Ns::Materials, &m, &[0x6d; 90]);
            b.put(Ns::Keys, k, &[0x6b; 300]);
            let mut r = m;
            r.push(b'/');
            r.extend_from_slice(k);
            b.put(Ns::MaterialRefs, &r, b"");
        }
        last = dest.apply(b).unwrap();
    }
    rt.block_on(dest.durable(last)).unwrap();
    rt.block_on(dest.indexed(last)).unwrap();
    let stored = process_cpu_us() - c1;

    let c2 = process_cpu_us();
    for chunk in keys.chunks(1000) {
        let mut b = Batch::new();
        for (k, m) in chunk {
            assert!(source.get(Ns::Keys, k).unwrap().is_some());
            let mut prefix = m.clone();
            prefix.push(b'/');
            let refs: Vec<_> = source
                .scan_prefix(Ns::MaterialRefs, &prefix)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(refs.len(), 1);
            b.put(Ns::Keys, k, &[0x74; 200]);
            b.remove(Ns::Materials, m);
            let mut r = prefix;
            r.extend_from_slice(k);
            b.remove(Ns::MaterialRefs, &r);
        }
        last = source.apply(b).unwrap();
    }
    rt.block_on(source.durable(last)).unwrap();
    rt.block_on(source.indexed(last)).unwrap();
    let completed = process_cpu_us() - c2;
    let secs = start.elapsed().as_secs_f64();
    let per = |us: f64| us / n as f64;
    println!(
        "Store, moving {n} keys ({secs:.2} s, one thread at a time): CPU per key: source reads \
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
    raw_sled(n, dir.path());
    through_store(n, dir.path());
    one_at_a_time(5_000.min(n), dir.path());
    evacuation(n, dir.path());
}
