#![no_main]
//! `lockbox_fuzz::batch` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::batch(data));
