//! The lockbox's domain: keys, their material, sealing and the audit chain, as a plain Rust
//! API over `lockbox-store` and `lockbox-crypto`. gRPC adapters call this; tests may too.
//!
//! Concurrency model: every mutation runs in a [`txn::WriteTxn`], which holds one async mutex
//! (`write`) that orders the audit chain and makes read-check-write sequences atomic. The lock
//! covers only in-memory work and the batch apply (tens of µs); waiting for the disk happens
//! after it is released, so concurrent writers share one flush (group commit). Reads take no
//! write lock.
//!
//! The rooms, each one job (ARCHITECTURE.md "Where does a change go?"):
//! - `model`: the types (key metadata, versions, origins) and the checks on caller input;
//! - `txn`: the write path (lock, batch, audit record, apply, durability, restore on failure);
//! - `lifecycle`: init, open, unseal, seal, shutdown, status;
//! - `records`: sealing and opening key records and material;
//! - `reads`, `keys`, `destroy`, `rotation`, `audit`: the operations on keys and the chain;
//! - `grants`, `send`, `receive`: the two ends of a peer-to-peer transfer;
//! - `backup`: offline backups;
//! - `position`: the audit position reported to controllers (rollback detection).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use lockbox_crypto::{HpkeIdentity, Keyring, SigningIdentity, UnsealMethod, Unsealed};
use lockbox_store::Store;
use tokio::sync::Mutex;

use crate::config::Policy;
use crate::error::{CustodyError, Result};

mod audit;
mod backup;
mod destroy;
mod grants;
mod keys;
#[cfg(test)]
pub(crate) use keys::test_support;
mod lifecycle;
mod model;
mod position;
mod reads;
mod receive;
mod records;
mod rotation;
mod send;
mod slots;
mod txn;

pub use backup::{ExportedBackup, RestoreSource, Restored};
pub use grants::{GrantRole, StoredReceipt};
pub use lifecycle::{InitSecrets, ensure_keyfile, init, read_keyfile, refuse_initialized};
pub(crate) use model::quote;
pub use model::{
    AuditReport, AuditView, Caller, CloneMode, Destroyed, KeyInfo, KeyMeta, KeyState, Material,
    MovedTo, NodeStatus, Origin, OriginKind, Released, Rotated, VersionMeta, VersionState,
};
pub use receive::{Incoming, ReceivedKey};
pub use send::{AsRead, Outgoing, OutgoingVersion};
pub use slots::{Enroll, SlotInfo};
use txn::WriteState;

const NODE_SIGNING: &[u8] = b"signing";
const NODE_HPKE: &[u8] = b"hpke";
const NODE_AUDIT_HEAD: &[u8] = b"audit-head";
/// The record id the audit watermark file is sealed under (kind `AuditHead`, so neither can
/// stand in for the other).
const AUDIT_WATERMARK: &[u8] = b"audit-watermark";
const NODE_KEY_COUNT: &[u8] = b"key-count";
/// Key records by state (`metrics::KEY_STATES` order, four big-endian u64). Absent in data
/// dirs of earlier releases until the first unseal counts them.
const NODE_KEY_STATES: &[u8] = b"key-states";
const NODE_DESTROYS: &[u8] = b"destroys-since-rotation";

/// What only an unsealed lockbox holds in memory. Dropping it zeroizes every secret.
struct Unlocked {
    unsealed: Unsealed,
    signing: Arc<SigningIdentity>,
    hpke: Arc<HpkeIdentity>,
}

/// What a node asks a controller to attest: its public keys and a proof that it holds the
/// signing key (SPEC.md "Attestation request").
#[derive(Debug, Clone)]
pub struct AttestRequest {
    /// X25519 HPKE public key.
    pub hpke_public_key: [u8; 32],
    /// HPKE KEM id of that key.
    pub hpke_kem_id: u32,
    /// Ed25519 signing public key.
    pub signing_public_key: [u8; 32],
    /// Signature by the signing key over the request message.
    pub proof: Vec<u8>,
    /// ristretto255 assist public key (peer-assisted unseal), covered by `proof`, so that the
    /// controller attests the key peers will enroll shares to, and no one on the way can
    /// swap it for their own.
    pub assist_public_key: [u8; 32],
}

/// The custody service of one lockbox.
pub struct Custody {
    node_id: String,
    store: Store,
    keyring_path: PathBuf,
    /// Where the sealed audit watermark is written after each durable checkpoint.
    watermark_path: PathBuf,
    /// The checkpoint sequence number of the last watermark this process wrote: one only
    /// ever replaces it with a newer one (`txn.rs`, `write_watermark`).
    watermark_written: std::sync::Mutex<u64>,
    keyfile_path: PathBuf,
    keyring: RwLock<Keyring>,
    policy: Policy,
    unlocked: RwLock<Option<Arc<Unlocked>>>,
    write: Mutex<WriteState>,
    /// Batches applied that wrote key records, since start. Raised after each such batch is
    /// visible to readers: a reader that notes it before reading records, and finds it the
    /// same later under the writer lock, knows no key record changed in between (see
    /// `transfer::AsRead`).
    keys_written: AtomicU64,
    started: Instant,
    metrics: Arc<crate::metrics::Metrics>,
    /// This node's assist key (peer-assisted unseal): in its own file, usable while sealed.
    assist: Arc<lockbox_crypto::AssistIdentity>,
}

impl std::fmt::Debug for Custody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custody")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

pub(crate) use lockbox_runtime::now_unix_ms as now_ms;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CustodyError + '_ {
    move |source| CustodyError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn decode_u64(bytes: Option<Vec<u8>>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl Custody {
    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The key file of the keyfile unseal method.
    pub fn keyfile_path(&self) -> PathBuf {
        self.keyfile_path.clone()
    }

    /// The keyring's unseal method (its primary slot), which `lockboxctl unseal enroll` may
    /// have changed since the start.
    pub fn unseal_method(&self) -> UnsealMethod {
        self.keyring().method()
    }

    fn unlocked(&self) -> Result<Arc<Unlocked>> {
        match self.unlocked.read() {
            Ok(g) => g.clone().ok_or(CustodyError::Sealed),
            Err(p) => p.into_inner().clone().ok_or(CustodyError::Sealed),
        }
    }

    fn set_unlocked(&self, value: Option<Arc<Unlocked>>) {
        self.metrics.set_sealed(value.is_none());
        match self.unlocked.write() {
            Ok(mut g) => *g = value,
            Err(p) => *p.into_inner() = value,
        }
    }

    fn keyring(&self) -> Keyring {
        match self.keyring.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_keyring(&self, k: Keyring) {
        match self.keyring.write() {
            Ok(mut g) => *g = k,
            Err(p) => *p.into_inner() = k,
        }
    }

    /// The node's metrics (the daemon serves them when `[metrics]` is configured).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The node's store: the daemon waits on it for durability before answering
    /// (`settle`) and watches it for failure.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The controller keys this node trusts (from config).
    pub fn trusted_controllers(&self) -> lockbox_crypto::TrustedControllers {
        self.policy.controllers.clone()
    }

    /// Tolerated clock skew, in ms.
    pub fn clock_skew_ms(&self) -> u64 {
        self.policy.clock_skew.as_millis() as u64
    }

    /// This node's HPKE and Ed25519 public keys (unsealed only).
    pub fn public_keys(&self) -> Result<([u8; 32], [u8; 32])> {
        let u = self.unlocked()?;
        Ok((u.hpke.public_key(), u.signing.public_key()))
    }

    /// An attestation request with proof of possession of our signing key, bound to the TLS
    /// key we call the controller with (so a stolen request is useless from another TLS key).
    /// The adapter (`attest.rs`) puts it on the wire.
    pub fn attest_request(
        &self,
        trust_domain: &str,
        tls_spki_sha256: &[u8; 32],
    ) -> Result<AttestRequest> {
        let u = self.unlocked()?;
        let hpke = u.hpke.public_key();
        let signing = u.signing.public_key();
        let assist = self.assist.public_key();
        let msg = lockbox_crypto::attest_request_message(
            &self.node_id,
            trust_domain,
            lockbox_crypto::HPKE_KEM_X25519,
            &hpke,
            &signing,
            tls_spki_sha256,
            Some(&assist),
        );
        Ok(AttestRequest {
            hpke_public_key: hpke,
            hpke_kem_id: lockbox_crypto::HPKE_KEM_X25519,
            signing_public_key: signing,
            proof: lockbox_crypto::sign_attest_request(&u.signing, &msg),
            assist_public_key: assist,
        })
    }
}
