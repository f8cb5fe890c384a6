#![no_main]
//! libFuzzer entry for the `queue_entry` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::storage::queue_entry(data));
