//! Cluster pieces for multi-process tests: a development PKI made at run time with
//! `lockboxctl pki`, and real `lockbox-controller` processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{binaries, describe_output, run_with_timeout};

/// The trust domain every test cluster uses.
pub const TRUST_DOMAIN: &str = "example.org";

/// A CA directory and the certificates issued from it.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

/// Paths of one issued identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
}

fn ctl(args: &[&str]) -> Output {
    run_with_timeout(
        Command::new(&binaries().lockboxctl).args(args),
        Duration::from_secs(30),
    )
}

impl Pki {
    /// `lockboxctl pki init` in a fresh temp dir.
    pub fn new(trust_domain: &str) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("lbpki")
            .tempdir_in("/tmp")
            .unwrap();
        let out = ctl(&[
            "pki",
            "init",
            "--trust-domain",
            trust_domain,
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "pki init: {}", describe_output(&out));
        Pki { dir }
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `lockboxctl pki issue` for 127.0.0.1.
    pub fn issue(&self, role: &str, name: &str) -> Identity {
        let out = ctl(&[
            "pki",
            "issue",
            "--dir",
            self.dir().to_str().unwrap(),
            "--role",
            role,
            "--name",
            name,
            "--ip",
            "127.0.0.1",
            "--dns",
            "localhost",
        ]);
        assert!(out.status.success(), "pki issue: {}", describe_output(&out));
        Identity {
            cert: self.dir().join(format!("{name}.crt")),
            key: self.dir().join(format!("{name}.key")),
            ca: self.dir().join("ca.crt"),
        }
    }
}

impl Identity {
    /// The `--controller URL --cert --tls-key --ca` flags for lockboxctl (`--tls-key` works
    /// for every grant verb; `--key` is the key id in `grant issue`).
    pub fn ctl_flags(&self, url: &str) -> Vec<String> {
        vec![
            "--controller".into(),
            url.into(),
            "--cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--ca".into(),
            self.ca.display().to_string(),
        ]
    }

    /// A `[tls]` table for a lockboxd config.
    pub fn tls_table(&self) -> String {
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            self.cert.display(),
            self.key.display(),
            self.ca.display()
        )
    }
}

/// One `lockbox-controller` process.
#[derive(Debug)]
pub struct Controller {
    dir: tempfile::TempDir,
    /// The signing key id.
    pub key_id: String,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The `[[controllers]]` block printed by `init`.
    pub block: String,
    child: Option<Child>,
    config: PathBuf,
}

impl Controller {
    /// Initializes and starts a controller with `policy` (TOML `[[policy]]` blocks) and an
    /// attestation TTL, on an ephemeral port.
    pub fn start(pki: &Pki, key_id: &str, policy: &str, attestation_ttl: &str) -> Controller {
        let id = pki.issue("controller", key_id);
        let dir = tempfile::Builder::new()
            .prefix("lbctl")
            .tempdir_in("/tmp")
            .unwrap();
        let port = free_port();
        let config = dir.path().join("controller.toml");
        let text = format!(
            "version = 1\nkey_id = \"{key_id}\"\nlisten = \"127.0.0.1:{port}\"\ntrust_domain = \"{TRUST_DOMAIN}\"\nsigning_key = \"{}\"\nattestation_ttl = \"{attestation_ttl}\"\ndata_dir = \"{}\"\n{}\n{policy}\n",
            dir.path().join("signing.key").display(),
            dir.path().join("data").display(),
            tls_table(&id),
        );
        fs::write(&config, text).unwrap();
        let out = run_with_timeout(
            Command::new(&binaries().controller)
                .arg("init")
                .arg("--config")
                .arg(&config),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "controller init: {}",
            describe_output(&out)
        );
        let block = String::from_utf8(out.stdout).unwrap();
        let mut c = Controller {
            dir,
            key_id: key_id.into(),
            url: format!("https://127.0.0.1:{port}"),
            block,
            child: None,
            config,
        };
        c.spawn();
        c
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("controller.log")
    }

    /// The controller's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process and waits for its "ready" line.
    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let before = fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        let child = Command::new(&binaries().controller)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut s = String::new();
            if let Ok(mut f) = fs::File::open(self.log_path()) {
                f.read_to_string(&mut s).unwrap();
            }
            if s.len() as u64 > before && s[before as usize..].contains("ready") {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("controller exited with {st}: {s}");
            }
            assert!(Instant::now() < deadline, "controller not ready: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// This controller's signing key, read from its key file: for tests that play a
    /// compromised controller (signing bodies it would never issue).
    pub fn signing_identity(&self) -> lockbox_crypto::SigningIdentity {
        let seed = lockbox_crypto::SecretBytes::new(
            fs::read(self.dir.path().join("signing.key")).unwrap(),
        );
        lockbox_crypto::SigningIdentity::from_secret(&seed).unwrap()
    }

    /// Makes this controller cosign grants issued by `others` (their `[[controllers]]`
    /// blocks join its config) and restarts it.
    pub fn trust(&mut self, others: &[&Controller]) {
        let blocks: Vec<&str> = others.iter().map(|o| o.block.as_str()).collect();
        self.add_config(&blocks.join("\n"));
    }

    /// Appends TOML (tables, e.g. `[metrics]`) to this controller's config and restarts it.
    pub fn add_config(&mut self, toml: &str) {
        let mut text = fs::read_to_string(&self.config).unwrap();
        text.push('\n');
        text.push_str(toml);
        fs::write(&self.config, text).unwrap();
        self.stop();
        self.spawn();
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The controller's `data_dir` (its audit log and revocation list).
    pub fn data_dir(&self) -> PathBuf {
        self.config_path().parent().unwrap().join("data")
    }

    /// Every record of the controller's audit log, as (actor, action, outcome, detail). The
    /// controller must be stopped: the log is a database one process opens at a time.
    pub fn audit_records(&self) -> Vec<(String, String, String, String)> {
        let store = lockbox_store::Store::open(&self.data_dir().join("audit"), 1 << 20).unwrap();
        let out = store
            .iter_after(lockbox_store::Ns::Audit, None)
            .map(|r| {
                let e = lockbox_crypto::AuditEntry::decode(&r.unwrap().1).unwrap();
                (
                    e.event.actor,
                    e.event.action,
                    e.event.outcome,
                    e.event.detail,
                )
            })
            .collect();
        store.flush_blocking().unwrap();
        out
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// The controller's public key as printed in its block.
    pub fn public_key(&self) -> String {
        self.block
            .lines()
            .find_map(|l| l.strip_prefix("public_key = "))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap()
    }

    /// `lockbox-controller audit-verify`.
    pub fn audit_verify(&self) -> Output {
        run_with_timeout(
            Command::new(&binaries().controller)
                .arg("audit-verify")
                .arg("--config")
                .arg(&self.config),
            Duration::from_secs(30),
        )
    }
}

fn tls_table(id: &Identity) -> String {
    id.tls_table()
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs lockboxctl with arbitrary arguments (no socket), for grant and pki verbs.
pub fn lockboxctl(args: &[String]) -> Output {
    run_with_timeout(
        Command::new(&binaries().lockboxctl).args(args),
        Duration::from_secs(30),
    )
}

/// A port on 127.0.0.1 that nothing listens on, for a daemon the test starts right after.
///
/// Not the kernel's port 0: that hands out ports from the ephemeral range (32768 and up), the
/// same range every outgoing connection of every parallel test takes its source port from, so
/// between the probe and the daemon's bind a client could take it ("address already in use",
/// seen in CI). Ports here come from 10000..20000, below the ephemeral range, each handed out
/// at most once per test process (a counter from a random start), and probed free; swtpm
/// draws from 20000..32000 ([`lockbox_tpm::swtpm`]), so the two never meet.
pub fn free_port() -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 10_000;
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        AtomicU32::new((h.finish() % u64::from(SPAN)) as u32)
    });
    for _ in 0..SPAN {
        let port = (FIRST + next.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {FIRST}..{}", FIRST + SPAN);
}

/// What a [`Cluster`] may vary beyond its node names.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra top-level TOML lines for every lockbox, e.g. `clock_skew = "0s"` or
    /// `grant_threshold = 2`.
    pub extra_top: String,
    /// More controllers, as `(key_id, attestation_ttl)`, each with the open policy and listed
    /// (trusted) in every lockbox's config after the first controller.
    pub extra_controllers: Vec<(String, String)>,
}

/// A whole test cluster: a CA, one controller whose policy lets the orchestrator `cinder`
/// ask for any grant, and lockboxes that know each other's peer addresses.
pub struct Cluster {
    /// The CA.
    pub pki: Pki,
    /// The controller.
    pub controller: Controller,
    /// The controllers of [`ClusterOptions::extra_controllers`], in that order.
    pub extra_controllers: Vec<Controller>,
    /// The orchestrator identity that asks for grants.
    pub cinder: Identity,
    /// The lockboxes, in the order named.
    pub nodes: Vec<crate::Node>,
    /// Peer API address (`127.0.0.1:PORT`) of each lockbox, by node name.
    peer_addrs: Vec<(String, String)>,
    work: tempfile::TempDir,
}

/// The policy of [`Cluster`]'s controller.
pub fn open_policy() -> String {
    "[[policy]]\ncaller = \"spiffe://example.org/orchestrator/cinder\"\nops = [\"copy\", \"move\", \"replicate\"]\nfrom = [\"*\"]\nto = [\"*\"]\nmax_ttl = \"15m\"\nmax_keys = 200000\n".into()
}

impl Cluster {
    /// Starts a controller and one lockbox per name, each with a peer API, all attested.
    pub fn start(names: &[&str], extra_top: &str) -> Cluster {
        Cluster::start_with(
            names,
            ClusterOptions {
                extra_top: extra_top.into(),
                ..ClusterOptions::default()
            },
        )
    }

    /// [`Cluster::start`] with more options: extra trusted controllers.
    pub fn start_with(names: &[&str], options: ClusterOptions) -> Cluster {
        let extra_top = options.extra_top.as_str();
        let pki = Pki::new(TRUST_DOMAIN);
        let controller = Controller::start(&pki, "ctl-1", &open_policy(), "1h");
        let mut extra_controllers: Vec<Controller> = options
            .extra_controllers
            .iter()
            .map(|(key_id, ttl)| Controller::start(&pki, key_id, &open_policy(), ttl))
            .collect();
        // The extra controllers cosign what the first one issues.
        for c in &mut extra_controllers {
            c.trust(&[&controller]);
        }
        let mut blocks = controller.block.clone();
        for c in &extra_controllers {
            blocks.push('\n');
            blocks.push_str(&c.block);
        }
        let cinder = pki.issue("orchestrator", "cinder");
        let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
        let mut peers = String::from("[peers]\n");
        for (n, p) in names.iter().zip(&ports) {
            peers.push_str(&format!("{n} = \"127.0.0.1:{p}\"\n"));
        }
        let mut nodes = Vec::new();
        for (n, p) in names.iter().zip(&ports) {
            let id = pki.issue("lockbox", n);
            let mut opts = crate::NodeOptions {
                node_id: n.to_string(),
                ..crate::NodeOptions::default()
            };
            opts.extra_top = format!("peer_listen = \"127.0.0.1:{p}\"\n{extra_top}");
            opts.extra_tables = format!("{}\n{blocks}\n{peers}", id.tls_table());
            nodes.push(crate::Node::start(opts));
        }
        for node in &nodes {
            wait_attested(node);
        }
        let work = tempfile::Builder::new()
            .prefix("lbwork")
            .tempdir_in("/tmp")
            .unwrap();
        let peer_addrs = names
            .iter()
            .zip(&ports)
            .map(|(n, p)| (n.to_string(), format!("127.0.0.1:{p}")))
            .collect();
        Cluster {
            pki,
            controller,
            extra_controllers,
            cinder,
            nodes,
            peer_addrs,
            work,
        }
    }

    /// The lockbox named `name`.
    pub fn node(&self, name: &str) -> &crate::Node {
        let i = self.index(name);
        &self.nodes[i]
    }

    /// The lockbox named `name`, mutably (to kill, reconfigure or restart it).
    pub fn node_mut(&mut self, name: &str) -> &mut crate::Node {
        let i = self.index(name);
        &mut self.nodes[i]
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.opts().node_id == name)
            .unwrap_or_else(|| panic!("no lockbox named {name} in this cluster"))
    }

    /// The `https://127.0.0.1:PORT` URL of a lockbox's peer API (its `peer_listen`).
    pub fn peer_url(&self, name: &str) -> String {
        let addr = self
            .peer_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no lockbox named {name} in this cluster"));
        format!("https://{addr}")
    }

    /// The TLS files of a lockbox identity `name` from this cluster's CA (issued now unless
    /// the CA directory already holds them, e.g. for a lockbox of the cluster), so a test can
    /// speak the peer API as that node.
    pub fn lockbox_tls(&self, name: &str) -> lockbox_tls::TlsFiles {
        lockbox_tls_files(&self.pki, name)
    }

    /// Stops a lockbox, sets (or with `None` clears) its `LOCKBOX_FAILPOINT`, starts it again
    /// and waits until it is ready and attested.
    pub fn restart_with_failpoint(&mut self, name: &str, failpoint: Option<&str>) {
        self.restart_with_env(name, "LOCKBOX_FAILPOINT", failpoint);
    }

    /// Stops a lockbox, sets (or with `None` clears) the environment variable `var` for it
    /// (a test hook such as `LOCKBOX_FAILPOINT` or `LOCKBOX_STORE_FAULT`), starts it again and
    /// waits until it is ready and attested.
    pub fn restart_with_env(&mut self, name: &str, var: &str, value: Option<&str>) {
        let node = self.node_mut(name);
        if node.is_running() {
            node.stop();
        }
        let env = &mut node.opts_mut().env;
        env.retain(|(k, _)| k != var);
        if let Some(v) = value {
            env.push((var.into(), v.into()));
        }
        node.spawn_ready();
        wait_attested(node);
    }

    /// Reads a grant file written by [`Cluster::grant`].
    pub fn read_grant(path: &Path) -> lockbox_proto::v1::SignedGrant {
        lockbox_crypto::grant_from_text(&fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The hex grant id of a grant file, as `transfer --json` and `describe` print it.
    pub fn grant_id_hex(path: &Path) -> String {
        let body = lockbox_crypto::decode_grant_body(&Cluster::read_grant(path).body).unwrap();
        hex::encode(body.grant_id)
    }

    /// Asks the controller for a grant and writes it to a file; returns the path.
    pub fn grant(&self, keys: &[&str], from: &str, to: &str, op: &str, ttl: &str) -> PathBuf {
        let path = self
            .work
            .path()
            .join(format!("{}.grant", super::unique_suffix()));
        let mut args: Vec<String> = vec!["grant".into(), "issue".into()];
        for k in keys {
            args.push("--key".into());
            args.push(k.to_string());
        }
        for a in [
            "--from", from, "--to", to, "--op", op, "--ttl", ttl, "--reason", "test", "-o",
        ] {
            args.push(a.into());
        }
        args.push(path.display().to_string());
        args.extend(self.cinder.ctl_flags(&self.controller.url));
        let out = lockboxctl(&args);
        assert!(
            out.status.success(),
            "grant issue: {}",
            describe_output(&out)
        );
        path
    }
}

/// Waits until a node's status says its attestation is valid.
pub fn wait_attested(node: &crate::Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = node.status();
        if s["attestation_state"] == "valid" {
            return;
        }
        assert!(Instant::now() < deadline, "never attested: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The TLS files of a lockbox identity `name` from `pki`, issued unless the CA directory
/// already holds them.
pub fn lockbox_tls_files(pki: &Pki, name: &str) -> lockbox_tls::TlsFiles {
    let cert = pki.dir().join(format!("{name}.crt"));
    let id = if cert.is_file() {
        Identity {
            cert,
            key: pki.dir().join(format!("{name}.key")),
            ca: pki.dir().join("ca.crt"),
        }
    } else {
        pki.issue("lockbox", name)
    };
    lockbox_tls::TlsFiles {
        cert: id.cert,
        key: id.key,
        ca: id.ca,
    }
}

impl Controller {
    /// SIGKILLs the controller (no clean shutdown) and reaps it; [`Controller::spawn`]
    /// starts it again on the same port and data.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// True while the controller process runs (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}
