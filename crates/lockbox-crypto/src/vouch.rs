//! Vouches and revocation lists (SPEC.md "Vouches" and "Revocation lists", DESIGN.md §5.5):
//! the two controller-signed statements a lockbox checks before it helps a peer unseal.
//!
//! A **vouch** says "this controller stands for node N, calling with this TLS key, now": it is
//! what a sealed lockbox shows a peer when it asks for an assist. It is short-lived by
//! construction (at most [`MAX_VOUCH_LIFETIME_MS`]), so that a node the controller stops
//! vouching for (revoked, or removed from `allowed_nodes`) stops getting help within minutes,
//! without peers having to ask the controller anything.
//!
//! A **revocation list** is every node one controller has revoked, signed, so that peers can
//! fetch it, keep it and refuse a revoked node even while that node still holds an unexpired
//! vouch. Unlike grants and attestations, one valid signature by one trusted controller is
//! enough: a revocation only takes help away, so any trusted controller may cut a node off.
//!
//! As for grants and attestations, bodies are protobuf messages encoded once by the issuer;
//! signatures cover those exact bytes under their own domain, and decoders accept only the
//! canonical encoding, so no field a verifier does not know can ride along unseen.

use lockbox_proto::v1::{
    Revocation, RevocationsBody, Signature, SignedRevocations, SignedVouch, VouchBody,
};
use prost::Message as _;

use crate::error::{CryptoError, Result};
use crate::identity::SigningIdentity;
use crate::trust::{
    CountFault, MAX_SIGNATURES, TrustedControllers, check_window, count_signatures, printable,
};

/// Signature domain of vouch bodies.
pub const VOUCH_DOMAIN: &str = "lockbox/v1/vouch";
/// Signature domain of revocation list bodies.
pub const REVOCATIONS_DOMAIN: &str = "lockbox/v1/revocations";
/// Longest node name in a vouch or a revocation (as in enrolled shares and backups).
pub const MAX_VOUCH_NODE_LEN: usize = 255;
/// Longest trust domain (SPIFFE: 255 bytes).
pub const MAX_VOUCH_TRUST_DOMAIN_LEN: usize = 255;
/// Longest `issuer_key_id` (as in grants).
pub const MAX_VOUCH_ISSUER_LEN: usize = 128;
/// Longest life of a vouch, `expires - not_before` (1 hour): a vouch is what lets a revoked
/// node keep getting help until it expires, so a long one defeats revocation.
pub const MAX_VOUCH_LIFETIME_MS: u64 = 3_600_000;
/// Most nodes one revocation list names.
pub const MAX_REVOCATIONS: usize = 10_000;
/// Longest `reason` of one revocation (audit text).
pub const MAX_REVOCATION_REASON_LEN: usize = 1024;
/// Longest revocation list body accepted (16 MiB): above what [`MAX_REVOCATIONS`] entries at
/// every bound encode to (about 13 MB), checked before the body is decoded so that a peer
/// pays nothing for a larger one.
pub const MAX_REVOCATIONS_BODY_LEN: usize = 16 << 20;

// ---------------------------------------------------------------------------------------------
// vouches

/// Signs the exact body bytes under [`VOUCH_DOMAIN`]: `"lockbox/v1/vouch" || 0x00 || body`.
pub fn sign_vouch_body(signer: &SigningIdentity, key_id: &str, body: &[u8]) -> Signature {
    Signature {
        key_id: key_id.to_owned(),
        signature: signer.sign(VOUCH_DOMAIN, body).to_vec(),
    }
}

/// Checks `body` as verifiers will (SPEC.md "Vouch body") and encodes it, once, to the bytes
/// that are signed and sent, so that a controller cannot sign a vouch that peers refuse
/// ([`CryptoError::Malformed`]).
pub fn encode_vouch_body(body: &VouchBody) -> Result<Vec<u8>> {
    validate_vouch(body).map_err(|f| match f {
        VouchFault::Invalid(i) => CryptoError::Malformed(i.what),
        VouchFault::Lifetime(_) => {
            CryptoError::Malformed("vouch body (lifetime longer than 1 hour)")
        }
    })?;
    Ok(body.encode_to_vec())
}

/// Decodes vouch body bytes strictly: protobuf, canonical encoding, then the rules of
/// [`encode_vouch_body`]. Does not check signatures; use [`verify_vouch`].
pub fn decode_vouch_body(bytes: &[u8]) -> std::result::Result<VouchBody, VouchError> {
    let body = VouchBody::decode(bytes)
        .map_err(|_| VouchError::Malformed("body is not a protobuf VouchBody".into()))?;
    // As for grants: a field this build does not know must not be silently dropped.
    if body.encode_to_vec() != bytes {
        return Err(VouchError::Malformed(
            "body is not canonically encoded (unknown, repeated, reordered or default-valued fields)"
                .into(),
        ));
    }
    validate_vouch(&body).map_err(|f| match f {
        VouchFault::Invalid(i) => VouchError::Malformed(i.reason.into()),
        VouchFault::Lifetime(lifetime_ms) => VouchError::LifetimeTooLong {
            lifetime_ms,
            max_ms: MAX_VOUCH_LIFETIME_MS,
        },
    })?;
    Ok(body)
}

/// A vouch that passed every check of [`verify_vouch`]: the controller stands for `node`,
/// calling with `tls_spki_sha256`, until `expires_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedVouch {
    /// The node vouched for (equal to the context's `expected_node`).
    pub node: String,
    /// Its trust domain; [`verify_vouch`] does not compare it: the caller checks it against
    /// the peer's SPIFFE id, as for attestations.
    pub trust_domain: String,
    /// SHA-256 of the SPKI of the TLS key the node called the controller with (equal to the
    /// context's `peer_tls_spki_sha256`).
    pub tls_spki_sha256: [u8; 32],
    /// Start of validity (unix ms).
    pub not_before_unix_ms: u64,
    /// End of validity (unix ms): how long a peer may rely on it without asking again.
    pub expires_unix_ms: u64,
    /// The `issuer_key_id` the body names (informational; trust comes from the signatures).
    pub issuer_key_id: String,
    /// Key ids of the controllers counted towards the threshold, one per distinct controller,
    /// in signature order.
    pub valid_signers: Vec<String>,
}

/// Why a vouch was refused; each variant is one check of SPEC.md "Vouch verification".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VouchError {
    /// The vouch does not decode, or its body breaks a body rule.
    #[error("malformed vouch: {0}")]
    Malformed(String),
    /// `expires - not_before` is longer than [`MAX_VOUCH_LIFETIME_MS`]: a vouch must be
    /// short-lived, or revoking a node would not take its help away.
    #[error(
        "vouch lifetime {lifetime_ms} ms is longer than the {max_ms} ms allowed (a vouch must be short-lived)"
    )]
    LifetimeTooLong {
        /// `expires_unix_ms - not_before_unix_ms` of the vouch.
        lifetime_ms: u64,
        /// [`MAX_VOUCH_LIFETIME_MS`].
        max_ms: u64,
    },
    /// Too few valid signatures, and at least one signature is from a key id not trusted here.
    #[error("vouch signed by unknown controller key {0}")]
    UnknownSigner(String),
    /// A trusted controller's signature does not verify: the vouch was tampered with.
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
    #[error("vouch not yet valid: valid from {not_before_unix_ms} (unix ms), now is {now_unix_ms}")]
    NotYetValid {
        /// The vouch's `not_before_unix_ms`.
        not_before_unix_ms: u64,
        /// The verifier's clock.
        now_unix_ms: u64,
    },
    /// `now - skew >= expires`: the node must ask the controller for a fresh one.
    #[error("vouch expired at {expires_unix_ms} (unix ms), now is {now_unix_ms}")]
    Expired {
        /// The vouch's `expires_unix_ms`.
        expires_unix_ms: u64,
        /// The verifier's clock.
        now_unix_ms: u64,
    },
    /// The vouch is for another node than the caller.
    #[error("wrong node: expected {expected}, vouch names {got}")]
    WrongNode {
        /// The node the verifier expected (the caller's TLS identity).
        expected: String,
        /// The vouch's `node`.
        got: String,
    },
    /// The vouched-for TLS key is not the one the caller presented: a vouch copied from
    /// another connection (another certificate of the same name) is not the caller's.
    #[error("vouch does not match the peer's tls key")]
    WrongTlsKey,
}

impl VouchError {
    /// Stable snake_case name of the check, for audit records, metrics and `--json` output.
    pub fn code(&self) -> &'static str {
        match self {
            VouchError::Malformed(_) => "malformed",
            VouchError::LifetimeTooLong { .. } => "lifetime_too_long",
            VouchError::UnknownSigner(_) => "unknown_signer",
            VouchError::BadSignature(_) => "bad_signature",
            VouchError::ThresholdNotMet { .. } => "threshold_not_met",
            VouchError::NotYetValid { .. } => "not_yet_valid",
            VouchError::Expired { .. } => "expired",
            VouchError::WrongNode { .. } => "wrong_node",
            VouchError::WrongTlsKey => "wrong_tls_key",
        }
    }
}

/// What the verifier of a vouch knows; see [`verify_vouch`]. Node and TLS key are not
/// optional: a vouch is only ever checked for the peer on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct VouchContext<'a> {
    /// The verifier's clock, milliseconds since the Unix epoch.
    pub now_unix_ms: u64,
    /// Allowed clock skew, applied both ways.
    pub skew_ms: u64,
    /// Valid signatures from distinct trusted controllers required; 0 counts as 1.
    pub threshold: usize,
    /// The node the caller authenticated as (its TLS identity).
    pub expected_node: &'a str,
    /// SHA-256 of the SPKI of the TLS certificate the caller presented on this connection.
    pub peer_tls_spki_sha256: &'a [u8; 32],
}

/// Verifies a vouch (SPEC.md "Vouch verification"). In order, the first failure wins:
/// 1. at most [`MAX_SIGNATURES`] signatures; the body decodes strictly
///    ([`decode_vouch_body`]) → [`VouchError::Malformed`], and lives at most
///    [`MAX_VOUCH_LIFETIME_MS`] → [`VouchError::LifetimeTooLong`];
/// 2. signatures under [`VOUCH_DOMAIN`], as for grants → [`VouchError::BadSignature`];
/// 3. threshold → [`VouchError::UnknownSigner`] / [`VouchError::ThresholdNotMet`];
/// 4. time window with skew → [`VouchError::NotYetValid`] / [`VouchError::Expired`];
/// 5. `node == expected_node` → [`VouchError::WrongNode`];
/// 6. `tls_spki_sha256 == peer_tls_spki_sha256` → [`VouchError::WrongTlsKey`].
///
/// Whether the node is on a revocation list is the caller's to check
/// ([`VerifiedRevocations::find`]), as is the trust domain (against the peer's SPIFFE id).
pub fn verify_vouch(
    signed: &SignedVouch,
    trusted: &TrustedControllers,
    ctx: &VouchContext<'_>,
) -> std::result::Result<VerifiedVouch, VouchError> {
    if signed.signatures.len() > MAX_SIGNATURES {
        return Err(VouchError::Malformed(format!(
            "{} signatures, at most {MAX_SIGNATURES} allowed",
            signed.signatures.len()
        )));
    }
    let body = decode_vouch_body(&signed.body)?;
    let tls_spki_sha256: [u8; 32] = body
        .tls_spki_sha256
        .as_slice()
        .try_into()
        .map_err(|_| VouchError::Malformed("tls spki hash is not 32 bytes".into()))?;

    let valid_signers = count_signatures(
        trusted,
        VOUCH_DOMAIN,
        &signed.body,
        &signed.signatures,
        ctx.threshold,
    )
    .map_err(|f| match f {
        CountFault::Unknown(id) => VouchError::UnknownSigner(id),
        CountFault::Bad(id) => VouchError::BadSignature(id),
        CountFault::Threshold { valid, required } => {
            VouchError::ThresholdNotMet { valid, required }
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
            VouchError::NotYetValid {
                not_before_unix_ms: body.not_before_unix_ms,
                now_unix_ms: ctx.now_unix_ms,
            }
        } else {
            VouchError::Expired {
                expires_unix_ms: body.expires_unix_ms,
                now_unix_ms: ctx.now_unix_ms,
            }
        }
    })?;
    if body.node != ctx.expected_node {
        return Err(VouchError::WrongNode {
            expected: ctx.expected_node.to_owned(),
            got: body.node,
        });
    }
    if tls_spki_sha256 != *ctx.peer_tls_spki_sha256 {
        return Err(VouchError::WrongTlsKey);
    }
    Ok(VerifiedVouch {
        node: body.node,
        trust_domain: body.trust_domain,
        tls_spki_sha256,
        not_before_unix_ms: body.not_before_unix_ms,
        expires_unix_ms: body.expires_unix_ms,
        issuer_key_id: body.issuer_key_id,
        valid_signers,
    })
}

// ---------------------------------------------------------------------------------------------
// revocation lists

/// Signs the exact body bytes under [`REVOCATIONS_DOMAIN`]:
/// `"lockbox/v1/revocations" || 0x00 || body`.
pub fn sign_revocations_body(signer: &SigningIdentity, key_id: &str, body: &[u8]) -> Signature {
    Signature {
        key_id: key_id.to_owned(),
        signature: signer.sign(REVOCATIONS_DOMAIN, body).to_vec(),
    }
}

/// Checks `body` as verifiers will (SPEC.md "Revocation list body") and encodes it, once.
///
/// The list must already be sorted by node name (bytewise) without duplicates: the order is
/// part of the one canonical encoding, and sorting here would hide a caller's duplicate.
pub fn encode_revocations_body(body: &RevocationsBody) -> Result<Vec<u8>> {
    validate_revocations(body).map_err(|i| CryptoError::Malformed(i.what))?;
    Ok(body.encode_to_vec())
}

/// Decodes revocation list body bytes strictly: at most [`MAX_REVOCATIONS_BODY_LEN`] bytes
/// (before decoding), protobuf, canonical encoding, then the rules of
/// [`encode_revocations_body`]. Does not check signatures; use [`verify_revocations`].
pub fn decode_revocations_body(
    bytes: &[u8],
) -> std::result::Result<RevocationsBody, RevocationsError> {
    if bytes.len() > MAX_REVOCATIONS_BODY_LEN {
        return Err(RevocationsError::Malformed(format!(
            "body is {} bytes, at most {MAX_REVOCATIONS_BODY_LEN} allowed",
            bytes.len()
        )));
    }
    let body = RevocationsBody::decode(bytes).map_err(|_| {
        RevocationsError::Malformed("body is not a protobuf RevocationsBody".into())
    })?;
    if body.encode_to_vec() != bytes {
        return Err(RevocationsError::Malformed(
            "body is not canonically encoded (unknown, repeated, reordered or default-valued fields)"
                .into(),
        ));
    }
    validate_revocations(&body).map_err(|i| RevocationsError::Malformed(i.reason.into()))?;
    Ok(body)
}

/// One node on a verified revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedNode {
    /// The node name.
    pub node: String,
    /// When the controller's operator revoked it (unix ms).
    pub revoked_unix_ms: u64,
    /// Why (free text from the operator, at most [`MAX_REVOCATION_REASON_LEN`] bytes; may be
    /// empty). Untrusted for display: escape it before printing to a terminal.
    pub reason: String,
}

/// A revocation list that passed [`verify_revocations`]: what one trusted controller had
/// revoked at `issued_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRevocations {
    /// Key id of the controller that issued and signed the list (`issuer_key_id` of the body,
    /// proven to be a trusted key id with a valid signature): a verifier that keeps one list
    /// per controller keys it by this.
    pub issuer_key_id: String,
    /// The trust domain the list is for; the caller compares it with its own.
    pub trust_domain: String,
    /// When the controller signed the list: a newer list from the same issuer replaces an
    /// older one, never the reverse.
    pub issued_unix_ms: u64,
    /// The revoked nodes, sorted by name (bytewise), no duplicates.
    pub revoked: Vec<RevokedNode>,
}

impl VerifiedRevocations {
    /// The entry for `node`, if the list revokes it (binary search: the list is sorted).
    pub fn find(&self, node: &str) -> Option<&RevokedNode> {
        self.revoked
            .binary_search_by(|r| r.node.as_bytes().cmp(node.as_bytes()))
            .ok()
            .map(|i| &self.revoked[i])
    }
}

/// Why a revocation list was refused; each variant is one check of SPEC.md "Revocation list
/// verification".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationsError {
    /// The list does not decode, is too large, or its body breaks a body rule.
    #[error("malformed revocation list: {0}")]
    Malformed(String),
    /// No valid signature, and at least one signature is from a key id not trusted here.
    #[error("revocation list signed by unknown controller key {0}")]
    UnknownSigner(String),
    /// A trusted controller's signature does not verify: the list was tampered with.
    #[error("bad signature from controller key {0}")]
    BadSignature(String),
    /// The list carries no signature at all.
    #[error("revocation list is not signed")]
    NotSigned,
    /// No valid signature is by the controller the body names as its issuer: one controller
    /// may not publish (and so replace) another's list.
    #[error("revocation list names issuer {0}, which did not sign it")]
    IssuerNotSigner(String),
}

impl RevocationsError {
    /// Stable snake_case name of the check, for audit records, metrics and `--json` output.
    pub fn code(&self) -> &'static str {
        match self {
            RevocationsError::Malformed(_) => "malformed",
            RevocationsError::UnknownSigner(_) => "unknown_signer",
            RevocationsError::BadSignature(_) => "bad_signature",
            RevocationsError::NotSigned => "not_signed",
            RevocationsError::IssuerNotSigner(_) => "issuer_not_signer",
        }
    }
}

/// Verifies a revocation list (SPEC.md "Revocation list verification"). In order, the first
/// failure wins:
/// 1. at most [`MAX_SIGNATURES`] signatures; the body decodes strictly
///    ([`decode_revocations_body`]) → [`RevocationsError::Malformed`];
/// 2. signatures under [`REVOCATIONS_DOMAIN`] ("Counting signatures" with a threshold of
///    one: one trusted controller is enough) → [`RevocationsError::BadSignature`],
///    [`RevocationsError::UnknownSigner`], [`RevocationsError::NotSigned`];
/// 3. `issuer_key_id` is the key id of a valid signature →
///    [`RevocationsError::IssuerNotSigner`].
///
/// No clock: how old a list may be, and which of two lists is newer, is the caller's policy
/// (`issued_unix_ms`).
pub fn verify_revocations(
    signed: &SignedRevocations,
    trusted: &TrustedControllers,
) -> std::result::Result<VerifiedRevocations, RevocationsError> {
    if signed.signatures.len() > MAX_SIGNATURES {
        return Err(RevocationsError::Malformed(format!(
            "{} signatures, at most {MAX_SIGNATURES} allowed",
            signed.signatures.len()
        )));
    }
    let body = decode_revocations_body(&signed.body)?;
    count_signatures(
        trusted,
        REVOCATIONS_DOMAIN,
        &signed.body,
        &signed.signatures,
        1,
    )
    .map_err(|f| match f {
        CountFault::Unknown(id) => RevocationsError::UnknownSigner(id),
        CountFault::Bad(id) => RevocationsError::BadSignature(id),
        CountFault::Threshold { .. } => RevocationsError::NotSigned,
    })?;
    // Every signature under a trusted key id verified (a bad one is fatal above), so the
    // issuer signed iff one of the signatures is under its key id and that id is trusted.
    let issuer_signed = trusted.get(&body.issuer_key_id).is_some()
        && signed
            .signatures
            .iter()
            .any(|s| s.key_id == body.issuer_key_id);
    if !issuer_signed {
        return Err(RevocationsError::IssuerNotSigner(printable(
            &body.issuer_key_id,
        )));
    }
    Ok(VerifiedRevocations {
        issuer_key_id: body.issuer_key_id,
        trust_domain: body.trust_domain,
        issued_unix_ms: body.issued_unix_ms,
        revoked: body
            .revoked
            .into_iter()
            .map(|r| RevokedNode {
                node: r.node,
                revoked_unix_ms: r.revoked_unix_ms,
                reason: r.reason,
            })
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// body rules

/// A body rule that failed: `reason` for the `Malformed` variants, `what` (the same text,
/// static, naming the structure) for [`CryptoError::Malformed`].
struct Invalid {
    reason: &'static str,
    what: &'static str,
}

enum VouchFault {
    Invalid(Invalid),
    Lifetime(u64),
}

macro_rules! invalid {
    ($what:literal, $reason:literal) => {
        Invalid {
            reason: $reason,
            what: concat!($what, " (", $reason, ")"),
        }
    };
}

/// SPEC.md "Vouch body" rules, in order; shared by encoding and decoding.
fn validate_vouch(body: &VouchBody) -> std::result::Result<(), VouchFault> {
    let bad = |i: Invalid| Err(VouchFault::Invalid(i));
    if body.node.is_empty() {
        return bad(invalid!("vouch body", "empty node name"));
    }
    if body.node.len() > MAX_VOUCH_NODE_LEN {
        return bad(invalid!("vouch body", "node name longer than 255 bytes"));
    }
    if body.trust_domain.is_empty() {
        return bad(invalid!("vouch body", "empty trust domain"));
    }
    if body.trust_domain.len() > MAX_VOUCH_TRUST_DOMAIN_LEN {
        return bad(invalid!("vouch body", "trust domain longer than 255 bytes"));
    }
    if body.tls_spki_sha256.len() != 32 {
        return bad(invalid!("vouch body", "tls spki hash is not 32 bytes"));
    }
    if body.not_before_unix_ms >= body.expires_unix_ms {
        return bad(invalid!("vouch body", "not_before is not before expires"));
    }
    if body.issuer_key_id.len() > MAX_VOUCH_ISSUER_LEN {
        return bad(invalid!(
            "vouch body",
            "issuer key id longer than 128 bytes"
        ));
    }
    let lifetime = body.expires_unix_ms - body.not_before_unix_ms;
    if lifetime > MAX_VOUCH_LIFETIME_MS {
        return Err(VouchFault::Lifetime(lifetime));
    }
    Ok(())
}

/// SPEC.md "Revocation list body" rules, in order; shared by encoding and decoding.
fn validate_revocations(body: &RevocationsBody) -> std::result::Result<(), Invalid> {
    if body.trust_domain.is_empty() {
        return Err(invalid!("revocation list body", "empty trust domain"));
    }
    if body.trust_domain.len() > MAX_VOUCH_TRUST_DOMAIN_LEN {
        return Err(invalid!(
            "revocation list body",
            "trust domain longer than 255 bytes"
        ));
    }
    if body.issuer_key_id.is_empty() {
        return Err(invalid!("revocation list body", "empty issuer key id"));
    }
    if body.issuer_key_id.len() > MAX_VOUCH_ISSUER_LEN {
        return Err(invalid!(
            "revocation list body",
            "issuer key id longer than 128 bytes"
        ));
    }
    if body.revoked.len() > MAX_REVOCATIONS {
        return Err(invalid!(
            "revocation list body",
            "more than 10000 revocations"
        ));
    }
    let mut previous: Option<&Revocation> = None;
    for r in &body.revoked {
        if r.node.is_empty() {
            return Err(invalid!("revocation list body", "empty node name"));
        }
        if r.node.len() > MAX_VOUCH_NODE_LEN {
            return Err(invalid!(
                "revocation list body",
                "node name longer than 255 bytes"
            ));
        }
        if r.reason.len() > MAX_REVOCATION_REASON_LEN {
            return Err(invalid!(
                "revocation list body",
                "reason longer than 1024 bytes"
            ));
        }
        if let Some(p) = previous
            && p.node.as_bytes() >= r.node.as_bytes()
        {
            return Err(invalid!(
                "revocation list body",
                "nodes not sorted by name or listed twice"
            ));
        }
        previous = Some(r);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
