//! Log lines that repeat under a fault (every refused append while the disk
//! is full) are written at most once per interval, with the number left out
//! since the last one, so a fault is visible without flooding the log.
//!
//! Single-threaded (`Cell`): one limiter per shard and purpose.

use std::cell::Cell;
use std::time::{Duration, Instant};

pub struct LogLimiter {
    interval: Duration,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// Run `log` with the number of lines suppressed before it, unless one
    /// ran less than the interval ago (then count this one as suppressed).
    pub fn emit(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed.set(self.suppressed.get() + 1);
            return;
        }
        self.last.set(Some(now));
        log(self.suppressed.replace(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_interval_are_counted_not_logged() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        let mut logged = Vec::new();
        for _ in 0..5 {
            limiter.emit(|suppressed| logged.push(suppressed));
        }
        assert_eq!(logged, vec![0]);
        limiter
            .last
            .set(Some(Instant::now() - Duration::from_secs(7200)));
        limiter.emit(|suppressed| logged.push(suppressed));
        assert_eq!(logged, vec![0, 4]);
    }
}
