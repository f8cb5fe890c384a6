#![no_main]
//! libFuzzer entry for the `internal_record` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::records::internal_record(data));
