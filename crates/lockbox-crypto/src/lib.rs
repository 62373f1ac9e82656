//! Sans-I/O cryptography for lockbox.
//!
//! Everything here is pure computation over bytes: no files, no sockets, no clock (times are
//! parameters). Keeping it so makes every format testable from vectors and keeps the
//! security-critical code small enough to review against `SPEC.md`, which gives the exact byte
//! layout and every domain-separation label used below.
//!
//! - [`secret`]: the only way secret bytes are held in memory.
//! - [`seal`]: records sealed at rest under a KEK.
//! - [`keyring`]: the keyring file that holds the wrapped root secret and KEKs.
//! - [`identity`]: the node's Ed25519 signing key and X25519 HPKE key.
//! - [`audit`]: the hash-chained, checkpoint-signed audit log.
//! - [`trust`]: trusted controller keys and the M-of-N signature count.
//! - [`grant`]: controller-signed permissions to move keys between lockboxes.
//! - [`attestation`]: controller-signed statements of a node's public keys.
//! - [`vouch`]: controller-signed vouches ("I stand for node N now") and revocation lists,
//!   which a lockbox checks before it helps a peer unseal.
//! - [`wrap`]: keys sealed end to end (HPKE) and signed for a transfer between lockboxes.
//! - [`receipt`]: the destination's signed receipt for a transfer, checked by the source.
//! - [`backup`]: offline backups sealed to recovery keys (one HPKE stanza per recipient).
//! - [`assist`]: peer-assisted unseal: assist keys, the blinded exchange with a peer, Shamir
//!   t-of-n shares of a slot key, and the `peers` slot that ties them together.

pub mod assist;
pub mod attestation;
pub mod audit;
pub mod backup;
pub mod error;
pub mod grant;
pub mod identity;
pub mod keyring;
pub mod receipt;
pub mod seal;
pub mod secret;
pub mod trust;
pub mod vouch;
pub mod wrap;

mod wire;

// The API other crates use, named here so that a new public item is a decision: everything
// else stays reachable through its module (`lockbox_crypto::backup::BACKUP_MAGIC`), which is
// where the SPEC.md constants and the vectors' helpers live.
// The exchange's free functions (`enroll`, `blind`, `recover`, `split`, `combine`) and its
// vectors-only entry points stay under `assist::`, where their names say what they belong to.
pub use assist::{
    ASSIST_KEY_FILE_LEN, ASSIST_SHARE_LABEL, AssistError, AssistIdentity, AssistPeer,
    AssistRequest, BlindingSecret, EnrollContext, EnrolledShare, PeerSlot, SlotUnseal,
};
pub use attestation::{
    ATTESTATION_DOMAIN, AttestationContext, AttestationError, HPKE_KEM_X25519, VerifiedAttestation,
    attest_request_message, check_attestation_claims, decode_attestation_body,
    encode_attestation_body, sign_attest_request, sign_attestation_body, verify_attest_request,
    verify_attestation,
};
pub use audit::{
    AuditChainError, AuditEntry, AuditEvent, ChainSummary, ChainVerifier, Checkpoint, GENESIS_HASH,
    checkpoint_message, sign_checkpoint,
};
pub use backup::{
    BACKUP_MAC_LEN, BACKUP_STANZA_LEN, BackupContents, BackupError, BackupHeader, BackupIdentity,
    BackupKey, BackupOrigin, BackupRecipient, BackupVersion, BackupVersionState, IDENTITY_PREFIX,
    MAX_BACKUP_LEN, OpenedBackup, RECIPIENT_PREFIX, check_backup_contents, inspect_backup,
    open_backup, seal_backup,
};
pub use error::{CryptoError, Result};
pub use grant::{
    GRANT_DOMAIN, GrantContext, GrantError, GrantSide, OP_NAMES, SignatureVerdicts, VerifiedGrant,
    decode_grant_body, encode_grant_body, grant_from_text, grant_to_text, inspect_grant, op_name,
    parse_op, sign_grant_body, verify_grant,
};
pub use identity::{HpkeIdentity, SigningIdentity, verify_signature};
pub use keyring::{
    Argon2Params, Keyring, NewSlot, PassphraseLineError, RecoveryChange, UnsealMethod,
    UnsealSecret, Unsealed, passphrase_line,
};
/// The signed formats this crate checks, as the daemon's domain sees them: grants and
/// receipts are protobuf messages signed as their exact bytes (SPEC.md), so these message
/// types are their representation; the RPC services stay in `lockbox-proto`'s "services".
pub use lockbox_proto::v1::{GrantBody, GrantOp, ReceiptBody, SignedGrant, StoredVersions};
pub use receipt::{
    MAX_RECEIPT_LEN, RECEIPT_DOMAIN, ReceiptError, ReceiptExpectation, SignedReceipt, sign_receipt,
    verify_receipt,
};
pub use seal::{Kek, RecordKind, SEAL_FINGERPRINT_LEN, seal_fingerprint, sealed_kek_id};
pub use secret::{SecretBytes, random_array};
pub use trust::{TrustedControllers, decode_public_key, encode_public_key};
pub use vouch::{
    REVOCATIONS_DOMAIN, RevocationsError, RevokedNode, VOUCH_DOMAIN, VerifiedRevocations,
    VerifiedVouch, VouchContext, VouchError, decode_revocations_body, decode_vouch_body,
    encode_revocations_body, encode_vouch_body, sign_revocations_body, sign_vouch_body,
    verify_revocations, verify_vouch,
};
#[cfg(feature = "test-vectors")]
pub use wrap::seal_batch_deterministic;
pub use wrap::{
    BatchContext, KeyToWrap, MAX_BATCH_KEYS, SUITE_X25519_SHA256_CHACHA20, SealedBatch, SealedKey,
    TRANSFER_BATCH_DOMAIN, TRANSFER_BATCH_FORMAT, batch_message, key_attributes, open_batch,
    seal_batch, sign_batch, transfer_info, transfer_key_aad, verify_and_open_batch, verify_batch,
    wire_key_attributes,
};
