#![no_main]
//! libFuzzer entry for the `offsets_batch` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::records::offsets_batch(data));
