//! End-to-end key wrapping for transfers (SPEC.md "Transfer wrapping", DESIGN.md §7).
//!
//! The source seals a batch of keys to the destination's attested X25519 key: one HPKE Base
//! mode encapsulation per batch (RFC 9180; the grant id, batch number and both nodes in
//! `info`), then one AEAD seal per key in that context, its key id and version in the AAD. The
//! context's sequence number fixes each key's position. Base mode authenticates nobody, so the
//! source signs the whole batch with its attested Ed25519 key ([`sign_batch`]) and the
//! destination checks that signature before it trusts anything it opens
//! ([`verify_and_open_batch`]). Everything HPKE does is `hpke`'s; this module only builds the
//! labelled inputs and enforces the bounds.

use std::collections::HashSet;
use std::convert::Infallible;

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::rand_core::{TryCryptoRng, TryRng};
use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};

use crate::attestation::HPKE_KEM_X25519;
use crate::error::{CryptoError, Result};
use crate::identity::{HpkeIdentity, SigningIdentity, verify_signature};
use crate::secret::{SecretBytes, random_key};
use crate::trust::printable;

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// Signature domain of a transfer batch ([`batch_message`]).
pub const TRANSFER_BATCH_DOMAIN: &str = "lockbox/v1/transfer-batch";
/// Leading label of a batch's HPKE `info` ([`transfer_info`]).
pub const TRANSFER_INFO_LABEL: &str = "lockbox/v1/transfer";
/// Leading label of each wrapped key's AAD ([`transfer_key_aad`]).
pub const TRANSFER_KEY_LABEL: &str = "lockbox/v1/transfer-key";

/// Suite id as carried on the wire: `(kem << 32) | (kdf << 16) | aead`, so X-Wing can be added
/// later. This one is DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
pub const SUITE_X25519_SHA256_CHACHA20: u64 = (0x0020 << 32) | (0x0001 << 16) | 0x0003;

// The wire id must be the suite `hpke` runs, and its KEM the one attestations carry.
const _: () = assert!(
    SUITE_X25519_SHA256_CHACHA20
        == ((<Kem as hpke::Kem>::KEM_ID as u64) << 32)
            | ((<Kdf as hpke::kdf::Kdf>::KDF_ID as u64) << 16)
            | <Aead as hpke::aead::Aead>::AEAD_ID as u64
);
const _: () = assert!(SUITE_X25519_SHA256_CHACHA20 >> 32 == HPKE_KEM_X25519 as u64);

/// Most keys in one batch: bounds the work and memory one message can demand.
pub const MAX_BATCH_KEYS: usize = 10_000;
/// Longest key material wrapped (64 bytes suits AES-XTS-512); the shortest is 1 byte.
pub const MAX_MATERIAL_LEN: usize = 64;
/// Longest key id, in bytes (key ids are UUIDs, 36 bytes); the shortest is 1 byte.
pub const MAX_KEY_ID_LEN: usize = 255;
/// Longest node name, in bytes; the shortest is 1 byte. Keeps `info` far below hpke's limit.
pub const MAX_NODE_NAME_LEN: usize = 255;
/// Length of the encapsulated key of DHKEM(X25519, HKDF-SHA256).
pub const HPKE_ENC_LEN: usize = 32;
/// ChaCha20-Poly1305 tag appended to each wrapped key.
pub const TRANSFER_TAG_LEN: usize = 16;
/// Longest encoded attributes of one key ([`key_attributes`]): 64 labels of a 128-byte name
/// and a 1,024-byte value, with room to spare. Bounds what one key can make a verifier hash.
pub const MAX_ATTRIBUTES_LEN: usize = 96 * 1024;
/// The batch signature format this code signs and verifies: 1 = the message covers each key's
/// attributes. Carried in the wire batch so a destination can tell a source that signs the
/// earlier format (0: no attributes) from a forged batch and say so.
pub const TRANSFER_BATCH_FORMAT: u32 = 1;

/// What a batch is bound to besides its keys: the grant it executes, its place in the
/// transfer, and the two nodes. Both ends build it from the verified grant, never from the
/// batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchContext<'a> {
    /// The grant's 16-byte id.
    pub grant_id: &'a [u8; 16],
    /// The batch number within the transfer (the caller numbers them, e.g. from 0).
    pub batch: u32,
    /// The sending node, as named in the grant.
    pub source_node: &'a str,
    /// The receiving node, as named in the grant.
    pub dest_node: &'a str,
}

/// One key version to seal. No `Debug`: it holds a secret.
pub struct KeyToWrap<'a> {
    /// The key id.
    pub key_id: &'a str,
    /// The key version.
    pub version: u32,
    /// The material, 1 to [`MAX_MATERIAL_LEN`] bytes.
    pub material: &'a SecretBytes,
    /// What travels beside the material and the destination stores with it (labels, clone
    /// policy, version state, current flag), encoded by [`key_attributes`]. Not secret, so not
    /// sealed, but signed: the batch signature covers it.
    pub attributes: &'a [u8],
}

/// One wrapped key version: the material sealed in its batch's HPKE context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// The key id (also in the AAD).
    pub key_id: String,
    /// The key version (also in the AAD).
    pub version: u32,
    /// ChaCha20-Poly1305 ciphertext || 16-byte tag.
    pub ciphertext: Vec<u8>,
    /// The key's attributes as [`key_attributes`] encodes them: covered by the batch
    /// signature. A destination rebuilds them from the metadata that arrived, so metadata
    /// changed in transit fails the signature.
    pub attributes: Vec<u8>,
}

/// A sealed batch as it travels: the suite, the HPKE encapsulated key and the keys in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBatch {
    /// [`SUITE_X25519_SHA256_CHACHA20`], the only suite so far.
    pub suite: u64,
    /// The HPKE encapsulated key ([`HPKE_ENC_LEN`] bytes).
    pub enc: Vec<u8>,
    /// The keys, in the order they were sealed (the order matters).
    pub keys: Vec<SealedKey>,
}

/// HPKE `info` of a batch:
/// `"lockbox/v1/transfer" || 0x00 || grant_id || u32(batch) || lp(source) || lp(dest)`.
///
/// The context must pass the node-name bounds (as [`seal_batch`] and [`open_batch`] check
/// first), so every length fits its `u32`.
pub fn transfer_info(ctx: &BatchContext<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        TRANSFER_INFO_LABEL.len() + 1 + 16 + 4 + 8 + ctx.source_node.len() + ctx.dest_node.len(),
    );
    out.extend_from_slice(TRANSFER_INFO_LABEL.as_bytes());
    out.push(0);
    out.extend_from_slice(ctx.grant_id);
    out.extend_from_slice(&ctx.batch.to_be_bytes());
    lp(&mut out, ctx.source_node.as_bytes());
    lp(&mut out, ctx.dest_node.as_bytes());
    out
}

/// AAD of one wrapped key: `"lockbox/v1/transfer-key" || 0x00 || lp(key_id) || u32(version)`.
pub fn transfer_key_aad(key_id: &str, version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(TRANSFER_KEY_LABEL.len() + 1 + 4 + key_id.len() + 4);
    out.extend_from_slice(TRANSFER_KEY_LABEL.as_bytes());
    out.push(0);
    lp(&mut out, key_id.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out
}

/// Seals `keys`, in order, to the destination's HPKE public key (from its verified
/// attestation): one encapsulation for the batch, one AEAD seal per key.
///
/// Refuses, before any cryptography, with [`CryptoError::BadBatch`]: a node name that is empty
/// or longer than [`MAX_NODE_NAME_LEN`]; no keys or more than [`MAX_BATCH_KEYS`]; a key id that
/// is empty or longer than [`MAX_KEY_ID_LEN`]; material that is empty or longer than
/// [`MAX_MATERIAL_LEN`]; the same key id and version twice. A recipient key whose Diffie-Hellman
/// result is zero (a low-order point) is also `BadBatch`.
pub fn seal_batch(
    dest_hpke_public: &[u8; 32],
    ctx: &BatchContext<'_>,
    keys: &[KeyToWrap<'_>],
) -> Result<SealedBatch> {
    let ikm = random_key()?;
    seal_with_ephemeral_ikm(dest_hpke_public, ctx, keys, &ikm)
}

/// [`seal_batch`] with the ephemeral key derived from `ephemeral_ikm` (RFC 9180
/// `DeriveKeyPair`) instead of fresh randomness, so test vectors are reproducible.
///
/// Only with the `test-vectors` feature. Never use it to send keys: sealing two batches with
/// the same `ephemeral_ikm`, recipient and context reuses the AEAD key and nonces.
#[cfg(feature = "test-vectors")]
pub fn seal_batch_deterministic(
    dest_hpke_public: &[u8; 32],
    ctx: &BatchContext<'_>,
    keys: &[KeyToWrap<'_>],
    ephemeral_ikm: &[u8; 32],
) -> Result<SealedBatch> {
    seal_with_ephemeral_ikm(dest_hpke_public, ctx, keys, ephemeral_ikm)
}

fn seal_with_ephemeral_ikm(
    dest_hpke_public: &[u8; 32],
    ctx: &BatchContext<'_>,
    keys: &[KeyToWrap<'_>],
    ephemeral_ikm: &[u8; 32],
) -> Result<SealedBatch> {
    let bad = |reason: String| CryptoError::BadBatch {
        batch: ctx.batch,
        reason,
    };
    check_context(ctx)?;
    check_count(ctx, keys.len())?;
    let mut seen = HashSet::with_capacity(keys.len());
    for k in keys {
        check_key_id(ctx, k.key_id, k.version)?;
        let n = k.material.len();
        if !(1..=MAX_MATERIAL_LEN).contains(&n) {
            return Err(bad(format!(
                "{}: material is {n} bytes, not 1 to {MAX_MATERIAL_LEN}",
                key_name(k.key_id, k.version)
            )));
        }
        if !seen.insert((k.key_id, k.version)) {
            return Err(bad(format!(
                "{}: appears twice",
                key_name(k.key_id, k.version)
            )));
        }
        if k.attributes.len() > MAX_ATTRIBUTES_LEN {
            return Err(bad(format!(
                "{}: attributes are {} bytes, more than {MAX_ATTRIBUTES_LEN}",
                key_name(k.key_id, k.version),
                k.attributes.len()
            )));
        }
    }

    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(dest_hpke_public)
        .map_err(|_| bad("recipient hpke public key rejected".into()))?;
    let mut rng = EphemeralIkm::new(ephemeral_ikm);
    let (enc, mut sender) = hpke::setup_sender_with_rng::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &pk,
        &transfer_info(ctx),
        &mut rng,
    )
    .map_err(|_| bad("hpke encapsulation failed (recipient key is a low-order point)".into()))?;
    if !rng.used_exactly_once() {
        // hpke's DHKEM draws one private key's worth; anything else means the ephemeral key
        // was not what this code assumes, so nothing sealed with it is sent.
        return Err(bad("hpke did not draw exactly one ephemeral key".into()));
    }

    let mut sealed = Vec::with_capacity(keys.len());
    for k in keys {
        let ciphertext = sender
            .seal(
                k.material.expose_secret(),
                &transfer_key_aad(k.key_id, k.version),
            )
            .map_err(|_| {
                bad(format!(
                    "{}: hpke seal failed",
                    key_name(k.key_id, k.version)
                ))
            })?;
        sealed.push(SealedKey {
            key_id: k.key_id.to_owned(),
            version: k.version,
            ciphertext,
            attributes: k.attributes.to_vec(),
        });
    }
    Ok(SealedBatch {
        suite: SUITE_X25519_SHA256_CHACHA20,
        enc: enc.to_bytes().to_vec(),
        keys: sealed,
    })
}

/// Opens every key of `batch`, in order, with this node's HPKE key (SPEC.md "Transfer
/// wrapping", "Opening").
///
/// Base mode does not authenticate the sender, and a batch cut short after its last key
/// still opens: call [`verify_batch`] first, or use [`verify_and_open_batch`].
///
/// Checks, in order, the first failure returned: the suite
/// ([`CryptoError::UnsupportedSuite`]); the node names ([`CryptoError::BadBatch`]); `enc` is
/// 32 bytes ([`CryptoError::BadLength`]); 1 to [`MAX_BATCH_KEYS`] keys, then per key in order
/// its id length, a ciphertext of 17 to 80 bytes and no repeated (key id, version)
/// (`BadBatch`); the decapsulation (`BadBatch`); then each key's AEAD open, in order
/// ([`CryptoError::UnwrapFailed`] naming the key). On any error no key is returned; those
/// already opened are wiped.
pub fn open_batch(
    identity: &HpkeIdentity,
    ctx: &BatchContext<'_>,
    batch: &SealedBatch,
) -> Result<Vec<(String, u32, SecretBytes)>> {
    check_batch(ctx, batch)?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&batch.enc)
        .map_err(|_| bad_enc_length(batch))?;
    let sk = identity.hpke_private_key()?;
    let mut receiver =
        hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &sk, &enc, &transfer_info(ctx))
            .map_err(|_| CryptoError::BadBatch {
                batch: ctx.batch,
                reason: "hpke decapsulation failed (enc is a low-order point)".into(),
            })?;
    drop(sk);

    let mut opened = Vec::with_capacity(batch.keys.len());
    for k in &batch.keys {
        // Verify-then-decrypt: on failure nothing is decrypted; on success the plaintext moves
        // into a SecretBytes without another copy.
        let material = receiver
            .open(&k.ciphertext, &transfer_key_aad(&k.key_id, k.version))
            .map_err(|_| CryptoError::UnwrapFailed {
                key_id: printable(&k.key_id),
                version: k.version,
                batch: ctx.batch,
            })?;
        opened.push((k.key_id.clone(), k.version, SecretBytes::new(material)));
    }
    Ok(opened)
}

/// The bytes the source signs with its attested Ed25519 key (SPEC.md "Batch signature"):
///
/// ```text
/// grant_id (16) || u32(batch) || lp(source_node) || lp(dest_node) || u64(suite) || lp(enc)
///   || u32(n) || n × ( lp(key_id) || u32(version) || lp(ciphertext) )
/// ```
///
/// The signature covers `"lockbox/v1/transfer-batch" || 0x00 || message`
/// ([`TRANSFER_BATCH_DOMAIN`]; [`SigningIdentity::sign`] adds the label). Lengths are those of
/// a batch that passes [`verify_batch`]'s checks, which it makes before building this.
pub fn batch_message(ctx: &BatchContext<'_>, batch: &SealedBatch) -> Vec<u8> {
    let keys_len: usize = batch
        .keys
        .iter()
        .map(|k| 16 + k.key_id.len() + k.ciphertext.len() + k.attributes.len())
        .sum();
    let mut out = Vec::with_capacity(
        16 + 4
            + 8
            + ctx.source_node.len()
            + ctx.dest_node.len()
            + 8
            + 4
            + batch.enc.len()
            + 4
            + keys_len,
    );
    out.extend_from_slice(ctx.grant_id);
    out.extend_from_slice(&ctx.batch.to_be_bytes());
    lp(&mut out, ctx.source_node.as_bytes());
    lp(&mut out, ctx.dest_node.as_bytes());
    out.extend_from_slice(&batch.suite.to_be_bytes());
    lp(&mut out, &batch.enc);
    out.extend_from_slice(&len_u32(batch.keys.len()).to_be_bytes());
    for k in &batch.keys {
        lp(&mut out, k.key_id.as_bytes());
        out.extend_from_slice(&k.version.to_be_bytes());
        lp(&mut out, &k.ciphertext);
        lp(&mut out, &k.attributes);
    }
    out
}

/// Encodes what travels beside a wrapped key, for the batch signature (SPEC.md "Transfer
/// wrapping", "Key attributes"):
/// `u8(current) || lp(version_state) || lp(clone_policy) || u32(n) || n × (lp(name) || lp(value))`,
/// labels in byte order of their names.
///
/// Both ends call it: the source on its key's metadata, the destination on the metadata that
/// arrived. Labels are sorted here, so a map's iteration order does not matter.
pub fn key_attributes<'a>(
    current: bool,
    version_state: &str,
    clone_policy: &str,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<u8> {
    let mut labels: Vec<(&str, &str)> = labels.into_iter().collect();
    labels.sort_unstable();
    let len = 1
        + 8
        + version_state.len()
        + clone_policy.len()
        + 4
        + labels
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(u8::from(current));
    lp(&mut out, version_state.as_bytes());
    lp(&mut out, clone_policy.as_bytes());
    out.extend_from_slice(&len_u32(labels.len()).to_be_bytes());
    for (name, value) in labels {
        lp(&mut out, name.as_bytes());
        lp(&mut out, value.as_bytes());
    }
    out
}

/// [`key_attributes`] of a key as it travels: what the source signs for the fields it sends and
/// the destination checks for the fields it received.
pub fn wire_key_attributes(k: &lockbox_proto::v1::WrappedKey) -> Vec<u8> {
    key_attributes(
        k.current,
        &k.version_state,
        &k.clone_policy,
        k.labels.iter().map(|(n, v)| (n.as_str(), v.as_str())),
    )
}

impl SealedBatch {
    /// The batch as it arrived on the wire, each key's attributes rebuilt from the metadata
    /// beside it ([`wire_key_attributes`]): what [`verify_batch`] checks against the signature.
    pub fn from_wire(b: &lockbox_proto::v1::SealedBatch) -> SealedBatch {
        SealedBatch {
            suite: b.suite,
            enc: b.enc.clone(),
            keys: b
                .keys
                .iter()
                .map(|k| SealedKey {
                    key_id: k.key_id.clone(),
                    version: k.version,
                    ciphertext: k.ciphertext.clone(),
                    attributes: wire_key_attributes(k),
                })
                .collect(),
        }
    }
}

/// Signs a sealed batch under [`TRANSFER_BATCH_DOMAIN`] (see [`batch_message`]).
///
/// Signs what it is given: a batch from [`seal_batch`] always passes [`verify_batch`]'s
/// checks.
pub fn sign_batch(
    identity: &SigningIdentity,
    ctx: &BatchContext<'_>,
    batch: &SealedBatch,
) -> [u8; 64] {
    identity.sign(TRANSFER_BATCH_DOMAIN, &batch_message(ctx, batch))
}

/// Checks the batch's shape and then the source's signature over it.
///
/// Errors, in order: the checks of [`open_batch`] that come before the decapsulation (suite,
/// node names, `enc` length, key count, each key's id, ciphertext length and uniqueness); a
/// signature that is not 64 bytes is [`CryptoError::BadLength`]; any other failure (another
/// key, domain or message; a public key that is not a usable Ed25519 key) is
/// [`CryptoError::BadBatchSignature`].
pub fn verify_batch(
    source_signing_public: &[u8; 32],
    ctx: &BatchContext<'_>,
    batch: &SealedBatch,
    signature: &[u8],
) -> Result<()> {
    check_batch(ctx, batch)?;
    verify_signature(
        source_signing_public,
        TRANSFER_BATCH_DOMAIN,
        &batch_message(ctx, batch),
        signature,
    )
    .map_err(|e| match e {
        CryptoError::BadSignature => CryptoError::BadBatchSignature { batch: ctx.batch },
        other => other,
    })
}

/// [`verify_batch`], then [`open_batch`]: what a destination does with each batch it receives.
pub fn verify_and_open_batch(
    identity: &HpkeIdentity,
    source_signing_public: &[u8; 32],
    ctx: &BatchContext<'_>,
    batch: &SealedBatch,
    signature: &[u8],
) -> Result<Vec<(String, u32, SecretBytes)>> {
    verify_batch(source_signing_public, ctx, batch, signature)?;
    open_batch(identity, ctx, batch)
}

/// The checks shared by opening and verifying, cheapest first, before any cryptography.
fn check_batch(ctx: &BatchContext<'_>, batch: &SealedBatch) -> Result<()> {
    if batch.suite != SUITE_X25519_SHA256_CHACHA20 {
        return Err(CryptoError::UnsupportedSuite(batch.suite));
    }
    check_context(ctx)?;
    if batch.enc.len() != HPKE_ENC_LEN {
        return Err(bad_enc_length(batch));
    }
    check_count(ctx, batch.keys.len())?;
    let mut seen = HashSet::with_capacity(batch.keys.len());
    for k in &batch.keys {
        check_key_id(ctx, &k.key_id, k.version)?;
        let n = k.ciphertext.len();
        if !(1 + TRANSFER_TAG_LEN..=MAX_MATERIAL_LEN + TRANSFER_TAG_LEN).contains(&n) {
            return Err(CryptoError::BadBatch {
                batch: ctx.batch,
                reason: format!(
                    "{}: ciphertext is {n} bytes, not {} to {}",
                    key_name(&k.key_id, k.version),
                    1 + TRANSFER_TAG_LEN,
                    MAX_MATERIAL_LEN + TRANSFER_TAG_LEN
                ),
            });
        }
        if !seen.insert((k.key_id.as_str(), k.version)) {
            return Err(CryptoError::BadBatch {
                batch: ctx.batch,
                reason: format!("{}: appears twice", key_name(&k.key_id, k.version)),
            });
        }
        if k.attributes.len() > MAX_ATTRIBUTES_LEN {
            return Err(CryptoError::BadBatch {
                batch: ctx.batch,
                reason: format!(
                    "{}: attributes are {} bytes, more than {MAX_ATTRIBUTES_LEN}",
                    key_name(&k.key_id, k.version),
                    k.attributes.len()
                ),
            });
        }
    }
    Ok(())
}

fn bad_enc_length(batch: &SealedBatch) -> CryptoError {
    CryptoError::BadLength {
        what: "hpke enc",
        expected: HPKE_ENC_LEN,
        got: batch.enc.len(),
    }
}

fn check_context(ctx: &BatchContext<'_>) -> Result<()> {
    for (which, name) in [("source", ctx.source_node), ("destination", ctx.dest_node)] {
        if !(1..=MAX_NODE_NAME_LEN).contains(&name.len()) {
            return Err(CryptoError::BadBatch {
                batch: ctx.batch,
                reason: format!(
                    "{which} node name is {} bytes, not 1 to {MAX_NODE_NAME_LEN}",
                    name.len()
                ),
            });
        }
    }
    Ok(())
}

fn check_count(ctx: &BatchContext<'_>, n: usize) -> Result<()> {
    if !(1..=MAX_BATCH_KEYS).contains(&n) {
        return Err(CryptoError::BadBatch {
            batch: ctx.batch,
            reason: format!("{n} keys, not 1 to {MAX_BATCH_KEYS}"),
        });
    }
    Ok(())
}

fn check_key_id(ctx: &BatchContext<'_>, key_id: &str, version: u32) -> Result<()> {
    if !(1..=MAX_KEY_ID_LEN).contains(&key_id.len()) {
        return Err(CryptoError::BadBatch {
            batch: ctx.batch,
            reason: format!(
                "{}: key id is {} bytes, not 1 to {MAX_KEY_ID_LEN}",
                key_name(key_id, version),
                key_id.len()
            ),
        });
    }
    Ok(())
}

/// "key K version V" for an error message, K escaped and cut (it may come from a peer).
fn key_name(key_id: &str, version: u32) -> String {
    format!("key {} version {version}", printable(key_id))
}

/// Appends `u32(len(bytes)) || bytes`.
fn lp(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&len_u32(bytes.len()).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A length as `u32`. Every length encoded here is bounded far below 4 GiB by the checks
/// that run before any encoding is signed or verified; saturating keeps this total.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Hands `hpke` the ephemeral key's input keying material: exactly 32 bytes, once.
///
/// hpke's DHKEM derives the ephemeral key pair as `DeriveKeyPair(32 random bytes)`; giving it
/// bytes we drew (or fixed, for vectors) keeps RNG failures a [`CryptoError::Random`] instead
/// of hpke's panic, and makes vectors reproducible. A request beyond the 32 bytes gets zeros
/// and is recorded, and the caller then discards the context.
pub(crate) struct EphemeralIkm<'a> {
    ikm: &'a [u8; 32],
    drawn: usize,
    overdrawn: bool,
}

impl<'a> EphemeralIkm<'a> {
    pub(crate) fn new(ikm: &'a [u8; 32]) -> Self {
        Self {
            ikm,
            drawn: 0,
            overdrawn: false,
        }
    }

    fn fill(&mut self, dst: &mut [u8]) {
        let src = self
            .drawn
            .checked_add(dst.len())
            .and_then(|end| self.ikm.get(self.drawn..end));
        match src {
            Some(src) if !self.overdrawn => {
                dst.copy_from_slice(src);
                self.drawn += dst.len();
            }
            _ => {
                self.overdrawn = true;
                dst.fill(0);
            }
        }
    }

    pub(crate) fn used_exactly_once(&self) -> bool {
        !self.overdrawn && self.drawn == self.ikm.len()
    }
}

impl TryRng for EphemeralIkm<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> std::result::Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> std::result::Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

// Cryptographically secure as long as its 32 bytes are: random_key() in seal_batch and
// seal_backup.
impl TryCryptoRng for EphemeralIkm<'_> {}

#[cfg(test)]
mod tests;
