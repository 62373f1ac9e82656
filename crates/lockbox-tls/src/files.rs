//! Reading PEM certificate, key and CA files.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{SpiffeId, TlsError, spiffe_id_of_cert, spki_sha256};

/// Where a process's TLS identity lives. Paths, not contents, so that the material can be
/// re-read on reload and never sits in configuration files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Our certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Our private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CA certificate(s) we trust for peers (PEM; several allow CA rotation).
    pub ca: PathBuf,
}

fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::io("reading", path, source),
        source => TlsError::Pem {
            what,
            path: path.to_path_buf(),
            source,
        },
    }
}

/// All certificates in a PEM file, in order; at least one.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error("certificate", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificate", path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error("private key", path, e))
}

/// A root store holding every certificate of the CA file; any unparsable one is an error
/// rather than silently skipped, so a broken CA bundle is noticed at load time.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Config {
            what: "trust anchors from the ca file",
            source,
        })?;
    }
    Ok(roots)
}

/// Our own identity and the SHA-256 of our certificate's public key, for attestation
/// requests: the controller binds exactly these two values.
pub fn load_own_cert(files: &TlsFiles) -> Result<(SpiffeId, [u8; 32]), TlsError> {
    let certs = load_certs(&files.cert)?;
    let leaf = certs
        .first()
        .ok_or_else(|| TlsError::NoCertificate(files.cert.clone()))?;
    Ok((spiffe_id_of_cert(leaf)?, spki_sha256(leaf)?))
}
