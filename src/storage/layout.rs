//! Where a shard's files live under the data directory.
//!
//! ```text
//! <data_dir>/shard-<n>/
//!     log/<base position>.log          commit-log segments
//!     checkpoint                       see checkpoint.rs
//!     next-partition-id                partition ids are never reused
//!     partitions/<id>/partition.meta   topic name and partition index
//!     partitions/<id>/<index>.cq       consume-queue files
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

    pub fn partition_ids_file(&self) -> PathBuf {
        self.root.join(PARTITION_IDS_FILE)
    }

    pub fn create_dirs(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.log_dir())?;
        std::fs::create_dir_all(self.partitions_dir())
    }
}
