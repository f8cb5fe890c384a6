//! The broker-wide budget for bytes of requests being read and served
//! (`kafka.queued_requests_max_bytes`, Kafka's `queued.max.request.bytes`).
//!
//! A frame takes its whole declared size from the budget once its 4-byte
//! size is read and before any of its body is read ([`super::frame`]); the
//! [`Lease`] goes back when the request's task ends (answered, or dropped
//! with its connection). When the budget cannot cover a frame, that
//! connection stops reading until enough comes back, and TCP flow control
//! pushes back on its client. So however many connections declare large
//! frames, the memory they can make the broker hold is bounded by the
//! budget, not by the sizes they declare.
//!
//! Invariants: `used_bytes <= capacity_bytes`; a frame is taken whole or not
//! at all, so connections holding part of what they need cannot wait on
//! each other; every waiter that fits is granted as soon as bytes come back
//! (first fit, in arrival order, like Kafka's memory pool), so a small
//! request is not held up behind a large one that does not fit yet. The
//! budget is shared by all shards: its state sits behind a mutex, taken
//! twice per request, and waiters are woken across threads.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Bytes of the budget, shared by every connection of the broker.
pub struct RequestBudget {
    capacity_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    used_bytes: u64,
    next_id: u64,
    /// Frames waiting for bytes, in arrival order. A granted waiter stays
    /// until its future is polled (or dropped, which gives the bytes back).
    waiters: Vec<Waiter>,
}

struct Waiter {
    id: u64,
    bytes: u64,
    waker: Waker,
    granted: bool,
}

impl RequestBudget {
    pub fn new(capacity_bytes: u64) -> RequestBudget {
        assert!(capacity_bytes > 0, "an empty request budget admits nothing");
        RequestBudget {
            capacity_bytes,
            state: Mutex::default(),
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes taken by frames being read or served.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    /// Frames (one per connection at most) waiting for bytes.
    pub fn waiting(&self) -> usize {
        self.lock()
            .waiters
            .iter()
            .filter(|waiter| !waiter.granted)
            .count()
    }

    /// Take `bytes` from the budget, waiting until they are free.
    /// `bytes` is at most the capacity (config validation keeps
    /// `kafka.request_max_bytes` within it); a larger request could never
    /// be granted.
    pub fn acquire(self: &Arc<Self>, bytes: u64) -> Acquire {
        assert!(
            bytes <= self.capacity_bytes,
            "a frame of {bytes} bytes exceeds the request budget of {} bytes; \
             config validation keeps kafka.request_max_bytes within it",
            self.capacity_bytes
        );
        Acquire {
            budget: Arc::clone(self),
            bytes,
            waiting_as: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (every change is one
        // statement), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Give `bytes` back and wake every waiter that now fits.
    fn release(&self, bytes: u64) {
        let wake = {
            let mut state = self.lock();
            assert!(state.used_bytes >= bytes, "released more than was taken");
            state.used_bytes -= bytes;
            self.grant_waiters(&mut state)
        };
        for waker in wake {
            waker.wake();
        }
    }

    /// Grant, first fit in arrival order, every waiter the free bytes cover;
    /// returns their wakers (woken once the lock is released).
    fn grant_waiters(&self, state: &mut State) -> Vec<Waker> {
        let mut wake = Vec::new();
        let mut used = state.used_bytes;
        for waiter in state.waiters.iter_mut().filter(|waiter| !waiter.granted) {
            if used + waiter.bytes <= self.capacity_bytes {
                used += waiter.bytes;
                waiter.granted = true;
                wake.push(waiter.waker.clone());
            }
        }
        state.used_bytes = used;
        wake
    }
}

/// Resolves to a [`Lease`] once the budget covers the frame. Dropping it
/// before then leaves the queue (giving back bytes granted meanwhile).
pub struct Acquire {
    budget: Arc<RequestBudget>,
    bytes: u64,
    waiting_as: Option<u64>,
}

impl Future for Acquire {
    type Output = Lease;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Lease> {
        let this = &mut *self;
        let mut state = this.budget.lock();
        let Some(id) = this.waiting_as else {
            if state.used_bytes + this.bytes <= this.budget.capacity_bytes {
                state.used_bytes += this.bytes;
                drop(state);
                return Poll::Ready(this.lease());
            }
            let id = state.next_id;
            state.next_id += 1;
            state.waiters.push(Waiter {
                id,
                bytes: this.bytes,
                waker: cx.waker().clone(),
                granted: false,
            });
            this.waiting_as = Some(id);
            return Poll::Pending;
        };
        let index = state
            .waiters
            .iter()
            .position(|waiter| waiter.id == id)
            .expect("a waiter stays queued until its future takes the grant or is dropped");
        if state.waiters[index].granted {
            state.waiters.remove(index);
            drop(state);
            this.waiting_as = None;
            return Poll::Ready(this.lease());
        }
        if !state.waiters[index].waker.will_wake(cx.waker()) {
            state.waiters[index].waker = cx.waker().clone();
        }
        Poll::Pending
    }
}

impl Acquire {
    fn lease(&self) -> Lease {
        Lease {
            budget: Arc::clone(&self.budget),
            bytes: self.bytes,
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(id) = self.waiting_as.take() else {
            return;
        };
        let granted = {
            let mut state = self.budget.lock();
            let Some(index) = state.waiters.iter().position(|waiter| waiter.id == id) else {
                return;
            };
            state.waiters.remove(index).granted
        };
        if granted {
            self.budget.release(self.bytes);
        }
    }
}

/// Bytes taken from the budget for one frame; given back when dropped.
pub struct Lease {
    budget: Arc<RequestBudget>,
    bytes: u64,
}

impl Lease {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn context() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        (counter, waker)
    }

    #[test]
    fn frames_wait_until_bytes_come_back_and_small_ones_fit_past_large_ones() {
        let budget = Arc::new(RequestBudget::new(100));
        let (woken, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let first = match pin!(budget.acquire(60)).poll(&mut cx) {
            Poll::Ready(lease) => lease,
            Poll::Pending => panic!("a frame that fits is granted at once"),
        };
        let mut large = pin!(budget.acquire(50));
        assert!(large.as_mut().poll(&mut cx).is_pending(), "60 + 50 > 100");
        assert_eq!(budget.waiting(), 1);
        let small = match pin!(budget.acquire(40)).poll(&mut cx) {
            Poll::Ready(lease) => lease,
            Poll::Pending => panic!("a frame that fits passes one that does not"),
        };
        assert_eq!(budget.used_bytes(), 100);
        drop(first);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the waiter is woken");
        let Poll::Ready(large) = large.as_mut().poll(&mut cx) else {
            panic!("granted once 60 bytes came back");
        };
        assert_eq!(budget.used_bytes(), 90);
        assert_eq!(budget.waiting(), 0);
        drop((large, small));
        assert_eq!(budget.used_bytes(), 0);
    }

    #[test]
    fn a_dropped_waiter_leaves_the_queue_and_returns_a_grant_it_never_took() {
        let budget = Arc::new(RequestBudget::new(10));
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(holder) = pin!(budget.acquire(10)).poll(&mut cx) else {
            panic!("fits");
        };
        {
            let mut abandoned = pin!(budget.acquire(5));
            assert!(abandoned.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(budget.waiting(), 0, "dropping a waiter dequeues it");
        {
            let mut granted_but_dropped = pin!(budget.acquire(5));
            assert!(granted_but_dropped.as_mut().poll(&mut cx).is_pending());
            drop(holder);
            assert_eq!(budget.used_bytes(), 5, "granted on release");
        }
        assert_eq!(budget.used_bytes(), 0, "the untaken grant came back");
    }
}
