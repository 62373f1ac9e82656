//! Peer-assisted unseal: the sans-I/O core of the `peers` slot (SPEC.md "Peer-assisted unseal
//! (assist)", DESIGN.md §5.5).
//!
//! A lockbox that must restart unattended without its secret on its own disks asks t of n peer
//! lockboxes for help. At enrollment the owner splits the slot key with Shamir ([`split`]) and
//! seals share i to peer i with a McCallum–Relyea exchange on ristretto255, as Tang does
//! ([`enroll`]): it picks a random `c`, keeps `C = c·G` and the share sealed under a key derived
//! from `c·S_i` (`S_i` the peer's assist public key), and forgets `c`. To unseal it sends the
//! peer `X = C + r·G` for a fresh random `r` ([`blind`]); the peer answers `Y = s_i·X`
//! ([`AssistIdentity::answer`]); the owner computes `c·S_i = Y − r·S_i` and opens the share
//! ([`recover`]). `X` is uniformly random, so the peer learns nothing about the owner's share
//! or which enrollment it helps, and it stores nothing per owner; a wrong or tampered answer
//! fails the AEAD and is refused by name. [`PeerSlot`] ties the n exchanges and the Shamir
//! split together for one slot.
//!
//! Everything here is computation over bytes. Asking peers, deciding whom a peer answers
//! (mTLS identity, controller, revocation), auditing and rate-limiting assists, and keeping
//! the assist key file at mode 0600 are the daemon's.

mod shamir;
mod slot;

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::CryptoError;
use crate::secret::{SecretBytes, random_array};
use crate::trust::printable;
use crate::wire::Reader;

#[cfg(any(test, feature = "test-vectors"))]
pub use shamir::split_deterministic;
pub use shamir::{
    MAX_SECRET_LEN, MAX_SHARES, SHAMIR_SHARE_HEADER_LEN, combine, share_index, share_threshold,
    split,
};
pub use slot::{AssistPeer, AssistRequest, PEER_SLOT_VERSION, PeerSlot, SlotUnseal};

/// Magic of the assist key file, so a wrong file is named as such rather than as a bad key.
pub const ASSIST_KEY_MAGIC: &[u8; 4] = b"LBAK";
/// Version of the assist key file format.
pub const ASSIST_KEY_VERSION: u8 = 0x01;
/// Exact length of an assist key file: magic, version, secret scalar, public key.
pub const ASSIST_KEY_FILE_LEN: usize = 4 + 1 + 32 + 32;
/// Version of the enrolled-share format.
pub const ENROLLED_SHARE_VERSION: u8 = 0x01;
/// HKDF info label of the key that seals an enrolled share (followed by `0x00` and the
/// share's header).
pub const ASSIST_SHARE_LABEL: &str = "lockbox/v1/assist-share";
/// HKDF info label deriving a peer's per-owner assist key from its assist key (followed by
/// `0x00` and the owner's node name).
pub const ASSIST_OWNER_LABEL: &str = "lockbox/v1/assist-owner";
/// Bytes of an enrollment id: random, one per slot enrollment, shared by its n shares.
pub const ENROLLMENT_ID_LEN: usize = 16;
/// Longest node name in an enrolled share (as in transfers and backups).
pub const MAX_ASSIST_NODE_LEN: usize = 255;
/// Longest secret one enrolled share seals: a Shamir share of the longest splittable secret.
pub const MAX_ENROLLED_SECRET_LEN: usize = SHAMIR_SHARE_HEADER_LEN + MAX_SECRET_LEN;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// How many times a zero scalar is redrawn before the RNG is declared broken: a zero from a
/// working generator has probability about 2^-252.
const SCALAR_DRAWS: usize = 4;

/// Why an assist key, an enrolled share, a peer slot, an exchange or a Shamir share was
/// refused. Messages are lowercase, name the check, and never contain secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum AssistError {
    /// An assist key file that is not exactly [`ASSIST_KEY_FILE_LEN`] bytes (truncated,
    /// extended, or another file).
    #[error("assist key file must be {ASSIST_KEY_FILE_LEN} bytes, got {0}")]
    KeyFileLength(usize),
    /// The file does not start with [`ASSIST_KEY_MAGIC`]: not an assist key file.
    #[error("not an assist key file (bad magic)")]
    KeyFileMagic,
    /// A format version this build does not read.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which structure.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// A secret scalar that is not below the group order, so it has another encoding.
    #[error("assist secret scalar is not canonical (not below the group order)")]
    NonCanonicalScalar,
    /// A zero secret scalar: its public key is the identity and every answer would be too.
    #[error("assist secret scalar is zero")]
    ZeroScalar,
    /// The key file's public key is not its secret scalar's: the file is corrupt.
    #[error("assist key file is corrupt: its public key does not match its secret scalar")]
    KeyFileMismatch,
    /// 32 bytes that are not the canonical encoding of a ristretto255 point.
    #[error("{what} is not a canonical ristretto255 point encoding")]
    NonCanonicalPoint {
        /// Which point: "peer public key", "commitment", "blinded point", "peer answer".
        what: &'static str,
    },
    /// The identity point where a secret multiple of the generator is required.
    #[error("{what} is the identity point")]
    IdentityPoint {
        /// Which point, as for [`AssistError::NonCanonicalPoint`].
        what: &'static str,
    },
    /// An encoding that ends before its last field.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// An encoding whose field breaks a rule of SPEC.md, or with trailing bytes.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// Which rule.
        reason: &'static str,
    },
    /// An enrolled share (or slot) made for another owner, peer or enrollment than the one
    /// the caller is unsealing.
    #[error("enrolled share is for {field} {found}, not {expected}")]
    ContextMismatch {
        /// "owner node", "peer node" or "enrollment id".
        field: &'static str,
        /// What the caller expects (escaped, or hex).
        expected: String,
        /// What the share says (escaped, or hex).
        found: String,
    },
    /// The share does not open: the answer is not the enrolled peer's for this request
    /// (another peer, another request, tampered in transit) or the enrolled share was edited.
    #[error(
        "the enrolled share does not open: wrong or tampered peer answer (another peer, \
         another request), or a tampered enrolled share"
    )]
    ShareAuthFailed,
    /// Parameters a caller chose that this module refuses: threshold, share count, lengths,
    /// node names, duplicate peers.
    #[error("bad assist parameters: {0}")]
    BadParameters(String),
    /// A Shamir share that is not `threshold || index || y` within the bounds, or shares
    /// that do not belong together (different thresholds or lengths, or a slot position).
    #[error("malformed shamir share: {0}")]
    MalformedShare(&'static str),
    /// The same Shamir share index given twice: it would count twice toward the threshold.
    #[error("shamir share index {0} given twice")]
    DuplicateShareIndex(u8),
    /// Fewer distinct shares than the threshold: the secret is undetermined.
    #[error("not enough shares: {got} of the {need} needed")]
    NotEnoughShares {
        /// Shares given (or opened).
        got: usize,
        /// The threshold.
        need: usize,
    },
    /// An answer for a peer position that has no outstanding request: out of range, already
    /// answered, or its request was used up by a failed answer.
    #[error("no pending assist request for peer position {0}")]
    NoPendingRequest(usize),
    /// The OS random generator or a primitive failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl AssistError {
    /// Stable snake_case name of the check, for audit records, metrics and test vectors.
    pub fn code(&self) -> &'static str {
        match self {
            AssistError::KeyFileLength(_) => "key_file_length",
            AssistError::KeyFileMagic => "key_file_magic",
            AssistError::UnsupportedVersion { .. } => "unsupported_version",
            AssistError::NonCanonicalScalar => "non_canonical_scalar",
            AssistError::ZeroScalar => "zero_scalar",
            AssistError::KeyFileMismatch => "key_file_mismatch",
            AssistError::NonCanonicalPoint { .. } => "non_canonical_point",
            AssistError::IdentityPoint { .. } => "identity_point",
            AssistError::Truncated(_) => "truncated",
            AssistError::Malformed { .. } => "malformed",
            AssistError::ContextMismatch { .. } => "context_mismatch",
            AssistError::ShareAuthFailed => "share_auth_failed",
            AssistError::BadParameters(_) => "bad_parameters",
            AssistError::MalformedShare(_) => "malformed_share",
            AssistError::DuplicateShareIndex(_) => "duplicate_share_index",
            AssistError::NotEnoughShares { .. } => "not_enough_shares",
            AssistError::NoPendingRequest(_) => "no_pending_request",
            AssistError::Crypto(_) => "crypto",
        }
    }
}

/// Shorthand for this module's results.
pub type AssistResult<T> = std::result::Result<T, AssistError>;

// ---------------------------------------------------------------------------------------------
// the peer's assist key

/// A lockbox's assist key pair `(s, S = s·G)` on ristretto255: what it answers unseal
/// requests with.
///
/// Kept in its own 0600 file beside the keyring, *not* sealed by the keyring, so that a
/// sealed lockbox can still help its peers (a whole-cluster cold start unseals). Wiped on
/// drop; `Debug` shows only the public key.
pub struct AssistIdentity {
    secret: Zeroizing<Scalar>,
    public: [u8; 32],
}

impl AssistIdentity {
    /// A fresh key pair (a nonzero scalar from 64 OS random bytes reduced modulo the group
    /// order), generated once per lockbox.
    pub fn generate() -> AssistResult<Self> {
        Ok(Self::from_scalar(random_scalar()?))
    }

    /// Restores the key pair from its 32-byte secret scalar (little-endian, canonical,
    /// nonzero), e.g. for test vectors; the daemon reads [`AssistIdentity::from_file_bytes`].
    pub fn from_secret(secret: &SecretBytes) -> AssistResult<Self> {
        let bytes: &[u8; 32] =
            secret
                .expose_secret()
                .try_into()
                .map_err(|_| CryptoError::BadLength {
                    what: "assist secret scalar",
                    expected: 32,
                    got: secret.len(),
                })?;
        Ok(Self::from_scalar(scalar_from_bytes(bytes)?))
    }

    fn from_scalar(secret: Zeroizing<Scalar>) -> Self {
        let public = RistrettoPoint::mul_base(&secret).compress().to_bytes();
        Self { secret, public }
    }

    /// `S = s·G`, compressed: what owners enroll to. Not secret.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The key file (SPEC.md "Assist key file"): `"LBAK" || 0x01 || s || S`. Secret, hence
    /// [`SecretBytes`]; the public key in it lets decoding notice a corrupted scalar.
    pub fn to_file_bytes(&self) -> SecretBytes {
        let mut out = Vec::with_capacity(ASSIST_KEY_FILE_LEN);
        out.extend_from_slice(ASSIST_KEY_MAGIC);
        out.push(ASSIST_KEY_VERSION);
        out.extend_from_slice(self.secret.as_bytes());
        out.extend_from_slice(&self.public);
        SecretBytes::new(out)
    }

    /// Decodes a key file strictly, in SPEC.md's order: length, magic, version, canonical
    /// scalar, nonzero scalar, public key matching the scalar. Each failure has its own
    /// [`AssistError`] variant.
    pub fn from_file_bytes(bytes: &[u8]) -> AssistResult<Self> {
        if bytes.len() != ASSIST_KEY_FILE_LEN {
            return Err(AssistError::KeyFileLength(bytes.len()));
        }
        if &bytes[..4] != ASSIST_KEY_MAGIC {
            return Err(AssistError::KeyFileMagic);
        }
        if bytes[4] != ASSIST_KEY_VERSION {
            return Err(AssistError::UnsupportedVersion {
                what: "assist key file",
                version: bytes[4],
            });
        }
        let mut scalar = Zeroizing::new([0u8; 32]);
        scalar.copy_from_slice(&bytes[5..37]);
        let identity = Self::from_scalar(scalar_from_bytes(&scalar)?);
        if identity.public[..] != bytes[37..] {
            return Err(AssistError::KeyFileMismatch);
        }
        Ok(identity)
    }

    /// The key this peer answers `owner` with: `s_o = HKDF-SHA256(ikm = s, info =
    /// "lockbox/v1/assist-owner" 0x00 owner, L = 64)` reduced modulo the group order (SPEC.md
    /// "Per-owner assist keys").
    ///
    /// Why: `X` is blinded, so a peer cannot tell whose share a request opens. Answering every
    /// caller with one key would let any node the controller vouches for, holding a copy of
    /// another node's keyring, unseal that node through its peers. With a key per owner, the
    /// answer a peer gives caller B is `s_B·X`, which opens only shares enrolled to B's key;
    /// no public function of `S` gives `s_o·G` (the derivation is not linear), so the peer
    /// hands each owner its key over mTLS at enrollment.
    pub fn for_owner(&self, owner: &str) -> AssistResult<AssistIdentity> {
        check_node_param("owner", owner)?;
        let info = [ASSIST_OWNER_LABEL.as_bytes(), &[0u8], owner.as_bytes()].concat();
        let mut wide = Zeroizing::new([0u8; 64]);
        Hkdf::<Sha256>::new(None, self.secret.as_bytes())
            .expand(&info, wide.as_mut())
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        let s = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide));
        if *s == Scalar::ZERO {
            return Err(AssistError::ZeroScalar);
        }
        Ok(Self::from_scalar(s))
    }

    /// The peer's side of an unseal: `Y = s·X` for the owner's blinded point `X`.
    ///
    /// Refuses an `X` that is not a canonical point encoding or is the identity (whose
    /// answer would be the identity whatever `s` is). `X` is uniformly random, so nothing
    /// here tells the peer which owner or enrollment it helps; whom to answer is the
    /// daemon's decision, made before this is called.
    pub fn answer(&self, blinded: &[u8; 32]) -> AssistResult<[u8; 32]> {
        let x = decode_point("blinded point", blinded)?;
        // By reference: `Scalar` is `Copy`, and a by-value operand would leave one more
        // unwiped copy of the secret on the stack.
        #[allow(clippy::op_ref)]
        let y = x * &*self.secret;
        Ok(y.compress().to_bytes())
    }
}

impl fmt::Debug for AssistIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssistIdentity")
            .field("public_key", &hex::encode(self.public))
            .field("secret", &format_args!("[redacted]"))
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// the owner's enrolled share

/// What an enrolled share is bound to: the owner it unseals, the peer that helps, and the
/// slot enrollment it belongs to. All three are in the share's header, which is both the
/// HKDF info (after the label) and the AEAD's associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrollContext<'a> {
    /// The node whose slot this is (1 to 255 bytes).
    pub owner_node: &'a str,
    /// The peer whose assist key the share is sealed to (1 to 255 bytes).
    pub peer_node: &'a str,
    /// The slot enrollment, random; all n shares of one [`PeerSlot`] carry the same.
    pub enrollment_id: [u8; ENROLLMENT_ID_LEN],
}

/// One share sealed so that only an answer from its peer opens it (SPEC.md "Enrolled share").
///
/// Holds no secret: `C` and the peer's public key are public and the share is sealed, so it
/// may be stored in the keyring's slot, copied and printed (`Debug` in hex).
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolledShare {
    enrollment_id: [u8; ENROLLMENT_ID_LEN],
    owner_node: String,
    peer_node: String,
    peer_public_key: [u8; 32],
    commitment: [u8; 32],
    nonce: [u8; NONCE_LEN],
    /// XChaCha20-Poly1305 ciphertext with its tag.
    sealed: Vec<u8>,
}

impl EnrolledShare {
    /// The context this share was enrolled under, to build the expectation for [`recover`]
    /// (the daemon then replaces `owner_node` with its own name).
    pub fn context(&self) -> EnrollContext<'_> {
        EnrollContext {
            owner_node: &self.owner_node,
            peer_node: &self.peer_node,
            enrollment_id: self.enrollment_id,
        }
    }

    /// The owner node the share unseals.
    pub fn owner_node(&self) -> &str {
        &self.owner_node
    }

    /// The peer to ask, by node name.
    pub fn peer_node(&self) -> &str {
        &self.peer_node
    }

    /// The slot enrollment this share belongs to.
    pub fn enrollment_id(&self) -> [u8; ENROLLMENT_ID_LEN] {
        self.enrollment_id
    }

    /// The peer's assist public key `S_i`, so the daemon can check it still matches what the
    /// peer (or the controller) says the peer's key is.
    pub fn peer_public_key(&self) -> [u8; 32] {
        self.peer_public_key
    }

    /// `C = c·G`, the commitment every request for this share is blinded from.
    pub fn commitment(&self) -> [u8; 32] {
        self.commitment
    }

    /// The bytes SPEC.md gives: header, nonce, `lp(sealed share)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header();
        out.extend_from_slice(&self.nonce);
        put_lp(&mut out, &self.sealed);
        out
    }

    /// Decodes strictly, in SPEC.md's order: version, fields present, node names (1 to 255
    /// bytes of UTF-8), both points canonical and not the identity, sealed share length,
    /// then the end of input. Authenticity is checked only by [`recover`].
    pub fn decode(bytes: &[u8]) -> AssistResult<Self> {
        const WHAT: &str = "enrolled share";
        let trunc = |_| AssistError::Truncated(WHAT);
        let Some(&version) = bytes.first() else {
            return Err(AssistError::Truncated(WHAT));
        };
        if version != ENROLLED_SHARE_VERSION {
            return Err(AssistError::UnsupportedVersion {
                what: WHAT,
                version,
            });
        }
        let mut r = Reader::new(&bytes[1..], WHAT);
        let enrollment_id = r.array::<ENROLLMENT_ID_LEN>().map_err(trunc)?;
        let owner_node = decode_node(
            r.len_prefixed().map_err(trunc)?,
            "owner node name is not 1 to 255 bytes",
            "owner node name is not utf-8",
        )?;
        let peer_node = decode_node(
            r.len_prefixed().map_err(trunc)?,
            "peer node name is not 1 to 255 bytes",
            "peer node name is not utf-8",
        )?;
        let peer_public_key = r.array::<32>().map_err(trunc)?;
        decode_point("peer public key", &peer_public_key)?;
        let commitment = r.array::<32>().map_err(trunc)?;
        decode_point("commitment", &commitment)?;
        let nonce = r.array::<NONCE_LEN>().map_err(trunc)?;
        let sealed = r.len_prefixed().map_err(trunc)?;
        if sealed.len() <= TAG_LEN || sealed.len() > TAG_LEN + MAX_ENROLLED_SECRET_LEN {
            return Err(AssistError::Malformed {
                what: WHAT,
                reason: "sealed share is not 17 to 82 bytes",
            });
        }
        r.finish(WHAT).map_err(|_| AssistError::Malformed {
            what: WHAT,
            reason: "trailing bytes",
        })?;
        Ok(Self {
            enrollment_id,
            owner_node,
            peer_node,
            peer_public_key,
            commitment,
            nonce,
            sealed: sealed.to_vec(),
        })
    }

    /// `version || enrollment_id || lp(owner) || lp(peer) || S_i || C`: the HKDF info (after
    /// the label) and the AEAD's associated data.
    fn header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            1 + ENROLLMENT_ID_LEN + 8 + self.owner_node.len() + self.peer_node.len() + 64,
        );
        out.push(ENROLLED_SHARE_VERSION);
        out.extend_from_slice(&self.enrollment_id);
        put_lp(&mut out, self.owner_node.as_bytes());
        put_lp(&mut out, self.peer_node.as_bytes());
        out.extend_from_slice(&self.peer_public_key);
        out.extend_from_slice(&self.commitment);
        out
    }

    /// Refuses a share enrolled for another owner, peer or enrollment than `expected`.
    fn check_context(&self, expected: &EnrollContext<'_>) -> AssistResult<()> {
        let mismatch = |field, expected: &str, found: &str| AssistError::ContextMismatch {
            field,
            expected: printable(expected),
            found: printable(found),
        };
        if expected.owner_node != self.owner_node {
            return Err(mismatch(
                "owner node",
                expected.owner_node,
                &self.owner_node,
            ));
        }
        if expected.peer_node != self.peer_node {
            return Err(mismatch("peer node", expected.peer_node, &self.peer_node));
        }
        if expected.enrollment_id != self.enrollment_id {
            return Err(mismatch(
                "enrollment id",
                &hex::encode(expected.enrollment_id),
                &hex::encode(self.enrollment_id),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for EnrolledShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolledShare")
            .field("enrollment_id", &hex::encode(self.enrollment_id))
            .field("owner_node", &self.owner_node)
            .field("peer_node", &self.peer_node)
            .field("peer_public_key", &hex::encode(self.peer_public_key))
            .field("commitment", &hex::encode(self.commitment))
            .field("sealed_len", &self.sealed.len())
            .finish_non_exhaustive()
    }
}

/// The owner's per-request blinding scalar `r`: kept only until the peer's answer arrives,
/// used once (consumed by [`recover`]), wiped on drop, never printed.
pub struct BlindingSecret(Zeroizing<Scalar>);

impl fmt::Debug for BlindingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindingSecret([redacted])")
    }
}

/// Seals `share` (1 to [`MAX_ENROLLED_SECRET_LEN`] bytes) so that only an answer from the peer
/// whose assist public key is `peer_public_key` opens it (SPEC.md "Enrollment").
///
/// Picks a random nonzero `c`, stores `C = c·G`, derives the sealing key from `c·S_i` and the
/// share's header, and wipes `c` and `c·S_i` before returning: from then on only the peer's
/// secret `s_i` can recreate the key. Refuses a peer key that is not a canonical point or is
/// the identity, and node names that are empty or longer than 255 bytes.
pub fn enroll(
    peer_public_key: &[u8; 32],
    share: &SecretBytes,
    context: &EnrollContext<'_>,
) -> AssistResult<EnrolledShare> {
    let c = random_scalar()?;
    let nonce = random_array::<NONCE_LEN>()?;
    enroll_with(peer_public_key, share, context, &c, nonce)
}

/// [`enroll`] with a fixed `c` (32 bytes, canonical, nonzero) and nonce. **For test vectors
/// only** (feature `test-vectors`): a share enrolled twice with the same `c` is sealed twice
/// under the same key, and a known `c` opens it without the peer.
#[cfg(any(test, feature = "test-vectors"))]
pub fn enroll_deterministic(
    peer_public_key: &[u8; 32],
    share: &SecretBytes,
    context: &EnrollContext<'_>,
    c: &[u8; 32],
    nonce: [u8; 24],
) -> AssistResult<EnrolledShare> {
    let c = scalar_from_bytes(c)?;
    enroll_with(peer_public_key, share, context, &c, nonce)
}

fn enroll_with(
    peer_public_key: &[u8; 32],
    share: &SecretBytes,
    context: &EnrollContext<'_>,
    c: &Scalar,
    nonce: [u8; NONCE_LEN],
) -> AssistResult<EnrolledShare> {
    check_node_param("owner node", context.owner_node)?;
    check_node_param("peer node", context.peer_node)?;
    if share.is_empty() || share.len() > MAX_ENROLLED_SECRET_LEN {
        return Err(AssistError::BadParameters(format!(
            "a share to enroll must be 1 to {MAX_ENROLLED_SECRET_LEN} bytes, got {}",
            share.len()
        )));
    }
    let s_i = decode_point("peer public key", peer_public_key)?;
    let mut enrolled = EnrolledShare {
        enrollment_id: context.enrollment_id,
        owner_node: context.owner_node.to_owned(),
        peer_node: context.peer_node.to_owned(),
        peer_public_key: *peer_public_key,
        commitment: RistrettoPoint::mul_base(c).compress().to_bytes(),
        nonce,
        sealed: Vec::new(),
    };
    let shared = Zeroizing::new(s_i * c);
    let header = enrolled.header();
    let key = share_key(&shared, &header)?;
    enrolled.sealed = XChaCha20Poly1305::new((&*key).into())
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: share.expose_secret(),
                aad: &header,
            },
        )
        .map_err(|_| AssistError::BadParameters("share too long to seal".into()))?;
    Ok(enrolled)
}

/// Starts one unseal request for `enrolled`: a fresh random nonzero `r` and the point
/// `X = C + r·G` to send to its peer (SPEC.md "Unseal request and recovery").
///
/// Every call gives a new, uniformly random `X`, so requests cannot be linked to each other
/// or to the enrollment; keep the [`BlindingSecret`] until the answer and hand it to
/// [`recover`].
pub fn blind(enrolled: &EnrolledShare) -> AssistResult<(BlindingSecret, [u8; 32])> {
    blind_with(enrolled, random_scalar()?)
}

/// [`blind`] with a fixed `r` (32 bytes, canonical, nonzero). **For test vectors only**
/// (feature `test-vectors`): a reused `r` makes requests linkable.
#[cfg(any(test, feature = "test-vectors"))]
pub fn blind_deterministic(
    enrolled: &EnrolledShare,
    r: &[u8; 32],
) -> AssistResult<(BlindingSecret, [u8; 32])> {
    blind_with(enrolled, scalar_from_bytes(r)?)
}

fn blind_with(
    enrolled: &EnrolledShare,
    r: Zeroizing<Scalar>,
) -> AssistResult<(BlindingSecret, [u8; 32])> {
    let c = decode_point("commitment", &enrolled.commitment)?;
    let x = c + RistrettoPoint::mul_base(&r);
    Ok((BlindingSecret(r), x.compress().to_bytes()))
}

/// Opens `enrolled` with its peer's `answer` to the request `blinding` was made for:
/// `c·S_i = Y − r·S_i`, the same key derivation as at enrollment, then the AEAD.
///
/// Checks, in order: the share was enrolled for `expected` (owner, peer, enrollment) →
/// [`AssistError::ContextMismatch`]; `answer` is a canonical point and not the identity →
/// [`AssistError::NonCanonicalPoint`] / [`AssistError::IdentityPoint`]; the share opens →
/// [`AssistError::ShareAuthFailed`] (an answer from another peer, for another request, or
/// tampered with, or an edited enrolled share). `blinding` is consumed either way: a new
/// attempt starts with a new [`blind`].
pub fn recover(
    enrolled: &EnrolledShare,
    expected: &EnrollContext<'_>,
    blinding: BlindingSecret,
    answer: &[u8; 32],
) -> AssistResult<SecretBytes> {
    enrolled.check_context(expected)?;
    let y = decode_point("peer answer", answer)?;
    let s_i = decode_point("peer public key", &enrolled.peer_public_key)?;
    // By reference, as in `answer`: no unwiped by-value copies of `r` or `r·S_i`.
    #[allow(clippy::op_ref)]
    let masked = Zeroizing::new(s_i * &*blinding.0);
    #[allow(clippy::op_ref)]
    let shared = Zeroizing::new(y - &*masked);
    let header = enrolled.header();
    let key = share_key(&shared, &header)?;
    let opened = XChaCha20Poly1305::new((&*key).into())
        .decrypt(
            &XNonce::from(enrolled.nonce),
            Payload {
                msg: &enrolled.sealed,
                aad: &header,
            },
        )
        .map_err(|_| AssistError::ShareAuthFailed)?;
    Ok(SecretBytes::new(opened))
}

// ---------------------------------------------------------------------------------------------
// helpers

/// `HKDF-SHA256(salt = none, ikm = encode(c·S_i), info = label || 0x00 || header, L = 32)`.
fn share_key(shared: &RistrettoPoint, header: &[u8]) -> AssistResult<Zeroizing<[u8; 32]>> {
    let mut compressed = shared.compress();
    let ikm = Zeroizing::new(compressed.to_bytes());
    compressed.zeroize();
    let info = [ASSIST_SHARE_LABEL.as_bytes(), &[0u8], header].concat();
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, ikm.as_ref())
        .expand(&info, key.as_mut())
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(key)
}

/// A uniformly random nonzero scalar: 64 OS random bytes reduced modulo the group order
/// (bias about 2^-259), redrawn if zero.
fn random_scalar() -> AssistResult<Zeroizing<Scalar>> {
    for _ in 0..SCALAR_DRAWS {
        let mut wide = Zeroizing::new([0u8; 64]);
        getrandom::fill(wide.as_mut()).map_err(|_| CryptoError::Random)?;
        let s = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide));
        if *s != Scalar::ZERO {
            return Ok(s);
        }
    }
    // Only an RNG that returns zeros gets here.
    Err(CryptoError::Random.into())
}

/// A secret scalar from its 32-byte little-endian encoding: canonical and nonzero.
fn scalar_from_bytes(bytes: &[u8; 32]) -> AssistResult<Zeroizing<Scalar>> {
    let s: Option<Scalar> = Scalar::from_canonical_bytes(*bytes).into();
    let s = Zeroizing::new(s.ok_or(AssistError::NonCanonicalScalar)?);
    if *s == Scalar::ZERO {
        return Err(AssistError::ZeroScalar);
    }
    Ok(s)
}

/// Decodes a ristretto255 point (RFC 9496 §4.3.1), refusing non-canonical encodings and the
/// identity, so every point used here is a proper group element.
fn decode_point(what: &'static str, bytes: &[u8; 32]) -> AssistResult<RistrettoPoint> {
    let p = CompressedRistretto(*bytes)
        .decompress()
        .ok_or(AssistError::NonCanonicalPoint { what })?;
    if p.is_identity() {
        return Err(AssistError::IdentityPoint { what });
    }
    Ok(p)
}

/// A node name read from an enrolled share: 1 to 255 bytes of UTF-8. The reasons name the
/// field, so that the error says which name is wrong.
fn decode_node(
    bytes: &[u8],
    bad_length: &'static str,
    not_utf8: &'static str,
) -> AssistResult<String> {
    let malformed = |reason| AssistError::Malformed {
        what: "enrolled share",
        reason,
    };
    if bytes.is_empty() || bytes.len() > MAX_ASSIST_NODE_LEN {
        return Err(malformed(bad_length));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed(not_utf8))
}

/// A node name a caller gave: 1 to 255 bytes.
fn check_node_param(what: &str, name: &str) -> AssistResult<()> {
    if name.is_empty() || name.len() > MAX_ASSIST_NODE_LEN {
        return Err(AssistError::BadParameters(format!(
            "{what} name must be 1 to {MAX_ASSIST_NODE_LEN} bytes, got {}",
            name.len()
        )));
    }
    Ok(())
}

/// `u32(len) || bytes`. Every length encoded here is bounded far below 4 GiB by the checks
/// that run when a value is built or decoded (names ≤ 255 bytes, sealed shares ≤ 82, slots ≤ 16
/// shares); saturating keeps this total, as in `wrap`.
fn put_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests;
