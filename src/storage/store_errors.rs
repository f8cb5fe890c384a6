//! What can go wrong in a shard's storage, per operation, with messages
//! that say what happened and what to do.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use super::consume_queue::QueueError;
use super::producer_state::ProducerError;
use super::recovery::RecoveryError;
use super::segment::SegmentError;
use crate::ids::{LogPosition, Offset, PartitionId, ShardId};
use crate::io::LogIoError;

#[derive(Debug, Error)]
pub enum AppendError {
    #[error("{0} does not exist on this shard")]
    UnknownPartition(PartitionId),
    #[error("{shard}: {source}")]
    Poisoned {
        shard: ShardId,
        #[source]
        source: Arc<LogIoError>,
    },
    #[error(
        "disk usage {usage_percent:.1}% is above disk_reject_ratio ({limit_percent}%): appends \
         are refused until retention frees space (retriable)"
    )]
    DiskFull {
        usage_percent: f64,
        limit_percent: f64,
    },
    #[error(
        "batch of {size} bytes exceeds the largest the commit log holds ({limit}: half of \
         storage.write_buffers x storage.flush_bytes)"
    )]
    BatchTooLarge { size: usize, limit: u32 },
    #[error("cannot index a batch of {partition} (retriable): {source}")]
    Queue {
        partition: PartitionId,
        #[source]
        source: QueueError,
    },
    #[error("cannot start a new commit-log segment (retriable): {source}")]
    Roll {
        #[source]
        source: SegmentError,
    },
    /// No disk space could be reserved for the frame (ENOSPC between two
    /// disk-usage samples): retriable, the next append asks again.
    #[error("cannot reserve disk space for the commit log (retriable): {source}")]
    Reserve {
        #[source]
        source: SegmentError,
    },
    #[error("the shard is shutting down")]
    ShuttingDown,
    /// The store is a copy of a shard group's log that follows another
    /// node (issue 16): only its leader appends to it.
    #[error("this copy of the shard group's log follows its leader on another node")]
    NotLeader,
    /// A gap in an idempotent producer's sequence (ahead of what it should
    /// send), within `SEQUENCE_GAP_AFTER_TAKEOVER` (30 s) of this store
    /// beginning to lead, from a producer whose newest batch here is older
    /// than that: requests the producer pipelined to the previous leader,
    /// or sent while this copy still followed, were refused out of order
    /// around the failover, and the earlier ones will come again. Kafka
    /// answers
    /// OUT_OF_ORDER_SEQUENCE_NUMBER, on which librdkafka bumps the producer
    /// epoch and renumbers batches that may already be stored, writing them
    /// twice (confluentinc/librdkafka#4953); NOT_LEADER_OR_FOLLOWER makes
    /// every client resend from its oldest unacknowledged batch instead,
    /// which this store then recognises as a duplicate.
    #[error(
        "producer {producer_id} skipped to sequence {found} (expected {expected}) right after \
         this store began to lead; its earlier batches must come first"
    )]
    SequenceGapAfterFailover {
        producer_id: i64,
        expected: i32,
        found: i32,
    },
    /// The batch breaks its idempotent producer's epoch or sequence rules.
    #[error("{0}")]
    Producer(#[from] ProducerError),
}

impl AppendError {
    /// Whether the producer may retry the same batch (Kafka: retriable error).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            AppendError::DiskFull { .. }
                | AppendError::Queue { .. }
                | AppendError::Roll { .. }
                | AppendError::Reserve { .. }
                | AppendError::ShuttingDown
                | AppendError::NotLeader
                | AppendError::SequenceGapAfterFailover { .. }
        )
    }

    /// Whether the operator should hear about it: the disk or the log, not
    /// the client's request.
    pub fn is_storage_fault(&self) -> bool {
        matches!(
            self,
            AppendError::Poisoned { .. }
                | AppendError::DiskFull { .. }
                | AppendError::Queue { .. }
                | AppendError::Roll { .. }
                | AppendError::Reserve { .. }
        )
    }
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("{0} does not exist on this shard")]
    UnknownPartition(PartitionId),
    #[error("offset {requested} is outside the partition's range {log_start}..={high_watermark}")]
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        high_watermark: Offset,
    },
    #[error("{partition}: {source}")]
    Index {
        partition: PartitionId,
        #[source]
        source: QueueError,
    },
    /// A queue entry points at bytes no segment holds in full (a segment
    /// file truncated or deleted under the broker): sending the planned
    /// length would tear the response frame, so the batch is not sent.
    #[error(
        "{partition}: the batch at log position {position} ({len} bytes) is not on disk; the \
         data directory was damaged, restart the broker so recovery checks the log: {cause}"
    )]
    BatchMissing {
        partition: PartitionId,
        position: LogPosition,
        len: u32,
        #[source]
        cause: BatchMissingCause,
    },
}

/// Why a queued batch's bytes are not all on disk.
#[derive(Debug, Error)]
pub enum BatchMissingCause {
    #[error("no commit-log segment holds its position")]
    NoSegment,
    #[error("segment {path} ends at position {segment_end}, inside the batch")]
    SegmentEndsInside {
        path: PathBuf,
        segment_end: LogPosition,
    },
    #[error(
        "segment {path} is {file_bytes} bytes long, short of the batch's end at byte {needed_bytes}"
    )]
    FileShort {
        path: PathBuf,
        file_bytes: u64,
        needed_bytes: u64,
    },
    #[error("cannot stat segment {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Error)]
pub enum PartitionError {
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: String },
    #[error("partition {topic}-{index} already exists as {id}")]
    AlreadyExists {
        topic: String,
        index: u32,
        id: PartitionId,
    },
    #[error("{0} does not exist on this shard")]
    Unknown(PartitionId),
    #[error(
        "partition {topic}-{index} cannot take {id}: the shard holds another partition as {id}"
    )]
    IdTaken {
        topic: String,
        index: u32,
        id: PartitionId,
    },
    #[error("cannot create or delete partition files in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

#[derive(Debug, Error)]
pub enum OpenError {
    #[error("recovery of {shard} failed: {source}")]
    Recovery {
        shard: ShardId,
        #[source]
        source: RecoveryError,
    },
    #[error("cannot open the commit log of {shard}: {source}")]
    Log {
        shard: ShardId,
        #[source]
        source: SegmentError,
    },
    #[error("cannot finish restarting the log of {shard}: {source}")]
    Restart {
        shard: ShardId,
        #[source]
        source: super::truncate::TruncateError,
    },
    #[error("cannot open the delayed-delivery timer of {shard}: {source}")]
    Timer {
        shard: ShardId,
        #[source]
        source: super::timer::index::TimerError,
    },
    #[error("cannot start commit-log I/O for {shard}: {source}")]
    Io {
        shard: ShardId,
        #[source]
        source: std::io::Error,
    },
}

/// `try_append`'s outcome: the append must wait for buffer space, or failed.
pub(super) enum TryAppendError {
    NoBufferSpace,
    Fatal(AppendError),
}

impl From<AppendError> for TryAppendError {
    fn from(error: AppendError) -> Self {
        TryAppendError::Fatal(error)
    }
}
