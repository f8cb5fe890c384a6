//! One consume-queue entry: where a stored batch is and what it covers.
//!
//! Entry layout (version 2, 40 bytes, little-endian):
//!
//! | bytes  | field |
//! |--------|-------|
//! | 0..8   | base offset (i64) |
//! | 8..16  | frame position (u64) in the shard's commit log |
//! | 16..20 | batch length (u32), never 0 in a written entry |
//! | 20..24 | last offset delta (u32) |
//! | 24..32 | max timestamp so far (i64, ms): the running maximum |
//! | 32..34 | the batch's Kafka attributes (u16: codec, timestamp type, transactional, control) |
//! | 34..36 | reserved, zero |
//! | 36..40 | CRC32C of bytes 0..36 |
//!
//! An empty slot is 40 zero bytes. Anything else must carry a matching CRC,
//! so a damaged entry is reported as [`EntryError`] instead of sending a
//! reader to a wrong position.

use crate::ids::{LogPosition, Offset};

pub const ENTRY_BYTES: usize = 40;
const CRC_AT: usize = 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    pub base_offset: Offset,
    pub position: LogPosition,
    pub batch_len: u32,
    pub last_offset_delta: u32,
    pub max_timestamp_ms: i64,
    /// The batch's attributes (Kafka RecordBatch v2 `attributes`).
    pub attributes: u16,
}

/// Why the bytes of a slot are not an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// The CRC does not match: the slot was damaged on disk.
    Checksum { stored: u32, computed: u32 },
    /// The CRC matches but a field is impossible (length 0, reserved bytes
    /// set, offsets or positions that overflow).
    Field(&'static str),
}

impl std::fmt::Display for EntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryError::Checksum { stored, computed } => write!(
                f,
                "entry CRC32C mismatch: stored {stored:#010x}, bytes hash to {computed:#010x}"
            ),
            EntryError::Field(reason) => write!(f, "entry has {reason}"),
        }
    }
}

impl QueueEntry {
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + i64::from(self.last_offset_delta))
    }

    pub fn next_offset(&self) -> Offset {
        Offset(self.last_offset().0 + 1)
    }

    /// Commit-log position just past this entry's frame.
    pub fn frame_end(&self, frame_header_bytes: u64) -> LogPosition {
        self.position
            .plus(frame_header_bytes + u64::from(self.batch_len))
    }

    pub fn encode(&self) -> [u8; ENTRY_BYTES] {
        assert!(self.batch_len > 0, "a written entry has a batch");
        let mut out = [0u8; ENTRY_BYTES];
        out[0..8].copy_from_slice(&self.base_offset.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.position.0.to_le_bytes());
        out[16..20].copy_from_slice(&self.batch_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.last_offset_delta.to_le_bytes());
        out[24..32].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        out[32..34].copy_from_slice(&self.attributes.to_le_bytes());
        let crc = crc32c::crc32c(&out[..CRC_AT]);
        out[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `Ok(None)` for an empty slot, the entry if its CRC and fields check.
    pub fn decode(bytes: &[u8; ENTRY_BYTES]) -> Result<Option<QueueEntry>, EntryError> {
        if bytes.iter().all(|&byte| byte == 0) {
            return Ok(None);
        }
        let stored = u32::from_le_bytes(le_bytes(bytes, CRC_AT));
        let computed = crc32c::crc32c(&bytes[..CRC_AT]);
        if stored != computed {
            return Err(EntryError::Checksum { stored, computed });
        }
        let entry = QueueEntry {
            base_offset: Offset(i64::from_le_bytes(le_bytes(bytes, 0))),
            position: LogPosition(u64::from_le_bytes(le_bytes(bytes, 8))),
            batch_len: u32::from_le_bytes(le_bytes(bytes, 16)),
            last_offset_delta: u32::from_le_bytes(le_bytes(bytes, 20)),
            max_timestamp_ms: i64::from_le_bytes(le_bytes(bytes, 24)),
            attributes: u16::from_le_bytes(le_bytes(bytes, 32)),
        };
        if entry.batch_len == 0 {
            return Err(EntryError::Field("a zero batch length"));
        }
        if bytes[34..36] != [0, 0] {
            return Err(EntryError::Field("non-zero reserved bytes"));
        }
        if entry.base_offset.0 < 0
            || entry
                .base_offset
                .0
                .checked_add(i64::from(entry.last_offset_delta) + 1)
                .is_none()
        {
            return Err(EntryError::Field("an offset range outside 0..i64::MAX"));
        }
        if entry
            .position
            .0
            .checked_add(u64::from(entry.batch_len) + u64::from(u32::MAX))
            .is_none()
        {
            return Err(EntryError::Field(
                "a position at the end of the address space",
            ));
        }
        Ok(Some(entry))
    }
}

fn le_bytes<const N: usize>(bytes: &[u8; ENTRY_BYTES], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> QueueEntry {
        QueueEntry {
            base_offset: Offset(41),
            position: LogPosition(4096),
            batch_len: 100,
            last_offset_delta: 2,
            max_timestamp_ms: 1_700_000_000_000,
            attributes: 0x14,
        }
    }

    #[test]
    fn entries_round_trip_and_empty_slots_are_none() {
        let encoded = entry().encode();
        assert_eq!(QueueEntry::decode(&encoded), Ok(Some(entry())));
        assert_eq!(QueueEntry::decode(&[0; ENTRY_BYTES]), Ok(None));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let encoded = entry().encode();
        for byte in 0..ENTRY_BYTES {
            for bit in 0..8 {
                let mut damaged = encoded;
                damaged[byte] ^= 1 << bit;
                assert!(
                    QueueEntry::decode(&damaged).is_err(),
                    "bit {bit} of byte {byte} flipped unnoticed"
                );
            }
        }
    }

    #[test]
    fn impossible_fields_with_a_valid_crc_are_refused() {
        let mut huge = entry();
        huge.position = LogPosition(u64::MAX - 10);
        assert!(matches!(
            QueueEntry::decode(&huge.encode()),
            Err(EntryError::Field(_))
        ));
        let mut negative = entry();
        negative.base_offset = Offset(-5);
        assert!(matches!(
            QueueEntry::decode(&negative.encode()),
            Err(EntryError::Field(_))
        ));
    }
}
