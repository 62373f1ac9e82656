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

/// Longest `attestation_ttl`: how long a node whose renewals stop (taken out of
/// `allowed_nodes`, revoked) keeps a valid attestation.
pub const MAX_ATTESTATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest `max_ttl` of a policy rule: grants ask for their ttl in whole seconds.
pub const MIN_GRANT_TTL: Duration = Duration::from_secs(1);
/// Longest `max_ttl` of a policy rule: grants live minutes (DESIGN.md §6), and verifiers
/// bound nothing else about their lifetime.
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest key id (this controller's and those of `[[controllers]]`): what grant,
/// attestation and vouch bodies carry as `issuer_key_id`.
pub const MAX_KEY_ID_LEN: usize = lockbox_crypto::grant::MAX_GRANT_NAME_LEN;

pub use crate::files::MAX_CONFIG_LEN;

/// A controller key id: 1 to [`MAX_KEY_ID_LEN`] letters, digits, `-`, `_` or `.`.
pub fn check_key_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_KEY_ID_LEN
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{:?} is not a key id: 1 to {MAX_KEY_ID_LEN} letters, digits, '-', '_' or '.'",
            id.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// A policy rule's `caller`: `*`, the SPIFFE id of an orchestrator or admin of `trust_domain`,
/// or a prefix ending in `*` that some such id can start with. Anything else would silently
/// match no one (a `*` inside, another trust domain, a typo of the scheme) or a role that can
/// never ask for grants.
fn check_caller_pattern(p: &str, trust_domain: &str) -> Result<(), String> {
    let shown = || p.chars().take(64).collect::<String>();
    if p == "*" {
        return Ok(());
    }
    let base = format!("spiffe://{trust_domain}/");
    let (fixed, prefix) = match p.strip_suffix('*') {
        Some(fixed) => (fixed, true),
        None => (p, false),
    };
    if fixed.contains('*') {
        return Err(format!(
            "{:?}: '*' may only end a pattern (\"spiffe://{trust_domain}/admin/*\")",
            shown()
        ));
    }
    if fixed.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{:?} holds spaces or control characters", shown()));
    }
    let role_ok = |role: &str| matches!(role, "orchestrator" | "admin");
    if prefix {
        if base.starts_with(fixed) {
            return Ok(());
        }
        let Some(rest) = fixed.strip_prefix(&base) else {
            return Err(format!(
                "{:?} matches no SPIFFE id of trust domain {trust_domain}",
                shown()
            ));
        };
        match rest.split_once('/') {
            Some((role, _)) if !role_ok(role) => Err(format!(
                "{:?}: only orchestrator and admin identities may ask for grants",
                shown()
            )),
            _ => Ok(()),
        }
    } else {
        match lockbox_tls::SpiffeId::parse(p) {
            Ok(id) if id.trust_domain != trust_domain => Err(format!(
                "{:?} is not in trust domain {trust_domain}",
                shown()
            )),
            Ok(id) if !role_ok(id.role.as_str()) => Err(format!(
                "{:?}: only orchestrator and admin identities may ask for grants",
                shown()
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{:?} is not a SPIFFE id ({e})", shown())),
        }
    }
}

/// A node pattern of `from`/`to`: `*`, a node name, or a prefix of one followed by `*`.
fn check_node_pattern(p: &str) -> Result<(), String> {
    match p.strip_suffix('*') {
        Some("") => Ok(()),
        Some(prefix) => {
            if prefix.len() < crate::revoked::MAX_NODE_LEN
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                Ok(())
            } else {
                Err(format!(
                    "{:?} is not a node pattern: \"*\", a node name, or the start of one \
                     followed by '*' (letters, digits, '-', '_', '.'; '*' only at the end)",
                    p.chars().take(64).collect::<String>()
                ))
            }
        }
        None => crate::revoked::check_node_name(p),
    }
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
    /// Reads and validates a config file: a regular file (a FIFO or device is refused, not
    /// waited on) of at most [`MAX_CONFIG_LEN`] bytes of UTF-8.
    pub fn load(path: &Path) -> Result<ControllerConfig, ControllerError> {
        let err = |message: String| ControllerError::Config {
            path: path.display().to_string(),
            message,
        };
        let bytes = crate::files::read_bounded(path, MAX_CONFIG_LEN).map_err(err)?;
        let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
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
        check_key_id(&raw.key_id).map_err(|m| invalid(path, "key_id".into(), m))?;
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
            check_key_id(&c.key_id).map_err(|m| invalid(path, f("key_id"), m))?;
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
        if attestation_ttl > MAX_ATTESTATION_TTL {
            return Err(invalid(
                path,
                "attestation_ttl".into(),
                format!(
                    "{} is longer than {} (an attestation is how long a node cut off here \
                     keeps working: its renewals stop, the one it holds does not)",
                    humantime::format_duration(attestation_ttl),
                    humantime::format_duration(MAX_ATTESTATION_TTL)
                ),
            ));
        }
        if let Some(nodes) = &raw.allowed_nodes {
            let mut seen = std::collections::BTreeSet::new();
            for (i, n) in nodes.iter().enumerate() {
                let field = format!("allowed_nodes[{i}]");
                crate::revoked::check_node_name(n).map_err(|m| {
                    invalid(
                        path,
                        field.clone(),
                        format!("{m} (allowed_nodes names nodes exactly, without patterns)"),
                    )
                })?;
                if !seen.insert(n.as_str()) {
                    return Err(invalid(path, field, format!("node {n} is listed twice")));
                }
            }
        }
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
                let op = Op::parse(op).ok_or_else(|| {
                    invalid(
                        path,
                        f("ops"),
                        format!("unknown op {op:?}, expected copy, move or replicate"),
                    )
                })?;
                if ops.contains(&op) {
                    return Err(invalid(
                        path,
                        f("ops"),
                        format!("{} is listed twice", op.as_str()),
                    ));
                }
                ops.push(op);
            }
            if ops.is_empty() {
                return Err(invalid(
                    path,
                    f("ops"),
                    "is empty: a rule allows at least one of copy, move, replicate".into(),
                ));
            }
            for (name, patterns) in [("from", &r.from), ("to", &r.to)] {
                if patterns.is_empty() {
                    return Err(invalid(
                        path,
                        f(name),
                        "is empty: a rule names at least one node pattern (\"*\" for any)".into(),
                    ));
                }
                for (j, p) in patterns.iter().enumerate() {
                    check_node_pattern(p)
                        .map_err(|m| invalid(path, format!("policy[{i}].{name}[{j}]"), m))?;
                }
            }
            if r.max_keys == 0 {
                return Err(invalid(path, f("max_keys"), "must be at least 1".into()));
            }
            let max_ttl = duration(path, f("max_ttl"), &r.max_ttl)?;
            if !(MIN_GRANT_TTL..=MAX_GRANT_TTL).contains(&max_ttl) {
                return Err(invalid(
                    path,
                    f("max_ttl"),
                    format!(
                        "{} is not between {} and {} (grants are short-lived: their ttl is \
                         asked in whole seconds, and lockboxes keep a used grant until it \
                         expires)",
                        humantime::format_duration(max_ttl),
                        humantime::format_duration(MIN_GRANT_TTL),
                        humantime::format_duration(MAX_GRANT_TTL)
                    ),
                ));
            }
            check_caller_pattern(&r.caller, &raw.trust_domain)
                .map_err(|m| invalid(path, f("caller"), m))?;
            policy.push(Rule {
                index: i,
                caller: Pattern::new(&r.caller),
                ops,
                from: r.from.iter().map(|p| Pattern::new(p)).collect(),
                to: r.to.iter().map(|p| Pattern::new(p)).collect(),
                max_ttl,
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

    /// Review findings: what the parser used to take and must refuse, each naming its field.
    /// An unbounded ttl overflowed `now + ttl` (a panic, or a wrapped expiry) and let an
    /// attestation outlive every cut-off; a `*` inside a pattern, a caller of another trust
    /// domain, an empty `ops`/`from`/`to` or a pattern in `allowed_nodes` silently matched
    /// nothing; a key id over 128 bytes made every grant unsignable.
    #[test]
    fn review_bounds_and_patterns_are_refused_by_field() {
        let rule = |extra: &str| {
            format!(
                "{BASE}\n[[policy]]\ncaller = \"spiffe://example.org/orchestrator/cinder\"\nops = [\"copy\"]\n{extra}\n"
            )
        };
        let long_id = "k".repeat(129);
        let cases: Vec<(String, &str)> = vec![
            (
                format!("attestation_ttl = \"1000years\"\n{BASE}"),
                "attestation_ttl",
            ),
            (
                format!("attestation_ttl = \"8days\"\n{BASE}"),
                "attestation_ttl",
            ),
            (rule("max_ttl = \"600000000years\""), "policy[0].max_ttl"),
            (rule("max_ttl = \"25h\""), "policy[0].max_ttl"),
            (rule("max_ttl = \"500ms\""), "policy[0].max_ttl"),
            (BASE.replace("ctl-1", &long_id), "key_id"),
            (
                format!("allowed_nodes = [\"host-*\"]\n{BASE}"),
                "allowed_nodes[0]",
            ),
            (
                format!("allowed_nodes = [\"host-a\", \"host-a\"]\n{BASE}"),
                "allowed_nodes[1]",
            ),
            (
                format!("allowed_nodes = [\"\"]\n{BASE}"),
                "allowed_nodes[0]",
            ),
            (
                format!("allowed_nodes = [\"h\u{0430}st\"]\n{BASE}"),
                "allowed_nodes[0]",
            ),
            (rule("from = [\"host-*-a\"]"), "policy[0].from[0]"),
            (rule("to = [\"*\", \"../etc\"]"), "policy[0].to[1]"),
            (rule("from = []"), "policy[0].from"),
            (rule("to = []"), "policy[0].to"),
            (
                BASE.to_string()
                    + "\n[[policy]]\ncaller = \"spiffe://example.org/admin/*\"\nops = []\n",
                "policy[0].ops",
            ),
            (
                BASE.to_string()
                    + "\n[[policy]]\ncaller = \"spiffe://example.org/admin/*\"\nops = [\"copy\", \"copy\"]\n",
                "policy[0].ops",
            ),
        ];
        let callers = [
            "cinder",
            "spiffe://other.org/orchestrator/cinder",
            "spiffe://example.org/*/cinder",
            "spiffe://other.org/*",
            "spiffe://example.org/lockbox/host-a",
            "spiffe://example.org/lockbox/*",
            "",
        ];
        let mut cases = cases;
        for c in callers {
            cases.push((
                format!("{BASE}\n[[policy]]\ncaller = \"{c}\"\nops = [\"copy\"]\n"),
                "policy[0].caller",
            ));
        }
        for bad in ["", "bad id", &long_id] {
            let key = lockbox_crypto::encode_public_key(
                &lockbox_crypto::SigningIdentity::generate()
                    .unwrap()
                    .public_key(),
            );
            cases.push((
                format!("{BASE}\n[[controllers]]\nkey_id = \"{bad}\"\npublic_key = \"{key}\"\n"),
                "controllers[0].key_id",
            ));
        }
        for (text, field) in cases {
            let e = match ControllerConfig::parse(&text, Path::new("t")) {
                Ok(_) => panic!("accepted ({field}): {text}"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
        // What stays accepted.
        for caller in [
            "*",
            "spiffe://example.org/*",
            "spiffe://example.org/admin/*",
            "spiffe://example.org/orchestrator/cin*",
            "spiffe://example.org/admin/alice",
        ] {
            let text = format!(
                "allowed_nodes = [\"host-a\", \"host-b\"]\nattestation_ttl = \"7days\"\n{BASE}\n[[policy]]\ncaller = \"{caller}\"\nops = [\"copy\", \"move\"]\nfrom = [\"host-*\", \"db-1\"]\nto = [\"*\"]\nmax_ttl = \"24h\"\n"
            );
            ControllerConfig::parse(&text, Path::new("t"))
                .unwrap_or_else(|e| panic!("{caller}: {e}"));
        }
    }

    #[test]
    fn the_file_is_read_bounded_and_only_if_regular() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_CONFIG_LEN + 1).unwrap();
        let e = ControllerConfig::load(&big).unwrap_err().to_string();
        assert!(e.contains("more than the 1048576 allowed"), "{e}");
        let fifo = dir.path().join("fifo.toml");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let e = ControllerConfig::load(&fifo).unwrap_err().to_string();
        assert!(e.contains("a FIFO"), "{e}");
    }
}
