//! A shard's commit log: ordered segments, the appender, and group commit.
//!
//! This is a synchronous state machine; the shard's flusher task drives it
//! (see `shard_store`). What each call means when it returns:
//!
//! * [`CommitLog::append_frame`]: **buffered**. The frame has its log position
//!   and will be written in order; nothing is on disk yet.
//! * [`CommitLog::written_end`]: every frame ending at or before it is
//!   **written** to its segment file (readable by fetch; lost on power failure
//!   unless also durable).
//! * [`CommitLog::durable_end`]: every frame ending at or before it is
//!   **fsynced** (fdatasync returned after its write completed).
//!
//! Group commit ([`CommitLog::flush`]) submits a write when a chunk fills
//! (`flush_bytes`), when the oldest unsubmitted append has waited
//! `flush_interval`, or when the shard is idle. The fdatasync goes linked to
//! the write whenever an append's durability deadline has passed (acks=all,
//! or `flush.ms` elapsed), so one fdatasync acknowledges every append it
//! covers. An fdatasync covers only its own segment file: what had been
//! written to that file when it was issued. After a roll the previous
//! segment gets a standalone fdatasync of its own. A failed write or fdatasync poisons the log: watermarks freeze,
//! appends are refused, and only a restart (with recovery) clears it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::appender::{Appender, ChunkPlace, ChunkWrite, align_down};
use super::reservation::{Admit, RESERVE_MIN_BYTES, Reservation};
use super::segment::{self, Preallocation, Segment, SegmentError};
use super::segment_ahead::{SegmentAhead, SegmentAheadWork};
use super::tail_cache::TailCache;
use super::watermark::{DueQueue, RangeWatermark};
use crate::config::WriteMode;
use crate::ids::LogPosition;
use crate::io::{AlignedBuf, DoneStage, LogIo, LogIoError, LogOp, LogOpDone, SubmitError};
use crate::telemetry::storage::LogMetrics;
use bytes::{Bytes, BytesMut};

/// Failed reservations of disk space, logged at most once per 10 s per
/// process (on a full disk every append that needs space tries again).
static RESERVE_FAILURES: crate::log_throttle::LogThrottle =
    crate::log_throttle::LogThrottle::with_lines(Duration::from_secs(10), 1);

/// Token bit marking a standalone fdatasync. Tokens are an op counter << 1:
/// unique among ops in flight even when a chunk's next partial write goes
/// out while the fdatasync linked to its previous one is still running.
const SYNC_TOKEN_BIT: u64 = 1;
/// Partial-block copies kept for fetches near the written end (see
/// `keep_tail_block`); only the newest one or two are ever needed.
const TAIL_BLOCKS_KEPT_MAX: usize = 8;
/// Ring slots kept for standalone fdatasyncs next to `inflight_writes_max`
/// writes: normally one; two while the durable end crosses a segment boundary.
pub const LOG_SYNCS_INFLIGHT_MAX: u32 = 2;

// A roll leaves the previous segment needing its own fdatasync beside the new
// one's; the fetch path needs the newest partial block and the one before it.
const _: () = assert!(LOG_SYNCS_INFLIGHT_MAX >= 2);
const _: () = assert!(TAIL_BLOCKS_KEPT_MAX >= 2);
const _: () = assert!(SYNC_TOKEN_BIT == 1, "tokens are op counters << 1");

#[derive(Clone, Debug)]
pub struct LogOptions {
    pub dir: PathBuf,
    pub write_mode: WriteMode,
    pub segment_bytes: u64,
    /// `storage.preallocate_bytes`: the largest step of disk space reserved
    /// ahead of the write position (see `reservation`).
    pub reserve_max_bytes: u64,
    /// `storage.segment_roll_min_ms`: the soonest an age roll happens.
    pub age_roll_min_ms: u64,
    /// `storage.sync_interval_bytes`: an fdatasync is forced once this many
    /// bytes are appended and not durable, whatever the appends' own
    /// deadlines (`flush.ms`) say.
    pub sync_interval_bytes: u64,
    /// `storage.tail_cache_bytes`: memory for the newest frames (see
    /// `tail_cache`); 0 keeps none.
    pub tail_cache_bytes: u64,
    pub chunk_bytes: usize,
    pub write_buffers: usize,
    pub inflight_writes_max: usize,
    pub flush_interval: Duration,
    pub metrics: LogMetrics,
}

#[derive(Debug, Error)]
pub enum LogAppendError {
    #[error(
        "the commit log is poisoned by an earlier I/O error and accepts nothing until restart: {0}"
    )]
    Poisoned(Arc<LogIoError>),
    #[error("no write buffer space for a {frame_bytes}-byte frame until in-flight writes finish")]
    NoBufferSpace { frame_bytes: usize },
    #[error("cannot start a new segment: {0}")]
    Roll(#[from] SegmentError),
    /// The frame would pass the disk space reserved ahead of the writes; a
    /// reservation is asked for (the flusher runs it): try again once it
    /// finishes.
    #[error("waiting for disk space to be reserved for a {frame_bytes}-byte frame")]
    AwaitingReservation { frame_bytes: usize },
    /// Reserving disk space for the frame failed (ENOSPC): retriable, the
    /// next append asks again.
    #[error("{0}")]
    Reserve(SegmentError),
}

/// A reservation of disk space for the next bytes of the active segment,
/// to run off the shard thread ([`ReserveWork::run`]) and hand back with
/// [`CommitLog::reservation_done`].
#[derive(Clone, Debug)]
pub struct ReserveWork {
    pub segment_base: LogPosition,
    pub from: LogPosition,
    pub to: LogPosition,
    file: Arc<crate::io::LogFile>,
}

impl ReserveWork {
    /// fallocate the range (blocking: tens of microseconds to milliseconds).
    /// A failed reservation gives back what it allocated before failing
    /// (ext4 keeps a partial allocation): the range holds no data.
    pub fn run(&self) -> std::io::Result<Preallocation> {
        let (offset, length) = (self.from.0 - self.segment_base.0, self.to.0 - self.from.0);
        let reserved = segment::reserve(&self.file.file, &self.file.path, offset, length);
        if reserved.is_err()
            && let Err(error) = segment::release_range(&self.file.file, offset, length)
        {
            tracing::warn!(path = %self.file.path.display(), %error, "cannot give back the blocks of a failed reservation");
        }
        reserved
    }
}

/// Counters for benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogStats {
    pub writes: u64,
    pub fsyncs: u64,
    pub bytes_written: u64,
    pub frames_appended: u64,
    /// Sum over writes of the writes in flight once each was submitted:
    /// divided by `writes`, the average queue depth towards the device.
    pub queue_depth_sum: u64,
}

#[derive(Debug)]
struct InflightOp {
    token: u64,
    chunk_id: Option<u64>,
    data: Option<(LogPosition, LogPosition)>,
    /// Log position of the op buffer's first byte (writes only).
    chunk_base: LogPosition,
    sync: Option<SyncScope>,
    submitted: Instant,
    /// The write of this synced write already reported (`DoneStage::Written`).
    written_reported: bool,
}

/// What an fdatasync makes durable: what had been written when it was
/// issued, inside the one segment file it syncs.
#[derive(Debug)]
struct SyncScope {
    written: RangeWatermark,
    segment_base: LogPosition,
    segment_end: LogPosition,
    /// Where the durable end will be once it completes, if it was at the
    /// segment's start or beyond: the end of its linked write (linked only
    /// when everything before that write is written), or the written end
    /// when it was issued. What [`CommitLog::sync_target`] counts as covered.
    reaches: u64,
}

pub struct CommitLog {
    options: LogOptions,
    segments: VecDeque<Segment>,
    appender: Appender,
    io: Box<dyn LogIo>,
    inflight: Vec<InflightOp>,
    written: RangeWatermark,
    durable: RangeWatermark,
    due: DueQueue,
    append_end: LogPosition,
    oldest_unsubmitted: Option<Instant>,
    poisoned: Option<Arc<LogIoError>>,
    next_op_id: u64,
    reaped: Vec<LogOpDone>,
    stats: LogStats,
    /// Alignment of writes: 4096 for O_DIRECT, 1 for buffered.
    block_bytes: usize,
    /// (block start, written bytes of it) for partial blocks near the
    /// written end: see `keep_tail_block`.
    tail_blocks: VecDeque<(u64, Bytes)>,
    /// The newest frames, for fetches near the end of the log.
    tail_cache: TailCache,
    /// Ends of appends whose producer waits for the fdatasync (due at once):
    /// how many each fdatasync releases is `sluice_log_fsync_waiters`.
    sync_waiters: VecDeque<u64>,
    /// The age roll (`segment.ms`): wall-clock ms of the active segment's
    /// first frame, if it holds any (after a restart, the segment file's
    /// last write, which is no earlier).
    active_first_append_ms: Option<u64>,
    /// The smallest `segment.ms` among the partitions written to the
    /// active segment; `u64::MAX` before any.
    active_roll_after_ms: u64,
    /// Disk space reserved ahead of the active segment's writes.
    reservation: Reservation,
    /// The append end at which the next sync by bytes is forced
    /// (`sync_interval_bytes` past the last one).
    sync_by_bytes_at: u64,
    /// Wall-clock ms of the active segment's newest frame (from the file's
    /// last write at recovery); `None` while it holds none. The active
    /// segment's own last write time moves at every flush, frames or not.
    active_last_append_ms: Option<u64>,
    /// The failpoint `log_partial_writes_wait` (debug builds): a partial
    /// chunk goes only at the flush interval or a durability deadline.
    partial_writes_wait: bool,
    /// The next segment, made ahead off the shard (`segment_ahead.rs`).
    ahead: Option<SegmentAhead>,
    /// The base of the segment being made ahead, while that work is out.
    ahead_out: Option<LogPosition>,
    /// A base whose making ahead failed: its roll makes it in line.
    ahead_failed: Option<LogPosition>,
}

impl CommitLog {
    /// Take over recovered `segments` (ascending, possibly empty) with valid
    /// data up to `end`, which is durable (recovery synced it).
    pub fn open(
        mut options: LogOptions,
        mut segments: VecDeque<Segment>,
        end: LogPosition,
        io: Box<dyn LogIo>,
    ) -> Result<CommitLog, SegmentError> {
        // Debug builds: the failpoint `log_partial_writes_wait` holds every
        // partly filled chunk for 300 ms, idle shard or not, so a test can
        // kill the broker while answered appends could still sit unwritten
        // (acks=1 must not be answered before its write).
        let partial_writes_wait = crate::failpoint::active("log_partial_writes_wait");
        if partial_writes_wait {
            options.flush_interval = Duration::from_millis(300);
        }
        let block_bytes = match options.write_mode {
            WriteMode::Direct => crate::config::DIRECT_IO_ALIGNMENT_BYTES as usize,
            WriteMode::Buffered => 1,
        };
        if segments.is_empty() {
            // Its first bytes are reserved below, like a recovered segment's.
            let (first, _) = Segment::create(
                &options.dir,
                end,
                options.segment_bytes,
                0,
                options.write_mode,
            )?;
            segment::sync_dir(&options.dir).map_err(|source| SegmentError::Create {
                path: options.dir.clone(),
                source,
            })?;
            segments.push_back(first);
        }
        let block = block_bytes as u64;
        if let Some(active) = segments
            .back_mut()
            .filter(|active| !active.size_bytes.is_multiple_of(block))
        {
            // Found by the breaker trial: a file shortened outside Sluice
            // (every written byte still in it) aborted the shard, since
            // writes go whole blocks at a time.
            let aligned = active.size_bytes.next_multiple_of(block);
            tracing::warn!(segment = %active.path.display(), size_bytes = active.size_bytes, aligned, "the last commit-log segment's length is not a multiple of the I/O block (the file was shortened outside Sluice); extending it with zeros");
            let extended = active
                .writer
                .file
                .set_len(aligned)
                .and_then(|()| active.writer.file.sync_all());
            extended.map_err(|source| SegmentError::Preallocate {
                path: active.path.clone(),
                size_bytes: aligned,
                source,
            })?;
            active.size_bytes = aligned;
        }
        let mut appender = Appender::new(options.chunk_bytes, block_bytes, options.write_buffers);
        let active = segments.back().expect("at least one segment");
        assert!(
            active.base <= end && end <= active.end(),
            "end {end} outside the last segment"
        );
        assert!(
            active.size_bytes > 0,
            "the active segment has room: a roll from a zero-byte one would recreate its name"
        );
        let active_first_append_ms = (end > active.base).then(|| active.last_write_ms());
        let mut tail_blocks = VecDeque::new();
        if end < active.end() {
            let preload = read_partial_block(active, end, block_bytes)?;
            appender.start_at(place_of(active), end, &preload);
            if !preload.is_empty() {
                let block_start = end.0 - preload.len() as u64;
                tail_blocks.push_back((block_start, Bytes::from(preload)));
            }
            // Recovery read the tail through the page cache; those pages
            // must not outlive the O_DIRECT rewrites that follow.
            drop_cached_pages(active);
        }
        let reservation = reserve_at_open(active, end, options.reserve_max_bytes)?;
        let sync_by_bytes_at = end.0.saturating_add(options.sync_interval_bytes);
        crate::failpoint::journal_durable_end(&options.dir, end.0);
        let tail_cache = TailCache::new(options.tail_cache_bytes);
        Ok(CommitLog {
            written: RangeWatermark::new(end.0),
            durable: RangeWatermark::new(end.0),
            options,
            segments,
            appender,
            io,
            inflight: Vec::new(),
            due: DueQueue::default(),
            append_end: end,
            oldest_unsubmitted: None,
            poisoned: None,
            next_op_id: 0,
            reaped: Vec::new(),
            stats: LogStats::default(),
            block_bytes,
            tail_blocks,
            tail_cache,
            sync_waiters: VecDeque::new(),
            active_first_append_ms,
            active_roll_after_ms: u64::MAX,
            reservation,
            sync_by_bytes_at,
            active_last_append_ms: active_first_append_ms,
            partial_writes_wait,
            ahead: None,
            ahead_out: None,
            ahead_failed: None,
        })
    }

    /// Buffer a frame made of `parts`; returns its position. `durable_by` is
    /// when it must be fsynced (now for acks=all), `None` for never forced.
    pub fn append_frame(
        &mut self,
        parts: &[&[u8]],
        durable_by: Option<Instant>,
        now: Instant,
    ) -> Result<LogPosition, LogAppendError> {
        if let Some(cause) = &self.poisoned {
            return Err(LogAppendError::Poisoned(Arc::clone(cause)));
        }
        let frame_bytes: usize = parts.iter().map(|part| part.len()).sum();
        assert!(
            frame_bytes as u64 <= self.options.segment_bytes,
            "frame larger than a segment"
        );
        let needs_roll = self.append_end.0 + frame_bytes as u64 > self.active_segment().end().0;
        let (position, segment_end) = if needs_roll {
            let next = self.active_segment().end();
            (next, next.plus(self.options.segment_bytes))
        } else {
            (self.append_end, self.active_segment().end())
        };
        let needed = if needs_roll {
            Appender::buffers_for_fresh(
                self.options.chunk_bytes,
                position,
                frame_bytes,
                segment_end,
            )
        } else {
            self.appender
                .buffers_needed(position, frame_bytes, segment_end)
        };
        if needed > self.appender.free_buffers() {
            return Err(LogAppendError::NoBufferSpace { frame_bytes });
        }
        if needs_roll {
            self.roll(frame_bytes as u64)?;
        } else {
            self.admit_reserved(position, frame_bytes)?;
        }
        let place = place_of(self.active_segment());
        self.appender.copy(&place, position, parts);
        self.tail_cache.push(position, parts);
        self.append_end = position.plus(frame_bytes as u64);
        if let Some(due) = durable_by {
            self.due.push(self.append_end.0, due);
            if due <= now {
                self.sync_waiters.push_back(self.append_end.0);
            }
        }
        self.force_sync_by_bytes(now);
        self.oldest_unsubmitted.get_or_insert(now);
        self.stats.frames_appended += 1;
        assert!(
            position.plus(frame_bytes as u64) == self.append_end,
            "a frame ends at the append end"
        );
        self.assert_invariants();
        Ok(position)
    }

    /// Sync by bytes as well as by time (issue 19 item 4): once
    /// `sync_interval_bytes` are appended and not durable, the next flush
    /// links an fdatasync whatever the appends' `flush.ms` deadlines say,
    /// so acks=1 data is never a whole `flush.ms` of writes from durable,
    /// and no single fdatasync must commit that much at once (its length is
    /// what acks=1 producers see as their latency tail).
    fn force_sync_by_bytes(&mut self, now: Instant) {
        let unsynced = self.append_end.0.saturating_sub(self.durable.end());
        if self.append_end.0 >= self.sync_by_bytes_at
            && unsynced >= self.options.sync_interval_bytes
        {
            self.due.push(self.append_end.0, now);
            self.sync_by_bytes_at = self
                .append_end
                .0
                .saturating_add(self.options.sync_interval_bytes);
        }
    }

    /// Refuse, for now, a frame at `position` whose write would pass the
    /// active segment's reserved space: a reservation is asked for (it
    /// waits), or the last one failed (refused, retriable).
    fn admit_reserved(
        &mut self,
        position: LogPosition,
        frame_bytes: usize,
    ) -> Result<(), LogAppendError> {
        let active_end = self.active_segment().end();
        let block = crate::config::DIRECT_IO_ALIGNMENT_BYTES as u64;
        let write_end = position
            .plus(frame_bytes as u64)
            .0
            .next_multiple_of(block)
            .min(active_end.0);
        let waited_before = self.reservation.waited_on();
        match self.reservation.admit(LogPosition(write_end)) {
            Admit::Ready => Ok(()),
            Admit::Wait => {
                if !waited_before {
                    self.options.metrics.reserve_waits.increment(1);
                }
                Err(LogAppendError::AwaitingReservation { frame_bytes })
            }
            Admit::Failed(from, to, source) => {
                Err(LogAppendError::Reserve(SegmentError::Reserve {
                    path: self.active_segment().path.clone(),
                    from,
                    to,
                    source,
                }))
            }
        }
    }

    /// The next reservation of disk space ahead of the writes, if one is
    /// due; the caller runs it off the shard thread and hands the outcome
    /// to [`CommitLog::reservation_done`]. At most one is out at a time.
    pub fn reservation_due(&mut self) -> Option<ReserveWork> {
        if self.poisoned.is_some() {
            return None;
        }
        let (segment_base, from, to) = self.reservation.due(self.append_end)?;
        let active = self.active_segment();
        assert!(active.base == segment_base && to <= active.end());
        Some(ReserveWork {
            segment_base,
            from,
            to,
            file: Arc::clone(&active.writer),
        })
    }

    /// The reservation `work` finished with `result`. Appends waiting for
    /// it may go on (or get its error).
    pub fn reservation_done(&mut self, work: &ReserveWork, result: std::io::Result<Preallocation>) {
        if let Err(error) = &result
            && let Some(failed) = RESERVE_FAILURES.record(crate::log_throttle::monotonic_ms())
        {
            tracing::warn!(path = %work.file.path.display(), from = work.from.0, to = work.to.0, %error, failed, "cannot reserve disk space ahead of the commit log's writes; appends that need it are refused (retriable) until a later try succeeds (`failed` counts failures since the last such line)");
        }
        let result = result.map(|_| ());
        self.reservation
            .done(work.segment_base, work.from, work.to, result);
    }

    /// The next segment to make ahead, off the shard thread, once the active
    /// one is half written and none is made or being made; the caller runs
    /// it ([`SegmentAheadWork::run`]) and hands the outcome to
    /// [`CommitLog::segment_ahead_done`].
    pub fn segment_ahead_due(&mut self) -> Option<SegmentAheadWork> {
        if self.poisoned.is_some()
            || self.ahead.is_some()
            || self.ahead_out.is_some()
            || !self.io.makes_segments_ahead()
        {
            return None;
        }
        let active = self.active_segment();
        let (base, end) = (active.base, active.end());
        if self.ahead_failed == Some(end) || self.append_end.0 < base.0 + (end.0 - base.0) / 2 {
            return None;
        }
        let segment_bytes = self.options.segment_bytes;
        self.ahead_out = Some(end);
        Some(SegmentAheadWork {
            dir: self.options.dir.clone(),
            base: end,
            size_bytes: segment_bytes,
            reserve_bytes: self.reservation.first_bytes(0).min(segment_bytes),
            mode: self.options.write_mode,
        })
    }

    /// The segment `work` made ahead is ready (or failed: its roll makes
    /// it in line). Rolls wait while it is out, so it is still the next.
    pub fn segment_ahead_done(
        &mut self,
        work: &SegmentAheadWork,
        result: Result<SegmentAhead, SegmentError>,
    ) {
        assert_eq!(
            self.ahead_out,
            Some(work.base),
            "one segment made ahead at a time"
        );
        self.ahead_out = None;
        match result {
            Ok(ahead) if self.poisoned.is_none() => {
                assert!(
                    ahead.segment.base == self.active_segment().end(),
                    "no roll while the next segment is made ahead"
                );
                self.ahead = Some(ahead);
            }
            // A poisoned log appends nothing more; recovery removes the
            // file as a trailing segment without frames.
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot make the next segment ahead; the roll makes it on the shard thread");
                self.ahead_failed = Some(work.base);
            }
        }
    }

    /// The state machine's invariants, checked after every change. Cheap:
    /// comparisons and one short scan of the ops in flight.
    fn assert_invariants(&self) {
        let (durable, written, appended) =
            (self.durable.end(), self.written.end(), self.append_end.0);
        assert!(
            durable <= written && written <= appended,
            "watermarks out of order: durable {durable}, written {written}, appended {appended}"
        );
        let active = self.active_segment();
        assert!(
            active.base <= self.append_end && self.append_end <= active.end(),
            "append end {} outside the active segment {}..{}",
            self.append_end,
            active.base,
            active.end()
        );
        assert!(
            self.writes_inflight() <= self.options.inflight_writes_max,
            "{} writes in flight, limit {}",
            self.writes_inflight(),
            self.options.inflight_writes_max
        );
        assert!(
            self.inflight.len()
                <= self.options.inflight_writes_max + LOG_SYNCS_INFLIGHT_MAX as usize,
            "{} ops in flight",
            self.inflight.len()
        );
        assert!(self.tail_blocks.len() <= TAIL_BLOCKS_KEPT_MAX);
        assert!(
            self.append_end <= self.reservation.end(),
            "appended past the reserved space: append end {}, reserved to {}",
            self.append_end,
            self.reservation.end()
        );
        // Finished ops wait in the device for the next reap, so the device
        // may hold fewer than the log tracks, never more.
        assert!(
            self.io.inflight() <= self.inflight.len(),
            "the device holds {} ops, the log tracks {}",
            self.io.inflight(),
            self.inflight.len()
        );
    }

    /// Start the next segment; the unused tail of the current one is skipped
    /// (it stays zero, and counts as written and durable: no frame is there).
    ///
    /// A failure to create or reserve the file (ENOSPC) is retriable: the
    /// file is gone and the next append tries again. A failed directory
    /// fsync is not: the new file's entry may not survive a power cut, so
    /// the file is removed and the log poisoned, like any failed fsync.
    ///
    /// The new file gets the current reservation step of disk space, or
    /// room for its first frame of `first_frame_bytes` if that is more.
    fn roll(&mut self, first_frame_bytes: u64) -> Result<(), LogAppendError> {
        let next_base = self.active_segment().end();
        assert!(
            next_base > self.active_segment().base,
            "a roll creates a file past the active segment, never under its name"
        );
        if self.ahead_out == Some(next_base) {
            // Being made ahead: making it here too would race that work.
            return Err(LogAppendError::AwaitingReservation {
                frame_bytes: first_frame_bytes as usize,
            });
        }
        let reserve_bytes = self
            .reservation
            .first_bytes(first_frame_bytes)
            .min(self.options.segment_bytes);
        if let Some(ahead) = self.ahead.take() {
            assert!(
                ahead.segment.base == next_base,
                "made ahead at the active end"
            );
            return self.roll_into_ahead(ahead, reserve_bytes);
        }
        let (segment, preallocation) = Segment::create(
            &self.options.dir,
            next_base,
            self.options.segment_bytes,
            reserve_bytes,
            self.options.write_mode,
        )?;
        if let Err(error) = self.io.sync_dir(&self.options.dir) {
            let cause = LogIoError::new("fsync of the log directory", &segment.writer, 0, 0, error);
            if let Err(error) = std::fs::remove_file(&segment.path) {
                tracing::error!(path = %segment.path.display(), %error, "cannot remove the segment whose creation failed");
            }
            self.poison(cause);
            let cause = self.poisoned.clone().expect("just poisoned");
            return Err(LogAppendError::Poisoned(cause));
        }
        self.start_next_segment(segment, preallocation, reserve_bytes);
        Ok(())
    }

    /// Roll into the segment made ahead, first reserving what a first
    /// frame larger than its reserved step needs (a failure, ENOSPC, keeps
    /// it for the next try and is retriable like a failed creation).
    fn roll_into_ahead(
        &mut self,
        ahead: SegmentAhead,
        reserve_bytes: u64,
    ) -> Result<(), LogAppendError> {
        let mut reserved = ahead.reserve_bytes;
        if reserve_bytes > reserved && ahead.preallocation != Preallocation::Sparse {
            let writer = &ahead.segment.writer;
            if let Err(source) = segment::reserve(&writer.file, &writer.path, 0, reserve_bytes) {
                let error = SegmentError::Preallocate {
                    path: ahead.segment.path.clone(),
                    size_bytes: reserve_bytes,
                    source,
                };
                self.ahead = Some(ahead);
                return Err(error.into());
            }
            reserved = reserve_bytes;
        }
        self.start_next_segment(ahead.segment, ahead.preallocation, reserved);
        Ok(())
    }

    /// Make `segment`, durable in the log's directory with its first
    /// `reserve_bytes` reserved, the active one.
    fn start_next_segment(
        &mut self,
        segment: Segment,
        preallocation: Preallocation,
        reserve_bytes: u64,
    ) {
        let next_base = segment.base;
        log_preallocation(&segment, preallocation);
        self.appender.seal_active();
        self.written.mark(self.append_end.0, next_base.0);
        self.durable.mark(self.append_end.0, next_base.0);
        self.append_end = next_base;
        self.active_last_append_ms = None;
        self.active_first_append_ms = None;
        self.active_roll_after_ms = u64::MAX;
        assert!(
            segment.base == self.active_segment().end(),
            "segments are contiguous"
        );
        let reserved_end = match preallocation {
            Preallocation::Sparse => segment.end(),
            _ => next_base.plus(reserve_bytes),
        };
        self.reservation
            .start_segment(next_base, segment.end(), reserved_end);
        self.segments.push_back(segment);
    }

    /// Start the next segment now, because the log this one copies started
    /// one here (Cluster II: a follower's segments begin where its
    /// leader's do, so positions match). Releases the unused rest of the
    /// active segment as an age roll does. Same errors as a roll by size.
    pub fn roll_as_copied(&mut self) -> Result<(), LogAppendError> {
        if self.active_first_append_ms.is_some() {
            self.roll_for_age()
        } else {
            self.roll(0)
        }
    }

    /// Whether the active segment holds a frame (since its creation, or
    /// found there at recovery): what an age roll needs.
    pub fn active_holds_frames(&self) -> bool {
        self.active_first_append_ms.is_some()
    }

    /// Let the next segment reserve the smallest step first, the steps
    /// growing again as a fresh log's do: for a roll on a nearly full disk.
    pub fn restart_reservation_steps(&mut self) {
        self.reservation.restart_steps();
    }

    /// Wall-clock ms at which the active segment's newest frame went in
    /// (the file's last write for frames found at recovery); `None` while
    /// it holds none.
    pub fn active_last_append_ms(&self) -> Option<u64> {
        self.active_last_append_ms
    }

    /// Where the active segment ends: the next segment's base.
    pub fn active_end(&self) -> LogPosition {
        self.active_segment().end()
    }

    /// Record that a frame of a partition with `segment_ms` was appended at
    /// wall-clock `now_ms` (the age roll's bookkeeping).
    pub fn note_append(&mut self, segment_ms: u64, now_ms: u64) {
        self.active_first_append_ms.get_or_insert(now_ms);
        self.active_last_append_ms = Some(now_ms);
        self.active_roll_after_ms = self.active_roll_after_ms.min(segment_ms);
    }

    /// A partition with frames in the active segment now has `segment_ms`
    /// (its topic's `segment.ms` was altered): the age roll honours the
    /// smaller value from now on, as if the frames had gone in under it.
    pub fn note_segment_ms(&mut self, segment_ms: u64) {
        if self.active_first_append_ms.is_some() {
            self.active_roll_after_ms = self.active_roll_after_ms.min(segment_ms);
        }
    }

    /// Whether the active segment is due for its age roll at `now_ms`
    /// before a frame of a partition with `segment_ms` goes in: it holds a
    /// frame older than the smallest `segment.ms` of the partitions written
    /// to it, that one included (`u64::MAX` for none, as the retention task
    /// asks), and at least `age_roll_min_ms` old.
    pub fn age_roll_due(&self, now_ms: u64, segment_ms: u64) -> bool {
        let roll_after_ms = self
            .active_roll_after_ms
            .min(segment_ms)
            .max(self.options.age_roll_min_ms);
        self.active_first_append_ms
            .is_some_and(|first| now_ms.saturating_sub(first) >= roll_after_ms)
    }

    /// Roll the active segment for its age (`segment.ms`), so that
    /// retention can delete it whole once its data expires: the next frame
    /// starts a new segment. The unused rest of the old one stays zero, as
    /// after any roll, and its blocks are given back to the file system
    /// (a preallocated segment would otherwise hold its full size on disk
    /// until deleted). Same errors as a roll by size.
    pub fn roll_for_age(&mut self) -> Result<(), LogAppendError> {
        assert!(
            self.active_first_append_ms.is_some(),
            "an age roll needs a frame in the active segment"
        );
        let tail_from = self.append_end;
        self.roll(0)?;
        let rolled = &self.segments[self.segments.len() - 2];
        assert!(rolled.contains(tail_from) || tail_from == rolled.end());
        match segment::release_tail(rolled, tail_from) {
            Ok(released) => tracing::debug!(
                segment = %rolled.path.display(),
                released,
                "rolled the active segment for its age (segment.ms)"
            ),
            Err(error) => tracing::warn!(
                segment = %rolled.path.display(),
                %error,
                "cannot give back the unused end of a segment rolled for its age; it keeps its \
                 disk space until retention deletes it"
            ),
        }
        Ok(())
    }

    /// Submit what the group-commit policy says is due. `idle`: the shard has
    /// nothing else to do, so partial chunks go now.
    pub fn flush(&mut self, now: Instant, idle: bool) {
        if self.poisoned.is_some() {
            return;
        }
        let sync_now = self.due.earliest().is_some_and(|due| due <= now);
        self.submit_full_chunks(now);
        let interval_passed = self
            .oldest_unsubmitted
            .is_some_and(|oldest| now >= oldest + self.options.flush_interval);
        // A partly filled chunk goes out at once when someone waits for
        // durability (acks=all, or `flush.ms` passed), even beside writes in
        // flight: a batch spanning two chunks then has both writes out
        // together (and one fdatasync once both are written). Otherwise it
        // goes when the device has nothing to do and the shard is idle, or
        // when the latency bound passed; while writes are in flight it keeps
        // filling, since their completion brings the next round with more
        // data per write.
        let device_idle = self.writes_inflight() == 0;
        let idle_write = device_idle && idle && !self.partial_writes_wait;
        let partial_due = sync_now || idle_write || interval_passed;
        if partial_due
            && self.writes_inflight() < self.options.inflight_writes_max
            && let Some(write) = self.appender.take_active_write()
        {
            let target = self.sync_target(now);
            self.submit_write(write, target);
        }
        if let Some(target) = self.sync_target(now)
            && self.written.end() > self.durable.end()
        {
            self.sync_first_pending_segment(target);
        }
        if self.appender.unsubmitted_bytes() == 0 {
            self.oldest_unsubmitted = None;
        }
        if let Err(error) = self.io.flush_submissions() {
            self.poison_with("io_uring_enter", error);
        }
        self.active_segment().touch(segment::now_ms());
        self.assert_invariants();
    }

    /// Submit every full chunk the queue depth allows; full chunks gain
    /// nothing by waiting. The flusher calls this straight after reaping, so
    /// a freed queue slot is refilled before other tasks run.
    pub fn submit_full_chunks(&mut self, now: Instant) {
        if self.poisoned.is_some() {
            return;
        }
        let mut submitted = false;
        while self.writes_inflight() < self.options.inflight_writes_max {
            let Some(write) = self.appender.take_sealed_write() else {
                break;
            };
            let target = self.sync_target(now);
            self.submit_write(write, target);
            submitted = true;
        }
        if submitted && let Err(error) = self.io.flush_submissions() {
            self.poison_with("io_uring_enter", error);
        }
    }

    /// The log end the next fdatasync must reach (issue 19 item 5): the end
    /// of the first append whose durability deadline has passed and that no
    /// fdatasync in flight on the first segment not yet durable will cover;
    /// `None` when nothing is due.
    ///
    /// One fdatasync per target, issued once everything up to it is
    /// written: a batch spanning two chunks costs one device flush, not one
    /// per chunk (each flush is a write-cache flush of the whole device).
    fn sync_target(&self, now: Instant) -> Option<u64> {
        let durable = self.durable.end();
        let covered = self
            .inflight
            .iter()
            .filter_map(|op| op.sync.as_ref())
            .filter(|scope| scope.segment_base.0 <= durable && durable < scope.segment_end.0)
            .map(|scope| scope.reaches)
            .fold(durable, u64::max);
        self.due.first_due_beyond(covered, now)
    }

    /// Submit `write`, with an fdatasync linked to it when it reaches the
    /// sync `target` (or its segment's end) and everything before it is
    /// written, so the fdatasync covers all of it. Otherwise a standalone
    /// fdatasync follows once the writes up to the target are done
    /// (`sync_first_pending_segment`): an fdatasync linked to a write whose
    /// predecessor is still in flight would not cover that predecessor.
    fn submit_write(&mut self, write: ChunkWrite, target: Option<u64>) {
        let ChunkWrite {
            chunk_id,
            mut op,
            data_start,
            data_end,
            segment: (segment_base, segment_end),
            chunk_base,
        } = write;
        assert!(
            segment_base <= data_start && data_start < data_end && data_end <= segment_end,
            "write {data_start}..{data_end} outside its segment {segment_base}..{segment_end}"
        );
        assert!(data_end <= self.append_end, "writing past the append end");
        let sync = target.is_some_and(|target| {
            data_end.0 >= target.min(segment_end.0) && self.written.end() >= data_start.0
        });
        op.sync = sync;
        let token = self.next_op_id << 1;
        self.next_op_id += 1;
        self.stats.writes += 1;
        self.stats.bytes_written += op.buf_range.len() as u64;
        self.stats.fsyncs += u64::from(sync);
        self.stats.queue_depth_sum += self.writes_inflight() as u64 + 1;
        self.inflight.push(InflightOp {
            token,
            chunk_id: Some(chunk_id),
            data: Some((data_start, data_end)),
            chunk_base,
            sync: sync.then(|| SyncScope {
                written: self.written.clone(),
                segment_base,
                segment_end,
                reaches: data_end.0,
            }),
            submitted: Instant::now(),
            written_reported: false,
        });
        self.submit_op(token, LogOp::Write(op));
    }

    /// Sync the segment holding the first byte that is written but not
    /// durable, once everything up to `target` (from `sync_target`, so no
    /// fdatasync in flight covers it) or that segment's end is written.
    /// fdatasync is per file: after a roll, the previous segment needs its
    /// own, and syncs linked to writes in the new segment never reach it.
    fn sync_first_pending_segment(&mut self, target: u64) {
        let first_pending = self.durable_end();
        // Deleted segments count as durable, so the first pending byte lies
        // in a segment that still exists.
        let Some(segment) = self.segment_at(first_pending) else {
            return;
        };
        let (file, segment_base, segment_end) =
            (Arc::clone(&segment.writer), segment.base, segment.end());
        let need = target.min(segment_end.0);
        let standalone_inflight = self
            .inflight
            .iter()
            .filter(|op| op.chunk_id.is_none())
            .count();
        // A target in a later segment leaves this one needing only its own
        // end: an fdatasync in flight that reaches it is enough.
        let covered = self.inflight.iter().any(|op| {
            op.sync
                .as_ref()
                .is_some_and(|scope| scope.segment_base == segment_base && scope.reaches >= need)
        });
        if covered
            || self.written.end() < need
            || standalone_inflight >= LOG_SYNCS_INFLIGHT_MAX as usize
        {
            // The next completion brings the next round.
            return;
        }
        let reaches = self.written.end().min(segment_end.0);
        let token = (self.next_op_id << 1) | SYNC_TOKEN_BIT;
        self.next_op_id += 1;
        self.stats.fsyncs += 1;
        match self.io.submit(token, LogOp::Sync { file }) {
            Ok(()) => self.inflight.push(InflightOp {
                token,
                chunk_id: None,
                data: None,
                chunk_base: LogPosition::ZERO,
                sync: Some(SyncScope {
                    written: self.written.clone(),
                    segment_base,
                    segment_end,
                    reaches,
                }),
                submitted: Instant::now(),
                written_reported: false,
            }),
            // Every slot is busy: the next round, after a completion, retries.
            Err(SubmitError::QueueFull(_)) => self.stats.fsyncs -= 1,
            Err(SubmitError::Failed(error)) => self.poison_with("submit", error),
        }
    }

    fn submit_op(&mut self, token: u64, op: LogOp) {
        match self.io.submit(token, op) {
            Ok(()) => {}
            // The ring has room for every write plus LOG_SYNCS_INFLIGHT_MAX
            // fdatasyncs, so a full queue for a write is a bug.
            Err(SubmitError::QueueFull(_)) => panic!("commit-log I/O queue full: ring undersized"),
            Err(SubmitError::Failed(error)) => self.poison_with("submit", error),
        }
    }

    /// Poison the log because `op` failed outside the device's own ops
    /// (submitting, or watching for completions).
    pub fn poison_with(&mut self, op: &'static str, error: std::io::Error) {
        let segment = self.active_segment();
        let cause = LogIoError::new(op, &segment.writer, 0, 0, error);
        self.poison(cause);
    }

    fn poison(&mut self, cause: LogIoError) {
        if self.poisoned.is_none() {
            tracing::error!(
                error = %cause,
                "commit log poisoned: no more appends are acknowledged; restart to recover"
            );
            self.poisoned = Some(Arc::new(cause));
        }
    }

    /// Collect finished I/O; returns true if a watermark advanced or the log
    /// became poisoned (waiters should look again).
    pub fn reap(&mut self) -> bool {
        let mut reaped = std::mem::take(&mut self.reaped);
        self.io.reap(&mut reaped);
        let written_before = self.written.end();
        let durable_before = self.durable.end();
        let poisoned_before = self.poisoned.is_some();
        for done in reaped.drain(..) {
            self.on_done(done);
        }
        self.reaped = reaped;
        self.due.satisfy(self.durable.end());
        assert!(
            self.poisoned.is_some()
                || (self.written.end() >= written_before && self.durable.end() >= durable_before),
            "watermarks never move back"
        );
        self.assert_invariants();
        self.written.end() != written_before
            || self.durable.end() != durable_before
            || self.poisoned.is_some() != poisoned_before
    }

    fn on_done(&mut self, done: LogOpDone) {
        let index = self
            .inflight
            .iter()
            .position(|op| op.token == done.token)
            .expect("completion for an op we submitted");
        if done.stage == DoneStage::Written {
            // The write of a synced write: its bytes are written (acks=1
            // answers may go) and its buffer is free; the op keeps its slot
            // until the fdatasync reports.
            let op = &mut self.inflight[index];
            assert!(
                op.sync.is_some() && !op.written_reported,
                "a written stage of a synced write, once"
            );
            op.written_reported = true;
            let (chunk_id, data, chunk_base) = (op.chunk_id, op.data, op.chunk_base);
            let buf = done.buf.expect("the written stage returns the buffer");
            if let (Some(chunk_id), Some((start, end))) = (chunk_id, data) {
                self.keep_tail_block(&buf, chunk_base, end);
                self.appender.complete(chunk_id, buf);
                if self.poisoned.is_none() {
                    self.written.mark(start.0, end.0);
                }
            }
            return;
        }
        let op = self.inflight.swap_remove(index);
        if let (Some(chunk_id), Some(buf)) = (op.chunk_id, done.buf) {
            if done.result.is_ok()
                && let Some((_, end)) = op.data
            {
                self.keep_tail_block(&buf, op.chunk_base, end);
            }
            self.appender.complete(chunk_id, buf);
        }
        if let Err(error) = done.result {
            self.poison(error);
        }
        if self.poisoned.is_some() {
            return;
        }
        if let Some((start, end)) = op.data
            && !op.written_reported
        {
            self.written.mark(start.0, end.0);
        }
        if let Some(scope) = &op.sync {
            let durable_before = self.durable.end();
            let (low, high) = (scope.segment_base.0, scope.segment_end.0);
            self.durable.merge_within(&scope.written, low, high);
            if let Some((start, end)) = op.data {
                self.durable.mark(start.0, end.0);
            }
            self.record_sync(&op, durable_before);
        }
    }

    /// Group-commit metrics of a finished fdatasync: its latency, the bytes
    /// it made durable, and the producers it released.
    fn record_sync(&mut self, op: &InflightOp, durable_before: u64) {
        let durable = self.durable.end();
        crate::failpoint::journal_durable_end(&self.options.dir, durable);
        let mut released = 0u32;
        while self.sync_waiters.front().is_some_and(|&end| end <= durable) {
            self.sync_waiters.pop_front();
            released += 1;
        }
        let metrics = &self.options.metrics;
        metrics
            .fsync_duration
            .record(op.submitted.elapsed().as_secs_f64());
        metrics.fsync_size.record((durable - durable_before) as f64);
        metrics.fsync_waiters.record(released);
    }

    /// Keep a copy of the written part of the block holding `end`, when that
    /// block is partial: it may be rewritten, so fetches of it are served
    /// from this copy, never through the page cache (see `final_end`).
    fn keep_tail_block(&mut self, buf: &AlignedBuf, chunk_base: LogPosition, end: LogPosition) {
        let block = self.block_bytes as u64;
        let block_start = end.0 / block * block;
        if block_start == end.0 {
            return;
        }
        let from = (block_start - chunk_base.0) as usize;
        let to = (end.0 - chunk_base.0) as usize;
        let copy = Bytes::copy_from_slice(&buf.as_slice()[from..to]);
        match self
            .tail_blocks
            .iter_mut()
            .find(|(start, _)| *start == block_start)
        {
            Some((_, kept)) if kept.len() >= copy.len() => {}
            Some((_, kept)) => *kept = copy,
            None => self.tail_blocks.push_back((block_start, copy)),
        }
        let final_end = self.final_end().0;
        self.tail_blocks
            .retain(|(start, _)| start + block > final_end);
        while self.tail_blocks.len() > TAIL_BLOCKS_KEPT_MAX {
            self.tail_blocks.pop_front();
        }
    }

    /// Bytes below this are in blocks that are never written again: they may
    /// be read through the page cache (sendfile/splice). Past it, up to the
    /// written end, lies a partial block an O_DIRECT rewrite may still touch.
    pub fn final_end(&self) -> LogPosition {
        let block = self.block_bytes as u64;
        LogPosition(self.written.end() / block * block)
    }

    /// The written bytes `[start, end)` of the partial block at the written
    /// end, from the copy kept at completion. `start >= final_end()`.
    pub fn tail_bytes(&self, start: LogPosition, end: LogPosition) -> Option<Bytes> {
        let block = self.block_bytes as u64;
        let block_start = start.0 / block * block;
        let (_, copy) = self
            .tail_blocks
            .iter()
            .find(|(kept, _)| *kept == block_start)?;
        let from = (start.0 - block_start) as usize;
        let to = (end.0 - block_start) as usize;
        (to <= copy.len()).then(|| copy.slice(from..to))
    }

    /// Bytes `[start, end)` from the tail cache, if one cached frame holds
    /// them (they are written once `end` is below the written end; callers
    /// ask for nothing past the high watermark).
    pub fn cached_bytes(&self, start: LogPosition, end: LogPosition) -> Option<Bytes> {
        self.tail_cache.get(start, end)
    }

    /// Memory the tail cache holds (`sluice_log_tail_cache_bytes`).
    pub fn tail_cache_bytes(&self) -> u64 {
        self.tail_cache.charged_bytes()
    }

    /// The capacity of a tail-cache arena to make ahead off the shard, if
    /// one is due (`TailCache::spare_due`); the flusher makes it with
    /// `tail_cache::prepare_arena` and returns it to
    /// [`CommitLog::tail_arena_done`].
    pub fn tail_arena_due(&mut self) -> Option<usize> {
        self.tail_cache.spare_due()
    }

    /// The arena [`CommitLog::tail_arena_due`] asked for (`None`: cancelled).
    pub fn tail_arena_done(&mut self, arena: Option<BytesMut>) {
        self.tail_cache.spare_done(arena);
    }

    /// Count fetched bytes by where they come from
    /// (`sluice_log_fetch_bytes_total{source}`).
    pub fn count_fetched(&self, memory_bytes: u64, disk_bytes: u64) {
        let metrics = &self.options.metrics;
        metrics.fetch_memory_bytes.increment(memory_bytes);
        metrics.fetch_disk_bytes.increment(disk_bytes);
    }

    /// When the flusher must run next even without new appends or completions.
    ///
    /// A deadline that already passed is returned only when no I/O is in
    /// flight. Otherwise the flush that just ran could not act on it (the
    /// chunk's write or the fdatasync is still out), and the next completion
    /// wakes the flusher anyway; returning it would make the flusher spin.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let interval = self
            .oldest_unsubmitted
            .map(|oldest| oldest + self.options.flush_interval);
        let deadline = match (interval, self.due.earliest()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        (deadline > now || self.inflight.is_empty()).then_some(deadline)
    }

    /// Force every appended byte towards durability at the next flush
    /// (shutdown, or an explicit sync).
    pub fn require_durable_now(&mut self, now: Instant) {
        if self.append_end.0 > self.durable.end() {
            self.due.push(self.append_end.0, now);
        }
    }

    pub fn ready_fd(&self) -> &crate::io::EventFd {
        self.io.ready_fd()
    }

    pub fn written_end(&self) -> LogPosition {
        LogPosition(self.written.end())
    }

    pub fn durable_end(&self) -> LogPosition {
        LogPosition(self.durable.end())
    }

    pub fn append_end(&self) -> LogPosition {
        self.append_end
    }

    pub fn poisoned(&self) -> Option<&Arc<LogIoError>> {
        self.poisoned.as_ref()
    }

    pub fn io_inflight(&self) -> usize {
        self.io.inflight()
    }

    pub fn stats(&self) -> LogStats {
        self.stats
    }

    fn writes_inflight(&self) -> usize {
        self.inflight
            .iter()
            .filter(|op| op.chunk_id.is_some())
            .count()
    }

    fn active_segment(&self) -> &Segment {
        self.segments.back().expect("the log always has a segment")
    }

    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &Segment> + ExactSizeIterator {
        self.segments.iter()
    }

    /// The segment holding `position`, if it still exists.
    pub fn segment_at(&self, position: LogPosition) -> Option<&Segment> {
        let index = self
            .segments
            .partition_point(|segment| segment.end() <= position);
        self.segments
            .get(index)
            .filter(|segment| segment.contains(position))
    }

    /// Position of the oldest byte still on disk.
    pub fn start(&self) -> LogPosition {
        self.segments
            .front()
            .expect("the log always has a segment")
            .base
    }

    /// Remove the oldest segment unless it is the active one; returns its range.
    /// Take the oldest of several segments out of the log (retention):
    /// its range counts as written and durable from now on. The caller
    /// removes its file, off the shard thread where it can: unlinking a
    /// written 1 GiB file takes 100-150 ms on ext4 (freeing its blocks),
    /// and the segment's descriptors go with it so that the last close,
    /// which frees them, happens there too.
    pub fn delete_oldest_segment(&mut self) -> Option<Segment> {
        if self.segments.len() < 2 {
            return None;
        }
        let oldest = self.segments.pop_front().expect("checked length");
        self.tail_cache.forget_below(oldest.end());
        // Its data is gone on purpose: nothing in it remains to be written or
        // fsynced, so waiters and the durable end must not wait for it.
        self.written.mark(oldest.base.0, oldest.end().0);
        self.durable.mark(oldest.base.0, oldest.end().0);
        self.due.satisfy(self.durable.end());
        self.assert_invariants();
        Some(oldest)
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }
}

fn place_of(segment: &Segment) -> ChunkPlace {
    ChunkPlace {
        file: Arc::clone(&segment.writer),
        segment_base: segment.base,
        segment_end: segment.end(),
    }
}

/// The bytes from the start of `end`'s block up to `end`: a direct-mode
/// rewrite of that block must carry them.
fn read_partial_block(
    segment: &Segment,
    end: LogPosition,
    block_bytes: usize,
) -> Result<Vec<u8>, SegmentError> {
    let offset = segment.file_offset(end) as usize;
    let block_start = align_down(offset, block_bytes);
    let mut preload = vec![0u8; offset - block_start];
    let read = segment
        .read_at(segment.base.plus(block_start as u64), &mut preload)
        .map_err(|source| SegmentError::Open {
            path: segment.path.clone(),
            source,
        })?;
    if read != preload.len() {
        return Err(SegmentError::Open {
            path: segment.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "segment ends inside its last block (read {read} of {} bytes)",
                    preload.len()
                ),
            ),
        });
    }
    Ok(preload)
}

/// Reserve the first [`RESERVE_MIN_BYTES`] past `end` (the recovered or
/// fresh log's end) in the active segment, on the opening thread. A full
/// disk (ENOSPC, EDQUOT) does not stop the shard from opening, since
/// retention must run to free space: nothing past the block holding `end`
/// counts as reserved, so the first append past it asks again and is
/// refused (retriable) while the disk stays full. Any other error fails the
/// open, as a failed segment creation does.
fn reserve_at_open(
    active: &Segment,
    end: LogPosition,
    step_max: u64,
) -> Result<Reservation, SegmentError> {
    let block = crate::config::DIRECT_IO_ALIGNMENT_BYTES as u64;
    let from = active
        .base
        .plus(active.file_offset(end).next_multiple_of(block))
        .min(active.end());
    let to = from.plus(RESERVE_MIN_BYTES).min(active.end());
    let offset = active.file_offset(from);
    let reserved_end = match segment::reserve(
        &active.writer.file,
        &active.path,
        offset,
        to.0 - from.0,
    ) {
        Ok(Preallocation::Sparse) => active.end(),
        Ok(preallocation) => {
            log_preallocation(active, preallocation);
            to
        }
        Err(error) if matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
            tracing::warn!(path = %active.path.display(), %error, "cannot reserve disk space at the commit log's end; appends are refused (retriable) until a reservation succeeds");
            from
        }
        Err(source) => {
            return Err(SegmentError::Reserve {
                path: active.path.clone(),
                from: offset,
                to: offset + (to.0 - from.0),
                source: Arc::new(source),
            });
        }
    };
    Ok(Reservation::new(
        active.base,
        active.end(),
        reserved_end,
        step_max,
    ))
}

fn drop_cached_pages(segment: &Segment) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise takes an open descriptor and integer arguments.
    unsafe { libc::posix_fadvise(segment.reader.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn log_preallocation(segment: &Segment, preallocation: Preallocation) {
    match preallocation {
        Preallocation::WrittenZeroes => tracing::debug!(
            path = %segment.path.display(),
            "segment preallocated with FALLOC_FL_WRITE_ZEROES (written extents)"
        ),
        Preallocation::Unwritten => tracing::debug!(
            path = %segment.path.display(),
            "segment preallocated with fallocate (unwritten extents; fdatasync also commits extent conversion)"
        ),
        Preallocation::Sparse => tracing::debug!(
            path = %segment.path.display(),
            "segment created sparse (no fallocate on this file system)"
        ),
    }
}
