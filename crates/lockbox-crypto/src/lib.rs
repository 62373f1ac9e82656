//! Sans-I/O cryptography for lockbox.
//!
//! Everything here is pure computation over bytes: no files, no sockets, no clock (times are
//! parameters). Keeping it so makes every format testable from vectors and keeps the
//! security-critical code small enough to review against `SPEC.md`, which gives the exact byte
//! layout and every domain-separation label used below.
//!
//! - [`secret`]: the only way secret bytes are held in memory.
//! - [`seal`]: records sealed at rest under a KEK.
//! - [`keyring`]: the keyring file that holds the wrapped root secret and KEKs.
//! - [`identity`]: the node's Ed25519 signing key and X25519 HPKE key.
//! - [`audit`]: the hash-chained, checkpoint-signed audit log.
//! - [`trust`]: trusted controller keys and the M-of-N signature count.
//! - [`grant`]: controller-signed permissions to move keys between lockboxes.
//! - [`attestation`]: controller-signed statements of a node's public keys.
//! - [`wrap`]: keys sealed end to end (HPKE) and signed for a transfer between lockboxes.
//! - [`backup`]: offline backups sealed to recovery keys (one HPKE stanza per recipient).

pub mod attestation;
pub mod audit;
pub mod backup;
pub mod error;
pub mod grant;
pub mod identity;
pub mod keyring;
pub mod seal;
pub mod secret;
pub mod trust;
pub mod wrap;

mod wire;

pub use attestation::*;
pub use audit::*;
pub use backup::*;
pub use error::*;
pub use grant::*;
pub use identity::*;
pub use keyring::*;
pub use seal::*;
pub use secret::*;
pub use trust::*;
pub use wrap::*;
