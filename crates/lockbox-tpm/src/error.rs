//! The one error type of this crate.

use tss_esapi::constants::{Tss2ResponseCode, Tss2ResponseCodeKind};

/// Everything that can go wrong configuring, sealing, unsealing or decoding a TPM slot.
///
/// Each message names the step that failed so that an operator reading `lockboxd`'s log knows
/// whether to look at the config, the TPM device, the boot state or the keyring file. None
/// carries secret bytes: the slot key never enters an error, and TPM response codes and PCR
/// indices are public.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// An `[unseal.tpm2]` value broke a rule (empty or over-long TCTI, bad PCR list).
    #[error("invalid [unseal.tpm2] config: {0}")]
    Config(String),
    /// libtss2 does not understand the TCTI string (unknown module, malformed options).
    #[error("invalid TCTI string {tcti:?}: {}", describe(.source))]
    Tcti {
        /// The TCTI string as configured.
        tcti: String,
        /// tss-esapi's error.
        #[source]
        source: tss_esapi::Error,
    },
    /// The TCTI parsed but the TPM behind it could not be opened (no device, nothing listening,
    /// no permission).
    #[error("cannot open the TPM through {tcti:?}: {}", describe(.source))]
    Open {
        /// The TCTI string as configured.
        tcti: String,
        /// tss-esapi's error.
        #[source]
        source: tss_esapi::Error,
    },
    /// A TPM command failed for a reason not covered by a more specific variant.
    #[error("TPM2 {step} failed: {}", describe(.source))]
    Tpm {
        /// What we were doing, e.g. "create the storage primary key".
        step: &'static str,
        /// The TPM's or libtss2's response code.
        #[source]
        source: tss_esapi::Error,
    },
    /// The TPM has no allocated SHA-256 bank for some requested PCRs. Sealing anyway would bind
    /// the slot to nothing, so enrollment refuses.
    #[error("the TPM has no SHA-256 bank for PCRs {pcrs:?}, so a slot cannot be bound to them")]
    PcrBankMissing {
        /// The requested PCRs missing from the SHA-256 bank.
        pcrs: Vec<u32>,
    },
    /// The sealed object does not load under this TPM's storage primary key, or that key's name
    /// is not the one the slot pins: the slot was sealed on another TPM, this TPM's owner
    /// hierarchy was cleared since, or something between lockboxd and the TPM answers in its
    /// place.
    #[error("the TPM cannot load this sealed slot: another TPM or its owner seed changed")]
    WrongTpm,
    /// The PCRs the slot is bound to no longer hold their values from enrollment (another
    /// bootloader, secure-boot keys or firmware): re-enroll, or unseal with another slot.
    #[error("PCR policy not satisfied: PCRs {pcrs:?} changed since enrollment")]
    PcrPolicy {
        /// The PCRs the slot is bound to.
        pcrs: Vec<u32>,
    },
    /// The TPM unsealed data of the wrong length; a slot of this crate always holds 32 bytes.
    #[error("the TPM unsealed {len} bytes, expected 32")]
    UnsealedLength {
        /// How many bytes came back (the length only, never the bytes).
        len: usize,
    },
    /// Stored slot bytes are not a well-formed sealed slot of a version this build knows.
    #[error("malformed sealed TPM slot: {field}: {problem}")]
    Decode {
        /// Which part of the slot: "version", "PCR list", "public blob", "private blob" or
        /// "slot" (the whole).
        field: &'static str,
        /// Which rule it broke.
        problem: &'static str,
    },
}

/// A TSS error as an operator can act on it.
///
/// tss-esapi decodes every response code as if the TPM had sent it, so a TCTI or ESAPI code (a
/// missing device, a refused connection) reads "response code not recognized" or as an
/// unrelated TPM error. This names the layer and the common causes, and always shows the raw
/// code, which `tpm2_rc_decode` explains in full.
pub(crate) fn describe(e: &tss_esapi::Error) -> String {
    let Some(raw) = raw_code(e) else {
        return e.to_string();
    };
    let layer = match (raw >> 16) & 0xff {
        0 => return format!("{e} (TPM response code {raw:#x})"),
        6 => "feature API",
        7 => "ESAPI",
        8 => "SAPI",
        9 => "marshalling",
        10 => "TCTI",
        11 | 12 => "resource manager",
        _ => "TSS",
    };
    let what = match raw & 0xffff {
        8 => "could not connect",
        9 => "timed out",
        10 => "I/O error",
        11 => "bad value",
        12 => "not permitted",
        21 => "not supported",
        23 => "out of memory",
        27 => "the TPM's response HMAC did not verify",
        49 => "no TPM",
        _ => "error",
    };
    format!("{layer} {what} (TSS response code {raw:#x})")
}

/// The TPM's own response-code kind of `e`, or `None` for another layer's code (TCTI, ESAPI,
/// resource manager) or a wrapper error, so those are never mistaken for a TPM verdict.
pub(crate) fn tpm_kind(e: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match (e, raw_code(e)) {
        (tss_esapi::Error::Tss2Error(rc), Some(raw)) if raw >> 16 == 0 => rc.kind(),
        _ => None,
    }
}

/// The raw TSS2_RC of `e`. tss-esapi keeps it private and shows it only in the `Display` of
/// the format-0 and format-1 wrappers ("Response code value: 0x…").
fn raw_code(e: &tss_esapi::Error) -> Option<u32> {
    let text = match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => rc.to_string(),
        _ => return None,
    };
    let hex = text.rsplit_once("0x")?.1;
    u32::from_str_radix(hex.trim(), 16).ok()
}
