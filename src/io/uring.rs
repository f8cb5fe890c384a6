//! The commit log's own io_uring: linked write + fdatasync.
//!
//! compio's ring serves sockets and timers but cannot link two ops, so each
//! shard's commit log drives a second small ring directly. A synced write is
//! two SQEs, `WRITE` with `IO_LINK` and `FSYNC(DATASYNC)`, submitted together:
//! the fdatasync starts only after the write succeeded, and one completion pair
//! tells the flusher that the bytes are durable. The ring signals an eventfd
//! that the shard's loop awaits.
//!
//! Retries live here: EINTR/EAGAIN resubmit the same op, a short write
//! resubmits the remainder (and its linked fdatasync, which the kernel
//! cancelled). Any other error is final for that op.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};

use super::eventfd::EventFd;
use super::log_io::{LogIo, LogIoError, LogOp, LogOpDone, SubmitError, WriteOp};
use crate::telemetry::storage::RingMetrics;

/// Low bit of user_data: which SQE of an op completed.
const USER_DATA_FSYNC_BIT: u64 = 1;

pub struct UringLogIo {
    ring: IoUring,
    eventfd: EventFd,
    slots: Vec<Option<InFlight>>,
    free_slots: Vec<u32>,
    finished: Vec<LogOpDone>,
    /// Reused between reaps: (user_data, result) of each CQE.
    scratch: Vec<(u64, i32)>,
    queued_since_flush: bool,
    metrics: RingMetrics,
}

struct InFlight {
    token: u64,
    op: LogOp,
    /// Bytes of the write already on disk (short writes advance this).
    written_bytes: usize,
    /// Completions still expected for the current submission.
    cqes_pending: u8,
    /// The write must be submitted again (EINTR/EAGAIN/short write).
    resubmit: bool,
    error: Option<LogIoError>,
}

impl UringLogIo {
    /// A ring with room for `ops_max` ops in flight (each op needs up to 2 SQEs).
    pub fn new(ops_max: u32, metrics: RingMetrics) -> io::Result<UringLogIo> {
        assert!(ops_max > 0);
        let entries = (ops_max * 2).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)?;
        let eventfd = EventFd::new()?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(UringLogIo {
            ring,
            eventfd,
            slots: (0..ops_max).map(|_| None).collect(),
            free_slots: (0..ops_max).rev().collect(),
            finished: Vec::new(),
            scratch: Vec::new(),
            queued_since_flush: false,
            metrics,
        })
    }

    /// Push the SQEs for the slot's op (from its current progress).
    fn push_entries(&mut self, slot: u32) -> bool {
        let in_flight = self.slots[slot as usize]
            .as_mut()
            .expect("pushing an occupied slot");
        let user_data = u64::from(slot) << 1;
        let (first, second): (squeue::Entry, Option<squeue::Entry>) = match &in_flight.op {
            LogOp::Write(write) => {
                let start = write.buf_range.start + in_flight.written_bytes;
                let len = write.buf_range.end - start;
                assert!(len > 0, "write with nothing left to write");
                let fd = types::Fd(write.file.file.as_raw_fd());
                // SAFETY: the pointer is into write.buf, which this slot owns
                // until the op's last completion is reaped; the range lies
                // inside the buffer (checked at submit).
                let pointer = unsafe { write.buf.as_ptr().add(start) };
                let entry = opcode::Write::new(fd, pointer, len as u32)
                    .offset(write.file_offset + in_flight.written_bytes as u64)
                    .build()
                    .user_data(user_data);
                if write.sync {
                    let fsync = opcode::Fsync::new(fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(user_data | USER_DATA_FSYNC_BIT);
                    (entry.flags(squeue::Flags::IO_LINK), Some(fsync))
                } else {
                    (entry, None)
                }
            }
            LogOp::Sync { file } => {
                let fd = types::Fd(file.file.as_raw_fd());
                let fsync = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(user_data | USER_DATA_FSYNC_BIT);
                (fsync, None)
            }
        };
        let count = 1 + usize::from(second.is_some());
        let mut queue = self.ring.submission();
        if queue.capacity() - queue.len() < count {
            self.metrics.queue_full.increment(1);
            return false;
        }
        // SAFETY: every entry points at memory owned by the slot (see above),
        // which outlives the op; both entries go in one push so the link holds.
        let pushed = match second {
            Some(second) => unsafe { queue.push_multiple(&[first, second]) },
            None => unsafe { queue.push(&first) },
        };
        pushed.expect("space checked above");
        self.metrics.submissions.increment(count as u64);
        in_flight.cqes_pending = count as u8;
        in_flight.resubmit = false;
        self.queued_since_flush = true;
        true
    }

    fn on_completion(&mut self, user_data: u64, result: i32) {
        let slot = (user_data >> 1) as u32;
        let is_fsync = user_data & USER_DATA_FSYNC_BIT != 0;
        let in_flight = self.slots[slot as usize]
            .as_mut()
            .expect("completion for an empty slot");
        in_flight.cqes_pending -= 1;
        if is_fsync {
            record_fsync_result(in_flight, result);
        } else {
            record_write_result(in_flight, result);
        }
        if in_flight.cqes_pending > 0 {
            return;
        }
        if in_flight.error.is_none() && in_flight.resubmit {
            if !self.push_entries(slot) {
                let in_flight = self.slots[slot as usize].as_mut().expect("occupied");
                in_flight.error = Some(op_error(
                    in_flight,
                    "resubmit",
                    io::Error::other("submission queue full while retrying"),
                ));
                self.finish(slot);
            }
            return;
        }
        self.finish(slot);
    }

    fn finish(&mut self, slot: u32) {
        let in_flight = self.slots[slot as usize]
            .take()
            .expect("finishing an empty slot");
        self.free_slots.push(slot);
        let result = match in_flight.error {
            Some(error) => Err(error),
            None => Ok(()),
        };
        self.finished.push(LogOpDone {
            token: in_flight.token,
            buf: in_flight.op.into_buf(),
            result,
        });
    }
}

fn write_len(op: &LogOp) -> usize {
    match op {
        LogOp::Write(write) => write.buf_range.len(),
        LogOp::Sync { .. } => 0,
    }
}

fn record_write_result(in_flight: &mut InFlight, result: i32) {
    if result < 0 {
        match -result {
            libc::EINTR | libc::EAGAIN => in_flight.resubmit = true,
            errno => {
                let error = op_error(in_flight, "write", io::Error::from_raw_os_error(errno));
                in_flight.error.get_or_insert(error);
            }
        }
        return;
    }
    if result == 0 {
        let error = op_error(in_flight, "write", io::Error::other("wrote 0 bytes"));
        in_flight.error.get_or_insert(error);
        return;
    }
    in_flight.written_bytes += result as usize;
    let total = write_len(&in_flight.op);
    assert!(
        in_flight.written_bytes <= total,
        "kernel wrote more than asked"
    );
    if in_flight.written_bytes < total {
        in_flight.resubmit = true;
    }
}

fn record_fsync_result(in_flight: &mut InFlight, result: i32) {
    if result >= 0 {
        return;
    }
    match -result {
        // The linked write was short or retried: the fsync goes again with it.
        libc::ECANCELED if in_flight.resubmit || in_flight.error.is_some() => {}
        libc::EINTR | libc::EAGAIN => in_flight.resubmit = true,
        errno => {
            let error = op_error(in_flight, "fdatasync", io::Error::from_raw_os_error(errno));
            in_flight.error.get_or_insert(error);
        }
    }
}

fn op_error(in_flight: &InFlight, name: &'static str, source: io::Error) -> LogIoError {
    match &in_flight.op {
        LogOp::Write(write) => LogIoError::new(
            name,
            &write.file,
            write.file_offset + in_flight.written_bytes as u64,
            write.buf_range.len() - in_flight.written_bytes,
            source,
        ),
        LogOp::Sync { file } => LogIoError::new(name, file, 0, 0, source),
    }
}

fn check_write_op(write: &WriteOp) {
    assert!(
        write.buf_range.start < write.buf_range.end && write.buf_range.end <= write.buf.capacity(),
        "write range {:?} outside a {}-byte buffer",
        write.buf_range,
        write.buf.capacity()
    );
    assert!(write.buf_range.len() <= u32::MAX as usize);
}

impl LogIo for UringLogIo {
    fn submit(&mut self, token: u64, op: LogOp) -> Result<(), SubmitError> {
        if let LogOp::Write(write) = &op {
            check_write_op(write);
        }
        let Some(slot) = self.free_slots.pop() else {
            self.metrics.queue_full.increment(1);
            return Err(SubmitError::QueueFull(op));
        };
        self.slots[slot as usize] = Some(InFlight {
            token,
            op,
            written_bytes: 0,
            cqes_pending: 0,
            resubmit: false,
            error: None,
        });
        if self.push_entries(slot) {
            return Ok(());
        }
        let in_flight = self.slots[slot as usize].take().expect("just filled");
        self.free_slots.push(slot);
        Err(SubmitError::QueueFull(in_flight.op))
    }

    fn flush_submissions(&mut self) -> io::Result<()> {
        if !self.queued_since_flush {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.queued_since_flush = false;
                    return Ok(());
                }
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => continue,
                Err(error) => return Err(error),
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<LogOpDone>) {
        let mut completions = std::mem::take(&mut self.scratch);
        loop {
            completions.clear();
            completions.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result())),
            );
            if completions.is_empty() {
                break;
            }
            self.metrics.completions.increment(completions.len() as u64);
            for &(user_data, result) in &completions {
                self.on_completion(user_data, result);
            }
        }
        self.scratch = completions;
        // Resubmissions made while reaping must reach the kernel now; a failure
        // here surfaces as a poisoned log on the next flush.
        if let Err(error) = self.flush_submissions() {
            tracing::error!(%error, "io_uring submit failed while retrying commit-log writes");
        }
        out.append(&mut self.finished);
    }

    fn ready_fd(&self) -> &EventFd {
        &self.eventfd
    }

    fn inflight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }
}
