#![no_main]
//! libFuzzer entry for the `offset_record` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::records::offset_record(data));
