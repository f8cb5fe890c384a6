#![no_main]
//! libFuzzer entry for the `record_batch` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::records::record_batch(data));
