//! The commit log's view of the device: submit writes and fdatasyncs, reap
//! their completions.
//!
//! An op owns its buffer from `submit` until its [`LogOpDone`] is reaped, which
//! hands the buffer back whether the op succeeded or failed. A full queue is an
//! error value ([`SubmitError::QueueFull`] returns the op), never a silent
//! block. Implementations retry EINTR/EAGAIN and short writes themselves, so a
//! [`LogIoError`] is final: the log that saw it must be poisoned.
//!
//! "Done" for a write op means the bytes were written to the file (for
//! O_DIRECT: handed to the device); with `sync` it also means an fdatasync
//! issued after the write completed has returned, so the bytes are durable.
//! A write with `sync` may report its write first ([`DoneStage::Written`],
//! with the buffer, once the write completed whole) and its fdatasync later
//! ([`DoneStage::Complete`], without the buffer), so acks=1 appends are
//! answered without waiting for an fdatasync they did not ask for; an
//! implementation may also report both at once.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::aligned_buf::AlignedBuf;
use super::eventfd::EventFd;

/// An open commit-log file and its path (for error messages).
#[derive(Debug)]
pub struct LogFile {
    pub file: File,
    pub path: PathBuf,
}

/// Write `buf[buf_range]` at `file_offset`, then optionally fdatasync.
#[derive(Debug)]
pub struct WriteOp {
    pub file: Arc<LogFile>,
    pub file_offset: u64,
    pub buf: AlignedBuf,
    pub buf_range: Range<usize>,
    /// Link an fdatasync behind the write (io_uring IO_LINK): one submission,
    /// one completion, durable when done.
    pub sync: bool,
}

#[derive(Debug)]
pub enum LogOp {
    Write(WriteOp),
    /// A standalone fdatasync: makes every write completed before it durable.
    Sync {
        file: Arc<LogFile>,
    },
}

/// A finished op (or the write part of a synced write): its token, its
/// buffer back (once), and the outcome.
#[derive(Debug)]
pub struct LogOpDone {
    pub token: u64,
    pub buf: Option<AlignedBuf>,
    pub result: Result<(), LogIoError>,
    pub stage: DoneStage,
}

/// How far a finished op got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoneStage {
    /// The write of a synced write completed whole (always `Ok`); its
    /// fdatasync is still in flight and reports [`DoneStage::Complete`].
    Written,
    /// The op is over: every part of it succeeded, or `result` says what
    /// failed. The op's slot is free again.
    Complete,
}

#[derive(Debug, Clone, Error)]
#[error("{op} of {len} bytes at offset {file_offset} in {path} failed: {source}")]
pub struct LogIoError {
    pub op: &'static str,
    pub path: PathBuf,
    pub file_offset: u64,
    pub len: usize,
    #[source]
    pub source: Arc<io::Error>,
}

#[derive(Debug)]
pub enum SubmitError {
    /// No room for the op right now; try again after reaping.
    QueueFull(LogOp),
    /// The submission itself failed: treat as an I/O error on every op in flight.
    Failed(io::Error),
}

pub trait LogIo {
    /// Queue `op`; it starts no later than the next [`LogIo::flush_submissions`].
    fn submit(&mut self, token: u64, op: LogOp) -> Result<(), SubmitError>;

    /// Start everything queued since the last call (one syscall for the batch).
    fn flush_submissions(&mut self) -> io::Result<()>;

    /// Move finished ops into `out`. Never blocks.
    fn reap(&mut self, out: &mut Vec<LogOpDone>);

    /// Signalled whenever completions may be ready to reap.
    fn ready_fd(&self) -> &EventFd;

    /// Ops submitted and not yet reaped.
    fn inflight(&self) -> usize;

    /// Whether the log may make its next segment ahead of the roll, on the
    /// blocking pool, with its own directory fsync (`segment_ahead.rs`).
    /// A simulated device that injects directory-fsync failures says no,
    /// so its rolls keep going through [`LogIo::sync_dir`].
    fn makes_segments_ahead(&self) -> bool {
        true
    }

    /// fsync directory `dir`, so files created or removed in it are
    /// durable. Synchronous: directory syncs are rare (a segment roll).
    /// A simulated device overrides this to inject failures.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl LogOp {
    pub fn file(&self) -> &Arc<LogFile> {
        match self {
            LogOp::Write(write) => &write.file,
            LogOp::Sync { file } => file,
        }
    }

    pub fn into_buf(self) -> Option<AlignedBuf> {
        match self {
            LogOp::Write(write) => Some(write.buf),
            LogOp::Sync { .. } => None,
        }
    }
}

impl LogIoError {
    pub fn new(
        op: &'static str,
        file: &LogFile,
        file_offset: u64,
        len: usize,
        source: io::Error,
    ) -> Self {
        LogIoError {
            op,
            path: file.path.clone(),
            file_offset,
            len,
            source: Arc::new(source),
        }
    }
}
