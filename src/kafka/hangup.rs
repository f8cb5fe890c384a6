//! Hangup: the client will send no more requests.
//!
//! Set when the client shuts down its sending side (its FIN: a read returns
//! EOF, or the socket polls POLLRDHUP while the connection is not reading)
//! or when reading ends for another reason (a bad frame, a read timeout).
//! A half-closed client still reads the answers to what it sent, and a
//! fully closed one reads nothing more; the broker cannot tell the two
//! apart without writing (a FIN looks the same), so requests already sent
//! still run and are answered, but a request that only waits for something
//! to happen (a long-poll Fetch) answers at once with what it has. The
//! connection then writes what is due and closes promptly instead of
//! holding its slot until every wait ends; a write to a peer that closed
//! fully fails and ends the connection sooner still.
//!
//! A connection that is not reading (its pipeline full, or its next request
//! waiting for the request budget) would not see an EOF, so while it waits
//! it polls its socket for POLLRDHUP every [`HANGUP_PROBE_INTERVAL`]: one
//! non-blocking `poll(2)` per waiting connection, on either I/O backend.
//! POLLRDHUP, unlike readability, is set by the FIN even behind unread
//! requests, and reading nothing leaves those requests intact for a
//! half-closed client.

use std::cell::Cell;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::pin;
use std::time::Duration;

use futures_util::future::{Either, select};

use crate::shard::local_sync::Event;

/// How often a connection that is not reading checks for its client's FIN.
pub const HANGUP_PROBE_INTERVAL: Duration = Duration::from_millis(500);

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

    /// Await `blocked`, meanwhile hanging up if the client shuts down its
    /// side of `socket`.
    pub async fn watch_while<F: Future>(&self, socket: BorrowedFd<'_>, blocked: F) -> F::Output {
        let mut blocked = pin!(blocked);
        loop {
            if self.happened() {
                return blocked.await;
            }
            let probe = pin!(compio::time::sleep(HANGUP_PROBE_INTERVAL));
            match select(blocked.as_mut(), probe).await {
                Either::Left((output, _)) => return output,
                Either::Right(((), _)) => {
                    if peer_shut_down(socket) {
                        self.hang_up();
                    }
                }
            }
        }
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

/// Whether the peer of `socket` has shut down its sending side (a FIN
/// arrived, whether or not data before it is still unread).
fn peer_shut_down(socket: BorrowedFd<'_>) -> bool {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
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

    #[test]
    fn a_fin_behind_unread_data_is_seen_without_reading() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"an unread request").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!peer_shut_down(server.as_fd()), "data alone is no hangup");
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !peer_shut_down(server.as_fd()) {
            assert!(std::time::Instant::now() < deadline, "the FIN is seen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
