//! Sealing and unsealing against a real TPM: `swtpm socket --tpm2`, started by each test.
//! These fail, never skip, without swtpm (`deploy/test.sh` installs it).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use lockbox_tpm::{SRK_NAME_LEN, SealedSlot, Tpm2Config, TpmError, seal, swtpm::Swtpm, unseal};

fn start(dir: &tempfile::TempDir) -> Swtpm {
    Swtpm::start(dir.path())
        .expect("swtpm must be installed and start (deploy/test.sh installs it)")
}

fn config(tpm: &Swtpm, pcrs: &[u32]) -> Tpm2Config {
    Tpm2Config {
        tcti: tpm.tcti(),
        pcrs: pcrs.to_vec(),
    }
}

fn key(fill: u8) -> [u8; 32] {
    let mut k = [fill; 32];
    k[0] = 0x01;
    k[31] = 0xfe;
    k
}

#[test]
fn seal_then_unseal_round_trips_through_the_keyring_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = start(&dir);
    let secret = key(0x33);

    let t = Instant::now();
    let slot = seal(&config(&tpm, &[]), &secret).unwrap();
    let sealed_in = t.elapsed();
    assert!(slot.pcrs().is_empty());

    // What the keyring file stores, read back.
    let stored = slot.encode();
    let slot = SealedSlot::decode(&stored).unwrap();
    assert_eq!(slot.encode(), stored);

    let t = Instant::now();
    let out = unseal(&tpm.tcti(), &slot).unwrap();
    let unsealed_in = t.elapsed();
    assert_eq!(*out, secret);
    // Unsealing leaves nothing behind in the TPM: it works again and again.
    for _ in 0..3 {
        assert_eq!(*unseal(&tpm.tcti(), &slot).unwrap(), secret);
    }
    eprintln!(
        "swtpm timings: seal {sealed_in:?}, unseal {unsealed_in:?} ({} slot bytes)",
        stored.len()
    );

    // Two seals of the same key differ (fresh TPM-generated seed and IV), both unseal.
    let again = seal(&config(&tpm, &[]), &secret).unwrap();
    assert_ne!(again.encode(), stored);
    assert_eq!(*unseal(&tpm.tcti(), &again).unwrap(), secret);
}

#[test]
fn the_same_tpm_unseals_after_a_restart() {
    // Nothing is persisted in the TPM: the primary key is re-derived from the owner seed,
    // which lives in the TPM state and survives a restart (a reboot, for a real TPM).
    let dir = tempfile::tempdir().unwrap();
    let secret = key(0x44);
    let stored = {
        let tpm = start(&dir);
        seal(&config(&tpm, &[]), &secret).unwrap().encode()
    };
    let tpm = start(&dir);
    let slot = SealedSlot::decode(&stored).unwrap();
    assert_eq!(*unseal(&tpm.tcti(), &slot).unwrap(), secret);
}

/// A slot pins the name of the storage key it was sealed under, and unseal refuses a TPM that
/// presents a key with another name before encrypting anything to it: what a device between
/// lockboxd and the TPM, answering TPM2_CreatePrimary with a key of its own, would present.
/// The test plays that device by changing the pinned name instead (same effect: the names
/// differ); without the check the right TPM would unseal it.
#[test]
fn a_storage_key_with_another_name_is_refused_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = start(&dir);
    for pcrs in [&[][..], &[7u32][..]] {
        let slot = seal(&config(&tpm, pcrs), &key(0x66)).unwrap();
        let name = slot.srk_name().unwrap().to_vec();
        assert_eq!(name.len(), SRK_NAME_LEN);
        assert_eq!(&name[..2], &[0x00, 0x0B], "a SHA-256 name");
        // A second seal on the same TPM pins the same key: it is re-derived, not random.
        let again = seal(&config(&tpm, pcrs), &key(0x67)).unwrap();
        assert_eq!(again.srk_name(), Some(&name[..]));

        let bytes = slot.encode();
        let at = 2 + pcrs.len();
        assert_eq!(&bytes[at..at + SRK_NAME_LEN], &name[..]);
        let mut other = bytes.clone();
        other[at + SRK_NAME_LEN - 1] ^= 0x01;
        let other = SealedSlot::decode(&other).unwrap();
        let err = unseal(&tpm.tcti(), &other).unwrap_err();
        assert!(matches!(err, TpmError::WrongTpm), "{err:?}");

        // A version-1 slot (enrolled before names were pinned) still unseals, unchecked.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&bytes[1..at]);
        v1.extend_from_slice(&bytes[at + SRK_NAME_LEN..]);
        let v1 = SealedSlot::decode(&v1).unwrap();
        assert_eq!(v1.srk_name(), None);
        assert_eq!(*unseal(&tpm.tcti(), &v1).unwrap(), key(0x66));
        assert_eq!(*unseal(&tpm.tcti(), &slot).unwrap(), key(0x66));
    }
}

#[test]
fn another_tpm_cannot_unseal() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (start(&dir_a), start(&dir_b));
    for pcrs in [&[][..], &[7]] {
        let slot = seal(&config(&a, pcrs), &key(0x55)).unwrap();
        let err = unseal(&b.tcti(), &slot).unwrap_err();
        assert!(matches!(err, TpmError::WrongTpm), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the TPM cannot load this sealed slot: another TPM or its owner seed changed"
        );
        // And the TPM it belongs to still unseals it.
        assert_eq!(*unseal(&a.tcti(), &slot).unwrap(), key(0x55));
    }
}

#[test]
fn a_pcr_bound_slot_fails_once_one_of_its_pcrs_changes() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = start(&dir);
    let secret = key(0x66);
    // Listed out of order on purpose: the config's order does not matter.
    let on_7 = seal(&config(&tpm, &[7]), &secret).unwrap();
    let on_16_and_0 = seal(&config(&tpm, &[16, 0]), &secret).unwrap();
    assert_eq!(on_7.pcrs(), &[7]);
    assert_eq!(on_16_and_0.pcrs(), &[0, 16]);

    assert_eq!(*unseal(&tpm.tcti(), &on_7).unwrap(), secret);
    assert_eq!(*unseal(&tpm.tcti(), &on_16_and_0).unwrap(), secret);

    // Secure-boot state changes: PCR 7 is extended.
    tpm.extend_pcr(7, [0x07; 32]).unwrap();
    let err = unseal(&tpm.tcti(), &on_7).unwrap_err();
    assert!(matches!(err, TpmError::PcrPolicy { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "PCR policy not satisfied: PCRs [7] changed since enrollment"
    );
    // A slot bound to other PCRs is unaffected ...
    assert_eq!(*unseal(&tpm.tcti(), &on_16_and_0).unwrap(), secret);
    // ... until one of its own changes.
    tpm.extend_pcr(16, [0x16; 32]).unwrap();
    let err = unseal(&tpm.tcti(), &on_16_and_0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PCR policy not satisfied: PCRs [0, 16] changed since enrollment"
    );

    // Re-enrolling against the new state works again.
    let fresh = seal(&config(&tpm, &[7]), &secret).unwrap();
    assert_eq!(*unseal(&tpm.tcti(), &fresh).unwrap(), secret);
}

#[test]
fn an_unbound_slot_ignores_pcr_changes() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = start(&dir);
    let secret = key(0x77);
    let slot = seal(&config(&tpm, &[]), &secret).unwrap();
    for pcr in [0, 7, 16] {
        tpm.extend_pcr(pcr, [0xee; 32]).unwrap();
    }
    assert_eq!(*unseal(&tpm.tcti(), &slot).unwrap(), secret);
}

#[test]
fn a_tampered_pcr_list_does_not_unseal() {
    // The PCR list is in the keyring file, outside the TPM's protection; editing it must not
    // help. Binding a PCR-bound object to other PCRs just fails the policy ...
    let dir = tempfile::tempdir().unwrap();
    let tpm = start(&dir);
    let slot = seal(&config(&tpm, &[7]), &key(0x88)).unwrap();
    let mut bytes = slot.encode();
    assert_eq!(&bytes[1..3], &[1, 7]);
    bytes[2] = 8;
    let moved = SealedSlot::decode(&bytes).unwrap();
    let err = unseal(&tpm.tcti(), &moved).unwrap_err();
    assert!(matches!(err, TpmError::PcrPolicy { .. }), "{err:?}");
    // ... and dropping the list is refused before the TPM sees it.
    let mut dropped = vec![bytes[0], 0];
    dropped.extend_from_slice(&bytes[3..]);
    assert!(matches!(
        SealedSlot::decode(&dropped),
        Err(TpmError::Decode { .. })
    ));
}

#[test]
fn bad_tcti_strings_give_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = start(&dir);
    let slot = seal(&config(&tpm, &[]), &key(0x99)).unwrap();
    drop(tpm);

    let cases: [(&str, &str); 4] = [
        ("", "invalid [unseal.tpm2] config: tcti is empty"),
        (
            "carrier-pigeon:coop=3",
            "invalid TCTI string \"carrier-pigeon:coop=3\"",
        ),
        (
            "device:/nonexistent/tpmrm0",
            "cannot open the TPM through \"device:/nonexistent/tpmrm0\": TCTI I/O error \
             (TSS response code 0xa000a)",
        ),
        (
            // The swtpm that sealed it is gone: nothing listens there any more.
            "swtpm:host=127.0.0.1,port=1",
            "cannot open the TPM through \"swtpm:host=127.0.0.1,port=1\": TCTI I/O error \
             (TSS response code 0xa000a)",
        ),
    ];
    for (tcti, expected) in cases {
        let err = unseal(tcti, &slot).unwrap_err();
        assert!(err.to_string().starts_with(expected), "{tcti:?}: {err}");
        let err = seal(
            &Tpm2Config {
                tcti: tcti.to_owned(),
                pcrs: vec![],
            },
            &key(0x99),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with(expected), "{tcti:?}: {err}");
    }
}

#[test]
fn swtpm_helper_gives_distinct_tctis_and_stops_on_drop() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (start(&d1), start(&d2));
    assert_ne!(a.tcti(), b.tcti());
    assert_eq!(a.tcti(), format!("swtpm:host=127.0.0.1,port={}", a.port()));
    assert_eq!(a.state_dir(), d1.path());
    let port = a.port();
    drop(a);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn the_slot_key_never_crosses_the_tcti_in_clear() {
    // Everything between libtss2 and the TPM goes through a relay that records it: what a
    // probe on the TPM bus of a real host would see.
    let dir = tempfile::tempdir().unwrap();
    let tpm = start(&dir);
    let relay = wire::Relay::to(tpm.port());
    let tcti = format!("swtpm:host=127.0.0.1,port={}", relay.port);
    let secret: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(151).wrapping_add(89));

    for pcrs in [&[][..], &[7]] {
        let cfg = Tpm2Config {
            tcti: tcti.clone(),
            pcrs: pcrs.to_vec(),
        };
        let slot = seal(&cfg, &secret).unwrap();
        assert_eq!(*unseal(&tcti, &slot).unwrap(), secret);
    }
    let seen = relay.seen();
    assert!(seen.len() > 1000, "the relay saw only {} bytes", seen.len());
    for half in [&secret[..16], &secret[16..]] {
        assert!(
            !seen.windows(16).any(|w| w == half),
            "slot key bytes crossed the TCTI in clear"
        );
    }
}

#[test]
fn no_transient_object_or_session_is_left_in_the_tpm() {
    // swtpm has no resource manager: whatever a call does not flush stays loaded (and three
    // leaked objects exhaust a TPM's transient slots). Check after successes and failures.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (start(&dir_a), start(&dir_b));
    let unbound = seal(&config(&a, &[]), &key(1)).unwrap();
    let bound = seal(&config(&a, &[7]), &key(2)).unwrap();
    unseal(&a.tcti(), &unbound).unwrap();
    unseal(&a.tcti(), &bound).unwrap();
    assert!(matches!(unseal(&b.tcti(), &bound), Err(TpmError::WrongTpm)));
    a.extend_pcr(7, [7; 32]).unwrap();
    assert!(matches!(
        unseal(&a.tcti(), &bound),
        Err(TpmError::PcrPolicy { .. })
    ));
    for tpm in [&b, &a] {
        let mut ctx = wire::context(&tpm.tcti());
        assert_eq!(wire::loaded_handles(&mut ctx), 0, "{}", tpm.tcti());
    }
    // The count is not vacuous: a session of our own shows up.
    let mut ctx = wire::context(&a.tcti());
    wire::start_session(&mut ctx);
    assert_eq!(wire::loaded_handles(&mut ctx), 1);
}

mod wire {
    //! Test-only access below the crate: a recording TCP relay and a handle count.

    use std::{
        io::{Read, Write},
        net::{Shutdown, TcpListener, TcpStream},
        str::FromStr,
        sync::{Arc, Mutex},
        thread,
    };

    use tss_esapi::{
        Context, TctiNameConf,
        constants::{CapabilityType, SessionType},
        interface_types::algorithm::HashingAlgorithm,
        structures::{CapabilityData, SymmetricDefinition},
    };

    pub struct Relay {
        pub port: u16,
        seen: Arc<Mutex<Vec<u8>>>,
    }

    impl Relay {
        /// Relays 127.0.0.1:P and P+1 to swtpm's server port and the control port after it.
        pub fn to(target: u16) -> Relay {
            let (server, ctrl) = loop {
                let a = TcpListener::bind("127.0.0.1:0").unwrap();
                let p = a.local_addr().unwrap().port();
                if let Ok(b) = TcpListener::bind(("127.0.0.1", p + 1)) {
                    break (a, b);
                }
            };
            let port = server.local_addr().unwrap().port();
            let seen = Arc::new(Mutex::new(Vec::new()));
            for (listener, dest) in [(server, target), (ctrl, target + 1)] {
                let seen = seen.clone();
                thread::spawn(move || {
                    for down in listener.incoming() {
                        let Ok(down) = down else { return };
                        let up = TcpStream::connect(("127.0.0.1", dest)).unwrap();
                        pump(
                            down.try_clone().unwrap(),
                            up.try_clone().unwrap(),
                            seen.clone(),
                        );
                        pump(up, down, seen.clone());
                    }
                });
            }
            Relay { port, seen }
        }

        pub fn seen(&self) -> Vec<u8> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn pump(mut from: TcpStream, mut to: TcpStream, seen: Arc<Mutex<Vec<u8>>>) {
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }

    pub fn context(tcti: &str) -> Context {
        Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap()
    }

    pub fn start_session(ctx: &mut Context) {
        ctx.start_auth_session(
            None,
            None,
            None,
            SessionType::Hmac,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .unwrap()
        .unwrap();
    }

    /// Transient objects plus loaded sessions in the TPM.
    pub fn loaded_handles(ctx: &mut Context) -> usize {
        // TPM_HT_TRANSIENT, TPM_HT_LOADED_SESSION (HMAC), TPM_HT_POLICY_SESSION.
        [0x8000_0000u32, 0x0200_0000, 0x0300_0000]
            .into_iter()
            .map(
                |first| match ctx.get_capability(CapabilityType::Handles, first, 64) {
                    Ok((CapabilityData::Handles(list), _)) => list
                        .into_inner()
                        .into_iter()
                        .filter(|h| u32::from(*h) >> 24 == first >> 24)
                        .count(),
                    other => panic!("reading handles from {first:#x}: {other:?}"),
                },
            )
            .sum()
    }
}
