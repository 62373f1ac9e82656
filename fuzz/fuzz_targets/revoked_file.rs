#![no_main]
//! `lockbox_fuzz::revoked_file` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::revoked_file(data));
