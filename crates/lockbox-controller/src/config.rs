//! The controller's configuration: one TOML file, `version = 1`, unknown fields rejected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ControllerError;
use crate::policy::{Op, Pattern, Rule};

/// The file as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: u32,
    key_id: String,
    #[serde(default = "default_listen")]
    listen: String,
    trust_domain: String,
    #[serde(default = "default_signing_key")]
    signing_key: PathBuf,
    #[serde(default = "default_ttl")]
    attestation_ttl: String,
    #[serde(default = "default_vouch_ttl_secs")]
    vouch_ttl_secs: u64,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    allowed_nodes: Option<Vec<String>>,
    #[serde(default = "default_log_format")]
    log_format: String,
    tls: RawTls,
    #[serde(default)]
    policy: Vec<RawRule>,
    /// The other controllers whose grants this one may cosign (their `init` blocks).
    #[serde(default)]
    controllers: Vec<RawController>,
    /// `[metrics]`: the Prometheus endpoint (absent: off).
    #[serde(default)]
    metrics: Option<lockbox_metrics::MetricsConfig>,
}

/// One `[[controllers]]` block, as `lockbox-controller init` prints it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    key_id: String,
    public_key: String,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    caller: String,
    ops: Vec<String>,
    #[serde(default = "star")]
    from: Vec<String>,
    #[serde(default = "star")]
    to: Vec<String>,
    #[serde(default = "default_max_ttl")]
    max_ttl: String,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
}

fn default_listen() -> String {
    "127.0.0.1:7400".into()
}
fn default_signing_key() -> PathBuf {
    PathBuf::from("/etc/lockbox/controller.key")
}
fn default_ttl() -> String {
    "24h".into()
}
fn default_vouch_ttl_secs() -> u64 {
    DEFAULT_VOUCH_TTL_SECS
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/lockbox-controller")
}
fn default_log_format() -> String {
    "text".into()
}
fn star() -> Vec<String> {
    vec!["*".into()]
}
fn default_max_ttl() -> String {
    "15m".into()
}
fn default_max_keys() -> usize {
    100_000
}

/// Default life of a vouch (`vouch_ttl_secs`): how long a revoked node may still get help
/// from peers that have not fetched this controller's revocation list.
pub const DEFAULT_VOUCH_TTL_SECS: u64 = 300;
/// Shortest `vouch_ttl_secs`: a sealed node must have time to ask its peers.
pub const MIN_VOUCH_TTL_SECS: u64 = 10;
/// Longest `vouch_ttl_secs`: peers refuse a vouch that lives longer than an hour.
pub const MAX_VOUCH_TTL_SECS: u64 = lockbox_crypto::vouch::MAX_VOUCH_LIFETIME_MS / 1000;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This controller's signing key id (what lockbox configs name in `[[controllers]]`).
    pub key_id: String,
    /// Where the mTLS gRPC server listens.
    pub listen: SocketAddr,
    /// The SPIFFE trust domain of every caller and attested node.
    pub trust_domain: String,
    /// The Ed25519 signing key file (32-byte seed, mode 0600).
    pub signing_key: PathBuf,
    /// Validity of the attestations it signs.
    pub attestation_ttl: Duration,
    /// Validity of the vouches it signs (`vouch_ttl_secs`, 10 to 3600 s).
    pub vouch_ttl: Duration,
    /// Where the hash-chained audit log (a small database) lives.
    pub data_dir: PathBuf,
    /// When set, only these nodes may be attested.
    pub allowed_nodes: Option<Vec<String>>,
    /// `text` or `json` logs.
    pub log_format: String,
    /// TLS certificate, key and CA.
    pub tls: lockbox_tls::TlsFiles,
    /// Grant policy, in file order.
    pub policy: Vec<Rule>,
    /// The other controllers whose grants this one cosigns (M-of-N): a cosign adds a
    /// signature only to a grant that already carries a valid one of theirs.
    pub cosign_from: lockbox_crypto::TrustedControllers,
    /// Where `/metrics` is served (checked: loopback unless `allow_remote`); `None`: off.
    pub metrics: Option<SocketAddr>,
}

fn invalid(path: &Path, field: String, message: String) -> ControllerError {
    ControllerError::Config {
        path: path.display().to_string(),
        message: format!("field `{field}`: {message}"),
    }
}

fn duration(path: &Path, field: String, s: &str) -> Result<Duration, ControllerError> {
    let d = humantime::parse_duration(s).map_err(|e| {
        invalid(
            path,
            field.clone(),
            format!("{s:?} is not a duration ({e})"),
        )
    })?;
    if d.is_zero() {
        return Err(invalid(path, field, "must be longer than zero".into()));
    }
    Ok(d)
}

impl ControllerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<ControllerConfig, ControllerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ControllerError::Config {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text (`path` only names the file in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ControllerConfig, ControllerError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ControllerError::Config {
            path: path.display().to_string(),
            message: e.message().to_string(),
        })?;
        if raw.version != 1 {
            return Err(invalid(
                path,
                "version".into(),
                format!("unsupported version {}, expected 1", raw.version),
            ));
        }
        if raw.key_id.is_empty()
            || !raw
                .key_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                path,
                "key_id".into(),
                "must be non-empty letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let listen = raw.listen.parse().map_err(|_| {
            invalid(
                path,
                "listen".into(),
                format!("{:?} is not an address:port", raw.listen),
            )
        })?;
        let metrics = match &raw.metrics {
            Some(m) => Some(
                m.check()
                    .map_err(|e| invalid(path, "metrics.listen".into(), e.to_string()))?,
            ),
            None => None,
        };
        if let Err(why) = lockbox_tls::check_trust_domain(&raw.trust_domain) {
            return Err(invalid(
                path,
                "trust_domain".into(),
                format!(
                    "{:?} is not a SPIFFE trust domain ({why})",
                    raw.trust_domain.chars().take(64).collect::<String>()
                ),
            ));
        }
        let mut cosign_from = lockbox_crypto::TrustedControllers::new();
        let mut seen_keys = std::collections::BTreeMap::new();
        for (i, c) in raw.controllers.iter().enumerate() {
            let f = |name: &str| format!("controllers[{i}].{name}");
            let public = lockbox_crypto::decode_public_key(&c.public_key)
                .map_err(|e| invalid(path, f("public_key"), e.to_string()))?;
            if c.key_id == raw.key_id {
                return Err(invalid(
                    path,
                    f("key_id"),
                    format!("{:?} is this controller's own key id", c.key_id),
                ));
            }
            if cosign_from.get(&c.key_id).is_some() {
                return Err(invalid(
                    path,
                    f("key_id"),
                    format!("controller key id {:?} appears twice", c.key_id),
                ));
            }
            if let Some(other) = seen_keys.insert(public, c.key_id.clone()) {
                return Err(invalid(
                    path,
                    f("public_key"),
                    format!(
                        "the same public key as controller {other:?}: one controller under two \
                         key ids"
                    ),
                ));
            }
            if let Some(url) = &c.url
                && !url.starts_with("https://")
            {
                return Err(invalid(
                    path,
                    f("url"),
                    format!("{url:?} must start with https://"),
                ));
            }
            cosign_from.insert(c.key_id.clone(), public);
        }
        if !matches!(raw.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                path,
                "log_format".into(),
                "must be \"text\" or \"json\"".into(),
            ));
        }
        let attestation_ttl = duration(path, "attestation_ttl".into(), &raw.attestation_ttl)?;
        if !(MIN_VOUCH_TTL_SECS..=MAX_VOUCH_TTL_SECS).contains(&raw.vouch_ttl_secs) {
            return Err(invalid(
                path,
                "vouch_ttl_secs".into(),
                format!(
                    "{} is not between {MIN_VOUCH_TTL_SECS} and {MAX_VOUCH_TTL_SECS} seconds (a \
                     vouch must be short-lived: a revoked node keeps its help until its last \
                     vouch expires, and peers refuse one that lives over an hour)",
                    raw.vouch_ttl_secs
                ),
            ));
        }
        let mut policy = Vec::new();
        for (i, r) in raw.policy.iter().enumerate() {
            let f = |name: &str| format!("policy[{i}].{name}");
            let mut ops = Vec::new();
            for op in &r.ops {
                ops.push(Op::parse(op).ok_or_else(|| {
                    invalid(
                        path,
                        f("ops"),
                        format!("unknown op {op:?}, expected copy, move or replicate"),
                    )
                })?);
            }
            if r.max_keys == 0 {
                return Err(invalid(path, f("max_keys"), "must be at least 1".into()));
            }
            policy.push(Rule {
                index: i,
                caller: Pattern::new(&r.caller),
                ops,
                from: r.from.iter().map(|p| Pattern::new(p)).collect(),
                to: r.to.iter().map(|p| Pattern::new(p)).collect(),
                max_ttl: duration(path, f("max_ttl"), &r.max_ttl)?,
                max_keys: r.max_keys,
            });
        }
        Ok(ControllerConfig {
            key_id: raw.key_id,
            listen,
            trust_domain: raw.trust_domain,
            signing_key: raw.signing_key,
            attestation_ttl,
            vouch_ttl: Duration::from_secs(raw.vouch_ttl_secs),
            data_dir: raw.data_dir,
            allowed_nodes: raw.allowed_nodes,
            log_format: raw.log_format,
            tls: lockbox_tls::TlsFiles {
                cert: raw.tls.cert,
                key: raw.tls.key,
                ca: raw.tls.ca,
            },
            policy,
            cosign_from,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const BASE: &str = r#"
version = 1
key_id = "ctl-1"
trust_domain = "example.org"
[tls]
cert = "c"
key = "k"
ca = "ca"
"#;

    #[test]
    fn defaults_and_policy() {
        let text = format!(
            "{BASE}\n[[policy]]\ncaller = \"spiffe://example.org/orchestrator/cinder\"\nops = [\"copy\", \"move\"]\n"
        );
        let c = ControllerConfig::parse(&text, Path::new("t")).unwrap();
        assert_eq!(c.attestation_ttl, Duration::from_secs(86400));
        assert_eq!(c.vouch_ttl, Duration::from_secs(300));
        assert_eq!(c.policy.len(), 1);
        assert_eq!(c.policy[0].max_ttl, Duration::from_secs(900));
    }

    #[test]
    fn vouch_ttl_is_bounded() {
        let at = |v: &str| {
            ControllerConfig::parse(&format!("vouch_ttl_secs = {v}\n{BASE}"), Path::new("t"))
        };
        assert_eq!(at("10").unwrap().vouch_ttl, Duration::from_secs(10));
        assert_eq!(at("3600").unwrap().vouch_ttl, Duration::from_secs(3600));
        for bad in ["0", "9", "3601", "86400"] {
            let e = at(bad).unwrap_err().to_string();
            assert!(
                e.contains("vouch_ttl_secs") && e.contains("between 10 and 3600 seconds"),
                "{bad}: {e}"
            );
        }
        let e = at("\"5m\"").unwrap_err().to_string();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = ControllerConfig::parse(&format!("{BASE}\nbogus = 1\n"), Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let text = format!("{BASE}\n[[policy]]\ncaller = \"x\"\nops = [\"steal\"]\n");
        let e = ControllerConfig::parse(&text, Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy[0].ops"), "{e}");
        let text =
            format!("{BASE}\n[[policy]]\ncaller = \"x\"\nops = [\"copy\"]\nmax_ttl = \"soon\"\n");
        let e = ControllerConfig::parse(&text, Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy[0].max_ttl"), "{e}");
    }

    #[test]
    fn trust_domain_and_cosign_controllers_are_checked() {
        for bad in ["Example.org", "example.org/x", "", "ex ample"] {
            let text = BASE.replace("example.org", bad);
            let e = ControllerConfig::parse(&text, Path::new("t"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("trust_domain"), "{bad:?}: {e}");
        }
        let key = || {
            let id = lockbox_crypto::SigningIdentity::generate().unwrap();
            lockbox_crypto::encode_public_key(&id.public_key())
        };
        let (k1, k2) = (key(), key());
        let block = |id: &str, key: &str| {
            format!(
                "\n[[controllers]]\nkey_id = \"{id}\"\npublic_key = \"{key}\"\nurl = \"https://x:1\"\n"
            )
        };
        let ok = format!("{BASE}{}{}", block("ctl-2", &k1), block("ctl-3", &k2));
        let c = ControllerConfig::parse(&ok, Path::new("t")).unwrap();
        assert_eq!(c.cosign_from.len(), 2);
        for (text, field) in [
            (
                format!("{BASE}{}", block("ctl-1", &k1)),
                "controllers[0].key_id",
            ),
            (
                format!("{BASE}{}{}", block("ctl-2", &k1), block("ctl-3", &k1)),
                "controllers[1].public_key",
            ),
            (
                format!("{BASE}{}{}", block("ctl-2", &k1), block("ctl-2", &k2)),
                "controllers[1].key_id",
            ),
            (
                format!("{BASE}{}", block("ctl-2", "nope")),
                "controllers[0].public_key",
            ),
        ] {
            let e = ControllerConfig::parse(&text, Path::new("t"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
