//! Transfer receipts (SPEC.md "Transfer receipts", DESIGN.md §6): the destination's signed
//! statement that it stored a grant's keys, which the source needs before it completes the
//! grant (and, for a MOVE, tombstones its copies).
//!
//! The body is a protobuf `ReceiptBody` encoded once by the destination; the signature covers
//! those exact bytes, which both ends store and a retry returns unchanged, so the source never
//! re-encodes to check it. The signature is made with the identity key the destination's
//! attestation binds; the source checks it with that attested key, then requires the body to
//! restate the grant exactly and its `stored` list to be well-formed, before it acts on it.

use std::collections::HashSet;

use lockbox_proto::v1::{GrantOp, ReceiptBody, StoredVersions};
use prost::Message as _;

use crate::grant::{GRANT_ID_LEN, VerifiedGrant};
use crate::identity::{SigningIdentity, verify_signature};
use crate::trust::printable;

/// Signature domain of receipt bodies. Unchanged from the daemon's earlier constant, so
/// receipts stored before signing moved here still verify.
pub const RECEIPT_DOMAIN: &str = "lockbox/v1/receipt";

/// Longest receipt body accepted, checked before anything else (64 MiB).
///
/// There is no limit on keys per grant to derive a tighter bound from (the controller's policy
/// sets one per caller, and an evacuation names every key of a lockbox), and none on versions
/// per key. This is the largest message either end of a transfer decodes (the peer service's
/// gRPC limit), so every receipt a source could receive fits, and nothing larger (a corrupted
/// stored record, a caller passing the wrong buffer) is hashed or decoded.
pub const MAX_RECEIPT_LEN: usize = 64 << 20;

/// Length of a receipt signature (Ed25519).
pub const RECEIPT_SIGNATURE_LEN: usize = 64;

/// A receipt as the destination returns and stores it: the exact body bytes and the signature
/// over them. The daemon puts them in `Receipt { body, signature }` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReceipt {
    /// `ReceiptBody` protobuf bytes, encoded once; what the signature covers.
    pub body: Vec<u8>,
    /// Ed25519 signature over `"lockbox/v1/receipt" || 0x00 || body`.
    pub signature: [u8; RECEIPT_SIGNATURE_LEN],
}

/// What the source knows a receipt must say, all of it from the grant it verified (never from
/// the receipt): see [`verify_receipt`].
#[derive(Debug, Clone, Copy)]
pub struct ReceiptExpectation<'a> {
    /// The grant's id.
    pub grant_id: &'a [u8; GRANT_ID_LEN],
    /// The grant's op.
    pub op: GrantOp,
    /// The grant's source node (this node).
    pub source_node: &'a str,
    /// The grant's destination node (the node whose key signed the receipt).
    pub dest_node: &'a str,
    /// The grant's key ids, in the grant's order.
    pub key_ids: &'a [String],
}

impl<'a> ReceiptExpectation<'a> {
    /// The expectation for a grant verified by [`crate::verify_grant`]: every field is the
    /// grant's, so a receipt for another grant, op, pair of nodes or set of keys is refused.
    pub fn for_grant(grant: &'a VerifiedGrant) -> Self {
        Self {
            grant_id: &grant.grant_id,
            op: grant.body.op(),
            source_node: &grant.body.source_node,
            dest_node: &grant.body.dest_node,
            key_ids: &grant.body.key_ids,
        }
    }
}

/// Why a receipt was refused by [`verify_receipt`] or not signed by [`sign_receipt`]; each
/// variant is one check of SPEC.md "Transfer receipts".
///
/// Messages are lowercase and name the check; strings taken from the receipt are escaped and
/// cut to 64 characters, since the destination, though authenticated, is not trusted to be
/// honest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The body is longer than [`MAX_RECEIPT_LEN`]; nothing was hashed or decoded.
    #[error("receipt body is {0} bytes, more than {MAX_RECEIPT_LEN}")]
    TooLarge(usize),
    /// The signature is not [`RECEIPT_SIGNATURE_LEN`] bytes.
    #[error("receipt signature is {0} bytes, not {RECEIPT_SIGNATURE_LEN}")]
    BadSignatureLength(usize),
    /// The signature is not the destination's attested key's (strict Ed25519) over the body
    /// under [`RECEIPT_DOMAIN`]: forged, made for something else, or the body was altered.
    #[error("receipt signature does not verify under the destination's attested key")]
    BadSignature,
    /// The body is not a canonically encoded `ReceiptBody` (verification), or breaks a rule of
    /// its own (signing: grant id length, op).
    #[error("malformed receipt: {0}")]
    Malformed(&'static str),
    /// `grant_id` is not the grant's (hex; the receipt's cut to 16 bytes).
    #[error("receipt is for grant {got}, not {expected}")]
    WrongGrantId {
        /// The grant's id, hex.
        expected: String,
        /// The receipt's, hex.
        got: String,
    },
    /// `op` is not the grant's.
    #[error("receipt says op {got}, the grant's is {expected}")]
    WrongOp {
        /// The grant's op.
        expected: String,
        /// The receipt's.
        got: String,
    },
    /// `source_node` is not the grant's.
    #[error("receipt names source {got}, the grant's is {expected}")]
    WrongSource {
        /// The grant's source node.
        expected: String,
        /// The receipt's (escaped).
        got: String,
    },
    /// `dest_node` is not the grant's.
    #[error("receipt names destination {got}, the grant's is {expected}")]
    WrongDestination {
        /// The grant's destination node.
        expected: String,
        /// The receipt's (escaped).
        got: String,
    },
    /// `key_ids` is not the grant's list, in the grant's order.
    #[error(
        "receipt key ids differ from the grant's at position {index}: the grant has {}, the \
         receipt {}",
        or_end(.expected), or_end(.got)
    )]
    WrongKeyIds {
        /// The first position (from 0) where the lists differ.
        index: usize,
        /// The grant's key id there, if the grant's list is that long.
        expected: Option<String>,
        /// The receipt's (escaped), if its list is that long.
        got: Option<String>,
    },
    /// A `stored` entry names a key id the grant does not cover.
    #[error("receipt lists key {0} as stored, but the grant does not cover it")]
    StoredKeyNotInGrant(String),
    /// Two `stored` entries name the same key id.
    #[error("receipt lists key {0} as stored twice")]
    StoredKeyTwice(String),
    /// `stored` is not empty but has no entry for this key of the grant.
    #[error("receipt lists stored versions, but none for key {0}")]
    StoredKeyMissing(String),
    /// A `stored` entry lists no versions.
    #[error("receipt lists no stored versions of key {0}")]
    NoStoredVersions(String),
    /// A `stored` entry lists version 0, which no key has.
    #[error("receipt lists version 0 of key {0} as stored")]
    StoredVersionZero(String),
    /// A `stored` entry's versions are not strictly increasing (out of order or repeated).
    #[error("receipt lists versions of key {key_id} out of order: {version} after {previous}")]
    StoredVersionsUnsorted {
        /// The key id (escaped).
        key_id: String,
        /// The version before.
        previous: u32,
        /// The version that is not greater than it.
        version: u32,
    },
}

fn or_end(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("no key id")
}

impl ReceiptError {
    /// Stable snake_case name of the check, for audit records, metrics and test vectors.
    pub fn code(&self) -> &'static str {
        match self {
            ReceiptError::TooLarge(_) => "too_large",
            ReceiptError::BadSignatureLength(_) => "bad_signature_length",
            ReceiptError::BadSignature => "bad_signature",
            ReceiptError::Malformed(_) => "malformed",
            ReceiptError::WrongGrantId { .. } => "wrong_grant_id",
            ReceiptError::WrongOp { .. } => "wrong_op",
            ReceiptError::WrongSource { .. } => "wrong_source",
            ReceiptError::WrongDestination { .. } => "wrong_destination",
            ReceiptError::WrongKeyIds { .. } => "wrong_key_ids",
            ReceiptError::StoredKeyNotInGrant(_) => "stored_key_not_in_grant",
            ReceiptError::StoredKeyTwice(_) => "stored_key_twice",
            ReceiptError::StoredKeyMissing(_) => "stored_key_missing",
            ReceiptError::NoStoredVersions(_) => "no_stored_versions",
            ReceiptError::StoredVersionZero(_) => "stored_version_zero",
            ReceiptError::StoredVersionsUnsorted { .. } => "stored_versions_unsorted",
        }
    }
}

/// Encodes `body` once and signs the bytes under [`RECEIPT_DOMAIN`]:
/// `"lockbox/v1/receipt" || 0x00 || body` (the destination's side).
///
/// Refuses, before signing, a body that [`verify_receipt`] would refuse whatever the grant:
/// a grant id that is not 16 bytes or an op that is not copy, move or replicate
/// ([`ReceiptError::Malformed`]), a `stored` list that breaks its rules against the body's own
/// `key_ids`, or an encoding longer than [`MAX_RECEIPT_LEN`]. So a destination cannot store
/// and return a receipt that no source accepts; the daemon finds out before it commits.
pub fn sign_receipt(
    identity: &SigningIdentity,
    body: &ReceiptBody,
) -> Result<SignedReceipt, ReceiptError> {
    if body.grant_id.len() != GRANT_ID_LEN {
        return Err(ReceiptError::Malformed("grant id is not 16 bytes"));
    }
    if !matches!(
        GrantOp::try_from(body.op),
        Ok(GrantOp::Copy | GrantOp::Move | GrantOp::Replicate)
    ) {
        return Err(ReceiptError::Malformed("op is not copy, move or replicate"));
    }
    check_stored(&body.stored, &body.key_ids)?;
    let bytes = body.encode_to_vec();
    if bytes.len() > MAX_RECEIPT_LEN {
        return Err(ReceiptError::TooLarge(bytes.len()));
    }
    let signature = identity.sign(RECEIPT_DOMAIN, &bytes);
    Ok(SignedReceipt {
        body: bytes,
        signature,
    })
}

/// Checks a receipt received from the destination against the grant (the source's side) and
/// returns its decoded body. In order, the first failure wins:
///
/// 1. `body` at most [`MAX_RECEIPT_LEN`] bytes → [`ReceiptError::TooLarge`]; `signature`
///    exactly 64 bytes → [`ReceiptError::BadSignatureLength`];
/// 2. strict Ed25519 verification of `"lockbox/v1/receipt" || 0x00 || body` under
///    `dest_signing_public_key` (the destination's attested key) → [`ReceiptError::BadSignature`];
/// 3. `body` decodes as a `ReceiptBody` and is byte-identical to its re-encoding (no unknown,
///    repeated or default-valued fields) → [`ReceiptError::Malformed`];
/// 4. `grant_id`, `op`, `source_node`, `dest_node` and `key_ids` (same ids, same order) equal
///    the expectation's → `WrongGrantId`, `WrongOp`, `WrongSource`, `WrongDestination`,
///    `WrongKeyIds`;
/// 5. `stored`, unless empty: every entry's key id is a key of the grant, at most one entry
///    per key, one entry for every key; versions non-empty, non-zero and strictly increasing
///    → `StoredKeyNotInGrant`, `StoredKeyTwice`, `NoStoredVersions`, `StoredVersionZero`,
///    `StoredVersionsUnsorted` (per entry, in order), then `StoredKeyMissing`.
///
/// Sizes come first so an oversized input costs nothing; the signature comes before the
/// decode so only the attested destination can make this node parse anything.
///
/// An empty `stored` list is accepted: destinations that predate the field send none. The
/// caller must then not rely on it (a MOVE's source treats such a receipt as covering every
/// version it sent, as it always did). `stored_unix_ms` is the destination's clock, reported
/// but not checked: the source has nothing to compare it with.
pub fn verify_receipt(
    dest_signing_public_key: &[u8; 32],
    body: &[u8],
    signature: &[u8],
    expected: &ReceiptExpectation<'_>,
) -> Result<ReceiptBody, ReceiptError> {
    if body.len() > MAX_RECEIPT_LEN {
        return Err(ReceiptError::TooLarge(body.len()));
    }
    if signature.len() != RECEIPT_SIGNATURE_LEN {
        return Err(ReceiptError::BadSignatureLength(signature.len()));
    }
    verify_signature(dest_signing_public_key, RECEIPT_DOMAIN, body, signature)
        .map_err(|_| ReceiptError::BadSignature)?;

    let decoded = ReceiptBody::decode(body)
        .map_err(|_| ReceiptError::Malformed("body is not a protobuf ReceiptBody"))?;
    // As for grants: a field this build does not know would be signed yet ignored, and one
    // body would have several encodings.
    if decoded.encode_to_vec() != body {
        return Err(ReceiptError::Malformed(
            "body is not canonically encoded (unknown, repeated, reordered or default-valued fields)",
        ));
    }

    check_fields(&decoded, expected)?;
    check_stored(&decoded.stored, expected.key_ids)?;
    Ok(decoded)
}

/// Step 4 of [`verify_receipt`].
fn check_fields(body: &ReceiptBody, expected: &ReceiptExpectation<'_>) -> Result<(), ReceiptError> {
    if body.grant_id != expected.grant_id {
        return Err(ReceiptError::WrongGrantId {
            expected: hex::encode(expected.grant_id),
            got: short_hex(&body.grant_id),
        });
    }
    if body.op != expected.op as i32 {
        return Err(ReceiptError::WrongOp {
            expected: op_name(expected.op as i32),
            got: op_name(body.op),
        });
    }
    if body.source_node != expected.source_node {
        return Err(ReceiptError::WrongSource {
            expected: printable(expected.source_node),
            got: printable(&body.source_node),
        });
    }
    if body.dest_node != expected.dest_node {
        return Err(ReceiptError::WrongDestination {
            expected: printable(expected.dest_node),
            got: printable(&body.dest_node),
        });
    }
    if body.key_ids != expected.key_ids {
        let index = body
            .key_ids
            .iter()
            .zip(expected.key_ids)
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| body.key_ids.len().min(expected.key_ids.len()));
        return Err(ReceiptError::WrongKeyIds {
            index,
            expected: expected.key_ids.get(index).map(|k| printable(k)),
            got: body.key_ids.get(index).map(|k| printable(k)),
        });
    }
    Ok(())
}

/// Step 5 of [`verify_receipt`] (and a rule of [`sign_receipt`], against the body's own key
/// ids): `stored` names each key of the grant once, with its versions strictly increasing
/// from at least 1, or is empty.
fn check_stored(stored: &[StoredVersions], key_ids: &[String]) -> Result<(), ReceiptError> {
    if stored.is_empty() {
        return Ok(());
    }
    let grant: HashSet<&str> = key_ids.iter().map(String::as_str).collect();
    let mut seen: HashSet<&str> = HashSet::with_capacity(stored.len().min(grant.len()));
    for entry in stored {
        let key = entry.key_id.as_str();
        if !grant.contains(key) {
            return Err(ReceiptError::StoredKeyNotInGrant(printable(key)));
        }
        if !seen.insert(key) {
            return Err(ReceiptError::StoredKeyTwice(printable(key)));
        }
        if entry.versions.is_empty() {
            return Err(ReceiptError::NoStoredVersions(printable(key)));
        }
        let mut previous = 0;
        for &version in &entry.versions {
            if version == 0 {
                return Err(ReceiptError::StoredVersionZero(printable(key)));
            }
            if version <= previous {
                return Err(ReceiptError::StoredVersionsUnsorted {
                    key_id: printable(key),
                    previous,
                    version,
                });
            }
            previous = version;
        }
    }
    if seen.len() != grant.len()
        && let Some(missing) = key_ids.iter().find(|k| !seen.contains(k.as_str()))
    {
        return Err(ReceiptError::StoredKeyMissing(printable(missing)));
    }
    Ok(())
}

/// Lowercase op name for messages; an unknown value is shown as its number.
fn op_name(op: i32) -> String {
    match GrantOp::try_from(op) {
        Ok(GrantOp::Copy) => "copy".into(),
        Ok(GrantOp::Move) => "move".into(),
        Ok(GrantOp::Replicate) => "replicate".into(),
        Ok(GrantOp::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown ({op})"),
    }
}

/// Hex of at most the first 16 bytes, with `…` if there were more.
fn short_hex(bytes: &[u8]) -> String {
    if bytes.len() > GRANT_ID_LEN {
        format!("{}…", hex::encode(&bytes[..GRANT_ID_LEN]))
    } else {
        hex::encode(bytes)
    }
}

#[cfg(test)]
mod tests;
