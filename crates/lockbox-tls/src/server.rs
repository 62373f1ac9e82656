//! Server side: mutual TLS with required client certificates, reloadable without a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::files::{load_certs, load_key, load_roots};
use crate::{
    ALPN_H2, Role, SpiffeId, TlsError, TlsFiles, provider, spiffe_id_of_cert, spki_sha256,
};

/// A handshake that has not finished by then is dropped, so idle sockets cannot pin tasks.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many handshakes run at once; beyond it we stop accepting (back-pressure in
/// the kernel's listen queue) instead of growing without bound under a connection flood.
const MAX_CONCURRENT_HANDSHAKES: usize = 512;
/// At most this many handshakes from one client address run at once: a flood of idle
/// connections from one host cannot take the handshake slots authenticated peers need.
const MAX_HANDSHAKES_PER_ADDR: usize = 16;
/// Established streams waiting for the server to take them.
const ESTABLISHED_QUEUE: usize = 64;
/// Pause after a failed accept (EMFILE and friends) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

struct Loaded {
    config: Arc<ServerConfig>,
    id: SpiffeId,
}

/// The client-certificate check of a server that serves some roles only: the chain is
/// verified against the CA as usual, then the certificate's SPIFFE id must be of this server's
/// trust domain and one of `roles`. It runs in the handshake, so a caller of another role
/// gets a TLS `access_denied` alert and never sends a request: nothing of its is read or
/// buffered (a caller with any cluster certificate once made a lockbox buffer hundreds of MB
/// before its role was checked in the handler).
#[derive(Debug)]
struct AdmittingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    roles: Vec<Role>,
    trust_domain: String,
}

impl ClientCertVerifier for AdmittingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let refused =
            || rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);
        let id = spiffe_id_of_cert(end_entity.as_ref()).map_err(|e| {
            tracing::info!(error = %e, "refused at the handshake: no SPIFFE id");
            refused()
        })?;
        if id.trust_domain != self.trust_domain || !self.roles.contains(&id.role) {
            let roles: Vec<&str> = self.roles.iter().map(Role::as_str).collect();
            tracing::info!(
                caller = %id.uri(),
                serves = %roles.join(","),
                "refused at the handshake: role or trust domain not served here"
            );
            return Err(refused());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server TLS configuration: TLS 1.3 only, a client certificate chaining to the CA file
/// is required, X25519MLKEM768 preferred. Reloadable, because certificates are short-lived
/// and a key-custody daemon should not restart (and drop its peers) to rotate them.
///
/// Invariant: `current` always holds a config built completely from one successful read of
/// the three files; a failed reload leaves it untouched.
pub struct ReloadableServerConfig {
    files: TlsFiles,
    /// The roles served, when not every role of the CA.
    admit: Option<Vec<Role>>,
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

fn build(files: &TlsFiles, admit: Option<&[Role]>) -> Result<Loaded, TlsError> {
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
    let verifier: Arc<dyn ClientCertVerifier> = match admit {
        None => verifier,
        Some(roles) => Arc::new(AdmittingVerifier {
            inner: verifier,
            roles: roles.to_vec(),
            trust_domain: id.trust_domain.clone(),
        }),
    };
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
        Self::load_inner(files, None)
    }

    /// [`ReloadableServerConfig::load`] for a server that serves `roles` of its own trust
    /// domain only: any other client is refused in the TLS handshake (an `access_denied`
    /// alert), before it can send a request.
    pub fn load_admitting(files: TlsFiles, roles: &[Role]) -> Result<Arc<Self>, TlsError> {
        Self::load_inner(files, Some(roles.to_vec()))
    }

    fn load_inner(files: TlsFiles, admit: Option<Vec<Role>>) -> Result<Arc<Self>, TlsError> {
        let loaded = build(&files, admit.as_deref())?;
        Ok(Arc::new(ReloadableServerConfig {
            files,
            admit,
            current: RwLock::new(loaded),
        }))
    }

    /// Re-reads the three files. New connections use the new config; established ones keep
    /// theirs. On failure the old config stays in use and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = build(&self.files, self.admit.as_deref())?;
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

/// Handshakes in progress per client address; an entry leaves with its last handshake.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<std::net::IpAddr, usize>>);

/// One handshake slot of one address, released on drop.
struct AddressSlot {
    table: Arc<PerAddress>,
    addr: std::net::IpAddr,
}

impl PerAddress {
    /// A slot for `addr`, unless it already holds [`MAX_HANDSHAKES_PER_ADDR`].
    fn take(self: &Arc<Self>, addr: std::net::IpAddr) -> Option<AddressSlot> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(addr).or_default();
        if *n >= MAX_HANDSHAKES_PER_ADDR {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            addr,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.addr);
            }
        }
    }
}

async fn accept_loop(
    config: Arc<ReloadableServerConfig>,
    listener: TcpListener,
    tx: mpsc::Sender<Established>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let per_address = Arc::new(PerAddress::default());
    loop {
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
        // An address over its share is closed at once, before it takes a global slot: the
        // other addresses' handshakes go on.
        let Some(slot) = per_address.take(peer.ip()) else {
            tracing::debug!(%peer, "tls listener: too many handshakes from this address");
            drop(tcp);
            continue;
        };
        let permit = tokio::select! {
            () = tx.closed() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return, // the semaphore is never closed
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "tls listener: setting TCP_NODELAY failed");
        }
        let acceptor = TlsAcceptor::from(config.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
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
    Ok(peer_identity(&peer_leaf(request)?)?.spiffe_id)
}

/// SHA-256 of the caller's certificate public key, to match against the key an attestation
/// binds (DESIGN.md §4).
pub fn peer_spki_sha256<T>(request: &tonic::Request<T>) -> Result<[u8; 32], TlsError> {
    Ok(peer_identity(&peer_leaf(request)?)?.spki_sha256)
}

/// What a server needs from a verified client certificate, parsed once per certificate.
#[derive(Clone)]
struct PeerIdentity {
    spiffe_id: SpiffeId,
    spki_sha256: [u8; 32],
}

/// Parsed peer certificates, keyed by their exact DER bytes.
///
/// Parsing the X.509 leaf on every call was a tenth of a controller's CPU per grant; a
/// connection sends many calls with the same certificate. The result is a pure function of
/// the bytes (the chain and validity were checked by the TLS handshake that delivered them),
/// so a lookup by the whole DER is exact. Bounded: cleared when it reaches
/// [`PEER_CACHE_MAX`] distinct certificates.
static PEER_CACHE: std::sync::LazyLock<Mutex<HashMap<Vec<u8>, PeerIdentity>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

/// Distinct client certificates remembered at once (a cluster has one per node and client).
const PEER_CACHE_MAX: usize = 4096;

fn peer_identity(leaf: &[u8]) -> Result<PeerIdentity, TlsError> {
    let cached = PEER_CACHE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(leaf)
        .cloned();
    if let Some(id) = cached {
        return Ok(id);
    }
    let id = PeerIdentity {
        spiffe_id: spiffe_id_of_cert(leaf)?,
        spki_sha256: spki_sha256(leaf)?,
    };
    let mut cache = PEER_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= PEER_CACHE_MAX {
        cache.clear();
    }
    cache.insert(leaf.to_vec(), id.clone());
    Ok(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Role, pki};

    #[test]
    fn cached_peer_identity_is_each_certificates_own() {
        let dir = tempfile::tempdir().unwrap();
        pki::init("example.org", dir.path()).unwrap();
        let a = pki::issue(dir.path(), Role::Lockbox, "host-a", &[], &[]).unwrap();
        let b = pki::issue(dir.path(), Role::Orchestrator, "cinder", &[], &[]).unwrap();
        let a_der = load_certs(&a.cert).unwrap().remove(0);
        let b_der = load_certs(&b.cert).unwrap().remove(0);
        for _ in 0..3 {
            // First call parses and fills the cache; later ones must give the same answer,
            // and never another certificate's.
            let ia = peer_identity(&a_der).unwrap();
            let ib = peer_identity(&b_der).unwrap();
            assert_eq!(ia.spiffe_id, a.spiffe_id);
            assert_eq!(ib.spiffe_id, b.spiffe_id);
            assert_eq!(ia.spki_sha256, spki_sha256(&a_der).unwrap());
            assert_eq!(ib.spki_sha256, spki_sha256(&b_der).unwrap());
            assert_ne!(ia.spki_sha256, ib.spki_sha256);
        }
        // A certificate with one byte changed is not answered from the cache: it fails to
        // parse (or parses to what it says), exactly as without the cache.
        let mut bent = a_der.to_vec();
        let last = bent.len() - 1;
        bent[last] ^= 0xff;
        match peer_identity(&bent) {
            Ok(id) => assert_eq!(id.spiffe_id, spiffe_id_of_cert(&bent).unwrap()),
            Err(_) => assert!(spiffe_id_of_cert(&bent).is_err()),
        }
    }
}
