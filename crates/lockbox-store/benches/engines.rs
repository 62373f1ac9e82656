//! The measurement behind the engine choice (issue 15): fjall 3.1 against redb 4.6, each used
//! the way `lockbox-store` would use it, on records of lockboxd's sizes.
//!
//! - fjall: a writer appends its batch to the journal and memtable (visible at once); one sync
//!   thread `persist(SyncData)`s whatever was appended since its last sync and wakes the
//!   writers it covered (group commit).
//! - redb: a writer queues its batch; one commit thread writes every queued batch in one write
//!   transaction and commits it durably (`Durability::Immediate`), then wakes those writers.
//!
//! Both: durable writes of one 555-byte record under a 36-byte key, from 1 writer and from 64
//! concurrent writers (threads), then random point reads from one thread. Printed: writes/s
//! and the whole process's CPU per write or read (writer, sync/commit and engine threads).
//!
//! `cargo bench -p lockbox-store --bench engines` (optionally `-- N`: writes at concurrency 64,
//! default 64,000; a twentieth of that at concurrency 1). The databases live in a temp dir under
//! the current directory.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

trait Engine: Send + Sync + 'static {
    /// Makes the write visible (fjall) or queues it (redb); returns its generation.
    fn put(&self, k: Vec<u8>, v: Vec<u8>) -> u64;
    /// Waits until the write numbered `generation` is durable.
    fn wait(&self, generation: u64);
    fn get(&self, k: &[u8]) -> Option<Vec<u8>>;
}

/// Writes waiting for redb's commit thread: (key, value).
type Queue = Vec<(Vec<u8>, Vec<u8>)>;

/// (applied, durable, queued) and the condition variables of the group commit.
struct Group {
    state: Mutex<(u64, u64, Queue)>,
    done: Condvar,
    work: Condvar,
}

impl Group {
    fn new() -> Arc<Group> {
        Arc::new(Group {
            state: Mutex::new((0, 0, Vec::new())),
            done: Condvar::new(),
            work: Condvar::new(),
        })
    }

    fn wait(&self, generation: u64) {
        let mut st = self.state.lock().unwrap();
        while st.1 < generation {
            st = self.done.wait(st).unwrap();
        }
    }

    /// Blocks until something is pending; returns the newest generation and the queue.
    fn next(&self) -> (u64, Queue) {
        let mut st = self.state.lock().unwrap();
        while st.0 == st.1 {
            st = self.work.wait(st).unwrap();
        }
        (st.0, std::mem::take(&mut st.2))
    }

    fn completed(&self, generation: u64) {
        self.state.lock().unwrap().1 = generation;
        self.done.notify_all();
    }
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
    group: Arc<Group>,
}

impl Engine for Fjall {
    fn put(&self, k: Vec<u8>, v: Vec<u8>) -> u64 {
        let mut st = self.group.state.lock().unwrap();
        let mut b = self.db.batch();
        b.insert(&self.ks, k, v);
        b.commit().unwrap();
        st.0 += 1;
        self.group.work.notify_one();
        st.0
    }

    fn wait(&self, generation: u64) {
        self.group.wait(generation);
    }

    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        self.ks.get(k).unwrap().map(|v| v.to_vec())
    }
}

fn fjall_open(dir: &std::path::Path) -> Arc<Fjall> {
    let db = fjall::Database::builder(dir)
        .manual_journal_persist(true)
        .journal_compression(fjall::CompressionType::None)
        .cache_size(64 << 20)
        .worker_threads(1)
        .open()
        .unwrap();
    let ks = db
        .keyspace("records", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let group = Group::new();
    let (g, d) = (group.clone(), db.clone());
    std::thread::spawn(move || {
        loop {
            let (target, _) = g.next();
            d.persist(fjall::PersistMode::SyncData).unwrap();
            g.completed(target);
        }
    });
    Arc::new(Fjall { db, ks, group })
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("records");

struct Redb {
    db: Arc<redb::Database>,
    group: Arc<Group>,
}

impl Engine for Redb {
    fn put(&self, k: Vec<u8>, v: Vec<u8>) -> u64 {
        let mut st = self.group.state.lock().unwrap();
        st.2.push((k, v));
        st.0 += 1;
        self.group.work.notify_one();
        st.0
    }

    fn wait(&self, generation: u64) {
        self.group.wait(generation);
    }

    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        use redb::ReadableDatabase;
        let r = self.db.begin_read().unwrap();
        let t = r.open_table(TABLE).unwrap();
        t.get(k).unwrap().map(|v| v.value().to_vec())
    }
}

fn redb_open(dir: &std::path::Path) -> Arc<Redb> {
    let db = Arc::new(
        redb::Database::builder()
            .set_cache_size(64 << 20)
            .create(dir.join("db.redb"))
            .unwrap(),
    );
    let w = db.begin_write().unwrap();
    w.open_table(TABLE).unwrap();
    w.commit().unwrap();
    let group = Group::new();
    let (g, d) = (group.clone(), db.clone());
    std::thread::spawn(move || {
        loop {
            let (target, queued) = g.next();
            let w = d.begin_write().unwrap();
            {
                let mut t = w.open_table(TABLE).unwrap();
                for (k, v) in &queued {
                    t.insert(k.as_slice(), v.as_slice()).unwrap();
                }
            }
            w.commit().unwrap();
            g.completed(target);
        }
    });
    Arc::new(Redb { db, group })
}

fn key(t: usize, i: usize) -> Vec<u8> {
    // UUID-shaped, spread over the key space as random key ids are.
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        (i as u64).wrapping_mul(0x9e37_79b9) as u32,
        t,
        i
    )
    .into_bytes()
}

fn process_cpu_s() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn writes<E: Engine>(name: &str, e: &Arc<E>, c: usize, n: usize) {
    let (c0, t0) = (process_cpu_s(), Instant::now());
    let threads: Vec<_> = (0..c)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                for i in 0..n / c {
                    let g = e.put(key(t, i), vec![0x5a; 555]);
                    e.wait(g);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), process_cpu_s() - c0);
    println!(
        "{name}: durable write, concurrency {c}: {:.0} writes/s, process CPU {:.1} µs per write",
        n as f64 / secs,
        cpu / n as f64 * 1e6
    );
}

fn reads<E: Engine>(name: &str, e: &Arc<E>, c: usize, written: usize, n: usize) {
    let (c0, t0) = (process_cpu_s(), Instant::now());
    for i in 0..n {
        let per = written / c;
        assert!(e.get(&key(i % c, (i * 7919) % per)).is_some());
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), process_cpu_s() - c0);
    println!(
        "{name}: point read of {written} records: {:.0} reads/s, process CPU {:.2} µs per read",
        n as f64 / secs,
        cpu / n as f64 * 1e6
    );
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(64_000);
    let dir = tempfile::tempdir_in(".").unwrap();
    for engine in ["fjall", "redb"] {
        for (c, count) in [(1, n / 20), (64, n)] {
            let d = dir.path().join(format!("{engine}-{c}"));
            std::fs::create_dir_all(&d).unwrap();
            if engine == "fjall" {
                let e = fjall_open(&d);
                writes(engine, &e, c, count);
                if c == 64 {
                    reads(engine, &e, c, count, 200_000);
                }
            } else {
                let e = redb_open(&d);
                writes(engine, &e, c, count);
                if c == 64 {
                    reads(engine, &e, c, count, 200_000);
                }
            }
        }
    }
    // The sync and commit threads block forever on their condition variables: end here.
    std::process::exit(0);
}
