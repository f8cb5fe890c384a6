//! A non-blocking eventfd: how another ring or thread wakes a shard's loop.
//!
//! The storage ring and the fallback I/O thread signal it when completions
//! are ready; the shard awaits its readability through compio, which works on
//! both the io_uring and the epoll driver.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct EventFd {
    fd: Arc<OwnedFd>,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd has no memory arguments; the result is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(EventFd { fd: Arc::new(fd) })
    }

    /// Add one to the counter, waking a waiter. Never blocks: the counter
    /// saturates long before u64::MAX - 1 in practice.
    pub fn signal(&self) {
        let one: u64 = 1;
        loop {
            // SAFETY: writes 8 bytes from a live u64 to our own descriptor.
            let written = unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if written >= 0 {
                return;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The counter is full: a waiter is certainly going to wake.
                Some(libc::EAGAIN) => return,
                _ => panic!("eventfd write failed on a valid descriptor: {error}"),
            }
        }
    }

    /// Reset the counter; returns how many signals were pending (0 if none).
    pub fn drain(&self) -> u64 {
        let mut value: u64 = 0;
        loop {
            // SAFETY: reads 8 bytes into a live u64 from our own descriptor.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut value as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if read >= 0 {
                return value;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => return 0,
            }
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_accumulate_until_drained() {
        let eventfd = EventFd::new().unwrap();
        assert_eq!(eventfd.drain(), 0);
        eventfd.signal();
        eventfd.signal();
        assert_eq!(eventfd.drain(), 2);
        assert_eq!(eventfd.drain(), 0);
    }
}
