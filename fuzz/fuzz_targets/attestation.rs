#![no_main]
//! `lockbox_fuzz::attestation` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::attestation(data));
