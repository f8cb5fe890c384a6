//! The time a request keeps shard threads busy, for the
//! `request_percentage` quota (KIP-124, `broker/quota.rs`).
//!
//! A handler is a future: it runs only while polled, and waits (for the
//! disk, a long poll, the controller) between polls. The clock adds up the
//! time spent inside its polls, which is the thread time Kafka counts for a
//! request on its I/O threads. Work the handler sends to another shard
//! (`mailbox.rs`, `call`) is timed there the same way and charged back to
//! the clock whose poll receives its result, so a request costs what it
//! costs on every shard.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

thread_local! {
    /// Where time charged now goes: the remote time of the clock being
    /// polled on this thread, if any.
    static CHARGED: RefCell<Option<Rc<Cell<Duration>>>> = const { RefCell::new(None) };
}

/// Add `time`, spent for the request being polled on this thread on
/// another shard, to its clock (nothing when no clock is being polled).
pub fn charge(time: Duration) {
    CHARGED.with(|charged| {
        if let Some(remote) = charged.borrow().as_ref() {
            remote.set(remote.get() + time);
        }
    });
}

/// Thread time of one request, read in pieces as it is counted.
#[derive(Debug, Default)]
pub struct RequestClock {
    /// Time inside finished polls.
    busy: Cell<Duration>,
    /// When the poll now running began.
    polling_since: Cell<Option<Instant>>,
    /// Time charged by other shards for work done for this request.
    remote: Rc<Cell<Duration>>,
    /// How much of the time has been handed out by
    /// [`Self::take_uncounted_micros`].
    counted: Cell<Duration>,
}

impl RequestClock {
    /// Run `handler`, timing each of its polls.
    pub async fn time<F: Future>(&self, mut handler: Pin<&mut F>) -> F::Output {
        poll_fn(|context| {
            let outer = CHARGED.with(|charged| charged.replace(Some(Rc::clone(&self.remote))));
            self.polling_since.set(Some(Instant::now()));
            let poll = handler.as_mut().poll(context);
            if let Some(since) = self.polling_since.take() {
                self.busy.set(self.busy.get() + since.elapsed());
            }
            CHARGED.with(|charged| *charged.borrow_mut() = outer);
            poll
        })
        .await
    }

    /// All the thread time so far, on this shard and charged by others,
    /// the poll now running included.
    pub fn total(&self) -> Duration {
        let running = self
            .polling_since
            .get()
            .map_or(Duration::ZERO, |since| since.elapsed());
        self.busy.get() + running + self.remote.get()
    }

    /// The whole microseconds of thread time since the last call (or since
    /// the start), the poll now running included; what is left of a
    /// microsecond carries over to the next call.
    pub fn take_uncounted_micros(&self) -> u64 {
        let uncounted = self.total().saturating_sub(self.counted.get());
        let micros = u64::try_from(uncounted.as_micros()).unwrap_or(u64::MAX);
        self.counted
            .set(self.counted.get() + Duration::from_micros(micros));
        micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;

    #[test]
    fn only_time_inside_polls_counts() {
        let clock = RequestClock::default();
        let handler = pin!(async {
            std::thread::sleep(Duration::from_millis(20));
            let first = clock.take_uncounted_micros();
            // A wait between polls: the thread is free.
            compio::time::sleep(Duration::from_millis(100)).await;
            std::thread::sleep(Duration::from_millis(20));
            (first, clock.take_uncounted_micros())
        });
        let runtime = compio::runtime::Runtime::new().expect("runtime");
        let (first, second) = runtime.block_on(clock.time(handler));
        assert!(first >= 20_000, "{first}");
        assert!(second >= 20_000, "{second}");
        assert!(second < 100_000, "{second}");
        // Everything was handed out; the last poll's end adds only a little,
        // and the total is what was handed out and what is left.
        let rest = clock.take_uncounted_micros();
        assert!(rest < 20_000, "{rest}");
        let total = clock.total().as_micros();
        assert!(
            total.abs_diff(u128::from(first + second + rest)) <= 1,
            "{total}"
        );
    }

    #[test]
    fn time_charged_goes_to_the_clock_being_polled_only() {
        let clock = RequestClock::default();
        // Outside any poll: lost.
        charge(Duration::from_secs(5));
        let handler = pin!(async {
            charge(Duration::from_secs(1));
            // A clock polled inside takes what is charged meanwhile, and
            // the outer one gets it back afterwards.
            let inner = RequestClock::default();
            inner
                .time(pin!(async { charge(Duration::from_secs(2)) }))
                .await;
            charge(Duration::from_secs(4));
            inner.total()
        });
        let runtime = compio::runtime::Runtime::new().expect("runtime");
        let inner = runtime.block_on(clock.time(handler));
        assert!(inner >= Duration::from_secs(2) && inner < Duration::from_secs(3));
        let outer = clock.total();
        assert!(outer >= Duration::from_secs(5) && outer < Duration::from_secs(6));
    }
}
