//! Copying a shard's commit log frame for frame: the storage side of
//! replication (issue 16; ARCHITECTURE.md, "Cluster II design").
//!
//! A follower's store holds the same frames at the same positions as its
//! leader's. [`ShardStore::read_log`] hands out the leader's written frames
//! from a position, whole and exactly as its log holds them;
//! [`ShardStore::append_replicated`] appends them to the follower's log at
//! those positions, checks each frame as recovery does, and indexes each
//! batch at the offsets the leader gave it, so consume queues, offsets and
//! producer state are the leader's by construction (the batch bytes stay the
//! producer's, so fetch from a follower is zero-copy too). Segments are
//! fixed-size and contiguous, and every segment begins with a frame: when a
//! read finds nothing more in a segment the leader has moved past, it
//! continues at the next segment's base, and the follower rolls there.

use std::time::Instant;

use thiserror::Error;

use super::commit_log::CommitLog;
use super::consume_queue::QueueError;
use super::frame::{FRAME_HEADER_BYTES, FRAME_PREFIX_BYTES, FrameHeader, FrameKind};
use super::partition::IndexedBatch;
use super::segment::{self, Segment};
use super::segment_reader::{CheckedFrame, check_frame};
use super::shard_store::ShardStore;
use super::store_errors::{AppendError, TryAppendError};
use crate::ids::{LogPosition, Offset, PartitionId};

/// The most bytes one [`ShardStore::read_log`] returns, whatever the caller
/// asks (a single bigger frame still goes whole): the buffer is sized by
/// the request, which may come from the network.
pub const READ_BYTES_MAX: usize = 16 << 20;

/// Frames read from a leader's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRead {
    /// Where the first frame starts: the position asked for, or the next
    /// segment's base when nothing follows that position in its segment.
    pub position: LogPosition,
    /// Whole frames, back to back, all in one segment (empty when nothing
    /// is written past the position yet).
    pub frames: Vec<u8>,
}

impl LogRead {
    /// Where the last frame ends.
    pub fn end(&self) -> LogPosition {
        self.position.plus(self.frames.len() as u64)
    }
}

/// Why frames cannot be read from a position.
#[derive(Debug, Error)]
pub enum LogReadError {
    #[error("position {requested} is before the log start {log_start}")]
    BeforeLogStart {
        requested: LogPosition,
        log_start: LogPosition,
    },
    #[error("position {requested} is past the written end of the log {written}")]
    PastEnd {
        requested: LogPosition,
        written: LogPosition,
    },
    #[error("no frame starts at position {position}: {reason}")]
    NotAFrame {
        position: LogPosition,
        reason: String,
    },
    #[error("cannot read the log at {position}: {source}")]
    Io {
        position: LogPosition,
        #[source]
        source: std::io::Error,
    },
}

/// Why copied frames cannot be appended.
#[derive(Debug, Error)]
pub enum ReplicaAppendError {
    #[error(
        "the frames start at {offered} but this log ends at {end} (its active segment at \
         {active_end}): the logs diverge"
    )]
    Gap {
        offered: LogPosition,
        end: LogPosition,
        active_end: LogPosition,
    },
    #[error("the frame at {position} is not sound: {reason}")]
    BadFrame {
        position: LogPosition,
        reason: String,
    },
    #[error("the frame at {position} is for {partition}, which this store does not hold")]
    UnknownPartition {
        position: LogPosition,
        partition: PartitionId,
    },
    #[error(
        "the batch at {position} starts at offset {base_offset}, but {partition} is at offset \
         {next_offset}: the logs diverge"
    )]
    OffsetMismatch {
        position: LogPosition,
        partition: PartitionId,
        base_offset: i64,
        next_offset: Offset,
    },
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// A copied append that could not go in this time.
enum TryCopyError {
    NoBufferSpace,
    Fatal(ReplicaAppendError),
}

impl From<ReplicaAppendError> for TryCopyError {
    fn from(error: ReplicaAppendError) -> TryCopyError {
        TryCopyError::Fatal(error)
    }
}

impl ShardStore {
    /// Where this log starts (retention deleted what was before) and each
    /// partition's offset there: the base offset of its first indexed
    /// batch at or past that position, else its next offset. A copy
    /// started again at this position continues each partition from there
    /// ([`crate::storage::truncate::restart_closed`]).
    pub fn offsets_at_log_start(
        &self,
    ) -> Result<(LogPosition, Vec<(PartitionId, Offset)>), QueueError> {
        let state = self.state.borrow();
        let start = state.log.start();
        let mut offsets = Vec::with_capacity(state.partitions.len());
        for (id, partition) in &state.partitions {
            let first = partition.queue.count_below(start)?;
            let offset = partition
                .queue
                .get(first)?
                .map_or(partition.next_offset, |entry| entry.base_offset);
            offsets.push((*id, offset));
        }
        Ok((start, offsets))
    }

    /// Whole frames of this log from `from` (a frame boundary: where a
    /// follower's copy ends), at most `max_bytes` (capped at
    /// [`READ_BYTES_MAX`]) of them but at least one when one is written, all
    /// in one segment, never past the written end.
    /// Errors for a position outside the log or one where no frame starts.
    pub fn read_log(&self, from: LogPosition, max_bytes: usize) -> Result<LogRead, LogReadError> {
        let state = self.state.borrow();
        let log = &state.log;
        let written = log.written_end();
        if from < log.start() {
            return Err(LogReadError::BeforeLogStart {
                requested: from,
                log_start: log.start(),
            });
        }
        if from > written {
            return Err(LogReadError::PastEnd {
                requested: from,
                written,
            });
        }
        let empty = |position| LogRead {
            position,
            frames: Vec::new(),
        };
        if from == written {
            return Ok(empty(from));
        }
        let segment = log
            .segment_at(from)
            .expect("a written position below the written end is in a segment");
        let at = if self.nothing_follows(log, segment, from)? {
            segment.end()
        } else {
            from
        };
        if at >= written {
            return Ok(empty(from));
        }
        let segment = log
            .segment_at(at)
            .expect("the next segment holds the written data past the previous one");
        let payload_len_max = self.options.storage.segment_bytes - FRAME_HEADER_BYTES as u64;
        let limit = written.min(segment.end());
        let wanted = max_bytes.clamp(FRAME_PREFIX_BYTES, READ_BYTES_MAX);
        let mut to = limit.min(at.plus(wanted as u64));
        let mut bytes = log_bytes(log, segment, at, to)?;
        let mut end = 0usize;
        loop {
            let rest = &bytes[end..];
            if rest.len() < FRAME_PREFIX_BYTES {
                break;
            }
            let header = match FrameHeader::decode(rest, payload_len_max) {
                Ok(header) => header,
                Err(error) if end == 0 => {
                    return Err(LogReadError::NotAFrame {
                        position: at,
                        reason: error.to_string(),
                    });
                }
                // A damaged frame further on: the next read starts there
                // and reports it.
                Err(_) => break,
            };
            let frame_len = header.frame_len() as usize;
            if rest.len() < frame_len {
                let whole = at.plus((end + frame_len) as u64);
                // The first frame is bigger than `max_bytes`: it goes alone.
                if end == 0 && whole <= limit {
                    to = whole;
                    bytes = log_bytes(log, segment, at, to)?;
                    end = frame_len;
                }
                break;
            }
            end += frame_len;
        }
        bytes.truncate(end);
        Ok(LogRead {
            position: at,
            frames: bytes,
        })
    }

    /// Whether no frame follows `at` in `segment` because the log moved on
    /// to the next segment (a roll leaves the rest of a segment zero).
    fn nothing_follows(
        &self,
        log: &CommitLog,
        segment: &Segment,
        at: LogPosition,
    ) -> Result<bool, LogReadError> {
        if segment.end() > log.append_end() {
            return Ok(false);
        }
        if at.plus(FRAME_PREFIX_BYTES as u64) > segment.end() {
            return Ok(true);
        }
        let prefix = log_bytes(log, segment, at, at.plus(FRAME_PREFIX_BYTES as u64))?;
        Ok(prefix.iter().all(|&byte| byte == 0))
    }

    /// Append frames another store's [`ShardStore::read_log`] returned, at
    /// the positions they have there, each checked whole and indexed at its
    /// batch's own offsets; made durable by the group commit as soon as it
    /// can. Waits while write buffers are full. Returns the new end of the
    /// log. Errors when the frames do not continue this log (a gap, a
    /// partition this store lacks, offsets that do not follow its
    /// partition's), which means the logs diverged.
    pub async fn append_replicated(
        &self,
        read: &LogRead,
    ) -> Result<LogPosition, ReplicaAppendError> {
        self.append_replicated_with(read, &|_| false).await
    }

    /// [`ShardStore::append_replicated`], where a frame of a partition this
    /// store lacks and `gone` says no longer exists (its topic was deleted)
    /// is stored unindexed, as recovery keeps a deleted partition's frames
    /// until retention: the positions must still match the leader's.
    pub async fn append_replicated_with(
        &self,
        read: &LogRead,
        gone: &dyn Fn(PartitionId) -> bool,
    ) -> Result<LogPosition, ReplicaAppendError> {
        let payload_len_max = self.options.storage.segment_bytes - FRAME_HEADER_BYTES as u64;
        let mut at = read.position;
        let mut rest = read.frames.as_slice();
        while !rest.is_empty() {
            let checked = check_frame(rest, payload_len_max).map_err(|reason| {
                ReplicaAppendError::BadFrame {
                    position: at,
                    reason,
                }
            })?;
            let len = checked.header.frame_len() as usize;
            let orphan = !self.holds(checked.header.partition) && gone(checked.header.partition);
            self.append_copied(at, &rest[..len], &checked, orphan)
                .await?;
            at = at.plus(len as u64);
            rest = &rest[len..];
        }
        Ok(at)
    }

    /// Append one copied frame, waiting (in arrival order, as appends do)
    /// while write buffers are full.
    async fn append_copied(
        &self,
        at: LogPosition,
        frame: &[u8],
        checked: &CheckedFrame,
        orphan: bool,
    ) -> Result<(), ReplicaAppendError> {
        self.in_buffer_order(|| {
            match self.try_append_copied(at, frame, checked, orphan, Instant::now()) {
                Ok(()) => Ok(()),
                Err(TryCopyError::NoBufferSpace) => Err(None),
                Err(TryCopyError::Fatal(error)) => Err(Some(error)),
            }
        })
        .await
    }

    /// Whether this store holds partition `id`.
    fn holds(&self, id: PartitionId) -> bool {
        self.state.borrow().partitions.contains_key(&id)
    }

    fn try_append_copied(
        &self,
        at: LogPosition,
        frame: &[u8],
        checked: &CheckedFrame,
        orphan: bool,
        now: Instant,
    ) -> Result<(), TryCopyError> {
        if self.stopping.get() {
            return Err(ReplicaAppendError::Append(AppendError::ShuttingDown).into());
        }
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let (end, active_end) = (state.log.append_end(), state.log.active_end());
        let fatal = |error: TryAppendError| match error {
            TryAppendError::NoBufferSpace => TryCopyError::NoBufferSpace,
            TryAppendError::Fatal(error) => TryCopyError::Fatal(error.into()),
        };
        if at != end {
            if at != active_end {
                return Err(ReplicaAppendError::Gap {
                    offered: at,
                    end,
                    active_end,
                }
                .into());
            }
            state
                .log
                .roll_as_copied()
                .map_err(|error| fatal(self.classify_log_error(error)))?;
        }
        let (header, batch) = (&checked.header, &checked.batch);
        let id = header.partition;
        // A batch wholly below its partition's log start is stored but not
        // indexed, as recovery does: a copy started again at its leader's
        // log start gets such batches of a partition whose own log start
        // had moved past them (their queue entries were already dropped).
        let below_log_start = state.partitions.get(&id).is_some_and(|partition| {
            batch.base_offset < partition.next_offset.0
                && i64::from(batch.last_offset_delta).saturating_add(batch.base_offset)
                    < partition.log_start_offset.0
        });
        // Compaction copies and commits are indexed only when their pass
        // is applied (`cleaner.rs`), as on the leader.
        let compaction = header.kind != FrameKind::Batch;
        if orphan || below_log_start || compaction {
            let position = state
                .log
                .append_frame(&[frame], Some(now), now)
                .map_err(|error| fatal(self.classify_log_error(error)))?;
            assert_eq!(position, at, "a copied frame lands where the leader put it");
            state.log.note_append(u64::MAX, segment::now_ms());
            state.copy_timer_frame(position, header, batch, frame);
            if let Some(part) = &checked.commit
                && !orphan
                && state.partitions.contains_key(&id)
            {
                let end = position.plus(header.frame_len());
                state
                    .compaction
                    .collect(id, position, end, part.clone(), now);
            }
            drop(guard);
            self.flush_kick.notify();
            return Ok(());
        }
        let partition =
            state
                .partitions
                .get_mut(&id)
                .ok_or(ReplicaAppendError::UnknownPartition {
                    position: at,
                    partition: id,
                })?;
        if batch.base_offset != partition.next_offset.0 {
            return Err(ReplicaAppendError::OffsetMismatch {
                position: at,
                partition: id,
                base_offset: batch.base_offset,
                next_offset: partition.next_offset,
            }
            .into());
        }
        partition.queue.reserve_next().map_err(|source| {
            ReplicaAppendError::Append(AppendError::Queue {
                partition: id,
                source,
            })
        })?;
        if let Some(reservation) = partition.queue.reservation_ahead() {
            state.queue_reservations.push((id, reservation));
        }
        let position = state
            .log
            .append_frame(&[frame], Some(now), now)
            .map_err(|error| fatal(self.classify_log_error(error)))?;
        assert_eq!(position, at, "a copied frame lands where the leader put it");
        state
            .log
            .note_append(partition.config.segment_ms, segment::now_ms());
        let indexed = IndexedBatch::of(header.payload_len, batch);
        let base_offset = partition.next_offset;
        partition
            .index_batch(position, &indexed)
            .expect("queue room was reserved");
        let end = position.plus(header.frame_len());
        match &checked.marker {
            Some(marker) => partition.producers.apply_marker(
                batch.producer_id,
                batch.producer_epoch,
                marker,
                base_offset,
                batch.max_timestamp_ms,
            ),
            None if batch.is_control() => {}
            None => {
                if !partition.producers.replay(batch, base_offset, end) {
                    tracing::warn!(partition = %id, producer_id = batch.producer_id, base_offset = base_offset.0, "a copied producer batch is not past the producer's previous one; ignored for duplicate detection");
                }
            }
        }
        let next_offset = partition.next_offset;
        state.push_pending(id, end, next_offset);
        state.copy_timer_frame(position, header, batch, frame);
        drop(guard);
        self.flush_kick.notify();
        Ok(())
    }
}

/// The written bytes `[from, to)` of `segment`: from the file below the
/// log's final end, from the kept copy of the partial last block above it
/// (see `read_path`).
pub(super) fn log_bytes(
    log: &CommitLog,
    segment: &Segment,
    from: LogPosition,
    to: LogPosition,
) -> Result<Vec<u8>, LogReadError> {
    use std::os::unix::fs::FileExt;
    assert!(from <= to && to <= log.written_end() && to <= segment.end());
    let final_end = log.final_end().max(from).min(to);
    let mut bytes = vec![0u8; (final_end.0 - from.0) as usize];
    segment
        .reader
        .read_exact_at(&mut bytes, from.0 - segment.base.0)
        .map_err(|source| LogReadError::Io {
            position: from,
            source,
        })?;
    if final_end < to {
        let tail = log
            .tail_bytes(final_end, to)
            .ok_or_else(|| LogReadError::Io {
                position: final_end,
                source: std::io::Error::other("the partial last block's copy is gone"),
            })?;
        bytes.extend_from_slice(&tail);
    }
    Ok(bytes)
}
