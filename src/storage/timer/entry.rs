//! One timer entry: a delayed record waiting in the commit log, as the
//! timer index holds it (ARCHITECTURE.md, "Delayed delivery, retry and dead
//! letters").
//!
//! Layout (little-endian), [`ENTRY_BYTES`] = 64:
//!
//! | bytes  | field          | notes                                          |
//! |--------|----------------|------------------------------------------------|
//! | 0..8   | due_ms         | epoch milliseconds                             |
//! | 8..16  | held_position  | log position of the timer batch's first byte   |
//! | 16..20 | record_bytes   | bytes of the delayed record in its timer batch |
//! | 20..24 | partition      | the shard-local partition the record goes to   |
//! | 24..32 | origin_offset  | the offset the record got at Produce           |
//! | 32..40 | previous       | the slot's previous entry's index + 1; 0: none |
//! | 40..48 | slot           | the absolute wheel slot it was listed in       |
//! | 48..52 | crc32c         | over bytes 0..48, which never change           |
//! | 52..56 | done_kind      | [`Done`]'s code; 0 while pending               |
//! | 56..64 | done_at        | where it was done (see [`Done`])               |

use crate::ids::{LogPosition, Offset, PartitionId};

pub const ENTRY_BYTES: usize = 64;
const SLOT_AT: usize = 40;
const CRC_AT: usize = 48;
const DONE_KIND_AT: usize = 52;
const DONE_AT: usize = 56;

/// What became of an entry that is no longer pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// Delivered by the timer-delivery frame at this log position.
    Delivered(LogPosition),
    /// Its record was copied forward by the timer-roll frame at this log
    /// position (a newer entry points there).
    Moved(LogPosition),
    /// Inserted again as the entry with this index (it was due past the
    /// wheel's window when its slot came up).
    Reinserted(u64),
    /// Due when its partition no longer existed (its topic was deleted):
    /// nothing was delivered.
    Dropped,
}

impl Done {
    fn encode(self) -> (u32, u64) {
        match self {
            Done::Delivered(at) => (1, at.0),
            Done::Moved(at) => (2, at.0),
            Done::Reinserted(index) => (3, index),
            Done::Dropped => (4, 0),
        }
    }

    fn decode(kind: u32, at: u64) -> Result<Option<Done>, String> {
        Ok(match kind {
            0 => None,
            1 => Some(Done::Delivered(LogPosition(at))),
            2 => Some(Done::Moved(LogPosition(at))),
            3 => Some(Done::Reinserted(at)),
            4 => Some(Done::Dropped),
            other => return Err(format!("unknown done kind {other}")),
        })
    }

    /// The bytes of `done_kind` and `done_at`.
    pub fn field_bytes(done: Option<Done>) -> [u8; 12] {
        let (kind, at) = done.map_or((0, 0), Done::encode);
        let mut bytes = [0; 12];
        bytes[..4].copy_from_slice(&kind.to_le_bytes());
        bytes[4..].copy_from_slice(&at.to_le_bytes());
        bytes
    }

    /// Offset of the done fields in an entry.
    pub const FIELD_AT: usize = DONE_KIND_AT;
}

/// A delayed record waiting for its due time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerEntry {
    pub due_ms: i64,
    /// The held frame whose timer batch holds the record: its first byte
    /// in the log.
    pub held_position: LogPosition,
    /// The record's bytes in the timer batch (for the pending-bytes gauge).
    pub record_bytes: u32,
    pub partition: PartitionId,
    /// The offset the record got at Produce; its identity in the partition.
    pub origin_offset: Offset,
    /// The index + 1 of the previous entry of the same wheel slot, 0 for
    /// none: a slot's entries form a list from its newest.
    pub previous: u64,
    /// The absolute wheel slot (milliseconds / slot length) it is listed in.
    pub slot: i64,
    pub done: Option<Done>,
}

impl TimerEntry {
    pub fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut bytes = [0; ENTRY_BYTES];
        bytes[0..8].copy_from_slice(&self.due_ms.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.held_position.0.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.record_bytes.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.partition.0.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.origin_offset.0.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.previous.to_le_bytes());
        bytes[SLOT_AT..SLOT_AT + 8].copy_from_slice(&self.slot.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..CRC_AT]);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        bytes[DONE_KIND_AT..DONE_AT + 8].copy_from_slice(&Done::field_bytes(self.done));
        bytes
    }

    /// Decode an entry; an error for a damaged one (CRC, unknown kind) or
    /// an unwritten one (all zero).
    pub fn decode(bytes: &[u8; ENTRY_BYTES]) -> Result<TimerEntry, String> {
        if bytes.iter().all(|&byte| byte == 0) {
            return Err("never written".to_owned());
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let stored = u32_at(CRC_AT);
        let computed = crc32c::crc32c(&bytes[..CRC_AT]);
        if stored != computed {
            return Err(format!(
                "CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ));
        }
        Ok(TimerEntry {
            due_ms: u64_at(0) as i64,
            held_position: LogPosition(u64_at(8)),
            record_bytes: u32_at(16),
            partition: PartitionId(u32_at(20)),
            origin_offset: Offset(u64_at(24) as i64),
            previous: u64_at(32),
            slot: u64_at(SLOT_AT) as i64,
            done: Done::decode(u32_at(DONE_KIND_AT), u64_at(DONE_AT))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(done: Option<Done>) -> TimerEntry {
        TimerEntry {
            due_ms: 1_700_000_000_123,
            held_position: LogPosition(4096 * 7 + 20),
            record_bytes: 300,
            partition: PartitionId(9),
            origin_offset: Offset(41),
            previous: 17,
            slot: 1_700_000_000,
            done,
        }
    }

    #[test]
    fn entries_round_trip_with_every_done_kind() {
        for done in [
            None,
            Some(Done::Delivered(LogPosition(99))),
            Some(Done::Moved(LogPosition(1 << 40))),
            Some(Done::Reinserted(12)),
            Some(Done::Dropped),
        ] {
            let original = entry(done);
            assert_eq!(TimerEntry::decode(&original.encode()), Ok(original));
        }
    }

    #[test]
    fn the_done_fields_change_without_the_crc_and_damage_is_found() {
        let mut bytes = entry(None).encode();
        bytes[Done::FIELD_AT..Done::FIELD_AT + 12]
            .copy_from_slice(&Done::field_bytes(Some(Done::Delivered(LogPosition(5)))));
        assert_eq!(
            TimerEntry::decode(&bytes).unwrap().done,
            Some(Done::Delivered(LogPosition(5)))
        );
        let mut damaged = bytes;
        damaged[3] ^= 1;
        assert!(TimerEntry::decode(&damaged).unwrap_err().contains("CRC32C"));
        let mut unknown = bytes;
        unknown[Done::FIELD_AT] = 9;
        assert!(
            TimerEntry::decode(&unknown)
                .unwrap_err()
                .contains("done kind")
        );
        assert!(TimerEntry::decode(&[0; ENTRY_BYTES]).is_err());
    }
}
