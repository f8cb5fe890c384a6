#![no_main]
//! libFuzzer entry for the `request_frames` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("request_frames").expect("a target of that name");
    (target.run)(data);
});
