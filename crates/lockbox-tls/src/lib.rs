//! lockbox-tls: the only crate that names rustls.
//!
//! It pins the crypto provider (aws-lc-rs, TLS 1.3 only, X25519MLKEM768 first), builds the
//! server configuration that *requires* client certificates, the client configuration that
//! additionally checks the server's SPIFFE role, reads SPIFFE ids from verified peer
//! certificates, reloads certificates without a restart, and provides a development CA
//! ([`pki`]). Identity is the URI SAN `spiffe://<trust-domain>/<role>/<name>` (DESIGN.md §4).

mod client;
mod error;
mod files;
pub mod pki;
mod server;
mod spiffe;

pub use client::{ClientTls, Expect, error_chain, find_tls_error};
pub use error::TlsError;
pub use files::{TlsFiles, load_own_cert};
pub use server::{ReloadableServerConfig, peer_spiffe_id, peer_spki_sha256, reload_on_sighup};
pub use spiffe::{Role, SpiffeId, check_trust_domain, spiffe_id_of_cert, spki_sha256};

use std::sync::Arc;

use rustls::NamedGroup;
use rustls::crypto::CryptoProvider;

/// Installs aws-lc-rs as the process-wide rustls provider. Call once at process start:
/// if any dependency ever enables a second provider, rustls panics on first use without a
/// process default. Calling it again (or after someone else did) is harmless.
pub fn install_default_provider() {
    // Err means a provider is already installed, which is the state we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The provider every config of this crate uses, independent of the process default:
/// aws-lc-rs with X25519MLKEM768 first, so our clients send a post-quantum hybrid key share.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // rustls puts it first only with its default `prefer-post-quantum` feature; do not depend
    // on a feature flag someone may turn off.
    if let Some(pos) = provider
        .kx_groups
        .iter()
        .position(|g| g.name() == NamedGroup::X25519MLKEM768)
    {
        let pq = provider.kx_groups.remove(pos);
        provider.kx_groups.insert(0, pq);
    }
    Arc::new(provider)
}

/// ALPN for gRPC: HTTP/2 only, as tonic's own TLS does.
pub(crate) const ALPN_H2: &[u8] = b"h2";

#[cfg(test)]
mod tests {
    #[test]
    fn post_quantum_group_is_first() {
        let p = super::provider();
        assert_eq!(
            p.kx_groups.first().map(|g| g.name()),
            Some(rustls::NamedGroup::X25519MLKEM768)
        );
    }
}
