//! Trusted controller keys and the M-of-N signature count shared by grants and attestations
//! (SPEC.md "Controller keys" and "Counting signatures", DESIGN.md §6).
//!
//! Both signed statements are a body plus a list of `(key_id, signature)`. They are counted
//! by one function so that grants and attestations cannot drift apart on the subtle rules:
//! a trusted key whose signature fails is tampering and always fatal, unknown key ids are
//! skipped, and a controller counts once however many times (or under however many key ids)
//! it signs.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::VerifyingKey;
use lockbox_proto::v1::Signature;

use crate::error::{CryptoError, Result};
use crate::identity::verify_signature;

/// Most signatures a grant or attestation may carry.
///
/// Each one costs an Ed25519 verification before the threshold is known, so an unbounded list
/// would let anyone who can submit a grant burn the verifier's CPU.
pub const MAX_SIGNATURES: usize = 32;

/// Prefix of the text form of a controller public key, see [`encode_public_key`].
pub const PUBLIC_KEY_TEXT_PREFIX: &str = "ed25519:";

/// Trusted controller keys: key id -> Ed25519 public key.
///
/// Key ids are the names controllers sign under (`Signature.key_id`); they come from the
/// verifier's configuration, never from the signed statement.
#[derive(Debug, Clone, Default)]
pub struct TrustedControllers {
    keys: BTreeMap<String, [u8; 32]>,
}

impl TrustedControllers {
    /// An empty set, which verifies nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `public_key` under `key_id`, replacing any key already under that id.
    ///
    /// Two ids with the same public key are still one controller: the threshold counts
    /// distinct public keys.
    pub fn insert(&mut self, key_id: String, public_key: [u8; 32]) {
        self.keys.insert(key_id, public_key);
    }

    /// The public key trusted under `key_id`.
    pub fn get(&self, key_id: &str) -> Option<&[u8; 32]> {
        self.keys.get(key_id)
    }

    /// Number of key ids.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key ids and public keys, by key id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8; 32])> {
        self.keys.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Text form of a controller's public key for configs and CLI output:
/// `ed25519:` followed by the 32 bytes in standard, padded base64 (52 characters in all).
///
/// The prefix names the algorithm, so an X25519 key or a hash pasted by mistake is refused
/// rather than trusted.
pub fn encode_public_key(public_key: &[u8; 32]) -> String {
    format!("{PUBLIC_KEY_TEXT_PREFIX}{}", BASE64.encode(public_key))
}

/// Parses a controller public key: `ed25519:<base64>` as [`encode_public_key`] prints it, or
/// exactly 64 hex digits.
///
/// Strict: no surrounding whitespace, canonical padded base64, exactly 32 bytes
/// ([`CryptoError::BadLength`] otherwise), and the key must be a valid Ed25519 point that is
/// not of small order ([`CryptoError::Malformed`]): such a key verifies nothing under strict
/// verification, so it is a configuration mistake worth reporting at load time.
pub fn decode_public_key(text: &str) -> Result<[u8; 32]> {
    let bytes = if let Some(b64) = text.strip_prefix(PUBLIC_KEY_TEXT_PREFIX) {
        BASE64
            .decode(b64)
            .map_err(|_| CryptoError::Malformed("public key (invalid base64 after ed25519:)"))?
    } else if text.len() == 64 {
        hex::decode(text).map_err(|_| CryptoError::Malformed("public key (invalid hex)"))?
    } else {
        return Err(CryptoError::Malformed(
            "public key (expected ed25519:<base64> or 64 hex digits)",
        ));
    };
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::BadLength {
            what: "ed25519 public key",
            expected: 32,
            got: bytes.len(),
        })?;
    match VerifyingKey::from_bytes(&key) {
        Ok(k) if !k.is_weak() => Ok(key),
        Ok(_) => Err(CryptoError::Malformed(
            "public key (small-order ed25519 point)",
        )),
        Err(_) => Err(CryptoError::Malformed("public key (not an ed25519 point)")),
    }
}

/// Why one signature was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignerFault {
    /// The key id is not trusted; skipped unless the threshold fails.
    Unknown,
    /// The key id is trusted and its signature fails: tampering.
    Bad,
}

/// Why a signature list did not reach the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CountFault {
    /// Key id (printable) of the first unknown signer; only when the threshold is not met.
    Unknown(String),
    /// Key id of a trusted signer whose signature failed.
    Bad(String),
    Threshold {
        valid: usize,
        required: usize,
    },
}

/// Checks one signature over `domain || 0x00 || body`; returns the signer's public key.
pub(crate) fn check_signature(
    trusted: &TrustedControllers,
    domain: &str,
    body: &[u8],
    sig: &Signature,
) -> std::result::Result<[u8; 32], SignerFault> {
    let key = trusted.get(&sig.key_id).ok_or(SignerFault::Unknown)?;
    verify_signature(key, domain, body, &sig.signature).map_err(|_| SignerFault::Bad)?;
    Ok(*key)
}

/// Counts valid signatures from distinct trusted controllers (SPEC.md "Counting signatures").
///
/// Every signature is checked, even after the threshold is reached, so a tampered one is
/// never hidden behind enough good ones. Returns the counted key ids, one per distinct
/// public key, in signature order. A `threshold` of 0 is treated as 1: a misconfiguration
/// must not make unsigned statements valid.
pub(crate) fn count_signatures(
    trusted: &TrustedControllers,
    domain: &str,
    body: &[u8],
    signatures: &[Signature],
    threshold: usize,
) -> std::result::Result<Vec<String>, CountFault> {
    let required = threshold.max(1);
    let mut counted: Vec<[u8; 32]> = Vec::new();
    let mut valid_signers = Vec::new();
    let mut first_unknown = None;
    for sig in signatures {
        match check_signature(trusted, domain, body, sig) {
            Ok(key) => {
                if !counted.contains(&key) {
                    counted.push(key);
                    valid_signers.push(sig.key_id.clone());
                }
            }
            Err(SignerFault::Unknown) => {
                first_unknown.get_or_insert_with(|| printable(&sig.key_id));
            }
            Err(SignerFault::Bad) => return Err(CountFault::Bad(sig.key_id.clone())),
        }
    }
    if valid_signers.len() >= required {
        Ok(valid_signers)
    } else if let Some(id) = first_unknown {
        Err(CountFault::Unknown(id))
    } else {
        Err(CountFault::Threshold {
            valid: valid_signers.len(),
            required,
        })
    }
}

/// An untrusted string made safe for an error message or a log line: control characters
/// escaped, at most 64 characters kept.
pub(crate) fn printable(s: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `window` = `[not_before, expires)` contains `now` once `skew` is allowed both ways.
///
/// `Err(true)`: not yet valid (`now + skew < not_before`); `Err(false)`: expired
/// (`now - skew >= expires`). Saturating, so no input overflows.
pub(crate) fn check_window(
    not_before: u64,
    expires: u64,
    now: u64,
    skew: u64,
) -> std::result::Result<(), bool> {
    if now.saturating_add(skew) < not_before {
        Err(true)
    } else if now.saturating_sub(skew) >= expires {
        Err(false)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::identity::SigningIdentity;
    use crate::secret::SecretBytes;

    fn identity(byte: u8) -> SigningIdentity {
        SigningIdentity::from_secret(&SecretBytes::new(vec![byte; 32])).unwrap()
    }

    #[test]
    fn public_key_text_round_trip() {
        let pk = identity(3).public_key();
        let text = encode_public_key(&pk);
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.len(), 52);
        assert_eq!(decode_public_key(&text).unwrap(), pk);
        assert_eq!(decode_public_key(&hex::encode(pk)).unwrap(), pk);
        assert_eq!(
            decode_public_key(&hex::encode(pk).to_uppercase()).unwrap(),
            pk
        );
    }

    #[test]
    fn public_key_text_is_strict() {
        let pk = identity(3).public_key();
        let text = encode_public_key(&pk);
        let malformed = |s: &str| matches!(decode_public_key(s), Err(CryptoError::Malformed(_)));
        assert!(malformed(""));
        assert!(malformed(&format!(" {text}")));
        assert!(malformed(&format!("{text}\n")));
        assert!(malformed(&text.replace("ed25519:", "x25519:")));
        assert!(malformed(&text.replace("ed25519:", "ED25519:")));
        assert!(malformed(&text[..text.len() - 1])); // padding removed
        assert!(malformed(&format!(
            "ed25519:{}",
            BASE64.encode(pk).replace('=', "")
        )));
        assert!(malformed(&hex::encode(pk)[..63]));
        assert!(malformed(&format!("{}g", &hex::encode(pk)[..63])));
        assert!(matches!(
            decode_public_key(&format!("ed25519:{}", BASE64.encode([1u8; 31]))),
            Err(CryptoError::BadLength {
                expected: 32,
                got: 31,
                ..
            })
        ));
        // The identity point (y = 1) is of small order.
        let mut small = [0u8; 32];
        small[0] = 1;
        assert!(malformed(&encode_public_key(&small)));
        assert!(malformed(&hex::encode(not_a_point())));
    }

    /// 32 bytes that do not decompress to an Edwards point.
    fn not_a_point() -> [u8; 32] {
        (2u8..)
            .map(|b| [b; 32])
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .unwrap()
    }

    #[test]
    fn trusted_controllers_basics() {
        let mut t = TrustedControllers::new();
        assert!(t.is_empty());
        t.insert("a".into(), [1; 32]);
        t.insert("b".into(), [2; 32]);
        t.insert("a".into(), [3; 32]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("a"), Some(&[3; 32]));
        assert_eq!(t.get("c"), None);
        let ids: Vec<&str> = t.iter().map(|(k, _)| k).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn printable_escapes_and_truncates() {
        assert_eq!(printable("ctl-1"), "ctl-1");
        assert_eq!(printable("a\nb\u{1b}"), "a\\nb\\u{1b}");
        let long = "x".repeat(100);
        assert_eq!(printable(&long).chars().count(), 65);
    }

    #[test]
    fn window_boundaries() {
        // [100, 200) with skew 10: valid for now in [90, 210).
        assert_eq!(check_window(100, 200, 89, 10), Err(true));
        assert_eq!(check_window(100, 200, 90, 10), Ok(()));
        assert_eq!(check_window(100, 200, 209, 10), Ok(()));
        assert_eq!(check_window(100, 200, 210, 10), Err(false));
        assert_eq!(check_window(100, 200, u64::MAX, u64::MAX), Ok(()));
        assert_eq!(check_window(0, 1, 0, 0), Ok(()));
        assert_eq!(check_window(0, 1, 1, 0), Err(false));
    }
}
