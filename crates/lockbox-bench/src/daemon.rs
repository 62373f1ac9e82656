//! A real `lockboxd` in a temp dir under /tmp: `init`, start, stop (SIGTERM), restart.
//!
//! [`Daemon`] is a drop guard: whatever happens (an error, a panic, Ctrl-C unwinding the
//! future that owns it), dropping it SIGTERMs the daemon, SIGKILLs it if it does not exit in
//! time, and removes the temp dir (unless asked to keep it).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lockbox_proto::v1::StatusRequest;
use lockbox_proto::v1::lockbox_client::LockboxClient;
use tonic::transport::{Channel, Endpoint};

/// How long a clean shutdown may take before the guard SIGKILLs the daemon.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long start-up may take (a large sled database is recovered at open).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// One lockboxd and its temp dir.
pub struct Daemon {
    bin: PathBuf,
    // Dropped (removed) after the child is stopped: see `Drop`.
    dir: Option<tempfile::TempDir>,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Leave the temp dir in place on drop (for inspection or profiling a restart).
    keep: bool,
}

impl Daemon {
    /// Makes a temp dir under /tmp, writes the config and runs `lockboxd init`. With
    /// `metrics_port`, the config serves `/metrics` on 127.0.0.1 at that port.
    pub fn init(bin: &Path, keep: bool, metrics_port: Option<u16>) -> Result<Daemon> {
        if !bin.is_file() {
            bail!(
                "no lockboxd at {} (build it: cargo build --release -p lockboxd, or pass --lockboxd)",
                bin.display()
            );
        }
        // Short: a Unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("lbb")
            .tempdir_in("/tmp")
            .context("creating a temp dir under /tmp")?;
        let root = dir.path().to_path_buf();
        let config = root.join("lockboxd.toml");
        let socket = root.join("s.sock");
        let text = format!(
            "version = 1\n\
             node_id = \"bench\"\n\
             data_dir = \"{data}\"\n\
             socket = \"{socket}\"\n\
             cache_capacity_mb = 64\n\
             [unseal]\n\
             method = \"keyfile\"\n\
             keyfile = \"{key}\"\n",
            data = root.join("data").display(),
            socket = socket.display(),
            key = root.join("unseal.key").display(),
        );
        let text = match metrics_port {
            Some(port) => format!("{text}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
            None => text,
        };
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let daemon = Daemon {
            bin: bin.to_path_buf(),
            log: root.join("lockboxd.log"),
            dir: Some(dir),
            config,
            socket,
            child: None,
            keep,
        };
        let out = Command::new(&daemon.bin)
            .arg("--config")
            .arg(&daemon.config)
            .arg("init")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} init", daemon.bin.display()))?;
        if !out.status.success() {
            bail!(
                "lockboxd init failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(daemon)
    }

    /// The Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temp dir holding config, data and log.
    pub fn root(&self) -> &Path {
        self.config.parent().unwrap_or(Path::new("/tmp"))
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("lockboxd is not running")
    }

    /// Spawns the daemon and waits for the first successful `Status` call. Returns the time
    /// from spawn to that reply (the start-up time).
    pub async fn start(&mut self) -> Result<Duration> {
        if self.child.is_some() {
            bail!("lockboxd is already running");
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("polling lockboxd")?
            {
                self.child = None;
                bail!(
                    "lockboxd exited during start-up ({status}): {}",
                    self.log_tail()
                );
            }
            if self.socket.exists()
                && let Ok(mut c) = connect_one(&self.socket).await
                && let Ok(resp) = c.status(StatusRequest {}).await
            {
                let elapsed = started.elapsed();
                if resp.get_ref().sealed {
                    bail!("lockboxd started sealed although the keyfile method is configured");
                }
                return Ok(elapsed);
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "lockboxd did not answer Status within {START_TIMEOUT:?}: {}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit. Returns how long the shutdown took.
    pub fn stop(&mut self) -> Result<Duration> {
        let Some(mut child) = self.child.take() else {
            bail!("lockboxd is not running");
        };
        let started = Instant::now();
        let status = terminate(&mut child)?;
        let elapsed = started.elapsed();
        if !status.success() {
            bail!(
                "lockboxd exited with {status} on SIGTERM: {}",
                self.log_tail()
            );
        }
        Ok(elapsed)
    }

    /// The last lines of the daemon's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(5)..];
        if tail.is_empty() {
            "(empty log)".into()
        } else {
            tail.join(" | ")
        }
    }
}

/// Sends SIGTERM with the `kill` command (no `unsafe`, no libc), waits up to
/// [`STOP_TIMEOUT`], then SIGKILLs.
fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    if let Some(status) = child.try_wait().context("polling lockboxd")? {
        return Ok(status);
    }
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    if matches!(sent, Ok(s) if s.success()) {
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().context("polling lockboxd")? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    child.kill().context("SIGKILL lockboxd")?;
    let status = child.wait().context("waiting for lockboxd")?;
    bail!("lockboxd did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed ({status})")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(e) = terminate(&mut child)
        {
            eprintln!("warning: {e:#}");
        }
        if let Some(dir) = self.dir.take() {
            if self.keep {
                eprintln!("kept {} (lockboxd stopped)", dir.keep().display());
                return;
            }
            let path = dir.path().display().to_string();
            if let Err(e) = dir.close() {
                eprintln!("warning: cannot remove {path}: {e}");
            }
        }
    }
}

/// The endpoint of a Unix socket path.
pub fn endpoint(socket: &Path) -> Result<Endpoint> {
    Endpoint::try_from(format!("unix:{}", socket.display()))
        .with_context(|| format!("bad socket path {}", socket.display()))
}

/// One new HTTP/2 connection to the lockbox.
pub async fn connect_one(socket: &Path) -> Result<LockboxClient<Channel>> {
    let channel = endpoint(socket)?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok(LockboxClient::new(channel))
}

/// Scrapes `GET /metrics` at 127.0.0.1:`port` once a second (15 times as often as a usual
/// Prometheus), until the endpoint goes away: what a monitored daemon serves besides its load.
pub async fn scrape_every_second(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return;
        };
        let req = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if s.write_all(req).await.is_err() {
            return;
        }
        let mut body = Vec::new();
        if s.read_to_end(&mut body).await.is_err() {
            return;
        }
    }
}
