//! The commit log's own io_uring: linked write + fdatasync.
//!
//! compio's ring serves sockets and timers but cannot link two ops, so each
//! shard's commit log drives a second small ring directly. A synced write is
//! two SQEs, `WRITE` with `IO_LINK` and `FSYNC(DATASYNC)`, submitted together:
//! the fdatasync starts only after the write succeeded, and one completion pair
//! tells the flusher that the bytes are durable. The ring signals an eventfd
//! that the shard's loop awaits.
//!
//! Retries live here:
//! * an op's EINTR/EAGAIN resubmits it; a short write resubmits the
//!   remainder (and its linked fdatasync, which the kernel cancelled); a
//!   write that completed whose fdatasync must go again resubmits the
//!   fdatasync alone;
//! * `io_uring_enter` failing with EAGAIN (no kernel resources) or EBUSY (the
//!   completion queue is full) reaps what completed and tries again, up to
//!   [`ENTER_RETRIES_MAX`] times, before it counts as an I/O error.
//!
//! Any other error is final for that op. Invariant: an op's buffer belongs
//! to the kernel from its push until its last completion is reaped, so the
//! ring is drained before it is dropped.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};

use super::eventfd::EventFd;
use super::log_io::{DoneStage, LogIo, LogIoError, LogOp, LogOpDone, SubmitError, WriteOp};
use crate::telemetry::storage::RingMetrics;

/// Low bit of user_data: which SQE of an op completed.
const USER_DATA_FSYNC_BIT: u64 = 1;
/// Tries of one `io_uring_enter` that fails with EAGAIN or EBUSY.
pub const ENTER_RETRIES_MAX: u32 = 1000;
/// Pause between such tries when nothing completed in the meantime.
const ENTER_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_micros(100);

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
    /// Errors `io_uring_enter` returns before the real call (tests).
    #[cfg(test)]
    injected_enter_errors: Vec<i32>,
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
            #[cfg(test)]
            injected_enter_errors: Vec::new(),
        })
    }

    /// Ops with SQEs pushed whose completions are not reaped yet: the ones
    /// whose buffers the kernel may use. (An op whose retry failed to push
    /// has none.)
    fn ops_in_kernel(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|in_flight| in_flight.cqes_pending > 0)
            .count()
    }

    /// `io_uring_enter` for the queued SQEs, through the test seam.
    fn enter(&mut self) -> io::Result<usize> {
        #[cfg(test)]
        if let Some(errno) = self.injected_enter_errors.pop() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.ring.submit()
    }

    /// Move every available completion into `finished` (via the retry
    /// logic); returns how many CQEs were reaped.
    fn drain_completions(&mut self) -> usize {
        let mut completions = std::mem::take(&mut self.scratch);
        let mut reaped = 0;
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
            reaped += completions.len();
            self.metrics.completions.increment(completions.len() as u64);
            for &(user_data, result) in &completions {
                self.on_completion(user_data, result);
            }
        }
        self.scratch = completions;
        reaped
    }

    /// Push the SQEs for the slot's op (from its current progress).
    fn push_entries(&mut self, slot: u32) -> bool {
        let in_flight = self.slots[slot as usize]
            .as_mut()
            .expect("pushing an occupied slot");
        let user_data = u64::from(slot) << 1;
        let (first, second): (squeue::Entry, Option<squeue::Entry>) = match &in_flight.op {
            LogOp::Write(write)
                if write.buf_range.start + in_flight.written_bytes == write.buf_range.end =>
            {
                // The write is complete; only its fdatasync goes again.
                assert!(
                    write.sync,
                    "a complete write without fdatasync is never resubmitted"
                );
                let fd = types::Fd(write.file.file.as_raw_fd());
                let fsync = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(user_data | USER_DATA_FSYNC_BIT);
                (fsync, None)
            }
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
            self.report_written(slot);
        }
        let in_flight = self.slots[slot as usize].as_mut().expect("occupied");
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

    /// A synced write whose write completed whole while its fdatasync is
    /// still out: report the write ([`DoneStage::Written`]) with its
    /// buffer, which the kernel no longer uses, and keep the slot as a plain
    /// fdatasync (which goes again alone if it must).
    fn report_written(&mut self, slot: u32) {
        let in_flight = self.slots[slot as usize].as_mut().expect("occupied");
        let LogOp::Write(write) = &in_flight.op else {
            return;
        };
        let whole = write.buf_range.start + in_flight.written_bytes == write.buf_range.end;
        if !(write.sync && whole && in_flight.cqes_pending > 0 && in_flight.error.is_none()) {
            return;
        }
        let file = Arc::clone(&write.file);
        let LogOp::Write(write) = std::mem::replace(&mut in_flight.op, LogOp::Sync { file }) else {
            unreachable!("matched above");
        };
        in_flight.written_bytes = 0;
        self.finished.push(LogOpDone {
            token: in_flight.token,
            buf: Some(write.buf),
            result: Ok(()),
            stage: DoneStage::Written,
        });
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
            stage: DoneStage::Complete,
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
        let mut busy_tries = 0;
        loop {
            match self.enter() {
                // The kernel may take fewer SQEs than queued: go again.
                Ok(_) if !self.ring.submission().is_empty() => continue,
                Ok(_) => {
                    self.queued_since_flush = false;
                    return Ok(());
                }
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => continue,
                Err(error)
                    if matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
                        && busy_tries < ENTER_RETRIES_MAX =>
                {
                    busy_tries += 1;
                    // EBUSY: the completion queue is full; EAGAIN: the kernel
                    // is short of memory. Reaping frees room either way; the
                    // ops that finished wait in `finished` for the next reap,
                    // which the eventfd signal guarantees.
                    if self.drain_completions() > 0 {
                        self.eventfd.signal();
                    } else {
                        std::thread::sleep(ENTER_RETRY_PAUSE);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<LogOpDone>) {
        self.drain_completions();
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

impl Drop for UringLogIo {
    /// Wait for every op in flight: the kernel may still read their buffers,
    /// which are freed with the slots. If waiting fails, the buffers are
    /// leaked rather than freed under the kernel.
    fn drop(&mut self) {
        if let Err(error) = self.flush_submissions() {
            tracing::error!(%error, "cannot submit commit-log ops while closing the ring");
        }
        while self.ops_in_kernel() > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
                Err(error) => {
                    tracing::error!(
                        %error,
                        ops = self.inflight(),
                        "cannot wait for commit-log ops while closing the ring; leaking their buffers"
                    );
                    std::mem::forget(std::mem::take(&mut self.slots));
                    return;
                }
            }
            self.drain_completions();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    use super::*;
    use crate::io::{AlignedBuf, LogFile, WriteOp};

    fn ring() -> Option<UringLogIo> {
        match UringLogIo::new(8, RingMetrics::new("test", "commit_log")) {
            Ok(ring) => Some(ring),
            Err(error) => {
                eprintln!("skipped: no io_uring here ({error})");
                None
            }
        }
    }

    fn write_op(file: &Arc<LogFile>, offset: u64, byte: u8, len: usize, sync: bool) -> LogOp {
        let mut buf = AlignedBuf::zeroed(len, 4096);
        buf.as_mut_slice().fill(byte);
        LogOp::Write(WriteOp {
            file: Arc::clone(file),
            file_offset: offset,
            buf,
            buf_range: 0..len,
            sync,
        })
    }

    fn log_file(dir: &std::path::Path) -> Arc<LogFile> {
        let path = dir.join("segment");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        Arc::new(LogFile { file, path })
    }

    /// Reap until `token` finishes; every CQE's result goes through `edit`.
    fn finish_with(ring: &mut UringLogIo, edit: &mut dyn FnMut(u64, i32) -> i32) -> LogOpDone {
        loop {
            ring.flush_submissions().unwrap();
            ring.ring.submit_and_wait(1).unwrap();
            let completions: Vec<(u64, i32)> = ring
                .ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result()))
                .collect();
            for (user_data, result) in completions {
                let result = edit(user_data, result);
                ring.on_completion(user_data, result);
            }
            if let Some(index) = ring
                .finished
                .iter()
                .position(|done| done.stage == DoneStage::Complete)
            {
                return ring.finished.remove(index);
            }
        }
    }

    /// [`finish_with`] whose first fdatasync completes with `-errno`;
    /// returns the op and how many fdatasyncs completed.
    fn finish_failing_first_fsync(ring: &mut UringLogIo, errno: i32) -> (LogOpDone, u32) {
        let mut fsyncs = 0;
        let done = finish_with(ring, &mut |user_data, result| {
            if user_data & USER_DATA_FSYNC_BIT != 0 {
                fsyncs += 1;
                if fsyncs == 1 {
                    return -errno;
                }
            }
            result
        });
        (done, fsyncs)
    }

    #[test]
    fn a_complete_write_whose_fdatasync_must_retry_resubmits_the_fdatasync_alone() {
        let Some(mut ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let file = log_file(dir.path());
        ring.submit(7, write_op(&file, 0, b'a', 8192, true))
            .unwrap();
        // Issue 12: the first fdatasync is interrupted after the whole write
        // went through. The retry used to build a zero-length write and trip
        // an assertion.
        let (done, fsyncs) = finish_failing_first_fsync(&mut ring, libc::EINTR);
        assert_eq!(done.token, 7);
        done.result.unwrap();
        assert_eq!(fsyncs, 2, "the fdatasync went again");
        let mut back = vec![0u8; 8192];
        file.file.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&byte| byte == b'a'));
    }

    /// Issue 19 item 4: acks=1 is answered once written, so the write of a
    /// synced write reports first, with its buffer; the fdatasync (retried
    /// alone here) reports the op complete, without one.
    #[test]
    fn a_synced_write_reports_its_write_before_its_fdatasync() {
        let Some(mut ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let file = log_file(dir.path());
        ring.submit(9, write_op(&file, 0, b'b', 4096, true))
            .unwrap();
        let (done, fsyncs) = finish_failing_first_fsync(&mut ring, libc::EAGAIN);
        assert_eq!((done.token, done.stage), (9, DoneStage::Complete));
        done.result.unwrap();
        assert!(done.buf.is_none(), "the buffer came back with the write");
        let written = ring.finished.pop().expect("the write reported first");
        assert!(ring.finished.is_empty());
        assert_eq!((written.token, written.stage), (9, DoneStage::Written));
        written.result.unwrap();
        assert_eq!(written.buf.expect("its buffer").as_slice()[0], b'b');
        assert_eq!(fsyncs, 2, "the fdatasync went again, alone");
        assert_eq!(ring.inflight(), 0);
        // A write without fdatasync reports once, complete.
        ring.submit(11, write_op(&file, 4096, b'c', 4096, false))
            .unwrap();
        let done = finish_with(&mut ring, &mut |_, result| result);
        assert_eq!((done.token, done.stage), (11, DoneStage::Complete));
        assert!(done.buf.is_some() && ring.finished.is_empty());
    }

    #[test]
    fn enter_failing_with_eagain_or_ebusy_is_retried_not_fatal() {
        let Some(mut ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let file = log_file(dir.path());
        ring.submit(1, write_op(&file, 0, b'b', 4096, true))
            .unwrap();
        ring.injected_enter_errors = vec![libc::EAGAIN, libc::EBUSY, libc::EINTR];
        ring.flush_submissions()
            .expect("EAGAIN and EBUSY from io_uring_enter are retried");
        let done = finish_with(&mut ring, &mut |_, result| result);
        done.result.unwrap();
        // Past the retry budget it is an error the log poisons itself with.
        ring.submit(2, write_op(&file, 4096, b'c', 4096, false))
            .unwrap();
        ring.injected_enter_errors = vec![libc::EAGAIN; ENTER_RETRIES_MAX as usize + 1];
        let error = ring.flush_submissions().unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EAGAIN));
    }

    #[test]
    fn dropping_the_ring_waits_for_the_ops_in_flight() {
        let Some(mut ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let file = log_file(dir.path());
        const OP_BYTES: usize = 4 << 20;
        for index in 0..6u8 {
            let op = write_op(
                &file,
                u64::from(index) * OP_BYTES as u64,
                b'0' + index,
                OP_BYTES,
                true,
            );
            ring.submit(u64::from(index), op).unwrap();
        }
        ring.flush_submissions().unwrap();
        // The ops own their buffers until reaped; dropping must not free
        // them under the kernel, and returns once every op is done.
        drop(ring);
        let mut back = vec![0u8; OP_BYTES];
        for index in 0..6u8 {
            file.file
                .read_exact_at(&mut back, u64::from(index) * OP_BYTES as u64)
                .unwrap();
            assert!(
                back.iter().all(|&byte| byte == b'0' + index),
                "op {index} was not finished when drop returned"
            );
        }
    }
}
