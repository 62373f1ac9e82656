//! Server side: mutual TLS with required client certificates, reloadable without a restart.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::files::{load_certs, load_key, load_roots};
use crate::{ALPN_H2, SpiffeId, TlsError, TlsFiles, provider, spiffe_id_of_cert, spki_sha256};

/// A handshake that has not finished by then is dropped, so idle sockets cannot pin tasks.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many handshakes run at once; beyond it we stop accepting (back-pressure in
/// the kernel's listen queue) instead of growing without bound under a connection flood.
const MAX_CONCURRENT_HANDSHAKES: usize = 512;
/// Established streams waiting for the server to take them.
const ESTABLISHED_QUEUE: usize = 64;
/// Pause after a failed accept (EMFILE and friends) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

struct Loaded {
    config: Arc<ServerConfig>,
    id: SpiffeId,
}

/// The server TLS configuration: TLS 1.3 only, a client certificate chaining to the CA file
/// is required, X25519MLKEM768 preferred. Reloadable, because certificates are short-lived
/// and a key-custody daemon should not restart (and drop its peers) to rotate them.
///
/// Invariant: `current` always holds a config built completely from one successful read of
/// the three files; a failed reload leaves it untouched.
pub struct ReloadableServerConfig {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

impl std::fmt::Debug for ReloadableServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableServerConfig")
            .field("files", &self.files)
            .field("spiffe_id", &self.spiffe_id())
            .finish_non_exhaustive()
    }
}

fn build(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let provider = provider();
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let roots = load_roots(&files.ca)?;
    // Our own certificate must name us; a server without an identity is a misconfiguration
    // that would otherwise surface only in every client's error log.
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::NoCertificate(files.cert.clone()))?;
    let id = spiffe_id_of_cert(leaf)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config {
            what: "server config (protocol versions)",
            source,
        })?
        .with_client_cert_verifier(verifier)
        // Also checks that the key matches the certificate.
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Config {
            what: "server config (certificate and key)",
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        id,
    })
}

impl ReloadableServerConfig {
    /// Reads certificate, key and CA once; fails if any is missing, malformed or mismatched,
    /// so a daemon refuses to start with a broken identity.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let loaded = build(&files)?;
        Ok(Arc::new(ReloadableServerConfig {
            files,
            current: RwLock::new(loaded),
        }))
    }

    /// Re-reads the three files. New connections use the new config; established ones keep
    /// theirs. On failure the old config stays in use and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = build(&self.files)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = loaded;
        Ok(())
    }

    /// The config new connections get now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .clone()
    }

    /// Our own SPIFFE id as of the last successful load, so a server can compare callers'
    /// trust domain with its own.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .id
            .clone()
    }

    /// The files this config is (re)loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Accepts TCP connections and runs TLS handshakes concurrently, yielding established
    /// streams for `tonic::transport::Server::serve_with_incoming`.
    ///
    /// Each connection uses the config current when it was accepted. A slow or failed
    /// handshake does not block others or end the stream: it is logged at debug level (it is
    /// the peer's problem, and a scanner must not flood the log) and dropped. Accept errors
    /// are logged at warn level and retried. `TCP_NODELAY` is set on every socket, since
    /// `serve_with_incoming` ignores the builder's nodelay. The accept loop runs on a spawned
    /// task (so this must be called within a Tokio runtime) and stops when the stream is dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static {
        let (tx, rx) = mpsc::channel(ESTABLISHED_QUEUE);
        tokio::spawn(accept_loop(self, listener, tx));
        ReceiverStream::new(rx)
    }
}

type Established = Result<TlsStream<TcpStream>, std::io::Error>;

async fn accept_loop(
    config: Arc<ReloadableServerConfig>,
    listener: TcpListener,
    tx: mpsc::Sender<Established>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            () = tx.closed() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return, // the semaphore is never closed
            },
        };
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "tls listener: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "tls listener: setting TCP_NODELAY failed");
        }
        let acceptor = TlsAcceptor::from(config.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Err only if the server is gone; the connection is then dropped.
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}

/// Reloads every given config on each SIGHUP and logs the outcome, so operators rotate
/// certificates with `systemctl reload`. The signal handler is installed before this returns,
/// so a SIGHUP sent afterwards never takes the default action (terminating the process).
/// Must be called within a Tokio runtime.
pub fn reload_on_sighup(configs: Vec<Arc<ReloadableServerConfig>>) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let hangup = signal(SignalKind::hangup());
    tokio::spawn(async move {
        let mut hangup = match hangup {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: certificate reload disabled");
                return;
            }
        };
        while hangup.recv().await.is_some() {
            for config in &configs {
                match config.reload() {
                    Ok(()) => tracing::info!(
                        cert = %config.files.cert.display(),
                        spiffe_id = %config.spiffe_id(),
                        "tls certificates reloaded"
                    ),
                    Err(e) => tracing::warn!(
                        cert = %config.files.cert.display(),
                        error = %e,
                        "tls reload failed; keeping the previous certificates"
                    ),
                }
            }
        }
    })
}

/// The verified leaf certificate of the peer that sent `request`.
fn peer_leaf<T>(
    request: &tonic::Request<T>,
) -> Result<rustls::pki_types::CertificateDer<'static>, TlsError> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .ok_or(TlsError::NoPeerCertificate)
}

/// Who is calling: the SPIFFE id of the verified client certificate (tonic's `peer_certs()`,
/// leaf first). The one place servers read the caller's identity, so authorization cannot
/// drift between handlers. Fails on requests that did not arrive over our mTLS listener.
///
/// The chain was verified against our CA file; the trust domain is not compared with ours
/// here. Compare it with [`ReloadableServerConfig::spiffe_id`] if one CA serves several domains.
pub fn peer_spiffe_id<T>(request: &tonic::Request<T>) -> Result<SpiffeId, TlsError> {
    spiffe_id_of_cert(&peer_leaf(request)?)
}

/// SHA-256 of the caller's certificate public key, to match against the key an attestation
/// binds (DESIGN.md §4).
pub fn peer_spki_sha256<T>(request: &tonic::Request<T>) -> Result<[u8; 32], TlsError> {
    spki_sha256(&peer_leaf(request)?)
}
