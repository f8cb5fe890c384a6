#![no_main]
//! libFuzzer entry for the `segment_scan` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::storage::segment_scan(data));
