//! Retention: what may be deleted, by age, by size and under disk pressure.
//!
//! Partitions share the shard's commit log, so retention works in two layers:
//!
//! 1. **Logical**, per partition: `retention.ms` moves the log start past
//!    batches in segments last written before `now - retention.ms` (age is the
//!    segment's last write, as in RocketMQ, so client timestamps cannot pin
//!    data). `retention.bytes` moves it until the retained batches fit. Both
//!    apply only to topics whose `cleanup.policy` includes `delete`; with
//!    `compact` alone (or an empty policy) nothing expires, as in Kafka.
//! 2. **Physical**, per shard, from the oldest end of the log: the oldest
//!    segment file is deleted once no partition still retains a batch in
//!    it, and a later one only after every older one. So the oldest batch
//!    any partition retains keeps every later segment of the shard, even
//!    those whose data expired or whose topics were deleted: the log has
//!    no holes (recovery treats a missing range as damage).
//!
//! Disk guards ([`DiskPressure`]): above `disk_clean_ratio` retention runs at
//! every disk check instead of every `check_interval_ms`; above
//! `disk_force_clean_ratio` the oldest segments go even if they are not
//! expired (their partitions' log starts move past them), but only while
//! every partition with unexpired data in the oldest segment allows it
//! (`sluice.disk.pressure.delete`, off by default); above
//! `disk_reject_ratio` appends are refused with a retriable error until usage
//! drops.

use crate::config::RetentionConfig;
use crate::ids::{LogPosition, Offset};

use super::consume_queue::QueueError;
use super::partition::Partition;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskPressure {
    Normal,
    /// Delete expired segments at every check.
    Clean,
    /// Delete the oldest segments regardless of expiry.
    ForceClean,
    /// Also refuse appends.
    Reject,
}

impl DiskPressure {
    pub fn from_ratio(ratio: f64, config: &RetentionConfig) -> DiskPressure {
        if ratio >= config.disk_reject_ratio {
            DiskPressure::Reject
        } else if ratio >= config.disk_force_clean_ratio {
            DiskPressure::ForceClean
        } else if ratio >= config.disk_clean_ratio {
            DiskPressure::Clean
        } else {
            DiskPressure::Normal
        }
    }
}

/// Segment ages, oldest first: (base, end, last write ms).
pub type SegmentAges = [(LogPosition, LogPosition, u64)];

/// The log start `partition` should have under its own retention settings
/// (its current one when its `cleanup.policy` has no `delete`).
pub fn retained_start(
    partition: &Partition,
    segments: &SegmentAges,
    now_ms: u64,
) -> Result<Offset, QueueError> {
    let mut start = partition.log_start_offset;
    if !partition.config.delete {
        return Ok(start);
    }
    if partition.config.retention_ms >= 0 {
        let cutoff_ms = now_ms.saturating_sub(partition.config.retention_ms as u64);
        let boundary = segments
            .iter()
            .find(|(_, _, last_write_ms)| *last_write_ms >= cutoff_ms)
            .map(|(base, _, _)| *base);
        let first_kept = match boundary {
            Some(boundary) => first_offset_at_or_after(partition, boundary)?,
            // Every segment is older than the cutoff: nothing is retained.
            None => partition.high_watermark,
        };
        start = start.max(first_kept);
    }
    if partition.config.retention_bytes >= 0 {
        start = start.max(start_within_bytes(
            partition,
            start,
            partition.config.retention_bytes as u64,
        )?);
    }
    Ok(start.min(partition.high_watermark))
}

/// The first offset whose batch lies at or after `position` (the high
/// watermark if none): where the log start moves when the log before
/// `position` goes away.
pub fn first_offset_at_or_after(
    partition: &Partition,
    position: LogPosition,
) -> Result<Offset, QueueError> {
    // A clean section's copies hold the oldest offsets wherever they lie.
    // Its gaps are compaction's, not losses: while no clean batch at or
    // after the log start lies before `position`, nothing goes.
    if let Some(clean) = &partition.clean {
        let first_live = clean.queue.search_offset(partition.log_start_offset)?;
        if first_live < clean.queue.tail_index() {
            let index = clean.queue.count_below(position)?.max(first_live);
            if index == first_live {
                return Ok(partition.log_start_offset);
            }
            if let Some(entry) = clean.queue.get(index)? {
                return Ok(entry.base_offset.min(partition.high_watermark));
            }
        }
    }
    let index = partition
        .queue
        .count_below(position)?
        .max(partition.queue.search_offset(partition.clean_end())?);
    Ok(partition
        .queue
        .get(index)?
        .map_or(partition.next_offset, |entry| entry.base_offset)
        .min(partition.high_watermark))
}

/// The smallest batch-aligned start at or after `start` whose batches fit in
/// `limit_bytes` (only written batches count).
fn start_within_bytes(
    partition: &Partition,
    start: Offset,
    limit_bytes: u64,
) -> Result<Offset, QueueError> {
    let mut kept_bytes = 0u64;
    let mut kept_from = None;
    // Newest first: the head, then the clean section.
    let queue = &partition.queue;
    let first = queue.search_offset(start.max(partition.clean_end()))?;
    for index in (first..queue.tail_index()).rev() {
        let Some(entry) = queue.get(index)? else {
            break;
        };
        if entry.base_offset >= partition.high_watermark {
            continue;
        }
        if kept_bytes + u64::from(entry.batch_len) > limit_bytes {
            return Ok(kept_from.unwrap_or(partition.high_watermark));
        }
        kept_bytes += u64::from(entry.batch_len);
        kept_from = Some(entry.base_offset);
    }
    if let Some(clean) = &partition.clean
        && start < clean.end
    {
        let first = clean.queue.search_offset(start)?;
        for index in (first..clean.queue.tail_index()).rev() {
            let Some(entry) = clean.queue.get(index)? else {
                break;
            };
            if kept_bytes + u64::from(entry.batch_len) > limit_bytes {
                break;
            }
            kept_bytes += u64::from(entry.batch_len);
            kept_from = Some(entry.base_offset);
        }
    }
    Ok(kept_from.unwrap_or(partition.high_watermark))
}

/// The lowest log position any partition still needs (None: none needs
/// any). A partition whose queue cannot say holds back everything: nothing is
/// deleted that it might still need.
pub fn lowest_needed_position(
    partitions: &mut dyn Iterator<Item = &Partition>,
) -> Option<LogPosition> {
    partitions
        .filter_map(|partition| match needed_position(partition) {
            Ok(position) => position,
            Err(error) => {
                tracing::error!(%error, "retention keeps every segment a damaged queue may need");
                Some(LogPosition::ZERO)
            }
        })
        .min()
}

/// Where partition's oldest retained batch is.
pub fn needed_position(partition: &Partition) -> Result<Option<LogPosition>, QueueError> {
    let head = partition
        .queue
        .search_offset(partition.log_start_offset.max(partition.clean_end()))?;
    let head = partition.queue.get(head)?.map(|entry| entry.position);
    let clean = match &partition.clean {
        Some(clean) => {
            let index = clean.queue.search_offset(partition.log_start_offset)?;
            clean.queue.get(index)?.map(|entry| entry.position)
        }
        None => None,
    };
    Ok(head.into_iter().chain(clean).min())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RetentionConfig, StorageConfig};
    use crate::ids::PartitionId;
    use crate::storage::consume_queue::ConsumeQueue;
    use crate::storage::partition::{IndexedBatch, PartitionConfig, PartitionMeta};

    const BATCH_BYTES: u32 = 100;
    const BATCHES: u64 = 3;
    const QUEUE_ENTRIES_PER_FILE: u32 = 64;

    /// A partition of three one-record batches of 100 bytes at log
    /// positions 0, 100 and 200, all written and durable.
    fn three_batches(dir: &std::path::Path, config: PartitionConfig) -> Partition {
        let queue = ConsumeQueue::open(dir, QUEUE_ENTRIES_PER_FILE, 0).unwrap();
        let meta = PartitionMeta {
            id: PartitionId(0),
            topic: "kept".to_owned(),
            index: 0,
        };
        let mut partition = Partition::new(meta, config, dir.to_owned(), queue, None);
        for batch in 0..BATCHES {
            let indexed = IndexedBatch {
                len: BATCH_BYTES,
                last_offset_delta: 0,
                max_timestamp_ms: 0,
                attributes: 0,
            };
            let position = LogPosition(batch * u64::from(BATCH_BYTES));
            partition.index_batch(position, &indexed).unwrap();
        }
        partition.high_watermark = partition.next_offset;
        partition
    }

    /// Issue 17: Kafka deletes nothing by age or size from a topic whose
    /// cleanup.policy is `compact` alone; only the cleaner removes records.
    #[test]
    fn retention_deletes_nothing_without_the_delete_policy() {
        let expiring = PartitionConfig {
            retention_ms: 1,
            retention_bytes: i64::from(BATCH_BYTES),
            ..PartitionConfig::from_defaults(&RetentionConfig::default(), &StorageConfig::default())
        };
        // One segment, last written long before the 1 ms cutoff.
        let end = LogPosition(BATCHES * u64::from(BATCH_BYTES));
        let segments = [(LogPosition(0), end, 0)];
        let now_ms = 1_000_000;
        for (delete, compact, expected) in [
            (true, false, Offset(3)),
            (true, true, Offset(3)),
            (false, true, Offset(0)),
            (false, false, Offset(0)),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let config = PartitionConfig {
                delete,
                compact,
                ..expiring
            };
            let partition = three_batches(dir.path(), config);
            let start = retained_start(&partition, &segments, now_ms).unwrap();
            assert_eq!(start, expected, "delete {delete}, compact {compact}");
        }
        // By size alone: the delete policy keeps the last batch only.
        let dir = tempfile::tempdir().unwrap();
        let by_size = PartitionConfig {
            retention_ms: -1,
            ..expiring
        };
        let partition = three_batches(dir.path(), by_size);
        assert_eq!(
            retained_start(&partition, &segments, now_ms).unwrap(),
            Offset(2)
        );
        let dir = tempfile::tempdir().unwrap();
        let compacted = PartitionConfig {
            delete: false,
            compact: true,
            ..by_size
        };
        let partition = three_batches(dir.path(), compacted);
        assert_eq!(
            retained_start(&partition, &segments, now_ms).unwrap(),
            Offset(0)
        );
    }
}
