#![no_main]
//! `lockbox_fuzz::tpm_slot` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::tpm_slot(data));
