//! The TPM conversations: seal, unseal, and a PCR extend for tests and demos.
//!
//! Every transient handle (primary key, sealed object, sessions) is flushed on every path by
//! [`flushing`]; dropping the tss-esapi `Context` would flush them too, but only with a log
//! line on failure, and over the swtpm TCTI (no resource manager) a leaked handle would stay
//! in the TPM until it restarts.

use tss_esapi::{
    Context,
    attributes::SessionAttributesBuilder,
    constants::{CapabilityType, SessionType, Tss2ResponseCodeKind},
    handles::{KeyHandle, ObjectHandle, PcrHandle, SessionHandle},
    interface_types::{
        algorithm::HashingAlgorithm,
        resource_handles::Hierarchy,
        session_handles::{AuthSession, PolicySession},
    },
    structures::{
        CapabilityData, Digest, DigestValues, PcrSelectionList, PcrSelectionListBuilder, PcrSlot,
        Private, Public, SensitiveData, SymmetricDefinition,
    },
};
use zeroize::Zeroizing;

use crate::{
    config::{Tpm2Config, parse_tcti},
    error::{TpmError, tpm_kind},
    slot::SealedSlot,
    template,
};

/// Seals `secret` (a slot key) to the TPM named by `cfg.tcti`, bound to the current values of
/// `cfg.pcrs` (SHA-256 bank) if any, and returns the slot to store in the keyring file.
///
/// The storage primary key is re-created from the fixed SRK template (see `template.rs`), the
/// secret becomes the sensitive data of a KeyedHash sealed object under it (fixedTPM |
/// fixedParent, so it can never leave this TPM), and the object's policy is PolicyPCR over
/// `cfg.pcrs` at their current values (computed in a trial session), or the empty authValue
/// when `cfg.pcrs` is empty. The secret crosses the TCTI encrypted (a session salted to the
/// storage key with parameter encryption), so it is not readable on the TPM bus.
///
/// Blocking: a few TPM commands, tens of milliseconds on swtpm, more on a discrete TPM. Call
/// it from a blocking thread (`tokio::task::spawn_blocking`), never on an async worker.
pub fn seal(cfg: &Tpm2Config, secret: &[u8; 32]) -> Result<SealedSlot, TpmError> {
    let pcrs = cfg.sorted_pcrs()?;
    let mut ctx = open(&cfg.tcti)?;
    if !pcrs.is_empty() {
        check_sha256_bank(&mut ctx, &pcrs)?;
    }
    let primary = create_primary(&mut ctx)?;
    flushing(
        &mut ctx,
        primary.into(),
        "flush the storage primary key",
        |ctx| {
            let policy = if pcrs.is_empty() {
                Digest::default()
            } else {
                pcr_policy_digest(ctx, &pcrs)?
            };
            let object = template::sealed_object(policy)
                .map_err(tpm_err("build the sealed object template"))?;
            // Copied into tss-esapi's zeroize-on-drop buffer.
            let sensitive = SensitiveData::try_from(&secret[..])
                .map_err(tpm_err("wrap the slot key as sensitive data"))?;
            let session = start_salted_session(ctx, primary, SessionType::Hmac, Crypt::Command)?;
            let created = flushing(
                ctx,
                session_handle(session),
                "flush the sealing session",
                |ctx| {
                    ctx.execute_with_session(Some(session), |ctx| {
                        ctx.create(primary, object, None, Some(sensitive), None, None)
                    })
                    .map_err(tpm_err("create the sealed object"))
                },
            )?;
            let srk_name = primary_name(ctx, primary)?;
            SealedSlot::from_tpm(pcrs, &srk_name, &created.out_public, &created.out_private)
        },
    )
}

/// Unseals the 32-byte slot key of `slot` with the TPM named by `tcti`.
///
/// It re-creates the storage primary key and, for a slot that pins its name (version 2),
/// refuses a key with another name before encrypting anything to it (see [`SealedSlot`]:
/// something between lockboxd and the TPM answering in its place), loads the sealed object
/// under it, satisfies its
/// policy (PolicyPCR over the slot's PCRs at their current values, or the empty authValue) in
/// a session salted to the storage key that encrypts the response, and checks the length.
/// Another TPM, or this one after its owner hierarchy was cleared, gives
/// [`TpmError::WrongTpm`]; PCRs that changed since enrollment give [`TpmError::PcrPolicy`].
///
/// Blocking: call it from a blocking thread (`tokio::task::spawn_blocking`).
pub fn unseal(tcti: &str, slot: &SealedSlot) -> Result<Zeroizing<[u8; 32]>, TpmError> {
    let public = slot.tpm_public()?;
    let private = slot.tpm_private()?;
    let mut ctx = open(tcti)?;
    let primary = create_primary(&mut ctx)?;
    flushing(
        &mut ctx,
        primary.into(),
        "flush the storage primary key",
        |ctx| {
            if let Some(pinned) = slot.srk_name()
                && primary_name(ctx, primary)? != pinned
            {
                return Err(TpmError::WrongTpm);
            }
            let object = load(ctx, primary, private, public)?;
            flushing(ctx, object.into(), "flush the sealed object", |ctx| {
                unseal_object(ctx, primary, object, slot.pcrs())
            })
        },
    )
}

/// Extends SHA-256 PCR `pcr` with `digest`, as a boot component would: what tests and demos use
/// to change the state a PCR-bound slot was sealed to.
pub(crate) fn extend_pcr(tcti: &str, pcr: u32, digest: [u8; 32]) -> Result<(), TpmError> {
    let step = "extend a PCR";
    let handle = PcrHandle::try_from(pcr).map_err(tpm_err(step))?;
    let digest = Digest::try_from(&digest[..]).map_err(tpm_err(step))?;
    let mut values = DigestValues::new();
    values.set(HashingAlgorithm::Sha256, digest);
    let mut ctx = open(tcti)?;
    ctx.execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, values))
        .map_err(tpm_err(step))
}

fn open(tcti: &str) -> Result<Context, TpmError> {
    let conf = parse_tcti(tcti)?;
    Context::new(conf).map_err(|source| TpmError::Open {
        tcti: tcti.to_owned(),
        source,
    })
}

/// Runs `f`, then flushes `handle` whatever `f` returned. The first error wins; a successful
/// `f` whose flush failed reports the flush, so a TPM that stops answering is not hidden.
fn flushing<T>(
    ctx: &mut Context,
    handle: ObjectHandle,
    step: &'static str,
    f: impl FnOnce(&mut Context) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let result = f(ctx);
    let flushed = ctx.flush_context(handle).map_err(tpm_err(step));
    let value = result?;
    flushed?;
    Ok(value)
}

/// The storage primary key, re-created from its fixed template under the owner hierarchy
/// (empty owner authorization, as on a host whose TPM nobody took ownership of).
fn create_primary(ctx: &mut Context) -> Result<KeyHandle, TpmError> {
    let step = "create the storage primary key under the owner hierarchy";
    let template = template::storage_primary().map_err(tpm_err(step))?;
    ctx.execute_with_nullauth_session(|ctx| {
        ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
    })
    .map(|created| created.key_handle)
    .map_err(tpm_err(step))
}

/// The TPM name of the storage primary key (name algorithm ‖ digest of its public area), as
/// ESAPI computed it from the public area the TPM returned and checked against the name the
/// TPM returned with it.
fn primary_name(ctx: &mut Context, primary: KeyHandle) -> Result<Vec<u8>, TpmError> {
    ctx.tr_get_name(primary.into())
        .map(|name| name.value().to_vec())
        .map_err(tpm_err("read the storage primary key's name"))
}

/// Loads the sealed object. An integrity failure means the private blob was not made under
/// this TPM's storage primary key: another TPM, or a cleared owner hierarchy.
fn load(
    ctx: &mut Context,
    primary: KeyHandle,
    private: Private,
    public: Public,
) -> Result<KeyHandle, TpmError> {
    ctx.execute_with_nullauth_session(|ctx| ctx.load(primary, private, public))
        .map_err(|source| match tpm_kind(&source) {
            Some(Tss2ResponseCodeKind::Integrity) => TpmError::WrongTpm,
            _ => TpmError::Tpm {
                step: "load the sealed object",
                source,
            },
        })
}

fn unseal_object(
    ctx: &mut Context,
    primary: KeyHandle,
    object: KeyHandle,
    pcrs: &[u32],
) -> Result<Zeroizing<[u8; 32]>, TpmError> {
    let (kind_of_session, step) = if pcrs.is_empty() {
        (SessionType::Hmac, "flush the unseal session")
    } else {
        (SessionType::Policy, "flush the PCR policy session")
    };
    let session = start_salted_session(ctx, primary, kind_of_session, Crypt::Response)?;
    let data = flushing(ctx, session_handle(session), step, |ctx| {
        if !pcrs.is_empty() {
            let policy = PolicySession::try_from(session)
                .map_err(tpm_err("start the PCR policy session"))?;
            // An empty digest: the TPM uses the PCRs' current values. A mismatch with the
            // enrolled policy shows as a policy failure at unseal.
            ctx.policy_pcr(policy, Digest::default(), pcr_selection(pcrs)?)
                .map_err(tpm_err("PolicyPCR"))?;
        }
        ctx.execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))
            .map_err(|source| match tpm_kind(&source) {
                Some(Tss2ResponseCodeKind::PolicyFail) => TpmError::PcrPolicy {
                    pcrs: pcrs.to_vec(),
                },
                Some(Tss2ResponseCodeKind::PcrChanged) => TpmError::Tpm {
                    step: "unseal (a PCR changed during the unseal; try again)",
                    source,
                },
                _ => TpmError::Tpm {
                    step: "unseal",
                    source,
                },
            })
    })?;
    if data.len() != 32 {
        return Err(TpmError::UnsealedLength { len: data.len() });
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&data);
    Ok(key)
}

/// Which direction of a salted session carries a secret and so gets parameter encryption.
#[derive(Clone, Copy)]
enum Crypt {
    /// The command's first parameter (TPM2_Create's inSensitive: the slot key).
    Command,
    /// The response's first parameter (TPM2_Unseal's outData). Only this one for unseal: a
    /// command without parameters refuses a session with `decrypt` set.
    Response,
}

/// A session salted to the storage primary key, so its session key is unknown to anyone
/// watching the TPM bus, with parameter encryption (AES-128-CFB) in the direction `crypt`.
fn start_salted_session(
    ctx: &mut Context,
    primary: KeyHandle,
    session_type: SessionType,
    crypt: Crypt,
) -> Result<AuthSession, TpmError> {
    let step = "start a session salted to the storage primary key";
    let session = ctx
        .start_auth_session(
            Some(primary),
            None,
            None,
            session_type,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(tpm_err(step))?
        .ok_or(TpmError::Tpm {
            step,
            source: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        })?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .with_decrypt(matches!(crypt, Crypt::Command))
        .with_encrypt(matches!(crypt, Crypt::Response))
        .build();
    let set = ctx
        .tr_sess_set_attributes(session, attributes, mask)
        .map_err(tpm_err("set the session's encryption attributes"));
    if let Err(e) = set {
        // Best effort: the attribute error is the one worth reporting.
        let _ = ctx.flush_context(session_handle(session));
        return Err(e);
    }
    Ok(session)
}

/// The policy digest of PolicyPCR over `pcrs` at their current values, from a trial session:
/// the TPM computes it, so it is right for this TPM's PCR bank layout.
fn pcr_policy_digest(ctx: &mut Context, pcrs: &[u32]) -> Result<Digest, TpmError> {
    let step = "start the trial policy session";
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Trial,
            SymmetricDefinition::Null,
            HashingAlgorithm::Sha256,
        )
        .map_err(tpm_err(step))?
        .ok_or(TpmError::Tpm {
            step,
            source: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        })?;
    flushing(
        ctx,
        session_handle(session),
        "flush the trial policy session",
        |ctx| {
            let trial = PolicySession::try_from(session).map_err(tpm_err(step))?;
            ctx.policy_pcr(trial, Digest::default(), pcr_selection(pcrs)?)
                .map_err(tpm_err("PolicyPCR in the trial session"))?;
            ctx.policy_get_digest(trial)
                .map_err(tpm_err("read the trial policy digest"))
        },
    )
}

/// Refuses PCRs missing from the TPM's SHA-256 bank: PolicyPCR over an unallocated bank hashes
/// nothing, so the slot would be bound to no PCR at all while claiming otherwise.
fn check_sha256_bank(ctx: &mut Context, pcrs: &[u32]) -> Result<(), TpmError> {
    let step = "read the TPM's allocated PCR banks";
    let (data, _) = ctx
        .get_capability(CapabilityType::AssignedPcr, 0, 1)
        .map_err(tpm_err(step))?;
    let CapabilityData::AssignedPcr(banks) = data else {
        return Err(TpmError::Tpm {
            step,
            source: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        });
    };
    let allocated: Vec<PcrSlot> = banks
        .get_selections()
        .iter()
        .filter(|s| s.hashing_algorithm() == HashingAlgorithm::Sha256)
        .flat_map(|s| s.selected())
        .collect();
    let mut missing = Vec::new();
    for &pcr in pcrs {
        if !allocated.contains(&pcr_slot(pcr)?) {
            missing.push(pcr);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TpmError::PcrBankMissing { pcrs: missing })
    }
}

/// The SHA-256 selection of `pcrs` (validated indices 0..=23).
fn pcr_selection(pcrs: &[u32]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|&p| pcr_slot(p))
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tpm_err("build the PCR selection"))
}

fn pcr_slot(pcr: u32) -> Result<PcrSlot, TpmError> {
    // tss-esapi's PcrSlot values are the selection bitmask, 1 << index.
    1u32.checked_shl(pcr)
        .ok_or(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::InvalidParam,
        ))
        .and_then(PcrSlot::try_from)
        .map_err(tpm_err("select a PCR"))
}

fn session_handle(session: AuthSession) -> ObjectHandle {
    SessionHandle::from(session).into()
}

fn tpm_err(step: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Tpm { step, source }
}
