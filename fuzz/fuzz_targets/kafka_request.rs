#![no_main]
//! libFuzzer entry for the `kafka_request` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("kafka_request").expect("a target of that name");
    (target.run)(data);
});
