//! Compaction commit frames: the entries of a cleaning pass's new clean
//! queue, carried in the commit log so that recovery and followers build the
//! same clean queue from the log alone (ARCHITECTURE.md, "Log compaction").
//!
//! A commit part is a RecordBatch v2 (uncompressed, one record, key
//! [`COMMIT_KEY`]) stored in a frame of kind
//! [`FrameKind::CompactionCommit`](crate::storage::frame::FrameKind). Its
//! value, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `SLCC` |
//! | 1 | version, 1 |
//! | 1 | 1 on the last part of the pass, else 0 |
//! | 2 | index of this part in its pass, from 0 |
//! | 8 | generation of the clean queue (per partition, increasing) |
//! | 8 | clean end: the first offset the pass left in the head |
//! | 4 | entries in this part |
//! | 40 each | the entries, in the consume-queue encoding (each with its CRC) |

use thiserror::Error;

use crate::ids::Offset;
use crate::record_batch::{self, BatchBuilder, RecordSpec};
use crate::storage::queue_entry::{ENTRY_BYTES, EntryError, QueueEntry};

/// The key of a commit part's one record.
pub const COMMIT_KEY: &[u8] = b"sluice.compaction.commit";
const MAGIC: [u8; 4] = *b"SLCC";
const VERSION: u8 = 1;
const HEAD_BYTES: usize = 28;
/// Entries per commit part at most: about 1 MiB of them.
const ENTRIES_PER_PART_MAX: usize = 26_000;
/// A commit batch's bytes besides its entries: the batch header (61), the
/// record's framing (at most 21), its key and the part's head, rounded up.
const PART_OVERHEAD_BYTES: usize = 160;

/// Entries per commit part such that its batch is at most `batch_max`
/// bytes (the commit log's largest batch, `batch_ceiling_bytes`): at most
/// [`ENTRIES_PER_PART_MAX`], at least one.
pub fn entries_per_part(batch_max: u32) -> usize {
    let room = (batch_max as usize).saturating_sub(PART_OVERHEAD_BYTES) / ENTRY_BYTES;
    room.clamp(1, ENTRIES_PER_PART_MAX)
}

/// One commit frame's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPart {
    pub generation: u64,
    pub clean_end: Offset,
    /// The pass's last part: the clean queue is complete with it.
    pub last: bool,
    /// This part's place in its pass, from 0: a part missing in the log
    /// (damage) leaves the pass incomplete instead of joining the others.
    pub index: u16,
    pub entries: Vec<QueueEntry>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommitError {
    #[error("a compaction commit batch: {0}")]
    Batch(String),
    #[error("a compaction commit record is {0}")]
    Layout(&'static str),
    #[error("a compaction commit entry: {0}")]
    Entry(EntryError),
}

impl CommitPart {
    /// The RecordBatch that carries this part, stamped `now_ms`, its base
    /// offset the clean end (nothing indexes it: the frame kind says so).
    pub fn encode(&self, now_ms: i64) -> Vec<u8> {
        let mut value = Vec::with_capacity(HEAD_BYTES + self.entries.len() * ENTRY_BYTES);
        value.extend_from_slice(&MAGIC);
        value.push(VERSION);
        value.push(u8::from(self.last));
        value.extend_from_slice(&self.index.to_le_bytes());
        value.extend_from_slice(&self.generation.to_le_bytes());
        value.extend_from_slice(&self.clean_end.0.to_le_bytes());
        let count = u32::try_from(self.entries.len()).expect("a part holds few entries");
        value.extend_from_slice(&count.to_le_bytes());
        for entry in &self.entries {
            value.extend_from_slice(&entry.encode());
        }
        let mut builder = BatchBuilder::new(now_ms);
        builder.push(RecordSpec {
            key: Some(COMMIT_KEY),
            value: Some(&value),
            timestamp_delta_ms: 0,
        });
        let mut batch = builder.build();
        record_batch::assign_broker_fields(&mut batch, self.clean_end.0, -1);
        batch
    }

    /// The part a commit frame's batch (already checked whole) carries.
    pub fn decode(batch: &[u8]) -> Result<CommitPart, CommitError> {
        let mut value = None;
        record_batch::walk_records(batch, batch.len() as u64, |record| {
            if let (
                record_batch::record_walk::Field::Bytes(key),
                record_batch::record_walk::Field::Bytes(bytes),
            ) = (record.key, record.value)
                && key == COMMIT_KEY
            {
                value = Some(bytes);
            }
            std::ops::ControlFlow::Break(())
        })
        .map_err(|error| CommitError::Batch(error.to_string()))?;
        let value = value.ok_or(CommitError::Layout("missing"))?;
        if value.len() < HEAD_BYTES || value[..4] != MAGIC {
            return Err(CommitError::Layout("without its magic"));
        }
        if value[4] != VERSION {
            return Err(CommitError::Layout("of an unknown version"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(value[at..at + 8].try_into().expect("8"));
        let count = u32::from_le_bytes(value[24..28].try_into().expect("4")) as usize;
        let body = &value[HEAD_BYTES..];
        if body.len() != count.saturating_mul(ENTRY_BYTES) {
            return Err(CommitError::Layout("of another length than its entries"));
        }
        let entries = body
            .chunks_exact(ENTRY_BYTES)
            .map(|bytes| {
                QueueEntry::decode(bytes.try_into().expect("40 bytes"))
                    .map_err(CommitError::Entry)?
                    .ok_or(CommitError::Layout("holding an empty entry"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CommitPart {
            generation: u64_at(8),
            clean_end: Offset(u64_at(16) as i64),
            last: value[5] == 1,
            index: u16::from_le_bytes([value[6], value[7]]),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::LogPosition;

    /// A breaker's finding: parts of a fixed 26 000 entries (1 MiB) were
    /// larger than a small configuration's segments and write buffers.
    #[test]
    fn a_full_part_fits_the_logs_largest_batch() {
        for batch_max in [4_096u32, 16_384, 65_536, 1 << 20, 8 << 20] {
            let count = entries_per_part(batch_max);
            let part = CommitPart {
                generation: 1,
                clean_end: Offset(0),
                last: true,
                index: 0,
                entries: (0..count).map(|n| entry(n as i64, n as u64)).collect(),
            };
            let bytes = part.encode(0).len();
            assert!(bytes <= batch_max as usize, "{bytes} > {batch_max}");
            assert!(bytes + 2 * ENTRY_BYTES > batch_max as usize || count == ENTRIES_PER_PART_MAX);
        }
        assert_eq!(entries_per_part(8 << 20), ENTRIES_PER_PART_MAX);
        assert_eq!(entries_per_part(100), 1);
    }

    fn entry(base: i64, position: u64) -> QueueEntry {
        QueueEntry {
            base_offset: Offset(base),
            position: LogPosition(position),
            batch_len: 100,
            last_offset_delta: 3,
            max_timestamp_ms: 1_700_000_000_000 + base,
            attributes: 0,
        }
    }

    #[test]
    fn a_part_round_trips_through_its_batch() {
        let part = CommitPart {
            generation: 7,
            clean_end: Offset(1234),
            last: true,
            index: 3,
            entries: vec![entry(0, 4096), entry(10, 8192)],
        };
        let batch = part.encode(1_700_000_000_000);
        assert!(record_batch::crc_matches(&batch));
        record_batch::check_structure(&batch).unwrap();
        assert_eq!(CommitPart::decode(&batch).unwrap(), part);
    }

    #[test]
    fn a_damaged_entry_is_an_error() {
        let part = CommitPart {
            generation: 1,
            clean_end: Offset(5),
            last: false,
            index: 0,
            entries: vec![entry(0, 4096)],
        };
        let mut batch = part.encode(0);
        let len = batch.len();
        batch[len - 10] ^= 1;
        assert!(matches!(
            CommitPart::decode(&batch),
            Err(CommitError::Entry(_))
        ));
    }
}
