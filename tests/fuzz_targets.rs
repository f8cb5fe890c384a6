//! The fuzz targets (`src/fuzzing/`) on stable, bounded in time, on every
//! `cargo test` (issue 12). Each target gets its seeds, every regression
//! input in `fuzz/regressions/<target>/` (inputs that once found a bug),
//! then inputs mutated from those by a seeded mutator until its time is up.
//!
//! A target fails its test by panicking (a crash or a broken property) or
//! by asking the allocator for more than it may at once: this binary
//! installs a counting global allocator, like `tests/decode_allocations.rs`
//! and for the same reason it is a binary of its own. The failing input is
//! saved under `target/fuzz-failures/` and its path printed; `cargo fuzz
//! run <target> <file>` or this test replays it.
//!
//! Environment: `SLUICE_FUZZ_SECONDS` (per target, default 2),
//! `SLUICE_FUZZ_SEED` (default 0: the same inputs every run).
//! `cargo test --test fuzz_targets -- --ignored write_seed_corpora` writes
//! the seeds to `fuzz/seeds/<target>/` for `cargo fuzz`.

#[path = "common/counting_allocator.rs"]
mod counting_allocator;

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use counting_allocator::Counting;
use sluice::fuzzing::mutate::{Rng, mutate};
use sluice::fuzzing::{TARGETS, Target};

/// Per target, unless `SLUICE_FUZZ_SECONDS` says otherwise.
const SECONDS_DEFAULT: f64 = 2.0;
/// Mutated inputs per target at most (a fast machine stops here).
const MUTATIONS_MAX: usize = 200_000;
/// Recent mutants kept to mutate further, so inputs go more than a few
/// mutations deep.
const POOL_MAX: usize = 256;

thread_local! {
    /// Largest allocation allowed now on this thread; 0 when not measuring.
    static LIMIT_BYTES: Cell<usize> = const { Cell::new(0) };
    /// Largest allocation seen since the thread was armed.
    static LARGEST_BYTES: Cell<usize> = const { Cell::new(0) };
    /// The target running on this thread, for the abort message.
    static TARGET: Cell<&'static str> = const { Cell::new("") };
}

/// The allocator hook: remember the largest allocation on an armed thread,
/// and report one past the limit. Must not allocate.
fn note_allocation(size: usize) {
    let limit = LIMIT_BYTES.try_with(Cell::get).unwrap_or(0);
    if limit == 0 {
        return;
    }
    let _ = LARGEST_BYTES.try_with(|largest| largest.set(largest.get().max(size)));
    if size > limit {
        let _ = LIMIT_BYTES.try_with(|cell| cell.set(0));
        report_oversized(size, limit, TARGET.try_with(Cell::get).unwrap_or("?"));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting {
    note: note_allocation,
};

/// Name the target behind an oversized allocation without allocating (the
/// allocation may be about to abort the process).
fn report_oversized(size: usize, limit: usize, target: &str) {
    use std::io::Write;
    let mut line = [0u8; 200];
    let mut cursor = &mut line[..];
    let _ = writeln!(
        cursor,
        "oversized allocation: {size} bytes (limit {limit}) in fuzz target {target}"
    );
    let written = 200 - cursor.len();
    // SAFETY: `line[..written]` is initialised memory; fd 2 is stderr.
    unsafe { libc::write(2, line.as_ptr().cast(), written) };
}

/// Why one input failed.
enum Failure {
    Panicked(String),
    Oversized { largest: usize, limit: usize },
}

/// Run `input` through `target`, armed; the failure if there was one.
fn run_one(target: &Target, input: &[u8]) -> Option<Failure> {
    let limit = (target.allocation_max_bytes)(input.len());
    LARGEST_BYTES.with(|largest| largest.set(0));
    LIMIT_BYTES.with(|cell| cell.set(limit));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    LIMIT_BYTES.with(|cell| cell.set(0));
    let largest = LARGEST_BYTES.with(Cell::get);
    match outcome {
        Err(payload) => Some(Failure::Panicked(panic_message(payload.as_ref()))),
        Ok(()) if largest > limit => Some(Failure::Oversized { largest, limit }),
        Ok(()) => None,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| {
            payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
        })
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The checked-in inputs that once failed `name`, sorted by file name.
fn regressions(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = repository().join("fuzz/regressions").join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a regression directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("a regression input reads");
            (path, bytes)
        })
        .collect()
}

/// Save a failing input where the report can point at it.
fn save_failure(name: &str, input: &[u8]) -> PathBuf {
    let dir = repository().join("target/fuzz-failures");
    std::fs::create_dir_all(&dir).expect("create target/fuzz-failures");
    let path = dir.join(format!("{name}-{:08x}", crc32c::crc32c(input)));
    std::fs::write(&path, input).expect("save the failing input");
    path
}

fn fail(name: &str, origin: &str, input: &[u8], failure: Failure) -> ! {
    let saved = save_failure(name, input);
    let preview: String = input
        .iter()
        .take(64)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let what = match failure {
        Failure::Panicked(message) => format!("panicked: {message}"),
        Failure::Oversized { largest, limit } => {
            format!("allocated {largest} bytes at once (limit {limit})")
        }
    };
    panic!(
        "fuzz target {name} failed on {origin} ({} bytes, {preview}…): {what}\n\
         input saved to {}; replay: cargo fuzz run {name} {}",
        input.len(),
        saved.display(),
        saved.display()
    );
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|text| text.parse().ok())
}

/// Seeds, regressions, then mutations until the target's time is up.
fn fuzz(name: &'static str) {
    let target = TARGETS
        .iter()
        .find(|target| target.name == name)
        .expect("a target of that name");
    TARGET.with(|cell| cell.set(name));
    let seeds = (target.seeds)();
    for (index, seed) in seeds.iter().enumerate() {
        if let Some(failure) = run_one(target, seed) {
            fail(name, &format!("seed {index}"), seed, failure);
        }
    }
    let regressions = regressions(name);
    for (path, input) in &regressions {
        if let Some(failure) = run_one(target, input) {
            fail(name, &path.display().to_string(), input, failure);
        }
    }
    let seconds = env_number::<f64>("SLUICE_FUZZ_SECONDS").unwrap_or(SECONDS_DEFAULT);
    let seed = env_number::<u64>("SLUICE_FUZZ_SEED").unwrap_or(0)
        ^ u64::from(crc32c::crc32c(name.as_bytes()));
    let mut rng = Rng::new(seed);
    let mut donors: Vec<Vec<u8>> = seeds;
    donors.extend(regressions.into_iter().map(|(_, input)| input));
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut count = 0;
    while count < MUTATIONS_MAX && Instant::now() < deadline {
        let parent = if !pool.is_empty() && rng.one_in(2) {
            &pool[rng.below(pool.len())]
        } else {
            &donors[rng.below(donors.len())]
        };
        let input = mutate(&mut rng, parent, &donors, target.input_max_bytes);
        if let Some(failure) = run_one(target, &input) {
            fail(
                name,
                &format!("mutation {count} (seed {seed})"),
                &input,
                failure,
            );
        }
        if pool.len() < POOL_MAX {
            pool.push(input);
        } else {
            let slot = rng.below(POOL_MAX);
            pool[slot] = input;
        }
        count += 1;
    }
    eprintln!(
        "fuzz target {name}: {} seeds and regressions, {count} mutations in {:.1} s",
        donors.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(count > 0, "no time to run a single mutation");
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                fuzz(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_test_here() {
            let tested = [$(stringify!($name)),*];
            for target in TARGETS {
                assert!(tested.contains(&target.name), "{} has no test", target.name);
            }
        }
    };
}

targets!(
    request_frames,
    kafka_request,
    record_batch,
    offset_record,
    internal_record,
    offsets_batch,
    group_metadata,
    log_frame,
    segment_scan,
    checkpoint,
    partition_meta,
    queue_entry,
    queue_file,
);

/// Write every target's seeds to `fuzz/seeds/<target>/` for `cargo fuzz`.
#[test]
#[ignore = "writes files for cargo fuzz; run by hand (fuzz/README.md)"]
fn write_seed_corpora() {
    for target in TARGETS {
        let dir = repository().join("fuzz/seeds").join(target.name);
        std::fs::create_dir_all(&dir).expect("create the seed directory");
        for (index, seed) in (target.seeds)().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{index:03}")), seed).expect("write a seed");
        }
    }
    assert!(Path::new(&repository().join("fuzz/seeds")).is_dir());
}
