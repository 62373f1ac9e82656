#![no_main]
//! `lockbox_fuzz::vouch` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::vouch(data));
