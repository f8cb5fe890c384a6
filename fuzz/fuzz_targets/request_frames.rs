#![no_main]
//! libFuzzer entry for the `request_frames` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::kafka::request_frames(data));
