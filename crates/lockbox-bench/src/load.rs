//! Load generation: a pool of HTTP/2 connections and a closed-loop runner of N tasks.
//!
//! One HTTP/2 connection is driven by one task on each side, which serializes on one core, so
//! the pool opens one connection per [`Pool::per_channel`] tasks.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::lockbox_client::LockboxClient;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::daemon::endpoint;

/// Connections to one lockbox.
pub struct Pool {
    channels: Vec<Channel>,
}

/// How many tasks share one connection.
pub const DEFAULT_PER_CHANNEL: usize = 8;

impl Pool {
    /// Opens `ceil(concurrency / per_channel)` connections and checks each with a `Status`.
    pub async fn connect(socket: &Path, concurrency: usize, per_channel: usize) -> Result<Pool> {
        let n = concurrency.div_ceil(per_channel.max(1)).max(1);
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            let ch = endpoint(socket)?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            LockboxClient::new(ch.clone())
                .status(pb::StatusRequest {})
                .await
                .context("Status on a new connection")?;
            channels.push(ch);
        }
        Ok(Pool { channels })
    }

    /// The lockbox client task `task` uses.
    pub fn client(&self, task: usize) -> LockboxClient<Channel> {
        LockboxClient::new(self.channel(task))
    }

    /// The health client task `task` uses (same connection as [`Pool::client`]).
    pub fn health(&self, task: usize) -> HealthClient<Channel> {
        HealthClient::new(self.channel(task))
    }

    fn channel(&self, task: usize) -> Channel {
        // `channels` is never empty (`connect` opens at least one).
        self.channels[task % self.channels.len()].clone()
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.channels.len()
    }
}

/// The outcome of a closed-loop run.
pub struct Run<T> {
    /// Per-operation latency, unsorted.
    pub samples: Vec<Duration>,
    /// What each operation returned, in no particular order.
    pub outputs: Vec<T>,
    /// Wall time from the first operation's start to the last one's end.
    pub elapsed: Duration,
}

/// Runs `count` operations on `concurrency` tasks, each starting its next operation as soon as
/// the previous one returns (closed loop). `op(task, i)` performs operation number `i`
/// (0-based, each issued once) and is timed from call to completion. The first error aborts
/// the run.
pub async fn run<T, F, Fut>(concurrency: usize, count: u64, op: F) -> Result<Run<T>>
where
    T: Send + 'static,
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    if concurrency == 0 {
        bail!("concurrency must be at least 1");
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let next = next.clone();
        let op = op.clone();
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut outputs = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t0 = Instant::now();
                let out = op(task, i).await?;
                samples.push(t0.elapsed());
                outputs.push(out);
            }
            anyhow::Ok((samples, outputs))
        });
    }
    let mut samples = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut outputs = Vec::with_capacity(samples.capacity());
    while let Some(joined) = tasks.join_next().await {
        let (s, o) = joined.context("a load task panicked")??;
        samples.extend(s);
        outputs.extend(o);
    }
    Ok(Run {
        samples,
        outputs,
        elapsed: started.elapsed(),
    })
}

/// Creates `count` keys (32 bytes) on `concurrency` tasks; returns the run with the key ids.
pub async fn create_keys(pool: &Arc<Pool>, concurrency: usize, count: u64) -> Result<Run<String>> {
    let pool = pool.clone();
    run(concurrency, count, move |task, _| {
        let mut c = pool.client(task);
        async move {
            let r = c
                .create_key(pb::CreateKeyRequest {
                    length: 32,
                    ..Default::default()
                })
                .await
                .context("CreateKey")?;
            Ok(r.into_inner().key_id)
        }
    })
    .await
}

/// Creates `count` keys in chunks, printing progress on stderr when `count` is large.
pub async fn fill(pool: &Arc<Pool>, concurrency: usize, count: u64) -> Result<Run<String>> {
    const CHUNK: u64 = 100_000;
    let mut all = Run {
        samples: Vec::new(),
        outputs: Vec::with_capacity(usize::try_from(count).unwrap_or(0)),
        elapsed: Duration::ZERO,
    };
    let mut done = 0;
    while done < count {
        let n = CHUNK.min(count - done);
        let run = create_keys(pool, concurrency, n).await?;
        all.samples.extend(run.samples);
        all.outputs.extend(run.outputs);
        all.elapsed += run.elapsed;
        done += n;
        if count > CHUNK {
            eprintln!(
                "  filled {done}/{count} keys ({} keys/s so far)",
                crate::stats::thousands(crate::stats::rate(done, all.elapsed))
            );
        }
    }
    Ok(all)
}

/// Gets `count` keys chosen at random (seeded by `seed`) from `ids` on `concurrency` tasks.
pub async fn get_random(
    pool: &Arc<Pool>,
    ids: &Arc<Vec<String>>,
    concurrency: usize,
    count: u64,
    seed: u64,
) -> Result<Run<()>> {
    if ids.is_empty() {
        bail!("no keys to get");
    }
    let pool = pool.clone();
    let ids = ids.clone();
    run(concurrency, count, move |task, i| {
        let mut c = pool.client(task);
        let pick = crate::stats::mix64(seed ^ i) % ids.len() as u64;
        let key_id = ids[usize::try_from(pick).unwrap_or(0)].clone();
        async move {
            let r = c
                .get_key(pb::GetKeyRequest { key_id, version: 0 })
                .await
                .context("GetKey")?;
            if r.get_ref().material.len() != 32 {
                bail!(
                    "GetKey returned {} bytes, not 32",
                    r.get_ref().material.len()
                );
            }
            Ok(())
        }
    })
    .await
}
