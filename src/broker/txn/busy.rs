//! A transactional id's busy flag and the requests waiting for it.
//!
//! While a change of an id is written, or its transaction's markers, the id
//! is busy (Kafka's `pendingState`). A request that may wait joins the id's
//! queue ([`Busy::enqueue`], at most a given number); releasing the id
//! ([`Busy::release`]) hands it to the first waiter, which then holds it:
//! the id never becomes free in between, so a request arriving meanwhile
//! cannot overtake the queue. A waiter that stops waiting leaves the queue
//! ([`Busy::leave`]); forgetting the id (dropping its `Busy`) tells every
//! waiter it is gone.
//!
//! Shard-local: one thread, no locks.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::shard::local_sync::Event;

/// Where a request waiting for a busy id stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Handoff {
    Waiting,
    /// The id was released to this request: it holds the id now.
    Granted,
    /// The id was forgotten while the request waited.
    Gone,
}

/// A request queued for a busy id.
pub(super) struct Waiter {
    handoff: Cell<Handoff>,
    settled: Event,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("handoff", &self.handoff.get())
            .finish_non_exhaustive()
    }
}

impl Waiter {
    pub(super) fn handoff(&self) -> Handoff {
        self.handoff.get()
    }

    fn settle(&self, handoff: Handoff) {
        assert_eq!(
            self.handoff.get(),
            Handoff::Waiting,
            "a waiter is settled once, while it is queued"
        );
        self.handoff.set(handoff);
        self.settled.notify_all();
    }

    /// Resolves once the id is granted to this request or gone.
    pub(super) async fn settled(&self) {
        loop {
            let changed = self.settled.wait();
            if self.handoff.get() != Handoff::Waiting {
                return;
            }
            changed.await;
        }
    }
}

/// An id's busy flag and its queue of waiters (every one `Waiting`).
#[derive(Debug)]
pub(super) struct Busy {
    held: bool,
    waiters: VecDeque<Rc<Waiter>>,
}

impl Busy {
    /// An id nobody holds.
    pub(super) fn free() -> Busy {
        Busy {
            held: false,
            waiters: VecDeque::new(),
        }
    }

    /// An id its creator holds (while its first record is written).
    pub(super) fn held() -> Busy {
        Busy {
            held: true,
            waiters: VecDeque::new(),
        }
    }

    pub(super) fn is_held(&self) -> bool {
        self.held
    }

    /// Hold the id if it is free; whether it was.
    pub(super) fn try_hold(&mut self) -> bool {
        if self.held {
            return false;
        }
        self.held = true;
        true
    }

    /// Hold the id whatever its state (a change found unfinished at load).
    pub(super) fn hold(&mut self) {
        self.held = true;
    }

    /// Queue for the held id; `None` when `waiters_max` already wait.
    pub(super) fn enqueue(&mut self, waiters_max: usize) -> Option<Rc<Waiter>> {
        debug_assert!(self.held, "a free id is held at once, not waited for");
        if self.waiters.len() >= waiters_max {
            return None;
        }
        let waiter = Rc::new(Waiter {
            handoff: Cell::new(Handoff::Waiting),
            settled: Event::default(),
        });
        self.waiters.push_back(Rc::clone(&waiter));
        Some(waiter)
    }

    /// Release the id: to the first waiter (it stays held, by that
    /// request), or free.
    pub(super) fn release(&mut self) {
        match self.waiters.pop_front() {
            Some(waiter) => waiter.settle(Handoff::Granted),
            None => self.held = false,
        }
    }

    /// `waiter` stops waiting (timed out, or its request dropped).
    pub(super) fn leave(&mut self, waiter: &Rc<Waiter>) {
        self.waiters.retain(|queued| !Rc::ptr_eq(queued, waiter));
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for waiter in self.waiters.drain(..) {
            waiter.settle(Handoff::Gone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_id_goes_to_its_waiters_in_arrival_order_and_never_falls_free_between() {
        let mut busy = Busy::free();
        assert!(busy.try_hold());
        let first = busy.enqueue(8).unwrap();
        let second = busy.enqueue(8).unwrap();
        busy.release();
        assert_eq!(first.handoff(), Handoff::Granted);
        assert_eq!(second.handoff(), Handoff::Waiting);
        assert!(
            !busy.try_hold(),
            "the first waiter holds it: a newcomer cannot overtake the second"
        );
        busy.release();
        assert_eq!(second.handoff(), Handoff::Granted);
        busy.release();
        assert!(!busy.is_held());
        assert!(busy.try_hold());
    }

    #[test]
    fn a_waiter_that_leaves_is_skipped_and_a_full_queue_refuses() {
        let mut busy = Busy::held();
        let leaving = busy.enqueue(2).unwrap();
        let staying = busy.enqueue(2).unwrap();
        assert!(busy.enqueue(2).is_none(), "two wait already");
        busy.leave(&leaving);
        busy.release();
        assert_eq!(leaving.handoff(), Handoff::Waiting);
        assert_eq!(staying.handoff(), Handoff::Granted);
    }

    #[test]
    fn forgetting_the_id_tells_its_waiters_it_is_gone() {
        let mut busy = Busy::held();
        let waiter = busy.enqueue(8).unwrap();
        drop(busy);
        assert_eq!(waiter.handoff(), Handoff::Gone);
        futures_executor::block_on(waiter.settled());
    }

    #[test]
    fn a_waiter_wakes_when_the_id_is_handed_to_it() {
        let mut busy = Busy::held();
        let waiter = busy.enqueue(8).unwrap();
        let mut settled = Box::pin(waiter.settled());
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(settled.as_mut().poll(&mut context).is_pending());
        busy.release();
        assert!(settled.as_mut().poll(&mut context).is_ready());
    }
}
