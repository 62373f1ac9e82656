#![no_main]
//! `lockbox_fuzz::key_record` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::key_record(data));
