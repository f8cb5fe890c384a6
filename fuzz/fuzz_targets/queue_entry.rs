#![no_main]
//! libFuzzer entry for the `queue_entry` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("queue_entry").expect("a target of that name");
    (target.run)(data);
});
