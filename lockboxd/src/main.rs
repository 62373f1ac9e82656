//! The `lockboxd` binary: arguments, config, logging, signals and exit codes.

use std::path::{Path, PathBuf};
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
    let text: zeroize::Zeroizing<Vec<u8>> = match file {
        Some(f) => read_passphrase_file(f)?,
        None => {
            let first = zeroize::Zeroizing::new(rpassword::prompt_password("new passphrase: ")?);
            let again = zeroize::Zeroizing::new(rpassword::prompt_password("repeat passphrase: ")?);
            anyhow::ensure!(*first == *again, "the passphrases differ");
            zeroize::Zeroizing::new(first.as_bytes().to_vec())
        }
    };
    // The rule lockboxctl applies to the same files: one line, so that what init sets,
    // `lockboxctl unseal --passphrase-file` (or a prompt) can give.
    let what = file.map_or_else(|| "the passphrase".to_string(), |f| f.display().to_string());
    let line = lockbox_crypto::passphrase_line(&text).map_err(|e| anyhow::anyhow!("{what} {e}"))?;
    Ok(SecretBytes::new(line.to_vec()))
}

/// Largest passphrase file `init` reads (a passphrase is a line of text).
const MAX_PASSPHRASE_FILE: u64 = 64 << 10;

/// The bytes of a passphrase file, at most [`MAX_PASSPHRASE_FILE`], in a buffer that is wiped
/// when dropped and never reallocated while read. Opened without waiting, so a FIFO nobody
/// writes to reads as empty (and is refused as such) instead of hanging `init`; a pipe that is
/// written to (`<(pass show x)`) is read as usual. `/dev/zero` or a huge file is refused by
/// its size instead of filling memory.
fn read_passphrase_file(path: &Path) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .with_context(|| format!("reading {shown}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {shown}"))?;
    anyhow::ensure!(!meta.is_dir(), "reading {shown}: is a directory");
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())
        .with_context(|| format!("reading {shown}"))?;
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(MAX_PASSPHRASE_FILE as usize + 1));
    file.take(MAX_PASSPHRASE_FILE + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {shown}"))?;
    anyhow::ensure!(
        buf.len() as u64 <= MAX_PASSPHRASE_FILE,
        "{shown} refused: more than {MAX_PASSPHRASE_FILE} bytes (a passphrase file holds one line)"
    );
    Ok(buf)
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
