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
