//! Sluice: a Kafka-compatible message broker storage node.
//!
//! It stores data the RocketMQ way (one ordered commit log per shard plus
//! per-partition consume queues) and runs thread-per-core on io_uring with
//! group-commit fsync. See ARCHITECTURE.md for what is built and why.
//!
//! Layers, bottom up: [`io`] (io_uring and its fallback), [`storage`] (commit
//! log, consume queues, recovery, retention), [`shard`] (threads, pinning,
//! mailboxes), and the binary's `serve` command on top.

pub mod admin;
pub mod bench;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod data_dir;
pub mod error_chain;
pub mod exposure;
pub mod failpoint;
/// Fuzz targets and the network fuzzer (`fuzz/README.md`); not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod io;
pub mod kafka;
pub mod log_throttle;
pub mod open_files;
pub mod record_batch;
pub mod security;
pub mod shard;
pub mod storage;
pub mod telemetry;
