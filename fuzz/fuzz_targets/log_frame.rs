#![no_main]
//! libFuzzer entry for the `log_frame` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::storage::log_frame(data));
