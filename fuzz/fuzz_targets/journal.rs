#![no_main]
//! `lockbox_fuzz::journal` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::journal(data));
