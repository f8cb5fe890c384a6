//! Storage metrics, as handles registered once per shard: group commit
//! (fdatasync latency, size and fan-in), the commit log's io_uring, appends
//! refused, segments deleted.

use metrics::{Counter, Histogram, counter, histogram};

use super::names;
use crate::ids::ShardId;
use crate::storage::AppendError;
use crate::storage::producer_state::ProducerError;

/// The `shard` label: the shard's number.
pub fn shard_label(shard: ShardId) -> String {
    shard.0.to_string()
}

/// Group-commit histograms of one shard's commit log.
#[derive(Clone)]
pub struct LogMetrics {
    pub fsync_duration: Histogram,
    pub fsync_size: Histogram,
    pub fsync_waiters: Histogram,
    /// `sluice_log_reserve_waits_total`.
    pub reserve_waits: Counter,
    /// `sluice_log_fetch_bytes_total{source="memory"}`.
    pub fetch_memory_bytes: Counter,
    /// `sluice_log_fetch_bytes_total{source="disk"}`.
    pub fetch_disk_bytes: Counter,
}

impl LogMetrics {
    pub fn for_shard(shard: ShardId) -> LogMetrics {
        let shard = shard_label(shard);
        LogMetrics {
            fsync_duration: histogram!(names::LOG_FSYNC_DURATION, "shard" => shard.clone()),
            fsync_size: histogram!(names::LOG_FSYNC_SIZE, "shard" => shard.clone()),
            fsync_waiters: histogram!(names::LOG_FSYNC_WAITERS, "shard" => shard.clone()),
            reserve_waits: counter!(names::LOG_RESERVE_WAITS, "shard" => shard.clone()),
            fetch_memory_bytes: counter!(names::LOG_FETCH_BYTES, "shard" => shard.clone(), "source" => "memory"),
            fetch_disk_bytes: counter!(names::LOG_FETCH_BYTES, "shard" => shard, "source" => "disk"),
        }
    }
}

impl std::fmt::Debug for LogMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogMetrics")
    }
}

impl Default for LogMetrics {
    /// Handles that record nothing (tests and tools).
    fn default() -> Self {
        LogMetrics {
            fsync_duration: Histogram::noop(),
            fsync_size: Histogram::noop(),
            fsync_waiters: Histogram::noop(),
            reserve_waits: Counter::noop(),
            fetch_memory_bytes: Counter::noop(),
            fetch_disk_bytes: Counter::noop(),
        }
    }
}

/// Counters of one io_uring instance.
pub struct RingMetrics {
    pub submissions: Counter,
    pub completions: Counter,
    pub queue_full: Counter,
}

impl RingMetrics {
    /// `ring` names the ring's use (`commit_log`).
    pub fn new(shard: &str, ring: &'static str) -> RingMetrics {
        let labels = [("shard", shard.to_owned()), ("ring", ring.to_owned())];
        RingMetrics {
            submissions: counter!(names::IO_URING_SUBMISSIONS, &labels),
            completions: counter!(names::IO_URING_COMPLETIONS, &labels),
            queue_full: counter!(names::IO_URING_QUEUE_FULL, &labels),
        }
    }
}

/// Why segments are deleted: the `reason` label of
/// `sluice_retention_deleted_segments_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Every partition's retention has moved past the segment.
    Retention,
    /// Disk usage above `disk_force_clean_ratio`: oldest first, expired or not.
    DiskPressure,
}

/// The `reason` label of `sluice_appends_rejected_total`.
const REJECT_REASONS: [&str; 12] = [
    "unknown_partition",
    "too_large",
    "poisoned",
    "disk_full",
    "storage",
    "shutting_down",
    "not_leader",
    "sequence_after_failover",
    "sequence",
    "epoch",
    "txn_state",
    "coordinator_fenced",
];

/// Counters of one shard store.
pub struct StoreMetrics {
    /// By reason, registered up front so every series starts at 0.
    rejected: [Counter; REJECT_REASONS.len()],
    deleted_for_retention: Counter,
    deleted_for_disk: Counter,
    deleted_bytes: Counter,
    compaction_read: Counter,
    compaction_written: Counter,
    compaction_removed: Counter,
    compaction_duration: metrics::Histogram,
    delay_delivered: Counter,
    delay_lateness: metrics::Histogram,
}

impl StoreMetrics {
    pub fn for_shard(shard: ShardId) -> StoreMetrics {
        let shard = shard_label(shard);
        StoreMetrics {
            deleted_for_retention: counter!(
                names::RETENTION_DELETED_SEGMENTS,
                "shard" => shard.clone(),
                "reason" => "retention"
            ),
            deleted_for_disk: counter!(
                names::RETENTION_DELETED_SEGMENTS,
                "shard" => shard.clone(),
                "reason" => "disk_pressure"
            ),
            deleted_bytes: counter!(names::RETENTION_DELETED_BYTES, "shard" => shard.clone()),
            compaction_read: counter!(names::COMPACTION_BYTES_READ, "shard" => shard.clone()),
            compaction_written: counter!(names::COMPACTION_BYTES_WRITTEN, "shard" => shard.clone()),
            compaction_removed: counter!(names::COMPACTION_RECORDS_REMOVED, "shard" => shard.clone()),
            compaction_duration: metrics::histogram!(names::COMPACTION_PASS_DURATION, "shard" => shard.clone()),
            delay_delivered: counter!(names::DELAY_DELIVERED, "shard" => shard.clone()),
            delay_lateness: metrics::histogram!(names::DELAY_DELIVERY_LATENESS, "shard" => shard.clone()),
            rejected: REJECT_REASONS.map(|reason| {
                counter!(names::APPENDS_REJECTED, "shard" => shard.clone(), "reason" => reason)
            }),
        }
    }

    /// A compaction pass finished.
    pub fn compaction_pass(
        &self,
        read: u64,
        written: u64,
        removed: u64,
        took: std::time::Duration,
    ) {
        self.compaction_read.increment(read);
        self.compaction_written.increment(written);
        self.compaction_removed.increment(removed);
        self.compaction_duration.record(took.as_secs_f64());
    }

    /// A compacted partition's dirty ratio and the age of its oldest
    /// uncleaned batch, as the cleaner last saw them.
    pub fn compaction_state(
        &self,
        topic: &str,
        partition: u32,
        ratio: f64,
        delay: std::time::Duration,
    ) {
        metrics::gauge!(
            names::COMPACTION_DIRTY_RATIO,
            "topic" => topic.to_owned(),
            "partition" => partition.to_string()
        )
        .set(ratio);
        metrics::gauge!(
            names::COMPACTION_DELAY,
            "topic" => topic.to_owned(),
            "partition" => partition.to_string()
        )
        .set(delay.as_secs_f64());
    }

    /// Delayed records delivered, each `late_ms` after its due time.
    pub fn delayed_delivered(&self, late_ms: impl Iterator<Item = i64>) {
        let mut records = 0;
        for late in late_ms {
            self.delay_lateness.record(late.max(0) as f64 / 1000.0);
            records += 1;
        }
        self.delay_delivered.increment(records);
    }

    pub fn segment_deleted(&self, why: Deletion, bytes: u64) {
        match why {
            Deletion::Retention => self.deleted_for_retention.increment(1),
            Deletion::DiskPressure => self.deleted_for_disk.increment(1),
        }
        self.deleted_bytes.increment(bytes);
    }

    /// Count offsets of `topic` deleted unexpired under disk pressure.
    pub fn disk_pressure_deleted(&self, topic: &str, offsets: u64) {
        counter!(names::DISK_PRESSURE_DELETED_OFFSETS, "topic" => topic.to_owned())
            .increment(offsets);
    }

    /// Count an append storage refused.
    pub fn append_rejected(&self, error: &AppendError) {
        let reason = match error {
            AppendError::UnknownPartition(_) => "unknown_partition",
            AppendError::BatchTooLarge { .. } => "too_large",
            AppendError::Poisoned { .. } => "poisoned",
            AppendError::DiskFull { .. } => "disk_full",
            AppendError::Queue { .. } | AppendError::Roll { .. } | AppendError::Reserve { .. } => {
                "storage"
            }
            AppendError::ShuttingDown => "shutting_down",
            AppendError::NotLeader => "not_leader",
            AppendError::SequenceGapAfterFailover { .. } => "sequence_after_failover",
            AppendError::Producer(ProducerError::InvalidEpoch { .. }) => "epoch",
            AppendError::Producer(ProducerError::OutOfOrderSequence { .. }) => "sequence",
            AppendError::Producer(
                ProducerError::NonTransactionalInTransaction { .. }
                | ProducerError::EpochChangedInTransaction { .. }
                | ProducerError::TransactionEnded { .. },
            ) => "txn_state",
            AppendError::Producer(ProducerError::CoordinatorFenced { .. }) => "coordinator_fenced",
        };
        let index = REJECT_REASONS
            .iter()
            .position(|&known| known == reason)
            .expect("every reason is registered");
        self.rejected[index].increment(1);
    }
}
