//! The daemon's configuration: one TOML file, parsed in one place.
//!
//! Every field but `node_id` has a default, unknown fields are rejected (a typo must not
//! silently fall back to a default), and secrets are referenced by path, never inline.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The largest `clock_skew` accepted: beyond it, the tolerance would keep an expired grant or
/// attestation valid for longer than either is usually issued for.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(600);

/// Errors from reading the configuration. The daemon exits with code 78 (EX_CONFIG) on any.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has a wrong, missing or unknown field (the message names it).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said, which names the field.
        message: String,
    },
    /// A field parsed but its value is not acceptable.
    #[error("invalid config {path}: field `{field}`: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The offending field.
        field: &'static str,
        /// Why it is refused.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file this config was read from (`lockboxctl unseal enroll` re-reads its
    /// `[unseal]`); empty when parsed from text.
    #[serde(skip)]
    pub source: PathBuf,
    /// Format version of this file; only 1 exists.
    pub version: u32,
    /// This lockbox's node name (the `<node>` of its SPIFFE id); required.
    pub node_id: String,
    /// Where the keyring file and the database live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The Unix socket of the local API (the only place plaintext leaves the lockbox).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Unix uids allowed on the socket. `None`: root and the daemon's own uid.
    #[serde(default)]
    pub allowed_uids: Option<Vec<u32>>,
    /// Unix gids allowed on the socket (in addition to the uids).
    #[serde(default)]
    pub allowed_gids: Vec<u32>,
    /// `text` or `json` log lines on stderr.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Upper bound of the database page cache, in MiB.
    #[serde(default = "default_cache_mb")]
    pub cache_capacity_mb: u64,
    /// How the root secret is sealed.
    #[serde(default)]
    pub unseal: UnsealConfig,
    /// Key lifecycle policy.
    #[serde(default)]
    pub keys: KeysConfig,
    /// M of the N `[[controllers]]` that must sign a grant.
    #[serde(default = "default_threshold")]
    pub grant_threshold: usize,
    /// Clock skew tolerated on grant and attestation validity windows.
    #[serde(default = "default_skew")]
    pub clock_skew: String,
    /// This node's TLS identity and the cluster CA (needed to talk to controllers and peers).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The controllers whose signatures this lockbox trusts.
    #[serde(default)]
    pub controllers: Vec<ControllerRef>,
    /// Where the peer API (mTLS, lockboxes only) listens; unset: no peer API.
    #[serde(default)]
    pub peer_listen: Option<String>,
    /// `[peers]`: node name → `host:port` of its peer API, for the nodes grants name.
    #[serde(default)]
    pub peers: std::collections::HashMap<String, String>,
    /// `[hardening]`: process hardening at start-up (optional; defaults are safe).
    #[serde(default)]
    pub hardening: HardeningConfig,
    /// `[metrics]`: the Prometheus endpoint (absent: off).
    #[serde(default)]
    pub metrics: Option<lockbox_metrics::MetricsConfig>,
}

/// `[hardening]`: how lockboxd protects its memory (see `hardening.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardeningConfig {
    /// `auto` (lock memory when RLIMIT_MEMLOCK is unlimited, else warn), `required` (refuse
    /// to start unless memory is locked) or `off`.
    /// (A TOML value, not a string, so a wrong type is reported naming this field.)
    #[serde(default = "default_mlock")]
    pub mlock: toml::Value,
}

impl Default for HardeningConfig {
    fn default() -> Self {
        HardeningConfig {
            mlock: default_mlock(),
        }
    }
}

/// `[tls]`: certificate, key and CA, PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate (URI SAN `spiffe://<domain>/lockbox/<node_id>`).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster CA.
    pub ca: PathBuf,
}

/// One `[[controllers]]` entry, as printed by `lockbox-controller init`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerRef {
    /// The controller's signing key id.
    pub key_id: String,
    /// Its Ed25519 public key.
    pub public_key: String,
    /// Where to ask it for attestations.
    pub url: String,
}

/// `[unseal]`: how the root secret is protected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealConfig {
    /// `keyfile` (auto-unseal at start) or `passphrase` (starts sealed).
    #[serde(default = "default_method")]
    pub method: String,
    /// The 32-byte key file for the keyfile method (created by `init` when absent).
    #[serde(default = "default_keyfile")]
    pub keyfile: PathBuf,
    /// Argon2id memory cost for the passphrase method, fixed at `init`.
    #[serde(default = "default_argon_mem")]
    pub argon2_memory_kib: u32,
    /// Argon2id iterations for the passphrase method, fixed at `init`.
    #[serde(default = "default_argon_iter")]
    pub argon2_iterations: u32,
    /// `peers` method: the peer lockboxes (names in `[peers]`) that each hold one share.
    #[serde(default)]
    pub peers: Vec<String>,
    /// `peers` method: how many of `peers` must answer for the node to unseal.
    #[serde(default)]
    pub threshold: u32,
    /// An optional recovery slot beside the method: only `"passphrase"`.
    #[serde(default)]
    pub recovery: Option<String>,
    /// `[unseal.tpm2]`: the TPM for the `tpm2` and `tpm2+peers` methods.
    #[serde(default)]
    pub tpm2: Option<Tpm2Config>,
}

/// `[unseal.tpm2]`: which TPM seals the slot key, and to which PCRs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tpm2Config {
    /// A TCTI string, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// PCR indices the slot key is bound to (empty: none).
    #[serde(default)]
    pub pcrs: Vec<u32>,
}

impl Default for UnsealConfig {
    fn default() -> Self {
        UnsealConfig {
            method: default_method(),
            keyfile: default_keyfile(),
            argon2_memory_kib: default_argon_mem(),
            argon2_iterations: default_argon_iter(),
            peers: Vec::new(),
            threshold: 0,
            recovery: None,
            tpm2: None,
        }
    }
}

/// `[keys]`: lifecycle policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Default clone policy for keys that do not set their own.
    #[serde(default = "default_clone_policy")]
    pub clone_policy: String,
    /// `"immediate"` or a number N: rotate the KEK after every N destroys.
    #[serde(default = "default_shred_rotation")]
    pub shred_rotation: toml::Value,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            clone_policy: default_clone_policy(),
            shred_rotation: default_shred_rotation(),
        }
    }
}

fn default_threshold() -> usize {
    1
}
fn default_skew() -> String {
    "30s".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/lockbox")
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/lockbox/lockbox.sock")
}
fn default_log_format() -> String {
    "text".into()
}
fn default_cache_mb() -> u64 {
    64
}
fn default_method() -> String {
    "keyfile".into()
}
fn default_keyfile() -> PathBuf {
    PathBuf::from("/etc/lockbox/unseal.key")
}
fn default_argon_mem() -> u32 {
    65536
}
fn default_argon_iter() -> u32 {
    3
}
fn default_clone_policy() -> String {
    "same-key".into()
}
fn default_mlock() -> toml::Value {
    toml::Value::String("auto".into())
}
fn default_shred_rotation() -> toml::Value {
    toml::Value::String("immediate".into())
}

/// Which clones a key allows (DESIGN.md §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClonePolicy {
    /// No clones at all.
    Deny,
    /// Both same-key and new-key clones.
    SameKey,
    /// Only clones with new material.
    NewKey,
}

impl ClonePolicy {
    /// Parses the config/CLI spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deny" => Some(Self::Deny),
            "same-key" => Some(Self::SameKey),
            "new-key" => Some(Self::NewKey),
            _ => None,
        }
    }

    /// The config/CLI spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::SameKey => "same-key",
            Self::NewKey => "new-key",
        }
    }
}

/// Whether lockboxd locks its memory at start-up (`[hardening] mlock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlockMode {
    /// Lock when RLIMIT_MEMLOCK is unlimited; otherwise warn once and run unlocked.
    Auto,
    /// Refuse to start (exit 78) unless memory is locked.
    Required,
    /// Do not try.
    Off,
}

impl MlockMode {
    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "required" => Some(Self::Required),
            "off" => Some(Self::Off),
            _ => None,
        }
    }
}

/// When destroyed material becomes unrecoverable from the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShredRotation {
    /// Rotate the KEK after every destroy.
    Immediate,
    /// Rotate after this many destroys.
    Every(u32),
}

/// The validated form of the parts of the config that have a closed set of values.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Default clone policy.
    pub clone_policy: ClonePolicy,
    /// KEK rotation after destroys.
    pub shred_rotation: ShredRotation,
    /// How the node unseals (keyfile: by itself at start; peers: with its peers' help).
    pub method: lockbox_crypto::UnsealMethod,
    /// The `peers` method's peers (checked: in `[peers]`, distinct, not this node) and
    /// threshold; empty and 0 for other methods.
    pub unseal_peers: Vec<String>,
    /// See [`Policy::unseal_peers`].
    pub unseal_threshold: u8,
    /// Whether the config asks for a recovery passphrase slot.
    pub recovery: bool,
    /// `[unseal.tpm2]`, checked (required by the tpm2 methods).
    pub tpm2: Option<lockbox_tpm::Tpm2Config>,
    /// Controller keys trusted for grants and attestations.
    pub controllers: lockbox_crypto::TrustedControllers,
    /// Tolerated clock skew.
    pub clock_skew: std::time::Duration,
    /// M distinct trusted controller signatures required on a grant.
    pub grant_threshold: usize,
    /// Memory locking at start-up.
    pub mlock: MlockMode,
    /// Where `/metrics` is served (checked: loopback unless `allow_remote`); `None`: off.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<(Config, Policy), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let (mut cfg, policy) = Self::parse(&text, path)?;
        cfg.source = path.to_path_buf();
        Ok((cfg, policy))
    }

    /// Parses and validates config text (`path` only names the file in errors).
    pub fn parse(text: &str, path: &Path) -> Result<(Config, Policy), ConfigError> {
        let p = path.display().to_string();
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: p.clone(),
            message: e.message().to_string(),
        })?;
        let invalid = |field, message: String| ConfigError::Invalid {
            path: p.clone(),
            field,
            message,
        };
        if cfg.version != 1 {
            return Err(invalid(
                "version",
                format!("unsupported version {}, expected 1", cfg.version),
            ));
        }
        if cfg.node_id.is_empty()
            || !cfg
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "node_id",
                "must be non-empty and use only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        if cfg.socket.as_os_str().len() > 100 {
            return Err(invalid(
                "socket",
                "path longer than a Unix socket allows (100 bytes)".into(),
            ));
        }
        if !matches!(cfg.log_format.as_str(), "text" | "json") {
            return Err(invalid("log_format", "must be \"text\" or \"json\"".into()));
        }
        let metrics = match &cfg.metrics {
            Some(m) => Some(
                m.check()
                    .map_err(|e| invalid("metrics.listen", e.to_string()))?,
            ),
            None => None,
        };
        if cfg.cache_capacity_mb == 0 {
            return Err(invalid("cache_capacity_mb", "must be at least 1".into()));
        }
        let method = match cfg.unseal.method.as_str() {
            "keyfile" => lockbox_crypto::UnsealMethod::Keyfile,
            "passphrase" => lockbox_crypto::UnsealMethod::Passphrase,
            "peers" => lockbox_crypto::UnsealMethod::Peers,
            "tpm2" => lockbox_crypto::UnsealMethod::Tpm2,
            "tpm2+peers" => lockbox_crypto::UnsealMethod::Tpm2Peers,
            other => {
                return Err(invalid(
                    "unseal.method",
                    format!(
                        "unknown method {other:?}, expected keyfile, passphrase, peers, tpm2 \
                         or tpm2+peers"
                    ),
                ));
            }
        };
        let (unseal_peers, unseal_threshold) =
            check_unseal_peers(&cfg, method).map_err(|(field, message)| invalid(field, message))?;
        let recovery = match cfg.unseal.recovery.as_deref() {
            None => false,
            Some("passphrase") => true,
            Some(other) => {
                return Err(invalid(
                    "unseal.recovery",
                    format!("unknown recovery {other:?}, expected \"passphrase\""),
                ));
            }
        };
        let uses_tpm = matches!(
            method,
            lockbox_crypto::UnsealMethod::Tpm2 | lockbox_crypto::UnsealMethod::Tpm2Peers
        );
        let tpm2 = match &cfg.unseal.tpm2 {
            Some(t) => {
                let c = lockbox_tpm::Tpm2Config {
                    tcti: t.tcti.clone(),
                    pcrs: t.pcrs.clone(),
                };
                c.validate()
                    .map_err(|e| invalid("unseal.tpm2", e.to_string()))?;
                Some(c)
            }
            None if uses_tpm => {
                return Err(invalid(
                    "unseal.tpm2",
                    format!(
                        "method {:?} needs [unseal.tpm2] with a tcti",
                        cfg.unseal.method
                    ),
                ));
            }
            None => None,
        };
        if cfg.unseal.argon2_memory_kib < 64 || cfg.unseal.argon2_iterations == 0 {
            return Err(invalid(
                "unseal.argon2_memory_kib",
                "argon2 needs at least 64 KiB and 1 iteration".into(),
            ));
        }
        let clone_policy = ClonePolicy::parse(&cfg.keys.clone_policy).ok_or_else(|| {
            invalid(
                "keys.clone_policy",
                format!(
                    "unknown policy {:?}, expected deny, same-key or new-key",
                    cfg.keys.clone_policy
                ),
            )
        })?;
        let shred_rotation = match &cfg.keys.shred_rotation {
            toml::Value::String(s) if s == "immediate" => ShredRotation::Immediate,
            toml::Value::Integer(n) if *n >= 1 && *n <= u32::MAX as i64 => {
                ShredRotation::Every(*n as u32)
            }
            _ => {
                return Err(invalid(
                    "keys.shred_rotation",
                    "must be \"immediate\" or a positive integer".into(),
                ));
            }
        };
        let mut controllers = lockbox_crypto::TrustedControllers::new();
        let mut seen_keys = std::collections::BTreeMap::new();
        for (i, c) in cfg.controllers.iter().enumerate() {
            let public = lockbox_crypto::decode_public_key(&c.public_key).map_err(|e| {
                invalid(
                    "controllers.public_key",
                    format!("controllers[{i}] ({}): {e}", c.key_id),
                )
            })?;
            // One controller under two key ids would count twice towards grant_threshold.
            if let Some(other) = seen_keys.insert(public, c.key_id.clone()) {
                return Err(invalid(
                    "controllers.public_key",
                    format!(
                        "controllers[{i}] ({}) has the same public key as {other}: one \
                         controller under two key ids would count twice towards \
                         grant_threshold",
                        c.key_id
                    ),
                ));
            }
            if controllers.get(&c.key_id).is_some() {
                return Err(invalid(
                    "controllers.key_id",
                    format!("controller key id {:?} appears twice", c.key_id),
                ));
            }
            if !c.url.starts_with("https://") {
                return Err(invalid(
                    "controllers.url",
                    format!("controllers[{i}]: {:?} must start with https://", c.url),
                ));
            }
            controllers.insert(c.key_id.clone(), public);
        }
        if cfg.grant_threshold == 0 {
            return Err(invalid("grant_threshold", "must be at least 1".into()));
        }
        if !cfg.controllers.is_empty() && cfg.grant_threshold > cfg.controllers.len() {
            return Err(invalid(
                "grant_threshold",
                format!(
                    "{} exceeds the {} configured controllers",
                    cfg.grant_threshold,
                    cfg.controllers.len()
                ),
            ));
        }
        if !cfg.controllers.is_empty() && cfg.tls.is_none() {
            return Err(invalid(
                "tls",
                "[[controllers]] need a [tls] identity to reach them".into(),
            ));
        }
        let clock_skew = humantime::parse_duration(&cfg.clock_skew).map_err(|e| {
            invalid(
                "clock_skew",
                format!("{:?} is not a duration ({e})", cfg.clock_skew),
            )
        })?;
        if clock_skew > MAX_CLOCK_SKEW {
            return Err(invalid(
                "clock_skew",
                format!(
                    "{} is more than {}: a skew that large keeps expired grants and \
                     attestations valid",
                    cfg.clock_skew,
                    humantime::format_duration(MAX_CLOCK_SKEW)
                ),
            ));
        }
        if let Some(l) = &cfg.peer_listen {
            if l.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "peer_listen",
                    format!("{l:?} is not an address:port"),
                ));
            }
            if cfg.tls.is_none() || cfg.controllers.is_empty() {
                return Err(invalid(
                    "peer_listen",
                    "the peer API needs [tls] and [[controllers]] (peers check attestations)"
                        .into(),
                ));
            }
        }
        for (node, addr) in &cfg.peers {
            if addr.is_empty() || addr.contains('/') {
                return Err(invalid(
                    "peers",
                    format!("{node} = {addr:?}: expected host:port"),
                ));
            }
        }
        let mlock = cfg
            .hardening
            .mlock
            .as_str()
            .and_then(MlockMode::parse)
            .ok_or_else(|| {
                invalid(
                    "hardening.mlock",
                    format!(
                        "{} is not \"auto\", \"required\" or \"off\"",
                        cfg.hardening.mlock
                    ),
                )
            })?;
        let grant_threshold = cfg.grant_threshold;
        Ok((
            cfg,
            Policy {
                clone_policy,
                shred_rotation,
                method,
                controllers,
                clock_skew,
                grant_threshold,
                mlock,
                metrics,
                unseal_peers,
                unseal_threshold,
                recovery,
                tpm2,
            },
        ))
    }

    /// The keyring file beside the database.
    pub fn keyring_path(&self) -> PathBuf {
        self.data_dir.join("keyring")
    }

    /// The database directory.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    /// The audit watermark: the last checkpointed audit record, sealed, outside the store
    /// (`custody::txn`), so that a store that lost its tail refuses to unseal.
    pub fn watermark_path(&self) -> PathBuf {
        self.data_dir.join("audit-watermark")
    }

    /// The assist key file (peer-assisted unseal): kept apart from the keyring and not sealed
    /// under it, so that a sealed lockbox can still help its peers unseal.
    pub fn assist_key_path(&self) -> PathBuf {
        self.data_dir.join("assist.key")
    }
}

/// Checks `[unseal] peers` and `threshold` for the `peers` method (and that other methods do
/// not set them): what the node will ask at every start must be reachable and meaningful.
fn check_unseal_peers(
    cfg: &Config,
    method: lockbox_crypto::UnsealMethod,
) -> Result<(Vec<String>, u8), (&'static str, String)> {
    let u = &cfg.unseal;
    let uses_peers = matches!(
        method,
        lockbox_crypto::UnsealMethod::Peers | lockbox_crypto::UnsealMethod::Tpm2Peers
    );
    if !uses_peers {
        if !u.peers.is_empty() || u.threshold != 0 {
            return Err((
                "unseal.peers",
                format!(
                    "peers and threshold are for methods \"peers\" and \"tpm2+peers\", not \
                     {:?}",
                    u.method
                ),
            ));
        }
        return Ok((Vec::new(), 0));
    }
    let n = u.peers.len();
    if !(2..=16).contains(&n) {
        return Err((
            "unseal.peers",
            format!("the peers method needs 2 to 16 peers, {n} given"),
        ));
    }
    if u.threshold < 2 || u.threshold as usize > n {
        return Err((
            "unseal.threshold",
            format!(
                "must be at least 2 and at most the {n} peers, got {}",
                u.threshold
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &u.peers {
        if p == &cfg.node_id {
            return Err((
                "unseal.peers",
                format!("{p} is this node: its own help would be a key file beside the data"),
            ));
        }
        if !seen.insert(p) {
            return Err(("unseal.peers", format!("{p} is named twice")));
        }
        if !cfg.peers.contains_key(p) {
            return Err(("unseal.peers", format!("{p} has no address in [peers]")));
        }
    }
    if cfg.tls.is_none() || cfg.controllers.is_empty() {
        return Err((
            "unseal.method",
            "the peers method needs [tls] and [[controllers]]: peers help only a node a \
             controller vouches for"
                .into(),
        ));
    }
    Ok((u.peers.clone(), u.threshold as u8))
}

#[cfg(test)]
mod tests;
