#![no_main]
//! `lockbox_fuzz::receipt` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::receipt(data));
