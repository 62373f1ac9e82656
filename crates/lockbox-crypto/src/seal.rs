//! Records sealed at rest under a KEK (SPEC.md "Sealed record", DESIGN.md §5.4).
//!
//! The AAD binds the record's kind, id and KEK id, so a stored record cannot be moved to
//! another key id, reinterpreted as another kind, or relabelled as sealed under another KEK
//! without failing authentication.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{CryptoError, Result};
use crate::secret::{SecretBytes, key_from_secret, random_array, random_key};

/// Version byte of the sealed-record format; a new layout gets a new byte and AAD label.
pub const SEALED_VERSION: u8 = 0x01;
/// Leading label of every sealed record's AAD.
pub const SEAL_AAD_LABEL: &[u8] = b"lockbox/v1/record";
/// Bytes before the ciphertext: version, KEK id, nonce.
pub const SEALED_HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// Smallest well-formed sealed record: a header and the tag of an empty plaintext.
pub const SEALED_MIN_LEN: usize = SEALED_HEADER_LEN + TAG_LEN;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// What a sealed record holds; part of the AAD so one kind can never be opened as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A key id's metadata (state, labels, origin, version).
    KeyMeta,
    /// Secret key material shared by one or more key ids.
    Material,
    /// The node's X25519 HPKE private key.
    NodeHpke,
    /// The node's Ed25519 identity seed.
    NodeSigning,
    /// The sealed audit-log head, so truncating the log's tail is detected.
    AuditHead,
}

impl RecordKind {
    /// The label bound into the AAD (and shown in errors); fixed forever by SPEC.md.
    pub fn label(&self) -> &'static str {
        match self {
            RecordKind::KeyMeta => "key-meta",
            RecordKind::Material => "material",
            RecordKind::NodeHpke => "node-hpke",
            RecordKind::NodeSigning => "node-signing",
            RecordKind::AuditHead => "audit-head",
        }
    }
}

/// A key-encryption key: seals every record at rest. Rotated to crypto-shred destroyed keys.
///
/// The id is public (it is in every record header); the key is wiped on drop, never printed and
/// not cloneable.
pub struct Kek {
    id: u32,
    key: Zeroizing<[u8; 32]>,
}

impl Kek {
    /// A fresh random KEK, for keyring creation and rotation.
    pub fn generate(id: u32) -> Result<Kek> {
        Ok(Kek {
            id,
            key: random_key()?,
        })
    }

    /// A KEK from known bytes (32), for unwrapping from the keyring and for test vectors.
    pub fn from_secret(id: u32, secret: &SecretBytes) -> Result<Kek> {
        Ok(Kek {
            id,
            key: key_from_secret("kek", secret)?,
        })
    }

    /// The id written into every record this KEK seals, so the right KEK can be found.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Seals `plaintext` as record `record_id` of `kind` with a fresh random nonce.
    ///
    /// The 24-byte random nonce makes collisions negligible without any counter state, which a
    /// crash could otherwise roll back.
    pub fn seal(&self, kind: RecordKind, record_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = random_array()?;
        let aad = record_aad(kind, record_id, self.id)?;
        let ct = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Malformed("plaintext (too long to seal)"))?;
        let mut out = Vec::with_capacity(SEALED_HEADER_LEN + ct.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a record sealed by [`Kek::seal`] under the same kind and id.
    ///
    /// Checks, in order: format and version, that the header names this KEK
    /// ([`CryptoError::UnknownKek`] otherwise), then authentication
    /// ([`CryptoError::IntegrityFailed`]).
    pub fn open(&self, kind: RecordKind, record_id: &[u8], sealed: &[u8]) -> Result<SecretBytes> {
        let (kek_id, nonce, ct) = parse_sealed(sealed)?;
        if kek_id != self.id {
            return Err(CryptoError::UnknownKek(kek_id));
        }
        let aad = record_aad(kind, record_id, kek_id)?;
        let pt = self
            .cipher()
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| CryptoError::IntegrityFailed { kind: kind.label() })?;
        Ok(SecretBytes::new(pt))
    }

    /// The raw key, for wrapping it into the keyring.
    pub(crate) fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// A second handle on the same KEK, for building a new `Unsealed` during rotation without
    /// exposing `Clone` publicly.
    pub(crate) fn duplicate(&self) -> Kek {
        Kek {
            id: self.id,
            key: self.key.clone(),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.key).into())
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("key", &format_args!("[redacted]"))
            .finish()
    }
}

/// The KEK id in a sealed record's header, so the caller can pick the KEK (or report which
/// one is missing) before opening.
pub fn sealed_kek_id(sealed: &[u8]) -> Result<u32> {
    parse_sealed(sealed).map(|(id, _, _)| id)
}

/// Length of [`seal_fingerprint`]'s result: a nonce and a tag.
pub const SEAL_FINGERPRINT_LEN: usize = NONCE_LEN + TAG_LEN;

/// Identifies one act of sealing: the record's nonce and tag. Every [`Kek::seal`] draws a fresh
/// random 192-bit nonce, so two sealings (even of the same plaintext under the same KEK) differ
/// here, and a record whose fingerprint is unchanged is the record that was read. Lets a
/// caller that must notice a rewrite keep 40 bytes instead of the whole record. Says nothing
/// of authenticity: the record is not opened.
pub fn seal_fingerprint(sealed: &[u8]) -> Result<[u8; SEAL_FINGERPRINT_LEN]> {
    let (_, nonce, ct) = parse_sealed(sealed)?;
    let tag = ct
        .len()
        .checked_sub(TAG_LEN)
        .and_then(|at| ct.get(at..))
        .ok_or(CryptoError::Malformed(
            "sealed record (shorter than its tag)",
        ))?;
    let mut out = [0u8; SEAL_FINGERPRINT_LEN];
    out[..NONCE_LEN].copy_from_slice(&nonce);
    out[NONCE_LEN..].copy_from_slice(tag);
    Ok(out)
}

/// Splits a sealed record into KEK id, nonce and ciphertext-with-tag.
fn parse_sealed(sealed: &[u8]) -> Result<(u32, [u8; NONCE_LEN], &[u8])> {
    let Some(&version) = sealed.first() else {
        return Err(CryptoError::Malformed("sealed record (empty)"));
    };
    if version != SEALED_VERSION {
        return Err(CryptoError::UnsupportedVersion {
            what: "sealed record",
            version,
        });
    }
    if sealed.len() < SEALED_MIN_LEN {
        return Err(CryptoError::Malformed("sealed record (truncated)"));
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&sealed[1..5]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[5..SEALED_HEADER_LEN]);
    Ok((u32::from_be_bytes(id), nonce, &sealed[SEALED_HEADER_LEN..]))
}

/// `"lockbox/v1/record" 0x00 label 0x00 len(record_id):u32 record_id kek_id:u32` (SPEC.md).
///
/// The length prefix keeps the encoding injective; the label cannot contain 0x00.
fn record_aad(kind: RecordKind, record_id: &[u8], kek_id: u32) -> Result<Vec<u8>> {
    let label = kind.label().as_bytes();
    let mut aad = Vec::with_capacity(SEAL_AAD_LABEL.len() + label.len() + record_id.len() + 10);
    aad.extend_from_slice(SEAL_AAD_LABEL);
    aad.push(0);
    aad.extend_from_slice(label);
    aad.push(0);
    crate::wire::put_len_prefixed(&mut aad, record_id, "record id (longer than 4 GiB)")?;
    aad.extend_from_slice(&kek_id.to_be_bytes());
    Ok(aad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kek(id: u32, byte: u8) -> Kek {
        Kek::from_secret(id, &SecretBytes::new(vec![byte; 32])).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = Kek::generate(7).unwrap();
        let sealed = k.seal(RecordKind::Material, b"key-1", b"secret").unwrap();
        assert_eq!(sealed.len(), SEALED_MIN_LEN + 6);
        assert_eq!(sealed[0], SEALED_VERSION);
        assert_eq!(sealed_kek_id(&sealed).unwrap(), 7);
        let pt = k.open(RecordKind::Material, b"key-1", &sealed).unwrap();
        assert_eq!(pt.expose_secret(), b"secret");
    }

    #[test]
    fn empty_plaintext_and_id_round_trip() {
        let k = kek(1, 1);
        let sealed = k.seal(RecordKind::KeyMeta, b"", b"").unwrap();
        assert!(
            k.open(RecordKind::KeyMeta, b"", &sealed)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn fingerprints_tell_sealings_apart_and_refuse_short_records() {
        let k = kek(1, 1);
        let a = k.seal(RecordKind::KeyMeta, b"id", b"same").unwrap();
        let b = k.seal(RecordKind::KeyMeta, b"id", b"same").unwrap();
        let fa = seal_fingerprint(&a).unwrap();
        assert_eq!(fa, seal_fingerprint(&a.clone()).unwrap());
        assert_ne!(fa, seal_fingerprint(&b).unwrap());
        assert_eq!(&fa[..NONCE_LEN], &a[5..SEALED_HEADER_LEN]);
        assert_eq!(&fa[NONCE_LEN..], &a[a.len() - TAG_LEN..]);
        assert!(seal_fingerprint(&a[..SEALED_MIN_LEN - 1]).is_err());
        assert!(seal_fingerprint(&[]).is_err());
    }

    #[test]
    fn nonces_are_fresh() {
        let k = kek(1, 1);
        let a = k.seal(RecordKind::Material, b"id", b"same").unwrap();
        let b = k.seal(RecordKind::Material, b"id", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_kek_fails() {
        let sealed = kek(1, 1).seal(RecordKind::Material, b"id", b"x").unwrap();
        assert!(matches!(
            kek(1, 2).open(RecordKind::Material, b"id", &sealed),
            Err(CryptoError::IntegrityFailed { kind: "material" })
        ));
        assert!(matches!(
            kek(2, 1).open(RecordKind::Material, b"id", &sealed),
            Err(CryptoError::UnknownKek(1))
        ));
    }

    #[test]
    fn relabelled_kek_id_fails() {
        let k1 = kek(1, 1);
        let k2 = kek(2, 1); // same bytes: only the AAD's kek id tells them apart
        let mut sealed = k1.seal(RecordKind::Material, b"id", b"x").unwrap();
        sealed[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(
            k2.open(RecordKind::Material, b"id", &sealed),
            Err(CryptoError::IntegrityFailed { .. })
        ));
    }

    #[test]
    fn swapped_id_or_kind_fails() {
        let k = kek(1, 1);
        let sealed = k.seal(RecordKind::Material, b"key-a", b"x").unwrap();
        assert!(matches!(
            k.open(RecordKind::Material, b"key-b", &sealed),
            Err(CryptoError::IntegrityFailed { .. })
        ));
        assert!(matches!(
            k.open(RecordKind::KeyMeta, b"key-a", &sealed),
            Err(CryptoError::IntegrityFailed { kind: "key-meta" })
        ));
        // The length prefix stops "ab"+"c" from aliasing "a"+"bc" across the id boundary.
        assert_ne!(
            record_aad(RecordKind::Material, b"ab", 1).unwrap(),
            record_aad(RecordKind::Material, b"a", 1).unwrap()
        );
    }

    #[test]
    fn header_checks() {
        let k = kek(1, 1);
        let sealed = k.seal(RecordKind::Material, b"id", b"x").unwrap();
        assert!(matches!(
            k.open(RecordKind::Material, b"id", &[]),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            k.open(RecordKind::Material, b"id", &sealed[..SEALED_MIN_LEN - 1]),
            Err(CryptoError::Malformed(_))
        ));
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert!(matches!(
            sealed_kek_id(&v2),
            Err(CryptoError::UnsupportedVersion { version: 2, .. })
        ));
    }

    #[test]
    fn labels_are_distinct() {
        let kinds = [
            RecordKind::KeyMeta,
            RecordKind::Material,
            RecordKind::NodeHpke,
            RecordKind::NodeSigning,
            RecordKind::AuditHead,
        ];
        for (i, a) in kinds.iter().enumerate() {
            assert!(!a.label().contains('\0'));
            for b in &kinds[i + 1..] {
                assert_ne!(a.label(), b.label());
            }
        }
    }

    #[test]
    fn debug_is_redacted() {
        let d = format!("{:?}", kek(9, 0xab));
        assert!(d.contains("redacted") && d.contains('9'));
        assert!(!d.contains("171") && !d.to_lowercase().contains("ab, "));
    }

    mod props {
        #![allow(clippy::unwrap_used)]
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_single_byte_change_fails(
                pt in proptest::collection::vec(any::<u8>(), 0..64),
                id in proptest::collection::vec(any::<u8>(), 0..16),
                pos in any::<prop::sample::Index>(),
                flip in 1u8..=255,
            ) {
                let k = kek(3, 5);
                let mut sealed = k.seal(RecordKind::Material, &id, &pt).unwrap();
                let i = pos.index(sealed.len());
                sealed[i] ^= flip;
                prop_assert!(k.open(RecordKind::Material, &id, &sealed).is_err());
            }

            #[test]
            fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
                let _ = kek(1, 1).open(RecordKind::Material, b"id", &bytes);
            }
        }
    }
}
