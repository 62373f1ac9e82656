//! The two TPM object templates of slot format version 1. Changing either changes what the
//! TPM derives or accepts, so it needs a new slot format version.

use tss_esapi::{
    attributes::{ObjectAttributes, ObjectAttributesBuilder},
    interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        ecc::EccCurve,
    },
    structures::{
        Digest, EccParameter, EccPoint, KeyedHashScheme, Public, PublicBuilder,
        PublicEccParametersBuilder, PublicKeyedHashParameters, SymmetricDefinitionObject,
    },
};

/// Size of a SHA-256 digest: the name algorithm's digest (the sealed object's `unique`) and the
/// PCR policy digest.
pub(crate) const SHA256_LEN: usize = 32;

/// The TCG "SRK" storage primary key, ECC NIST P-256 (TCG TPM v2.0 Provisioning Guidance,
/// the ECC SRK template; the one go-tpm ships as `ECCSRKTemplate`): fixedTPM, fixedParent,
/// sensitiveDataOrigin, userWithAuth, noDA, restricted, decrypt; SHA-256 names; AES-128-CFB
/// for children; no scheme, no KDF; `unique` two 32-byte zero coordinates.
///
/// CreatePrimary with the same template under the same owner seed yields the same key, so
/// nothing is persisted in the TPM: [`seal`](crate::seal) and [`unseal`](crate::unseal) both
/// re-create it. ECC rather than RSA-2048 because deriving it is fast on every TPM (an RSA
/// primary means an RSA key generation, seconds on many discrete TPMs), and P-256 is mandatory
/// in PC-client TPMs.
pub(crate) fn storage_primary() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    // The restricted-decryption builder sets the NULL scheme and NULL KDF.
    let parameters = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()?;
    let zero = EccParameter::try_from(vec![0u8; 32])?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::new(zero.clone(), zero))
        .build()
}

/// Attributes of the sealed data object. fixedTPM and fixedParent: it can never be duplicated
/// off this TPM. No sensitiveDataOrigin: the data is ours, not TPM-generated. Neither sign,
/// decrypt nor restricted: that is what makes a KeyedHash object a sealed data object. noDA:
/// its authValue is empty (the protection is the PCR policy, or the TPM alone), so counting
/// failures against it protects nothing, and a dictionary-attack lockout caused by something
/// else on the host must not keep the daemon from unsealing.
///
/// `pcr_bound`: no userWithAuth, so only the PCR policy authorizes unseal; otherwise
/// userWithAuth with the empty authValue, i.e. anyone who can talk to this TPM.
pub(crate) fn sealed_object_attributes(pcr_bound: bool) -> tss_esapi::Result<ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_user_with_auth(!pcr_bound)
        .build()
}

/// The sealed data object's template: KeyedHash with the NULL scheme, SHA-256 names, and
/// `auth_policy` (the PolicyPCR digest, or empty when not PCR-bound).
pub(crate) fn sealed_object(auth_policy: Digest) -> tss_esapi::Result<Public> {
    let pcr_bound = !auth_policy.is_empty();
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(sealed_object_attributes(pcr_bound)?)
        .with_auth_policy(auth_policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// Whether `public` is a sealed data object as [`sealed_object`] makes it (after the TPM
/// filled in `unique`), bound to PCRs or not as `pcr_bound` says. The slot decoder uses it so
/// that a keyring file edited into another kind of object, or into an unbound object with a
/// PCR list, is refused before it reaches the TPM.
pub(crate) fn is_sealed_object(public: &Public, pcr_bound: bool) -> bool {
    let Public::KeyedHash {
        object_attributes,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        unique,
    } = public
    else {
        return false;
    };
    let Ok(expected_attributes) = sealed_object_attributes(pcr_bound) else {
        return false;
    };
    let expected_policy_len = if pcr_bound { SHA256_LEN } else { 0 };
    *object_attributes == expected_attributes
        && *name_hashing_algorithm == HashingAlgorithm::Sha256
        && auth_policy.len() == expected_policy_len
        && *parameters == PublicKeyedHashParameters::new(KeyedHashScheme::Null)
        && unique.len() == SHA256_LEN
}
