#![no_main]
//! libFuzzer entry for the `queue_file` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("queue_file").expect("a target of that name");
    (target.run)(data);
});
