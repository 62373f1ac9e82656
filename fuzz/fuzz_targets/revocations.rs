#![no_main]
//! `lockbox_fuzz::revocations` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::revocations(data));
