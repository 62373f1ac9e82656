//! Grants (SPEC.md "Grants", DESIGN.md §2.3 and §6): controller-signed permission for one
//! lockbox to send keys to another.
//!
//! The body is a protobuf `GrantBody` encoded once by the issuer; signatures cover those exact
//! bytes, so verifiers never re-encode to check them (a re-encoding could differ from what was
//! signed). The source and the destination run the same [`verify_grant`], each describing its
//! side of the transfer in a [`GrantContext`]; the clock and the consumed-grant store stay
//! with the caller.

use std::collections::{BTreeSet, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use lockbox_proto::v1::{GrantBody, GrantOp, Signature, SignedGrant};
use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::error::{CryptoError, Result};
use crate::identity::SigningIdentity;
use crate::trust::{
    CountFault, MAX_SIGNATURES, SignerFault, TrustedControllers, check_signature, check_window,
    count_signatures, printable,
};

/// Signature domain of grant bodies.
pub const GRANT_DOMAIN: &str = "lockbox/v1/grant";
/// Length of `GrantBody.grant_id`.
pub const GRANT_ID_LEN: usize = 16;
/// First line of the text form of a grant.
pub const GRANT_TEXT_BEGIN: &str = "-----BEGIN LOCKBOX GRANT-----";
/// Last line of the text form of a grant.
pub const GRANT_TEXT_END: &str = "-----END LOCKBOX GRANT-----";
/// Longest grant text [`grant_from_text`] reads (1 MiB), so a pasted file cannot exhaust memory.
pub const MAX_GRANT_TEXT_LEN: usize = 1 << 20;
/// Longest `reason` a grant carries (audit text; `IssueGrant` refuses longer).
pub const MAX_GRANT_REASON_LEN: usize = 1024;
/// Longest `requested_by` (a SPIFFE id, 2048 bytes at most by the SPIFFE spec).
pub const MAX_GRANT_REQUESTER_LEN: usize = 2048;
/// Longest node name, key id and issuer key id in a grant.
pub const MAX_GRANT_NAME_LEN: usize = 128;
/// Longest trust domain (SPIFFE: 255 bytes).
pub const MAX_GRANT_TRUST_DOMAIN_LEN: usize = 255;
/// Base64 characters per line of the text form.
const TEXT_COLUMNS: usize = 64;

/// The grant operations and their names: one table for the CLI, the controller's policy
/// file, the audit logs and error messages.
pub const OP_NAMES: [(GrantOp, &str); 3] = [
    (GrantOp::Copy, "copy"),
    (GrantOp::Move, "move"),
    (GrantOp::Replicate, "replicate"),
];

/// The name of a grant's `op` field as it travels (an `i32`): `copy`, `move`, `replicate`, or
/// `unspecified` for anything else (which `verify_grant` refuses).
pub fn op_name(op: i32) -> &'static str {
    OP_NAMES
        .iter()
        .find(|(o, _)| *o as i32 == op)
        .map_or("unspecified", |(_, name)| name)
}

/// Parses an operation name exactly as [`op_name`] writes it.
pub fn parse_op(name: &str) -> Option<GrantOp> {
    OP_NAMES.iter().find(|(_, n)| *n == name).map(|(o, _)| *o)
}

/// Signs the exact body bytes under [`GRANT_DOMAIN`]: `"lockbox/v1/grant" || 0x00 || body`.
///
/// `body` is the output of [`encode_grant_body`] (issuing) or `SignedGrant.body` as received
/// (co-signing); it is never re-encoded.
pub fn sign_grant_body(signer: &SigningIdentity, key_id: &str, body: &[u8]) -> Signature {
    Signature {
        key_id: key_id.to_owned(),
        signature: signer.sign(GRANT_DOMAIN, body).to_vec(),
    }
}

/// Checks `body` as verifiers will (SPEC.md "Grant body") and encodes it, once, to the bytes
/// that are signed and sent.
///
/// A body that would fail verification is refused here with [`CryptoError::Malformed`], so a
/// controller cannot sign one.
pub fn encode_grant_body(body: &GrantBody) -> Result<Vec<u8>> {
    validate(body).map_err(|i| CryptoError::Malformed(i.what))?;
    Ok(body.encode_to_vec())
}

/// Decodes body bytes strictly: protobuf, canonical encoding (the bytes are exactly what
/// [`encode_grant_body`] produces for the decoded value), then the checks of
/// [`encode_grant_body`]. It does not check signatures; use [`verify_grant`] or
/// [`inspect_grant`].
pub fn decode_grant_body(bytes: &[u8]) -> std::result::Result<GrantBody, GrantError> {
    let body = GrantBody::decode(bytes)
        .map_err(|_| GrantError::Malformed("body is not a protobuf GrantBody".into()))?;
    // Unknown fields would be ignored by this build yet signed by the controller: a newer
    // restriction that an older verifier silently drops. Canonical bytes rule that out and give
    // each body one encoding.
    if body.encode_to_vec() != bytes {
        return Err(GrantError::Malformed(
            "body is not canonically encoded (unknown, repeated, reordered or default-valued fields)"
                .into(),
        ));
    }
    validate(&body).map_err(|i| GrantError::Malformed(i.reason.into()))?;
    Ok(body)
}

/// Which end of the transfer is verifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSide {
    /// The lockbox that holds the keys and sends them.
    Source,
    /// The lockbox that receives them.
    Destination,
}

/// What the verifier knows about the situation; see [`verify_grant`].
#[derive(Debug, Clone, Copy)]
pub struct GrantContext<'a> {
    /// The verifier's clock, milliseconds since the Unix epoch.
    pub now_unix_ms: u64,
    /// Allowed clock skew between controller and verifier, applied both ways.
    pub skew_ms: u64,
    /// Valid signatures from distinct trusted controllers required (M of N); 0 counts as 1.
    pub threshold: usize,
    /// This lockbox's node name.
    pub self_node: &'a str,
    /// The authenticated other end (from its TLS certificate), when known: the destination
    /// when verifying as [`GrantSide::Source`], the source as [`GrantSide::Destination`].
    pub peer_node: Option<&'a str>,
    /// Which end is verifying.
    pub side: GrantSide,
    /// Key ids the request covers; each must be in the grant.
    pub key_ids: Option<&'a [String]>,
}

/// A grant that passed every check of [`verify_grant`].
#[derive(Debug, Clone)]
pub struct VerifiedGrant {
    /// The decoded body.
    pub body: GrantBody,
    /// `body.grant_id`, as the array the consumed-grant store is keyed by.
    pub grant_id: [u8; 16],
    /// SHA-256 of the signed body bytes: what a node records with a grant it completed, so a
    /// retry is answered with the stored receipt only for the very same body (another body
    /// under a used grant id is refused, not mistaken for a retry).
    pub body_sha256: [u8; 32],
    /// Key ids of the controllers counted towards the threshold, one per distinct controller,
    /// in signature order.
    pub valid_signers: Vec<String>,
}

impl VerifiedGrant {
    /// The grant's operation (`verify_grant` refuses any other value, so never unspecified).
    pub fn op(&self) -> GrantOp {
        GrantOp::try_from(self.body.op).unwrap_or(GrantOp::Unspecified)
    }
}

/// Why a grant was refused; each variant is one check of SPEC.md "Grant verification".
///
/// Messages are lowercase and name the check; key ids from the grant are escaped and
/// shortened before they are put in a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The grant or its text form does not decode, or its body breaks a body rule.
    #[error("malformed grant: {0}")]
    Malformed(String),
    /// Too few valid signatures, and at least one signature is from a key id not trusted here.
    #[error("grant signed by unknown controller key {0}")]
    UnknownSigner(String),
    /// A trusted controller's signature does not verify: the grant was tampered with.
    #[error("bad signature from controller key {0}")]
    BadSignature(String),
    /// Fewer valid signatures from distinct trusted controllers than the threshold.
    #[error(
        "threshold not met: {valid} valid signature(s) from distinct controllers, {required} required"
    )]
    ThresholdNotMet {
        /// Distinct trusted controllers whose signatures verified.
        valid: usize,
        /// The threshold.
        required: usize,
    },
    /// `now + skew < not_before`.
    #[error("grant not yet valid: valid from {not_before_unix_ms} (unix ms), now is {now_unix_ms}")]
    NotYetValid {
        /// The grant's `not_before_unix_ms`.
        not_before_unix_ms: u64,
        /// The verifier's clock.
        now_unix_ms: u64,
    },
    /// `now - skew >= expires`.
    #[error("grant expired at {expires_unix_ms} (unix ms), now is {now_unix_ms}")]
    Expired {
        /// The grant's `expires_unix_ms`.
        expires_unix_ms: u64,
        /// The verifier's clock.
        now_unix_ms: u64,
    },
    /// The grant's source is not this node (source side) or not the authenticated peer
    /// (destination side).
    #[error("wrong source: grant names {expected}, the source here is {got}")]
    WrongSource {
        /// The grant's `source_node`.
        expected: String,
        /// The node actually acting as source.
        got: String,
    },
    /// The grant's destination is not this node (destination side) or not the authenticated
    /// peer (source side).
    #[error("wrong destination: grant names {expected}, the destination here is {got}")]
    WrongDestination {
        /// The grant's `dest_node`.
        expected: String,
        /// The node actually acting as destination.
        got: String,
    },
    /// A key id of the request is not in the grant.
    #[error("key {0} is not covered by the grant")]
    KeyNotCovered(String),
    /// The grant id (hex) was already used here.
    #[error("grant {0} already consumed")]
    AlreadyConsumed(String),
}

impl GrantError {
    /// Stable snake_case name of the check, for audit records, metrics and `--json` output.
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Malformed(_) => "malformed",
            GrantError::UnknownSigner(_) => "unknown_signer",
            GrantError::BadSignature(_) => "bad_signature",
            GrantError::ThresholdNotMet { .. } => "threshold_not_met",
            GrantError::NotYetValid { .. } => "not_yet_valid",
            GrantError::Expired { .. } => "expired",
            GrantError::WrongSource { .. } => "wrong_source",
            GrantError::WrongDestination { .. } => "wrong_destination",
            GrantError::KeyNotCovered(_) => "key_not_covered",
            GrantError::AlreadyConsumed(_) => "already_consumed",
        }
    }
}

/// The one verification used by source and destination alike (SPEC.md "Grant verification").
///
/// In order, the first failure wins:
/// 1. at most [`MAX_SIGNATURES`] signatures; the body decodes strictly
///    ([`decode_grant_body`]) → [`GrantError::Malformed`];
/// 2. every signature is checked: a trusted key id whose signature fails →
///    [`GrantError::BadSignature`]; unknown key ids are skipped;
/// 3. distinct trusted controllers with a valid signature ≥ `threshold`, else
///    [`GrantError::UnknownSigner`] if some key id was unknown, [`GrantError::ThresholdNotMet`]
///    otherwise;
/// 4. `now + skew < not_before` → [`GrantError::NotYetValid`];
///    `now - skew >= expires` → [`GrantError::Expired`];
/// 5. nodes: this node, then the peer if known → [`GrantError::WrongSource`] /
///    [`GrantError::WrongDestination`];
/// 6. every key id of `ctx.key_ids` is in the grant → [`GrantError::KeyNotCovered`];
/// 7. `consumed(grant_id)` → [`GrantError::AlreadyConsumed`].
///
/// `consumed` is asked last, so a store lookup happens only for grants that are otherwise
/// good. A retry of a grant this node already executed is the caller's to recognise (it
/// returns the stored receipt instead of calling this).
pub fn verify_grant(
    signed: &SignedGrant,
    trusted: &TrustedControllers,
    ctx: &GrantContext<'_>,
    consumed: &dyn Fn(&[u8; 16]) -> bool,
) -> std::result::Result<VerifiedGrant, GrantError> {
    check_signature_count(signed.signatures.len())?;
    let body = decode_grant_body(&signed.body)?;
    let grant_id = grant_id_array(&body)?;

    let valid_signers = count_signatures(
        trusted,
        GRANT_DOMAIN,
        &signed.body,
        &signed.signatures,
        ctx.threshold,
    )
    .map_err(|f| match f {
        CountFault::Unknown(id) => GrantError::UnknownSigner(id),
        CountFault::Bad(id) => GrantError::BadSignature(id),
        CountFault::Threshold { valid, required } => {
            GrantError::ThresholdNotMet { valid, required }
        }
    })?;

    check_window(
        body.not_before_unix_ms,
        body.expires_unix_ms,
        ctx.now_unix_ms,
        ctx.skew_ms,
    )
    .map_err(|not_yet| {
        if not_yet {
            GrantError::NotYetValid {
                not_before_unix_ms: body.not_before_unix_ms,
                now_unix_ms: ctx.now_unix_ms,
            }
        } else {
            GrantError::Expired {
                expires_unix_ms: body.expires_unix_ms,
                now_unix_ms: ctx.now_unix_ms,
            }
        }
    })?;

    check_nodes(&body, ctx)?;

    if let Some(wanted) = ctx.key_ids {
        let covered: HashSet<&str> = body.key_ids.iter().map(String::as_str).collect();
        if let Some(k) = wanted.iter().find(|k| !covered.contains(k.as_str())) {
            return Err(GrantError::KeyNotCovered(printable(k)));
        }
    }

    if consumed(&grant_id) {
        return Err(GrantError::AlreadyConsumed(hex::encode(grant_id)));
    }
    Ok(VerifiedGrant {
        body,
        grant_id,
        body_sha256: Sha256::digest(&signed.body).into(),
        valid_signers,
    })
}

/// Per signature of a grant, in order: its key id and whether it verified
/// ([`inspect_grant`]).
pub type SignatureVerdicts = Vec<(String, std::result::Result<(), GrantError>)>;

/// Signature-only check for `lockboxctl grant inspect`: the decoded body and, per signature in
/// order, its key id and `Ok(())`, [`GrantError::UnknownSigner`] or
/// [`GrantError::BadSignature`].
///
/// No threshold, time, node, key or consumption check: the result says what the grant is and
/// who signed it, not whether it may be used. Fails only as step 1 of [`verify_grant`].
pub fn inspect_grant(
    signed: &SignedGrant,
    trusted: &TrustedControllers,
) -> std::result::Result<(GrantBody, SignatureVerdicts), GrantError> {
    check_signature_count(signed.signatures.len())?;
    let body = decode_grant_body(&signed.body)?;
    let per_signature = signed
        .signatures
        .iter()
        .map(|sig| {
            let r = match check_signature(trusted, GRANT_DOMAIN, &signed.body, sig) {
                Ok(_) => Ok(()),
                Err(SignerFault::Unknown) => Err(GrantError::UnknownSigner(printable(&sig.key_id))),
                Err(SignerFault::Bad) => Err(GrantError::BadSignature(sig.key_id.clone())),
            };
            (sig.key_id.clone(), r)
        })
        .collect();
    Ok((body, per_signature))
}

/// The printable form of a grant, for files and copy-paste (SPEC.md "Grant text"):
/// [`GRANT_TEXT_BEGIN`], the `SignedGrant` protobuf bytes in standard padded base64 wrapped at
/// 64 columns, [`GRANT_TEXT_END`], each line ending in `\n`.
pub fn grant_to_text(signed: &SignedGrant) -> String {
    let b64 = BASE64.encode(signed.encode_to_vec());
    let lines = b64.len().div_ceil(TEXT_COLUMNS);
    let mut out = String::with_capacity(
        GRANT_TEXT_BEGIN.len() + GRANT_TEXT_END.len() + b64.len() + lines + 2,
    );
    out.push_str(GRANT_TEXT_BEGIN);
    out.push('\n');
    // Base64 is ASCII, so every multiple of TEXT_COLUMNS is a char boundary.
    for start in (0..b64.len()).step_by(TEXT_COLUMNS) {
        out.push_str(&b64[start..b64.len().min(start + TEXT_COLUMNS)]);
        out.push('\n');
    }
    out.push_str(GRANT_TEXT_END);
    out.push('\n');
    out
}

/// Parses [`grant_to_text`] output. Tolerates whitespace around the whole text and around
/// each line (so CRLF line ends and indentation survive mail and terminals) and any line
/// width; refuses everything else with [`GrantError::Malformed`] naming the problem: missing
/// armor lines, other text, blank lines or headers inside, invalid or non-canonical base64,
/// bytes that are not a canonically encoded `SignedGrant`.
///
/// Only the envelope is decoded; [`verify_grant`] or [`inspect_grant`] checks the rest.
pub fn grant_from_text(text: &str) -> std::result::Result<SignedGrant, GrantError> {
    let malformed = |m: &str| GrantError::Malformed(m.to_owned());
    if text.len() > MAX_GRANT_TEXT_LEN {
        return Err(malformed("grant text is longer than 1 MiB"));
    }
    let mut lines = text.trim().lines().map(str::trim);
    if lines.next() != Some(GRANT_TEXT_BEGIN) {
        return Err(malformed(
            "text does not start with -----BEGIN LOCKBOX GRANT-----",
        ));
    }
    let mut b64 = String::with_capacity(text.len());
    let mut ended = false;
    for line in lines {
        if ended {
            return Err(malformed("text after -----END LOCKBOX GRANT-----"));
        }
        if line == GRANT_TEXT_END {
            ended = true;
        } else if line.is_empty() {
            return Err(malformed("blank line inside the grant text"));
        } else if !line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return Err(malformed(
                "grant text holds a line that is not base64 (headers and other armor are not allowed)",
            ));
        } else {
            b64.push_str(line);
        }
    }
    if !ended {
        return Err(malformed(
            "text does not end with -----END LOCKBOX GRANT-----",
        ));
    }
    if b64.is_empty() {
        return Err(malformed("no data between the armor lines"));
    }
    let bytes = BASE64.decode(&b64).map_err(|_| {
        malformed("grant text is not valid base64 (length, padding or trailing bits)")
    })?;
    let signed = SignedGrant::decode(bytes.as_slice())
        .map_err(|_| malformed("grant text does not hold a protobuf SignedGrant"))?;
    if signed.encode_to_vec() != bytes {
        return Err(malformed(
            "grant text does not hold a canonically encoded signed grant",
        ));
    }
    Ok(signed)
}

fn check_signature_count(n: usize) -> std::result::Result<(), GrantError> {
    if n > MAX_SIGNATURES {
        return Err(GrantError::Malformed(format!(
            "{n} signatures, at most {MAX_SIGNATURES} allowed"
        )));
    }
    Ok(())
}

fn grant_id_array(body: &GrantBody) -> std::result::Result<[u8; 16], GrantError> {
    body.grant_id
        .as_slice()
        .try_into()
        .map_err(|_| GrantError::Malformed("grant id is not 16 bytes".into()))
}

/// Step 5 of [`verify_grant`]: this node first, then the authenticated peer.
fn check_nodes(body: &GrantBody, ctx: &GrantContext<'_>) -> std::result::Result<(), GrantError> {
    let wrong = |source_role: bool, got: &str| {
        if source_role {
            GrantError::WrongSource {
                expected: body.source_node.clone(),
                got: got.to_owned(),
            }
        } else {
            GrantError::WrongDestination {
                expected: body.dest_node.clone(),
                got: got.to_owned(),
            }
        }
    };
    let (mine, theirs, self_is_source) = match ctx.side {
        GrantSide::Source => (&body.source_node, &body.dest_node, true),
        GrantSide::Destination => (&body.dest_node, &body.source_node, false),
    };
    if mine != ctx.self_node {
        return Err(wrong(self_is_source, ctx.self_node));
    }
    match ctx.peer_node {
        Some(peer) if theirs != peer => Err(wrong(!self_is_source, peer)),
        _ => Ok(()),
    }
}

/// A body rule that failed: `reason` for [`GrantError::Malformed`], `what` (the same text,
/// static) for [`CryptoError::Malformed`].
struct Invalid {
    reason: &'static str,
    what: &'static str,
}

macro_rules! invalid {
    ($reason:literal) => {
        Invalid {
            reason: $reason,
            what: concat!("grant body (", $reason, ")"),
        }
    };
}

/// SPEC.md "Grant body" rules, in order; shared by encoding and decoding so that a controller
/// cannot sign what a verifier refuses.
fn validate(body: &GrantBody) -> std::result::Result<(), Invalid> {
    if body.grant_id.len() != GRANT_ID_LEN {
        return Err(invalid!("grant id is not 16 bytes"));
    }
    if body.key_ids.is_empty() {
        return Err(invalid!("no key ids"));
    }
    if body.key_ids.iter().any(String::is_empty) {
        return Err(invalid!("empty key id"));
    }
    let mut seen = BTreeSet::new();
    if !body.key_ids.iter().all(|k| seen.insert(k.as_str())) {
        return Err(invalid!("duplicate key id"));
    }
    if !matches!(
        GrantOp::try_from(body.op),
        Ok(GrantOp::Copy | GrantOp::Move | GrantOp::Replicate)
    ) {
        return Err(invalid!("op is not copy, move or replicate"));
    }
    if body.not_before_unix_ms >= body.expires_unix_ms {
        return Err(invalid!("not_before is not before expires"));
    }
    if body.source_node.is_empty() || body.dest_node.is_empty() {
        return Err(invalid!("empty node name"));
    }
    if body.source_node == body.dest_node {
        return Err(invalid!("source and destination are the same node"));
    }
    // Every field bounded, so that a body no controller would issue (a 3 MB reason, a
    // megabyte "node name") is refused by verifiers too, not only by the issuing controller.
    if body.source_node.len() > MAX_GRANT_NAME_LEN || body.dest_node.len() > MAX_GRANT_NAME_LEN {
        return Err(invalid!("node name longer than 128 bytes"));
    }
    if body.key_ids.iter().any(|k| k.len() > MAX_GRANT_NAME_LEN) {
        return Err(invalid!("key id longer than 128 bytes"));
    }
    if body.reason.len() > MAX_GRANT_REASON_LEN {
        return Err(invalid!("reason longer than 1024 bytes"));
    }
    if body.requested_by.len() > MAX_GRANT_REQUESTER_LEN {
        return Err(invalid!("requested_by longer than 2048 bytes"));
    }
    if body.issuer_key_id.len() > MAX_GRANT_NAME_LEN {
        return Err(invalid!("issuer key id longer than 128 bytes"));
    }
    if body.trust_domain.len() > MAX_GRANT_TRUST_DOMAIN_LEN {
        return Err(invalid!("trust domain longer than 255 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
