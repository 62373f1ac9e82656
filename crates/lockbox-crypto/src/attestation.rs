//! Attestations (SPEC.md "Attestations", DESIGN.md §2.4 and §4): a controller-signed statement
//! that node N holds these public keys and this TLS key, for a while.
//!
//! A peer trusts a lockbox's HPKE and signing keys only through an attestation, and ties it to
//! the TLS connection by the SPKI hash, so a stolen certificate alone is not enough. Before
//! attesting, the controller checks the node's proof of possession
//! ([`attest_request_message`]). Like grants, bodies are encoded once and signatures cover the
//! exact bytes.

use curve25519_dalek::ristretto::CompressedRistretto;
use curve25519_dalek::traits::IsIdentity;
use ed25519_dalek::VerifyingKey;
use lockbox_proto::v1::{AttestationBody, Signature, SignedAttestation};
use prost::Message as _;

use crate::error::{CryptoError, Result};
use crate::identity::{SigningIdentity, verify_signature};
use crate::trust::{
    CountFault, MAX_SIGNATURES, TrustedControllers, check_window, count_signatures,
};

/// Signature domain of attestation bodies.
pub const ATTESTATION_DOMAIN: &str = "lockbox/v1/attestation";
/// Signature domain of a node's proof of possession in an `AttestRequest`.
pub const ATTEST_REQUEST_DOMAIN: &str = "lockbox/v1/attest-request";
/// HPKE KEM id of DHKEM(X25519, HKDF-SHA256) (RFC 9180 §7.1), the only KEM supported yet.
pub const HPKE_KEM_X25519: u32 = 0x0020;

/// Signs the exact body bytes under [`ATTESTATION_DOMAIN`]:
/// `"lockbox/v1/attestation" || 0x00 || body`.
pub fn sign_attestation_body(signer: &SigningIdentity, key_id: &str, body: &[u8]) -> Signature {
    Signature {
        key_id: key_id.to_owned(),
        signature: signer.sign(ATTESTATION_DOMAIN, body).to_vec(),
    }
}

/// Checks `body` as verifiers will (SPEC.md "Attestation body") and encodes it, once, to the
/// bytes that are signed and sent. A body that would fail verification is
/// [`CryptoError::Malformed`].
pub fn encode_attestation_body(body: &AttestationBody) -> Result<Vec<u8>> {
    validate(body).map_err(|f| match f {
        Fault::Kem(_) => CryptoError::Malformed("attestation body (unsupported hpke kem)"),
        Fault::Invalid(i) => CryptoError::Malformed(i.what),
    })?;
    Ok(body.encode_to_vec())
}

/// Decodes body bytes strictly: protobuf, canonical encoding, then the checks of
/// [`encode_attestation_body`]. Does not check signatures; use [`verify_attestation`].
pub fn decode_attestation_body(
    bytes: &[u8],
) -> std::result::Result<AttestationBody, AttestationError> {
    let body = AttestationBody::decode(bytes).map_err(|_| {
        AttestationError::Malformed("body is not a protobuf AttestationBody".into())
    })?;
    // As for grants: a field this build does not know must not be silently dropped.
    if body.encode_to_vec() != bytes {
        return Err(AttestationError::Malformed(
            "body is not canonically encoded (unknown, repeated, reordered or default-valued fields)"
                .into(),
        ));
    }
    validate(&body).map_err(|f| match f {
        Fault::Kem(kem) => AttestationError::UnsupportedKem(kem),
        Fault::Invalid(i) => AttestationError::Malformed(i.reason.into()),
    })?;
    Ok(body)
}

/// An attestation that passed every check of [`verify_attestation`]: the node's keys, ready
/// to use.
#[derive(Debug, Clone)]
pub struct VerifiedAttestation {
    /// The decoded body.
    pub body: AttestationBody,
    /// X25519 key to seal keys to (KEM [`HPKE_KEM_X25519`]).
    pub hpke_public_key: [u8; 32],
    /// Ed25519 key the node signs transfers and audit checkpoints with.
    pub signing_public_key: [u8; 32],
    /// SHA-256 of the node's TLS certificate SubjectPublicKeyInfo (DER).
    pub tls_spki_sha256: [u8; 32],
    /// The node's ristretto255 assist public key (peer-assisted unseal), which an owner
    /// enrolls shares to; `None` for a node that predates it (the body field is empty).
    pub assist_public_key: Option<[u8; 32]>,
    /// Key ids of the controllers counted towards the threshold, one per distinct controller.
    pub valid_signers: Vec<String>,
}

/// Why an attestation was refused; each variant is one check of SPEC.md
/// "Attestation verification".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// The attestation does not decode, or its body breaks a body rule.
    #[error("malformed attestation: {0}")]
    Malformed(String),
    /// Too few valid signatures, and at least one signature is from a key id not trusted here.
    #[error("attestation signed by unknown controller key {0}")]
    UnknownSigner(String),
    /// A trusted controller's signature does not verify: the attestation was tampered with.
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
    #[error(
        "attestation not yet valid: valid from {not_before_unix_ms} (unix ms), now is {now_unix_ms}"
    )]
    NotYetValid {
        /// The attestation's `not_before_unix_ms`.
        not_before_unix_ms: u64,
        /// The verifier's clock.
        now_unix_ms: u64,
    },
    /// `now - skew >= expires`: the node stopped renewing, or was cut off.
    #[error("attestation expired at {expires_unix_ms} (unix ms), now is {now_unix_ms}")]
    Expired {
        /// The attestation's `expires_unix_ms`.
        expires_unix_ms: u64,
        /// The verifier's clock.
        now_unix_ms: u64,
    },
    /// The attestation is for another node than the one expected.
    #[error("wrong node: expected {expected}, attestation names {got}")]
    WrongNode {
        /// The node the verifier expected (grant, TLS identity).
        expected: String,
        /// The attestation's `node`.
        got: String,
    },
    /// The attested TLS key is not the one the peer presented.
    #[error("attestation does not match the peer's tls key")]
    WrongTlsKey,
    /// The attested HPKE key is for a KEM this build does not support.
    #[error("unsupported hpke kem 0x{0:04x}")]
    UnsupportedKem(u32),
}

impl AttestationError {
    /// Stable snake_case name of the check, for audit records, metrics and `--json` output.
    pub fn code(&self) -> &'static str {
        match self {
            AttestationError::Malformed(_) => "malformed",
            AttestationError::UnknownSigner(_) => "unknown_signer",
            AttestationError::BadSignature(_) => "bad_signature",
            AttestationError::ThresholdNotMet { .. } => "threshold_not_met",
            AttestationError::NotYetValid { .. } => "not_yet_valid",
            AttestationError::Expired { .. } => "expired",
            AttestationError::WrongNode { .. } => "wrong_node",
            AttestationError::WrongTlsKey => "wrong_tls_key",
            AttestationError::UnsupportedKem(_) => "unsupported_kem",
        }
    }
}

/// What the verifier knows; see [`verify_attestation`].
#[derive(Debug, Clone, Copy)]
pub struct AttestationContext<'a> {
    /// The verifier's clock, milliseconds since the Unix epoch.
    pub now_unix_ms: u64,
    /// Allowed clock skew, applied both ways.
    pub skew_ms: u64,
    /// Valid signatures from distinct trusted controllers required; 0 counts as 1.
    pub threshold: usize,
    /// The node this attestation must be for (from the grant or the peer's TLS identity).
    pub expected_node: Option<&'a str>,
    /// SHA-256 of the SPKI of the TLS certificate the peer presented on this connection.
    pub peer_tls_spki_sha256: Option<&'a [u8; 32]>,
}

/// Verifies an attestation (SPEC.md "Attestation verification"). In order, the first failure
/// wins:
/// 1. at most [`MAX_SIGNATURES`] signatures; the body decodes strictly
///    ([`decode_attestation_body`]) → [`AttestationError::Malformed`], or
///    [`AttestationError::UnsupportedKem`] for a KEM other than [`HPKE_KEM_X25519`];
/// 2. signatures under [`ATTESTATION_DOMAIN`], as for grants → [`AttestationError::BadSignature`];
/// 3. threshold → [`AttestationError::UnknownSigner`] / [`AttestationError::ThresholdNotMet`];
/// 4. time window with skew → [`AttestationError::NotYetValid`] / [`AttestationError::Expired`];
/// 5. `node == expected_node` if given → [`AttestationError::WrongNode`];
/// 6. `tls_spki_sha256 == peer_tls_spki_sha256` if given → [`AttestationError::WrongTlsKey`].
///
/// The trust domain is not compared here: the caller checks it against the peer's SPIFFE id.
pub fn verify_attestation(
    signed: &SignedAttestation,
    trusted: &TrustedControllers,
    ctx: &AttestationContext<'_>,
) -> std::result::Result<VerifiedAttestation, AttestationError> {
    if signed.signatures.len() > MAX_SIGNATURES {
        return Err(AttestationError::Malformed(format!(
            "{} signatures, at most {MAX_SIGNATURES} allowed",
            signed.signatures.len()
        )));
    }
    let body = decode_attestation_body(&signed.body)?;
    let key = |b: &[u8]| -> std::result::Result<[u8; 32], AttestationError> {
        b.try_into()
            .map_err(|_| AttestationError::Malformed("key is not 32 bytes".into()))
    };
    let (hpke_public_key, signing_public_key, tls_spki_sha256) = (
        key(&body.hpke_public_key)?,
        key(&body.signing_public_key)?,
        key(&body.tls_spki_sha256)?,
    );
    let assist_public_key = match body.assist_public_key.as_slice() {
        [] => None,
        k => Some(key(k)?),
    };

    let valid_signers = count_signatures(
        trusted,
        ATTESTATION_DOMAIN,
        &signed.body,
        &signed.signatures,
        ctx.threshold,
    )
    .map_err(|f| match f {
        CountFault::Unknown(id) => AttestationError::UnknownSigner(id),
        CountFault::Bad(id) => AttestationError::BadSignature(id),
        CountFault::Threshold { valid, required } => {
            AttestationError::ThresholdNotMet { valid, required }
        }
    })?;

    let verified = VerifiedAttestation {
        body,
        hpke_public_key,
        signing_public_key,
        tls_spki_sha256,
        assist_public_key,
        valid_signers,
    };
    check_attestation_claims(&verified, ctx)?;
    Ok(verified)
}

/// Steps 4–6 of [`verify_attestation`] (time window, node, TLS key) on an attestation whose
/// signatures already passed steps 1–3 under the same trusted controllers and threshold.
///
/// Why: a destination sees the same source attestation on every transfer until it is renewed;
/// re-checking the claims against this call's clock and peer is what changes, the Ed25519
/// verification of the same bytes does not. Callers that remember a verified attestation must
/// key it by its exact signed bytes and signatures.
pub fn check_attestation_claims(
    verified: &VerifiedAttestation,
    ctx: &AttestationContext<'_>,
) -> std::result::Result<(), AttestationError> {
    let body = &verified.body;
    check_window(
        body.not_before_unix_ms,
        body.expires_unix_ms,
        ctx.now_unix_ms,
        ctx.skew_ms,
    )
    .map_err(|not_yet| {
        if not_yet {
            AttestationError::NotYetValid {
                not_before_unix_ms: body.not_before_unix_ms,
                now_unix_ms: ctx.now_unix_ms,
            }
        } else {
            AttestationError::Expired {
                expires_unix_ms: body.expires_unix_ms,
                now_unix_ms: ctx.now_unix_ms,
            }
        }
    })?;
    if let Some(expected) = ctx.expected_node
        && body.node != expected
    {
        return Err(AttestationError::WrongNode {
            expected: expected.to_owned(),
            got: body.node.clone(),
        });
    }
    if let Some(tls) = ctx.peer_tls_spki_sha256
        && verified.tls_spki_sha256 != *tls
    {
        return Err(AttestationError::WrongTlsKey);
    }
    Ok(())
}

/// The message a node signs to prove it holds the keys it asks the controller to attest
/// (SPEC.md "Proof of possession"):
///
/// `lp(node) || lp(trust_domain) || u32(hpke_kem_id) || lp(hpke_public_key) ||
/// lp(signing_public_key) || tls_spki_sha256 [|| lp(assist_public_key)]`
///
/// signed as `"lockbox/v1/attest-request" || 0x00 || message`. The node builds it from its own
/// name and TLS certificate; the controller rebuilds it from the caller's authenticated SPIFFE
/// id and TLS key, so a proof replayed from another connection or node does not verify.
///
/// The assist key is appended only when the node sends one, so that the proofs of nodes that
/// predate it still verify; when it is sent, it is covered, so no one on the path can swap in
/// an assist key of their own (which would let them answer for the node's peers' shares).
///
/// # Panics
/// If an input is 4 GiB or longer, which no caller produces.
pub fn attest_request_message(
    node: &str,
    trust_domain: &str,
    hpke_kem_id: u32,
    hpke_public_key: &[u8],
    signing_public_key: &[u8],
    tls_spki_sha256: &[u8; 32],
    assist_public_key: Option<&[u8; 32]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        16 + 4
            + node.len()
            + trust_domain.len()
            + hpke_public_key.len()
            + signing_public_key.len()
            + 32
            + 36,
    );
    let lp = |out: &mut Vec<u8>, b: &[u8]| {
        let n = u32::try_from(b.len()).expect("attest request field under 4 GiB");
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(b);
    };
    lp(&mut out, node.as_bytes());
    lp(&mut out, trust_domain.as_bytes());
    out.extend_from_slice(&hpke_kem_id.to_be_bytes());
    lp(&mut out, hpke_public_key);
    lp(&mut out, signing_public_key);
    out.extend_from_slice(tls_spki_sha256);
    if let Some(assist) = assist_public_key {
        lp(&mut out, assist);
    }
    out
}

/// The proof of possession: the node's identity signs `msg` (from [`attest_request_message`])
/// under [`ATTEST_REQUEST_DOMAIN`]. 64 bytes, for `AttestRequest.proof`.
pub fn sign_attest_request(identity: &SigningIdentity, msg: &[u8]) -> Vec<u8> {
    identity.sign(ATTEST_REQUEST_DOMAIN, msg).to_vec()
}

/// The controller's check of a proof of possession: `proof` is an Ed25519 signature by
/// `signing_public_key` over `msg` under [`ATTEST_REQUEST_DOMAIN`] (strict verification).
///
/// A key that is not 32 bytes or a proof that is not 64 is [`CryptoError::BadLength`]; any
/// other failure is [`CryptoError::BadSignature`].
pub fn verify_attest_request(signing_public_key: &[u8], msg: &[u8], proof: &[u8]) -> Result<()> {
    let key: &[u8; 32] = signing_public_key
        .try_into()
        .map_err(|_| CryptoError::BadLength {
            what: "ed25519 public key",
            expected: 32,
            got: signing_public_key.len(),
        })?;
    verify_signature(key, ATTEST_REQUEST_DOMAIN, msg, proof)
}

/// A body rule that failed: `reason` for [`AttestationError::Malformed`], `what` (the same
/// text, static) for [`CryptoError::Malformed`].
struct Invalid {
    reason: &'static str,
    what: &'static str,
}

enum Fault {
    Kem(u32),
    Invalid(Invalid),
}

macro_rules! invalid {
    ($reason:literal) => {
        Fault::Invalid(Invalid {
            reason: $reason,
            what: concat!("attestation body (", $reason, ")"),
        })
    };
}

/// SPEC.md "Attestation body" rules, in order; shared by encoding and decoding.
fn validate(body: &AttestationBody) -> std::result::Result<(), Fault> {
    if body.node.is_empty() {
        return Err(invalid!("empty node name"));
    }
    if body.trust_domain.is_empty() {
        return Err(invalid!("empty trust domain"));
    }
    if body.hpke_kem_id != HPKE_KEM_X25519 {
        return Err(Fault::Kem(body.hpke_kem_id));
    }
    if body.hpke_public_key.len() != 32 {
        return Err(invalid!("hpke public key is not 32 bytes"));
    }
    let Ok(signing) = <[u8; 32]>::try_from(body.signing_public_key.as_slice()) else {
        return Err(invalid!("signing public key is not 32 bytes"));
    };
    if !VerifyingKey::from_bytes(&signing).is_ok_and(|k| !k.is_weak()) {
        return Err(invalid!("signing public key is not a usable ed25519 key"));
    }
    if body.tls_spki_sha256.len() != 32 {
        return Err(invalid!("tls spki hash is not 32 bytes"));
    }
    if body.not_before_unix_ms >= body.expires_unix_ms {
        return Err(invalid!("not_before is not before expires"));
    }
    // Empty: a node that predates peer-assisted unseal. Otherwise a proper group element, as
    // the assist module requires of every point (RFC 9496 canonical encoding, not the
    // identity): an owner must not enroll a share to a key nobody holds.
    if !body.assist_public_key.is_empty() {
        let Ok(assist) = <[u8; 32]>::try_from(body.assist_public_key.as_slice()) else {
            return Err(invalid!("assist public key is not 32 bytes"));
        };
        if CompressedRistretto(assist)
            .decompress()
            .is_none_or(|p| p.is_identity())
        {
            return Err(invalid!(
                "assist public key is not a usable ristretto255 point"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
