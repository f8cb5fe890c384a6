//! SIGINT, SIGTERM and SIGHUP, received synchronously by the main thread.
//!
//! The signals are blocked before any shard thread starts (threads inherit
//! the mask), so no shard is ever interrupted by them. The main thread then
//! waits in `sigwait`: SIGINT and SIGTERM start an orderly shutdown (flush,
//! fsync, checkpoint, exit); SIGHUP asks for a reload (the TLS files) and
//! the wait goes on.

use std::io;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    Interrupt,
    Terminate,
}

pub struct TerminationSignals {
    set: libc::sigset_t,
}

impl TerminationSignals {
    /// Block SIGINT, SIGTERM and SIGHUP for this thread and every thread it
    /// spawns.
    pub fn block() -> io::Result<TerminationSignals> {
        // SAFETY: sigemptyset/sigaddset write into the sigset_t we own;
        // pthread_sigmask reads it. The zeroed value is a valid sigset_t.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
            let status = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if status != 0 {
                return Err(io::Error::from_raw_os_error(status));
            }
            Ok(TerminationSignals { set })
        }
    }

    /// A SIGINT or SIGTERM already pending, taken without waiting.
    pub fn pending(&self) -> io::Result<Option<Termination>> {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            // SAFETY: sigtimedwait reads our sigset and the timespec; a null
            // siginfo pointer is allowed.
            let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &zero) };
            match signal {
                libc::SIGINT => return Ok(Some(Termination::Interrupt)),
                libc::SIGTERM => return Ok(Some(Termination::Terminate)),
                -1 => {
                    let error = io::Error::last_os_error();
                    match error.raw_os_error() {
                        Some(libc::EAGAIN) => return Ok(None),
                        Some(libc::EINTR) => continue,
                        _ => return Err(error),
                    }
                }
                _ => continue,
            }
        }
    }

    /// Wait for the next SIGINT or SIGTERM, calling `on_hangup` for each
    /// SIGHUP meanwhile.
    pub fn wait(&self, on_hangup: &dyn Fn()) -> io::Result<Termination> {
        let mut signal: libc::c_int = 0;
        loop {
            // SAFETY: sigwait reads our sigset and writes the signal number.
            let status = unsafe { libc::sigwait(&self.set, &mut signal) };
            match status {
                0 if signal == libc::SIGINT => return Ok(Termination::Interrupt),
                0 if signal == libc::SIGTERM => return Ok(Termination::Terminate),
                0 if signal == libc::SIGHUP => on_hangup(),
                0 => continue,
                libc::EINTR => continue,
                error => return Err(io::Error::from_raw_os_error(error)),
            }
        }
    }
}
