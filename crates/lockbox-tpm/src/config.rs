//! `[unseal.tpm2]`: which TPM to talk to and which PCRs a new slot is bound to.

use std::str::FromStr;

use tss_esapi::tcti_ldr::TctiNameConf;

use crate::error::TpmError;

/// Longest TCTI string accepted. Real ones are short (`device:/dev/tpmrm0`,
/// `swtpm:host=127.0.0.1,port=2321`); the bound keeps a config typo from reaching libtss2 as an
/// arbitrary blob.
pub const MAX_TCTI_LEN: usize = 256;

/// Highest PCR index: a PC-client TPM has PCRs 0 to 23 in each bank.
pub const MAX_PCR_INDEX: u32 = 23;

/// The `[unseal.tpm2]` settings: where the TPM is and which PCRs to bind a new slot to.
///
/// Plain data so that the daemon's one config parser (lockboxd `config.rs`) owns the TOML; call
/// [`Tpm2Config::validate`] there so a bad value fails at load time, naming the field. [`seal`]
/// validates again, so an unchecked value cannot reach the TPM.
///
/// [`seal`]: crate::seal
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpm2Config {
    /// The TCTI string naming the TPM: `device:/dev/tpmrm0` on a host (the kernel's resource
    /// manager, so the daemon can share the TPM), `swtpm:host=127.0.0.1,port=N` in tests.
    pub tcti: String,
    /// PCR indices of the SHA-256 bank a new slot is bound to (e.g. `[7]`: secure-boot state);
    /// empty binds the slot to the TPM alone. Order does not matter: they are sorted on use.
    pub pcrs: Vec<u32>,
}

impl Tpm2Config {
    /// Checks the TCTI string (non-empty, at most [`MAX_TCTI_LEN`] bytes, one of the forms
    /// tss-esapi parses: `device:`, `swtpm:`, `mssim:`, `tabrmd:`) and the PCR list (each
    /// 0..=23, no duplicates, at most 24), so that a config mistake is reported when the config
    /// is loaded rather than at the first enrollment. It does not open the TPM.
    pub fn validate(&self) -> Result<(), TpmError> {
        parse_tcti(&self.tcti)?;
        self.sorted_pcrs().map(|_| ())
    }

    /// The PCR indices, validated and sorted ascending: the order the slot format and the PCR
    /// policy use, so two configs that list the same PCRs differently seal the same policy.
    pub fn sorted_pcrs(&self) -> Result<Vec<u32>, TpmError> {
        check_pcrs(&self.pcrs)
    }
}

/// Validates a PCR list and returns it sorted; shared by the config and the slot decoder.
pub(crate) fn check_pcrs(pcrs: &[u32]) -> Result<Vec<u32>, TpmError> {
    if pcrs.len() > (MAX_PCR_INDEX + 1) as usize {
        return Err(TpmError::Config(format!(
            "pcrs lists {} entries; a TPM has at most 24 PCRs",
            pcrs.len()
        )));
    }
    if let Some(bad) = pcrs.iter().find(|&&p| p > MAX_PCR_INDEX) {
        return Err(TpmError::Config(format!(
            "pcrs: {bad} is not a PCR index (0 to {MAX_PCR_INDEX})"
        )));
    }
    let mut sorted = pcrs.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(TpmError::Config(format!("pcrs: {} is listed twice", w[0])));
    }
    Ok(sorted)
}

/// Checks a TCTI string's length and parses it; the same checks for [`seal`](crate::seal) and
/// [`unseal`](crate::unseal).
pub(crate) fn parse_tcti(tcti: &str) -> Result<TctiNameConf, TpmError> {
    if tcti.is_empty() {
        return Err(TpmError::Config("tcti is empty".to_owned()));
    }
    if tcti.len() > MAX_TCTI_LEN {
        return Err(TpmError::Config(format!(
            "tcti is {} bytes long, at most {MAX_TCTI_LEN} allowed",
            tcti.len()
        )));
    }
    TctiNameConf::from_str(tcti).map_err(|source| TpmError::Tcti {
        tcti: tcti.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cfg(tcti: &str, pcrs: &[u32]) -> Tpm2Config {
        Tpm2Config {
            tcti: tcti.to_owned(),
            pcrs: pcrs.to_vec(),
        }
    }

    #[test]
    fn accepts_usual_configs_and_sorts_pcrs() {
        assert!(cfg("device:/dev/tpmrm0", &[]).validate().is_ok());
        assert!(
            cfg("swtpm:host=127.0.0.1,port=2321", &[7])
                .validate()
                .is_ok()
        );
        let all: Vec<u32> = (0..=23).rev().collect();
        assert_eq!(
            cfg("device:/dev/tpmrm0", &all).sorted_pcrs().unwrap(),
            (0..=23).collect::<Vec<u32>>()
        );
        assert_eq!(
            cfg("device:/dev/tpmrm0", &[7, 0, 4]).sorted_pcrs().unwrap(),
            vec![0, 4, 7]
        );
    }

    #[test]
    fn refuses_bad_pcrs() {
        for (pcrs, needle) in [
            (vec![24], "24 is not a PCR index"),
            (vec![7, 7], "7 is listed twice"),
            (vec![0, 3, 0], "0 is listed twice"),
            ((0..25).collect(), "25 entries"),
        ] {
            let err = cfg("device:/dev/tpmrm0", &pcrs).validate().unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn refuses_bad_tcti() {
        let err = cfg("", &[]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid [unseal.tpm2] config: tcti is empty"
        );
        let long = format!("device:/{}", "a".repeat(MAX_TCTI_LEN));
        let err = cfg(&long, &[]).validate().unwrap_err();
        assert!(err.to_string().contains("at most 256"), "{err}");
        let err = cfg("carrier-pigeon:coop=3", &[]).validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid TCTI string \"carrier-pigeon:coop=3\""),
            "{err}"
        );
    }
}
