//! Harness for the end-to-end tests: builds `lockboxd` and `lockboxctl` once per test process,
//! runs real daemons in throw-away directories, and drives them through the real CLI.
//!
//! Every [`Node`] lives in its own temporary directory under `/tmp` (Unix socket paths are
//! limited to 108 bytes), so tests are independent and can run in parallel.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;

pub mod cluster;
pub mod rogue;

/// How long a single `lockboxctl` call may take before the test gives up on it.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to become ready (answer `status`).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Paths of the two binaries under test.
#[derive(Debug)]
pub struct Binaries {
    /// The daemon.
    pub lockboxd: PathBuf,
    /// The CLI.
    pub lockboxctl: PathBuf,
    /// The controller.
    pub controller: PathBuf,
    /// The one-off store migration tool.
    pub migrate: PathBuf,
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where `deploy/test.sh` says the binaries of its own build are: when set, the harness uses
/// them as they are and starts no build of its own.
pub const BIN_DIR_VAR: &str = "LOCKBOX_TEST_BIN_DIR";

/// The daemon binaries (debug profile), once per test process. `deploy/test.sh` (and so CI)
/// builds them with the tests in one `cargo build --workspace --bins --tests` and names the
/// directory in [`BIN_DIR_VAR`]; a bare `cargo test` falls back to that same build command
/// here. Panics with cargo's output when the build fails, or when a named binary is missing.
///
/// The fallback build asks for the workspace's tests too: cargo then resolves features
/// exactly as `cargo test --workspace` did (dev-dependencies included), so the binaries link
/// the dependencies that test build already compiled. With `-p lockboxd …` alone, features
/// resolved differently and ~90 crates were compiled a second time.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| match std::env::var_os(BIN_DIR_VAR) {
        Some(dir) => Binaries::in_dir(&PathBuf::from(dir)),
        None => build_binaries(),
    })
}

impl Binaries {
    fn in_dir(dir: &Path) -> Binaries {
        let bins = Binaries {
            lockboxd: dir.join("lockboxd"),
            lockboxctl: dir.join("lockboxctl"),
            controller: dir.join("lockbox-controller"),
            migrate: dir.join("lockbox-migrate"),
        };
        for b in [
            &bins.lockboxd,
            &bins.lockboxctl,
            &bins.controller,
            &bins.migrate,
        ] {
            assert!(
                b.is_file(),
                "built binary not found at {} ({BIN_DIR_VAR}={})",
                b.display(),
                dir.display()
            );
        }
        bins
    }
}

/// The fallback of [`binaries`]: builds them as `deploy/test.sh` does.
fn build_binaries() -> Binaries {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--workspace", "--bins", "--tests"])
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} build: {e}"));
    assert!(
        out.status.success(),
        "`cargo build --workspace --bins --tests` failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => {
            let t = PathBuf::from(t);
            if t.is_absolute() { t } else { root.join(t) }
        }
        None => root.join("target"),
    };
    Binaries::in_dir(&target.join("debug"))
}

/// Runs a command to completion with a deadline, capturing stdout and stderr. Panics (after
/// killing the process) when the deadline passes.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// A short, human-readable rendering of a command's result for assertion messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How a node unseals.
#[derive(Debug, Clone)]
pub enum UnsealMethod {
    /// `method = "keyfile"`: auto-unseal from `<dir>/unseal.key`.
    Keyfile,
    /// `method = "passphrase"` with this passphrase (fast Argon2 parameters); the node starts
    /// sealed.
    Passphrase(String),
    /// `method = "peers"` over these peers (names of the cluster's `[peers]`), `threshold` of
    /// them, with a recovery passphrase slot when `recovery` is set (written to
    /// [`Node::recovery_file`], fast Argon2 parameters).
    Peers {
        /// `[unseal] peers`.
        peers: Vec<String>,
        /// `[unseal] threshold`.
        threshold: u32,
        /// The recovery passphrase, if any.
        recovery: Option<String>,
    },
    /// `method = "tpm2"` with `[unseal.tpm2] tcti` (a test's swtpm), and a recovery
    /// passphrase slot when `recovery` is set.
    Tpm2 {
        /// `[unseal.tpm2] tcti`.
        tcti: String,
        /// The recovery passphrase, if any.
        recovery: Option<String>,
    },
    /// `method = "tpm2+peers"`: both parts needed.
    Tpm2Peers {
        /// `[unseal.tpm2] tcti`.
        tcti: String,
        /// `[unseal] peers`.
        peers: Vec<String>,
        /// `[unseal] threshold`.
        threshold: u32,
        /// The recovery passphrase, if any.
        recovery: Option<String>,
    },
}

impl UnsealMethod {
    /// The recovery passphrase these options set, if any.
    pub fn recovery(&self) -> Option<&str> {
        match self {
            UnsealMethod::Peers { recovery, .. }
            | UnsealMethod::Tpm2 { recovery, .. }
            | UnsealMethod::Tpm2Peers { recovery, .. } => recovery.as_deref(),
            _ => None,
        }
    }
}

/// The `[keys] shred_rotation` policy.
#[derive(Debug, Clone, Copy)]
pub enum ShredRotation {
    /// `"immediate"`: rotate the KEK after every destroy that shreds material.
    Immediate,
    /// Rotate after every N destroys.
    Every(u32),
}

/// Everything a test may vary in a node's config.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `node_id`.
    pub node_id: String,
    /// `[unseal]`.
    pub unseal: UnsealMethod,
    /// `[keys] clone_policy`; `None` leaves it at the default.
    pub clone_policy: Option<String>,
    /// `[keys] shred_rotation`; `None` leaves it at the default.
    pub shred_rotation: Option<ShredRotation>,
    /// `allowed_uids`; `None` leaves it at the default (root and the daemon's own uid).
    pub allowed_uids: Option<Vec<u32>>,
    /// Extra environment for the daemon (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Extra top-level TOML lines (before any table), e.g. `grant_threshold = 2`.
    pub extra_top: String,
    /// Extra TOML tables appended at the end, e.g. `[tls]` and `[[controllers]]`.
    pub extra_tables: String,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            node_id: "test-node".into(),
            unseal: UnsealMethod::Keyfile,
            clone_policy: Some("same-key".into()),
            shred_rotation: None,
            allowed_uids: None,
            env: Vec::new(),
            extra_top: String::new(),
            extra_tables: String::new(),
        }
    }
}

impl NodeOptions {
    /// Options for a passphrase node.
    pub fn passphrase(passphrase: &str) -> Self {
        NodeOptions {
            unseal: UnsealMethod::Passphrase(passphrase.into()),
            ..NodeOptions::default()
        }
    }
}

/// One lockboxd in its own temporary directory, driven through lockboxctl.
pub struct Node {
    dir: tempfile::TempDir,
    opts: NodeOptions,
    child: Option<Child>,
    /// Log length when the current child was spawned: readiness looks only at newer lines.
    log_mark: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("dir", &self.dir.path())
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl Node {
    /// A keyfile node with default options: initialized, started and ready.
    pub fn keyfile() -> Node {
        Node::start(NodeOptions::default())
    }

    /// A node with the given options: config written, initialized, started and ready. A
    /// passphrase node is left sealed.
    pub fn start(opts: NodeOptions) -> Node {
        let mut node = Node::new_uninit(opts);
        node.init();
        node.spawn_ready();
        node
    }

    /// A node whose config is written but which is neither initialized nor started.
    pub fn new_uninit(opts: NodeOptions) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("lbx")
            .tempdir_in("/tmp")
            .unwrap();
        let node = Node {
            dir,
            opts,
            child: None,
            log_mark: 0,
        };
        node.write_config();
        node.write_secrets();
        node
    }

    /// Writes the passphrase and recovery files the options name.
    pub fn write_secrets(&self) {
        match &self.opts.unseal {
            UnsealMethod::Passphrase(p) => fs::write(self.passphrase_file(), p).unwrap(),
            other => {
                if let Some(r) = other.recovery() {
                    fs::write(self.recovery_file(), r).unwrap();
                }
            }
        }
    }

    /// The file holding the recovery passphrase of a peers node.
    pub fn recovery_file(&self) -> PathBuf {
        self.dir.path().join("recovery.pass")
    }

    /// The node's options (change them, then call [`Node::write_config`]).
    pub fn opts_mut(&mut self) -> &mut NodeOptions {
        &mut self.opts
    }

    /// The node's options.
    pub fn opts(&self) -> &NodeOptions {
        &self.opts
    }

    /// Writes the config file from the current options.
    pub fn write_config(&self) {
        fs::write(self.config_path(), self.config_text()).unwrap();
    }

    /// The config file the options describe.
    pub fn config_text(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        s.push_str("version = 1\n");
        s.push_str(&format!("node_id = \"{}\"\n", o.node_id));
        s.push_str(&format!("data_dir = \"{}\"\n", self.data_dir().display()));
        s.push_str(&format!("socket = \"{}\"\n", self.socket().display()));
        if let Some(uids) = &o.allowed_uids {
            let list: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
            s.push_str(&format!("allowed_uids = [{}]\n", list.join(", ")));
        }
        s.push_str(&o.extra_top);
        s.push_str("\n[unseal]\n");
        match &o.unseal {
            UnsealMethod::Keyfile => {
                s.push_str("method = \"keyfile\"\n");
                s.push_str(&format!(
                    "keyfile = \"{}\"\n",
                    self.keyfile_path().display()
                ));
            }
            UnsealMethod::Passphrase(_) => {
                s.push_str("method = \"passphrase\"\n");
                s.push_str("argon2_memory_kib = 1024\n");
                s.push_str("argon2_iterations = 1\n");
            }
            UnsealMethod::Peers {
                peers, threshold, ..
            }
            | UnsealMethod::Tpm2Peers {
                peers, threshold, ..
            } => {
                let list: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
                let method = match &o.unseal {
                    UnsealMethod::Peers { .. } => "peers",
                    _ => "tpm2+peers",
                };
                s.push_str(&format!("method = \"{method}\"\n"));
                s.push_str(&format!("peers = [{}]\n", list.join(", ")));
                s.push_str(&format!("threshold = {threshold}\n"));
            }
            UnsealMethod::Tpm2 { .. } => s.push_str("method = \"tpm2\"\n"),
        }
        if matches!(
            o.unseal,
            UnsealMethod::Peers { .. } | UnsealMethod::Tpm2 { .. } | UnsealMethod::Tpm2Peers { .. }
        ) {
            s.push_str(&format!(
                "keyfile = \"{}\"\n",
                self.keyfile_path().display()
            ));
            s.push_str("argon2_memory_kib = 1024\n");
            s.push_str("argon2_iterations = 1\n");
            if o.unseal.recovery().is_some() {
                s.push_str("recovery = \"passphrase\"\n");
            }
        }
        if let UnsealMethod::Tpm2 { tcti, .. } | UnsealMethod::Tpm2Peers { tcti, .. } = &o.unseal {
            s.push_str(&format!("\n[unseal.tpm2]\ntcti = \"{tcti}\"\n"));
        }
        if o.clone_policy.is_some() || o.shred_rotation.is_some() {
            s.push_str("\n[keys]\n");
            if let Some(p) = &o.clone_policy {
                s.push_str(&format!("clone_policy = \"{p}\"\n"));
            }
            match o.shred_rotation {
                Some(ShredRotation::Immediate) => s.push_str("shred_rotation = \"immediate\"\n"),
                Some(ShredRotation::Every(n)) => s.push_str(&format!("shred_rotation = {n}\n")),
                None => {}
            }
        }
        s.push('\n');
        s.push_str(&o.extra_tables);
        s
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The node's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `data_dir` (holds `keyring` and `db`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The sled database directory.
    pub fn db_dir(&self) -> PathBuf {
        self.data_dir().join("db")
    }

    /// The keyring file.
    pub fn keyring_path(&self) -> PathBuf {
        self.data_dir().join("keyring")
    }

    /// The Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("lockbox.sock")
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("lockboxd.toml")
    }

    /// The unseal key file (keyfile method).
    pub fn keyfile_path(&self) -> PathBuf {
        self.dir().join("unseal.key")
    }

    /// The file holding the right passphrase (passphrase method).
    pub fn passphrase_file(&self) -> PathBuf {
        self.dir().join("passphrase")
    }

    /// The daemon's log: stdout and stderr of every `init` and every run, appended.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("lockboxd.log")
    }

    /// The whole log so far.
    pub fn log_contents(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Runs `lockboxd init` and returns its result (its output is also appended to the log).
    pub fn init_output(&self) -> Output {
        let mut cmd = Command::new(&binaries().lockboxd);
        cmd.arg("init").arg("--config").arg(self.config_path());
        match &self.opts.unseal {
            UnsealMethod::Passphrase(_) => {
                cmd.arg("--passphrase-file").arg(self.passphrase_file());
            }
            other => {
                if other.recovery().is_some() {
                    cmd.arg("--recovery-passphrase-file")
                        .arg(self.recovery_file());
                }
            }
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let out = run_with_timeout(&mut cmd, CTL_TIMEOUT);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        use std::io::Write as _;
        log.write_all(&out.stdout).unwrap();
        log.write_all(&out.stderr).unwrap();
        out
    }

    /// Runs `lockboxd init` and asserts it succeeded.
    pub fn init(&self) {
        let out = self.init_output();
        assert!(
            out.status.success(),
            "lockboxd init failed:\n{}",
            describe_output(&out)
        );
    }

    /// True while the daemon child process is running (as far as we know).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Spawns `lockboxd --config F` without waiting for it to be ready.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        self.log_mark = log.metadata().unwrap().len();
        let mut cmd = Command::new(&binaries().lockboxd);
        cmd.arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    /// Waits until the daemon answers `status` (or, when the caller is not allowed to call
    /// even that, until it logs `ready`). Panics with the log if it exits or times out.
    pub fn wait_ready(&mut self) {
        if let Err(st) = self.try_wait_ready() {
            panic!(
                "lockboxd exited during start-up ({st}); log:\n{}",
                self.log_contents()
            );
        }
    }

    /// Like [`Node::wait_ready`], but returns the exit status when the daemon exits during
    /// start-up instead of panicking. Still panics on a timeout.
    pub fn try_wait_ready(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(st);
            }
            if self.socket().exists() {
                let out = self.ctl(&["status"]);
                if out.status.success() {
                    return Ok(());
                }
                let new_log = self.log_since_mark();
                if new_log.contains("ready") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "lockboxd not ready within {READY_TIMEOUT:?}; log:\n{}",
                    self.log_contents()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_since_mark(&self) -> String {
        let all = fs::read(self.log_path()).unwrap_or_default();
        let from = (self.log_mark as usize).min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    }

    /// Spawns the daemon and waits until it is ready.
    pub fn spawn_ready(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Waits until the daemon exits on its own (a failpoint, a crash), reaps it and returns its
    /// exit status. Panics with the log if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon not running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            if Instant::now() > deadline {
                panic!(
                    "lockboxd still running {timeout:?} after it should have exited; log:\n{}",
                    self.log_contents()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the daemon (no clean shutdown) and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon not running");
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "lockboxd did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log_contents()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait, and assert a clean exit (code 0).
    pub fn stop(&mut self) {
        let st = self.terminate();
        assert_eq!(
            st.code(),
            Some(0),
            "lockboxd did not exit cleanly on SIGTERM ({st}); log:\n{}",
            self.log_contents()
        );
    }

    /// Stops the daemon cleanly if it is running, then starts it again and waits until ready.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn_ready();
    }

    /// Runs `lockboxctl --socket S <args>` (human output).
    pub fn ctl_plain(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&binaries().lockboxctl);
        cmd.arg("--socket").arg(self.socket()).args(args);
        run_with_timeout(&mut cmd, CTL_TIMEOUT)
    }

    /// Runs `lockboxctl --socket S --json <args>`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&binaries().lockboxctl);
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--json")
            .args(args);
        run_with_timeout(&mut cmd, CTL_TIMEOUT)
    }

    /// Runs `lockboxctl --json <args>`, asserts success and parses stdout as JSON.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "lockboxctl {args:?} failed:\n{}",
            describe_output(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "lockboxctl {args:?} printed invalid JSON ({e}):\n{}",
                describe_output(&out)
            )
        })
    }

    /// Runs `lockboxctl --json <args>`, asserts failure (non-zero exit, `error:` on stderr) and
    /// returns stderr.
    pub fn ctl_err(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            !out.status.success(),
            "lockboxctl {args:?} should have failed:\n{}",
            describe_output(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stderr.contains("error"),
            "lockboxctl {args:?} failed without an `error:` line on stderr:\n{}",
            describe_output(&out)
        );
        stderr
    }

    /// `key create <extra>`: returns the new key id.
    pub fn create_key(&self, extra: &[&str]) -> String {
        let mut args = vec!["key", "create"];
        args.extend_from_slice(extra);
        let v = self.ctl_json(&args);
        json_str(&v, "key_id")
    }

    /// Creates `n` 32-byte keys through the daemon's gRPC API, 16 at a time: for tests that
    /// need more keys than one `lockboxctl` process per key creates in reasonable time (large
    /// transfers take other code paths). Returns their ids.
    pub fn create_keys_bulk(&self, n: usize) -> Vec<String> {
        use lockbox_proto::v1 as pb;
        use lockbox_proto::v1::lockbox_client::LockboxClient;
        const TASKS: usize = 16;
        let uri = format!("unix:{}", self.socket().display());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let channel = tonic::transport::Endpoint::try_from(uri)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut tasks = Vec::new();
            for t in 0..TASKS {
                let mut client = LockboxClient::new(channel.clone());
                let count = n / TASKS + usize::from(t < n % TASKS);
                tasks.push(tokio::spawn(async move {
                    let mut ids = Vec::with_capacity(count);
                    for _ in 0..count {
                        let r = client
                            .create_key(pb::CreateKeyRequest {
                                length: 32,
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        ids.push(r.into_inner().key_id);
                    }
                    ids
                }));
            }
            let mut all = Vec::with_capacity(n);
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        })
    }

    /// `key get ID --format hex --json`, decoded.
    pub fn key_bytes(&self, id: &str) -> Vec<u8> {
        let v = self.ctl_json(&["key", "get", id, "--format", "hex"]);
        hex::decode(json_str(&v, "key")).unwrap()
    }

    /// `key get ID --version N --format hex --json`, decoded.
    pub fn key_bytes_version(&self, id: &str, version: u64) -> Vec<u8> {
        let v = version.to_string();
        let out = self.ctl_json(&["key", "get", id, "--format", "hex", "--version", &v]);
        assert_eq!(out["version"].as_u64(), Some(version), "{out}");
        hex::decode(json_str(&out, "key")).unwrap()
    }

    /// `key get ID --format raw` (no `--json`): the exact bytes on stdout.
    pub fn key_raw(&self, id: &str) -> Vec<u8> {
        let out = self.ctl_plain(&["key", "get", id, "--format", "raw"]);
        assert!(
            out.status.success(),
            "key get --format raw failed:\n{}",
            describe_output(&out)
        );
        out.stdout
    }

    /// `key describe ID`.
    pub fn describe(&self, id: &str) -> serde_json::Value {
        self.ctl_json(&["key", "describe", id])
    }

    /// `status`.
    pub fn status(&self) -> serde_json::Value {
        self.ctl_json(&["status"])
    }

    /// Polls `status` every 200 ms until `pred` holds and returns it; panics with `what`, the
    /// last status and the log after `timeout`.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last status {s}; log:\n{}",
                self.log_contents()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `unseal --passphrase-file <the right passphrase>`; asserts the node is then unsealed.
    pub fn unseal(&self) -> serde_json::Value {
        let pf = self.passphrase_file();
        let v = self.ctl_json(&["unseal", "--passphrase-file", pf.to_str().unwrap()]);
        assert_eq!(v["sealed"], serde_json::json!(false), "{v}");
        v
    }

    /// Opens the node's database with the store API. The daemon must be stopped (the store
    /// locks its directory).
    pub fn open_store(&self) -> lockbox_store::Store {
        assert!(
            self.child.is_none(),
            "stop the daemon before opening its database"
        );
        lockbox_store::Store::open(&self.db_dir(), 1 << 24).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A string field of a JSON object; panics with the object when it is missing.
pub fn json_str(v: &serde_json::Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string field {field:?} in {v}"))
        .to_owned()
}

/// Every regular file under `dir`, recursively.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        let to = dst.join(entry.file_name());
        if ft.is_dir() {
            copy_dir(&entry.path(), &to);
        } else if ft.is_file() {
            fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// The byte strings under which a key's material could leak: the raw bytes (every 16-byte
/// window, so partial copies count too), lower- and upper-case hex, and base64 in the standard
/// and URL-safe alphabets, padded and not.
pub fn leak_needles(key: &[u8]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = key.windows(16).map(|w| w.to_vec()).collect();
    let h = hex::encode(key);
    v.push(h.clone().into_bytes());
    v.push(h.to_uppercase().into_bytes());
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for e in [STANDARD, STANDARD_NO_PAD] {
        v.push(e.encode(key).into_bytes());
    }
    for e in [URL_SAFE, URL_SAFE_NO_PAD] {
        v.push(e.encode(key).into_bytes());
    }
    v.sort();
    v.dedup();
    v
}

/// Finds which needles (each at least 8 bytes long) occur in `haystack`; returns their
/// indices. One pass over the haystack, indexed by each needle's first 8 bytes.
pub fn find_needles(haystack: &[u8], needles: &[Vec<u8>]) -> Vec<usize> {
    let mut index: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    for (i, n) in needles.iter().enumerate() {
        assert!(n.len() >= 8, "needle too short");
        index.entry(n[..8].try_into().unwrap()).or_default().push(i);
    }
    let mut found = Vec::new();
    if haystack.len() < 8 {
        return found;
    }
    for pos in 0..=haystack.len() - 8 {
        let head: [u8; 8] = haystack[pos..pos + 8].try_into().unwrap();
        if let Some(cands) = index.get(&head) {
            for &i in cands {
                if haystack[pos..].starts_with(&needles[i]) {
                    found.push(i);
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Every sealed material in the database at `db`, by material id: the shared material
/// records, and the material a key record holds inline (reached by opening the key records
/// with the keyring file `keyring` unsealed with `keyfile`; records it cannot open are left
/// out, so pass the keyring the database was written under). What a test of shredding must
/// look at, wherever lockboxd keeps material.
pub fn sealed_materials(db: &Path, keyring: &Path, keyfile: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let store = lockbox_store::Store::open(db, 1 << 24).unwrap();
    let mut out: BTreeMap<Vec<u8>, Vec<u8>> = store
        .iter_after(lockbox_store::Ns::Materials, None)
        .map(|r| r.unwrap())
        .collect();
    let keyring = lockbox_crypto::Keyring::decode(&fs::read(keyring).unwrap()).unwrap();
    let secret = lockbox_crypto::SecretBytes::new(fs::read(keyfile).unwrap());
    let unsealed = keyring
        .unseal(lockbox_crypto::UnsealSecret::Keyfile(&secret))
        .unwrap();
    for r in store.iter_after(lockbox_store::Ns::Keys, None) {
        let (id, sealed) = r.unwrap();
        let Ok(plain) = unsealed.open(lockbox_crypto::RecordKind::KeyMeta, &id, &sealed) else {
            continue;
        };
        let meta: serde_json::Value = serde_json::from_slice(plain.expose_secret()).unwrap();
        for v in meta["versions"].as_array().unwrap() {
            if let Some(inline) = v["inline"].as_str() {
                let mid = v["material_id"].as_str().unwrap().as_bytes().to_vec();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(inline)
                    .unwrap();
                assert!(
                    out.insert(mid, bytes).is_none(),
                    "a material both inline and shared"
                );
            }
        }
    }
    out
}

/// Returns a copy of `value` with one byte in its middle flipped.
pub fn flip_middle_byte(value: &[u8]) -> Vec<u8> {
    assert!(!value.is_empty(), "cannot flip a byte of an empty value");
    let mut v = value.to_vec();
    let mid = v.len() / 2;
    v[mid] ^= 0x5a;
    v
}

/// Extracts the sequence number N from the first `audit record N` in a message.
pub fn audit_record_seq(msg: &str) -> Option<u64> {
    let at = msg.find("audit record ")?;
    let digits: String = msg[at + "audit record ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The highest version number in a describe object's `versions` (after `rekey` begins, the new
/// version; `current_version` stays on the old one until the commit).
pub fn newest_version(info: &serde_json::Value) -> u64 {
    info["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions array in {info}"))
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .max()
        .unwrap_or_else(|| panic!("empty versions array in {info}"))
}

/// A process-unique suffix for file names.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A gRPC channel to a lockboxd's Unix socket, for tests that send requests lockboxctl
/// would never build (oversized, hand-made).
pub async fn unix_channel(socket: &Path) -> tonic::transport::Channel {
    tonic::transport::Endpoint::try_from(format!("unix:{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Resident memory of a process, in KiB (`VmRSS` of /proc): tests that attack a daemon's
/// memory check it is back near where it was.
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

impl Node {
    /// Whether the daemon has exited on its own (a failpoint, a crash): reaps it and returns
    /// its exit status, or `None` while it runs (or when no daemon was started). For tests
    /// that poll a daemon they did not stop themselves.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needles_are_found_anywhere_and_only_when_present() {
        let key: Vec<u8> = (0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        let needles = leak_needles(&key);
        let mut hay = b"some log line: ".to_vec();
        assert!(find_needles(&hay, &needles).is_empty());
        hay.extend_from_slice(&key[3..21]);
        assert!(!find_needles(&hay, &needles).is_empty(), "partial raw copy");
        for enc in [
            hex::encode(&key),
            hex::encode_upper(&key),
            base64::engine::general_purpose::STANDARD.encode(&key),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key),
        ] {
            let hay = format!("key={enc}\n").into_bytes();
            assert!(!find_needles(&hay, &needles).is_empty(), "{enc}");
        }
    }

    #[test]
    fn audit_record_seq_parses_the_first_mention() {
        assert_eq!(
            audit_record_seq("error: audit record 12: hash chain broken; audit record 3"),
            Some(12)
        );
        assert_eq!(audit_record_seq("error: nothing"), None);
    }

    #[test]
    fn flip_changes_exactly_one_byte() {
        let v = vec![7u8; 9];
        let f = flip_middle_byte(&v);
        assert_eq!(v.iter().zip(&f).filter(|(a, b)| a != b).count(), 1);
    }
}
