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
