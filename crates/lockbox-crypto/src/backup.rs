//! Offline backups of a lockbox's keys (SPEC.md "Backup file", DESIGN.md §8).
//!
//! In the spirit of age: a random **file key** is sealed to each recipient in its own HPKE
//! stanza (X25519 / HKDF-SHA256 / ChaCha20-Poly1305, Base mode), the header is MAC'd under a
//! key derived from the file key, and the payload (every key id with its labels, origin,
//! versions and material) is one ChaCha20-Poly1305 ciphertext under another derived key with
//! the whole header as AAD. So a reader holding any one recipient's identity checks the whole
//! file before it returns anything, and a flipped, dropped, appended or reordered byte
//! anywhere is refused. The daemon seals (plaintext never leaves it for an export); the
//! recovery identity lives offline and opens the file in `lockboxctl backup restore`.
//!
//! A recipient holds the file key, so it could rewrite the *other* recipients' stanzas of a
//! file it can open; as in age, recipients are not authenticated against each other.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use hpke::aead::ChaCha20Poly1305 as HpkeChaCha;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::CryptoError;
use crate::identity::HpkeIdentity;
use crate::secret::{SecretBytes, random_array, random_key};
use crate::trust::printable;
use crate::wire::Reader;
use crate::wrap::{EphemeralIkm, MAX_KEY_ID_LEN, MAX_MATERIAL_LEN, SUITE_X25519_SHA256_CHACHA20};

type Kem = X25519HkdfSha256;

/// File magic: a wrong file is reported as "not a lockbox backup", not as a failed check.
pub const BACKUP_MAGIC: &[u8; 4] = b"LBKB";
/// The only backup format version so far.
pub const BACKUP_VERSION: u8 = 0x01;
/// Most recipients (stanzas) in one backup: bounds the work an opened file can demand.
pub const MAX_BACKUP_RECIPIENTS: usize = 64;
/// Largest backup file accepted (and produced): far above a lockbox's worth of keys, and
/// within what one gRPC message carries.
pub const MAX_BACKUP_LEN: usize = 64 << 20;
/// Longest source node name in the header (as for transfers).
pub const MAX_BACKUP_NODE_LEN: usize = 255;
/// Bytes of one stanza: recipient fingerprint, HPKE `enc`, wrapped file key with its tag.
pub const BACKUP_STANZA_LEN: usize = 32 + 32 + 32 + 16;
/// Bytes of the header MAC (HMAC-SHA256).
pub const BACKUP_MAC_LEN: usize = 32;
/// Bytes of the payload's AEAD tag.
pub const BACKUP_TAG_LEN: usize = 16;

/// Prefix of a recipient (public key) in text.
pub const RECIPIENT_PREFIX: &str = "lockbox-recipient1:";
/// Prefix of an identity (private key) in text.
pub const IDENTITY_PREFIX: &str = "lockbox-identity1:";

/// Leading label of a stanza's HPKE `info`.
pub const BACKUP_STANZA_LABEL: &str = "lockbox/v1/backup-stanza";
/// HKDF info of the header MAC key.
pub const BACKUP_HEADER_LABEL: &str = "lockbox/v1/backup-header";
/// HKDF info of the payload key.
pub const BACKUP_PAYLOAD_LABEL: &str = "lockbox/v1/backup-payload";
/// Prefix of the recipient fingerprint hash.
pub const BACKUP_RECIPIENT_LABEL: &str = "lockbox/v1/backup-recipient";

/// Bytes before the source node name: magic, version, suite, created time, payload salt.
const FIXED_HEADER_LEN: usize = 4 + 1 + 8 + 8 + 16;

/// Why a backup, recipient or identity was refused. Messages are lowercase, name the problem,
/// and never contain key bytes.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file does not start with [`BACKUP_MAGIC`]: not a backup at all.
    #[error("not a lockbox backup (bad magic)")]
    BadMagic,
    /// A backup of a format version this build does not read.
    #[error("unsupported backup version {0} (this build reads version {BACKUP_VERSION})")]
    UnsupportedVersion(u8),
    /// A backup sealed with an HPKE suite this build does not implement.
    #[error("unsupported backup suite {0:#018x}")]
    UnsupportedSuite(u64),
    /// The file ends before the header is complete; names the part that is cut.
    #[error("truncated backup: the file ends inside the {0}")]
    Truncated(&'static str),
    /// A field of the header, or of an authenticated payload, breaks a rule of SPEC.md.
    #[error("malformed backup: {0}")]
    Malformed(String),
    /// None of the stanzas is for this identity's recipient.
    #[error(
        "no stanza for this identity: the backup is sealed to {recipients} recipient(s), and \
         {fingerprint} is not one of them (wrong identity file?)"
    )]
    NoStanza {
        /// How many stanzas the file has.
        recipients: usize,
        /// The identity's recipient fingerprint (hex).
        fingerprint: String,
    },
    /// The stanza for this identity does not open: tampered stanza or header.
    #[error("authentication failed: the stanza for this identity does not open (tampered file)")]
    StanzaAuthFailed,
    /// The header MAC does not verify: a header field or a stanza was changed.
    #[error("authentication failed: header mac mismatch (tampered header or stanzas)")]
    HeaderAuthFailed,
    /// The payload does not authenticate: changed, cut short or extended.
    #[error("authentication failed: the payload does not open (tampered or truncated payload)")]
    PayloadAuthFailed,
    /// A recipient string or file is not a usable recipient.
    #[error("bad recipient: {0}")]
    BadRecipient(String),
    /// An identity file is not a usable identity.
    #[error("bad identity: {0}")]
    BadIdentity(String),
    /// The file (or what it would become) is larger than [`MAX_BACKUP_LEN`].
    #[error("backup too large: {got} bytes, at most {MAX_BACKUP_LEN}")]
    TooLarge {
        /// Its size.
        got: usize,
    },
    /// The OS random generator or a primitive failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Shorthand for this module's results.
pub type BackupResult<T> = std::result::Result<T, BackupError>;

/// A recovery public key: what `backup export` seals to. Printable as
/// `lockbox-recipient1:<base64 of the 32-byte X25519 key>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupRecipient {
    public_key: [u8; 32],
}

impl BackupRecipient {
    /// A recipient from its raw X25519 public key.
    pub fn from_public_key(public_key: [u8; 32]) -> Self {
        Self { public_key }
    }

    /// The raw X25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Parses the text form, strictly (prefix, canonical padded base64, 32 bytes), so a
    /// pasted identity, a controller key or a truncated line is refused, not sealed to.
    pub fn parse(text: &str) -> BackupResult<Self> {
        // The text is never echoed: it may be an identity pasted by mistake.
        let b64 = text.strip_prefix(RECIPIENT_PREFIX).ok_or_else(|| {
            BackupError::BadRecipient(if text.trim_start().starts_with(IDENTITY_PREFIX) {
                "this is an identity (private key), not a recipient: use its .pub file".into()
            } else {
                format!("it does not start with {RECIPIENT_PREFIX}")
            })
        })?;
        let bytes = Zeroizing::new(BASE64.decode(b64).map_err(|_| {
            BackupError::BadRecipient(format!("invalid base64 after {RECIPIENT_PREFIX}"))
        })?);
        let public_key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            BackupError::BadRecipient(format!("key is {} bytes, not 32", bytes.len()))
        })?;
        Ok(Self { public_key })
    }

    /// SHA-256 of `"lockbox/v1/backup-recipient" || 0x00 || public key`: names the recipient
    /// in stanzas, audit records and messages without repeating the key.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(BACKUP_RECIPIENT_LABEL.as_bytes());
        h.update([0u8]);
        h.update(self.public_key);
        h.finalize().into()
    }

    /// [`BackupRecipient::fingerprint`] in hex.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint())
    }
}

impl fmt::Display for BackupRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RECIPIENT_PREFIX}{}", BASE64.encode(self.public_key))
    }
}

/// A recovery private key: opens backups sealed to its [`BackupRecipient`]. Kept offline.
///
/// Wiped on drop; `Debug` shows only the recipient.
pub struct BackupIdentity {
    key: HpkeIdentity,
}

impl BackupIdentity {
    /// A fresh identity (`lockboxctl backup keygen`).
    pub fn generate() -> BackupResult<Self> {
        Ok(Self {
            key: HpkeIdentity::generate()?,
        })
    }

    /// The recipient that backups for this identity are sealed to.
    pub fn recipient(&self) -> BackupRecipient {
        BackupRecipient::from_public_key(self.key.public_key())
    }

    /// The text of an identity file: two comment lines (what it is, its recipient) and the
    /// `lockbox-identity1:<base64>` line. Wiped on drop.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let secret = self.key.to_secret();
        let encoded = Zeroizing::new(BASE64.encode(secret.expose_secret()));
        let mut out = Zeroizing::new(String::with_capacity(256));
        out.push_str("# lockbox backup identity: opens backups sealed to the recipient below.\n");
        out.push_str("# Keep it offline; anyone holding it can read those backups.\n");
        out.push_str(&format!("# recipient: {}\n", self.recipient()));
        out.push_str(IDENTITY_PREFIX);
        out.push_str(&encoded);
        out.push('\n');
        out
    }

    /// Parses an identity file: blank lines and lines starting with `#` are skipped; exactly
    /// one `lockbox-identity1:<base64 of 32 bytes>` line must remain.
    pub fn from_file_text(text: &str) -> BackupResult<Self> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines
            .next()
            .ok_or_else(|| BackupError::BadIdentity("no identity line".into()))?;
        if lines.next().is_some() {
            return Err(BackupError::BadIdentity(
                "more than one identity line".into(),
            ));
        }
        let b64 = line.strip_prefix(IDENTITY_PREFIX).ok_or_else(|| {
            let what = if line.starts_with(RECIPIENT_PREFIX) {
                "this is a recipient (public key), not an identity".to_string()
            } else {
                format!("the identity line does not start with {IDENTITY_PREFIX}")
            };
            BackupError::BadIdentity(what)
        })?;
        let bytes = SecretBytes::new(BASE64.decode(b64).map_err(|_| {
            BackupError::BadIdentity(format!("invalid base64 after {IDENTITY_PREFIX}"))
        })?);
        if bytes.len() != 32 {
            return Err(BackupError::BadIdentity(format!(
                "key is {} bytes, not 32",
                bytes.len()
            )));
        }
        Ok(Self {
            key: HpkeIdentity::from_secret(&bytes)?,
        })
    }
}

impl fmt::Debug for BackupIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupIdentity")
            .field("recipient", &self.recipient().to_string())
            .field("secret", &format_args!("[redacted]"))
            .finish()
    }
}

/// State of a key version in a backup (destroyed versions are never backed up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupVersionState {
    /// The version `get` returns.
    Active,
    /// A pending rekey's new version.
    Rekeying,
    /// Readable for decryption only.
    Retired,
}

impl BackupVersionState {
    fn to_byte(self) -> u8 {
        match self {
            Self::Active => 1,
            Self::Rekeying => 2,
            Self::Retired => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Active),
            2 => Some(Self::Rekeying),
            3 => Some(Self::Retired),
            _ => None,
        }
    }
}

/// One version of a backed-up key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVersion {
    /// The version number (1, 2, ...).
    pub version: u32,
    /// Its state.
    pub state: BackupVersionState,
    /// When it was made.
    pub created_unix_ms: u64,
    /// Index into [`BackupContents::materials`]: key ids sharing a material (snapshots,
    /// same-key clones) point at the same index, so a restore keeps them sharing.
    pub material: u32,
}

/// Where a backed-up key came from (the daemon's `Origin`), kept so a restore recreates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupOrigin {
    /// created | snapshot | clone-same-key | clone-new-key | received
    pub kind: String,
    /// The key it was derived from, if any.
    pub from_key_id: String,
    /// For received keys: the node it came from.
    pub from_node: String,
    /// For received keys: the grant (hex id).
    pub grant_id: String,
}

/// One backed-up key id with everything needed to recreate it except its material bytes,
/// which it references by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKey {
    /// The key id.
    pub key_id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_unix_ms: u64,
    /// Its provenance.
    pub origin: BackupOrigin,
    /// Its own clone policy; empty: the node's default.
    pub clone_policy: String,
    /// True for a standing replica (REPLICATE grant), restored as one.
    pub replica: bool,
    /// The version `get` returns.
    pub current_version: u32,
    /// Every readable version, ascending.
    pub versions: Vec<BackupVersion>,
}

/// What a backup holds: distinct materials and the key ids that use them.
///
/// `Debug` shows materials as `[redacted]` (they are [`SecretBytes`]).
#[derive(Debug, Default)]
pub struct BackupContents {
    /// Distinct secret materials, in order of first use by `keys` (SPEC.md).
    pub materials: Vec<SecretBytes>,
    /// Key ids in ascending byte order.
    pub keys: Vec<BackupKey>,
}

/// The unauthenticated facts of a backup's header, for messages and `inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupHeader {
    /// The format version.
    pub version: u8,
    /// When the backup was made (as the sealing node's clock said).
    pub created_unix_ms: u64,
    /// The node that sealed it.
    pub source_node: String,
    /// Recipient fingerprints, one per stanza, in order.
    pub recipients: Vec<[u8; 32]>,
}

/// An opened, fully verified backup.
#[derive(Debug)]
pub struct OpenedBackup {
    /// Its header (now authenticated).
    pub header: BackupHeader,
    /// Its keys and materials.
    pub contents: BackupContents,
}

/// The parsed layout of a backup file, borrowed from it.
struct Parsed<'a> {
    header: BackupHeader,
    /// Bytes `[0, prefix_len)`: everything before the stanzas (bound into each stanza).
    prefix: &'a [u8],
    /// Bytes covered by the MAC: everything before it.
    maced: &'a [u8],
    /// The whole header, MAC included: the payload's AAD.
    header_bytes: &'a [u8],
    payload_salt: [u8; 16],
    stanzas: Vec<Stanza<'a>>,
    mac: &'a [u8],
    payload: &'a [u8],
}

struct Stanza<'a> {
    fingerprint: [u8; 32],
    enc: &'a [u8],
    wrapped: &'a [u8],
}

fn malformed(why: impl Into<String>) -> BackupError {
    BackupError::Malformed(why.into())
}

/// Maps a short read of the header reader to [`BackupError::Truncated`].
fn truncated(e: CryptoError) -> BackupError {
    match e {
        CryptoError::Malformed(what) => BackupError::Truncated(what),
        other => BackupError::Crypto(other),
    }
}

fn len_u32(n: usize, what: &str) -> BackupResult<u32> {
    u32::try_from(n).map_err(|_| malformed(format!("{what} does not fit in 32 bits")))
}

fn lp(out: &mut Vec<u8>, bytes: &[u8], what: &str) -> BackupResult<()> {
    out.extend_from_slice(&len_u32(bytes.len(), what)?.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The rules of SPEC.md "Backup payload", shared by encoding (which refuses to write what a
/// reader would refuse), decoding, and the daemon before a restore (whose request it gets
/// from a client, not from a file).
pub fn check_backup_contents(c: &BackupContents) -> BackupResult<()> {
    if c.materials.len() > u32::MAX as usize || c.keys.len() > u32::MAX as usize {
        return Err(malformed("too many keys or materials"));
    }
    for (i, m) in c.materials.iter().enumerate() {
        if !(1..=MAX_MATERIAL_LEN).contains(&m.len()) {
            return Err(malformed(format!(
                "material {i} is {} bytes, not 1 to {MAX_MATERIAL_LEN}",
                m.len()
            )));
        }
    }
    let mut next_material = 0u64;
    let mut previous: Option<&str> = None;
    for k in &c.keys {
        let name = printable(&k.key_id);
        if !(1..=MAX_KEY_ID_LEN).contains(&k.key_id.len()) {
            return Err(malformed(format!(
                "key id {name:?} is {} bytes, not 1 to {MAX_KEY_ID_LEN}",
                k.key_id.len()
            )));
        }
        if previous.is_some_and(|p| p.as_bytes() >= k.key_id.as_bytes()) {
            return Err(malformed(format!("key {name} is out of order or repeated")));
        }
        previous = Some(&k.key_id);
        if k.labels.len() > u16::MAX as usize {
            return Err(malformed(format!("key {name} has too many labels")));
        }
        if k.versions.is_empty() || k.versions.len() > u16::MAX as usize {
            return Err(malformed(format!(
                "key {name} has {} versions, not 1 to {}",
                k.versions.len(),
                u16::MAX
            )));
        }
        let mut last = 0u32;
        for v in &k.versions {
            if v.version <= last {
                return Err(malformed(format!(
                    "key {name}: version {} is zero, repeated or out of order",
                    v.version
                )));
            }
            last = v.version;
            let m = u64::from(v.material);
            if m >= c.materials.len() as u64 {
                return Err(malformed(format!(
                    "key {name} version {}: material {m} does not exist",
                    v.version
                )));
            }
            if m > next_material {
                return Err(malformed(format!(
                    "key {name} version {}: material {m} is used before material {next_material}",
                    v.version
                )));
            }
            if m == next_material {
                next_material += 1;
            }
        }
        if !k.versions.iter().any(|v| v.version == k.current_version) {
            return Err(malformed(format!(
                "key {name}: current version {} is not among its versions",
                k.current_version
            )));
        }
    }
    if next_material != c.materials.len() as u64 {
        return Err(malformed(format!(
            "material {next_material} is not used by any key"
        )));
    }
    Ok(())
}

/// Exact length of the encoded payload, so its buffer never reallocates (a reallocation
/// would leave a copy of the materials behind, unwiped).
fn payload_len(c: &BackupContents) -> usize {
    let mut n = 4 + 4;
    for m in &c.materials {
        n += 1 + m.len();
    }
    for k in &c.keys {
        n += 4 + k.key_id.len() + 8 + 1;
        n += 4 * 5
            + k.origin.kind.len()
            + k.origin.from_key_id.len()
            + k.origin.from_node.len()
            + k.origin.grant_id.len()
            + k.clone_policy.len();
        n += 4 + 2;
        for (name, value) in &k.labels {
            n += 8 + name.len() + value.len();
        }
        n += 2 + k.versions.len() * (4 + 1 + 8 + 4);
    }
    n
}

/// Encodes the payload plaintext (SPEC.md "Backup payload") into a buffer wiped on drop.
fn encode_payload(c: &BackupContents) -> BackupResult<Zeroizing<Vec<u8>>> {
    check_backup_contents(c)?;
    let mut out = Zeroizing::new(Vec::with_capacity(payload_len(c)));
    out.extend_from_slice(&len_u32(c.materials.len(), "material count")?.to_be_bytes());
    for m in &c.materials {
        // 1..=64 bytes: checked above.
        out.push(m.len() as u8);
        out.extend_from_slice(m.expose_secret());
    }
    out.extend_from_slice(&len_u32(c.keys.len(), "key count")?.to_be_bytes());
    for k in &c.keys {
        lp(&mut out, k.key_id.as_bytes(), "key id")?;
        out.extend_from_slice(&k.created_unix_ms.to_be_bytes());
        out.push(u8::from(k.replica));
        for s in [
            &k.origin.kind,
            &k.origin.from_key_id,
            &k.origin.from_node,
            &k.origin.grant_id,
            &k.clone_policy,
        ] {
            lp(&mut out, s.as_bytes(), "origin field")?;
        }
        out.extend_from_slice(&k.current_version.to_be_bytes());
        out.extend_from_slice(&(k.labels.len() as u16).to_be_bytes());
        for (name, value) in &k.labels {
            lp(&mut out, name.as_bytes(), "label name")?;
            lp(&mut out, value.as_bytes(), "label value")?;
        }
        out.extend_from_slice(&(k.versions.len() as u16).to_be_bytes());
        for v in &k.versions {
            out.extend_from_slice(&v.version.to_be_bytes());
            out.push(v.state.to_byte());
            out.extend_from_slice(&v.created_unix_ms.to_be_bytes());
            out.extend_from_slice(&v.material.to_be_bytes());
        }
    }
    debug_assert_eq!(out.len(), payload_len(c));
    Ok(out)
}

fn string(r: &mut Reader<'_>, what: &str) -> BackupResult<String> {
    let bytes = r.len_prefixed().map_err(payload_short)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed(format!("{what} is not utf-8")))
}

fn payload_short(_: CryptoError) -> BackupError {
    malformed("payload ends early")
}

/// Decodes an authenticated payload. Only a faulty or malicious sealer can produce one that
/// fails here; it is checked as strictly as everything else.
fn decode_payload(bytes: &[u8]) -> BackupResult<BackupContents> {
    let mut r = Reader::new(bytes, "payload");
    let n_materials = r.u32().map_err(payload_short)? as usize;
    // Each material takes at least 2 bytes: bound the allocation by what is there.
    let mut materials = Vec::with_capacity(n_materials.min(bytes.len() / 2));
    for _ in 0..n_materials {
        let len = usize::from(r.u8().map_err(payload_short)?);
        materials.push(SecretBytes::new(
            r.bytes(len).map_err(payload_short)?.to_vec(),
        ));
    }
    let n_keys = r.u32().map_err(payload_short)? as usize;
    let mut keys = Vec::with_capacity(n_keys.min(bytes.len() / 64));
    for _ in 0..n_keys {
        let key_id = string(&mut r, "key id")?;
        let created_unix_ms = r.u64().map_err(payload_short)?;
        let replica = match r.u8().map_err(payload_short)? {
            0 => false,
            1 => true,
            f => return Err(malformed(format!("key flags {f:#04x} are not 0 or 1"))),
        };
        let origin = BackupOrigin {
            kind: string(&mut r, "origin kind")?,
            from_key_id: string(&mut r, "origin key id")?,
            from_node: string(&mut r, "origin node")?,
            grant_id: string(&mut r, "origin grant id")?,
        };
        let clone_policy = string(&mut r, "clone policy")?;
        let current_version = r.u32().map_err(payload_short)?;
        let n_labels = r.u16().map_err(payload_short)?;
        let mut labels = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..n_labels {
            let name = string(&mut r, "label name")?;
            let value = string(&mut r, "label value")?;
            if last
                .as_deref()
                .is_some_and(|l| l.as_bytes() >= name.as_bytes())
            {
                return Err(malformed(format!(
                    "key {}: labels out of order or repeated",
                    printable(&key_id)
                )));
            }
            last = Some(name.clone());
            labels.insert(name, value);
        }
        let n_versions = r.u16().map_err(payload_short)?;
        let mut versions = Vec::with_capacity(usize::from(n_versions));
        for _ in 0..n_versions {
            let version = r.u32().map_err(payload_short)?;
            let state_byte = r.u8().map_err(payload_short)?;
            let state = BackupVersionState::from_byte(state_byte).ok_or_else(|| {
                malformed(format!(
                    "key {} version {version}: state {state_byte} is not 1, 2 or 3",
                    printable(&key_id)
                ))
            })?;
            versions.push(BackupVersion {
                version,
                state,
                created_unix_ms: r.u64().map_err(payload_short)?,
                material: r.u32().map_err(payload_short)?,
            });
        }
        keys.push(BackupKey {
            key_id,
            labels,
            created_unix_ms,
            origin,
            clone_policy,
            replica,
            current_version,
            versions,
        });
    }
    r.finish("payload")
        .map_err(|_| malformed("trailing bytes after the last key"))?;
    let contents = BackupContents { materials, keys };
    check_backup_contents(&contents)?;
    Ok(contents)
}

/// Everything before the stanzas: `magic || version || suite || created || salt ||
/// lp(source_node) || u16(stanza count)`.
fn header_prefix(
    created_unix_ms: u64,
    payload_salt: &[u8; 16],
    source_node: &str,
    n_stanzas: usize,
) -> BackupResult<Vec<u8>> {
    let n = u16::try_from(n_stanzas).map_err(|_| malformed("too many recipients"))?;
    let mut out = Vec::with_capacity(FIXED_HEADER_LEN + 4 + source_node.len() + 2);
    out.extend_from_slice(BACKUP_MAGIC);
    out.push(BACKUP_VERSION);
    out.extend_from_slice(&SUITE_X25519_SHA256_CHACHA20.to_be_bytes());
    out.extend_from_slice(&created_unix_ms.to_be_bytes());
    out.extend_from_slice(payload_salt);
    lp(&mut out, source_node.as_bytes(), "source node")?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(out)
}

/// `"lockbox/v1/backup-stanza" || 0x00 || header prefix`: a stanza opens only in the file
/// (node, time, salt, recipient count) it was made for.
fn stanza_info(prefix: &[u8]) -> Vec<u8> {
    [BACKUP_STANZA_LABEL.as_bytes(), &[0u8], prefix].concat()
}

/// A 32-byte key derived from the file key under `label` (and `salt`, for the payload).
fn derive(
    file_key: &[u8; 32],
    salt: Option<&[u8]>,
    label: &str,
) -> BackupResult<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(salt, file_key)
        .expand(label.as_bytes(), key.as_mut())
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(key)
}

fn header_mac(file_key: &[u8; 32], maced: &[u8]) -> BackupResult<Hmac<Sha256>> {
    let key = derive(file_key, None, BACKUP_HEADER_LABEL)?;
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.as_ref())
        .map_err(|_| CryptoError::Kdf("hmac key".into()))?;
    mac.update(maced);
    Ok(mac)
}

fn payload_cipher(file_key: &[u8; 32], salt: &[u8; 16]) -> BackupResult<ChaCha20Poly1305> {
    let key = derive(file_key, Some(salt), BACKUP_PAYLOAD_LABEL)?;
    Ok(ChaCha20Poly1305::new((&*key).into()))
}

/// Seals `contents` to every recipient (SPEC.md "Backup file"): one HPKE stanza each
/// wrapping a fresh random file key, a header MAC and one AEAD payload.
///
/// Refuses, before sealing anything: no recipient or more than [`MAX_BACKUP_RECIPIENTS`], a
/// recipient given twice, a source node name of 0 or more than 255 bytes, contents that break
/// the payload rules ([`BackupError::Malformed`]), a result over [`MAX_BACKUP_LEN`]. A
/// recipient key that is a low-order point is [`BackupError::BadRecipient`].
pub fn seal_backup(
    recipients: &[BackupRecipient],
    source_node: &str,
    created_unix_ms: u64,
    contents: &BackupContents,
) -> BackupResult<Vec<u8>> {
    if recipients.is_empty() || recipients.len() > MAX_BACKUP_RECIPIENTS {
        return Err(BackupError::BadRecipient(format!(
            "{} recipients, not 1 to {MAX_BACKUP_RECIPIENTS}",
            recipients.len()
        )));
    }
    let mut seen = HashSet::new();
    for r in recipients {
        if !seen.insert(r.public_key) {
            return Err(BackupError::BadRecipient(format!(
                "recipient {} is given twice",
                r.fingerprint_hex()
            )));
        }
    }
    if !(1..=MAX_BACKUP_NODE_LEN).contains(&source_node.len()) {
        return Err(malformed(format!(
            "source node name is {} bytes, not 1 to {MAX_BACKUP_NODE_LEN}",
            source_node.len()
        )));
    }
    let payload = encode_payload(contents)?;
    let total = FIXED_HEADER_LEN
        + 4
        + source_node.len()
        + 2
        + recipients.len() * BACKUP_STANZA_LEN
        + BACKUP_MAC_LEN
        + payload.len()
        + BACKUP_TAG_LEN;
    if total > MAX_BACKUP_LEN {
        return Err(BackupError::TooLarge { got: total });
    }

    let file_key = random_key()?;
    let salt: [u8; 16] = random_array()?;
    let mut out = header_prefix(created_unix_ms, &salt, source_node, recipients.len())?;
    out.reserve(total - out.len());
    let info = stanza_info(&out);
    for r in recipients {
        let fingerprint = r.fingerprint();
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&r.public_key)
            .map_err(|_| BackupError::BadRecipient("x25519 key rejected".into()))?;
        let ikm = random_key()?;
        let mut rng = EphemeralIkm::new(&ikm);
        let (enc, mut ctx) = hpke::setup_sender_with_rng::<HpkeChaCha, HkdfSha256, Kem>(
            &OpModeS::Base,
            &pk,
            &info,
            &mut rng,
        )
        .map_err(|_| {
            BackupError::BadRecipient(format!(
                "recipient {} is a low-order x25519 point",
                r.fingerprint_hex()
            ))
        })?;
        if !rng.used_exactly_once() {
            return Err(CryptoError::Malformed("hpke ephemeral key draw").into());
        }
        let wrapped = ctx
            .seal(file_key.as_ref(), &fingerprint)
            .map_err(|_| CryptoError::Malformed("hpke seal of the file key"))?;
        out.extend_from_slice(&fingerprint);
        out.extend_from_slice(&enc.to_bytes());
        out.extend_from_slice(&wrapped);
    }
    let mac = header_mac(&file_key, &out)?.finalize().into_bytes();
    out.extend_from_slice(&mac);
    let ciphertext = payload_cipher(&file_key, &salt)?
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: &payload,
                aad: &out,
            },
        )
        .map_err(|_| CryptoError::Malformed("backup payload (too long to seal)"))?;
    out.extend_from_slice(&ciphertext);
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

/// Splits a backup into its fields, checking everything that needs no key (SPEC.md
/// "Opening", steps 1 to 5).
fn parse(bytes: &[u8]) -> BackupResult<Parsed<'_>> {
    if bytes.len() > MAX_BACKUP_LEN {
        return Err(BackupError::TooLarge { got: bytes.len() });
    }
    let head = &bytes[..bytes.len().min(4)];
    if head != &BACKUP_MAGIC[..head.len()] {
        return Err(BackupError::BadMagic);
    }
    let mut r = Reader::new(bytes, "magic");
    r.bytes(4).map_err(truncated)?;
    let mut r = Reader::new(&bytes[4..], "header");
    let version = r.u8().map_err(truncated)?;
    if version != BACKUP_VERSION {
        return Err(BackupError::UnsupportedVersion(version));
    }
    let suite = r.u64().map_err(truncated)?;
    if suite != SUITE_X25519_SHA256_CHACHA20 {
        return Err(BackupError::UnsupportedSuite(suite));
    }
    let created_unix_ms = r.u64().map_err(truncated)?;
    let payload_salt: [u8; 16] = r.array().map_err(truncated)?;
    let node = r.len_prefixed().map_err(truncated)?;
    if !(1..=MAX_BACKUP_NODE_LEN).contains(&node.len()) {
        return Err(malformed(format!(
            "source node name is {} bytes, not 1 to {MAX_BACKUP_NODE_LEN}",
            node.len()
        )));
    }
    let source_node = std::str::from_utf8(node)
        .map_err(|_| malformed("source node name is not utf-8"))?
        .to_owned();
    let n = usize::from(r.u16().map_err(truncated)?);
    if !(1..=MAX_BACKUP_RECIPIENTS).contains(&n) {
        return Err(malformed(format!(
            "{n} stanzas, not 1 to {MAX_BACKUP_RECIPIENTS}"
        )));
    }
    let prefix_len = FIXED_HEADER_LEN + 4 + node.len() + 2;
    let mut r = Reader::new(&bytes[prefix_len..], "stanzas");
    let mut stanzas = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    for _ in 0..n {
        let fingerprint: [u8; 32] = r.array().map_err(truncated)?;
        let enc = r.bytes(32).map_err(truncated)?;
        let wrapped = r.bytes(48).map_err(truncated)?;
        if !seen.insert(fingerprint) {
            return Err(malformed("two stanzas for the same recipient"));
        }
        stanzas.push(Stanza {
            fingerprint,
            enc,
            wrapped,
        });
    }
    let mac_at = prefix_len + n * BACKUP_STANZA_LEN;
    let mut r = Reader::new(&bytes[mac_at..], "header mac");
    let mac = r.bytes(BACKUP_MAC_LEN).map_err(truncated)?;
    let payload_at = mac_at + BACKUP_MAC_LEN;
    let payload = &bytes[payload_at..];
    if payload.len() < BACKUP_TAG_LEN {
        return Err(BackupError::Truncated("payload"));
    }
    Ok(Parsed {
        header: BackupHeader {
            version,
            created_unix_ms,
            source_node,
            recipients: stanzas.iter().map(|s| s.fingerprint).collect(),
        },
        prefix: &bytes[..prefix_len],
        maced: &bytes[..mac_at],
        header_bytes: &bytes[..payload_at],
        payload_salt,
        stanzas,
        mac,
        payload,
    })
}

/// Reads a backup's header without any key: who sealed it, when, and to which recipients.
/// Nothing it returns is authenticated; [`open_backup`] checks it all.
pub fn inspect_backup(bytes: &[u8]) -> BackupResult<BackupHeader> {
    parse(bytes).map(|p| p.header)
}

/// Opens and verifies a whole backup with a recipient's identity (SPEC.md "Opening"): header
/// layout, this identity's stanza, the header MAC, then the payload, each failure its own
/// [`BackupError`]. Returns nothing unless every byte checked out.
pub fn open_backup(identity: &BackupIdentity, bytes: &[u8]) -> BackupResult<OpenedBackup> {
    let p = parse(bytes)?;
    let recipient = identity.recipient();
    let fingerprint = recipient.fingerprint();
    let stanza = p
        .stanzas
        .iter()
        .find(|s| s.fingerprint == fingerprint)
        .ok_or_else(|| BackupError::NoStanza {
            recipients: p.stanzas.len(),
            fingerprint: hex::encode(fingerprint),
        })?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(stanza.enc)
        .map_err(|_| BackupError::StanzaAuthFailed)?;
    let sk = identity.key.hpke_private_key()?;
    let mut ctx = hpke::setup_receiver::<HpkeChaCha, HkdfSha256, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        &stanza_info(p.prefix),
    )
    .map_err(|_| BackupError::StanzaAuthFailed)?;
    drop(sk);
    let opened = Zeroizing::new(
        ctx.open(stanza.wrapped, &stanza.fingerprint)
            .map_err(|_| BackupError::StanzaAuthFailed)?,
    );
    let mut file_key = Zeroizing::new([0u8; 32]);
    if opened.len() != 32 {
        return Err(BackupError::StanzaAuthFailed);
    }
    file_key.copy_from_slice(&opened);
    header_mac(&file_key, p.maced)?
        .verify_slice(p.mac)
        .map_err(|_| BackupError::HeaderAuthFailed)?;
    let plaintext = Zeroizing::new(
        payload_cipher(&file_key, &p.payload_salt)?
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: p.payload,
                    aad: p.header_bytes,
                },
            )
            .map_err(|_| BackupError::PayloadAuthFailed)?,
    );
    let contents = decode_payload(&plaintext)?;
    Ok(OpenedBackup {
        header: p.header,
        contents,
    })
}

#[cfg(test)]
mod tests;
