#![no_main]
//! libFuzzer entry for the `log_frame` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("log_frame").expect("a target of that name");
    (target.run)(data);
});
