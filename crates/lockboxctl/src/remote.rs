//! Commands that do not talk to the local lockbox: the development PKI and grants (which go to
//! a controller over mTLS, or are read from a file).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::controller_client::ControllerClient;
use lockbox_tls::{ClientTls, Expect, Role, TlsFiles};
use prost::Message;

use crate::input::printable;
use crate::json::{self, GrantOutput, SignatureCheck};
use crate::out::{self, out, outln};
use crate::output::Pending;

/// `lockboxctl pki …`
#[derive(Subcommand)]
pub enum PkiCommand {
    /// Make a development CA: DIR/ca.crt and DIR/ca.key (0600). Operators may bring their own.
    Init {
        /// SPIFFE trust domain, e.g. example.org.
        #[arg(long)]
        trust_domain: String,
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate with URI SAN spiffe://DOMAIN/ROLE/NAME: DIR/NAME.crt, DIR/NAME.key (0600).
    Issue {
        /// The CA directory (from `pki init`).
        #[arg(long)]
        dir: PathBuf,
        /// lockbox | controller | orchestrator | admin
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The node or user name.
        #[arg(long)]
        name: String,
        /// DNS name to put in the certificate (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// IP address to put in the certificate (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
    },
}

/// Certificate roles.
#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// A lockboxd.
    Lockbox,
    /// A controller.
    Controller,
    /// An orchestrator (asks for grants).
    Orchestrator,
    /// A human admin.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Lockbox => Role::Lockbox,
            RoleArg::Controller => Role::Controller,
            RoleArg::Orchestrator => Role::Orchestrator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// How to reach a controller.
#[derive(Args, Clone)]
pub struct ControllerArgs {
    /// Controller URL, e.g. https://127.0.0.1:7400.
    #[arg(long, env = "LOCKBOX_CONTROLLER")]
    controller: Option<String>,
    /// Our certificate (PEM).
    #[arg(long, env = "LOCKBOX_CERT")]
    cert: Option<PathBuf>,
    /// Our private key (PEM).
    #[arg(long, visible_alias = "tls-key", env = "LOCKBOX_KEY")]
    key: Option<PathBuf>,
    /// The cluster CA (PEM).
    #[arg(long, env = "LOCKBOX_CA")]
    ca: Option<PathBuf>,
}

/// The same flags for `grant issue`, whose `--key` names key ids: there the TLS key is
/// `--tls-key` (or LOCKBOX_KEY).
#[derive(Args, Clone)]
pub struct IssueControllerArgs {
    /// Controller URL, e.g. https://127.0.0.1:7400.
    #[arg(long, env = "LOCKBOX_CONTROLLER")]
    controller: Option<String>,
    /// Our certificate (PEM).
    #[arg(long, env = "LOCKBOX_CERT")]
    cert: Option<PathBuf>,
    /// Our private key (PEM).
    #[arg(long = "tls-key", env = "LOCKBOX_KEY")]
    tls_key: Option<PathBuf>,
    /// The cluster CA (PEM).
    #[arg(long, env = "LOCKBOX_CA")]
    ca: Option<PathBuf>,
}

impl From<IssueControllerArgs> for ControllerArgs {
    fn from(a: IssueControllerArgs) -> ControllerArgs {
        ControllerArgs {
            controller: a.controller,
            cert: a.cert,
            key: a.tls_key,
            ca: a.ca,
        }
    }
}

impl ControllerArgs {
    async fn connect(&self) -> Result<ControllerClient<tonic::transport::Channel>> {
        let missing = |what: &str, env: &str| {
            anyhow!("--{what} (or {env}) is required to reach a controller")
        };
        let url = self
            .controller
            .clone()
            .ok_or_else(|| missing("controller", "LOCKBOX_CONTROLLER"))?;
        let files = TlsFiles {
            cert: self
                .cert
                .clone()
                .ok_or_else(|| missing("cert", "LOCKBOX_CERT"))?,
            key: self
                .key
                .clone()
                .ok_or_else(|| missing("key (or --tls-key)", "LOCKBOX_KEY"))?,
            ca: self.ca.clone().ok_or_else(|| missing("ca", "LOCKBOX_CA"))?,
        };
        let tls = ClientTls::load(&files).context("loading our TLS identity")?;
        let channel = tls
            .connect(&url, Expect::role(Role::Controller))
            .await
            .with_context(|| format!("cannot connect to the controller at {url}"))?;
        Ok(ControllerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }
}

/// `lockboxctl grant …`
#[derive(Subcommand)]
pub enum GrantCommand {
    /// Ask a controller for a grant; prints it (printable text) or writes it to -o FILE.
    Issue {
        /// Key id (repeatable).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// Source node.
        #[arg(long)]
        from: String,
        /// Destination node.
        #[arg(long)]
        to: String,
        /// copy | move | replicate
        #[arg(long, value_enum)]
        op: OpArg,
        /// Validity, e.g. 15m, 1h30m or 90s (a bare number is seconds); default: the
        /// policy's maximum.
        #[arg(long)]
        ttl: Option<String>,
        /// Free text for the audit logs (volume, ticket).
        #[arg(long, default_value = "")]
        reason: String,
        /// Write the grant here instead of stdout.
        #[arg(short = 'o')]
        out: Option<PathBuf>,
        #[command(flatten)]
        controller: IssueControllerArgs,
    },
    /// Ask another controller to add its signature (M-of-N).
    Cosign {
        /// The grant file.
        file: PathBuf,
        /// Write the cosigned grant here instead of stdout.
        #[arg(short = 'o')]
        out: Option<PathBuf>,
        #[command(flatten)]
        controller: ControllerArgs,
    },
    /// Ask the local lockbox whether it would accept this grant as the source (signatures,
    /// threshold, validity, node, key ids); consumes nothing.
    Verify {
        /// The grant file.
        file: PathBuf,
    },
    /// Show a grant's fields and each signature's validity against the given keys.
    Inspect {
        /// The grant file.
        file: PathBuf,
        /// A trusted controller key, KEYID=PUBKEY (repeatable).
        #[arg(long = "trust-key")]
        trust_keys: Vec<String>,
    },
}

/// Grant operations.
#[derive(Clone, Copy, ValueEnum)]
pub enum OpArg {
    /// The source keeps the key.
    Copy,
    /// The source tombstones the key after the destination's receipt.
    Move,
    /// A standing backup at the destination.
    Replicate,
}

/// Reads a grant file (printable armor), at most as long as grant text may be.
pub fn read_grant(path: &std::path::Path) -> Result<pb::SignedGrant> {
    let text = crate::input::read_text(
        path,
        lockbox_crypto::grant::MAX_GRANT_TEXT_LEN as u64,
        "grant file",
    )?;
    lockbox_crypto::grant_from_text(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn write_grant(grant: &pb::SignedGrant, out: Option<Pending>) -> Result<()> {
    let text = lockbox_crypto::grant_to_text(grant);
    match out {
        Some(p) => p.commit(text.as_bytes()),
        None => {
            out!("{text}");
            Ok(())
        }
    }
}

/// The `-o` file of a grant verb, made ready before the controller is asked.
fn prepare_out(out: Option<&PathBuf>) -> Result<Option<Pending>> {
    out.map(|p| Pending::prepare(p, 0o644)).transpose()
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unknown || s.code() == tonic::Code::Unavailable {
        // With TLS 1.3 the server rejects our certificate only after the handshake, so the
        // reason (e.g. "received fatal alert: UnknownCA") is deep in the error chain.
        anyhow!(
            "the controller refused the connection or is unreachable: {}",
            printable(&lockbox_tls::error_chain(&s))
        )
    } else {
        anyhow!("{}", printable(s.message()))
    }
}

/// Runs a `pki` command.
pub fn run_pki(cmd: PkiCommand, json_out: bool) -> Result<()> {
    match cmd {
        PkiCommand::Init { trust_domain, dir } => {
            let ca = lockbox_tls::pki::init(&trust_domain, &dir)?;
            if json_out {
                let shape = json::PkiInit {
                    ca_cert: ca.display().to_string(),
                    ca_key: dir.join("ca.key").display().to_string(),
                    trust_domain: &trust_domain,
                };
                outln!("{}", serde_json::to_string(&shape)?);
            } else {
                outln!("CA for trust domain {trust_domain}: {}", ca.display());
            }
        }
        PkiCommand::Issue {
            dir,
            role,
            name,
            dns,
            ip,
        } => {
            let issued = lockbox_tls::pki::issue(&dir, role.into(), &name, &dns, &ip)?;
            if json_out {
                let shape = json::PkiIssued {
                    cert: issued.cert.display().to_string(),
                    key: issued.key.display().to_string(),
                    spiffe_id: issued.spiffe_id.uri(),
                };
                outln!("{}", serde_json::to_string(&shape)?);
            } else {
                outln!(
                    "{} -> {} ({})",
                    issued.spiffe_id,
                    issued.cert.display(),
                    issued.key.display()
                );
            }
        }
    }
    Ok(())
}

/// Runs a `grant` command.
pub async fn run_grant(cmd: GrantCommand, json_out: bool) -> Result<()> {
    match cmd {
        GrantCommand::Issue {
            keys,
            from,
            to,
            op,
            ttl,
            reason,
            out,
            controller,
        } => {
            // 0 asks for the policy's maximum.
            let ttl_seconds = match ttl {
                Some(t) => ttl_seconds(&t)?,
                None => 0,
            };
            // What the controller would refuse, refused before it is asked (a refusal there
            // is an audit record); the output file made ready before a grant exists.
            crate::input::check_grant_keys(&keys)?;
            crate::input::check_node("--from", &from)?;
            crate::input::check_node("--to", &to)?;
            if from == to {
                bail!("--from and --to name the same node {from}");
            }
            crate::input::check_reason(&reason)?;
            let out = prepare_out(out.as_ref())?;
            let op = match op {
                OpArg::Copy => pb::GrantOp::Copy,
                OpArg::Move => pb::GrantOp::Move,
                OpArg::Replicate => pb::GrantOp::Replicate,
            };
            let mut client = ControllerArgs::from(controller).connect().await?;
            let grant = client
                .issue_grant(pb::IssueGrantRequest {
                    key_ids: keys,
                    source_node: from,
                    dest_node: to,
                    op: op as i32,
                    ttl_seconds,
                    reason,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            output_grant(&grant, out, json_out)
        }
        GrantCommand::Cosign {
            file,
            out,
            controller,
        } => {
            let grant = read_grant(&file)?;
            let out = prepare_out(out.as_ref())?;
            let mut client = controller.connect().await?;
            let grant = client
                .cosign_grant(pb::CosignGrantRequest { grant: Some(grant) })
                .await
                .map_err(status_err)?
                .into_inner();
            output_grant(&grant, out, json_out)
        }
        GrantCommand::Verify { .. } => bail!("grant verify talks to the local lockbox"),
        GrantCommand::Inspect { file, trust_keys } => {
            let grant = read_grant(&file)?;
            let mut trusted = lockbox_crypto::TrustedControllers::new();
            for t in &trust_keys {
                let (id, key) = t.split_once('=').ok_or_else(|| {
                    anyhow!(
                        "--trust-key {} must look like KEYID=PUBKEY",
                        crate::input::quote(t)
                    )
                })?;
                crate::input::check_key_id(id)?;
                let key = lockbox_crypto::decode_public_key(key)
                    .map_err(|e| anyhow!("--trust-key {id}: {e}"))?;
                // Two keys under one id: one would silently replace the other.
                if trusted.get(id).is_some() {
                    bail!("--trust-key {id} is given twice");
                }
                trusted.insert(id.to_string(), key);
            }
            let (body, sigs) = lockbox_crypto::inspect_grant(&grant, &trusted)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            if json_out {
                let checks = sigs
                    .iter()
                    .map(|(id, r)| SignatureCheck {
                        error: r.as_ref().err().map(ToString::to_string),
                        key_id: id.to_string(),
                        valid: r.is_ok(),
                    })
                    .collect();
                let shape =
                    json::GrantInspected::new(&body, lockbox_crypto::op_name(body.op), checks);
                outln!("{}", serde_json::to_string(&shape)?);
            } else {
                // Whatever the file says is shown, signed or not: escaped, so a crafted grant
                // cannot drive the terminal of whoever inspects it.
                let p = |s: &str| printable(s);
                outln!("grant:      {}", hex::encode(&body.grant_id));
                outln!("op:         {}", lockbox_crypto::op_name(body.op));
                outln!(
                    "from -> to: {} -> {}",
                    p(&body.source_node),
                    p(&body.dest_node)
                );
                outln!("keys:       {}", p(&body.key_ids.join(" ")));
                outln!(
                    "valid:      {} .. {}",
                    out::time(body.not_before_unix_ms),
                    out::time(body.expires_unix_ms)
                );
                outln!("asked by:   {}", p(&body.requested_by));
                outln!("reason:     {}", p(&body.reason));
                for (id, r) in &sigs {
                    match r {
                        Ok(()) => outln!("signature:  {}: valid", p(id)),
                        Err(e) => outln!("signature:  {}: {}", p(id), p(&e.to_string())),
                    }
                }
            }
            Ok(())
        }
    }
}

fn output_grant(grant: &pb::SignedGrant, out: Option<Pending>, json_out: bool) -> Result<()> {
    if json_out {
        let body = pb::GrantBody::decode(grant.body.as_slice()).context("decoding the grant")?;
        let output = match out {
            Some(p) => {
                let shown = p.path().display().to_string();
                write_grant(grant, Some(p))?;
                GrantOutput::File(shown)
            }
            None => GrantOutput::Text(lockbox_crypto::grant_to_text(grant)),
        };
        let shape = json::GrantIssued::new(&body, lockbox_crypto::op_name(body.op), grant, output);
        outln!("{}", serde_json::to_string(&shape)?);
        Ok(())
    } else {
        write_grant(grant, out)
    }
}

/// Parses `--ttl` into whole seconds: a duration as config files write one (`90s`, `15m`,
/// `1h30m`: humantime's syntax) or, as before, a bare number of seconds. Refuses zero, a
/// fraction of a second, and a validity whose milliseconds (a grant's expiry is in unix ms)
/// do not fit in a u64.
fn ttl_seconds(s: &str) -> Result<u64> {
    let too_long = || anyhow!("--ttl {s:?}: too long");
    // The old parser took `+600` and `+10m` (u64's own parse allows a leading `+`);
    // humantime does not.
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    let d = if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(unsigned.parse().map_err(|_| too_long())?)
    } else {
        humantime::parse_duration(unsigned).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => too_long(),
            _ => anyhow!("--ttl {s:?}: expected a duration like 15m or 1h30m"),
        })?
    };
    if d.is_zero() {
        bail!("--ttl {s:?}: must be longer than zero (leave --ttl out for the policy's maximum)");
    }
    if d.subsec_nanos() != 0 {
        bail!("--ttl {s:?}: must be a whole number of seconds");
    }
    u64::try_from(d.as_millis()).map_err(|_| too_long())?;
    Ok(d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::ttl_seconds;

    #[test]
    fn ttl_takes_humantime_durations() {
        for (s, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("2d", 172_800),
            ("1.5h", 5400),
            ("2000ms", 2),
        ] {
            assert_eq!(ttl_seconds(s).unwrap(), secs, "{s}");
        }
    }

    #[test]
    fn ttl_keeps_the_old_spellings() {
        // The old parser: a bare u64 of seconds (with u64's optional `+`), or N followed by
        // s, m or h.
        for (s, secs) in [
            ("600", 600),
            ("+600", 600),
            ("1", 1),
            ("10m", 600),
            ("+10m", 600),
            ("2s", 2),
        ] {
            assert_eq!(ttl_seconds(s).unwrap(), secs, "{s}");
        }
    }

    fn err(s: &str) -> String {
        ttl_seconds(s).unwrap_err().to_string()
    }

    #[test]
    fn ttl_refusals_name_the_flag_and_the_reason() {
        for s in [
            "abc",
            "",
            "10x",
            "m",
            "-5m",
            "-5",
            "1h-",
            "10 minutes later",
        ] {
            assert_eq!(
                err(s),
                format!("--ttl {s:?}: expected a duration like 15m or 1h30m"),
                "{s}"
            );
        }
        for s in ["0", "0s", "0m", "0h0m"] {
            assert!(err(s).starts_with(&format!("--ttl {s:?}: must be longer than zero")));
        }
        for s in ["1500ms", "90.5s", "1ns"] {
            assert_eq!(
                err(s),
                format!("--ttl {s:?}: must be a whole number of seconds")
            );
        }
    }

    #[test]
    fn ttl_refuses_what_does_not_fit() {
        // Past u64 seconds, past u64 milliseconds, and past humantime's own arithmetic.
        let max_ms_secs = u64::MAX / 1000;
        for s in [
            "18446744073709551616".to_string(),
            u64::MAX.to_string(),
            (max_ms_secs + 1).to_string(),
            format!("{}s", max_ms_secs + 1),
            "99999999999999999999h".to_string(),
            "18446744073709551615h".to_string(),
        ] {
            assert_eq!(err(&s), format!("--ttl {s:?}: too long"), "{s}");
        }
        assert_eq!(ttl_seconds(&max_ms_secs.to_string()).unwrap(), max_ms_secs);
    }
}
