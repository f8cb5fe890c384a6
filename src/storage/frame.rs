//! The commit-log frame: a small versioned header in front of each stored batch.
//!
//! Layout (little-endian), [`FRAME_HEADER_BYTES`] = 20:
//!
//! | bytes  | field         | notes                                          |
//! |--------|---------------|------------------------------------------------|
//! | 0..4   | magic         | `SLCF`; lets recovery resynchronise after damage |
//! | 4      | version       | 1 (a producer's batch) or 2 (see `kind`)       |
//! | 5      | kind          | version 1: 0; version 2: a [`FrameKind`]       |
//! | 6..8   | reserved      | 0                                              |
//! | 8..12  | payload_len   | bytes of the RecordBatch that follows          |
//! | 12..16 | partition_id  | the shard-local [`PartitionId`]                |
//! | 16..20 | crc32c        | over bytes 0..16 and the batch's first 21 bytes |
//!
//! The header CRC covers the batch's `baseOffset`, `batchLength`,
//! `partitionLeaderEpoch`, magic and CRC fields, which the batch's own CRC
//! does not; the batch CRC covers the rest. Together they check every byte
//! of the frame, and the batch bytes stay exactly what Kafka clients expect.
//!
//! Version 2 frames are written by log compaction (ARCHITECTURE.md, "Log
//! compaction"): a copy of a cleaned batch, or a commit of a cleaning pass;
//! and by delayed delivery ("Delayed delivery, retry and dead letters"):
//! the held records of a produced batch.
//! A build that knows only version 1 refuses them instead of indexing a copy
//! as new data.

use thiserror::Error;

use crate::ids::PartitionId;
use crate::record_batch;

pub const FRAME_HEADER_BYTES: usize = 20;
pub const FRAME_MAGIC: [u8; 4] = *b"SLCF";
pub const FRAME_VERSION: u8 = 1;
/// The version of frames whose byte 5 names a [`FrameKind`].
pub const FRAME_VERSION_KINDS: u8 = 2;
/// Batch bytes covered by the header CRC (those outside the batch's own CRC).
pub const COVERED_PAYLOAD_PREFIX_BYTES: usize = record_batch::CRC_COVERED_FROM;
/// The header plus the covered batch prefix: what append encodes up front.
pub const FRAME_PREFIX_BYTES: usize = FRAME_HEADER_BYTES + COVERED_PAYLOAD_PREFIX_BYTES;

const PAYLOAD_LEN_AT: usize = 8;
const PARTITION_AT: usize = 12;
const CRC_AT: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    pub partition: PartitionId,
    pub kind: FrameKind,
}

/// What a frame's batch is to its partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FrameKind {
    /// A batch appended to the partition (Produce, a marker, the broker's
    /// internal records): indexed at its offsets. Version 1.
    #[default]
    Batch,
    /// A cleaned copy of an older batch of the partition (its original
    /// offsets): indexed only through a later commit.
    CompactionCopy,
    /// Part of a cleaning pass's commit: the new clean queue's entries.
    CompactionCommit,
    /// The delayed records of a produced batch (a timer batch, issue 18):
    /// not indexed; counted only when the next frame of the log is the
    /// partition's batch at the same base offset whose CRC the held
    /// batch's `partitionLeaderEpoch` field holds.
    DelayHeld,
    /// The note of a timer delivery (issue 18): an empty broker-built batch
    /// that says the next frame of the log, the partition's batch at the
    /// same base offset whose CRC its `partitionLeaderEpoch` field holds,
    /// delivers delayed records (each naming its origin offset in a
    /// `sluice.origin.offset` header). Not indexed.
    DelayDelivery,
    /// A timer roll note (issue 18): a broker-built batch whose records
    /// name timer entries due past the wheel's window that are listed
    /// again, so that every copy of the log numbers its entries alike.
    /// Not indexed.
    DelayRoll,
}

impl FrameKind {
    fn code(self) -> u8 {
        match self {
            FrameKind::Batch => 0,
            FrameKind::CompactionCopy => 1,
            FrameKind::CompactionCommit => 2,
            FrameKind::DelayHeld => 3,
            FrameKind::DelayDelivery => 4,
            FrameKind::DelayRoll => 5,
        }
    }

    fn version(self) -> u8 {
        match self {
            FrameKind::Batch => FRAME_VERSION,
            _ => FRAME_VERSION_KINDS,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("no frame magic (found {found:02x?})")]
    BadMagic { found: [u8; 4] },
    #[error("frame version {found} is newer than this build understands (1 and 2)")]
    UnsupportedVersion { found: u8 },
    #[error("frame kind {found} is not one this build knows for version {version}")]
    UnknownKind { found: u8, version: u8 },
    #[error("frame payload length {payload_len} is outside 61..={limit}")]
    LengthOutOfRange { payload_len: u32, limit: u64 },
    #[error("frame header CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
}

impl FrameHeader {
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + u64::from(self.payload_len)
    }

    /// Encode the header followed by the batch's (already patched) first 21
    /// bytes into `out`.
    pub fn encode_prefix(&self, payload_prefix: &[u8], out: &mut [u8; FRAME_PREFIX_BYTES]) {
        assert_eq!(payload_prefix.len(), COVERED_PAYLOAD_PREFIX_BYTES);
        out[..4].copy_from_slice(&FRAME_MAGIC);
        out[4] = self.kind.version();
        out[5] = self.kind.code();
        out[6..8].fill(0);
        out[PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 4].copy_from_slice(&self.payload_len.to_le_bytes());
        out[PARTITION_AT..PARTITION_AT + 4].copy_from_slice(&self.partition.0.to_le_bytes());
        out[FRAME_HEADER_BYTES..].copy_from_slice(payload_prefix);
        let crc = header_crc(&out[..CRC_AT], payload_prefix);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decode and check a header. `prefix` holds at least the header and the
    /// covered payload prefix; `payload_len_max` bounds a plausible payload.
    pub fn decode(prefix: &[u8], payload_len_max: u64) -> Result<FrameHeader, FrameError> {
        assert!(
            prefix.len() >= FRAME_PREFIX_BYTES,
            "caller reads the whole frame prefix"
        );
        let magic: [u8; 4] = prefix[..4].try_into().expect("4 bytes");
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let kind = match (prefix[4], prefix[5]) {
            (FRAME_VERSION, 0) => FrameKind::Batch,
            (FRAME_VERSION_KINDS, 1) => FrameKind::CompactionCopy,
            (FRAME_VERSION_KINDS, 2) => FrameKind::CompactionCommit,
            (FRAME_VERSION_KINDS, 3) => FrameKind::DelayHeld,
            (FRAME_VERSION_KINDS, 4) => FrameKind::DelayDelivery,
            (FRAME_VERSION_KINDS, 5) => FrameKind::DelayRoll,
            (version @ (FRAME_VERSION | FRAME_VERSION_KINDS), found) => {
                return Err(FrameError::UnknownKind { found, version });
            }
            (found, _) => return Err(FrameError::UnsupportedVersion { found }),
        };
        let payload_len = read_u32(prefix, PAYLOAD_LEN_AT);
        if (payload_len as usize) < record_batch::HEADER_BYTES
            || u64::from(payload_len) > payload_len_max
        {
            return Err(FrameError::LengthOutOfRange {
                payload_len,
                limit: payload_len_max,
            });
        }
        let stored = read_u32(prefix, CRC_AT);
        let computed = header_crc(
            &prefix[..CRC_AT],
            &prefix[FRAME_HEADER_BYTES..FRAME_PREFIX_BYTES],
        );
        if stored != computed {
            return Err(FrameError::CrcMismatch { stored, computed });
        }
        Ok(FrameHeader {
            payload_len,
            partition: PartitionId(read_u32(prefix, PARTITION_AT)),
            kind,
        })
    }
}

fn header_crc(header_fields: &[u8], payload_prefix: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_fields), payload_prefix)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded() -> [u8; FRAME_PREFIX_BYTES] {
        encoded_as(FrameKind::Batch)
    }

    fn encoded_as(kind: FrameKind) -> [u8; FRAME_PREFIX_BYTES] {
        let header = FrameHeader {
            payload_len: 100,
            partition: PartitionId(7),
            kind,
        };
        let mut out = [0u8; FRAME_PREFIX_BYTES];
        header.encode_prefix(&[9u8; COVERED_PAYLOAD_PREFIX_BYTES], &mut out);
        out
    }

    #[test]
    fn header_round_trips() {
        let header = FrameHeader::decode(&encoded(), 1 << 20).unwrap();
        assert_eq!(header.payload_len, 100);
        assert_eq!(header.partition, PartitionId(7));
        assert_eq!(header.frame_len(), 120);
        assert_eq!(header.kind, FrameKind::Batch);
        assert_eq!(encoded()[4], 1, "a producer's batch keeps frame version 1");
    }

    #[test]
    fn version_2_kinds_round_trip() {
        for kind in [
            FrameKind::CompactionCopy,
            FrameKind::CompactionCommit,
            FrameKind::DelayHeld,
            FrameKind::DelayDelivery,
            FrameKind::DelayRoll,
        ] {
            let bytes = encoded_as(kind);
            assert_eq!(bytes[4], 2);
            assert_eq!(FrameHeader::decode(&bytes, 1 << 20).unwrap().kind, kind);
        }
    }

    #[test]
    fn a_kind_under_the_wrong_version_is_refused() {
        let mut bytes = encoded();
        bytes[5] = 1;
        let crc = header_crc(
            &bytes[..CRC_AT],
            &bytes[FRAME_HEADER_BYTES..FRAME_PREFIX_BYTES],
        );
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            FrameHeader::decode(&bytes, 1 << 20),
            Err(FrameError::UnknownKind {
                found: 1,
                version: 1
            })
        ));
    }

    #[test]
    fn any_flipped_bit_in_the_covered_bytes_is_detected() {
        let clean = encoded();
        for byte in 0..FRAME_PREFIX_BYTES {
            let mut damaged = clean;
            damaged[byte] ^= 0x10;
            assert!(
                FrameHeader::decode(&damaged, 1 << 20).is_err(),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn zeroed_space_is_not_a_frame() {
        let zeros = [0u8; FRAME_PREFIX_BYTES];
        assert!(matches!(
            FrameHeader::decode(&zeros, 1 << 20),
            Err(FrameError::BadMagic { .. })
        ));
    }
}
