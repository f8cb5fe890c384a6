//! Per-shard storage, the RocketMQ way: one ordered commit log per shard
//! plus a small consume queue per partition.
//!
//! Files, from the bottom up:
//! * [`frame`] (the on-disk record), [`segment`] and [`segment_reader`] (log
//!   files);
//! * [`appender`] and [`commit_log`] (the write buffers and group commit);
//! * [`consume_queue`] (with [`queue_file`] and [`queue_entry`]) and
//!   [`partition`] (the per-partition index);
//! * [`checkpoint`] and [`recovery`] (restart);
//! * [`retention`] and [`disk_usage`] (deletion);
//! * [`shard_store`], the API the rest of the broker uses. Its parts are in
//!   `write_path`, `read_path`, `flusher`, `checkpointer` and
//!   `retention_task`; its errors are in [`store_errors`].

pub mod appender;
pub mod checkpoint;
mod checkpointer;
mod cleaner;
pub mod commit_log;
pub mod compaction;
pub mod consume_queue;
pub mod disk_usage;
pub mod durable_file;
mod flusher;
pub mod frame;
pub mod layout;
pub mod leader_epochs;
pub mod partition;
mod partition_create;
mod preallocate;
pub mod producer_snapshot;
pub mod producer_state;
pub mod queue_entry;
pub mod queue_file;
mod read_path;
pub mod recovery;
pub mod replica;
mod reservation;
pub mod retention;
mod retention_task;
pub mod segment;
mod segment_ahead;
pub mod segment_reader;
pub mod shard_store;
pub mod store_errors;
mod tail_cache;
pub mod timer;
mod timer_store;
pub mod truncate;
pub mod watermark;
mod write_path;

pub use partition::PartitionConfig;
pub use partition_create::NewPartition;
pub use read_path::read_batch_bytes;
pub use recovery::{CheckpointStatus, RecoveryReport};
pub use shard_store::{
    AppendReceipt, Durability, Isolation, LEADER_EPOCH, PartitionOffsets, ReadBatch, ReadPart,
    ReadResult, ShardStore, StoreGauges, StoreHooks, StoreOptions,
};
pub use store_errors::{AppendError, OpenError, PartitionError, ReadError};
