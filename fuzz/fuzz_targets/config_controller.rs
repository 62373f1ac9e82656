#![no_main]
//! `lockbox_fuzz::config_controller` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockbox_fuzz::config_controller(data));
