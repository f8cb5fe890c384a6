#![no_main]
//! libFuzzer entry for the `checkpoint` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::storage::checkpoint(data));
