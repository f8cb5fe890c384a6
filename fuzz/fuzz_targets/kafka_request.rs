#![no_main]
//! libFuzzer entry for the `kafka_request` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::kafka::kafka_request(data));
