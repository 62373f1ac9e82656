#![no_main]
//! `lockbox_fuzz::keyring` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::keyring(data));
