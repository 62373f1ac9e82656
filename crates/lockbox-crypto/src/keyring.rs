//! The keyring file: the root secret wrapped by the unseal secret, and the KEKs wrapped by the
//! root secret (SPEC.md "Keyring file", DESIGN.md §5.4).
//!
//! The daemon reads and writes the file (atomically); this module only derives keys and
//! encodes, decodes and checks bytes. A keyring value is immutable: rotation steps return a
//! new one, so the caller can persist it before switching over.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{CryptoError, Result};
use crate::seal::{Kek, RecordKind, sealed_kek_id};
use crate::secret::{SecretBytes, random_array, random_key};
use crate::wire::Reader;

/// File magic, so a wrong file is reported as such rather than as a wrong secret.
pub const KEYRING_MAGIC: &[u8; 4] = b"LBKR";
/// Keyring format version.
pub const KEYRING_VERSION: u8 = 0x01;
/// HKDF info deriving the unseal key from a key file.
pub const UNSEAL_KEYFILE_INFO: &[u8] = b"lockbox/v1/unseal/keyfile";
/// Leading label of the root-secret wrap AAD.
pub const ROOT_WRAP_AAD_LABEL: &[u8] = b"lockbox/v1/keyring-root";
/// HKDF info deriving the KEK-wrapping key from the root secret, and leading label of each
/// wrapped KEK's AAD.
pub const KEK_WRAP_LABEL: &[u8] = b"lockbox/v1/kek-wrap";
/// Required length of an unseal key file.
pub const KEYFILE_LEN: usize = 32;

const SALT_LEN: usize = 16;
/// nonce (24) || ciphertext of a 32-byte key (32) || tag (16).
const WRAPPED_LEN: usize = 24 + 32 + 16;
/// magic, version, method, three argon2 u32s, salt: also the root wrap's AAD body.
const HEADER_LEN: usize = 4 + 1 + 1 + 12 + SALT_LEN;

/// How the root secret is unsealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsealMethod {
    /// A 32-byte random key file (auto-unseal); stretched with HKDF since it is already uniform.
    Keyfile,
    /// A human passphrase, stretched with Argon2id to resist guessing.
    Passphrase,
}

impl UnsealMethod {
    /// Stable name for config, errors and status output.
    pub fn as_str(&self) -> &'static str {
        match self {
            UnsealMethod::Keyfile => "keyfile",
            UnsealMethod::Passphrase => "passphrase",
        }
    }

    fn code(self) -> u8 {
        match self {
            UnsealMethod::Keyfile => 1,
            UnsealMethod::Passphrase => 2,
        }
    }
}

/// The secret an operator (or auto-unseal) presents; borrowed so it stays in its owner's
/// zeroizing buffer.
#[derive(Debug)]
pub enum UnsealSecret<'a> {
    /// Contents of the key file (must be 32 bytes).
    Keyfile(&'a SecretBytes),
    /// The passphrase bytes.
    Passphrase(&'a SecretBytes),
}

impl UnsealSecret<'_> {
    /// Which method this secret is for, to check it against the keyring before any KDF runs.
    pub fn method(&self) -> UnsealMethod {
        match self {
            UnsealSecret::Keyfile(_) => UnsealMethod::Keyfile,
            UnsealSecret::Passphrase(_) => UnsealMethod::Passphrase,
        }
    }
}

/// Argon2id cost parameters for passphrase unseal; stored in the keyring and bound into the
/// root wrap's AAD, so they cannot be downgraded without unseal failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Argon2Params {
    /// Upper bound accepted from a keyring file (4 GiB), so a tampered file cannot make unseal
    /// exhaust memory before the AEAD check can reject it.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    /// Upper bound on passes, for the same reason as [`Self::MAX_MEMORY_KIB`].
    pub const MAX_ITERATIONS: u32 = 64;
    /// Upper bound on lanes, for the same reason as [`Self::MAX_MEMORY_KIB`].
    pub const MAX_PARALLELISM: u32 = 16;

    /// Why these parameters are refused, if they are.
    fn check(&self) -> std::result::Result<(), &'static str> {
        if !(1..=Self::MAX_PARALLELISM).contains(&self.parallelism) {
            return Err("argon2 parallelism must be 1..=16");
        }
        if !(1..=Self::MAX_ITERATIONS).contains(&self.iterations) {
            return Err("argon2 iterations must be 1..=64");
        }
        if self.memory_kib < 8 * self.parallelism || self.memory_kib > Self::MAX_MEMORY_KIB {
            return Err("argon2 memory must be 8 KiB per lane up to 4 GiB");
        }
        Ok(())
    }

    const ZERO: Argon2Params = Argon2Params {
        memory_kib: 0,
        iterations: 0,
        parallelism: 0,
    };
}

impl Default for Argon2Params {
    /// 64 MiB, 3 passes, 1 lane: the RFC 9106 second recommended option, about a quarter of a
    /// second on a server core.
    fn default() -> Self {
        Argon2Params {
            memory_kib: 65536,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// A KEK as stored: its id in clear, its key wrapped under the root secret.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WrappedKek {
    id: u32,
    wrapped: [u8; WRAPPED_LEN],
}

/// The decoded keyring file. Holds only wrapped (encrypted) keys, so it may be cloned and
/// printed.
///
/// Invariants (checked by `decode`): at least one KEK; ids nonzero and strictly ascending; the
/// last (highest) is the current KEK. Making "current" the highest id, instead of a separate
/// field, stops a tampered file from pointing new seals at an old KEK that rotation meant to
/// shred.
#[derive(Debug, Clone)]
pub struct Keyring {
    method: UnsealMethod,
    /// All zero for `Keyfile`, so each keyring has one encoding.
    argon: Argon2Params,
    salt: [u8; SALT_LEN],
    wrapped_root: [u8; WRAPPED_LEN],
    keks: Vec<WrappedKek>,
}

/// The keyring opened: the root secret and every KEK in clear, wiped on drop.
///
/// Invariant: `keks` is non-empty and ascending by id; the last one is current.
pub struct Unsealed {
    root: Zeroizing<[u8; 32]>,
    keks: Vec<Kek>,
}

impl Unsealed {
    /// The KEK that seals new records.
    pub fn current_kek(&self) -> &Kek {
        &self.keks[self.keks.len() - 1]
    }

    /// The KEK with this id, if the keyring still holds it.
    pub fn kek(&self, id: u32) -> Option<&Kek> {
        self.keks.iter().find(|k| k.id() == id)
    }

    /// Seals a new record under the current KEK.
    pub fn seal(&self, kind: RecordKind, record_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        self.current_kek().seal(kind, record_id, plaintext)
    }

    /// Opens a record under whichever KEK its header names, so records sealed before and
    /// after a rotation started can both be read; [`CryptoError::UnknownKek`] once that KEK
    /// was dropped.
    pub fn open(&self, kind: RecordKind, record_id: &[u8], sealed: &[u8]) -> Result<SecretBytes> {
        let id = sealed_kek_id(sealed)?;
        self.kek(id)
            .ok_or(CryptoError::UnknownKek(id))?
            .open(kind, record_id, sealed)
    }

    /// Ids of the KEKs held, ascending.
    pub fn kek_ids(&self) -> Vec<u32> {
        self.keks.iter().map(Kek::id).collect()
    }
}

impl fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsealed")
            .field("root", &format_args!("[redacted]"))
            .field("keks", &self.keks)
            .finish()
    }
}

impl Keyring {
    /// A new keyring with a fresh random root secret and KEK 1, for `lockboxd init`.
    ///
    /// `argon` applies to passphrases only and is ignored (stored as zero) for a key file.
    pub fn create(secret: UnsealSecret<'_>, argon: Argon2Params) -> Result<(Keyring, Unsealed)> {
        let method = secret.method();
        let argon = match method {
            UnsealMethod::Passphrase => {
                argon
                    .check()
                    .map_err(|reason| CryptoError::Kdf(reason.to_owned()))?;
                argon
            }
            UnsealMethod::Keyfile => Argon2Params::ZERO,
        };
        if let UnsealSecret::Passphrase(p) = secret
            && p.is_empty()
        {
            return Err(CryptoError::Kdf("passphrase is empty".to_owned()));
        }
        let mut keyring = Keyring {
            method,
            argon,
            salt: random_array()?,
            wrapped_root: [0; WRAPPED_LEN],
            keks: Vec::new(),
        };
        let root = random_key()?;
        let unseal_key = keyring.unseal_key(secret)?;
        keyring.wrapped_root = seal_key(&unseal_key, &root, &keyring.root_aad())?;
        let kek = Kek::generate(1)?;
        keyring.keks.push(wrap_kek(&root, &kek)?);
        Ok((
            keyring,
            Unsealed {
                root,
                keks: vec![kek],
            },
        ))
    }

    /// How this keyring is unsealed, so the daemon knows what to ask for.
    pub fn method(&self) -> UnsealMethod {
        self.method
    }

    /// Argon2id parameters, for passphrase keyrings only.
    pub fn argon_params(&self) -> Option<Argon2Params> {
        (self.method == UnsealMethod::Passphrase).then_some(self.argon)
    }

    /// The KEK that seals new records (the highest id).
    pub fn current_kek_id(&self) -> u32 {
        self.keks.last().map_or(0, |k| k.id)
    }

    /// Every KEK id held, ascending; more than one means a rotation is in progress.
    pub fn kek_ids(&self) -> Vec<u32> {
        self.keks.iter().map(|k| k.id).collect()
    }

    /// Opens the keyring with the operator's secret.
    ///
    /// [`CryptoError::UnsealMethodMismatch`] before any KDF runs; a key file of the wrong size
    /// is [`CryptoError::BadLength`]; a secret that does not open the root secret is
    /// [`CryptoError::WrongUnsealSecret`]; a KEK that fails to unwrap under the (right) root
    /// secret was tampered with: [`CryptoError::IntegrityFailed`].
    pub fn unseal(&self, secret: UnsealSecret<'_>) -> Result<Unsealed> {
        let unseal_key = self.unseal_key(secret)?;
        let root = open_key(&unseal_key, &self.wrapped_root, &self.root_aad())
            .ok_or(CryptoError::WrongUnsealSecret)?;
        let keks = self
            .keks
            .iter()
            .map(|w| unwrap_kek(&root, w))
            .collect::<Result<Vec<_>>>()?;
        Ok(Unsealed { root, keks })
    }

    /// Starts a rotation: a fresh KEK with id max+1 becomes current; the old ones stay so
    /// existing records remain readable until they are re-sealed.
    pub fn add_kek(&self, unsealed: &Unsealed) -> Result<(Keyring, Unsealed)> {
        self.check_belongs(unsealed)?;
        if self.keks.len() >= usize::from(u16::MAX) {
            return Err(CryptoError::Malformed(
                "keyring (too many keks: finish the rotation first)",
            ));
        }
        let id = self
            .current_kek_id()
            .checked_add(1)
            .ok_or(CryptoError::Malformed("keyring (kek id space exhausted)"))?;
        let kek = Kek::generate(id)?;
        let mut keyring = self.clone();
        keyring.keks.push(wrap_kek(&unsealed.root, &kek)?);
        let mut keks: Vec<Kek> = unsealed.keks.iter().map(Kek::duplicate).collect();
        keks.push(kek);
        Ok((
            keyring,
            Unsealed {
                root: unsealed.root.clone(),
                keks,
            },
        ))
    }

    /// Ends a rotation: drops every KEK but the current one, so records still sealed under an
    /// old KEK (including destroyed keys a log-structured store keeps) become undecryptable.
    pub fn retain_current_only(&self, unsealed: &Unsealed) -> Result<(Keyring, Unsealed)> {
        self.check_belongs(unsealed)?;
        let mut keyring = self.clone();
        keyring.keks.drain(..keyring.keks.len() - 1);
        Ok((
            keyring,
            Unsealed {
                root: unsealed.root.clone(),
                keks: vec![unsealed.current_kek().duplicate()],
            },
        ))
    }

    /// The file bytes (SPEC.md "Keyring file").
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + WRAPPED_LEN + 2 + self.keks.len() * 76);
        out.extend_from_slice(&self.header());
        out.extend_from_slice(&self.wrapped_root);
        // `add_kek` and `decode` keep the count within u16.
        let n = u16::try_from(self.keks.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for k in &self.keks {
            out.extend_from_slice(&k.id.to_be_bytes());
            out.extend_from_slice(&k.wrapped);
        }
        out
    }

    /// Parses the file strictly: magic, version, method, parameter bounds, KEK ordering, exact
    /// length. Nothing is decrypted here.
    pub fn decode(bytes: &[u8]) -> Result<Keyring> {
        let mut r = Reader::new(bytes, "keyring (truncated)");
        if &r.array::<4>()? != KEYRING_MAGIC {
            return Err(CryptoError::Malformed("keyring (bad magic)"));
        }
        let version = r.u8()?;
        if version != KEYRING_VERSION {
            return Err(CryptoError::UnsupportedVersion {
                what: "keyring",
                version,
            });
        }
        let method = match r.u8()? {
            1 => UnsealMethod::Keyfile,
            2 => UnsealMethod::Passphrase,
            _ => return Err(CryptoError::Malformed("keyring (unknown unseal method)")),
        };
        let argon = Argon2Params {
            memory_kib: r.u32()?,
            iterations: r.u32()?,
            parallelism: r.u32()?,
        };
        match method {
            UnsealMethod::Keyfile if argon != Argon2Params::ZERO => {
                return Err(CryptoError::Malformed(
                    "keyring (argon2 parameters on a keyfile keyring)",
                ));
            }
            UnsealMethod::Passphrase if argon.check().is_err() => {
                return Err(CryptoError::Malformed(
                    "keyring (argon2 parameters out of range)",
                ));
            }
            _ => {}
        }
        let salt = r.array()?;
        let wrapped_root = r.array()?;
        let n = r.u16()?;
        if n == 0 {
            return Err(CryptoError::Malformed("keyring (no kek)"));
        }
        let mut keks: Vec<WrappedKek> = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let id = r.u32()?;
            let wrapped = r.array()?;
            if id <= keks.last().map_or(0, |k| k.id) {
                return Err(CryptoError::Malformed(
                    "keyring (kek ids not ascending from 1)",
                ));
            }
            keks.push(WrappedKek { id, wrapped });
        }
        r.finish("keyring (trailing bytes)")?;
        Ok(Keyring {
            method,
            argon,
            salt,
            wrapped_root,
            keks,
        })
    }

    /// magic || version || method || argon2 params || salt: the file header, and the body of
    /// the root wrap's AAD so none of it can be changed (e.g. weaker parameters) undetected.
    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(KEYRING_MAGIC);
        h[4] = KEYRING_VERSION;
        h[5] = self.method.code();
        h[6..10].copy_from_slice(&self.argon.memory_kib.to_be_bytes());
        h[10..14].copy_from_slice(&self.argon.iterations.to_be_bytes());
        h[14..18].copy_from_slice(&self.argon.parallelism.to_be_bytes());
        h[18..].copy_from_slice(&self.salt);
        h
    }

    fn root_aad(&self) -> Vec<u8> {
        [ROOT_WRAP_AAD_LABEL, &[0u8][..], &self.header()[..]].concat()
    }

    /// Derives the key that wraps the root secret (SPEC.md "Unseal key").
    fn unseal_key(&self, secret: UnsealSecret<'_>) -> Result<Zeroizing<[u8; 32]>> {
        if secret.method() != self.method {
            return Err(CryptoError::UnsealMethodMismatch {
                keyring: self.method.as_str(),
                given: secret.method().as_str(),
            });
        }
        let mut key = Zeroizing::new([0u8; 32]);
        match secret {
            UnsealSecret::Keyfile(file) => {
                if file.len() != KEYFILE_LEN {
                    return Err(CryptoError::BadLength {
                        what: "unseal key file",
                        expected: KEYFILE_LEN,
                        got: file.len(),
                    });
                }
                Hkdf::<Sha256>::new(Some(&self.salt[..]), file.expose_secret())
                    .expand(UNSEAL_KEYFILE_INFO, key.as_mut())
                    .map_err(|e| CryptoError::Kdf(e.to_string()))?;
            }
            UnsealSecret::Passphrase(pass) => {
                let a = &self.argon;
                let params = Params::new(a.memory_kib, a.iterations, a.parallelism, Some(32))
                    .map_err(|e| CryptoError::Kdf(e.to_string()))?;
                Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                    .hash_password_into(pass.expose_secret(), &self.salt, key.as_mut())
                    .map_err(|e| CryptoError::Kdf(e.to_string()))?;
            }
        }
        Ok(key)
    }

    /// Refuses an `Unsealed` from another keyring (or another rotation step), which would
    /// otherwise produce a keyring whose KEKs no unseal secret can open.
    fn check_belongs(&self, unsealed: &Unsealed) -> Result<()> {
        if self.kek_ids() != unsealed.kek_ids() {
            return Err(CryptoError::Malformed(
                "unsealed keyring state (kek ids differ from this keyring)",
            ));
        }
        for w in &self.keks {
            unwrap_kek(&unsealed.root, w).map_err(|_| {
                CryptoError::Malformed("unsealed keyring state (root secret of another keyring)")
            })?;
        }
        Ok(())
    }
}

/// The key that wraps KEKs, derived so the root secret itself never keys an AEAD directly
/// and can later derive other keys under other labels.
fn kek_wrap_key(root: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, root)
        .expand(KEK_WRAP_LABEL, key.as_mut())
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(key)
}

/// `"lockbox/v1/kek-wrap" 0x00 kek_id:u32`: a wrapped KEK cannot be relabelled with another id.
fn kek_aad(id: u32) -> Vec<u8> {
    [KEK_WRAP_LABEL, &[0u8][..], &id.to_be_bytes()[..]].concat()
}

fn wrap_kek(root: &[u8; 32], kek: &Kek) -> Result<WrappedKek> {
    Ok(WrappedKek {
        id: kek.id(),
        wrapped: seal_key(&*kek_wrap_key(root)?, kek.key_bytes(), &kek_aad(kek.id()))?,
    })
}

fn unwrap_kek(root: &[u8; 32], w: &WrappedKek) -> Result<Kek> {
    let key = open_key(&*kek_wrap_key(root)?, &w.wrapped, &kek_aad(w.id)).ok_or(
        CryptoError::IntegrityFailed {
            kind: "wrapped-kek",
        },
    )?;
    Kek::from_secret(w.id, &SecretBytes::new(key.to_vec()))
}

/// XChaCha20-Poly1305 of a 32-byte key under `key` with a random nonce: nonce || ct || tag.
fn seal_key(key: &[u8; 32], secret: &[u8; 32], aad: &[u8]) -> Result<[u8; WRAPPED_LEN]> {
    let nonce: [u8; 24] = random_array()?;
    let ct = XChaCha20Poly1305::new(key.into())
        .encrypt(&XNonce::from(nonce), Payload { msg: secret, aad })
        .map_err(|_| CryptoError::Malformed("key wrap input"))?;
    let mut out = [0u8; WRAPPED_LEN];
    out[..24].copy_from_slice(&nonce);
    out[24..].copy_from_slice(&ct);
    Ok(out)
}

/// Inverse of [`seal_key`]; `None` means authentication failed, which each caller names.
fn open_key(
    key: &[u8; 32],
    wrapped: &[u8; WRAPPED_LEN],
    aad: &[u8],
) -> Option<Zeroizing<[u8; 32]>> {
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&wrapped[..24]);
    let pt = Zeroizing::new(
        XChaCha20Poly1305::new(key.into())
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &wrapped[24..],
                    aad,
                },
            )
            .ok()?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    // The format fixes the ciphertext length, so this only guards the invariant.
    (pt.len() == out.len()).then(|| out.copy_from_slice(&pt))?;
    Some(out)
}

#[cfg(test)]
mod tests;
