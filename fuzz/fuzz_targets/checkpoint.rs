#![no_main]
//! libFuzzer entry for the `checkpoint` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("checkpoint").expect("a target of that name");
    (target.run)(data);
});
