//! Identifier newtypes shared by every layer.
//!
//! Offsets, commit-log positions, partition ids and shard ids are all plain
//! integers on the wire and on disk; wrapping them keeps a position from being
//! passed where an offset is expected. Each type is `Copy` and ordered.

use std::fmt;

/// A shard: one pinned OS thread with its own commit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

/// A partition's id inside its shard's commit log (the frame header carries it).
///
/// Never reused, so frames of a deleted partition can never be attributed
/// to a newer one. A single node's shard allocates its own, from 0; a
/// cluster's controller allocates them from [`PartitionId::CLUSTER_FIRST`]
/// for every partition of every topic, so that a partition has the same id
/// in every replica of its shard group's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

impl PartitionId {
    /// The first id a cluster's controller allocates: above any a shard
    /// allocates itself.
    pub const CLUSTER_FIRST: u32 = 1 << 31;

    /// Whether a cluster's controller allocated this id.
    pub fn is_cluster_assigned(self) -> bool {
        self.0 >= PartitionId::CLUSTER_FIRST
    }
}

/// A Kafka record offset within one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub i64);

/// A byte position in a shard's commit log: segment base + byte in segment.
///
/// Positions only grow; segment files are named by the position of their
/// first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition(pub u64);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition#{}", self.0)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl LogPosition {
    pub const ZERO: LogPosition = LogPosition(0);

    pub fn plus(self, bytes: u64) -> LogPosition {
        LogPosition(self.0.checked_add(bytes).expect("log position overflow"))
    }
}
