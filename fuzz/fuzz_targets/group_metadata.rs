#![no_main]
//! libFuzzer entry for the `group_metadata` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::records::group_metadata(data));
