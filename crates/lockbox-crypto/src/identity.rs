//! The node's two static key pairs (DESIGN.md §4): an Ed25519 key that signs what the node
//! sends and its audit checkpoints, and an X25519 key that peers seal keys to.
//!
//! The daemon stores their secrets as `NodeSigning` / `NodeHpke` sealed records, via
//! `to_secret` / `from_secret`.

use std::fmt;

use aws_lc_rs::signature::Ed25519KeyPair;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, Kem};
use zeroize::Zeroizing;

use crate::error::{CryptoError, Result};
use crate::secret::{SecretBytes, key_from_secret, random_key};

/// The node's Ed25519 identity key.
///
/// Wiped on drop (by `ed25519-dalek`, and by aws-lc, which cleanses what it frees); `Debug`
/// shows only the public key.
///
/// Signing goes through aws-lc (`aws-lc-rs`, already linked for TLS): its Ed25519 signs in
/// half the time of `ed25519-dalek`'s portable code here (15.7 µs against 33.6 µs), and a
/// controller spends a fifth of its CPU per grant on that one signature. Ed25519 signatures
/// are deterministic (RFC 8032), so both produce the same bytes: the unit tests check it, and
/// verification stays with `ed25519-dalek`'s strict mode, which is faster at that here.
pub struct SigningIdentity {
    key: SigningKey,
    fast: Ed25519KeyPair,
}

impl SigningIdentity {
    /// A fresh identity, generated at `init`.
    pub fn generate() -> Result<Self> {
        let seed = random_key()?;
        Self::from_seed(&seed)
    }

    /// Restores the identity from its 32-byte seed (as unsealed from its record).
    pub fn from_secret(secret: &SecretBytes) -> Result<Self> {
        let seed = key_from_secret("ed25519 seed", secret)?;
        Self::from_seed(&seed)
    }

    fn from_seed(seed: &[u8; 32]) -> Result<Self> {
        let fast = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| CryptoError::Malformed("ed25519 seed (refused by aws-lc)"))?;
        Ok(Self {
            key: SigningKey::from_bytes(seed),
            fast,
        })
    }

    /// The 32-byte seed, to be sealed as a `NodeSigning` record.
    pub fn to_secret(&self) -> SecretBytes {
        let seed = Zeroizing::new(self.key.to_bytes());
        SecretBytes::new(seed.to_vec())
    }

    /// The public key peers and the controller know this node by.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs `domain || 0x00 || msg`.
    ///
    /// The domain label makes a signature for one purpose (an audit checkpoint, a transfer
    /// message) useless as a signature for any other. `domain` must not contain 0x00, which
    /// would make the split ambiguous; all domains are constants in SPEC.md.
    pub fn sign(&self, domain: &str, msg: &[u8]) -> [u8; 64] {
        debug_assert!(!domain.contains('\0'), "signature domain contains NUL");
        let sig = self.fast.sign(&domain_message(domain, msg));
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        out
    }
}

impl fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("public_key", &hex::encode(self.public_key()))
            .field("secret", &format_args!("[redacted]"))
            .finish()
    }
}

/// Checks an Ed25519 signature made by [`SigningIdentity::sign`] under the same domain.
///
/// Uses strict verification (canonical encodings, no small-order keys), so a signature has a
/// single valid form and cannot be malleated. A signature that is not 64 bytes is
/// [`CryptoError::BadLength`]; an invalid key or signature is [`CryptoError::BadSignature`].
pub fn verify_signature(
    public_key: &[u8; 32],
    domain: &str,
    msg: &[u8],
    signature: &[u8],
) -> Result<()> {
    let sig: &[u8; 64] = signature.try_into().map_err(|_| CryptoError::BadLength {
        what: "ed25519 signature",
        expected: 64,
        got: signature.len(),
    })?;
    if domain.contains('\0') {
        return Err(CryptoError::BadSignature);
    }
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| CryptoError::BadSignature)?;
    key.verify_strict(&domain_message(domain, msg), &Signature::from_bytes(sig))
        .map_err(|_| CryptoError::BadSignature)
}

fn domain_message(domain: &str, msg: &[u8]) -> Vec<u8> {
    [domain.as_bytes(), &[0u8][..], msg].concat()
}

/// The node's X25519 key pair that peers seal transferred keys to (HPKE base mode).
///
/// Wiped on drop (by `x25519-dalek`); `Debug` shows only the public key. The public key is
/// derived once, at construction: it is a scalar multiplication (~40 µs here), and `status`
/// and every attestation request show it.
pub struct HpkeIdentity {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl HpkeIdentity {
    /// A fresh key pair, generated at `init`.
    pub fn generate() -> Result<Self> {
        let key = random_key()?;
        Ok(Self::from_static(x25519_dalek::StaticSecret::from(*key)))
    }

    /// Restores the key pair from its 32-byte secret (as unsealed from its record).
    pub fn from_secret(secret: &SecretBytes) -> Result<Self> {
        let key = key_from_secret("x25519 secret key", secret)?;
        Ok(Self::from_static(x25519_dalek::StaticSecret::from(*key)))
    }

    fn from_static(secret: x25519_dalek::StaticSecret) -> Self {
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The 32-byte secret, to be sealed as a `NodeHpke` record.
    pub fn to_secret(&self) -> SecretBytes {
        SecretBytes::new(self.secret.as_bytes().to_vec())
    }

    /// The public key published in the node's attestation.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The private key as `hpke` takes it, to open transfer batches (`wrap.rs`).
    ///
    /// Crate-private so the secret never leaves through the public API. `hpke`'s key holds an
    /// x25519-dalek `StaticSecret` (wiped on drop) and wipes its own temporary copy; it clamps
    /// the scalar, which X25519 does anyway, so it has the same public key.
    pub(crate) fn hpke_private_key(&self) -> Result<<X25519HkdfSha256 as Kem>::PrivateKey> {
        <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(self.secret.as_bytes())
            .map_err(|_| CryptoError::Malformed("x25519 secret key (rejected by hpke)"))
    }
}

impl fmt::Debug for HpkeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HpkeIdentity")
            .field("public_key", &hex::encode(self.public_key()))
            .field("secret", &format_args!("[redacted]"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DOMAIN: &str = "lockbox/v1/test";

    #[test]
    fn aws_lc_signatures_equal_ed25519_dalek_signatures() {
        // Ed25519 is deterministic: the signer we use (aws-lc) must give exactly the bytes
        // the reference implementation gives, for any seed and message.
        use ed25519_dalek::Signer as _;
        for i in 0..64u8 {
            let id = SigningIdentity::generate().unwrap();
            let msg = vec![i; usize::from(i) * 7];
            let ours = id.sign(DOMAIN, &msg);
            let reference = id.key.sign(&domain_message(DOMAIN, &msg)).to_bytes();
            assert_eq!(ours, reference);
            verify_signature(&id.public_key(), DOMAIN, &msg, &ours).unwrap();
        }
    }

    #[test]
    fn sign_verify_round_trip() {
        let id = SigningIdentity::generate().unwrap();
        let sig = id.sign(DOMAIN, b"hello");
        verify_signature(&id.public_key(), DOMAIN, b"hello", &sig).unwrap();
    }

    #[test]
    fn wrong_domain_message_key_or_length_fails() {
        let id = SigningIdentity::generate().unwrap();
        let other = SigningIdentity::generate().unwrap();
        let sig = id.sign(DOMAIN, b"hello");
        let pk = id.public_key();
        let bad = |r: Result<()>| matches!(r, Err(CryptoError::BadSignature));
        assert!(bad(verify_signature(
            &pk,
            "lockbox/v1/other",
            b"hello",
            &sig
        )));
        assert!(bad(verify_signature(&pk, DOMAIN, b"hellO", &sig)));
        assert!(bad(verify_signature(
            &other.public_key(),
            DOMAIN,
            b"hello",
            &sig
        )));
        // The 0x00 separator keeps ("a", "\0b") and ("a\0", "b") apart.
        assert!(bad(verify_signature(
            &pk,
            "lockbox/v1/test\0",
            b"hello",
            &sig
        )));
        assert!(matches!(
            verify_signature(&pk, DOMAIN, b"hello", &sig[..63]),
            Err(CryptoError::BadLength {
                expected: 64,
                got: 63,
                ..
            })
        ));
    }

    #[test]
    fn signing_secret_round_trip() {
        let id = SigningIdentity::generate().unwrap();
        let restored = SigningIdentity::from_secret(&id.to_secret()).unwrap();
        assert_eq!(restored.public_key(), id.public_key());
        assert_eq!(restored.sign(DOMAIN, b"m"), id.sign(DOMAIN, b"m"));
        assert!(matches!(
            SigningIdentity::from_secret(&SecretBytes::new(vec![0; 64])),
            Err(CryptoError::BadLength { .. })
        ));
    }

    #[test]
    fn hpke_secret_round_trip() {
        let id = HpkeIdentity::generate().unwrap();
        let restored = HpkeIdentity::from_secret(&id.to_secret()).unwrap();
        assert_eq!(restored.public_key(), id.public_key());
        assert_ne!(
            HpkeIdentity::generate().unwrap().public_key(),
            id.public_key()
        );
        assert!(matches!(
            HpkeIdentity::from_secret(&SecretBytes::new(vec![0; 31])),
            Err(CryptoError::BadLength { .. })
        ));
    }

    #[test]
    fn hpke_private_key_has_the_same_public_key() {
        use hpke::Serializable as _;
        // An unclamped secret: hpke clamps it, X25519 would have anyway.
        let id = HpkeIdentity::from_secret(&SecretBytes::new(vec![0xff; 32])).unwrap();
        let sk = id.hpke_private_key().unwrap();
        assert_eq!(
            X25519HkdfSha256::sk_to_pk(&sk).to_bytes().as_slice(),
            &id.public_key()
        );
    }

    #[test]
    fn debug_is_redacted() {
        let s = SigningIdentity::from_secret(&SecretBytes::new(vec![0x5a; 32])).unwrap();
        let d = format!("{s:?}");
        assert!(d.contains("redacted") && d.contains(&hex::encode(s.public_key())));
        assert!(!d.contains(&hex::encode([0x5a; 32])));
        let h = HpkeIdentity::from_secret(&SecretBytes::new(vec![0x5a; 32])).unwrap();
        let d = format!("{h:?}");
        assert!(d.contains("redacted") && d.contains(&hex::encode(h.public_key())));
        assert!(!d.contains(&hex::encode([0x5a; 32])));
    }
}
