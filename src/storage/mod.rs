//! Per-shard storage, the RocketMQ way: one ordered commit log per shard
//! plus a small consume queue per partition.
//!
//! Files, from the bottom up: [`frame`] (the on-disk record), [`segment`]
//! and [`segment_reader`] (log files), [`appender`] and [`commit_log`] (the
//! write path and group commit), [`consume_queue`] and [`partition`] (the
//! per-partition index), [`checkpoint`] and [`recovery`] (restart),
//! [`retention`] and [`disk_usage`] (deletion), and [`shard_store`], the API
//! the rest of the broker uses.

pub mod appender;
pub mod checkpoint;
pub mod commit_log;
pub mod consume_queue;
pub mod disk_usage;
pub mod durable_file;
pub mod frame;
pub mod layout;
pub mod partition;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod segment_reader;
pub mod shard_store;
pub mod watermark;

pub use partition::PartitionConfig;
pub use recovery::{CheckpointStatus, RecoveryReport};
pub use shard_store::{
    AppendError, AppendReceipt, Durability, OpenError, PartitionError, PartitionOffsets, ReadError,
    ReadResult, ReadSpan, ShardStore, StoreHooks, StoreOptions, read_span,
};
