//! The commit log's I/O without io_uring: a helper thread per shard.
//!
//! Used when the epoll backend runs (io_uring unavailable or disabled). The
//! shard hands ops to its helper thread through a bounded channel; the thread
//! does `pwrite` (looping over short writes and EINTR) and `fdatasync`, then
//! returns the op's buffer and signals the shard's eventfd. Ops run one at a
//! time, in submission order, so throughput is lower than with io_uring but the
//! guarantees (what "done" means, poisoning on error) are the same.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::eventfd::EventFd;
use super::log_io::{DoneStage, LogFile, LogIo, LogIoError, LogOp, LogOpDone, SubmitError};

pub struct ThreadLogIo {
    sender: Option<SyncSender<(u64, LogOp)>>,
    finished: Arc<Mutex<Vec<LogOpDone>>>,
    eventfd: EventFd,
    inflight: usize,
    ops_max: usize,
    thread: Option<JoinHandle<()>>,
}

impl ThreadLogIo {
    /// `ops_max` bounds ops queued or running; `name` labels the helper thread.
    pub fn new(ops_max: u32, name: String) -> io::Result<ThreadLogIo> {
        let ops_max = ops_max as usize;
        let (sender, receiver) = sync_channel(ops_max);
        let finished = Arc::new(Mutex::new(Vec::new()));
        let eventfd = EventFd::new()?;
        let thread = std::thread::Builder::new().name(name).spawn({
            let finished = Arc::clone(&finished);
            let eventfd = eventfd.clone();
            move || run_ops(&receiver, &finished, &eventfd)
        })?;
        Ok(ThreadLogIo {
            sender: Some(sender),
            finished,
            eventfd,
            inflight: 0,
            ops_max,
            thread: Some(thread),
        })
    }
}

fn run_ops(receiver: &Receiver<(u64, LogOp)>, finished: &Mutex<Vec<LogOpDone>>, eventfd: &EventFd) {
    let report = |done: LogOpDone| {
        finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(done);
        eventfd.signal();
    };
    while let Ok((token, op)) = receiver.recv() {
        let (result, op) = match op {
            LogOp::Write(write) => {
                let bytes = &write.buf.as_slice()[write.buf_range.clone()];
                let written = write
                    .file
                    .file
                    .write_all_at(bytes, write.file_offset)
                    .map_err(|source| {
                        LogIoError::new(
                            "write",
                            &write.file,
                            write.file_offset,
                            bytes.len(),
                            source,
                        )
                    });
                match written {
                    // The write is reported before its fdatasync runs
                    // (see `DoneStage`).
                    Ok(()) if write.sync => {
                        let file = Arc::clone(&write.file);
                        report(LogOpDone {
                            token,
                            buf: Some(write.buf),
                            result: Ok(()),
                            stage: DoneStage::Written,
                        });
                        (sync(&file), LogOp::Sync { file })
                    }
                    written => (written, LogOp::Write(write)),
                }
            }
            LogOp::Sync { file } => (sync(&file), LogOp::Sync { file }),
        };
        report(LogOpDone {
            token,
            buf: op.into_buf(),
            result,
            stage: DoneStage::Complete,
        });
    }
}

fn sync(file: &LogFile) -> Result<(), LogIoError> {
    file.file
        .sync_data()
        .map_err(|source| LogIoError::new("fdatasync", file, 0, 0, source))
}

impl LogIo for ThreadLogIo {
    fn submit(&mut self, token: u64, op: LogOp) -> Result<(), SubmitError> {
        if self.inflight >= self.ops_max {
            return Err(SubmitError::QueueFull(op));
        }
        let sender = self.sender.as_ref().expect("sender lives until drop");
        match sender.try_send((token, op)) {
            Ok(()) => {
                self.inflight += 1;
                Ok(())
            }
            Err(TrySendError::Full((_, op))) => Err(SubmitError::QueueFull(op)),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Failed(io::Error::other(
                "commit-log I/O thread exited",
            ))),
        }
    }

    fn flush_submissions(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<LogOpDone>) {
        let mut finished = self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.inflight -= finished
            .iter()
            .filter(|done| done.stage == DoneStage::Complete)
            .count();
        out.append(&mut finished);
    }

    fn ready_fd(&self) -> &EventFd {
        &self.eventfd
    }

    fn inflight(&self) -> usize {
        self.inflight
    }
}

impl Drop for ThreadLogIo {
    fn drop(&mut self) {
        // Closing the channel ends the thread once queued ops are done.
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
