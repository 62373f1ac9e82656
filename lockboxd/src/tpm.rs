//! The TPM part of the `tpm2` and `tpm2+peers` unseal methods (DESIGN.md §5.5): a random slot
//! key sealed to this host's TPM 2.0 at enrollment, unsealed at start. The TSS calls block, so
//! they run on a blocking thread; errors are strings that name the TPM step for `status`.

use lockbox_crypto::SecretBytes;
use lockbox_crypto::keyring::TPM2_SLOT_KEY_LEN;
use lockbox_tpm::{SealedSlot, Tpm2Config};

/// Draws a fresh slot key and seals it to the TPM `cfg` names: returns the slot's object
/// bytes (for the keyring) and the key (for wrapping the root secret, then wiped).
pub async fn seal_new_key(cfg: &Tpm2Config) -> Result<(Vec<u8>, SecretBytes), String> {
    let key = SecretBytes::random(TPM2_SLOT_KEY_LEN).map_err(|e| e.to_string())?;
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    raw.copy_from_slice(key.expose_secret());
    let cfg = cfg.clone();
    let sealed = tokio::task::spawn_blocking(move || lockbox_tpm::seal(&cfg, &raw))
        .await
        .map_err(|e| format!("tpm2: the sealing task failed: {e}"))?
        .map_err(|e| format!("tpm2: {e}"))?;
    Ok((sealed.encode(), key))
}

/// Unseals the slot key in `blob` with the TPM at `tcti`.
pub async fn unseal_key(tcti: &str, blob: &[u8]) -> Result<SecretBytes, String> {
    let slot = SealedSlot::decode(blob).map_err(|e| format!("tpm2: the slot's object: {e}"))?;
    let tcti = tcti.to_owned();
    let key = tokio::task::spawn_blocking(move || lockbox_tpm::unseal(&tcti, &slot))
        .await
        .map_err(|e| format!("tpm2: the unsealing task failed: {e}"))?
        .map_err(|e| format!("tpm2: {e}"))?;
    Ok(SecretBytes::new(key.to_vec()))
}
