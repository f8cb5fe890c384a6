#![no_main]
//! libFuzzer entry for the `partition_meta` target (src/fuzzing/).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = sluice::fuzzing::target("partition_meta").expect("a target of that name");
    (target.run)(data);
});
