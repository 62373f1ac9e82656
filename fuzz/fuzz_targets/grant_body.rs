#![no_main]
//! `lockbox_fuzz::grant_body` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::grant_body(data));
