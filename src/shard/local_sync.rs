//! Shard-local (single-threaded) wake-up primitives.
//!
//! Everything on a shard runs on one thread, so these need no atomics: a
//! [`Notify`] wakes one long-lived task (the flusher) and remembers a wake-up
//! that arrives while nobody waits; an [`Event`] wakes every current waiter
//! (appends blocked on buffer space, fetches parked for data); a [`FifoGate`]
//! keeps waiters for a scarce resource in arrival order so a large request is
//! not starved by a stream of small ones.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Let every other ready task on this shard run once before continuing.
/// (compio queues a self-woken task behind the tasks already ready.)
pub async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Wakes a single waiter; a notification with no waiter is kept until the next wait.
#[derive(Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Ready (and consumes the notification) if one is pending.
    pub fn poll_notified(&self, waker: &Waker) -> Poll<()> {
        if self.pending.replace(false) {
            return Poll::Ready(());
        }
        *self.waker.borrow_mut() = Some(waker.clone());
        Poll::Pending
    }

    pub async fn notified(&self) {
        poll_fn(|cx| self.poll_notified(cx.waker())).await;
    }
}

/// Wakes every task waiting at the moment of [`Event::notify_all`].
#[derive(Default)]
pub struct Event {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Event {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Resolves at the first `notify_all` after this call (the call, not the
    /// first poll: a notification in between is not missed).
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        let start = self.generation.get();
        poll_fn(move |cx| {
            if self.generation.get() != start {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    pub fn waiters(&self) -> usize {
        self.wakers.borrow().len()
    }
}

/// A first-come-first-served queue of tickets for a resource that frees up
/// over time. Holders of the front ticket go first; dropping a ticket leaves
/// the queue and lets the next one try.
#[derive(Default)]
pub struct FifoGate {
    next_ticket: Cell<u64>,
    queue: RefCell<VecDeque<u64>>,
    turn_changed: Event,
}

pub struct Ticket<'a> {
    gate: &'a FifoGate,
    number: u64,
}

impl FifoGate {
    /// True when nobody is queued: a newcomer may try the resource at once.
    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    pub fn enqueue(&self) -> Ticket<'_> {
        let number = self.next_ticket.get();
        self.next_ticket.set(number + 1);
        self.queue.borrow_mut().push_back(number);
        Ticket { gate: self, number }
    }

    /// Wake queued tasks so the front one retries (call when the resource frees).
    pub fn resource_freed(&self) {
        self.turn_changed.notify_all();
    }

    pub fn queued(&self) -> usize {
        self.queue.borrow().len()
    }
}

impl Ticket<'_> {
    pub fn is_front(&self) -> bool {
        self.gate.queue.borrow().front() == Some(&self.number)
    }

    /// Resolves at the next change: a freed resource or a departed ticket.
    pub fn changed(&self) -> impl Future<Output = ()> + '_ {
        self.gate.turn_changed.wait()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut queue = self.gate.queue.borrow_mut();
        let was_front = queue.front() == Some(&self.number);
        queue.retain(|&number| number != self.number);
        drop(queue);
        if was_front {
            self.gate.turn_changed.notify_all();
        }
    }
}
