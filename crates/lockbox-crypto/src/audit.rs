//! Hash-chained audit log entries (SPEC.md "Audit entry", DESIGN.md §2.9).
//!
//! Each entry names the hash of the one before, so editing, dropping or reordering any entry
//! breaks every later link; periodic checkpoints signed by the node's identity key stop an
//! attacker with disk access from simply recomputing the chain. Entries are plaintext and
//! never contain key bytes.

mod chain;

pub use chain::{AuditChainError, ChainSummary, ChainVerifier};

use sha2::{Digest, Sha256};

use crate::error::{CryptoError, Result};
use crate::identity::SigningIdentity;
use crate::wire::Reader;

/// Entry format version.
pub const AUDIT_VERSION: u8 = 0x01;
/// Prefix of the hashed bytes, so an entry hash is never a hash of anything else.
pub const AUDIT_HASH_LABEL: &[u8] = b"lockbox/v1/audit";
/// Signature domain of checkpoints.
pub const CHECKPOINT_DOMAIN: &str = "lockbox/v1/audit-checkpoint";
/// The `prev_hash` of the first entry (seq 1).
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// What happened; all fields are free text chosen by the daemon, never secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEvent {
    /// When, in milliseconds since the Unix epoch (passed in: this crate has no clock).
    pub time_unix_ms: u64,
    /// Who asked: a SPIFFE id, a uid, or the daemon itself.
    pub actor: String,
    /// What was asked, e.g. `key.create`, `unseal`, `kek.rotate`.
    pub action: String,
    /// The key id concerned, or empty.
    pub key_id: String,
    /// `ok` or the failed check.
    pub outcome: String,
    /// Anything else worth keeping.
    pub detail: String,
}

/// A signature by the node's identity key over [`checkpoint_message`]`(seq, prev_hash)` of
/// the entry carrying it, i.e. over the whole chain before that entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Public key of the signer, so a verifier can say which key signed.
    pub signer: [u8; 32],
    /// Ed25519 signature under [`CHECKPOINT_DOMAIN`].
    pub signature: [u8; 64],
}

/// One audit log entry, stored by the daemon under key `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// [`AuditEntry::hash`] of entry `seq - 1`, or [`GENESIS_HASH`] for seq 1.
    pub prev_hash: [u8; 32],
    /// What happened.
    pub event: AuditEvent,
    /// Present on periodic entries.
    pub checkpoint: Option<Checkpoint>,
}

impl AuditEntry {
    /// Canonical bytes (SPEC.md "Audit entry"): one encoding per entry, so the hash is stable.
    ///
    /// # Panics
    /// If a text field is 4 GiB or longer, which the daemon never produces.
    pub fn encode(&self) -> Vec<u8> {
        let e = &self.event;
        let text = e.actor.len() + e.action.len() + e.key_id.len() + e.outcome.len();
        let mut out = Vec::with_capacity(1 + 8 + 32 + 8 + 20 + text + e.detail.len() + 97);
        out.push(AUDIT_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&e.time_unix_ms.to_be_bytes());
        for s in [&e.actor, &e.action, &e.key_id, &e.outcome, &e.detail] {
            let n = u32::try_from(s.len()).expect("audit text field under 4 GiB");
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        match &self.checkpoint {
            None => out.push(0),
            Some(c) => {
                out.push(1);
                out.extend_from_slice(&c.signer);
                out.extend_from_slice(&c.signature);
            }
        }
        out
    }

    /// Parses [`AuditEntry::encode`] output strictly: version, lengths, UTF-8, checkpoint flag,
    /// no trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<AuditEntry> {
        let mut r = Reader::new(bytes, "audit entry (truncated)");
        let version = r.u8()?;
        if version != AUDIT_VERSION {
            return Err(CryptoError::UnsupportedVersion {
                what: "audit entry",
                version,
            });
        }
        let seq = r.u64()?;
        let prev_hash = r.array()?;
        let time_unix_ms = r.u64()?;
        let mut text = || -> Result<String> {
            let b = r.len_prefixed()?;
            String::from_utf8(b.to_vec())
                .map_err(|_| CryptoError::Malformed("audit entry (text is not utf-8)"))
        };
        let event = AuditEvent {
            time_unix_ms,
            actor: text()?,
            action: text()?,
            key_id: text()?,
            outcome: text()?,
            detail: text()?,
        };
        let checkpoint = match r.u8()? {
            0 => None,
            1 => Some(Checkpoint {
                signer: r.array()?,
                signature: r.array()?,
            }),
            _ => return Err(CryptoError::Malformed("audit entry (bad checkpoint flag)")),
        };
        r.finish("audit entry (trailing bytes)")?;
        Ok(AuditEntry {
            seq,
            prev_hash,
            event,
            checkpoint,
        })
    }

    /// `SHA-256("lockbox/v1/audit" || 0x00 || encode())`: the next entry's `prev_hash`.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(AUDIT_HASH_LABEL);
        h.update([0u8]);
        h.update(self.encode());
        h.finalize().into()
    }
}

/// The bytes a checkpoint signs: `seq:u64 BE || prev_hash`.
///
/// `prev_hash` commits to every earlier entry, so one signature vouches for the whole chain
/// before `seq`.
pub fn checkpoint_message(seq: u64, prev_hash: &[u8; 32]) -> Vec<u8> {
    [&seq.to_be_bytes()[..], &prev_hash[..]].concat()
}

/// Signs a checkpoint for the entry at `seq` whose predecessor hashes to `prev_hash`.
pub fn sign_checkpoint(identity: &SigningIdentity, seq: u64, prev_hash: &[u8; 32]) -> Checkpoint {
    Checkpoint {
        signer: identity.public_key(),
        signature: identity.sign(CHECKPOINT_DOMAIN, &checkpoint_message(seq, prev_hash)),
    }
}

#[cfg(test)]
mod tests;
