//! A sealed slot: what the keyring file stores for a `tpm2` unseal slot. The byte format is
//! documented on [`SealedSlot`], before the code that reads and writes it.

use tss_esapi::{
    structures::{Private, Public},
    traits::{Marshall, UnMarshall},
};

use crate::{config::MAX_PCR_INDEX, error::TpmError, template};

/// The slot format version this build writes. It also reads version 1, which has no pinned
/// storage key name (slots enrolled before it; `lockboxctl unseal enroll` re-seals them as 2).
pub const SLOT_FORMAT_VERSION: u8 = 2;

/// Length of a pinned storage key name: its name algorithm, SHA-256 (`00 0B`), and the 32-byte
/// SHA-256 digest of its public area.
pub const SRK_NAME_LEN: usize = 34;

/// How a TPM name made with SHA-256 starts (TPM_ALG_SHA256, big-endian).
const SHA256_NAME_ALG: [u8; 2] = [0x00, 0x0B];

/// Bound on each TPM blob in a slot (with its TPM2B size). Real ones are ~100 to 200 bytes; the
/// bound keeps a corrupt length from making the decoder allocate or the TPM parse much more.
pub const MAX_BLOB_LEN: usize = 4096;

/// A 32-byte slot key sealed to one TPM, as stored in the keyring file.
///
/// It holds the marshalled `TPM2B_PUBLIC` and `TPM2B_PRIVATE` of the sealed data object and the
/// PCRs it is bound to. Only [`seal`](crate::seal) and [`SealedSlot::decode`] make one, so every
/// value satisfies the format rules below and encodes canonically. Public data: `Debug` and
/// `Clone` are safe.
///
/// # Byte format, version 2
///
/// ```text
/// version   u8      = 2
/// npcrs     u8      0..=24
/// pcrs      npcrs × u8, each 0..=23, strictly ascending
/// srk_name  34 bytes: 00 0B ‖ SHA-256 of the storage primary key's public area (its TPM name)
/// public    u16be length (1..=4096) ‖ TPM2B_PUBLIC  of the sealed data object
/// private   u16be length (1..=4096) ‖ TPM2B_PRIVATE of the sealed data object
/// ```
///
/// Version 1 is the same without `srk_name`. Nothing may follow `private`.
///
/// `srk_name` pins the storage key the object was sealed under. Unseal re-creates that key and
/// salts its session to it, which hides the secret from a passive reader of the TPM bus; but a
/// device *between* lockboxd and the TPM could answer TPM2_CreatePrimary with a key of its own,
/// read the salt and so the unsealed secret. The name of the key the TPM presents is compared
/// with the pinned one before anything is encrypted to it: an impostor's key has another name
/// (a name is the hash of the public area, and only the real TPM's owner seed yields the real
/// key). The pin is taken at enrollment, which is trusted; a version-1 slot unseals without
/// the check.
///
/// Both versions also fix what the bytes mean: the parent is the
/// ECC P-256 SRK re-created from its template under the owner hierarchy, the PCRs are those of
/// the SHA-256 bank, and the public area is exactly the sealed-object template of
/// `template.rs` (KeyedHash, NULL scheme, SHA-256 names, fixedTPM | fixedParent | noDA, plus
/// userWithAuth and an empty policy when `npcrs` is 0, or no userWithAuth and a 32-byte
/// PolicyPCR digest otherwise).
///
/// The decoder is strict so that one value has one encoding: every length is checked against
/// its bound before anything is allocated, the PCR list must be ascending without repeats, each
/// TPM2B's own size must match its length prefix, the public area must re-marshal to exactly
/// the stored bytes, and trailing bytes are refused. Whatever `decode` accepts, `encode`
/// reproduces byte for byte.
///
/// The bytes are public: the private blob is encrypted and integrity-protected by the TPM under
/// its storage key, and is useless off that TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSlot {
    /// Ascending, no repeats, each ≤ 23; empty when the slot is bound to the TPM alone.
    pcrs: Vec<u32>,
    /// The TPM name of the storage primary key (SHA-256); `None` only in a version-1 slot.
    srk_name: Option<[u8; SRK_NAME_LEN]>,
    /// Marshalled TPM2B_PUBLIC, ≤ [`MAX_BLOB_LEN`], a sealed object per `template.rs`.
    public: Vec<u8>,
    /// Marshalled TPM2B_PRIVATE, ≤ [`MAX_BLOB_LEN`]; encrypted by the TPM.
    private: Vec<u8>,
}

impl SealedSlot {
    /// The PCR indices (SHA-256 bank) whose enrollment-time values unseal this slot, ascending;
    /// empty if none. Shown by `status` and named in a failed unseal's error.
    pub fn pcrs(&self) -> &[u32] {
        &self.pcrs
    }

    /// The TPM name of the storage primary key the slot was sealed under, which unseal
    /// requires the TPM to present again; `None` for a version-1 slot, which pins none.
    pub fn srk_name(&self) -> Option<&[u8]> {
        self.srk_name.as_ref().map(|n| &n[..])
    }

    /// The marshalled `TPM2B_PUBLIC` of the sealed object, e.g. for `tpm2_load` when debugging.
    pub fn public_blob(&self) -> &[u8] {
        &self.public
    }

    /// The marshalled `TPM2B_PRIVATE` of the sealed object (TPM-encrypted).
    pub fn private_blob(&self) -> &[u8] {
        &self.private
    }

    /// The slot's bytes for the keyring file, in the format of the type's docs: version 2, or
    /// version 1 for a slot decoded from version 1 (one value, one encoding).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            2 + self.pcrs.len() + SRK_NAME_LEN + 4 + self.public.len() + self.private.len(),
        );
        out.push(if self.srk_name.is_some() {
            SLOT_FORMAT_VERSION
        } else {
            1
        });
        // Both casts are lossless: the invariants bound the count by 24 and each index by 23.
        out.push(self.pcrs.len() as u8);
        out.extend(self.pcrs.iter().map(|&p| p as u8));
        if let Some(name) = &self.srk_name {
            out.extend_from_slice(name);
        }
        for blob in [&self.public, &self.private] {
            // Lossless: blobs are at most MAX_BLOB_LEN bytes.
            out.extend_from_slice(&(blob.len() as u16).to_be_bytes());
            out.extend_from_slice(blob);
        }
        out
    }

    /// Parses and checks slot bytes from the keyring file (all the rules of the module docs).
    /// It does not talk to the TPM: a slot from another TPM decodes fine and fails at
    /// [`unseal`](crate::unseal).
    pub fn decode(bytes: &[u8]) -> Result<Self, TpmError> {
        let mut r = Reader(bytes);
        let version = r.take(1, "version")?[0];
        if version != 1 && version != SLOT_FORMAT_VERSION {
            return Err(decode_err("version", "not a version this build knows"));
        }
        let npcrs = r.take(1, "PCR list")?[0];
        if u32::from(npcrs) > MAX_PCR_INDEX + 1 {
            return Err(decode_err("PCR list", "more than 24 PCRs"));
        }
        let pcrs: Vec<u32> = r
            .take(usize::from(npcrs), "PCR list")?
            .iter()
            .map(|&p| u32::from(p))
            .collect();
        if pcrs.iter().any(|&p| p > MAX_PCR_INDEX) {
            return Err(decode_err("PCR list", "index above 23"));
        }
        if pcrs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(decode_err("PCR list", "not strictly ascending"));
        }
        let srk_name = if version == 1 {
            None
        } else {
            Some(srk_name(r.take(SRK_NAME_LEN, SRK_NAME)?)?)
        };
        let public = r.blob(PUBLIC)?.to_vec();
        let private = r.blob(PRIVATE)?.to_vec();
        if !r.0.is_empty() {
            return Err(decode_err("slot", "trailing bytes after the private blob"));
        }
        let slot = SealedSlot {
            pcrs,
            srk_name,
            public,
            private,
        };
        slot.tpm_public()?;
        slot.tpm_private()?;
        Ok(slot)
    }

    /// Builds a slot from what TPM2_Create returned, checking it as `decode` would, so a slot
    /// that [`seal`](crate::seal) hands out always decodes.
    pub(crate) fn from_tpm(
        pcrs: Vec<u32>,
        srk_name: &[u8],
        public: &Public,
        private: &Private,
    ) -> Result<Self, TpmError> {
        let public = public.marshall().map_err(|source| TpmError::Tpm {
            step: "marshal the sealed object's public area",
            source,
        })?;
        let slot = SealedSlot {
            pcrs,
            srk_name: Some(self::srk_name(srk_name)?),
            public: tpm2b(&public, PUBLIC)?,
            private: tpm2b(private.value(), PRIVATE)?,
        };
        Self::decode(&slot.encode())
    }

    /// The public area for TPM2_Load, re-checked to be the sealed object the PCR list implies.
    pub(crate) fn tpm_public(&self) -> Result<Public, TpmError> {
        let area = tpm2b_contents(&self.public, PUBLIC)?;
        let public = Public::unmarshall(area)
            .map_err(|_| decode_err(PUBLIC, "does not parse as a TPMT_PUBLIC"))?;
        // Canonical and complete: the TSS unmarshaller ignores trailing bytes and may accept
        // encodings it would not produce.
        if public.marshall().ok().as_deref() != Some(area) {
            return Err(decode_err(PUBLIC, "not canonical, or trailing bytes"));
        }
        if !template::is_sealed_object(&public, !self.pcrs.is_empty()) {
            return Err(decode_err(
                PUBLIC,
                "not a lockbox sealed object matching the PCR list",
            ));
        }
        Ok(public)
    }

    /// The private blob for TPM2_Load.
    pub(crate) fn tpm_private(&self) -> Result<Private, TpmError> {
        let contents = tpm2b_contents(&self.private, PRIVATE)?;
        Private::try_from(contents).map_err(|_| decode_err(PRIVATE, "larger than a TPM2B_PRIVATE"))
    }
}

const PUBLIC: &str = "public blob";
const SRK_NAME: &str = "storage key name";

/// A storage key name as a slot pins it: exactly a SHA-256 TPM name.
fn srk_name(bytes: &[u8]) -> Result<[u8; SRK_NAME_LEN], TpmError> {
    match <[u8; SRK_NAME_LEN]>::try_from(bytes) {
        Ok(name) if name[..2] == SHA256_NAME_ALG => Ok(name),
        _ => Err(decode_err(
            SRK_NAME,
            "not a SHA-256 TPM name (00 0B and 32 bytes)",
        )),
    }
}
const PRIVATE: &str = "private blob";

fn decode_err(field: &'static str, problem: &'static str) -> TpmError {
    TpmError::Decode { field, problem }
}

/// Wraps `contents` as a TPM2B (u16be size ‖ contents), refusing what a slot could not hold.
fn tpm2b(contents: &[u8], field: &'static str) -> Result<Vec<u8>, TpmError> {
    if contents.is_empty() || contents.len() + 2 > MAX_BLOB_LEN {
        return Err(decode_err(
            field,
            "the TPM returned an empty or over-long blob",
        ));
    }
    let mut out = Vec::with_capacity(contents.len() + 2);
    // Lossless: bounded by MAX_BLOB_LEN just above.
    out.extend_from_slice(&(contents.len() as u16).to_be_bytes());
    out.extend_from_slice(contents);
    Ok(out)
}

/// The contents of a TPM2B whose non-zero size field accounts for exactly the rest of `blob`.
fn tpm2b_contents<'a>(blob: &'a [u8], field: &'static str) -> Result<&'a [u8], TpmError> {
    let Some((size, contents)) = blob.split_first_chunk::<2>() else {
        return Err(decode_err(field, "shorter than its TPM2B size field"));
    };
    let size = usize::from(u16::from_be_bytes(*size));
    if size == 0 || size != contents.len() {
        return Err(decode_err(
            field,
            "TPM2B size does not match the length prefix",
        ));
    }
    Ok(contents)
}

/// A cursor over untrusted bytes: every read is bounds-checked before it is used.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TpmError> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or(decode_err(field, "truncated"))?;
        self.0 = tail;
        Ok(head)
    }

    /// A u16be length, checked against [`MAX_BLOB_LEN`] before use, and that many bytes.
    fn blob(&mut self, field: &'static str) -> Result<&'a [u8], TpmError> {
        let len = self.take(2, field)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len == 0 || len > MAX_BLOB_LEN {
            return Err(decode_err(field, "length prefix out of range 1..=4096"));
        }
        self.take(len, field)
    }
}

#[cfg(test)]
mod tests;
