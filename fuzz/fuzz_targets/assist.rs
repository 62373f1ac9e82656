#![no_main]
//! `lockbox_fuzz::assist` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::assist(data));
