//! lockbox-tpm: seals a 32-byte unseal-slot key to the host's TPM 2.0 and unseals it.
//!
//! This is the `tpm2` half of the unseal methods `tpm2` and `tpm2+peers` (DESIGN.md §5.5): the
//! slot key is sealed so that only this host's TPM can unseal it, optionally only while chosen
//! PCRs (e.g. 7, secure-boot state) hold their enrollment-time values. A stolen disk or data
//! directory then unseals nothing off the host.
//!
//! - [`seal`] makes a [`SealedSlot`] from a [`Tpm2Config`] and the slot key, and
//!   [`SealedSlot::encode`] gives the bytes for the keyring file (public data; the byte format,
//!   version [`SLOT_FORMAT_VERSION`], is documented on [`SealedSlot`]).
//! - [`SealedSlot::decode`] and [`unseal`] get the key back on the same TPM.
//! - [`swtpm::Swtpm`] runs a real software TPM for tests and demos.
//!
//! Nothing is persisted in the TPM: the storage primary key is re-created from the TCG SRK
//! template (ECC P-256) at every call, and every transient handle is flushed before returning.
//!
//! **Blocking.** [`seal`], [`unseal`] and [`swtpm::Swtpm::extend_pcr`] are synchronous TSS
//! calls (libtss2 over the TCTI; tens of milliseconds on swtpm, more on a discrete TPM). Async
//! callers run them with `tokio::task::spawn_blocking`. They hold no shared state, so calls from
//! several threads are safe where the TCTI allows it (`device:/dev/tpmrm0`, the kernel's
//! resource manager, does; `device:/dev/tpm0` is exclusive).
//!
//! libtss2 writes its own warnings to stderr (e.g. when a slot does not load); `TSS2_LOG`
//! (e.g. `TSS2_LOG=all+none`) controls that.

mod config;
mod error;
mod slot;
pub mod swtpm;
mod template;
mod tpm;

pub use config::{MAX_PCR_INDEX, MAX_TCTI_LEN, Tpm2Config};
pub use error::TpmError;
pub use slot::{MAX_BLOB_LEN, SLOT_FORMAT_VERSION, SRK_NAME_LEN, SealedSlot};
pub use tpm::{seal, unseal};
