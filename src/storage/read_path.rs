//! The read path: batches of a partition from an offset, as file spans for
//! zero-copy sends, and lookups by timestamp. Only written data is returned.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::frame::FRAME_HEADER_BYTES;
use super::shard_store::{ReadResult, ReadSpan, ShardStore};
use super::store_errors::ReadError;
use crate::ids::{Offset, PartitionId};

impl ShardStore {
    /// Batches of partition `id` from the one holding `offset`, up to
    /// `max_bytes` (at least one batch if any is available, as Kafka requires).
    pub fn read(
        &self,
        id: PartitionId,
        offset: Offset,
        max_bytes: u64,
    ) -> Result<ReadResult, ReadError> {
        let state = self.state.borrow();
        let partition = state
            .partitions
            .get(&id)
            .ok_or(ReadError::UnknownPartition(id))?;
        if offset < partition.log_start_offset || offset > partition.high_watermark {
            return Err(ReadError::OffsetOutOfRange {
                requested: offset,
                log_start: partition.log_start_offset,
                high_watermark: partition.high_watermark,
            });
        }
        let mut spans = Vec::new();
        let mut bytes = 0u64;
        let mut index = partition.queue.search_offset(offset);
        while let Some(entry) = partition.queue.get(index) {
            if entry.base_offset >= partition.high_watermark {
                break;
            }
            let len = u64::from(entry.batch_len);
            if !spans.is_empty() && bytes + len > max_bytes {
                break;
            }
            let Some(segment) = state.log.segment_at(entry.position) else {
                break;
            };
            let batch_at = entry.position.plus(FRAME_HEADER_BYTES as u64);
            spans.push(ReadSpan {
                file: Arc::clone(&segment.reader),
                file_offset: segment.file_offset(batch_at),
                len: entry.batch_len,
                base_offset: entry.base_offset,
                last_offset: entry.last_offset(),
            });
            bytes += len;
            index += 1;
        }
        Ok(ReadResult {
            spans,
            log_start_offset: partition.log_start_offset,
            high_watermark: partition.high_watermark,
        })
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
        let queue = &partition.queue;
        let index = queue
            .search_timestamp(timestamp_ms)
            .max(queue.search_offset(partition.log_start_offset));
        Ok(queue
            .get(index)
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

/// Read a span's bytes (tests and non-zero-copy paths).
pub fn read_span(span: &ReadSpan) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; span.len as usize];
    span.file.read_exact_at(&mut bytes, span.file_offset)?;
    Ok(bytes)
}
