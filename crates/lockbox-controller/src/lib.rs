//! The lockbox controller: it signs short-lived grants (under policy), attestations (binding
//! a node to its keys) and vouches (for peer-assisted unseal), and holds no volume keys.
//! Stateless apart from its signing key, config, audit log and the list of nodes its operator
//! revoked, so replicas with different keys serve side by side (M-of-N grants).

pub mod audit;
pub mod config;
mod files;
pub mod metrics;
pub mod policy;
pub mod positions;
mod recent;
mod refusals;
pub mod revoked;
pub mod service;

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use lockbox_crypto::{SecretBytes, SigningIdentity};
use lockbox_proto::v1::controller_server::ControllerServer;

pub use config::ControllerConfig;

/// Everything that can stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The configuration is unusable; the message names the field.
    #[error("invalid config {path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The signing key file is missing, unreadable or malformed.
    #[error("field `signing_key`: {path}: {message}")]
    SigningKey {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] lockbox_tls::TlsError),
    /// The audit database failed.
    #[error(transparent)]
    Store(#[from] lockbox_store::StoreError),
    /// The audit chain is broken or unreadable.
    #[error("audit log: {0}")]
    Audit(String),
    /// The revocation list (`data_dir/revoked`) is damaged or cannot be read or written.
    #[error("revocation list {path}: {message}")]
    Revoked {
        /// The file (or `data_dir`, for its lock).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A command-line request is invalid (a bad node name or reason); nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// Cryptography failed (random numbers).
    #[error(transparent)]
    Crypto(#[from] lockbox_crypto::CryptoError),
    /// Binding or serving failed.
    #[error("serving on {addr}: {message}")]
    Serve {
        /// The listen address.
        addr: String,
        /// What failed.
        message: String,
    },
}

/// Reads the 32-byte Ed25519 seed: a regular file (never a FIFO or device: `files`), of
/// exactly 32 bytes, that no other user may read (the controller's only secret: whoever reads
/// it signs grants), as `init` writes it.
pub fn load_signing_key(path: &Path) -> Result<SigningIdentity, ControllerError> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let err = |message: String| ControllerError::SigningKey {
        path: path.display().to_string(),
        message,
    };
    let files::Opened { file, meta } = files::open_regular(path).map_err(err)?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "mode {:o} lets other users read the signing key; chmod 600 it",
            mode & 0o777
        )));
    }
    if meta.len() != files::SIGNING_KEY_LEN {
        return Err(err(format!(
            "{} bytes, expected {} (the seed `init` writes)",
            meta.len(),
            files::SIGNING_KEY_LEN
        )));
    }
    // Room for one byte more than a seed, so a file that grew is seen without the buffer
    // growing (and leaving an unwiped copy behind); moved, not copied, into the secret.
    let mut buf = Vec::with_capacity(files::SIGNING_KEY_LEN as usize + 1);
    let read = file.take(files::SIGNING_KEY_LEN + 1).read_to_end(&mut buf);
    let bytes = SecretBytes::new(buf);
    read.map_err(|e| err(e.to_string()))?;
    SigningIdentity::from_secret(&bytes).map_err(|e| err(e.to_string()))
}

/// `lockbox-controller init`: makes the signing key (mode 0600, never overwritten) and returns
/// the `[[controllers]]` block to paste into lockbox configs.
pub fn init(config: &ControllerConfig) -> Result<String, ControllerError> {
    let path = &config.signing_key;
    let err = |message: String| ControllerError::SigningKey {
        path: path.display().to_string(),
        message,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let identity = SigningIdentity::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                err("already exists; refusing to overwrite a signing key".into())
            } else {
                err(e.to_string())
            }
        })?;
    f.write_all(identity.to_secret().expose_secret())
        .and_then(|_| f.sync_all())
        .map_err(|e| err(e.to_string()))?;
    Ok(controllers_block(config, &identity))
}

/// The `[[controllers]]` TOML block for this controller.
pub fn controllers_block(config: &ControllerConfig, identity: &SigningIdentity) -> String {
    format!(
        "[[controllers]]\nkey_id = \"{}\"\npublic_key = \"{}\"\nurl = \"https://{}\"\n",
        config.key_id,
        lockbox_crypto::encode_public_key(&identity.public_key()),
        config.listen
    )
}

/// The controller service's message limit.
const MAX_MESSAGE: usize = 64 << 20;

/// How often the running controller checks `data_dir/revoked` when no request does.
pub const REVOCATIONS_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The largest grant request (`IssueGrant`, or a grant to `CosignGrant`) this controller's
/// policy can allow: the most keys any rule allows, each id at its bound with its framing,
/// plus room for the other fields (bounded too) and signatures. A larger request could only be
/// refused, so it is cut off as it streams in instead of being buffered first.
pub fn grant_request_cap(policy: &[policy::Rule]) -> usize {
    let keys = policy.iter().map(|r| r.max_keys).max().unwrap_or(0);
    keys.saturating_mul(lockbox_crypto::grant::MAX_GRANT_NAME_LEN + 8)
        .saturating_add(64 << 10)
        .min(MAX_MESSAGE)
}

/// Serves until `shutdown` resolves. `ready` is called with the bound address once listening
/// (tests pass port 0 and read the real port from it).
pub async fn run(
    config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(std::net::SocketAddr) + Send,
) -> Result<(), ControllerError> {
    let signer = Arc::new(load_signing_key(&config.signing_key)?);
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ControllerError::Serve {
        addr: config.data_dir.display().to_string(),
        message: e.to_string(),
    })?;
    // Under the lock `revoke`/`unrevoke` take, so that a command never opens the audit log
    // while this process opens it (revoked.rs, "Every change is audited exactly once"); the
    // list's changes made while stopped are recorded before anything is served.
    let data_dir = config.data_dir.clone();
    let dir_lock = tokio::task::spawn_blocking(move || revoked::DirLock::acquire(&data_dir))
        .await
        .map_err(|e| ControllerError::Serve {
            addr: config.data_dir.display().to_string(),
            message: e.to_string(),
        })??;
    let audit = Arc::new(audit::AuditLog::open(&config.data_dir.join("audit"))?);
    let revocations = Arc::new(
        revoked::Revocations::open(&config.data_dir, audit.clone(), signer.clone()).await?,
    );
    drop(dir_lock);
    // Lockboxes (attestation), orchestrators and admins (grants) of this trust domain only:
    // anything else is refused in the handshake, before it can send a request.
    let tls = lockbox_tls::ReloadableServerConfig::load_admitting(
        config.tls.clone(),
        &[
            lockbox_tls::Role::Lockbox,
            lockbox_tls::Role::Orchestrator,
            lockbox_tls::Role::Admin,
        ],
    )?;
    let reloader = lockbox_tls::reload_on_sighup(vec![tls.clone()]);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ControllerError::Serve {
            addr: config.listen.to_string(),
            message: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| ControllerError::Serve {
        addr: config.listen.to_string(),
        message: e.to_string(),
    })?;
    audit
        .append(
            &signer,
            "lockbox-controller",
            "start",
            "ok",
            format!(
                "key {} public {} listen {addr}",
                config.key_id,
                hex::encode(signer.public_key())
            ),
        )
        .await?;
    let metrics = Arc::new(metrics::ControllerMetrics::new());
    let endpoint = match config.metrics {
        Some(at) => Some(
            lockbox_metrics::serve(at, metrics.registry(), None)
                .await
                .map_err(|e| ControllerError::Serve {
                    addr: at.to_string(),
                    message: format!("metrics: {e}"),
                })?,
        ),
        None => None,
    };
    let rpc_metrics = endpoint
        .as_ref()
        .map(|_| metrics.rpc().layer(lockbox_proto::CONTROLLER_METHODS));
    // Changes of the list are recorded within this period even when no request comes (each
    // request re-checks too); a damaged list is logged here and refused to requests.
    let watcher = {
        let revocations = revocations.clone();
        tokio::spawn(async move {
            let mut last_error = String::new();
            loop {
                tokio::time::sleep(REVOCATIONS_POLL).await;
                match revocations.current().await {
                    Ok(_) => last_error.clear(),
                    Err(e) => {
                        let e = e.to_string();
                        if e != last_error {
                            tracing::error!(error = %e, "the revocation list cannot be used");
                            last_error = e;
                        }
                    }
                }
            }
        })
    };
    let service = service::ControllerService::new(
        config.clone(),
        signer,
        audit.clone(),
        metrics.clone(),
        revocations,
    );
    let server = ControllerServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let grant_cap = grant_request_cap(&config.policy);
    tracing::info!(key_id = %config.key_id, %addr, "ready");
    ready(addr);
    // Every request to a controller is a small signing job.
    let served = lockbox_runtime::server(std::time::Duration::from_secs(30))
        // An attestation request is a few hundred bytes; grants name up to `max_keys` keys.
        .layer(lockbox_runtime::MethodLimitsLayer::new(&[
            ("/lockbox.v1.Controller/Attest", 16 * 1024),
            ("/lockbox.v1.Controller/IssueGrant", grant_cap),
            ("/lockbox.v1.Controller/CosignGrant", grant_cap),
            // Both requests are empty messages.
            ("/lockbox.v1.Controller/Vouch", 1024),
            ("/lockbox.v1.Controller/Revocations", 1024),
        ]))
        .layer(tower::util::option_layer(rpc_metrics))
        .add_service(server)
        .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
        .await;
    reloader.abort();
    watcher.abort();
    if let Some(endpoint) = endpoint {
        endpoint.stop().await;
    }
    audit.close()?;
    served.map_err(|e| ControllerError::Serve {
        addr: addr.to_string(),
        message: e.to_string(),
    })?;
    tracing::info!("stopped");
    Ok(())
}
