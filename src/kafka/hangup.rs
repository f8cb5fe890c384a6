//! Hangup: no more requests will be read on a connection.
//!
//! Set by the connection's reader when the client closes its side (EOF) or
//! sends something that ends reading (a bad frame, a read timeout). A
//! half-closed client still reads the answers to what it sent, and a fully
//! closed one reads nothing more; the broker cannot tell the two apart
//! without writing (a FIN looks the same), so requests already read still
//! run and are answered, but a request that only waits for something to
//! happen (a long-poll Fetch) answers at once with what it has. The
//! connection then writes what is due and closes promptly instead of
//! holding its slot until every wait ends; a write to a peer that closed
//! fully fails and ends the connection sooner still.

use std::cell::Cell;

use crate::shard::local_sync::Event;

#[derive(Default)]
pub struct Hangup {
    happened: Cell<bool>,
    event: Event,
}

impl Hangup {
    /// Mark the connection as read to its end. Idempotent.
    pub fn hang_up(&self) {
        if !self.happened.replace(true) {
            self.event.notify_all();
        }
    }

    pub fn happened(&self) -> bool {
        self.happened.get()
    }

    /// Resolves once [`Hangup::hang_up`] has been called.
    pub async fn wait(&self) {
        loop {
            let changed = self.event.wait();
            if self.happened.get() {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn waiters_wake_at_the_hangup_and_later_waits_return_at_once() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let hangup = Rc::new(Hangup::default());
            let waiter = compio::runtime::spawn({
                let hangup = Rc::clone(&hangup);
                async move { hangup.wait().await }
            });
            crate::shard::local_sync::yield_now().await;
            assert!(!waiter.is_finished());
            hangup.hang_up();
            waiter.await.unwrap();
            hangup.wait().await;
            assert!(hangup.happened());
        });
    }
}
