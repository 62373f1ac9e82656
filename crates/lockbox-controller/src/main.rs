//! The `lockbox-controller` binary: arguments, config, logging, signals, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    about = "Signs lockbox grants and attestations"
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
            let log = AuditLog::open(&config.data_dir.join("audit"))?;
            let s = log.verify(signer.public_key())?;
            println!(
                "audit log ok: {} records, {} signed checkpoints",
                s.records, s.checkpoints
            );
            Ok(())
        })(),
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
            ExitCode::FAILURE
        }
    }
}
