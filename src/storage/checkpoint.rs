//! The shard's checkpoint: where recovery may start scanning.
//!
//! Written every `checkpoint_interval_ms` and at shutdown, after the consume
//! queue files it vouches for are fsynced. It records:
//!
//! * `indexed_position`: a frame boundary at or below the durable end of the
//!   commit log. Every frame before it is fsynced, and so is every queue entry
//!   for those frames.
//! * per partition: how many queue entries those frames produced, the log
//!   start offset (moved by retention) and the next offset.
//! * the delayed-delivery timer's entry count and cursor, and the log
//!   position they are exact at (`storage/timer/`; version 2): the durable
//!   frame end, at or past `indexed_position`, which a compaction pass
//!   waiting to be applied may hold back.
//!
//! Layout (little-endian): magic `SLCK`, version u8, 3 reserved bytes,
//! indexed_position u64, partition count u32, then per partition
//! {id u32, reserved u32, log_start_offset i64, next_offset i64,
//! queue_entries u64}, then (version 2) timer entries u64, timer cursor
//! i64 and timer position u64, then CRC32C of everything before it.
//! Version 1 (no timer) reads as an empty timer at `indexed_position`.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::durable_file::write_atomic;
use super::timer::index::TimerCheckpoint;
use crate::ids::{LogPosition, Offset, PartitionId};

pub const CHECKPOINT_FILE: &str = "checkpoint";
const MAGIC: [u8; 4] = *b"SLCK";
const VERSION: u8 = 2;
const TIMER_BYTES: usize = 24;
const HEADER_BYTES: usize = 20;
const PARTITION_RECORD_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionCheckpoint {
    pub id: PartitionId,
    pub log_start_offset: Offset,
    pub next_offset: Offset,
    pub queue_entries: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub indexed_position: LogPosition,
    pub partitions: Vec<PartitionCheckpoint>,
    /// The timer index as of `timer_position`.
    pub timer: TimerCheckpoint,
    pub timer_position: LogPosition,
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot access checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path} is damaged ({reason}); recovery will scan the whole commit log")]
    Corrupt { path: PathBuf, reason: String },
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_BYTES + self.partitions.len() * PARTITION_RECORD_BYTES + 4);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.indexed_position.0.to_le_bytes());
        out.extend_from_slice(&(self.partitions.len() as u32).to_le_bytes());
        for partition in &self.partitions {
            out.extend_from_slice(&partition.id.0.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&partition.log_start_offset.0.to_le_bytes());
            out.extend_from_slice(&partition.next_offset.0.to_le_bytes());
            out.extend_from_slice(&partition.queue_entries.to_le_bytes());
        }
        out.extend_from_slice(&self.timer.entries.to_le_bytes());
        out.extend_from_slice(&self.timer.cursor.to_le_bytes());
        out.extend_from_slice(&self.timer_position.0.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        if bytes.len() < HEADER_BYTES + 4 || bytes[..4] != MAGIC {
            return Err(corrupt("no checkpoint magic".to_owned()));
        }
        let version = bytes[4];
        if version != 1 && version != VERSION {
            return Err(corrupt(format!("unsupported version {}", bytes[4])));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != stored {
            return Err(corrupt("CRC mismatch".to_owned()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let count = u32_at(16) as usize;
        let timer_bytes = if version == 1 { 0 } else { TIMER_BYTES };
        if body.len() != HEADER_BYTES + count * PARTITION_RECORD_BYTES + timer_bytes {
            return Err(corrupt(format!(
                "{count} partitions do not fit {} bytes",
                body.len()
            )));
        }
        let partitions = (0..count)
            .map(|index| {
                let at = HEADER_BYTES + index * PARTITION_RECORD_BYTES;
                PartitionCheckpoint {
                    id: PartitionId(u32_at(at)),
                    log_start_offset: Offset(u64_at(at + 8) as i64),
                    next_offset: Offset(u64_at(at + 16) as i64),
                    queue_entries: u64_at(at + 24),
                }
            })
            .collect();
        let timer_at = HEADER_BYTES + count * PARTITION_RECORD_BYTES;
        let indexed_position = LogPosition(u64_at(8));
        let (timer, timer_position) = if version == 1 {
            (TimerCheckpoint::default(), indexed_position)
        } else {
            let timer = TimerCheckpoint {
                entries: u64_at(timer_at),
                cursor: u64_at(timer_at + 8) as i64,
            };
            (timer, LogPosition(u64_at(timer_at + 16)))
        };
        if timer_position < indexed_position {
            return Err(corrupt(format!(
                "timer position {timer_position} before the indexed position {indexed_position}"
            )));
        }
        Ok(Checkpoint {
            indexed_position,
            partitions,
            timer,
            timer_position,
        })
    }

    /// Load the checkpoint in `dir`; `Ok(None)` if there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = dir.join(CHECKPOINT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Checkpoint::decode(&bytes, &path).map(Some),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io { path, source }),
        }
    }

    pub fn store(&self, dir: &Path) -> Result<(), CheckpointError> {
        let path = dir.join(CHECKPOINT_FILE);
        write_atomic(&path, &self.encode()).map_err(|source| CheckpointError::Io { path, source })
    }

    pub fn partition(&self, id: PartitionId) -> Option<&PartitionCheckpoint> {
        self.partitions.iter().find(|partition| partition.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let checkpoint = Checkpoint {
            indexed_position: LogPosition(4096),
            partitions: vec![PartitionCheckpoint {
                id: PartitionId(3),
                log_start_offset: Offset(10),
                next_offset: Offset(99),
                queue_entries: 7,
            }],
            timer: TimerCheckpoint {
                entries: 12,
                cursor: 1_700_000_000,
            },
            timer_position: LogPosition(8192),
        };
        let mut bytes = checkpoint.encode();
        assert_eq!(
            Checkpoint::decode(&bytes, Path::new("c")).unwrap(),
            checkpoint
        );
        bytes[9] ^= 0xff;
        assert!(matches!(
            Checkpoint::decode(&bytes, Path::new("c")),
            Err(CheckpointError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_version_1_checkpoint_reads_with_an_empty_timer() {
        let checkpoint = Checkpoint {
            indexed_position: LogPosition(4096),
            partitions: Vec::new(),
            timer: TimerCheckpoint::default(),
            timer_position: LogPosition(4096),
        };
        let mut bytes = checkpoint.encode();
        bytes.truncate(HEADER_BYTES);
        bytes[4] = 1;
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Checkpoint::decode(&bytes, Path::new("c")).unwrap(),
            checkpoint
        );
    }
}
