//! Fuzz targets: every decoder of bytes Sluice did not write itself (a
//! client's request) or cannot trust (a file after a crash or disk damage),
//! as a function that takes any bytes and must not panic, abort, hang or
//! allocate far beyond its input (issue 12).
//!
//! Each target also asserts what it can of the decoder's meaning, not just
//! its survival: a value that decodes re-encodes to the same bytes (or to
//! bytes that decode to the same value), a batch that validates has the
//! header fields its bytes say, the frame reader splits a byte stream
//! exactly as a simple model of the framing does. A failed assertion is a
//! finding like a crash.
//!
//! The targets are run three ways (see `fuzz/README.md`):
//! * by libFuzzer, through `cargo fuzz` (the `fuzz/` crate, one binary per
//!   target, seeded from [`Target::seeds`]);
//! * by `cargo test` on stable (`tests/fuzz_targets.rs`): the seeds, the
//!   regression inputs in `fuzz/regressions/`, and mutations from
//!   [`mutate`] for a few seconds per target, under an allocator that
//!   fails the test on any allocation over [`Target::allocation_max_bytes`];
//! * the network fuzzer ([`network`]) sends mutated [`samples`] to the real
//!   binary instead.
//!
//! Inputs that only shape a target (a flag byte that asks for the CRC to be
//! fixed, or where to split a stream) come first, so a mutated checksum
//! does not hide everything behind it from the fuzzer.

pub mod kafka;
pub mod mutate;
pub mod network;
pub mod records;
pub mod samples;
pub mod storage;

/// A fuzz target and what the harnesses need to run it.
#[derive(Clone, Copy)]
pub struct Target {
    /// The name of its `fuzz/fuzz_targets/<name>.rs` binary.
    pub name: &'static str,
    /// Runs one input; panics only on a finding.
    pub run: fn(&[u8]),
    /// Valid inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// The largest single allocation a run on `input_bytes` may make.
    pub allocation_max_bytes: fn(input_bytes: usize) -> usize,
    /// Inputs longer than this are not worth trying (the harnesses cap
    /// mutations here).
    pub input_max_bytes: usize,
}

/// The bound every decoder is held to: a generous multiple of its input,
/// so that decoding may copy and box what it read, but nothing near what a
/// forged count would ask for (the rule of `tests/decode_allocations.rs`).
pub fn proportional_allocation_max_bytes(input_bytes: usize) -> usize {
    64 * input_bytes + 64 * 1024
}

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    kafka::REQUEST_FRAMES,
    kafka::KAFKA_REQUEST,
    records::RECORD_BATCH,
    records::OFFSET_RECORD,
    records::INTERNAL_RECORD,
    records::OFFSETS_BATCH,
    records::GROUP_METADATA,
    storage::LOG_FRAME,
    storage::SEGMENT_SCAN,
    storage::CHECKPOINT,
    storage::PARTITION_META,
    storage::QUEUE_ENTRY,
    storage::QUEUE_FILE,
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}

/// Store the CRC32C of `covered` little-endian at `at` (Sluice's own file
/// formats), so a mutated input gets past its checksum to the fields after.
fn fix_crc_le(bytes: &mut [u8], covered: std::ops::Range<usize>, at: usize) {
    let crc = crc32c::crc32c(&bytes[covered]);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_unique_name_and_seeds_that_run() {
        for (index, target) in TARGETS.iter().enumerate() {
            assert!(
                TARGETS[..index]
                    .iter()
                    .all(|other| other.name != target.name),
                "{} twice",
                target.name
            );
            let seeds = (target.seeds)();
            assert!(!seeds.is_empty(), "{} has no seeds", target.name);
            for seed in seeds {
                assert!(seed.len() <= target.input_max_bytes, "{}", target.name);
                (target.run)(&seed);
            }
        }
    }
}
