//! `lockbox-bench`: measures a real release `lockboxd` over its Unix socket.
//!
//! Every measurement starts its own daemon in a temp dir under /tmp (`lockboxd init`, keyfile
//! unseal), drives it with tonic clients on a multi-thread tokio runtime (one HTTP/2 connection
//! per 8 client tasks by default), prints one result line per figure (a JSON object per line
//! with `--json`) and stops the daemon and removes the temp dir, on error too.

mod daemon;
mod load;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lockbox_proto::v1 as pb;
use serde_json::{Value, json};

use crate::daemon::Daemon;
use crate::load::{DEFAULT_PER_CHANNEL, Pool};
use crate::stats::{Summary, as_ms, ms, rate, thousands};

/// The same allocator as the daemons, so the load generator costs the shared cores less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "lockbox-bench", version, about = "Benchmark a real lockboxd")]
struct Cli {
    /// The lockboxd binary (default: `lockboxd` next to this executable, i.e. target/release).
    #[arg(long, global = true)]
    lockboxd: Option<PathBuf>,
    /// One JSON object per result line.
    #[arg(long, global = true)]
    json: bool,
    /// Client tasks sharing one HTTP/2 connection.
    #[arg(long, global = true, default_value_t = DEFAULT_PER_CHANNEL)]
    per_channel: usize,
    /// Worker threads of the client's tokio runtime (default: one per CPU).
    #[arg(long, global = true)]
    client_threads: Option<usize>,
    /// Keep each lockbox's temp dir (config, data, log) instead of removing it; the daemon is
    /// still stopped. For inspecting or profiling a restart by hand.
    #[arg(long, global = true)]
    keep: bool,
    /// Turn the daemon's `[metrics]` endpoint on at 127.0.0.1:PORT and scrape it every
    /// second while measuring (the cost of metrics: compare with a run without).
    #[arg(long, global = true)]
    metrics_port: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Durable CreateKey (32 bytes) per second and latency.
    Create {
        /// Concurrent client tasks.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Keys to create (after a warm-up of min(count/10, 2000) uncounted creates).
        #[arg(long, default_value_t = 20_000)]
        count: u64,
    },
    /// GetKey per second and latency over random existing keys.
    Get {
        /// Concurrent client tasks.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Gets to time (after a warm-up of min(count/10, 5000) uncounted gets).
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        /// Keys created first, among which each get picks one at random.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
    },
    /// Server CPU time (utime+stime of lockboxd) per create+get pair.
    Cpu {
        /// Create+get pairs to measure.
        #[arg(long, default_value_t = 20_000)]
        count: u64,
        /// Concurrent client tasks.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Snapshot and same-key clone latency at concurrency 1, on lockboxes of several sizes.
    Snapshot {
        /// Snapshots (and as many clones) per lockbox size.
        #[arg(long, default_value_t = 2_000)]
        count: u64,
        /// Lockbox sizes in keys, comma-separated, ascending (the lockbox grows between them).
        #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 100_000])]
        sizes: Vec<u64>,
    },
    /// Start-up time, RSS and get latency of a large lockbox against a small one.
    Scale {
        /// Keys in the large lockbox.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Keys in the small lockbox it is compared with.
        #[arg(long, default_value_t = 1_000)]
        baseline: u64,
        /// Random gets (concurrency 1) after the restart: the latency samples.
        #[arg(long, default_value_t = 10_000)]
        gets: u64,
        /// Concurrency of the fill.
        #[arg(long, default_value_t = 64)]
        fill_concurrency: usize,
    },
    /// Latency, throughput and server CPU per call of health check, Status, GetKey,
    /// DescribeKey and CreateKey: where does the time go?
    Probe {
        /// Concurrency of the second round (the first is at concurrency 1).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Calls per op and round.
        #[arg(long, default_value_t = 20_000)]
        count: u64,
        /// Keys created first for GetKey/DescribeKey.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
    },
}

/// Global settings every measurement needs.
struct Ctx {
    lockboxd: PathBuf,
    json: bool,
    per_channel: usize,
    keep: bool,
    metrics_port: Option<u16>,
}

impl Ctx {
    /// Prints one result line.
    fn emit(&self, human: String, mut obj: Value) {
        if self.json {
            if let Value::Object(map) = &mut obj {
                map.insert("load1".into(), json!(stats::load1()));
            }
            println!("{obj}");
        } else {
            println!("{human}");
        }
    }

    async fn daemon(&self) -> Result<Daemon> {
        let mut d = Daemon::init(&self.lockboxd, self.keep, self.metrics_port)?;
        d.start().await?;
        if let Some(port) = self.metrics_port {
            tokio::spawn(daemon::scrape_every_second(port));
        }
        Ok(d)
    }

    async fn pool(&self, d: &Daemon, concurrency: usize) -> Result<Arc<Pool>> {
        Ok(Arc::new(
            Pool::connect(d.socket(), concurrency, self.per_channel).await?,
        ))
    }
}

fn default_lockboxd() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe
        .parent()
        .context("this executable has no parent directory")?;
    Ok(dir.join("lockboxd"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.client_threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Dropping the measurement's future on Ctrl-C drops its `Daemon` guard: the daemon is
        // stopped and the temp dir removed.
        tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        lockboxd: match cli.lockboxd {
            Some(p) => p,
            None => default_lockboxd()?,
        },
        json: cli.json,
        per_channel: cli.per_channel.max(1),
        keep: cli.keep,
        metrics_port: cli.metrics_port,
    };
    match cli.command {
        Command::Create { concurrency, count } => create(&ctx, concurrency, count).await,
        Command::Get {
            concurrency,
            count,
            keys,
        } => get(&ctx, concurrency, count, keys).await,
        Command::Cpu { count, concurrency } => cpu(&ctx, concurrency, count).await,
        Command::Snapshot { count, sizes } => snapshot(&ctx, count, &sizes).await,
        Command::Scale {
            keys,
            baseline,
            gets,
            fill_concurrency,
        } => scale(&ctx, keys, baseline, gets, fill_concurrency).await,
        Command::Probe {
            concurrency,
            count,
            keys,
        } => probe(&ctx, concurrency, count, keys).await,
    }
}

fn check_count(count: u64) -> Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    Ok(())
}

/// 1. Durable creates per second.
async fn create(ctx: &Ctx, concurrency: usize, count: u64) -> Result<()> {
    check_count(count)?;
    let d = ctx.daemon().await?;
    let pool = ctx.pool(&d, concurrency).await?;
    load::create_keys(&pool, concurrency, (count / 10).min(2_000)).await?;
    let load_before = stats::load1();
    let mut run = load::create_keys(&pool, concurrency, count).await?;
    let s = Summary::of(&mut run.samples);
    let r = rate(count, run.elapsed);
    ctx.emit(
        format!(
            "create: concurrency {concurrency}, {count} keys in {:.2} s = {} keys/s; latency {} \
             [{} connections, load {load_before:.2}]",
            run.elapsed.as_secs_f64(),
            thousands(r),
            s.human(),
            pool.len()
        ),
        json!({
            "bench": "create", "concurrency": concurrency, "count": count,
            "elapsed_s": run.elapsed.as_secs_f64(), "ops_per_s": r.round(),
            "latency": s.json(), "connections": pool.len(), "load1_before": load_before,
        }),
    );
    drop(d);
    Ok(())
}

/// 2. Random gets per second.
async fn get(ctx: &Ctx, concurrency: usize, count: u64, keys: u64) -> Result<()> {
    check_count(count)?;
    check_count(keys)?;
    let d = ctx.daemon().await?;
    let fill_pool = ctx.pool(&d, 64).await?;
    let ids = Arc::new(load::fill(&fill_pool, 64, keys).await?.outputs);
    drop(fill_pool);
    let pool = ctx.pool(&d, concurrency).await?;
    let seed = stats::seed();
    load::get_random(&pool, &ids, concurrency, (count / 10).min(5_000), !seed).await?;
    let load_before = stats::load1();
    let mut run = load::get_random(&pool, &ids, concurrency, count, seed).await?;
    let s = Summary::of(&mut run.samples);
    let r = rate(count, run.elapsed);
    ctx.emit(
        format!(
            "get: concurrency {concurrency}, {count} gets over {keys} keys in {:.2} s = {} ops/s; \
             latency {} [{} connections, load {load_before:.2}]",
            run.elapsed.as_secs_f64(),
            thousands(r),
            s.human(),
            pool.len()
        ),
        json!({
            "bench": "get", "concurrency": concurrency, "count": count, "keys": keys,
            "elapsed_s": run.elapsed.as_secs_f64(), "ops_per_s": r.round(),
            "latency": s.json(), "connections": pool.len(), "load1_before": load_before,
        }),
    );
    drop(d);
    Ok(())
}

/// CPU ticks of the daemon and of this process before and after `f`.
struct CpuDelta {
    server_ticks: u64,
    client_ticks: u64,
    /// Bytes lockboxd sent to the storage layer (`/proc/PID/io` write_bytes).
    server_write_bytes: u64,
    wall: Duration,
}

async fn measure_cpu<T, Fut>(pid: u32, f: Fut) -> Result<(T, CpuDelta)>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let me = std::process::id();
    let w0 = stats::io_counter(pid, "write_bytes")?;
    let (s0, c0) = (stats::cpu_ticks(pid)?, stats::cpu_ticks(me)?);
    let t0 = Instant::now();
    let out = f.await?;
    let wall = t0.elapsed();
    let (s1, c1) = (stats::cpu_ticks(pid)?, stats::cpu_ticks(me)?);
    let w1 = stats::io_counter(pid, "write_bytes")?;
    Ok((
        out,
        CpuDelta {
            server_ticks: s1.saturating_sub(s0),
            client_ticks: c1.saturating_sub(c0),
            server_write_bytes: w1.saturating_sub(w0),
            wall,
        },
    ))
}

/// µs of CPU per operation.
fn us_per(ticks: u64, tck: u64, ops: u64) -> f64 {
    let us = ticks as f64 * 1e6 / tck as f64 / ops.max(1) as f64;
    (us * 10.0).round() / 10.0
}

/// 3. Server CPU per create+get pair (and, for context, per create and per get alone).
async fn cpu(ctx: &Ctx, concurrency: usize, count: u64) -> Result<()> {
    check_count(count)?;
    let (tck, tck_source) = stats::clock_ticks();
    let d = ctx.daemon().await?;
    let pid = d.pid()?;
    let pool = ctx.pool(&d, concurrency).await?;
    let pair = |pool: Arc<Pool>| {
        move |task: usize, _i: u64| {
            let mut c = pool.client(task);
            async move {
                let id = c
                    .create_key(pb::CreateKeyRequest {
                        length: 32,
                        ..Default::default()
                    })
                    .await
                    .context("CreateKey")?
                    .into_inner()
                    .key_id;
                c.get_key(pb::GetKeyRequest {
                    key_id: id.clone(),
                    version: 0,
                })
                .await
                .context("GetKey")?;
                Ok(id)
            }
        }
    };
    // Warm-up: connections, allocator, sled cache.
    load::run(concurrency, (count / 10).min(2_000), pair(pool.clone())).await?;
    let load_before = stats::load1();
    let (run, pairs) = measure_cpu(pid, load::run(concurrency, count, pair(pool.clone()))).await?;
    let ids = Arc::new(run.outputs);
    let (_, creates) = measure_cpu(pid, load::create_keys(&pool, concurrency, count)).await?;
    let (_, gets) = measure_cpu(
        pid,
        load::get_random(&pool, &ids, concurrency, count, stats::seed()),
    )
    .await?;
    let per_pair = us_per(pairs.server_ticks, tck, count);
    let per_create = us_per(creates.server_ticks, tck, count);
    let per_get = us_per(gets.server_ticks, tck, count);
    let client_pair = us_per(pairs.client_ticks, tck, count);
    let kib_per_create = creates.server_write_bytes as f64 / 1024.0 / count as f64;
    ctx.emit(
        format!(
            "cpu: {per_pair} µs of lockboxd CPU per create+get pair ({count} pairs, concurrency \
             {concurrency}, {} ticks at {tck}/s from {tck_source}, {:.2} s wall); alone: create \
             {per_create} µs, get {per_get} µs; bench client {client_pair} µs per pair; \
             lockboxd wrote {kib_per_create:.1} KiB to storage per create [load {load_before:.2}]",
            pairs.server_ticks,
            pairs.wall.as_secs_f64()
        ),
        json!({
            "bench": "cpu", "concurrency": concurrency, "count": count,
            "clk_tck": tck, "clk_tck_source": tck_source,
            "server_us_per_pair": per_pair, "server_ticks": pairs.server_ticks,
            "wall_s": pairs.wall.as_secs_f64(),
            "server_us_per_create": per_create, "server_us_per_get": per_get,
            "client_us_per_pair": client_pair,
            "server_write_kib_per_create": (kib_per_create * 10.0).round() / 10.0,
            "load1_before": load_before,
        }),
    );
    drop(d);
    Ok(())
}

/// 4. Snapshot and same-key clone latency at concurrency 1, per lockbox size.
async fn snapshot(ctx: &Ctx, count: u64, sizes: &[u64]) -> Result<()> {
    check_count(count)?;
    if sizes.is_empty() || sizes.windows(2).any(|w| w[0] > w[1]) || sizes[0] == 0 {
        bail!("--sizes must be ascending and non-zero");
    }
    let d = ctx.daemon().await?;
    let fill_pool = ctx.pool(&d, 64).await?;
    let pool = ctx.pool(&d, 1).await?;
    let mut ids: Vec<String> = Vec::new();
    for &size in sizes {
        let have = ids.len() as u64;
        if size > have {
            ids.extend(load::fill(&fill_pool, 64, size - have).await?.outputs);
        }
        let src = Arc::new(ids.clone());
        let seed = stats::seed();
        let load_before = stats::load1();
        let mut snaps = derive_run(&pool, &src, count, seed, false).await?;
        let mut clones = derive_run(&pool, &src, count, !seed, true).await?;
        let (s, c) = (
            Summary::of(&mut snaps.samples),
            Summary::of(&mut clones.samples),
        );
        ctx.emit(
            format!(
                "snapshot: lockbox of {size} keys, concurrency 1, {count} each: snapshot {}; \
                 same-key clone {} [load {load_before:.2}]",
                s.human(),
                c.human()
            ),
            json!({
                "bench": "snapshot", "lockbox_keys": size, "count": count,
                "snapshot": s.json(), "clone_same_key": c.json(), "load1_before": load_before,
            }),
        );
    }
    drop(d);
    Ok(())
}

/// `count` snapshots (or same-key clones) of random keys of `src`, one at a time.
async fn derive_run(
    pool: &Arc<Pool>,
    src: &Arc<Vec<String>>,
    count: u64,
    seed: u64,
    clone: bool,
) -> Result<load::Run<()>> {
    let pool = pool.clone();
    let src = src.clone();
    load::run(1, count, move |task, i| {
        let mut c = pool.client(task);
        let pick = stats::mix64(seed ^ i) % src.len().max(1) as u64;
        let key_id = src[usize::try_from(pick).unwrap_or(0)].clone();
        async move {
            if clone {
                c.clone_key(pb::CloneKeyRequest {
                    key_id,
                    mode: pb::CloneMode::SameKey as i32,
                    labels: Default::default(),
                })
                .await
                .context("CloneKey same-key")?;
            } else {
                c.snapshot_key(pb::SnapshotKeyRequest {
                    key_id,
                    labels: Default::default(),
                })
                .await
                .context("SnapshotKey")?;
            }
            Ok(())
        }
    })
    .await
}

/// What `scale` measures on one lockbox.
struct ScaleFigures {
    keys: u64,
    fill_rate: f64,
    stop: Duration,
    disk_bytes: u64,
    startup: Duration,
    rss_start_kib: u64,
    rss_after_kib: u64,
    hwm_kib: u64,
    get: Summary,
}

impl ScaleFigures {
    fn human(&self, gets: u64) -> String {
        format!(
            "scale: {} keys (filled at {} keys/s, {:.0} MiB on disk, clean stop {}): start-up {}, \
             RSS {:.1} MiB after start, {:.1} MiB after {gets} random gets (peak {:.1} MiB); \
             get latency at concurrency 1 {}",
            self.keys,
            thousands(self.fill_rate),
            self.disk_bytes as f64 / 1048576.0,
            ms(self.stop),
            ms(self.startup),
            self.rss_start_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0,
            self.get.human()
        )
    }

    fn json(&self) -> Value {
        json!({
            "keys": self.keys, "fill_keys_per_s": self.fill_rate.round(),
            "disk_bytes": self.disk_bytes, "stop_ms": as_ms(self.stop),
            "startup_ms": as_ms(self.startup), "rss_start_kib": self.rss_start_kib,
            "rss_after_gets_kib": self.rss_after_kib, "rss_peak_kib": self.hwm_kib,
            "get_latency": self.get.json(),
        })
    }
}

async fn scale_one(
    ctx: &Ctx,
    keys: u64,
    gets: u64,
    fill_concurrency: usize,
) -> Result<ScaleFigures> {
    let mut d = ctx.daemon().await?;
    let fill_pool = ctx.pool(&d, fill_concurrency).await?;
    let run = load::fill(&fill_pool, fill_concurrency, keys).await?;
    let fill_rate = rate(keys, run.elapsed);
    let ids = Arc::new(run.outputs);
    drop(fill_pool);
    let stop = d.stop()?;
    let disk_bytes = stats::dir_bytes(&d.root().join("data"));
    let startup = d.start().await?;
    let pid = d.pid()?;
    let rss_start_kib = stats::status_kib(pid, "VmRSS")?;
    let pool = ctx.pool(&d, 1).await?;
    let mut run = load::get_random(&pool, &ids, 1, gets, stats::seed()).await?;
    let rss_after_kib = stats::status_kib(pid, "VmRSS")?;
    let hwm_kib = stats::status_kib(pid, "VmHWM")?;
    let get = Summary::of(&mut run.samples);
    drop(pool);
    d.stop()?;
    Ok(ScaleFigures {
        keys,
        fill_rate,
        stop,
        disk_bytes,
        startup,
        rss_start_kib,
        rss_after_kib,
        hwm_kib,
        get,
    })
}

/// 5. Start-up, RSS and get latency: a large lockbox against a small one.
async fn scale(
    ctx: &Ctx,
    keys: u64,
    baseline: u64,
    gets: u64,
    fill_concurrency: usize,
) -> Result<()> {
    check_count(keys)?;
    check_count(baseline)?;
    check_count(gets)?;
    let load_before = stats::load1();
    let small = scale_one(ctx, baseline, gets, fill_concurrency).await?;
    ctx.emit(
        format!("{} [load {load_before:.2}]", small.human(gets)),
        json!({"bench": "scale", "lockbox": small.json(), "load1_before": load_before}),
    );
    let load_before = stats::load1();
    let large = scale_one(ctx, keys, gets, fill_concurrency).await?;
    ctx.emit(
        format!("{} [load {load_before:.2}]", large.human(gets)),
        json!({"bench": "scale", "lockbox": large.json(), "load1_before": load_before}),
    );
    let ratio = |a: Duration, b: Duration| {
        if b.is_zero() {
            f64::NAN
        } else {
            a.as_secs_f64() / b.as_secs_f64()
        }
    };
    let (p50, p99) = (
        ratio(large.get.p50, small.get.p50),
        ratio(large.get.p99, small.get.p99),
    );
    ctx.emit(
        format!(
            "scale: {} vs {} keys: start-up {} vs {}, RSS after gets {:.1} vs {:.1} MiB, get p50 \
             x{p50:.2}, p99 x{p99:.2}",
            large.keys,
            small.keys,
            ms(large.startup),
            ms(small.startup),
            large.rss_after_kib as f64 / 1024.0,
            small.rss_after_kib as f64 / 1024.0,
        ),
        json!({
            "bench": "scale-compare", "large_keys": large.keys, "small_keys": small.keys,
            "get_p50_ratio": p50, "get_p99_ratio": p99,
            "startup_ms": [as_ms(large.startup), as_ms(small.startup)],
            "rss_after_gets_kib": [large.rss_after_kib, small.rss_after_kib],
        }),
    );
    Ok(())
}

/// Where the time goes: the same closed loop over calls of increasing depth.
async fn probe(ctx: &Ctx, concurrency: usize, count: u64, keys: u64) -> Result<()> {
    check_count(count)?;
    check_count(keys)?;
    let (tck, _) = stats::clock_ticks();
    let d = ctx.daemon().await?;
    let pid = d.pid()?;
    let fill_pool = ctx.pool(&d, 64).await?;
    let ids = Arc::new(load::fill(&fill_pool, 64, keys).await?.outputs);
    drop(fill_pool);
    let pool = ctx.pool(&d, concurrency).await?;
    for conc in [1, concurrency] {
        for op in ["health", "status", "get", "describe", "create"] {
            // Warm-up, then the measured run.
            probe_run(&pool, &ids, op, conc, (count / 10).min(2_000)).await?;
            let load_before = stats::load1();
            let (mut run, cpu) = measure_cpu(pid, probe_run(&pool, &ids, op, conc, count)).await?;
            let s = Summary::of(&mut run.samples);
            let r = rate(count, run.elapsed);
            let server = us_per(cpu.server_ticks, tck, count);
            let client = us_per(cpu.client_ticks, tck, count);
            let kib = cpu.server_write_bytes as f64 / 1024.0 / count as f64;
            ctx.emit(
                format!(
                    "probe: {op:<8} concurrency {conc:>3}: {:>7} ops/s, latency {}, lockboxd \
                     CPU {server} µs/op, client CPU {client} µs/op, {kib:.1} KiB written/op \
                     [load {load_before:.2}]",
                    thousands(r),
                    s.human()
                ),
                json!({
                    "bench": "probe", "op": op, "concurrency": conc, "count": count,
                    "ops_per_s": r.round(), "latency": s.json(),
                    "server_us_per_op": server, "client_us_per_op": client,
                    "server_write_kib_per_op": (kib * 10.0).round() / 10.0,
                    "load1_before": load_before,
                }),
            );
        }
    }
    drop(d);
    Ok(())
}

async fn probe_run(
    pool: &Arc<Pool>,
    ids: &Arc<Vec<String>>,
    op: &'static str,
    concurrency: usize,
    count: u64,
) -> Result<load::Run<()>> {
    let seed = stats::seed();
    match op {
        "get" => load::get_random(pool, ids, concurrency, count, seed).await,
        "create" => {
            let run = load::create_keys(pool, concurrency, count).await?;
            Ok(load::Run {
                samples: run.samples,
                outputs: Vec::new(),
                elapsed: run.elapsed,
            })
        }
        _ => {
            let pool = pool.clone();
            let ids = ids.clone();
            load::run(concurrency, count, move |task, i| {
                let pool = pool.clone();
                let pick = stats::mix64(seed ^ i) % ids.len().max(1) as u64;
                let key_id = ids[usize::try_from(pick).unwrap_or(0)].clone();
                async move {
                    match op {
                        "health" => {
                            pool.health(task)
                                .check(tonic_health::pb::HealthCheckRequest {
                                    service: String::new(),
                                })
                                .await
                                .context("health Check")?;
                        }
                        "status" => {
                            pool.client(task)
                                .status(pb::StatusRequest {})
                                .await
                                .context("Status")?;
                        }
                        _ => {
                            pool.client(task)
                                .describe_key(pb::DescribeKeyRequest { key_id })
                                .await
                                .context("DescribeKey")?;
                        }
                    }
                    Ok(())
                }
            })
            .await
        }
    }
}
