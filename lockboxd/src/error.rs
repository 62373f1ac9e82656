//! The daemon's one error type and the one table that maps it to gRPC codes.
//!
//! Messages are lowercase and say which check failed; they never contain key bytes.

use lockbox_crypto::CryptoError;
use lockbox_store::StoreError;

/// Everything a custody operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    /// The lockbox holds no KEK: only status and unseal work.
    #[error("lockbox is sealed: unseal it first (lockboxctl unseal)")]
    Sealed,
    /// A write was about to seal with an unsealed state that is no longer the current one
    /// (read before the writer lock, then replaced by a KEK rotation): nothing was written.
    #[error(
        "the lockbox's keys changed during this request (a KEK rotation): nothing was written; \
         run it again"
    )]
    StaleUnsealedState,
    /// No key id like this one exists here.
    #[error("unknown key {0}")]
    KeyNotFound(String),
    /// The key exists but has been destroyed (a tombstone).
    #[error("key {0} is destroyed")]
    KeyDestroyed(String),
    /// The key exists, but not in that version.
    #[error("key {key_id} has no readable version {version}")]
    VersionNotFound {
        /// The key.
        key_id: String,
        /// The version asked for.
        version: u32,
    },
    /// A request field is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A caller-chosen key id is taken by a key with other parameters.
    #[error("key {0} already exists with different parameters")]
    AlreadyExists(String),
    /// The clone policy of the key (or of the node) refuses this clone.
    #[error("clone refused by clone policy {policy} of key {key_id}: {why}")]
    CloneRefused {
        /// The key being cloned.
        key_id: String,
        /// The policy's spelling (deny, same-key, new-key).
        policy: &'static str,
        /// What the policy allows instead.
        why: &'static str,
    },
    /// The operation does not fit the key's lifecycle state.
    #[error("key {key_id}: {why}")]
    WrongState {
        /// The key.
        key_id: String,
        /// What is wrong.
        why: String,
    },
    /// A sealed record failed its integrity check or could not be decoded.
    #[error("{what} {id}: {source}")]
    Record {
        /// Which kind of record.
        what: &'static str,
        /// Its id.
        id: String,
        /// What the check said.
        source: CryptoError,
    },
    /// A cryptographic operation failed outside of record opening (unseal, random...).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store can no longer write (a journal write or sync failed): the daemon stops so
    /// that systemd restarts it from what the disk holds.
    #[error("the store failed: {0}")]
    StoreFailed(String),
    /// The data dir is already initialized (init refuses to touch it).
    #[error("{0} is already initialized; refusing to overwrite it")]
    AlreadyInitialized(String),
    /// The data dir has a store but no keyring: an init that did not finish (the keyring is
    /// written last), or a keyring lost since. Names both ways out.
    #[error(
        "{0} exists but the keyring beside it does not: an init that did not finish (remove \
         {0} and run `lockboxd init --config FILE` again), or a keyring lost since (restore it \
         from backup; without it the store cannot be read)"
    )]
    UnfinishedInit(String),
    /// The data dir has no keyring.
    #[error("{0} is not initialized: run `lockboxd init --config FILE` first")]
    NotInitialized(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A transfer failed at a named step (destination unreachable, sealed, refusing...).
    #[error("transfer failed: {0}")]
    Transfer(String),
    /// A grant failed verification (the message names the check).
    #[error("grant refused: {0}")]
    Grant(lockbox_crypto::GrantError),
    /// The database content is inconsistent (a bug or tampering).
    #[error("corrupt database: {0}")]
    Corrupt(String),
    /// A backup, recipient or identity was refused (the message names the check).
    #[error(transparent)]
    Backup(#[from] lockbox_crypto::BackupError),
    /// The assist key (peer-assisted unseal) could not be made or read.
    #[error("assist key: {0}")]
    Assist(#[from] lockbox_crypto::AssistError),
    /// A grant id this node already completed, presented with another body: not a retry (a
    /// retry carries the very same signed body), so it is refused, never answered with the
    /// stored receipt.
    #[error(
        "grant {grant_id} was already completed here with a different grant body: refused (a \
         retry carries the same body; another body under a used grant id is forged or reissued)"
    )]
    GrantIdReused {
        /// The grant id (hex).
        grant_id: String,
    },
    /// The audit log is behind what was recorded of it (its sealed head, or the watermark file
    /// written at checkpoints): records were lost or removed. The node refuses to unseal
    /// rather than serve an older state (docs/operations.md, "Audit log rolled back").
    #[error("refusing to unseal: {0}")]
    AuditRolledBack(String),
    /// A restore would overwrite or contradict a key here; nothing was imported.
    #[error("restore refused, nothing imported: key {key_id} {why}")]
    RestoreConflict {
        /// The key id in conflict.
        key_id: String,
        /// How it differs here.
        why: String,
    },
}

/// Shorthand for custody results.
pub type Result<T> = std::result::Result<T, CustodyError>;

impl From<CustodyError> for tonic::Status {
    fn from(e: CustodyError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

impl CustodyError {
    /// The gRPC status code this error is answered with (and counted under in metrics).
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            CustodyError::Sealed => Code::FailedPrecondition,
            CustodyError::StaleUnsealedState => Code::Aborted,
            CustodyError::KeyNotFound(_) | CustodyError::VersionNotFound { .. } => Code::NotFound,
            CustodyError::KeyDestroyed(_) => Code::FailedPrecondition,
            CustodyError::InvalidArgument(_) => Code::InvalidArgument,
            CustodyError::AlreadyExists(_) => Code::AlreadyExists,
            CustodyError::CloneRefused { .. } => Code::PermissionDenied,
            CustodyError::WrongState { .. } => Code::FailedPrecondition,
            CustodyError::Record { .. }
            | CustodyError::Corrupt(_)
            | CustodyError::AuditRolledBack(_) => Code::DataLoss,
            CustodyError::Grant(lockbox_crypto::GrantError::Malformed(_)) => Code::InvalidArgument,
            CustodyError::Grant(lockbox_crypto::GrantError::AlreadyConsumed(_)) => {
                Code::AlreadyExists
            }
            CustodyError::Grant(_) => Code::PermissionDenied,
            CustodyError::Transfer(_) => Code::Aborted,
            CustodyError::GrantIdReused { .. } => Code::PermissionDenied,
            CustodyError::Crypto(CryptoError::WrongUnsealSecret)
            | CustodyError::Crypto(CryptoError::UnsealMethodMismatch { .. })
            | CustodyError::Crypto(CryptoError::BadLength { .. }) => Code::InvalidArgument,
            CustodyError::Store(StoreError::Failed(_)) | CustodyError::StoreFailed(_) => {
                Code::Unavailable
            }
            CustodyError::Crypto(_) | CustodyError::Store(_) | CustodyError::Io { .. } => {
                Code::Internal
            }
            CustodyError::AlreadyInitialized(_)
            | CustodyError::NotInitialized(_)
            | CustodyError::UnfinishedInit(_) => Code::FailedPrecondition,
            CustodyError::RestoreConflict { .. } => Code::AlreadyExists,
            CustodyError::Backup(lockbox_crypto::BackupError::TooLarge { .. }) => {
                Code::ResourceExhausted
            }
            CustodyError::Backup(lockbox_crypto::BackupError::Crypto(_)) => Code::Internal,
            CustodyError::Backup(_) => Code::InvalidArgument,
            CustodyError::Assist(_) => Code::Internal,
        }
    }
}
