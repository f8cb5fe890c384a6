//! Where a shard's files live under the data directory.
//!
//! ```text
//! <data_dir>/shard-<n>/
//!     log/<base position>.log          commit-log segments
//!     checkpoint                       see checkpoint.rs
//!     next-partition-id                partition ids are never reused
//!     partitions/<id>/partition.meta   topic name and partition index
//!     partitions/<id>/<index>.cq       consume-queue files
//!     producers/<position>.snap        see producer_snapshot.rs
//! ```

use std::path::{Path, PathBuf};

use crate::ids::{PartitionId, ShardId};

pub const PARTITION_IDS_FILE: &str = "next-partition-id";

#[derive(Clone, Debug)]
pub struct ShardLayout {
    root: PathBuf,
}

impl ShardLayout {
    pub fn new(data_dir: &Path, shard: ShardId) -> ShardLayout {
        ShardLayout {
            root: data_dir.join(format!("shard-{}", shard.0)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    pub fn partitions_dir(&self) -> PathBuf {
        self.root.join("partitions")
    }

    pub fn partition_dir(&self, id: PartitionId) -> PathBuf {
        self.partitions_dir().join(format!("{:010}", id.0))
    }

    pub fn producer_snapshots_dir(&self) -> PathBuf {
        self.root
            .join(super::producer_snapshot::PRODUCER_SNAPSHOTS_DIR)
    }

    /// The delayed-delivery timer's entry files (`storage/timer/index.rs`).
    pub fn timer_dir(&self) -> PathBuf {
        self.root.join("timer")
    }

    pub fn partition_ids_file(&self) -> PathBuf {
        self.root.join(PARTITION_IDS_FILE)
    }

    /// Create the shard's directories; an error names the one that failed.
    pub fn create_dirs(&self) -> Result<(), (PathBuf, std::io::Error)> {
        for dir in [self.log_dir(), self.partitions_dir()] {
            std::fs::create_dir_all(&dir).map_err(|error| (dir.clone(), error))?;
        }
        Ok(())
    }
}
