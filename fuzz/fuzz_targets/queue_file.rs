#![no_main]
//! libFuzzer entry for the `queue_file` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::storage::queue_file(data));
