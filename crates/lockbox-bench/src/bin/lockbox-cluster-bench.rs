//! Cluster benchmarks behind BENCHMARKS.md: grants issued per second by a real controller over
//! mTLS, one-key transfer latency between two real lockboxd, and evacuation throughput with
//! CPU time per key at each end. Every process is a real release binary on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::controller_client::ControllerClient;
use lockbox_proto::v1::lockbox_client::LockboxClient;
use lockbox_tls::{ClientTls, Expect, Role, TlsFiles};
use serde_json::json;
use tonic::transport::Channel;

#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use stats::{Summary, rate};

/// The same allocator as the daemons, so the load generator costs the shared cores less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "lockbox cluster benchmarks (real controller and lockboxd processes)")]
struct Cli {
    /// Directory holding release lockboxd and lockbox-controller (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Print one JSON object per result.
    #[arg(long)]
    json: bool,
    /// Worker threads of the client's tokio runtime (default: one per CPU).
    #[arg(long)]
    client_threads: Option<usize>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// IssueGrant per second over mTLS at a given concurrency.
    Grants {
        /// Concurrent client tasks.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Grants to issue (after 10% warm-up).
        #[arg(long, default_value_t = 50_000)]
        count: u64,
        /// mTLS connections the tasks share (default 1: a gRPC client multiplexes its calls
        /// on one HTTP/2 connection).
        #[arg(long)]
        connections: Option<usize>,
    },
    /// Latency of a one-key COPY transfer with the grant already issued.
    Transfer {
        /// Transfers to time.
        #[arg(long, default_value_t = 300)]
        count: u64,
    },
    /// MOVE every key of a lockbox to another in one grant.
    Evacuate {
        /// Keys to move.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Record a `perf` profile (DWARF call graphs) of both lockboxd processes during the move
        /// only, into this file (`perf report -i FILE`): the fill before it is not profiled.
        #[arg(long)]
        perf: Option<PathBuf>,
    },
}

/// Processes started by the bench; killed on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    procs: Procs,
    controller_url: String,
    lockbox_pids: Vec<u32>,
}

impl Cluster {
    /// SIGTERMs each lockbox in turn and times its exit: a clean stop (final signed audit
    /// checkpoint, the store's memtable flushed) after whatever the bench did.
    fn stop_lockboxes(&mut self) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        // The controller is the first process; the lockboxes follow. Those stopped here leave
        // `procs`, so that its drop does not signal them again.
        for mut child in self.procs.0.split_off(1) {
            let t0 = Instant::now();
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            let status = child.wait()?;
            if !status.success() {
                bail!("lockboxd exited with {status} on SIGTERM");
            }
            out.push(t0.elapsed().as_secs_f64());
        }
        Ok(out)
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Cluster {
    async fn start(bin: &Path, nodes: &[&str]) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("lbc").tempdir_in("/tmp")?;
        let d = dir.path();
        let pki = d.join("pki");
        lockbox_tls::pki::init("example.org", &pki)?;
        let lo: Vec<std::net::IpAddr> = vec!["127.0.0.1".parse()?];
        lockbox_tls::pki::issue(&pki, Role::Controller, "ctl-1", &[], &lo)?;
        lockbox_tls::pki::issue(&pki, Role::Orchestrator, "cinder", &[], &[])?;
        for n in nodes {
            lockbox_tls::pki::issue(&pki, Role::Lockbox, n, &[], &lo)?;
        }
        let port = free_port()?;
        let ctl_cfg = d.join("controller.toml");
        std::fs::write(
            &ctl_cfg,
            format!(
                "version = 1\nkey_id = \"ctl-1\"\nlisten = \"127.0.0.1:{port}\"\ntrust_domain = \"example.org\"\nsigning_key = \"{d}/ctl.key\"\nattestation_ttl = \"1h\"\ndata_dir = \"{d}/ctl\"\n[tls]\ncert = \"{p}/ctl-1.crt\"\nkey = \"{p}/ctl-1.key\"\nca = \"{p}/ca.crt\"\n[[policy]]\ncaller = \"spiffe://example.org/orchestrator/cinder\"\nops = [\"copy\", \"move\", \"replicate\"]\nmax_ttl = \"15m\"\nmax_keys = 1000000\n",
                d = d.display(),
                p = pki.display()
            ),
        )?;
        let block = run(Command::new(bin.join("lockbox-controller"))
            .args(["init", "--config"])
            .arg(&ctl_cfg))?;
        let mut procs = Procs(Vec::new());
        procs.0.push(
            Command::new(bin.join("lockbox-controller"))
                .arg("--config")
                .arg(&ctl_cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("controller.log"))?)
                .spawn()?,
        );
        let ports: Vec<u16> = nodes.iter().map(|_| free_port()).collect::<Result<_>>()?;
        let mut peers = String::from("[peers]\n");
        for (n, p) in nodes.iter().zip(&ports) {
            peers.push_str(&format!("{n} = \"127.0.0.1:{p}\"\n"));
        }
        let mut lockbox_pids = Vec::new();
        for (n, p) in nodes.iter().zip(&ports) {
            let nd = d.join(n);
            std::fs::create_dir_all(&nd)?;
            let cfg = nd.join("lockboxd.toml");
            std::fs::write(
                &cfg,
                format!(
                    "version = 1\nnode_id = \"{n}\"\ndata_dir = \"{nd}/data\"\nsocket = \"{nd}/s.sock\"\npeer_listen = \"127.0.0.1:{p}\"\ncache_capacity_mb = 64\n[unseal]\nmethod = \"keyfile\"\nkeyfile = \"{nd}/unseal.key\"\n[tls]\ncert = \"{pk}/{n}.crt\"\nkey = \"{pk}/{n}.key\"\nca = \"{pk}/ca.crt\"\n{block}\n{peers}",
                    nd = nd.display(),
                    pk = pki.display()
                ),
            )?;
            run(Command::new(bin.join("lockboxd"))
                .args(["init", "--config"])
                .arg(&cfg))?;
            let child = Command::new(bin.join("lockboxd"))
                .arg("--config")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(nd.join("lockboxd.log"))?)
                .spawn()?;
            lockbox_pids.push(child.id());
            procs.0.push(child);
        }
        let c = Cluster {
            dir,
            procs,
            controller_url: format!("https://127.0.0.1:{port}"),
            lockbox_pids,
        };
        for n in nodes {
            c.wait_attested(n).await?;
        }
        Ok(c)
    }

    fn socket(&self, node: &str) -> PathBuf {
        self.dir.path().join(node).join("s.sock")
    }

    async fn local(&self, node: &str) -> Result<LockboxClient<Channel>> {
        let ch =
            tonic::transport::Endpoint::try_from(format!("unix:{}", self.socket(node).display()))?
                .connect()
                .await?;
        Ok(LockboxClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    async fn wait_attested(&self, node: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = self.local(node).await
                && let Ok(s) = c.status(pb::StatusRequest {}).await
                && s.get_ref().attestation_state == "valid"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{node} never got attested");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn orchestrator(&self) -> Result<ControllerClient<Channel>> {
        let pki = self.dir.path().join("pki");
        let tls = ClientTls::load(&TlsFiles {
            cert: pki.join("cinder.crt"),
            key: pki.join("cinder.key"),
            ca: pki.join("ca.crt"),
        })?;
        let ch = tls
            .connect(&self.controller_url, Expect::role(Role::Controller))
            .await?;
        Ok(ControllerClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    async fn grant(
        &self,
        keys: Vec<String>,
        from: &str,
        to: &str,
        op: pb::GrantOp,
    ) -> Result<pb::SignedGrant> {
        Ok(self
            .orchestrator()
            .await?
            .issue_grant(pb::IssueGrantRequest {
                key_ids: keys,
                source_node: from.into(),
                dest_node: to.into(),
                op: op as i32,
                ttl_seconds: 900,
                reason: "bench".into(),
            })
            .await?
            .into_inner())
    }
}

async fn create_keys(c: &Cluster, node: &str, n: u64) -> Result<Vec<String>> {
    let per = 32u64;
    let mut tasks = Vec::new();
    for t in 0..per {
        let mut client = c.local(node).await?;
        let share = n / per + u64::from(t < n % per);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(share as usize);
            for _ in 0..share {
                ids.push(
                    client
                        .create_key(pb::CreateKeyRequest::default())
                        .await?
                        .into_inner()
                        .key_id,
                );
            }
            Ok::<_, tonic::Status>(ids)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

async fn transfer(
    client: &mut LockboxClient<Channel>,
    grant: pb::SignedGrant,
) -> Result<pb::TransferReceipt> {
    let mut stream = client
        .transfer(pb::TransferRequest { grant: Some(grant) })
        .await?
        .into_inner();
    while let Some(p) = stream.message().await? {
        if let Some(r) = p.receipt {
            return Ok(r);
        }
    }
    Err(anyhow!("transfer ended without a receipt"))
}

async fn bench_grants(
    c: &Cluster,
    concurrency: usize,
    channels: usize,
    count: u64,
) -> Result<serde_json::Value> {
    let key = "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60".to_string();
    let mut clients = Vec::new();
    for _ in 0..channels {
        clients.push(c.orchestrator().await?);
    }
    let warm = count / 10;
    let run_phase = |n: u64| {
        let clients = clients.clone();
        let key = key.clone();
        async move {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..concurrency {
                let mut client = clients[t % clients.len()].clone();
                let key = key.clone();
                let share = n / concurrency as u64 + u64::from((t as u64) < n % concurrency as u64);
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(share as usize);
                    for _ in 0..share {
                        let t0 = Instant::now();
                        client
                            .issue_grant(pb::IssueGrantRequest {
                                key_ids: vec![key.clone()],
                                source_node: "host-a".into(),
                                dest_node: "host-b".into(),
                                op: pb::GrantOp::Copy as i32,
                                ttl_seconds: 600,
                                reason: String::new(),
                            })
                            .await?;
                        lat.push(t0.elapsed());
                    }
                    Ok::<_, tonic::Status>(lat)
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await??);
            }
            Ok::<_, anyhow::Error>((all, started.elapsed()))
        }
    };
    run_phase(warm).await?;
    let (mut lat, elapsed) = run_phase(count).await?;
    let s = Summary::of(&mut lat);
    Ok(json!({
        "bench": "grants", "concurrency": concurrency, "count": count, "connections": channels,
        "grants_per_s": rate(count, elapsed), "latency": s.json(),
    }))
}

async fn bench_transfer(c: &Cluster, count: u64) -> Result<serde_json::Value> {
    let keys = create_keys(c, "host-a", count + 20).await?;
    let mut grants = Vec::new();
    for k in &keys {
        grants.push(
            c.grant(vec![k.clone()], "host-a", "host-b", pb::GrantOp::Copy)
                .await?,
        );
    }
    let mut client = c.local("host-a").await?;
    // Warm-up: the first transfer connects and verifies host-b's attestation.
    for g in grants.drain(..20) {
        transfer(&mut client, g).await?;
    }
    let mut lat = Vec::new();
    for g in grants {
        let t0 = Instant::now();
        transfer(&mut client, g).await?;
        lat.push(t0.elapsed());
    }
    let s = Summary::of(&mut lat);
    Ok(json!({"bench": "transfer-one-key", "count": count, "latency": s.json()}))
}

async fn bench_evacuate(c: &mut Cluster, n: u64, perf: Option<&Path>) -> Result<serde_json::Value> {
    let keys = create_keys(c, "host-a", n).await?;
    let grant = c.grant(keys, "host-a", "host-b", pb::GrantOp::Move).await?;
    let profiler = match perf {
        Some(out) => Some(start_perf(out, &c.lockbox_pids)?),
        None => None,
    };
    let (tick_hz, _) = stats::clock_ticks();
    let before: Vec<u64> = c
        .lockbox_pids
        .iter()
        .map(|p| stats::cpu_ticks(*p))
        .collect::<Result<_>>()?;
    let mut client = c.local("host-a").await?;
    let t0 = Instant::now();
    let r = transfer(&mut client, grant).await?;
    let elapsed = t0.elapsed();
    let after: Vec<u64> = c
        .lockbox_pids
        .iter()
        .map(|p| stats::cpu_ticks(*p))
        .collect::<Result<_>>()?;
    if r.key_ids.len() as u64 != n {
        bail!("receipt names {} keys, not {n}", r.key_ids.len());
    }
    // The receipt means durable at both ends (each end's log is synced); each end's sled
    // index may still be catching up in the background. Wait until both daemons are idle, so
    // that the work an evacuation costs is counted whole.
    let (settled, quiet) = settle(&c.lockbox_pids, t0).await?;
    if let Some(p) = profiler {
        stop_perf(p)?;
    }
    let us_per_key =
        |a: &[u64], i: usize| (a[i] - before[i]) as f64 * 1e6 / tick_hz as f64 / n as f64;
    let stop_seconds = c.stop_lockboxes()?;
    Ok(json!({
        "stop_seconds_source_then_dest": stop_seconds,
        "bench": "evacuate", "keys": n, "seconds": elapsed.as_secs_f64(),
        "keys_per_s": rate(n, elapsed),
        "source_cpu_us_per_key": us_per_key(&after, 0), "dest_cpu_us_per_key": us_per_key(&after, 1),
        "settled_seconds": settled.as_secs_f64(),
        "settled_keys_per_s": rate(n, settled),
        "source_cpu_us_per_key_settled": us_per_key(&quiet, 0),
        "dest_cpu_us_per_key_settled": us_per_key(&quiet, 1),
    }))
}

/// Polls the daemons' CPU time until neither used more than 1 tick in 300 ms (or 60 s pass):
/// returns how long after `t0` they went quiet and their CPU ticks at that point.
async fn settle(pids: &[u32], t0: Instant) -> Result<(Duration, Vec<u64>)> {
    let read = || -> Result<Vec<u64>> { pids.iter().map(|p| stats::cpu_ticks(*p)).collect() };
    let mut last = read()?;
    let mut last_busy = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = read()?;
        if now.iter().zip(&last).any(|(a, b)| a - b > 1) {
            last_busy = Instant::now();
            last = now;
        }
        if last_busy.elapsed() >= Duration::from_millis(300) || Instant::now() > deadline {
            return Ok((last_busy - t0, last));
        }
    }
}

/// Starts `perf record` (DWARF call graphs: release builds keep no frame pointers) on the given processes and waits until it is attached.
fn start_perf(out: &Path, pids: &[u32]) -> Result<Child> {
    let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let child = Command::new("perf")
        .args(["record", "--call-graph", "dwarf,16384", "-F", "400", "-o"])
        .arg(out)
        .args(["-p", &pids.join(",")])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot run perf (is it installed?)")?;
    // perf prints nothing when attached; give it a moment to open its events.
    std::thread::sleep(Duration::from_millis(500));
    Ok(child)
}

/// Stops `perf record` with SIGINT (so it writes its file) and waits for it.
fn stop_perf(mut child: Child) -> Result<()> {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .context("cannot signal perf")?;
    child.wait().context("waiting for perf")?;
    Ok(())
}

fn main() -> Result<()> {
    lockbox_tls::install_default_provider();
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.client_threads {
        rt.worker_threads(n.max(1));
    }
    rt.build()?.block_on(bench(cli))
}

async fn bench(cli: Cli) -> Result<()> {
    let bin = match cli.bin_dir {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no parent dir"))?
            .to_path_buf(),
    };
    let mut cluster = Arc::new(Cluster::start(&bin, &["host-a", "host-b"]).await?);
    let load = stats::load1();
    let mut v = match cli.command {
        Cmd::Grants {
            concurrency,
            count,
            connections,
        } => {
            let connections = connections.unwrap_or(1).max(1);
            bench_grants(&cluster, concurrency, connections, count).await?
        }
        Cmd::Transfer { count } => bench_transfer(&cluster, count).await?,
        Cmd::Evacuate { keys, perf } => {
            let c = Arc::get_mut(&mut cluster).ok_or_else(|| anyhow!("cluster still shared"))?;
            bench_evacuate(c, keys, perf.as_deref()).await?
        }
    };
    v["load1_before"] = json!(load);
    if cli.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    let _ = &cluster.procs;
    Ok(())
}
