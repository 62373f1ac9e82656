//! The one error type of this crate.
//!
//! Each variant names the check that failed, so the daemon can audit and report precisely
//! (DESIGN.md §2.5) without ever putting secret bytes in a message.

/// Why a cryptographic operation or a decoder refused its input.
///
/// Messages are lowercase and say which check failed; none of them contains key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The OS random number generator failed; nothing can be generated safely without it.
    #[error("system random number generator failed")]
    Random,

    /// An encoded structure is truncated, has trailing bytes or an invalid field; the payload
    /// names the structure and the check.
    #[error("malformed {0}")]
    Malformed(&'static str),

    /// An encoded structure carries a version this build does not understand.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which structure.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },

    /// AEAD authentication failed: the record was edited, moved to another id or kind, or is
    /// opened with the wrong key.
    #[error("integrity check failed for {kind} record (tampered or wrong key)")]
    IntegrityFailed {
        /// The record kind label (see `RecordKind::label`) or `wrapped-kek`.
        kind: &'static str,
    },

    /// The record header names a KEK that this keyring no longer (or never) held, e.g. one
    /// dropped at the end of a rotation.
    #[error("record sealed under kek {0}, which is not in the keyring")]
    UnknownKek(u32),

    /// The unseal secret did not open the keyring's root secret.
    #[error("wrong unseal secret (passphrase or key file)")]
    WrongUnsealSecret,

    /// The keyring is unsealed by one method and a secret for another was given.
    #[error("keyring is unsealed by {keyring}, but a {given} was given")]
    UnsealMethodMismatch {
        /// The keyring's method (`UnsealMethod::as_str`).
        keyring: &'static str,
        /// The method of the secret given.
        given: &'static str,
    },

    /// An Ed25519 signature (or the public key it is checked against) is invalid.
    #[error("signature does not verify")]
    BadSignature,

    /// A fixed-size input has the wrong length.
    #[error("{what} must be {expected} bytes, got {got}")]
    BadLength {
        /// Which input.
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The length given.
        got: usize,
    },

    /// A key derivation function refused its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// Shorthand used by every fallible function of this crate.
pub type Result<T> = std::result::Result<T, CryptoError>;
