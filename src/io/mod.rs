//! The only layer that touches io_uring or issues raw file I/O syscalls for
//! the commit log.
//!
//! [`backend`] decides between io_uring and epoll at startup and explains why
//! when io_uring is missing. [`log_io`] is the commit log's device interface,
//! implemented by [`uring`] (a dedicated ring with linked write + fdatasync)
//! and by [`blocking`] (a helper thread, for the epoll backend). Tests may
//! implement [`log_io::LogIo`] themselves to inject faults.

pub mod aligned_buf;
pub mod backend;
pub mod blocking;
pub mod eventfd;
pub mod log_io;
pub mod uring;

pub use aligned_buf::AlignedBuf;
pub use backend::{BackendChoice, IoBackend, choose_backend};
pub use eventfd::EventFd;
pub use log_io::{DoneStage, LogFile, LogIo, LogIoError, LogOp, LogOpDone, SubmitError, WriteOp};

/// The commit-log I/O for `backend`, with room for `ops_max` ops in flight.
pub fn new_log_io(
    backend: IoBackend,
    ops_max: u32,
    shard: crate::ids::ShardId,
) -> std::io::Result<Box<dyn LogIo>> {
    Ok(match backend {
        IoBackend::IoUring => Box::new(uring::UringLogIo::new(
            ops_max,
            crate::telemetry::storage::RingMetrics::new(
                &crate::telemetry::storage::shard_label(shard),
                "commit_log",
            ),
        )?),
        IoBackend::Epoll => Box::new(blocking::ThreadLogIo::new(ops_max, format!("{shard}-io"))?),
    })
}
