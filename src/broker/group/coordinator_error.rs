//! What can go wrong in a shard's group coordinator, per operation: starting
//! (replaying `__consumer_offsets`) and writing offset records (commits,
//! deletions, expiry, snapshots). Each keeps the storage error beneath it as
//! its source; `coordinator::commit_error_code` turns a write failure into
//! the Kafka code the committer sees.

use thiserror::Error;

use super::OFFSETS_TOPIC;
use crate::broker::internal_log::ReplayError;
use crate::ids::Offset;
use crate::record_batch::BatchError;
use crate::storage::{AppendError, PartitionError};

/// Why a shard's coordinator could not start; the shard does not start
/// either (the broker would answer for groups it cannot see).
#[derive(Debug, Error)]
pub enum CoordinatorStartError {
    #[error(
        "the {OFFSETS_TOPIC} topic is missing from the metadata (the broker creates it before the \
         shards start: a bug)"
    )]
    OffsetsTopicMissing,
    #[error(
        "{OFFSETS_TOPIC}-{index} has no storage on this shard (partitions are reconciled with the \
         metadata before the coordinator starts: a bug)"
    )]
    NoStorage { index: u32 },
    #[error("cannot replay {OFFSETS_TOPIC}-{index}: {source}")]
    Replay {
        index: u32,
        #[source]
        source: ReplayError,
    },
}

/// Why offset records were not written (or, for a snapshot, why the log
/// start did not move after it).
#[derive(Debug, Error)]
pub enum OffsetsWriteError {
    /// The group hashes to an offsets partition another shard owns: the
    /// request was routed to the wrong coordinator.
    #[error("{OFFSETS_TOPIC}-{index} is not on this shard")]
    NotHere { index: u32 },
    /// One record (group id, topic and metadata) is larger than a batch may
    /// be, even alone.
    #[error(
        "an offset record of {size} bytes does not fit a batch of storage.message_max_bytes \
         ({limit}); shorten the group id or the commit metadata"
    )]
    RecordTooLarge { size: usize, limit: u32 },
    /// The batch the coordinator built fails the checks every stored batch
    /// passes: a bug in the encoder, so nothing is stored.
    #[error("the offsets batch this broker built is invalid (a bug): {source}")]
    InvalidBatch {
        #[source]
        source: BatchError,
    },
    #[error("cannot append offset records: {source}")]
    Append {
        #[from]
        source: AppendError,
    },
    /// The snapshot is durable, but the records below it still pin old
    /// segments until the next snapshot succeeds.
    #[error(
        "cannot move the log start of {OFFSETS_TOPIC}-{index} to {start} after a snapshot: {source}"
    )]
    AdvanceLogStart {
        index: u32,
        start: Offset,
        #[source]
        source: PartitionError,
    },
}
