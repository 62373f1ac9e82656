#![no_main]
//! `lockbox_fuzz::audit_entry` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::audit_entry(data));
