#![no_main]
//! libFuzzer entry for the `partition_meta` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::storage::partition_meta(data));
