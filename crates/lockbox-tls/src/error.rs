//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong loading, checking or using TLS material.
///
/// Each message says which check failed, so an operator reading a log line or a CLI error knows
/// what to fix without reading code. Peer-supplied details (a presented SPIFFE id) are included
/// because they are what the operator needs; none of these errors carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read, created or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing ("reading", "creating", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file did not parse, or held nothing of the kind we needed.
    #[error("parsing {what} PEM in {path}: {source}")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The PEM parser's error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file held no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    /// A certificate is not well-formed DER X.509.
    #[error("certificate is not valid X.509 DER: {0}")]
    BadCertificate(String),
    /// A certificate carries no `spiffe://` URI SAN, so it names no lockbox identity.
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    /// A certificate carries several `spiffe://` URI SANs; an identity must be unambiguous.
    #[error("certificate has {0} spiffe:// URI SANs, expected exactly one")]
    MultipleSpiffeIds(usize),
    /// A SPIFFE id or trust domain failed the strict syntax check.
    #[error("invalid SPIFFE id {uri:?}: {reason}")]
    InvalidSpiffeId {
        /// The offending text.
        uri: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A role string is not one of the four roles.
    #[error("unknown role {0:?}: expected lockbox, controller, orchestrator or admin")]
    UnknownRole(String),
    /// rustls refused to build a configuration (bad key, key/certificate mismatch, ...).
    #[error("building {what}: {source}")]
    Config {
        /// Which configuration was being built.
        what: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built (for example an empty CA file).
    #[error("building client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A request or connection carries no verified peer certificate.
    #[error("no verified peer certificate (not an mTLS connection?)")]
    NoPeerCertificate,
    /// A URL given to the client does not name an `https://host:port` endpoint.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// The TCP connection to the server failed.
    #[error("tcp connect to {addr}: {source}")]
    TcpConnect {
        /// host:port.
        addr: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (untrusted certificate, no client certificate, TLS version, ...).
    #[error("tls handshake with {addr} failed: {source}")]
    Handshake {
        /// host:port.
        addr: String,
        /// The handshake error; its text comes from rustls.
        #[source]
        source: std::io::Error,
    },
    /// The server's certificate is valid for the CA but names the wrong lockbox identity.
    #[error("server identity check failed at {addr}: expected {expected}, server is {got}")]
    WrongPeer {
        /// host:port.
        addr: String,
        /// What we expected, as a pattern (`spiffe://D/role/*` or a full id).
        expected: String,
        /// What the server's certificate says.
        got: String,
    },
    /// The channel could not be established for a reason outside TLS (timeout, HTTP/2).
    #[error("connecting to {url}: {message}")]
    Channel {
        /// The URL we tried.
        url: String,
        /// The transport error chain, joined with ": ".
        message: String,
    },
    /// A reload would change our own trust domain, which long-lived clients rely on.
    #[error("reload refused: trust domain would change from {old:?} to {new:?}")]
    TrustDomainChanged {
        /// The trust domain in use.
        old: String,
        /// The trust domain of the new certificate.
        new: String,
    },
    /// `pki` refuses to overwrite key or certificate files.
    #[error("refusing to overwrite existing {0}")]
    AlreadyExists(PathBuf),
    /// A DNS name given to `pki::issue` is not a valid DNS name.
    #[error("invalid DNS name {0:?}")]
    InvalidDnsName(String),
    /// A SAN value is not representable in a certificate (IA5 strings are 7-bit ASCII).
    #[error("{0:?} is not a valid certificate SAN value (ASCII only)")]
    InvalidSan(String),
    /// The system random number generator failed; no serial number can be drawn.
    #[error("random number generator failed")]
    Random,
    /// The CA certificate does not name a trust domain (URI SAN `spiffe://D`).
    #[error("ca certificate {0} has no spiffe://<trust-domain> URI SAN")]
    CaWithoutTrustDomain(PathBuf),
    /// rcgen failed to generate a key or certificate.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

impl TlsError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        TlsError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
