#![no_main]
//! `lockbox_fuzz::backup` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::backup(data));
