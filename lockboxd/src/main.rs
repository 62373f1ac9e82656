//! The `lockboxd` binary: arguments, config, logging, signals and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lockbox_crypto::SecretBytes;
use lockboxd::config::Config;

/// mimalloc instead of glibc malloc: sled, h2 and prost allocate and free small buffers on
/// every request from several threads, and glibc's arena consolidation was the indexer's
/// largest cost in profiles (BENCHMARKS.md). Key material never relies on the allocator:
/// secrets are zeroized by their own types before they are freed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// EX_TEMPFAIL when the store failed (a journal write or sync): restarting is the recovery
// (the unit's `Restart=on-failure` does it), docs/operations.md.
use lockbox_runtime::{EXIT_CONFIG, EXIT_TEMPFAIL};

#[derive(Parser)]
#[command(name = "lockboxd", version, about = "The lockbox key-custody daemon")]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, global = true, default_value = "/etc/lockbox/lockboxd.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Initialize the data dir: root secret, KEK, node identity keys, all sealed.
    Init {
        /// Read the passphrase (passphrase method) from this file instead of a prompt.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Read the recovery passphrase (`[unseal] recovery = "passphrase"`) from this file
        /// instead of a prompt.
        #[arg(long)]
        recovery_passphrase_file: Option<PathBuf>,
    },
}

fn read_passphrase(file: Option<&PathBuf>) -> anyhow::Result<SecretBytes> {
    let mut text = match file {
        Some(f) => zeroize::Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        ),
        None => {
            let first = zeroize::Zeroizing::new(rpassword::prompt_password("new passphrase: ")?);
            let again = zeroize::Zeroizing::new(rpassword::prompt_password("repeat passphrase: ")?);
            anyhow::ensure!(*first == *again, "the passphrases differ");
            first
        }
    };
    let trimmed = text.trim_end_matches(['\n', '\r']).as_bytes().to_vec();
    zeroize::Zeroize::zeroize(&mut *text);
    Ok(SecretBytes::new(trimmed))
}

/// Enrolls the peers slot at `init`: every peer of `[unseal] peers` must be reachable and
/// attested (the error names each that is not).
async fn enroll_peers(
    config: &lockboxd::config::Config,
    policy: &lockboxd::config::Policy,
) -> anyhow::Result<(lockbox_crypto::assist::PeerSlot, SecretBytes)> {
    let tls = config
        .tls
        .as_ref()
        .context("the peers method needs [tls]")?;
    let reach = lockboxd::unseal_peers::Reach {
        tls: lockbox_tls::TlsFiles {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            ca: tls.ca.clone(),
        },
        addresses: config.peers.clone(),
        controllers: config.controllers.clone(),
        trusted: policy.controllers.clone(),
        skew_ms: policy.clock_skew.as_millis() as u64,
    };
    reach
        .enroll(
            &config.node_id,
            &policy.unseal_peers,
            policy.unseal_threshold,
        )
        .await
        .map_err(anyhow::Error::msg)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (config, policy) = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    lockbox_runtime::init_tracing(config.log_format == "json");
    // Before the runtime's threads and before any secret is read or generated. `init` is a
    // one-shot run by hand (often in a shell with a small `ulimit -l`): it locks memory when
    // it can but does not insist, even with mlock = "required".
    let mlock = match (&args.command, policy.mlock) {
        (Some(Command::Init { .. }), lockboxd::config::MlockMode::Required) => {
            lockboxd::config::MlockMode::Auto
        }
        (_, mode) => mode,
    };
    if let Err(e) = lockboxd::hardening::apply(mlock) {
        tracing::error!(error = %e, "refusing to start");
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    lockbox_tls::install_default_provider();
    let runtime = match lockbox_runtime::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        match args.command {
            Some(Command::Init {
                passphrase_file,
                recovery_passphrase_file,
            }) => {
                lockboxd::custody::refuse_initialized(&config)?;
                let mut secrets = lockboxd::custody::InitSecrets::default();
                if policy.method == lockbox_crypto::UnsealMethod::Passphrase {
                    secrets.passphrase = Some(read_passphrase(passphrase_file.as_ref())?);
                }
                if policy.recovery {
                    secrets.recovery = Some(read_passphrase(recovery_passphrase_file.as_ref())?);
                }
                use lockbox_crypto::UnsealMethod::{Peers, Tpm2, Tpm2Peers};
                if matches!(policy.method, Tpm2 | Tpm2Peers) {
                    let cfg = policy.tpm2.as_ref().context("[unseal.tpm2] is missing")?;
                    secrets.tpm2 = Some(
                        lockboxd::tpm::seal_new_key(cfg)
                            .await
                            .map_err(anyhow::Error::msg)?,
                    );
                }
                if matches!(policy.method, Peers | Tpm2Peers) {
                    secrets.peers = Some(enroll_peers(&config, &policy).await?);
                }
                lockboxd::custody::init(&config, &policy, secrets).await?;
                println!(
                    "initialized {} for node {} (unseal method {})",
                    config.data_dir.display(),
                    config.node_id,
                    policy.method.as_str()
                );
                Ok(())
            }
            None => Ok(lockboxd::run(config, policy, lockbox_runtime::shutdown_signal()).await?),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "lockboxd failed");
            eprintln!("error: {e:#}");
            let store_failed = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<lockboxd::error::CustodyError>(),
                    Some(lockboxd::error::CustodyError::StoreFailed(_))
                )
            });
            if store_failed {
                return ExitCode::from(EXIT_TEMPFAIL);
            }
            ExitCode::FAILURE
        }
    }
}
