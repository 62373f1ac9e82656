//! Secret byte strings and randomness.
//!
//! Secrets live only inside [`SecretBytes`]: wiped on drop, never printed, not cloneable, so a
//! copy can only be made deliberately through [`SecretBytes::expose_secret`] (DESIGN.md §2.8).

use std::fmt;

use zeroize::Zeroizing;

use crate::error::{CryptoError, Result};

/// Secret bytes of any length (key material, seeds, passphrases, key files).
///
/// Zeroized on drop; `Debug` prints `[redacted]`; no `Clone`, `Display` or serialization, so the
/// bytes cannot leak into logs or copies by accident.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `v` so that its buffer is wiped when the secret is dropped.
    ///
    /// Pass a vector that was never reallocated after it held the secret; earlier copies are
    /// out of reach of this type.
    pub fn new(v: Vec<u8>) -> Self {
        Self(Zeroizing::new(v))
    }

    /// Fresh secret from the OS random number generator, for new key material.
    pub fn random(len: usize) -> Result<Self> {
        let mut v = Zeroizing::new(vec![0u8; len]);
        getrandom::fill(&mut v).map_err(|_| CryptoError::Random)?;
        Ok(Self(v))
    }

    /// The secret bytes; named so that every use is visible in review.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret: key sizes are public).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty, e.g. to refuse an empty passphrase.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([redacted])")
    }
}

/// Random bytes from the OS generator for values that must be unpredictable but are not
/// secret: nonces, salts, ids.
pub fn random_array<const N: usize>() -> Result<[u8; N]> {
    let mut a = [0u8; N];
    getrandom::fill(&mut a).map_err(|_| CryptoError::Random)?;
    Ok(a)
}

/// A random 32-byte key held so that it is wiped on drop; shared by the key types.
pub(crate) fn random_key() -> Result<Zeroizing<[u8; 32]>> {
    let mut k = Zeroizing::new([0u8; 32]);
    getrandom::fill(k.as_mut()).map_err(|_| CryptoError::Random)?;
    Ok(k)
}

/// Copies a 32-byte secret out of `secret` into a wiped-on-drop array, refusing other lengths.
pub(crate) fn key_from_secret(
    what: &'static str,
    secret: &SecretBytes,
) -> Result<Zeroizing<[u8; 32]>> {
    let bytes = secret.expose_secret();
    if bytes.len() != 32 {
        return Err(CryptoError::BadLength {
            what,
            expected: 32,
            got: bytes.len(),
        });
    }
    let mut k = Zeroizing::new([0u8; 32]);
    k.copy_from_slice(bytes);
    Ok(k)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::new(b"hunter2-hunter2".to_vec());
        let d = format!("{s:?}");
        assert!(d.contains("redacted"));
        assert!(!d.contains("hunter2"));
        assert!(!d.contains("104")); // 'h' as a decimal byte
    }

    #[test]
    fn random_has_requested_length_and_differs() {
        let a = SecretBytes::random(32).unwrap();
        let b = SecretBytes::random(32).unwrap();
        assert_eq!(a.len(), 32);
        assert!(!a.is_empty());
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(SecretBytes::random(0).unwrap().is_empty());
    }

    #[test]
    fn random_array_differs() {
        assert_ne!(random_array::<24>().unwrap(), random_array::<24>().unwrap());
    }

    #[test]
    fn key_from_secret_checks_length() {
        let err = key_from_secret("test key", &SecretBytes::new(vec![1; 31])).unwrap_err();
        assert!(matches!(
            err,
            CryptoError::BadLength {
                expected: 32,
                got: 31,
                ..
            }
        ));
        assert_eq!(
            *key_from_secret("test key", &SecretBytes::new(vec![7; 32])).unwrap(),
            [7; 32]
        );
    }
}
