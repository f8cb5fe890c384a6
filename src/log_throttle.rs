//! At most a few log lines per window for an event that can repeat
//! thousands of times a second (connections refused at
//! `kafka.connections_max`, accepts failing for want of file descriptors,
//! connections closed for bad input).
//!
//! The first events of a window are logged at once, up to its line budget
//! (one line unless [`LogThrottle::with_lines`] says more); later ones are
//! counted, and the next line (the next event after the window, or a
//! periodic [`LogThrottle::flush`]) carries the count since the previous
//! line, so a burst costs its first lines and one with its total. Shared by
//! every shard: lock-free; the thread that starts a window takes its first
//! line, so a window's first line is never doubled, and only a window with
//! several lines may give one more or fewer in a race at its turn.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `window_start_ms` before any line was logged.
const NEVER_MS: u64 = u64::MAX;

pub struct LogThrottle {
    window_ms: u64,
    /// Lines logged at most per window.
    lines_max: u64,
    /// When the current window began, in [`monotonic_ms`].
    window_start_ms: AtomicU64,
    /// Lines logged in the current window.
    lines: AtomicU64,
    /// Events since the last line.
    unreported: AtomicU64,
}

impl LogThrottle {
    /// One line per `window`.
    pub const fn new(window: Duration) -> LogThrottle {
        LogThrottle::with_lines(window, 1)
    }

    /// Up to `lines_max` lines per `window` (at least 1).
    pub const fn with_lines(window: Duration, lines_max: u64) -> LogThrottle {
        LogThrottle {
            window_ms: window.as_millis() as u64,
            lines_max: if lines_max == 0 { 1 } else { lines_max },
            window_start_ms: AtomicU64::new(NEVER_MS),
            // No budget before the first window: its first line is the
            // one that starts it.
            lines: AtomicU64::new(if lines_max == 0 { 1 } else { lines_max }),
            unreported: AtomicU64::new(0),
        }
    }

    /// Count one event at `now_ms`. Returns the number of events to report
    /// (this one included) when a line is due now, else `None`.
    pub fn record(&self, now_ms: u64) -> Option<u64> {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        self.take_if_due(now_ms)
    }

    /// The events not yet reported, when there are some and the window's
    /// lines are not spent (or a new window began): the closing line of a
    /// burst.
    pub fn flush(&self, now_ms: u64) -> Option<u64> {
        if self.unreported.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.take_if_due(now_ms)
    }

    fn take_if_due(&self, now_ms: u64) -> Option<u64> {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if (start == NEVER_MS || now_ms.saturating_sub(start) >= self.window_ms)
            && self
                .window_start_ms
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // The thread that starts a window takes its first line, so two
            // shards at a window's turn cannot both find its budget unspent
            // (a reset to 0 here let a second one log beside it).
            self.lines.store(1, Ordering::Relaxed);
            return match self.unreported.swap(0, Ordering::Relaxed) {
                0 => {
                    self.lines.store(0, Ordering::Relaxed);
                    None
                }
                count => Some(count),
            };
        }
        // Taken only when there is budget (no add-then-undo: an undo racing
        // a window's reset could hand the budget back twice).
        let budget = self
            .lines
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |lines| {
                (lines < self.lines_max).then_some(lines + 1)
            });
        if budget.is_err() {
            return None;
        }
        match self.unreported.swap(0, Ordering::Relaxed) {
            0 => {
                self.lines.fetch_sub(1, Ordering::Relaxed);
                None
            }
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

    /// Shards racing at the first event of a window log one line between
    /// them (a CI failure: two "Kafka accept failed" lines at once).
    #[test]
    fn racing_threads_log_one_line_per_window() {
        for _ in 0..300 {
            let throttle = std::sync::Arc::new(LogThrottle::new(WINDOW));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let lines: u64 = (0..4)
                .map(|_| {
                    let (throttle, barrier) = (throttle.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        (0..50).filter(|_| throttle.record(5).is_some()).count() as u64
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|thread| thread.join().unwrap())
                .sum();
            assert_eq!(lines, 1);
        }
    }

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
    fn a_window_with_more_lines_logs_its_first_events_each_then_counts() {
        let throttle = LogThrottle::with_lines(WINDOW, 3);
        let lines: Vec<(u64, u64)> = (0..25_000u64)
            .filter_map(|now_ms| throttle.record(now_ms).map(|count| (now_ms, count)))
            .collect();
        assert_eq!(
            lines,
            [
                (0, 1),
                (1, 1),
                (2, 1),
                (10_000, 9_998),
                (10_001, 1),
                (10_002, 1),
                (20_000, 9_998),
                (20_001, 1),
                (20_002, 1)
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
