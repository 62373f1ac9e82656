//! `lockboxd`: the lockbox daemon as a library, so tests and the binary share one entry point.
//!
//! [`run`] opens an initialized data dir, unseals it when the keyfile method is configured,
//! serves the local API on the Unix socket until `shutdown` resolves, and then signs a final
//! audit checkpoint and flushes.

pub mod attest;
pub mod config;
pub mod custody;
pub mod error;
pub mod grpc;

use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use lockbox_crypto::{UnsealMethod, UnsealSecret};
use lockbox_proto::v1::lockbox_server::LockboxServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::{Config, Policy};
use crate::custody::{Caller, Custody};
use crate::error::{CustodyError, Result};
use crate::grpc::{Access, LocalApi, authorize};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CustodyError + '_ {
    move |source| CustodyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The effective uid of this process, without `unsafe`: the owner of `/proc/self`.
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// Binds the Unix socket (mode 0660), replacing a stale socket file but refusing to steal the
/// socket of a daemon that still answers on it.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(CustodyError::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another lockboxd is serving on this socket",
                ),
            });
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err(path))?;
    Ok(listener)
}

/// The TLS certificate must name this node as a lockbox: a mismatch is a deployment error
/// better caught at start than by every peer.
fn check_own_identity(files: &lockbox_tls::TlsFiles, node_id: &str) -> Result<()> {
    let (id, _) = lockbox_tls::load_own_cert(files)
        .map_err(|e| CustodyError::InvalidArgument(format!("tls.cert: {e}")))?;
    if id.role != lockbox_tls::Role::Lockbox || id.name != node_id {
        return Err(CustodyError::InvalidArgument(format!(
            "tls.cert names {id}, but this is lockbox node {node_id}"
        )));
    }
    Ok(())
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    config: Config,
    policy: Policy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let custody = Arc::new(Custody::open(&config, &policy)?);
    if policy.method == UnsealMethod::Keyfile {
        let secret = custody::read_keyfile(&config.unseal.keyfile)?;
        custody
            .unseal(&Caller::system(), UnsealSecret::Keyfile(&secret))
            .await?;
    }
    let attestor = match (&config.tls, config.controllers.is_empty()) {
        (Some(tls), false) => {
            let files = lockbox_tls::TlsFiles {
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                ca: tls.ca.clone(),
            };
            check_own_identity(&files, &config.node_id)?;
            let a = attest::Attestor::new(
                custody.clone(),
                files,
                config.controllers.clone(),
                policy.controllers.clone(),
                policy.clock_skew,
                config.data_dir.clone(),
            );
            tokio::spawn(a.clone().run());
            Some(a)
        }
        _ => None,
    };
    let listener = bind_socket(&config.socket)?;
    let access = Arc::new(Access {
        uids: config
            .allowed_uids
            .clone()
            .unwrap_or_else(|| vec![0, own_uid()]),
        gids: config.allowed_gids.clone(),
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LockboxServer<LocalApi>>().await;
    let api = tonic::service::interceptor::InterceptedService::new(
        LockboxServer::new(LocalApi::new(custody.clone(), attestor.clone()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        authorize(access),
    );

    let sealed = custody.status().await.sealed;
    tracing::info!(
        node = %config.node_id,
        socket = %config.socket.display(),
        sealed,
        "ready"
    );
    // Tell systemd (Type=notify) we are serving; a no-op outside systemd.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify failed");
    }

    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(api)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let closed = custody.shutdown().await;
    let _ = std::fs::remove_file(&config.socket);
    if let Err(e) = served {
        return Err(CustodyError::Io {
            path: config.socket.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        });
    }
    closed?;
    tracing::info!("stopped");
    Ok(())
}
