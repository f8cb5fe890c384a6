#![no_main]
//! libFuzzer entry for the `record_batch` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("record_batch").expect("a target of that name");
    (target.run)(data);
});
