#![no_main]
//! `lockbox_fuzz::spiffe` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::spiffe(data));
