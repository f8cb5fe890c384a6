#![no_main]
//! libFuzzer entry for the `offset_record` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("offset_record").expect("a target of that name");
    (target.run)(data);
});
