//! At most one log line per window for an event that can repeat thousands of
//! times a second (connections refused at `kafka.connections_max`, accepts
//! failing for want of file descriptors).
//!
//! The first event after a quiet window is logged at once; later ones are
//! counted, and the next line (the next event after the window, or a
//! periodic [`LogThrottle::flush`]) carries the count since the previous
//! line, so a burst costs one line at its start and one with its total.
//! Shared by every shard: lock-free, a compare-and-swap elects the thread
//! that logs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `last_line_ms` before any line was logged.
const NEVER_MS: u64 = u64::MAX;

pub struct LogThrottle {
    window_ms: u64,
    /// When the last line was logged, in [`monotonic_ms`].
    last_line_ms: AtomicU64,
    /// Events since the last line.
    unreported: AtomicU64,
}

impl LogThrottle {
    pub const fn new(window: Duration) -> LogThrottle {
        LogThrottle {
            window_ms: window.as_millis() as u64,
            last_line_ms: AtomicU64::new(NEVER_MS),
            unreported: AtomicU64::new(0),
        }
    }

    /// Count one event at `now_ms`. Returns the number of events to report
    /// (this one included) when a line is due now, else `None`.
    pub fn record(&self, now_ms: u64) -> Option<u64> {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        self.take_if_due(now_ms)
    }

    /// The events not yet reported, when there are some and the window
    /// since the last line has passed: the closing line of a burst.
    pub fn flush(&self, now_ms: u64) -> Option<u64> {
        if self.unreported.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.take_if_due(now_ms)
    }

    fn take_if_due(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_line_ms.load(Ordering::Relaxed);
        if last != NEVER_MS && now_ms.saturating_sub(last) < self.window_ms {
            return None;
        }
        self.last_line_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        match self.unreported.swap(0, Ordering::Relaxed) {
            0 => None,
            count => Some(count),
        }
    }
}

/// Milliseconds on a monotonic clock that starts near the first call.
pub fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn the_first_event_logs_at_once_and_a_burst_is_counted_into_the_next_line() {
        let throttle = LogThrottle::new(WINDOW);
        assert_eq!(throttle.record(5), Some(1));
        for now_ms in 6..1000 {
            assert_eq!(throttle.record(now_ms), None);
        }
        assert_eq!(throttle.flush(9_000), None, "inside the window");
        assert_eq!(throttle.flush(10_005), Some(994));
        assert_eq!(throttle.flush(30_000), None, "nothing left to report");
    }

    #[test]
    fn a_steady_stream_logs_once_per_window_with_its_count() {
        let throttle = LogThrottle::new(WINDOW);
        let lines: Vec<(u64, u64)> = (0..50_000u64)
            .filter_map(|now_ms| throttle.record(now_ms).map(|count| (now_ms, count)))
            .collect();
        assert_eq!(
            lines,
            [
                (0, 1),
                (10_000, 10_000),
                (20_000, 10_000),
                (30_000, 10_000),
                (40_000, 10_000)
            ]
        );
    }

    #[test]
    fn a_new_burst_after_a_quiet_window_logs_at_once() {
        let throttle = LogThrottle::new(WINDOW);
        assert_eq!(throttle.record(0), Some(1));
        assert_eq!(throttle.record(60_000), Some(1));
    }
}
