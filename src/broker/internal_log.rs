//! The logs of internal topics: how the broker's own services keep their
//! state in the commit log and rebuild it at start.
//!
//! The group coordinator (`__consumer_offsets`) and the producer-id
//! allocator (`__producer_ids`) store their state as ordinary records in
//! partitions of the shard's commit log, written uncompressed by this
//! broker. At start each replays its partitions from the log start to the
//! high watermark through [`replay`], which hands every keyed record to the
//! service in log order; [`encode_batch`] builds the batches they append.
//! Because the records live in the shard log, replicating the log (a later
//! issue) carries this state to followers with no extra work.

use std::ops::ControlFlow;

use thiserror::Error;

use crate::ids::{Offset, PartitionId};
use crate::record_batch::record_walk::Field;
use crate::record_batch::{self, BatchBuilder, BatchHeader, RecordSpec};
use crate::storage::{ReadError, ShardStore};

/// Read size while replaying an internal partition.
const REPLAY_READ_BYTES: u64 = 1 << 20;

/// One record met by [`replay`]: its offset, key and value (`None` for a
/// tombstone).
#[derive(Clone, Copy, Debug)]
pub struct InternalRecord<'a> {
    pub offset: Offset,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// Why an internal partition could not be replayed (the shard does not
/// start: its service would answer from state it cannot see).
#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("cannot read from offset {offset}: {source}")]
    Read {
        offset: Offset,
        #[source]
        source: ReadError,
    },
    #[error("cannot read the batch at offset {offset}: {source}")]
    ReadBatch {
        offset: Offset,
        #[source]
        source: std::io::Error,
    },
}

/// Replay partition `id` (named `label` in log lines, e.g.
/// `__consumer_offsets-3`) from its log start to its high watermark, calling
/// `apply` for each record with a key, in log order; `apply` says whether
/// it used the record. Returns how many it used.
///
/// A batch that cannot be walked (damaged, or not written by this broker)
/// is skipped with a warning after the records before the fault; a
/// compressed one is skipped whole, since the broker writes internal
/// records uncompressed. Records without a key are ignored.
pub fn replay(
    store: &ShardStore,
    id: PartitionId,
    label: &str,
    decompressed_max_bytes: u64,
    mut apply: impl FnMut(InternalRecord<'_>) -> bool,
) -> Result<u64, ReplayError> {
    let Some(offsets) = store.offsets(id) else {
        return Ok(0);
    };
    let mut next = offsets.log_start_offset;
    let mut used = 0;
    while next < offsets.high_watermark {
        let read = store
            .read(id, next, REPLAY_READ_BYTES)
            .map_err(|source| ReplayError::Read {
                offset: next,
                source,
            })?;
        if read.batches.is_empty() {
            break;
        }
        for batch in &read.batches {
            let bytes = crate::storage::read_batch_bytes(batch).map_err(|source| {
                ReplayError::ReadBatch {
                    offset: batch.base_offset,
                    source,
                }
            })?;
            used += replay_batch(label, &bytes, decompressed_max_bytes, &mut apply);
            next = Offset(batch.last_offset.0 + 1);
        }
    }
    Ok(used)
}

fn replay_batch(
    label: &str,
    bytes: &[u8],
    decompressed_max_bytes: u64,
    apply: &mut impl FnMut(InternalRecord<'_>) -> bool,
) -> u64 {
    let Ok(header) = BatchHeader::parse(bytes) else {
        tracing::warn!(
            partition = label,
            "skipping an internal batch shorter than its header"
        );
        return 0;
    };
    let mut used = 0;
    let mut compressed = false;
    let walked = record_batch::walk_records(bytes, decompressed_max_bytes, |record| {
        let key = match record.key {
            Field::Bytes(key) => key,
            Field::Null => return ControlFlow::Continue(()),
            Field::Skipped(_) => {
                compressed = true;
                return ControlFlow::Break(());
            }
        };
        let value = match record.value {
            Field::Bytes(value) => Some(value),
            Field::Null | Field::Skipped(_) => None,
        };
        let offset = header.base_offset + i64::from(record.index);
        if apply(InternalRecord {
            offset: Offset(offset),
            key,
            value,
        }) {
            used += 1;
        }
        ControlFlow::Continue(())
    });
    if compressed {
        tracing::warn!(
            partition = label,
            offset = header.base_offset,
            "skipping a compressed internal batch: this broker writes its records uncompressed"
        );
    }
    if let Err(error) = walked {
        tracing::warn!(
            partition = label,
            offset = header.base_offset,
            %error,
            used,
            "skipping the rest of an unreadable internal batch"
        );
    }
    used
}

/// An uncompressed batch of `records` (key, value or `None` for a
/// tombstone), every record stamped `now_ms`.
pub fn encode_batch<'a>(
    records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    now_ms: i64,
) -> Vec<u8> {
    let mut builder = BatchBuilder::new(now_ms);
    for (key, value) in records {
        builder.push(RecordSpec {
            key: Some(key),
            value,
            timestamp_delta_ms: 0,
        });
    }
    builder.build()
}
