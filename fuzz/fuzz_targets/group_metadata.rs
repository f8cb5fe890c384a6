#![no_main]
//! libFuzzer entry for the `group_metadata` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("group_metadata").expect("a target of that name");
    (target.run)(data);
});
