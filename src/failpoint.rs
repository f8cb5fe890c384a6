//! Failpoints for tests that must stop the broker at an exact step (for
//! example between a transaction's decision and its markers, to kill it
//! there). Debug builds only: `SLUICE_FAILPOINT=<name>` (read once) turns
//! the named point on; release builds compile every point to `false`.

/// Whether the failpoint `name` is on.
#[cfg(debug_assertions)]
pub fn active(name: &str) -> bool {
    static ACTIVE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ACTIVE
        .get_or_init(|| std::env::var("SLUICE_FAILPOINT").ok())
        .as_deref()
        == Some(name)
}

/// Whether the failpoint `name` is on: never, in release builds.
#[cfg(not(debug_assertions))]
pub fn active(_name: &str) -> bool {
    false
}

/// Debug builds with `SLUICE_TEST_CLOCK_FILE` set: milliseconds added to
/// the clock of delayed delivery (a decimal number in that file, read
/// again at most every 10 ms; none or unreadable: 0), so that a test moves
/// a record's due time days ahead without waiting (issue 18). 0 in release
/// builds.
#[cfg(debug_assertions)]
pub fn clock_offset_ms() -> i64 {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static PATH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    static LAST: Mutex<Option<(Instant, i64)>> = Mutex::new(None);
    let Some(path) =
        PATH.get_or_init(|| std::env::var_os("SLUICE_TEST_CLOCK_FILE").map(Into::into))
    else {
        return 0;
    };
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((read, offset)) = *last
        && read.elapsed() < Duration::from_millis(10)
    {
        return offset;
    }
    let offset = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    *last = Some((Instant::now(), offset));
    offset
}

/// 0 in release builds.
#[cfg(not(debug_assertions))]
pub fn clock_offset_ms() -> i64 {
    0
}

/// The file in a commit log's segment directory where
/// [`journal_durable_end`] keeps the log's durable end.
pub const DURABLE_JOURNAL: &str = "durable-end.test";

/// Debug builds with `SLUICE_DURABLE_JOURNAL` set: write `end` (the log
/// position up to which every byte is fsynced; 8 bytes, little-endian)
/// to [`DURABLE_JOURNAL`] in the segment directory `dir`, before anything
/// that waits for it is released. A test that kills the process can then
/// drop exactly what the disk did not yet hold (a power cut of that node,
/// tests/integration/cluster.rs). Nothing in release builds, or without
/// the variable.
#[cfg(debug_assertions)]
pub fn journal_durable_end(dir: &std::path::Path, end: u64) {
    use std::os::unix::fs::FileExt;
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("SLUICE_DURABLE_JOURNAL").is_some()) {
        return;
    }
    // In place, never truncated: a kill between two writes leaves the
    // previous value whole.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(DURABLE_JOURNAL))
        .and_then(|file| file.write_all_at(&end.to_le_bytes(), 0));
    if let Err(error) = written {
        tracing::warn!(%error, dir = %dir.display(), "cannot write the durable-end journal");
    }
}

/// Nothing in release builds.
#[cfg(not(debug_assertions))]
pub fn journal_durable_end(_dir: &std::path::Path, _end: u64) {}
