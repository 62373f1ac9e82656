//! `lockboxd`: the lockbox daemon as a library, so tests and the binary share one entry point.
//!
//! [`run`] opens an initialized data dir, unseals it when the keyfile method is configured,
//! serves the local API on the Unix socket until `shutdown` resolves, and then signs a final
//! audit checkpoint and flushes.

mod accept;
pub mod assist;
pub mod attest;
pub mod config;
pub mod custody;
pub mod error;
pub mod failpoint;
pub mod grpc;
pub mod hardening;
mod json_bytes;
pub mod metrics;
mod par;
pub mod peer;
mod refusals;
pub mod settle;
pub mod tpm;
pub mod transfer;
pub mod unseal_peers;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use lockbox_crypto::{UnsealMethod, UnsealSecret};
use lockbox_proto::v1::lockbox_server::LockboxServer;
use tokio::net::UnixListener;

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

/// The effective uid of this process. (Not the owner of `/proc/self`: once the process is
/// made non-dumpable, its `/proc` entries belong to root.)
fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
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
fn check_own_identity(
    files: &lockbox_tls::TlsFiles,
    node_id: &str,
) -> Result<lockbox_tls::SpiffeId> {
    let (id, _) = lockbox_tls::load_own_cert(files)
        .map_err(|e| CustodyError::InvalidArgument(format!("tls.cert: {e}")))?;
    if id.role != lockbox_tls::Role::Lockbox || id.name != node_id {
        return Err(CustodyError::InvalidArgument(format!(
            "tls.cert names {id}, but this is lockbox node {node_id}"
        )));
    }
    Ok(id)
}

type PeerServer = (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
);

/// Serves the peer API on mTLS TCP (lockbox identities only), with certificates reloaded on
/// SIGHUP.
async fn start_peer_api(
    listen: &str,
    files: lockbox_tls::TlsFiles,
    custody: Arc<Custody>,
    attestor: Arc<attest::Attestor>,
    trust_domain: String,
    rpc_metrics: Option<lockbox_metrics::RpcMetrics>,
    assist: Arc<assist::AssistDesk>,
) -> Result<PeerServer> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        CustodyError::InvalidArgument(format!("peer_listen {listen:?} is not an address:port"))
    })?;
    // The peer API serves lockboxes only: any other certificate of the CA is refused in the
    // handshake, before it can send a byte of a request.
    let tls =
        lockbox_tls::ReloadableServerConfig::load_admitting(files, &[lockbox_tls::Role::Lockbox])
            .map_err(|e| CustodyError::InvalidArgument(format!("tls: {e}")))?;
    let _reloader = lockbox_tls::reload_on_sighup(vec![tls.clone()]);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(io_err(Path::new(listen)))?;
    let store = custody.store().clone();
    let service = lockbox_proto::v1::peer_server::PeerServer::new(peer::PeerApi::new(
        custody,
        attestor,
        trust_domain,
        assist,
    ))
    .max_decoding_message_size(peer::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(64 << 20);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tracing::info!(%addr, "peer API listening");
    let handle = tokio::spawn(async move {
        let served = lockbox_runtime::server(PEER_REQUEST_TIMEOUT)
            .layer(lockbox_runtime::MethodLimitsLayer::new(PEER_METHOD_LIMITS))
            .layer(tower::util::option_layer(
                rpc_metrics.map(|m| m.layer(lockbox_proto::PEER_METHODS)),
            ))
            .layer(settle::SettleLayer::new(store))
            .add_service(service)
            .serve_with_incoming_shutdown(tls.incoming(listener), async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "peer API stopped");
        }
    });
    Ok((handle, stop_tx))
}

/// Request size caps of the peer API's methods: `Identity` takes an empty message; `Deliver`
/// is a stream of batches, each bounded by the service's message limit and the delivery by
/// `peer::MAX_DELIVERY_BYTES`.
const PEER_METHOD_LIMITS: &[(&str, usize)] = &[
    ("/lockbox.v1.Peer/Identity", 4096),
    ("/lockbox.v1.Peer/AssistKey", 4096),
    // A vouch (a short body and at most 32 signatures), names, the point.
    ("/lockbox.v1.Peer/Assist", 64 << 10),
];
/// Request size caps of the Unix socket's methods (bytes, enforced as the body streams in):
/// every method but the three that carry a grant or a backup file takes labels, ids and
/// small fields (64 labels of 1 KiB at most), far below 1 MiB; those three keep the service's
/// limit (`LOCAL_MAX_MESSAGE`), sized for a backup file.
const LOCAL_METHOD_LIMITS: &[(&str, usize)] = &[
    ("/lockbox.v1.Lockbox/CreateKey", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/GetKey", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/DescribeKey", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/ListKeys", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/SnapshotKey", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/CloneKey", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/RekeyKey", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/DestroyKey", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/Status", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/Seal", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/Unseal", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/EnrollUnseal", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/RotateKek", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/AuditTail", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/AuditVerify", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/PromoteKey", LOCAL_SMALL),
    ("/lockbox.v1.Lockbox/ExportBackup", LOCAL_SMALL),
    ("/grpc.health.v1.Health/Check", LOCAL_SMALL),
    ("/grpc.health.v1.Health/Watch", LOCAL_SMALL),
];
/// The cap of the socket's small methods (see `LOCAL_METHOD_LIMITS`).
const LOCAL_SMALL: usize = 1 << 20;
/// The longest a peer request may take, a whole delivery included: an evacuation of a large
/// lockbox streams for minutes; a source that stalls is cut off after this.
const PEER_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// The largest message on the Unix socket: a backup file of the largest size, with room for
/// the identity and framing.
const LOCAL_MAX_MESSAGE: usize = lockbox_crypto::MAX_BACKUP_LEN + (1 << 20);
/// The longest a request on the Unix socket may take (a backup of a large lockbox included).
const LOCAL_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The methods of the Unix socket: the Lockbox service and the health check.
static LOCAL_METHODS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    let mut methods = lockbox_proto::LOCKBOX_METHODS.to_vec();
    methods.extend([
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ]);
    methods
});

/// Serves `/metrics` at `at`. Gauges read from live state (the attestation's expiry) are set
/// just before each scrape; the rest are kept up to date where they change.
async fn start_metrics(
    at: std::net::SocketAddr,
    custody: &Arc<Custody>,
    attestor: Option<Arc<attest::Attestor>>,
) -> Result<lockbox_metrics::Endpoint> {
    let metrics = custody.metrics().clone();
    let refresh = move || {
        let expires = attestor
            .as_ref()
            .map(|a| a.status().expires_unix_ms)
            .filter(|ms| *ms > 0);
        metrics.set_attestation_expiry(expires);
    };
    let endpoint =
        lockbox_metrics::serve(at, custody.metrics().registry(), Some(Arc::new(refresh)))
            .await
            .map_err(io_err(Path::new("metrics.listen")))?;
    tracing::info!(addr = %endpoint.local_addr(), "metrics served at /metrics");
    Ok(endpoint)
}

/// How often the known revocation lists are refreshed from the controllers (besides on
/// every assist request): peers learn a revocation within this even when nobody asks.
const REVOCATIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How often expired grant records are swept (also once at start-up).
const GRANT_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Sweeps expired grant records now and then, for the life of the daemon. A sealed lockbox
/// skips a sweep (it cannot audit one); the next one catches up.
async fn prune_grants(custody: Arc<Custody>) {
    let mut tick = tokio::time::interval(GRANT_PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match custody.prune_expired_grants(&Caller::system()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "deleted expired grant records"),
            Err(CustodyError::Sealed) => {}
            Err(e) => tracing::warn!(error = %e, "cannot sweep expired grant records"),
        }
    }
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    config: Config,
    policy: Policy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let custody = Arc::new(Custody::open(&config, &policy)?);
    custody
        .metrics()
        .set_memory_locked(hardening::current().memory_locked);
    // Per-request metrics only with the endpoint on: nobody reads them otherwise.
    let rpc_metrics = policy.metrics.map(|_| custody.metrics().rpc().clone());
    if custody.unseal_method() == UnsealMethod::Keyfile {
        let secret = custody::read_keyfile(&config.unseal.keyfile)?;
        custody
            .unseal(&Caller::system(), UnsealSecret::Keyfile(&secret))
            .await?;
    }
    let mut attestor = None;
    let mut transfers = None;
    let mut peer_server = None;
    let mut revocations = None;
    let mut reach = None;
    if let (Some(tls), false) = (&config.tls, config.controllers.is_empty()) {
        let files = lockbox_tls::TlsFiles {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            ca: tls.ca.clone(),
        };
        let own = check_own_identity(&files, &config.node_id)?;
        let a = attest::Attestor::new(
            custody.clone(),
            files.clone(),
            config.controllers.clone(),
            policy.controllers.clone(),
            policy.clock_skew,
            config.data_dir.clone(),
        );
        tokio::spawn(a.clone().run());
        let r = assist::Revocations::new(
            &config.data_dir,
            files.clone(),
            config.controllers.clone(),
            policy.controllers.clone(),
            own.trust_domain.clone(),
        );
        tokio::spawn(r.clone().run(REVOCATIONS_EVERY));
        reach = Some(unseal_peers::Reach {
            tls: files.clone(),
            addresses: config.peers.clone(),
            controllers: config.controllers.clone(),
            trusted: policy.controllers.clone(),
            skew_ms: custody.clock_skew_ms(),
        });
        transfers = Some(Arc::new(transfer::Transfers::new(
            custody.clone(),
            a.clone(),
            files.clone(),
            config.peers.clone(),
        )));
        if let Some(listen) = &config.peer_listen {
            peer_server = Some(
                start_peer_api(
                    listen,
                    files,
                    custody.clone(),
                    a.clone(),
                    own.trust_domain,
                    rpc_metrics.clone(),
                    Arc::new(assist::AssistDesk::new(custody.clone(), r.clone())),
                )
                .await?,
            );
        }
        attestor = Some(a);
        revocations = Some(r);
        tokio::spawn(prune_grants(custody.clone()));
    }
    let unsealer = unseal_peers::PeerUnsealer::new(
        custody.clone(),
        reach,
        policy.tpm2.as_ref().map(|t| t.tcti.clone()),
    );
    if matches!(
        custody.unseal_method(),
        UnsealMethod::Peers | UnsealMethod::Tpm2 | UnsealMethod::Tpm2Peers
    ) {
        tokio::spawn(unsealer.clone().run());
    }
    let unsealer = Some(unsealer);
    let endpoint = match policy.metrics {
        Some(at) => Some(start_metrics(at, &custody, attestor.clone()).await?),
        None => None,
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
        LockboxServer::new(
            LocalApi::new(custody.clone(), attestor.clone(), transfers.clone()).with_unseal(
                unsealer.clone(),
                revocations.clone(),
                config.source.clone(),
            ),
        )
        // A restore carries a whole backup file (at most MAX_BACKUP_LEN) and its identity.
        .max_decoding_message_size(LOCAL_MAX_MESSAGE)
        .max_encoding_message_size(LOCAL_MAX_MESSAGE),
        authorize(access.clone()),
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

    if peer_server.is_none() {
        // SIGHUP reloads the peer API's certificates; without one there is nothing to reload
        // (client certificates are re-read on every use), but the signal must not kill us.
        tokio::spawn(async {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut hup) = signal(SignalKind::hangup()) {
                while hup.recv().await.is_some() {
                    tracing::info!(
                        "SIGHUP: no peer API to reload; client certificates are re-read on use"
                    );
                }
            }
        });
    }
    // A store whose journal can no longer be written serves nothing (lockbox-store is
    // fail-stop): report NOT_SERVING and stop with EX_TEMPFAIL, so that systemd restarts the
    // daemon, which then answers from what the disk holds (docs/operations.md).
    let store = custody.store().clone();
    let failed = {
        let store = store.clone();
        let health = health.clone();
        async move {
            let why = store.failed().await;
            health.set_not_serving::<LockboxServer<LocalApi>>().await;
            tracing::error!(error = %why, "the store failed: stopping for a restart");
            why
        }
    };
    let store_failure = std::sync::Arc::new(std::sync::Mutex::new(None));
    let stop = {
        let store_failure = store_failure.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                why = failed => {
                    *store_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
        }
    };
    let served = lockbox_runtime::server(LOCAL_REQUEST_TIMEOUT)
        .layer(lockbox_runtime::MethodLimitsLayer::new(LOCAL_METHOD_LIMITS))
        .layer(tower::util::option_layer(
            rpc_metrics.map(|m| m.layer(LOCAL_METHODS.as_slice())),
        ))
        .layer(settle::SettleLayer::new(store))
        // Health answers only the callers every other method answers (allowed_uids/gids):
        // whether a node is sealed or failing is not for any local user.
        .add_service(tonic::service::interceptor::InterceptedService::new(
            health_service,
            authorize(access.clone()),
        ))
        .add_service(api)
        .serve_with_incoming_shutdown(accept::unix_incoming(listener), stop)
        .await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(endpoint) = endpoint {
        endpoint.stop().await;
    }
    if let Some((handle, stop)) = peer_server {
        let _ = stop.send(());
        let _ = handle.await;
    }
    let failure = store_failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(why) = failure {
        let _ = std::fs::remove_file(&config.socket);
        return Err(CustodyError::StoreFailed(why));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A method added to the socket's service is capped unless it is one of the three that
    /// carry a grant or a backup file.
    #[test]
    fn every_socket_method_but_the_large_ones_is_capped() {
        let large = [
            "/lockbox.v1.Lockbox/VerifyGrant",
            "/lockbox.v1.Lockbox/Transfer",
            "/lockbox.v1.Lockbox/RestoreBackup",
        ];
        for m in lockbox_proto::LOCKBOX_METHODS {
            let capped = LOCAL_METHOD_LIMITS.iter().any(|(p, _)| p == m);
            assert_ne!(capped, large.contains(m), "{m}");
        }
    }
}
