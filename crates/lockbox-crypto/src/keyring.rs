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

use crate::assist::PeerSlot;
use crate::error::{CryptoError, Result};
use crate::seal::{Kek, RecordKind, sealed_kek_id};
use crate::secret::{SecretBytes, random_array, random_key};
use crate::wire::Reader;

/// File magic, so a wrong file is reported as such rather than as a wrong secret.
pub const KEYRING_MAGIC: &[u8; 4] = b"LBKR";
/// Keyring format version of a single keyfile or passphrase slot (the original layout, still
/// written for those so older data dirs and tools keep reading them).
pub const KEYRING_VERSION: u8 = 0x01;
/// Keyring format version with a slot list: peers slots and a recovery slot need it.
pub const KEYRING_VERSION_SLOTS: u8 = 0x02;
/// HKDF info deriving the unseal key of a peers slot from the slot key the peers' shares
/// rebuild.
pub const UNSEAL_PEERS_INFO: &[u8] = b"lockbox/v1/unseal/peers";
/// HKDF info deriving the unseal key of a tpm2 slot from the key the TPM unseals.
pub const UNSEAL_TPM2_INFO: &[u8] = b"lockbox/v1/unseal/tpm2";
/// HKDF info deriving the unseal key of a tpm2+peers slot from both keys.
pub const UNSEAL_TPM2_PEERS_INFO: &[u8] = b"lockbox/v1/unseal/tpm2+peers";
/// Length of the random key a tpm2 slot seals to the TPM.
pub const TPM2_SLOT_KEY_LEN: usize = 32;
/// Most bytes of the TPM's sealed object (public and private areas, marshalled) in a slot.
pub const MAX_TPM2_BLOB: usize = 8 * 1024;
/// Leading label of a version-2 slot's root-wrap AAD.
pub const SLOT_WRAP_AAD_LABEL: &[u8] = b"lockbox/v1/keyring-slot";
/// Length of the random slot key a peers slot splits among its peers.
pub const PEERS_SLOT_KEY_LEN: usize = 32;
/// Most bytes a slot's parameters may take (a 16-peer slot is about 3.3 KiB).
const MAX_SLOT_PARAMS: usize = 16 * 1024;
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
    /// t of n peer lockboxes each help open one Shamir share of the slot key
    /// (DESIGN.md §5.5); nothing on this host opens it alone.
    Peers,
    /// The slot key is sealed to this host's TPM 2.0 (optionally to PCR values): the disks
    /// alone, or a copy of the data dir on another machine, do not open it.
    Tpm2,
    /// Both: a key from the TPM and a key from t of n peers, each useless alone.
    Tpm2Peers,
}

impl UnsealMethod {
    /// Stable name for config, errors and status output.
    pub fn as_str(&self) -> &'static str {
        match self {
            UnsealMethod::Keyfile => "keyfile",
            UnsealMethod::Passphrase => "passphrase",
            UnsealMethod::Peers => "peers",
            UnsealMethod::Tpm2 => "tpm2",
            UnsealMethod::Tpm2Peers => "tpm2+peers",
        }
    }

    fn code(self) -> u8 {
        match self {
            UnsealMethod::Keyfile => 1,
            UnsealMethod::Passphrase => 2,
            UnsealMethod::Peers => 3,
            UnsealMethod::Tpm2 => 4,
            UnsealMethod::Tpm2Peers => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(UnsealMethod::Keyfile),
            2 => Some(UnsealMethod::Passphrase),
            3 => Some(UnsealMethod::Peers),
            4 => Some(UnsealMethod::Tpm2),
            5 => Some(UnsealMethod::Tpm2Peers),
            _ => None,
        }
    }
}

/// The secret an operator (or auto-unseal) presents; borrowed so it stays in its owner's
/// zeroizing buffer.
#[derive(Debug)]
pub enum UnsealSecret<'a> {
    /// Contents of the key file (must be 32 bytes).
    Keyfile(&'a SecretBytes),
    /// The passphrase bytes: the primary slot's if it is a passphrase slot, else the
    /// recovery slot's.
    Passphrase(&'a SecretBytes),
    /// The slot key of a peers slot, as [`crate::assist::SlotUnseal::finish`] rebuilt it.
    PeersKey(&'a SecretBytes),
    /// The key a tpm2 slot's TPM object unsealed.
    Tpm2Key(&'a SecretBytes),
    /// Both keys of a tpm2+peers slot.
    Tpm2PeersKeys {
        /// What the TPM unsealed.
        tpm: &'a SecretBytes,
        /// What the peers' shares rebuilt.
        peers: &'a SecretBytes,
    },
}

impl UnsealSecret<'_> {
    /// Which method this secret is for, to check it against the keyring before any KDF runs.
    pub fn method(&self) -> UnsealMethod {
        match self {
            UnsealSecret::Keyfile(_) => UnsealMethod::Keyfile,
            UnsealSecret::Passphrase(_) => UnsealMethod::Passphrase,
            UnsealSecret::PeersKey(_) => UnsealMethod::Peers,
            UnsealSecret::Tpm2Key(_) => UnsealMethod::Tpm2,
            UnsealSecret::Tpm2PeersKeys { .. } => UnsealMethod::Tpm2Peers,
        }
    }
}

/// A slot to create: the method and what opens it. Used at `lockboxd init` and when the
/// unseal method is enrolled again ([`Keyring::rewrap`]).
pub enum NewSlot<'a> {
    /// A 32-byte key file.
    Keyfile(&'a SecretBytes),
    /// A passphrase and its Argon2id cost.
    Passphrase(&'a SecretBytes, Argon2Params),
    /// A peer slot already enrolled (its shares sealed to the peers) and the slot key it
    /// splits; the caller drew the key at random and wipes it after this call.
    Peers(PeerSlot, &'a SecretBytes),
    /// The TPM's sealed object (opaque bytes, at most [`MAX_TPM2_BLOB`]; the `lockbox-tpm`
    /// format) and the key it seals.
    Tpm2(Vec<u8>, &'a SecretBytes),
    /// A TPM-sealed key and a peer slot; the unseal key needs both.
    Tpm2Peers {
        /// The TPM's sealed object.
        blob: Vec<u8>,
        /// The key it seals.
        tpm_key: &'a SecretBytes,
        /// The peer slot.
        slot: PeerSlot,
        /// The key the peer slot splits.
        peers_key: &'a SecretBytes,
    },
}

/// What [`Keyring::rewrap`] does with the recovery slot.
pub enum RecoveryChange<'a> {
    /// Keep the current one (byte for byte), or none if there is none.
    Keep,
    /// Remove it.
    Drop,
    /// Replace it (or add one) with this passphrase and Argon2id cost.
    Set(&'a SecretBytes, Argon2Params),
}

/// Whether a slot is the keyring's main way in or the operator's recovery passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotRole {
    Primary,
    Recovery,
}

/// How a slot derives its unseal key; the parameters are public.
#[derive(Debug, Clone)]
enum SlotKind {
    Keyfile,
    Passphrase(Argon2Params),
    Peers(Box<PeerSlot>),
    Tpm2(Vec<u8>),
    Tpm2Peers(Vec<u8>, Box<PeerSlot>),
}

/// One way to open the root secret: its parameters and the root secret wrapped under the key
/// they derive. Holds nothing secret.
#[derive(Debug, Clone)]
struct Slot {
    role: SlotRole,
    kind: SlotKind,
    salt: [u8; SALT_LEN],
    wrapped_root: [u8; WRAPPED_LEN],
}

impl Slot {
    fn method(&self) -> UnsealMethod {
        match self.kind {
            SlotKind::Keyfile => UnsealMethod::Keyfile,
            SlotKind::Passphrase(_) => UnsealMethod::Passphrase,
            SlotKind::Peers(_) => UnsealMethod::Peers,
            SlotKind::Tpm2(_) => UnsealMethod::Tpm2,
            SlotKind::Tpm2Peers(..) => UnsealMethod::Tpm2Peers,
        }
    }

    /// `salt || argon2 (passphrase only) || peer slot (peers only)`: the bytes after the
    /// role and kind in a version-2 keyring.
    fn params(&self) -> Vec<u8> {
        let mut out = self.salt.to_vec();
        match &self.kind {
            SlotKind::Keyfile => {}
            SlotKind::Passphrase(a) => {
                out.extend_from_slice(&a.memory_kib.to_be_bytes());
                out.extend_from_slice(&a.iterations.to_be_bytes());
                out.extend_from_slice(&a.parallelism.to_be_bytes());
            }
            SlotKind::Peers(p) => out.extend_from_slice(&p.encode()),
            SlotKind::Tpm2(blob) => put_lp(&mut out, blob),
            SlotKind::Tpm2Peers(blob, p) => {
                put_lp(&mut out, blob);
                out.extend_from_slice(&p.encode());
            }
        }
        out
    }

    fn role_code(&self) -> u8 {
        match self.role {
            SlotRole::Primary => 0,
            SlotRole::Recovery => 1,
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
/// Invariants (checked by `decode` and every constructor): at least one KEK; ids nonzero and
/// strictly ascending; the last (highest) is the current KEK. Making "current" the highest id,
/// instead of a separate field, stops a tampered file from pointing new seals at an old KEK
/// that rotation meant to shred. Exactly one primary slot, first; at most one recovery slot,
/// a passphrase; a version-1 keyring has exactly one keyfile or passphrase slot.
#[derive(Debug, Clone)]
pub struct Keyring {
    /// [`KEYRING_VERSION`] or [`KEYRING_VERSION_SLOTS`]: which layout `encode` writes and
    /// which AAD the slots' wraps use.
    version: u8,
    slots: Vec<Slot>,
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
    /// A new keyring with a fresh random root secret and KEK 1, for `lockboxd init`, opened
    /// by a key file or a passphrase.
    ///
    /// `argon` applies to passphrases only and is ignored (stored as zero) for a key file.
    pub fn create(secret: UnsealSecret<'_>, argon: Argon2Params) -> Result<(Keyring, Unsealed)> {
        let primary = match secret {
            UnsealSecret::Keyfile(k) => NewSlot::Keyfile(k),
            UnsealSecret::Passphrase(p) => NewSlot::Passphrase(p, argon),
            UnsealSecret::PeersKey(_)
            | UnsealSecret::Tpm2Key(_)
            | UnsealSecret::Tpm2PeersKeys { .. } => {
                return Err(CryptoError::Malformed(
                    "keyring request (peers and tpm2 slots are created with create_slots)",
                ));
            }
        };
        Keyring::create_slots(primary, None)
    }

    /// A new keyring with a fresh random root secret and KEK 1, opened by `primary` and, if
    /// given, a recovery passphrase. A lone key file or passphrase is written in the version-1
    /// layout; anything else in the slot layout (SPEC.md "Keyring file").
    pub fn create_slots(
        primary: NewSlot<'_>,
        recovery: Option<(&SecretBytes, Argon2Params)>,
    ) -> Result<(Keyring, Unsealed)> {
        let root = random_key()?;
        let kek = Kek::generate(1)?;
        let keyring =
            Keyring::with_slots(&root, primary, recovery, None, vec![wrap_kek(&root, &kek)?])?;
        Ok((
            keyring,
            Unsealed {
                root,
                keks: vec![kek],
            },
        ))
    }

    /// The same root secret and KEKs behind new slots: how `lockboxctl unseal enroll` changes
    /// the unseal method without re-sealing any record. The previous primary slot is gone
    /// from the result; the recovery slot follows `recovery`.
    pub fn rewrap(
        &self,
        unsealed: &Unsealed,
        primary: NewSlot<'_>,
        recovery: RecoveryChange<'_>,
    ) -> Result<Keyring> {
        self.check_belongs(unsealed)?;
        let kept = self.recovery_slot().cloned();
        let (set, keep) = match recovery {
            RecoveryChange::Keep => (None, kept),
            RecoveryChange::Drop => (None, None),
            RecoveryChange::Set(p, a) => (Some((p, a)), None),
        };
        if keep.is_some() && self.version != KEYRING_VERSION_SLOTS {
            // Only version 2 has recovery slots; decode keeps this invariant.
            return Err(CryptoError::Malformed(
                "keyring (recovery slot in version 1)",
            ));
        }
        Keyring::with_slots(&unsealed.root, primary, set, keep, self.keks.clone())
    }

    fn with_slots(
        root: &[u8; 32],
        primary: NewSlot<'_>,
        recovery: Option<(&SecretBytes, Argon2Params)>,
        kept_recovery: Option<Slot>,
        keks: Vec<WrappedKek>,
    ) -> Result<Keyring> {
        let lone = recovery.is_none()
            && kept_recovery.is_none()
            && matches!(primary, NewSlot::Keyfile(_) | NewSlot::Passphrase(..));
        let version = if lone {
            KEYRING_VERSION
        } else {
            KEYRING_VERSION_SLOTS
        };
        let mut slots = vec![new_slot(root, version, SlotRole::Primary, primary)?];
        if let Some((pass, argon)) = recovery {
            slots.push(new_slot(
                root,
                version,
                SlotRole::Recovery,
                NewSlot::Passphrase(pass, argon),
            )?);
        }
        slots.extend(kept_recovery);
        Ok(Keyring {
            version,
            slots,
            keks,
        })
    }

    /// How this keyring is unsealed (its primary slot), so the daemon knows what to ask for.
    pub fn method(&self) -> UnsealMethod {
        self.primary().method()
    }

    /// Argon2id parameters of the primary slot, for passphrase keyrings only.
    pub fn argon_params(&self) -> Option<Argon2Params> {
        match self.primary().kind {
            SlotKind::Passphrase(a) => Some(a),
            _ => None,
        }
    }

    /// The peer slot, when the primary slot has one (peers, tpm2+peers): what the daemon
    /// asks its peers about.
    pub fn peer_slot(&self) -> Option<&PeerSlot> {
        match &self.primary().kind {
            SlotKind::Peers(p) | SlotKind::Tpm2Peers(_, p) => Some(p),
            _ => None,
        }
    }

    /// The TPM's sealed object, when the primary slot has one (tpm2, tpm2+peers): what the
    /// daemon asks the TPM to unseal.
    pub fn tpm2_blob(&self) -> Option<&[u8]> {
        match &self.primary().kind {
            SlotKind::Tpm2(b) | SlotKind::Tpm2Peers(b, _) => Some(b),
            _ => None,
        }
    }

    /// Whether a recovery passphrase slot exists.
    pub fn has_recovery(&self) -> bool {
        self.recovery_slot().is_some()
    }

    /// The format version `encode` writes.
    pub fn version(&self) -> u8 {
        self.version
    }

    fn primary(&self) -> &Slot {
        // Every constructor and `decode` put the primary slot first.
        &self.slots[0]
    }

    fn recovery_slot(&self) -> Option<&Slot> {
        self.slots.iter().find(|s| s.role == SlotRole::Recovery)
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
    /// A key file or peers key opens the primary slot of that method; a passphrase opens the
    /// primary slot if it is a passphrase slot, else the recovery slot. No slot for the
    /// secret's method is [`CryptoError::UnsealMethodMismatch`], before any KDF runs; a key
    /// file of the wrong size is [`CryptoError::BadLength`]; a secret that does not open the
    /// root secret is [`CryptoError::WrongUnsealSecret`]; a KEK that fails to unwrap under the
    /// (right) root secret was tampered with: [`CryptoError::IntegrityFailed`].
    pub fn unseal(&self, secret: UnsealSecret<'_>) -> Result<Unsealed> {
        let slot = self.slot_for(&secret)?;
        let unseal_key = unseal_key(slot, secret)?;
        let root = open_key(&unseal_key, &slot.wrapped_root, &self.slot_aad(slot))
            .ok_or(CryptoError::WrongUnsealSecret)?;
        let keks = self
            .keks
            .iter()
            .map(|w| unwrap_kek(&root, w))
            .collect::<Result<Vec<_>>>()?;
        Ok(Unsealed { root, keks })
    }

    fn slot_for(&self, secret: &UnsealSecret<'_>) -> Result<&Slot> {
        let primary = self.primary();
        let wanted = secret.method();
        if primary.method() == wanted {
            return Ok(primary);
        }
        if wanted == UnsealMethod::Passphrase
            && let Some(r) = self.recovery_slot()
        {
            return Ok(r);
        }
        Err(CryptoError::UnsealMethodMismatch {
            keyring: primary.method().as_str(),
            given: wanted.as_str(),
        })
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
        if self.version == KEYRING_VERSION {
            let slot = self.primary();
            out.extend_from_slice(&v1_header(slot));
            out.extend_from_slice(&slot.wrapped_root);
        } else {
            out.extend_from_slice(KEYRING_MAGIC);
            out.push(self.version);
            // At most two slots (decode and the constructors keep it so).
            out.push(u8::try_from(self.slots.len()).unwrap_or(u8::MAX));
            for slot in &self.slots {
                out.push(slot.role_code());
                out.push(slot.method().code());
                let params = slot.params();
                // Bounded by MAX_SLOT_PARAMS.
                out.extend_from_slice(
                    &u32::try_from(params.len())
                        .unwrap_or(u32::MAX)
                        .to_be_bytes(),
                );
                out.extend_from_slice(&params);
                out.extend_from_slice(&slot.wrapped_root);
            }
        }
        // `add_kek` and `decode` keep the count within u16.
        let n = u16::try_from(self.keks.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for k in &self.keks {
            out.extend_from_slice(&k.id.to_be_bytes());
            out.extend_from_slice(&k.wrapped);
        }
        out
    }

    /// Parses the file strictly: magic, version, slots (methods, roles, parameter bounds),
    /// KEK ordering, exact length. Nothing is decrypted here.
    pub fn decode(bytes: &[u8]) -> Result<Keyring> {
        let mut r = Reader::new(bytes, "keyring (truncated)");
        if &r.array::<4>()? != KEYRING_MAGIC {
            return Err(CryptoError::Malformed("keyring (bad magic)"));
        }
        let version = r.u8()?;
        let slots = match version {
            KEYRING_VERSION => vec![decode_v1_slot(&mut r)?],
            KEYRING_VERSION_SLOTS => decode_slots(&mut r)?,
            _ => {
                return Err(CryptoError::UnsupportedVersion {
                    what: "keyring",
                    version,
                });
            }
        };
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
            version,
            slots,
            keks,
        })
    }

    /// What a slot's root wrap authenticates besides the root secret: in version 1 the file
    /// header (method, Argon2 parameters, salt); in version 2 the slot's role, method and
    /// parameters. Weaker parameters, another method or another peer slot make unseal fail
    /// instead of deriving with attacker-chosen settings.
    fn slot_aad(&self, slot: &Slot) -> Vec<u8> {
        slot_aad(self.version, slot)
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

/// Builds a slot for `root`: fresh salt, parameters checked, root wrapped under the key the
/// slot's secret derives.
fn new_slot(root: &[u8; 32], version: u8, role: SlotRole, spec: NewSlot<'_>) -> Result<Slot> {
    let (kind, secret) = match spec {
        NewSlot::Keyfile(k) => (SlotKind::Keyfile, UnsealSecret::Keyfile(k)),
        NewSlot::Passphrase(p, argon) => {
            argon
                .check()
                .map_err(|reason| CryptoError::Kdf(reason.to_owned()))?;
            if p.is_empty() {
                return Err(CryptoError::Kdf("passphrase is empty".to_owned()));
            }
            (SlotKind::Passphrase(argon), UnsealSecret::Passphrase(p))
        }
        NewSlot::Peers(slot, key) => (SlotKind::Peers(Box::new(slot)), UnsealSecret::PeersKey(key)),
        NewSlot::Tpm2(blob, key) => {
            check_tpm2_blob(&blob)?;
            (SlotKind::Tpm2(blob), UnsealSecret::Tpm2Key(key))
        }
        NewSlot::Tpm2Peers {
            blob,
            tpm_key,
            slot,
            peers_key,
        } => {
            check_tpm2_blob(&blob)?;
            (
                SlotKind::Tpm2Peers(blob, Box::new(slot)),
                UnsealSecret::Tpm2PeersKeys {
                    tpm: tpm_key,
                    peers: peers_key,
                },
            )
        }
    };
    let mut slot = Slot {
        role,
        kind,
        salt: random_array()?,
        wrapped_root: [0; WRAPPED_LEN],
    };
    let key = unseal_key(&slot, secret)?;
    slot.wrapped_root = seal_key(&key, root, &slot_aad(version, &slot))?;
    Ok(slot)
}

/// magic || version || method || argon2 params || salt: the version-1 file header, and the
/// body of its root wrap's AAD.
fn v1_header(slot: &Slot) -> [u8; HEADER_LEN] {
    let argon = match slot.kind {
        SlotKind::Passphrase(a) => a,
        _ => Argon2Params::ZERO,
    };
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(KEYRING_MAGIC);
    h[4] = KEYRING_VERSION;
    h[5] = slot.method().code();
    h[6..10].copy_from_slice(&argon.memory_kib.to_be_bytes());
    h[10..14].copy_from_slice(&argon.iterations.to_be_bytes());
    h[14..18].copy_from_slice(&argon.parallelism.to_be_bytes());
    h[18..].copy_from_slice(&slot.salt);
    h
}

/// See [`Keyring::slot_aad`].
fn slot_aad(version: u8, slot: &Slot) -> Vec<u8> {
    if version == KEYRING_VERSION {
        return [ROOT_WRAP_AAD_LABEL, &[0u8][..], &v1_header(slot)[..]].concat();
    }
    let params = slot.params();
    let mut aad = Vec::with_capacity(SLOT_WRAP_AAD_LABEL.len() + 8 + params.len());
    aad.extend_from_slice(SLOT_WRAP_AAD_LABEL);
    aad.push(0);
    aad.push(version);
    aad.push(slot.role_code());
    aad.push(slot.method().code());
    aad.extend_from_slice(
        &u32::try_from(params.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    aad.extend_from_slice(&params);
    aad
}

/// The rest of a version-1 file after magic and version: one keyfile or passphrase slot.
fn decode_v1_slot(r: &mut Reader<'_>) -> Result<Slot> {
    let kind = match r.u8()? {
        1 => SlotKind::Keyfile,
        2 => SlotKind::Passphrase(Argon2Params::ZERO),
        _ => return Err(CryptoError::Malformed("keyring (unknown unseal method)")),
    };
    let argon = Argon2Params {
        memory_kib: r.u32()?,
        iterations: r.u32()?,
        parallelism: r.u32()?,
    };
    let kind = match kind {
        SlotKind::Keyfile if argon != Argon2Params::ZERO => {
            return Err(CryptoError::Malformed(
                "keyring (argon2 parameters on a keyfile keyring)",
            ));
        }
        SlotKind::Passphrase(_) if argon.check().is_err() => {
            return Err(CryptoError::Malformed(
                "keyring (argon2 parameters out of range)",
            ));
        }
        SlotKind::Passphrase(_) => SlotKind::Passphrase(argon),
        k => k,
    };
    Ok(Slot {
        role: SlotRole::Primary,
        kind,
        salt: r.array()?,
        wrapped_root: r.array()?,
    })
}

/// The slot list of a version-2 file: `n (u8) || n × (role, method, lp32(params), wrapped
/// root)`, primary first, at most one recovery slot (a passphrase).
fn decode_slots(r: &mut Reader<'_>) -> Result<Vec<Slot>> {
    let n = r.u8()?;
    if !(1..=2).contains(&n) {
        return Err(CryptoError::Malformed(
            "keyring (slot count must be 1 or 2)",
        ));
    }
    let mut slots: Vec<Slot> = Vec::with_capacity(usize::from(n));
    for i in 0..n {
        let role = match (i, r.u8()?) {
            (0, 0) => SlotRole::Primary,
            (1, 1) => SlotRole::Recovery,
            _ => {
                return Err(CryptoError::Malformed(
                    "keyring (slot roles: one primary first, then at most one recovery)",
                ));
            }
        };
        let method = UnsealMethod::from_code(r.u8()?)
            .ok_or(CryptoError::Malformed("keyring (unknown slot method)"))?;
        let len = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if len > MAX_SLOT_PARAMS {
            return Err(CryptoError::Malformed("keyring (slot parameters too long)"));
        }
        let params = r.bytes(len)?;
        let mut p = Reader::new(params, "keyring (slot parameters truncated)");
        let salt = p.array()?;
        let kind = match method {
            UnsealMethod::Keyfile => SlotKind::Keyfile,
            UnsealMethod::Passphrase => {
                let argon = Argon2Params {
                    memory_kib: p.u32()?,
                    iterations: p.u32()?,
                    parallelism: p.u32()?,
                };
                if argon.check().is_err() {
                    return Err(CryptoError::Malformed(
                        "keyring (argon2 parameters out of range)",
                    ));
                }
                SlotKind::Passphrase(argon)
            }
            UnsealMethod::Peers => SlotKind::Peers(Box::new(decode_peer_slot(&mut p)?)),
            UnsealMethod::Tpm2 => SlotKind::Tpm2(decode_tpm2_blob(&mut p)?),
            UnsealMethod::Tpm2Peers => {
                let blob = decode_tpm2_blob(&mut p)?;
                SlotKind::Tpm2Peers(blob, Box::new(decode_peer_slot(&mut p)?))
            }
        };
        p.finish("keyring (trailing slot parameter bytes)")?;
        if role == SlotRole::Recovery && method != UnsealMethod::Passphrase {
            return Err(CryptoError::Malformed(
                "keyring (a recovery slot must be a passphrase)",
            ));
        }
        slots.push(Slot {
            role,
            kind,
            salt,
            wrapped_root: r.array()?,
        });
    }
    if slots.len() == 1 && matches!(slots[0].kind, SlotKind::Keyfile | SlotKind::Passphrase(_)) {
        // One keyfile or passphrase slot has exactly one encoding: version 1.
        return Err(CryptoError::Malformed(
            "keyring (a lone keyfile or passphrase slot must use version 1)",
        ));
    }
    Ok(slots)
}

/// A fixed-length secret given by a caller.
fn check_len(k: &SecretBytes, expected: usize, what: &'static str) -> Result<()> {
    if k.len() != expected {
        return Err(CryptoError::BadLength {
            what,
            expected,
            got: k.len(),
        });
    }
    Ok(())
}

/// A TPM object as a slot may hold it: 1 to [`MAX_TPM2_BLOB`] bytes (its own format is the
/// TPM crate's; the slot's AAD authenticates it).
fn check_tpm2_blob(blob: &[u8]) -> Result<()> {
    if blob.is_empty() || blob.len() > MAX_TPM2_BLOB {
        return Err(CryptoError::Malformed(
            "keyring (tpm2 object must be 1 to 8192 bytes)",
        ));
    }
    Ok(())
}

fn decode_tpm2_blob(p: &mut Reader<'_>) -> Result<Vec<u8>> {
    let len = usize::try_from(p.u32()?).unwrap_or(usize::MAX);
    if len == 0 || len > MAX_TPM2_BLOB {
        return Err(CryptoError::Malformed(
            "keyring (tpm2 object must be 1 to 8192 bytes)",
        ));
    }
    Ok(p.bytes(len)?.to_vec())
}

/// The peer slot that runs to the end of a slot's parameters.
fn decode_peer_slot(p: &mut Reader<'_>) -> Result<PeerSlot> {
    let rest = p.bytes(p.remaining())?;
    PeerSlot::decode(rest)
        .map_err(|_| CryptoError::Malformed("keyring (peer slot does not decode)"))
}

/// `u32(len) || bytes`; lengths here are bounded by [`MAX_TPM2_BLOB`].
fn put_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Derives the key that wraps the root secret in `slot` (SPEC.md "Unseal key").
fn unseal_key(slot: &Slot, secret: UnsealSecret<'_>) -> Result<Zeroizing<[u8; 32]>> {
    if secret.method() != slot.method() {
        return Err(CryptoError::UnsealMethodMismatch {
            keyring: slot.method().as_str(),
            given: secret.method().as_str(),
        });
    }
    let mut key = Zeroizing::new([0u8; 32]);
    match (secret, &slot.kind) {
        (UnsealSecret::Keyfile(file), _) => {
            if file.len() != KEYFILE_LEN {
                return Err(CryptoError::BadLength {
                    what: "unseal key file",
                    expected: KEYFILE_LEN,
                    got: file.len(),
                });
            }
            Hkdf::<Sha256>::new(Some(&slot.salt[..]), file.expose_secret())
                .expand(UNSEAL_KEYFILE_INFO, key.as_mut())
                .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        }
        (UnsealSecret::Passphrase(pass), SlotKind::Passphrase(a)) => {
            let params = Params::new(a.memory_kib, a.iterations, a.parallelism, Some(32))
                .map_err(|e| CryptoError::Kdf(e.to_string()))?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_into(pass.expose_secret(), &slot.salt, key.as_mut())
                .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        }
        (UnsealSecret::PeersKey(k), _) => {
            if k.len() != PEERS_SLOT_KEY_LEN {
                return Err(CryptoError::BadLength {
                    what: "peers slot key",
                    expected: PEERS_SLOT_KEY_LEN,
                    got: k.len(),
                });
            }
            Hkdf::<Sha256>::new(Some(&slot.salt[..]), k.expose_secret())
                .expand(UNSEAL_PEERS_INFO, key.as_mut())
                .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        }
        (UnsealSecret::Tpm2Key(k), _) => {
            check_len(k, TPM2_SLOT_KEY_LEN, "tpm2 slot key")?;
            Hkdf::<Sha256>::new(Some(&slot.salt[..]), k.expose_secret())
                .expand(UNSEAL_TPM2_INFO, key.as_mut())
                .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        }
        (UnsealSecret::Tpm2PeersKeys { tpm, peers }, _) => {
            check_len(tpm, TPM2_SLOT_KEY_LEN, "tpm2 slot key")?;
            check_len(peers, PEERS_SLOT_KEY_LEN, "peers slot key")?;
            let ikm = Zeroizing::new([tpm.expose_secret(), peers.expose_secret()].concat());
            Hkdf::<Sha256>::new(Some(&slot.salt[..]), &ikm)
                .expand(UNSEAL_TPM2_PEERS_INFO, key.as_mut())
                .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        }
        // The method check above makes a passphrase meet a passphrase slot.
        (UnsealSecret::Passphrase(_), _) => {
            return Err(CryptoError::Malformed(
                "keyring (passphrase slot without parameters)",
            ));
        }
    }
    Ok(key)
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

/// Why a passphrase read from a file or a terminal was refused ([`passphrase_line`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PassphraseLineError {
    /// Nothing but line ends.
    #[error("is empty")]
    Empty,
    /// A line end inside: which line is meant cannot be told.
    #[error("holds more than one line: a passphrase file holds the passphrase alone, on one line")]
    MoreThanOneLine,
    /// Not text.
    #[error("is not UTF-8 text")]
    NotUtf8,
}

/// The passphrase a passphrase file (or a line typed at a prompt) holds: one line of UTF-8
/// text, without its final line ends (`\n`, `\r\n`). The one rule for `lockboxd init` and
/// every `lockboxctl` command that reads a passphrase, so that whatever one sets the other can
/// give: a passphrase of two lines set by one and sent as its first line by the other would
/// open nothing. Borrowed from `text`, so the caller keeps the only copy in its own wiped
/// buffer.
pub fn passphrase_line(text: &[u8]) -> std::result::Result<&[u8], PassphraseLineError> {
    let mut end = text.len();
    while end > 0 && matches!(text[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let line = &text[..end];
    if line.is_empty() {
        return Err(PassphraseLineError::Empty);
    }
    if line.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        return Err(PassphraseLineError::MoreThanOneLine);
    }
    if std::str::from_utf8(line).is_err() {
        return Err(PassphraseLineError::NotUtf8);
    }
    Ok(line)
}

#[cfg(test)]
mod tests;
