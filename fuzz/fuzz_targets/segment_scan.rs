#![no_main]
//! libFuzzer entry for the `segment_scan` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("segment_scan").expect("a target of that name");
    (target.run)(data);
});
