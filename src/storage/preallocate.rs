//! Reserving disk blocks ahead of writes, and what to do where the file
//! system cannot.
//!
//! Files that are written through a memory map (consume queues) must never
//! have a page written whose blocks the file system has not allocated: a full
//! disk then raises SIGBUS in the writing thread instead of returning ENOSPC.
//! Segments are reserved in steps ahead of the write position, so a full
//! disk shows up as a retriable refusal of an append, not in the middle of
//! group commit.
//!
//! `fallocate` is the tool. Some file systems do not have it (FUSE file
//! systems such as LazyFS, some network file systems): [`allocate`] reports
//! [`Allocation::Unsupported`] and the caller falls back, by writing zeros
//! (small ranges) or by writing without a reservation (segments). The fallback is logged
//! once per process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a range was reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Blocks are allocated (unwritten extents): writes need no new blocks.
    Allocated,
    /// The file system has no fallocate; nothing was reserved.
    Unsupported,
}

static UNSUPPORTED_LOGGED: AtomicBool = AtomicBool::new(false);

/// Allocate blocks for `[offset, offset + length)` of `file` without changing
/// its size beyond `offset + length`. ENOSPC and other errors are returned
/// as they are; EOPNOTSUPP and ENOSYS become [`Allocation::Unsupported`].
pub fn allocate(file: &File, offset: u64, length: u64) -> io::Result<Allocation> {
    if length == 0 {
        return Ok(Allocation::Allocated);
    }
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    let length = libc::off_t::try_from(length).map_err(io::Error::other)?;
    loop {
        // SAFETY: fallocate only reads its integer arguments; the fd is open.
        let status = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, length) };
        if status == 0 {
            return Ok(Allocation::Allocated);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Ok(Allocation::Unsupported),
            _ => return Err(error),
        }
    }
}

/// Log, once per process, that `path`'s file system cannot preallocate and
/// what the broker does instead.
pub fn log_unsupported(path: &Path, fallback: &str) {
    if !UNSUPPORTED_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            path = %path.display(),
            "the data directory's file system does not support fallocate; {fallback} (logged once)"
        );
    }
}

/// Write zeros over `[offset, offset + length)`: allocates the blocks where
/// fallocate cannot. Only for ranges known to hold no data.
pub fn write_zeros(file: &File, offset: u64, length: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const ZEROS_BYTES: usize = 64 * 1024;
    static ZEROS: [u8; ZEROS_BYTES] = [0; ZEROS_BYTES];
    let mut done = 0u64;
    while done < length {
        let step = (length - done).min(ZEROS_BYTES as u64) as usize;
        file.write_all_at(&ZEROS[..step], offset + done)?;
        done += step as u64;
    }
    Ok(())
}
