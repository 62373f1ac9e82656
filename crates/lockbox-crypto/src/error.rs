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

    /// A transfer batch names an HPKE suite this build does not implement (the `u64` suite id,
    /// SPEC.md "Transfer wrapping").
    #[error("unsupported transfer suite {0:#014x}")]
    UnsupportedSuite(u64),

    /// A transfer batch, its context or one of its keys fails a check made before any key is
    /// sealed or opened, or the HPKE encapsulation itself fails; nothing is sealed or returned.
    #[error("bad transfer batch {batch}: {reason}")]
    BadBatch {
        /// The batch number from the context.
        batch: u32,
        /// Which check failed; names the key (escaped) when one key is at fault.
        reason: String,
    },

    /// A key of a transfer batch does not authenticate: tampered, relabelled, reordered, sealed
    /// in another batch context or to another node. No key of the batch is returned.
    #[error(
        "cannot unwrap key {key_id} version {version} in batch {batch}: authentication failed \
         (tampered, relabelled or reordered, another batch context, or not sealed to this node)"
    )]
    UnwrapFailed {
        /// The key id as the batch names it (control characters escaped, at most 64 kept).
        key_id: String,
        /// The key version as the batch names it.
        version: u32,
        /// The batch number from the context.
        batch: u32,
    },

    /// The source's Ed25519 signature over a transfer batch does not verify.
    #[error("bad signature on transfer batch {batch}")]
    BadBatchSignature {
        /// The batch number from the context.
        batch: u32,
    },
}

/// Shorthand used by every fallible function of this crate.
pub type Result<T> = std::result::Result<T, CryptoError>;
