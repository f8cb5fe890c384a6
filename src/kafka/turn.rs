//! Turns: pipelined requests on one connection start in arrival order.
//!
//! A connection serves several requests at once, but what a request changes
//! must happen in the order the client sent it, as if requests were served
//! one by one: two pipelined Produce requests append to a partition in
//! request order, and a topic created by one request exists for the next.
//! Each request therefore gets a [`Turn`]: it waits for the request before
//! it to pass its turn on, does its ordered part, and passes. What follows
//! (waiting for an fdatasync, a long-poll fetch waiting for data) overlaps
//! with later requests.
//!
//! A turn passes when dropped, so a request that ends early never blocks the
//! ones behind it; [`Turn::stop`] instead keeps every later request waiting,
//! for a request after which the connection closes.

use std::cell::Cell;
use std::rc::Rc;

use crate::shard::local_sync::Event;

#[derive(Default)]
struct Baton {
    passed: Cell<bool>,
    event: Event,
}

impl Baton {
    fn passed() -> Rc<Baton> {
        let baton = Baton::default();
        baton.passed.set(true);
        Rc::new(baton)
    }
}

/// Hands out turns in arrival order.
pub struct Turns {
    last: Rc<Baton>,
}

impl Default for Turns {
    fn default() -> Self {
        Turns {
            last: Baton::passed(),
        }
    }
}

impl Turns {
    pub fn take(&mut self) -> Turn {
        let mine = Rc::new(Baton::default());
        let before = std::mem::replace(&mut self.last, Rc::clone(&mine));
        Turn {
            before,
            mine: Some(mine),
        }
    }
}

pub struct Turn {
    before: Rc<Baton>,
    mine: Option<Rc<Baton>>,
}

impl Turn {
    /// Resolves once the request before this one has passed its turn.
    pub async fn wait(&self) {
        loop {
            let passed = self.before.event.wait();
            if self.before.passed.get() {
                return;
            }
            passed.await;
        }
    }

    /// Let the next request start. Idempotent.
    pub fn pass(&self) {
        if let Some(mine) = &self.mine
            && !mine.passed.replace(true)
        {
            mine.event.notify_all();
        }
    }

    /// Never let a later request start: the connection closes after this one.
    pub fn stop(mut self) {
        self.mine = None;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.pass();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn turns_start_in_order_and_a_stopped_turn_holds_the_rest() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let log = Rc::new(RefCell::new(Vec::new()));
            let mut turns = Turns::default();
            let first = turns.take();
            let second = turns.take();
            let third = turns.take();
            let fourth = turns.take();
            let mut tasks = Vec::new();
            for (name, turn) in [("third", third), ("second", second)] {
                let log = Rc::clone(&log);
                tasks.push(compio::runtime::spawn(async move {
                    turn.wait().await;
                    log.borrow_mut().push(name);
                    if name == "third" {
                        turn.stop();
                    }
                }));
            }
            let log_fourth = Rc::clone(&log);
            let fourth = compio::runtime::spawn(async move {
                fourth.wait().await;
                log_fourth.borrow_mut().push("fourth");
            });
            crate::shard::local_sync::yield_now().await;
            assert!(
                log.borrow().is_empty(),
                "nothing starts before the first passes"
            );
            first.wait().await;
            first.pass();
            for task in tasks {
                task.await.unwrap();
            }
            for _ in 0..3 {
                crate::shard::local_sync::yield_now().await;
            }
            assert_eq!(*log.borrow(), ["second", "third"]);
            assert!(
                !fourth.is_finished(),
                "a stopped turn keeps later requests waiting"
            );
        });
    }
}
