//! The read path: batches of a partition from an offset, ready to send, and
//! lookups by timestamp. Only written data is returned.
//!
//! A batch comes back as parts. A batch still in the commit log's tail
//! cache (its newest frames, see `tail_cache`) is one memory part: no disk
//! read. Otherwise, bytes in blocks that will never be written
//! again (below `CommitLog::final_end`) are file spans, for zero-copy sends
//! through the page cache. The written part of the last, partial block is an
//! in-memory copy: an O_DIRECT rewrite of that block may still be in flight,
//! and a page cached before it could outlive the kernel's invalidation and
//! serve stale bytes.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::commit_log::CommitLog;
use super::consume_queue::QueueEntry;
use super::frame::FRAME_HEADER_BYTES;
use super::shard_store::{Isolation, ReadBatch, ReadPart, ReadResult, ShardStore};
use super::store_errors::{BatchMissingCause, ReadError};
use crate::ids::{LogPosition, Offset, PartitionId};
use crate::log_throttle::monotonic_ms;

impl ShardStore {
    /// Batches of partition `id` from the one holding `offset`, up to
    /// `max_bytes` (at least one batch if any is available, as Kafka
    /// requires), below the high watermark.
    pub fn read(
        &self,
        id: PartitionId,
        offset: Offset,
        max_bytes: u64,
    ) -> Result<ReadResult, ReadError> {
        self.read_isolated(id, offset, max_bytes, Isolation::ReadUncommitted)
    }

    /// [`ShardStore::read`] at an isolation level: read_committed stops at
    /// the last stable offset (always a batch boundary: a transaction's
    /// first offset, or the high watermark) and lists the aborted
    /// transactions among the batches returned (Kafka's fetch with
    /// `isolation_level` 1, KIP-98).
    pub fn read_isolated(
        &self,
        id: PartitionId,
        offset: Offset,
        max_bytes: u64,
        isolation: Isolation,
    ) -> Result<ReadResult, ReadError> {
        let state = self.state.borrow();
        let partition = state
            .partitions
            .get(&id)
            .ok_or(ReadError::UnknownPartition(id))?;
        // Past the high watermark but within the log: nothing to read yet,
        // not an error, as Kafka answers. A new leader's high watermark can
        // be behind the one its predecessor showed, and consumers already
        // hold offsets up to that (found by the breaker trial: they were
        // told OFFSET_OUT_OF_RANGE and reset, re-reading or skipping).
        if offset < partition.log_start_offset || offset > partition.next_offset {
            return Err(ReadError::OffsetOutOfRange {
                requested: offset,
                log_start: partition.log_start_offset,
                high_watermark: partition.high_watermark,
            });
        }
        let final_end = state.log.final_end();
        let mut batches = Vec::new();
        let mut bytes = 0u64;
        let index_error = |source| ReadError::Index {
            partition: id,
            source,
        };
        let last_stable_offset = partition.last_stable_offset();
        let until = match isolation {
            Isolation::ReadUncommitted => partition.high_watermark,
            Isolation::ReadCommitted => last_stable_offset,
        };
        let mut cursor = partition.cursor(offset).map_err(index_error)?;
        let mut file_len = None;
        while let Some(entry) = partition.entry(cursor).map_err(index_error)? {
            if entry.base_offset >= until {
                break;
            }
            let len = u64::from(entry.batch_len);
            if !batches.is_empty() && bytes + len > max_bytes {
                break;
            }
            let parts = match batch_parts(&state.log, final_end, &entry, &mut file_len) {
                Ok(Some(parts)) => parts,
                Ok(None) => break,
                Err(cause) => {
                    let error = ReadError::BatchMissing {
                        partition: id,
                        position: entry.position,
                        len: entry.batch_len,
                        cause,
                    };
                    if let Some(count) = self.missing_batch_log.record(monotonic_ms()) {
                        tracing::error!(%error, count, "fetch cannot send a batch whose bytes are not on disk (`count` since the last such line)");
                    }
                    // What is already planned is whole; a partition with
                    // nothing before the hole gets the error.
                    if batches.is_empty() {
                        return Err(error);
                    }
                    break;
                }
            };
            assert_eq!(
                parts.iter().map(ReadPart::len).sum::<u64>(),
                len,
                "a read batch's parts add up to the batch"
            );
            batches.push(ReadBatch {
                position: entry.position,
                base_offset: entry.base_offset,
                last_offset: entry.last_offset(),
                len: entry.batch_len,
                attributes: entry.attributes,
                parts,
            });
            bytes += len;
            cursor = partition.advance(cursor).map_err(index_error)?;
        }
        let aborted = match (isolation, batches.last()) {
            (Isolation::ReadUncommitted, _) => None,
            (Isolation::ReadCommitted, None) => Some(Vec::new()),
            (Isolation::ReadCommitted, Some(last)) => Some(
                partition
                    .producers
                    .aborted_between(offset, Offset(last.last_offset.0 + 1)),
            ),
        };
        Ok(ReadResult {
            batches,
            log_start_offset: partition.log_start_offset,
            high_watermark: partition.high_watermark,
            last_stable_offset,
            aborted,
        })
    }

    /// The largest timestamp among written batches (None if none is written).
    pub fn max_timestamp(&self, id: PartitionId) -> Result<Option<i64>, ReadError> {
        let state = self.state.borrow();
        let partition = state
            .partitions
            .get(&id)
            .ok_or(ReadError::UnknownPartition(id))?;
        let queue = &partition.queue;
        let index_error = |source| ReadError::Index {
            partition: id,
            source,
        };
        let written = queue
            .search_offset(partition.high_watermark)
            .map_err(index_error)?;
        let last_written = written
            .checked_sub(1)
            .filter(|&index| index >= queue.head_index());
        let Some(index) = last_written else {
            return Ok(None);
        };
        Ok(queue
            .get(index)
            .map_err(index_error)?
            .map(|entry| entry.max_timestamp_ms))
    }

    /// The first batch whose records may have a timestamp >= `timestamp_ms`:
    /// (its base offset, the running max timestamp). `None` if no written
    /// batch qualifies.
    pub fn offset_for_timestamp(
        &self,
        id: PartitionId,
        timestamp_ms: i64,
    ) -> Result<Option<(Offset, i64)>, ReadError> {
        let state = self.state.borrow();
        let partition = state
            .partitions
            .get(&id)
            .ok_or(ReadError::UnknownPartition(id))?;
        let index_error = |source| ReadError::Index {
            partition: id,
            source,
        };
        Ok(partition
            .first_entry_at_time(timestamp_ms)
            .map_err(index_error)?
            .filter(|entry| entry.base_offset < partition.high_watermark)
            .map(|entry| {
                (
                    entry.base_offset.max(partition.log_start_offset),
                    entry.max_timestamp_ms,
                )
            }))
    }

    /// Wait until partition `id`'s high watermark passes `offset`, or a
    /// watermark moves (callers re-check; long-polling fetch builds on this).
    pub async fn wait_for_progress(&self) {
        self.progress.wait().await;
    }
}

/// The parts of `entry`'s batch, or `None` when the partial tail block has
/// no copy. Every byte must be on disk before its part is planned: the
/// response's size prefix goes out before the file spans are spliced, so a
/// span the file cannot fill would tear the frame (issue 12: a segment
/// truncated under the broker closed consumers' connections mid-frame, and
/// they reconnected and fetched the same batch forever). `file_len` caches
/// the length of the last segment checked (one fstat per segment per read).
fn batch_parts(
    log: &CommitLog,
    final_end: LogPosition,
    entry: &QueueEntry,
    file_len: &mut Option<(LogPosition, u64)>,
) -> Result<Option<Vec<ReadPart>>, BatchMissingCause> {
    let Some(segment) = log.segment_at(entry.position) else {
        return Err(BatchMissingCause::NoSegment);
    };
    let start = entry.position.plus(FRAME_HEADER_BYTES as u64);
    let end = start.plus(u64::from(entry.batch_len));
    if end > segment.end() {
        return Err(BatchMissingCause::SegmentEndsInside {
            path: segment.path.clone(),
            segment_end: segment.end(),
        });
    }
    if let Some(cached) = log.cached_bytes(start, end) {
        log.count_fetched(cached.len() as u64, 0);
        return Ok(Some(vec![ReadPart::Memory(cached)]));
    }
    let file_end = end.min(final_end).max(start);
    let mut parts = Vec::with_capacity(1);
    if file_end > start {
        let offset = segment.file_offset(start);
        let len = file_end.0 - start.0;
        let on_disk = match *file_len {
            Some((base, bytes)) if base == segment.base => bytes,
            _ => {
                let bytes = segment
                    .reader
                    .metadata()
                    .map_err(|source| BatchMissingCause::Stat {
                        path: segment.path.clone(),
                        source,
                    })?
                    .len();
                *file_len = Some((segment.base, bytes));
                bytes
            }
        };
        if offset + len > on_disk {
            return Err(BatchMissingCause::FileShort {
                path: segment.path.clone(),
                file_bytes: on_disk,
                needed_bytes: offset + len,
            });
        }
        parts.push(ReadPart::File {
            file: Arc::clone(&segment.reader),
            offset,
            len: len as u32,
            final_len: segment.file_offset(final_end.min(segment.end()).max(file_end)),
        });
    }
    if end > file_end {
        let Some(tail) = log.tail_bytes(file_end, end) else {
            // Cannot happen while the copy invariant holds; serve what is
            // final rather than risk stale bytes.
            tracing::error!(
                position = file_end.0,
                "no copy of the partial tail block; fetch stops before it"
            );
            return Ok(None);
        };
        parts.push(ReadPart::Memory(tail));
    }
    log.count_fetched(end.0 - file_end.0, file_end.0 - start.0);
    Ok(Some(parts))
}

/// The bytes of a read batch (tests and non-zero-copy paths).
pub fn read_batch_bytes(batch: &ReadBatch) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(batch.len as usize);
    for part in &batch.parts {
        match part {
            ReadPart::File {
                file, offset, len, ..
            } => {
                let start = bytes.len();
                bytes.resize(start + *len as usize, 0);
                file.read_exact_at(&mut bytes[start..], *offset)?;
            }
            ReadPart::Memory(memory) => bytes.extend_from_slice(memory),
        }
    }
    Ok(bytes)
}
