//! The logs of internal topics: how the broker's own services keep their
//! state in the commit log and rebuild it at start.
//!
//! The group coordinator (`__consumer_offsets`) and the producer-id
//! allocator (`__producer_ids`) store their state as ordinary records in
//! partitions of the shard's commit log, written uncompressed by this
//! broker. At start each replays its partitions from the log start to the
//! high watermark through [`replay`], which hands every keyed record to the
//! service in log order; [`encode_batch`] builds the batches they append.
//! Because the records live in the shard log, replicating the log (a later
//! issue) carries this state to followers with no extra work.

use std::ops::ControlFlow;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::ids::{Offset, PartitionId};
use crate::record_batch::record_walk::Field;
use crate::record_batch::{self, BatchBuilder, BatchHeader, RecordSpec};
use crate::storage::{ReadError, ShardStore};

/// Read size while replaying an internal partition.
const REPLAY_READ_BYTES: u64 = 1 << 20;

/// One record met by [`replay`]: its offset, key and value (`None` for a
/// tombstone), and the producer id of its batch when the batch is
/// transactional (transactional offset commits, undecided until a marker).
#[derive(Clone, Copy, Debug)]
pub struct InternalRecord<'a> {
    pub offset: Offset,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub transactional_producer: Option<i64>,
}

/// What [`replay`] hands over, in log order.
#[derive(Clone, Copy, Debug)]
pub enum ReplayItem<'a> {
    Record(InternalRecord<'a>),
    /// A transaction marker: `producer_id`'s transaction on this partition
    /// is committed or aborted.
    Marker {
        producer_id: i64,
        commit: bool,
    },
}

/// Why an internal partition could not be replayed (the shard does not
/// start: its service would answer from state it cannot see).
#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("cannot read from offset {offset}: {source}")]
    Read {
        offset: Offset,
        #[source]
        source: ReadError,
    },
    #[error("cannot read the batch at offset {offset}: {source}")]
    ReadBatch {
        offset: Offset,
        #[source]
        source: std::io::Error,
    },
}

/// Replay partition `id` (named `label` in log lines, e.g.
/// `__consumer_offsets-3`) from its log start to its high watermark, calling
/// `apply` for each record with a key and each transaction marker, in log
/// order; `apply` says whether it used the item. Returns how many it used.
///
/// A batch that cannot be walked (damaged, or not written by this broker)
/// is skipped with a warning after the records before the fault; a
/// compressed one is skipped whole, since the broker writes internal
/// records uncompressed. Records without a key are ignored.
pub fn replay(
    store: &ShardStore,
    id: PartitionId,
    label: &str,
    decompressed_max_bytes: u64,
    mut apply: impl FnMut(ReplayItem<'_>) -> bool,
) -> Result<u64, ReplayError> {
    let Some(offsets) = store.offsets(id) else {
        return Ok(0);
    };
    let mut next = offsets.log_start_offset;
    let mut used = 0;
    while next < offsets.high_watermark {
        let read = store
            .read(id, next, REPLAY_READ_BYTES)
            .map_err(|source| ReplayError::Read {
                offset: next,
                source,
            })?;
        if read.batches.is_empty() {
            break;
        }
        for batch in &read.batches {
            let bytes = crate::storage::read_batch_bytes(batch).map_err(|source| {
                ReplayError::ReadBatch {
                    offset: batch.base_offset,
                    source,
                }
            })?;
            used += replay_batch(label, &bytes, decompressed_max_bytes, &mut apply);
            next = Offset(batch.last_offset.0 + 1);
        }
    }
    Ok(used)
}

fn replay_batch(
    label: &str,
    bytes: &[u8],
    decompressed_max_bytes: u64,
    apply: &mut impl FnMut(ReplayItem<'_>) -> bool,
) -> u64 {
    let Ok(header) = BatchHeader::parse(bytes) else {
        tracing::warn!(
            partition = label,
            "skipping an internal batch shorter than its header"
        );
        return 0;
    };
    if header.is_control() {
        return match crate::record_batch::control::parse_marker(bytes) {
            Ok(marker) => u64::from(apply(ReplayItem::Marker {
                producer_id: header.producer_id,
                commit: marker.kind == crate::record_batch::control::MarkerKind::Commit,
            })),
            Err(error) => {
                tracing::warn!(partition = label, offset = header.base_offset, %error, "skipping an unreadable control batch");
                0
            }
        };
    }
    let transactional_producer = header.is_transactional().then_some(header.producer_id);
    let mut used = 0;
    let mut compressed = false;
    let walked = record_batch::walk_records(bytes, decompressed_max_bytes, |record| {
        let key = match record.key {
            Field::Bytes(key) => key,
            Field::Null => return ControlFlow::Continue(()),
            Field::Skipped(_) => {
                compressed = true;
                return ControlFlow::Break(());
            }
        };
        let value = match record.value {
            Field::Bytes(value) => Some(value),
            Field::Null | Field::Skipped(_) => None,
        };
        let offset = header.base_offset + i64::from(record.index);
        if apply(ReplayItem::Record(InternalRecord {
            offset: Offset(offset),
            key,
            value,
            transactional_producer,
        })) {
            used += 1;
        }
        ControlFlow::Continue(())
    });
    if compressed {
        tracing::warn!(
            partition = label,
            offset = header.base_offset,
            "skipping a compressed internal batch: this broker writes its records uncompressed"
        );
    }
    if let Err(error) = walked {
        tracing::warn!(
            partition = label,
            offset = header.base_offset,
            %error,
            used,
            "skipping the rest of an unreadable internal batch"
        );
    }
    used
}

/// An uncompressed batch of `records` (key, value or `None` for a
/// tombstone), every record stamped `now_ms`.
pub fn encode_batch<'a>(
    records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    now_ms: i64,
) -> Vec<u8> {
    encode_with(BatchBuilder::new(now_ms), records)
}

/// [`encode_batch`] as part of `producer_id`'s transaction at `epoch`: the
/// transactional attribute, the producer's id and epoch, and no sequence
/// (the broker's own records are not deduplicated; see
/// `storage::producer_state`).
pub fn encode_transactional_batch<'a>(
    records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    now_ms: i64,
    producer_id: i64,
    epoch: i16,
) -> Vec<u8> {
    let mut builder = BatchBuilder::new(now_ms);
    builder.producer(producer_id, epoch, -1).transactional();
    encode_with(builder, records)
}

fn encode_with<'a>(
    mut builder: BatchBuilder,
    records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Vec<u8> {
    for (key, value) in records {
        builder.push(RecordSpec {
            key: Some(key),
            value,
            timestamp_delta_ms: 0,
        });
    }
    builder.build()
}

/// Why a field of an internal record does not decode (the replay skips the
/// record with a warning: it was damaged, or not written by this broker).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FieldError {
    #[error("ends early: {needed} bytes needed, {left} left")]
    EndsEarly { needed: usize, left: usize },
    #[error("negative string length {len}")]
    NegativeStringLength { len: i16 },
    #[error("string is not UTF-8: {source}")]
    NotUtf8 {
        #[source]
        source: std::string::FromUtf8Error,
    },
}

/// Internal records use Kafka's encodings: big-endian integers and strings
/// with an i16 length. Nothing read is trusted: every length is checked
/// against the bytes left before anything is taken or allocated.
fn need(bytes: &Bytes, len: usize) -> Result<(), FieldError> {
    if bytes.remaining() < len {
        return Err(FieldError::EndsEarly {
            needed: len,
            left: bytes.remaining(),
        });
    }
    Ok(())
}

pub fn get_i8(bytes: &mut Bytes) -> Result<i8, FieldError> {
    need(bytes, 1)?;
    Ok(bytes.get_i8())
}

pub fn get_i16(bytes: &mut Bytes) -> Result<i16, FieldError> {
    need(bytes, 2)?;
    Ok(bytes.get_i16())
}

pub fn get_i32(bytes: &mut Bytes) -> Result<i32, FieldError> {
    need(bytes, 4)?;
    Ok(bytes.get_i32())
}

pub fn get_i64(bytes: &mut Bytes) -> Result<i64, FieldError> {
    need(bytes, 8)?;
    Ok(bytes.get_i64())
}

pub fn get_string(bytes: &mut Bytes) -> Result<String, FieldError> {
    let len = get_i16(bytes)?;
    let Ok(len) = usize::try_from(len) else {
        return Err(FieldError::NegativeStringLength { len });
    };
    need(bytes, len)?;
    let raw = bytes.split_to(len);
    String::from_utf8(raw.to_vec()).map_err(|source| FieldError::NotUtf8 { source })
}

/// A string with an i16 length; the caller keeps strings within
/// `i16::MAX` bytes (topic names, group and transactional ids are checked
/// before a record is built).
pub fn put_string(out: &mut BytesMut, text: &str) {
    let len = i16::try_from(text.len())
        .expect("strings are checked against i16::MAX bytes before a record is built");
    out.put_i16(len);
    out.put_slice(text.as_bytes());
}

/// The partition of an internal topic holding `key` (a group or
/// transactional id): FNV-1a of its bytes modulo `partitions`.
pub fn key_partition(key: &str, partitions: u32) -> u32 {
    const FNV_OFFSET: u32 = 0x811c_9dc5;
    const FNV_PRIME: u32 = 0x0100_0193;
    let hash = key.bytes().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(FNV_PRIME)
    });
    hash % partitions.max(1)
}
