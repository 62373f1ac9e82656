//! Client side: mutual TLS to a lockbox server, plus a check of the server's SPIFFE role.

use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::files::{load_certs, load_key, load_roots};
use crate::{ALPN_H2, Role, SpiffeId, TlsError, TlsFiles, provider, spiffe_id_of_cert};

/// TCP connect plus TLS handshake must finish within this, so a black-holed peer gives an
/// error instead of a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on idle channels find dead peers (a lockbox rebooted behind a NAT) before a
/// real call waits on them.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which identity the server must have, beyond a certificate chaining to our CA: the role,
/// and the name when we are talking to one particular peer. Without it any lockbox holding a
/// valid certificate could impersonate the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// The role the server's SPIFFE id must have.
    pub role: Role,
    /// The name it must have, if a particular peer is meant.
    pub name: Option<String>,
    /// The SHA-256 of the SubjectPublicKeyInfo its leaf must carry, when the caller knows it
    /// from a controller-signed attestation (DESIGN.md invariant 4: the TLS peer must be the
    /// attested one, not merely a holder of a certificate with the right name).
    pub spki_sha256: Option<[u8; 32]>,
}

impl Expect {
    /// Any server with this role in our trust domain.
    pub fn role(role: Role) -> Self {
        Expect {
            role,
            name: None,
            spki_sha256: None,
        }
    }

    /// Exactly this server.
    pub fn named(role: Role, name: impl Into<String>) -> Self {
        Expect {
            role,
            name: Some(name.into()),
            spki_sha256: None,
        }
    }

    /// Exactly this server, holding exactly this TLS key.
    pub fn attested(role: Role, name: impl Into<String>, spki_sha256: [u8; 32]) -> Self {
        Expect {
            role,
            name: Some(name.into()),
            spki_sha256: Some(spki_sha256),
        }
    }

    fn matches(&self, trust_domain: &str, id: &SpiffeId) -> bool {
        id.trust_domain == trust_domain
            && id.role == self.role
            && self.name.as_ref().is_none_or(|n| *n == id.name)
    }

    fn describe(&self, trust_domain: &str) -> String {
        let name = self.name.as_deref().unwrap_or("*");
        format!("spiffe://{trust_domain}/{}/{name}", self.role)
    }
}

/// What the connector hands tonic: a TLS stream adapted to hyper's I/O traits.
type Connection = hyper_util::rt::TokioIo<TlsStream<TcpStream>>;
/// The last connector error, shared between the connector and `connect`.
type ErrorSlot = Arc<Mutex<Option<Arc<TlsError>>>>;

struct Inner {
    files: TlsFiles,
    own: SpiffeId,
    config: RwLock<Arc<ClientConfig>>,
}

/// Our client identity and trust: TLS 1.3, our certificate for client authentication, the
/// server verified against the CA file by host name or IP (standard webpki), then its SPIFFE
/// id checked against an [`Expect`]. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct ClientTls {
    inner: Arc<Inner>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.inner.files)
            .field("spiffe_id", &self.inner.own)
            .finish_non_exhaustive()
    }
}

fn build(files: &TlsFiles) -> Result<(Arc<ClientConfig>, SpiffeId), TlsError> {
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let roots = load_roots(&files.ca)?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::NoCertificate(files.cert.clone()))?;
    // Our trust domain comes from our own certificate: servers must be in it.
    let own = spiffe_id_of_cert(leaf)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config {
            what: "client config (protocol versions)",
            source,
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::Config {
            what: "client config (certificate and key)",
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok((Arc::new(config), own))
}

/// Where to connect, parsed once from the URL.
#[derive(Debug)]
struct Target {
    url: String,
    /// host:port as written (IPv6 in brackets), for messages and the tonic endpoint.
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl Target {
    fn parse(url: &str) -> Result<Self, TlsError> {
        let bad = |reason: &'static str| TlsError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URI"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("scheme must be https"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("path and query are not allowed"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| bad("host is neither a DNS name nor an IP address"))?;
        let authority = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        Ok(Target {
            url: url.to_string(),
            authority,
            host,
            port,
            server_name,
        })
    }
}

impl ClientTls {
    /// Reads our certificate, key and CA; fails if any is missing, malformed or mismatched, or
    /// if our certificate carries no SPIFFE id.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let (config, own) = build(files)?;
        Ok(ClientTls {
            inner: Arc::new(Inner {
                files: files.clone(),
                own,
                config: RwLock::new(config),
            }),
        })
    }

    /// Re-reads the files; connections made afterwards (including channel reconnects) use the
    /// new material. On failure the old config stays. The trust domain may not change, because
    /// [`ClientTls::trust_domain`] hands out a borrow of it.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (config, own) = build(&self.inner.files)?;
        if own.trust_domain != self.inner.own.trust_domain {
            return Err(TlsError::TrustDomainChanged {
                old: self.inner.own.trust_domain.clone(),
                new: own.trust_domain,
            });
        }
        *self.inner.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// Our trust domain, from our own certificate's SPIFFE id; servers must be in it.
    pub fn trust_domain(&self) -> &str {
        &self.inner.own.trust_domain
    }

    /// Our own SPIFFE id as loaded (the name and role servers will see).
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.inner.own
    }

    /// The rustls config new connections use: for raw TLS connections (tests, probes).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.inner
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// TCP connect, TLS handshake, then the SPIFFE check on the server's verified leaf.
    /// Works for resumed sessions too: rustls keeps the server chain in the session.
    async fn handshake(
        &self,
        target: &Target,
        expect: &Expect,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let addr = &target.authority;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| TlsError::TcpConnect {
                addr: addr.clone(),
                source,
            })?;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%addr, error = %e, "setting TCP_NODELAY failed");
        }
        let tls = TlsConnector::from(self.config())
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|source| TlsError::Handshake {
                addr: addr.clone(),
                source,
            })?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(TlsError::NoPeerCertificate)?;
        let expected = || expect.describe(self.trust_domain());
        let id = spiffe_id_of_cert(leaf).map_err(|e| TlsError::WrongPeer {
            addr: addr.clone(),
            expected: expected(),
            got: format!("a certificate without a valid SPIFFE id ({e})"),
        })?;
        if !expect.matches(self.trust_domain(), &id) {
            return Err(TlsError::WrongPeer {
                addr: addr.clone(),
                expected: expected(),
                got: id.uri(),
            });
        }
        if let Some(want) = expect.spki_sha256 {
            let got = crate::spki_sha256(leaf.as_ref())?;
            if got != want {
                return Err(TlsError::WrongPeer {
                    addr: addr.clone(),
                    expected: format!("{} with the attested TLS key", expected()),
                    got: format!("{} with another TLS key", id.uri()),
                });
            }
        }
        Ok(tls)
    }

    /// tonic does TLS itself only for `https://` endpoints with its own config, so the
    /// endpoint says `http://` and TLS happens inside our connector; the origin keeps
    /// `https` so requests carry the right `:scheme`.
    fn endpoint(target: &Target) -> Result<Endpoint, TlsError> {
        let channel_err = |e: &dyn StdError| TlsError::Channel {
            url: target.url.clone(),
            message: error_chain(e),
        };
        let origin: Uri = format!("https://{}", target.authority)
            .parse()
            .map_err(|e: tonic::codegen::http::uri::InvalidUri| channel_err(&e))?;
        let endpoint = Endpoint::from_shared(format!("http://{}", target.authority))
            .map_err(|e| channel_err(&e))?
            .origin(origin)
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        Ok(endpoint)
    }

    /// The tonic connector: TCP, TLS, SPIFFE check. Errors also go to `last_error`, because
    /// tonic hands back only a borrowed chain and `connect` wants to return the typed error.
    fn connector(
        &self,
        target: Arc<Target>,
        expect: Expect,
        last_error: ErrorSlot,
    ) -> impl tower::Service<Uri, Response = Connection, Error = Arc<TlsError>, Future: Send>
    + Send
    + 'static {
        let this = self.clone();
        let expect = Arc::new(expect);
        tower::service_fn(move |_: Uri| {
            let (this, target, expect) = (this.clone(), target.clone(), expect.clone());
            let last_error = last_error.clone();
            async move {
                match this.handshake(&target, &expect).await {
                    Ok(tls) => Ok(hyper_util::rt::TokioIo::new(tls)),
                    Err(e) => {
                        tracing::debug!(url = %target.url, error = %e, "tls connect failed");
                        let e = Arc::new(e);
                        *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                        Err(e)
                    }
                }
            }
        })
    }

    /// A channel to `url` (`https://host:port`), connected now, so an unreachable server, an
    /// untrusted certificate or the wrong server identity is reported at once with its own
    /// [`TlsError`] variant (`TcpConnect`, `Handshake`, `WrongPeer`). Later reconnects repeat
    /// the same checks.
    ///
    /// A server that rejects *our* certificate cannot be detected here: in TLS 1.3 it says so
    /// after our handshake completes, so that shows on the first call as `Unknown: transport
    /// error`; [`error_chain`] of that `Status` gives the alert (e.g. `UnknownCA`).
    pub async fn connect(&self, url: &str, expect: Expect) -> Result<Channel, TlsError> {
        let target = Arc::new(Target::parse(url)?);
        let endpoint = Self::endpoint(&target)?;
        let last_error = ErrorSlot::default();
        let connector = self.connector(target, expect, last_error.clone());
        match endpoint.connect_with_connector(connector).await {
            Ok(channel) => Ok(channel),
            Err(e) => {
                let message = error_chain(&e);
                // Drop tonic's error so ours is (normally) the last reference to the cause.
                drop(e);
                let typed = last_error.lock().unwrap_or_else(|p| p.into_inner()).take();
                Err(typed
                    .and_then(|arc| Arc::try_unwrap(arc).ok())
                    .unwrap_or(TlsError::Channel {
                        url: url.to_string(),
                        message,
                    }))
            }
        }
    }

    /// Like [`ClientTls::connect`] but connects on first use, for peers that may not be up yet.
    /// Failures then surface as the call's `Status`; [`find_tls_error`] recovers the cause.
    pub fn connect_lazy(&self, url: &str, expect: Expect) -> Result<Channel, TlsError> {
        let target = Arc::new(Target::parse(url)?);
        let endpoint = Self::endpoint(&target)?;
        let connector = self.connector(target, expect, ErrorSlot::default());
        Ok(endpoint.connect_with_connector_lazy(connector))
    }
}

/// The [`TlsError`] somewhere in an error's source chain, e.g. inside the `Status` of a call
/// on a lazy channel (which tonic reports as `Unknown: transport error`), so a CLI can print
/// the real cause.
pub fn find_tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a TlsError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<TlsError>() {
            return Some(tls);
        }
        // Our connector reports errors as `Arc<TlsError>` (see `ClientTls::channel`).
        if let Some(tls) = e.downcast_ref::<Arc<TlsError>>() {
            return Some(tls);
        }
        cur = e.source();
    }
    None
}

/// An error and its sources joined with ": ", since tonic's top-level message alone
/// ("transport error") says nothing. For example a server that rejected our certificate shows
/// up on the first call as `Unknown: transport error`, and only the chain says
/// "received fatal alert: UnknownCA".
pub fn error_chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("https://127.0.0.1:7400").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 7400));
        assert_eq!(t.authority, "127.0.0.1:7400");
        let t = Target::parse("https://[::1]:7400/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.authority.as_str()),
            ("::1", "[::1]:7400")
        );
        let t = Target::parse("https://lockbox-1.example").unwrap();
        assert_eq!(t.authority, "lockbox-1.example:443");
        for bad in [
            "http://127.0.0.1:7400",
            "127.0.0.1:7400",
            "https://u@h:1",
            "https://h:1/x",
            "https://h:1/?q",
            "unix:/run/x",
        ] {
            assert!(Target::parse(bad).is_err(), "accepted {bad}");
        }
    }
}
