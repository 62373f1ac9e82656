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
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    allowed_nodes: Option<Vec<String>>,
    #[serde(default = "default_log_format")]
    log_format: String,
    tls: RawTls,
    #[serde(default)]
    policy: Vec<RawRule>,
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
        if raw.trust_domain.is_empty() || raw.trust_domain.contains('/') {
            return Err(invalid(
                path,
                "trust_domain".into(),
                "must be a non-empty domain name".into(),
            ));
        }
        if !matches!(raw.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                path,
                "log_format".into(),
                "must be \"text\" or \"json\"".into(),
            ));
        }
        let attestation_ttl = duration(path, "attestation_ttl".into(), &raw.attestation_ttl)?;
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
            data_dir: raw.data_dir,
            allowed_nodes: raw.allowed_nodes,
            log_format: raw.log_format,
            tls: lockbox_tls::TlsFiles {
                cert: raw.tls.cert,
                key: raw.tls.key,
                ca: raw.tls.ca,
            },
            policy,
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
        assert_eq!(c.policy.len(), 1);
        assert_eq!(c.policy[0].max_ttl, Duration::from_secs(900));
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
}
