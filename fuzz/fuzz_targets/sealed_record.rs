#![no_main]
//! `lockbox_fuzz::sealed_record` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::sealed_record(data));
