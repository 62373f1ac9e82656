//! The `lockbox-controller` binary: arguments, config, logging, signals, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lockbox_controller::revoked::{self, Audited, Outcome, Request};
use lockbox_controller::{ControllerConfig, audit::AuditLog, load_signing_key};

/// mimalloc instead of glibc malloc: sled, h2 and prost allocate and free small buffers on
/// every request from several threads, and glibc's arena consolidation was the indexer's
/// largest cost in profiles (BENCHMARKS.md). Key material never relies on the allocator:
/// secrets are zeroized by their own types before they are freed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use lockbox_runtime::EXIT_CONFIG;

#[derive(Parser)]
#[command(
    name = "lockbox-controller",
    version,
    about = "Signs lockbox grants, attestations and vouches"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, global = true, default_value = "/etc/lockbox/controller.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Make the signing key and print the [[controllers]] block for lockbox configs.
    Init,
    /// Print the [[controllers]] block of an existing signing key.
    Show,
    /// Walk the audit log and check its hash chain and signed checkpoints.
    AuditVerify,
    /// Revoke a node: no more attestations or vouches for it from this controller, so its
    /// peers stop helping it unseal. Takes effect in the running controller without a restart.
    Revoke {
        /// The node name (as in its certificate: spiffe://<domain>/lockbox/<node>).
        node: String,
        /// Why, for the audit log and the signed list (one line, at most 1024 bytes).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a node's revocation.
    Unrevoke {
        /// The node name.
        node: String,
    },
    /// List the nodes this controller has revoked.
    Revocations {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `revoke` / `unrevoke`: what happened, on stdout; who records it, on stderr.
fn change(config: &ControllerConfig, request: Request) -> anyhow::Result<()> {
    let by = format!("uid:{}", rustix::process::geteuid().as_raw());
    let report = revoked::apply_cli(
        &config.data_dir,
        &config.signing_key,
        &request,
        &by,
        lockbox_runtime::now_unix_ms(),
    )?;
    let node = match &request {
        Request::Revoke { node, .. } | Request::Unrevoke { node } => node,
    };
    match (&request, &report.outcome) {
        (Request::Revoke { .. }, Outcome::Changed(serial)) => {
            println!("node {node} revoked (change {serial})");
        }
        (Request::Unrevoke { .. }, Outcome::Changed(serial)) => {
            println!("node {node} unrevoked (change {serial})");
        }
        (_, Outcome::AlreadyRevoked(r)) => {
            println!(
                "node {node} is already revoked (since {} by {}): nothing changed",
                revoked::rfc3339(r.revoked_unix_ms),
                r.by
            );
        }
        (_, Outcome::NotRevoked) => println!("node {node} is not revoked: nothing changed"),
    }
    match report.audited {
        Audited::NothingChanged => {}
        Audited::ByThisCommand => eprintln!("recorded in the audit log"),
        Audited::Pending(why) => eprintln!("audit record: {why}"),
    }
    Ok(())
}

/// `revocations [--json]`: reads the list (no lock needed: it is replaced atomically).
fn list(config: &ControllerConfig, json: bool) -> anyhow::Result<()> {
    let file = revoked::load(&config.data_dir.join(revoked::FILE_NAME))?.map(|(f, _)| f);
    let (revoked, pending) = file.as_ref().map_or((Default::default(), 0), |f| {
        (f.revoked.clone(), f.pending.len())
    });
    if json {
        let nodes: Vec<serde_json::Value> = revoked
            .iter()
            .map(|(node, r)| {
                serde_json::json!({
                    "node": node,
                    "revoked_unix_ms": r.revoked_unix_ms,
                    "revoked_at": revoked::rfc3339(r.revoked_unix_ms),
                    "by": r.by,
                    "reason": r.reason,
                })
            })
            .collect();
        let v = serde_json::json!({
            "key_id": config.key_id,
            "revoked": nodes,
            "changes_not_yet_audited": pending,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if revoked.is_empty() {
        println!("no node is revoked by this controller ({})", config.key_id);
    } else {
        let width = revoked.keys().map(String::len).max().unwrap_or(4).max(4);
        println!(
            "{:width$}  {:24}  {:12}  REASON",
            "NODE", "REVOKED AT", "BY"
        );
        for (node, r) in &revoked {
            println!(
                "{node:width$}  {:24}  {:12}  {}",
                revoked::rfc3339(r.revoked_unix_ms),
                r.by,
                r.reason
            );
        }
    }
    if pending > 0 {
        eprintln!(
            "{pending} change(s) not yet in the audit log: the controller records them when it \
             next reads the list (or starts)"
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match ControllerConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    lockbox_runtime::init_tracing(config.log_format == "json");
    lockbox_tls::install_default_provider();
    // `init` writes the key file; its refusals (e.g. one exists already) are not config errors.
    let initializing = matches!(args.command, Some(Command::Init));
    let result: anyhow::Result<()> = match args.command {
        Some(Command::Init) => lockbox_controller::init(&config)
            .map(|block| {
                eprintln!(
                    "signing key written to {}; add this to every lockbox config:",
                    config.signing_key.display()
                );
                print!("{block}");
            })
            .map_err(Into::into),
        Some(Command::Show) => load_signing_key(&config.signing_key)
            .map(|id| print!("{}", lockbox_controller::controllers_block(&config, &id)))
            .map_err(Into::into),
        Some(Command::AuditVerify) => (|| {
            let signer = load_signing_key(&config.signing_key)?;
            // A log that is not there is not one to verify: opening it would make an empty
            // one (and its data dir), and "ok: 0 records" would hide a deleted log or a
            // wrong data_dir.
            let audit_dir = config.data_dir.join("audit");
            if !audit_dir.is_dir() {
                anyhow::bail!(
                    "no audit log at {} (data_dir {}): nothing to verify; a controller makes \
                     it at its first start",
                    audit_dir.display(),
                    config.data_dir.display()
                );
            }
            // Opening the database checks (and may repair the torn tail of) its journal, so
            // never while another process writes it: not while the controller runs, nor while
            // `revoke` records a change (it holds this lock while it has the log open).
            let _lock = revoked::DirLock::acquire(&config.data_dir)?;
            if revoked::audit_log_in_use(&audit_dir)? {
                anyhow::bail!(
                    "the audit log {} is in use: stop the controller first",
                    audit_dir.display()
                );
            }
            let log = AuditLog::open(&audit_dir)?;
            let s = log.verify(signer.public_key())?;
            println!(
                "audit log ok: {} records, {} signed checkpoints",
                s.records, s.checkpoints
            );
            Ok(())
        })(),
        Some(Command::Revoke { node, reason }) => change(&config, Request::Revoke { node, reason }),
        Some(Command::Unrevoke { node }) => change(&config, Request::Unrevoke { node }),
        Some(Command::Revocations { json }) => list(&config, json),
        None => {
            let runtime = match lockbox_runtime::runtime() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime
                .block_on(lockbox_controller::run(
                    config,
                    lockbox_runtime::shutdown_signal(),
                    |_| {},
                ))
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A file the config names (the signing key) that cannot be used is a config
            // error, as a bad field is: exit 78 (EX_CONFIG), so supervisors do not restart
            // into the same failure.
            let config_error = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<lockbox_controller::ControllerError>(),
                    Some(
                        lockbox_controller::ControllerError::Config { .. }
                            | lockbox_controller::ControllerError::SigningKey { .. }
                    )
                )
            });
            if config_error && !initializing {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
