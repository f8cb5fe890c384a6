//! Targets for record bytes: a producer's batch as produce validates it,
//! stored batches as the broker decodes them again (ListOffsets by time,
//! the `__consumer_offsets` replay), the offset records themselves, and the
//! consumer-protocol member metadata and assignments the broker reads.
//!
//! The other internal records (`__transaction_state`, `__producer_ids`,
//! transaction markers) share one target, [`INTERNAL_RECORD`].

use std::ops::ControlFlow;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::Target;
use crate::broker::group::offsets::{CommittedOffset, OffsetRecord, TopicPartition};
use crate::record_batch::record_walk::{Field, Walked};
use crate::record_batch::{
    self, BatchHeader, BatchLimits, HEADER_BYTES, LOG_OVERHEAD_BYTES, ValidatedBatch,
    assign_broker_fields, check_structure, crc_matches, declared_size, set_log_append_time,
};

/// A producer's record batch, validated as produce validates it; a batch
/// that passes has the header its bytes say, survives the broker's own
/// edits (base offset, leader epoch, LogAppendTime) still valid, and is
/// decoded record by record without a panic.
pub const RECORD_BATCH: Target = Target {
    name: "record_batch",
    run: record_batch,
    seeds: record_batch_seeds,
    allocation_max_bytes: decompressing_allocation_max_bytes,
    input_max_bytes: 64 * 1024,
};

/// One `__consumer_offsets` record (key and optional value), as replay
/// decodes it; what decodes re-encodes to bytes that decode the same.
pub const OFFSET_RECORD: Target = Target {
    name: "offset_record",
    run: offset_record,
    seeds: offset_record_seeds,
    allocation_max_bytes: super::proportional_allocation_max_bytes,
    input_max_bytes: 4096,
};

/// A stored `__consumer_offsets` batch as the coordinator replays it at
/// start: decoded (any compression), then each record's key and value.
pub const OFFSETS_BATCH: Target = Target {
    name: "offsets_batch",
    run: offsets_batch,
    seeds: offsets_batch_seeds,
    allocation_max_bytes: decompressing_allocation_max_bytes,
    input_max_bytes: 64 * 1024,
};

/// One record of another internal log, chosen by the first byte: a
/// `__transaction_state` record, a `__producer_ids` block, or a transaction
/// marker's control record; what decodes re-encodes to what decodes the
/// same.
pub const INTERNAL_RECORD: Target = Target {
    name: "internal_record",
    run: internal_record,
    seeds: internal_record_seeds,
    allocation_max_bytes: super::proportional_allocation_max_bytes,
    input_max_bytes: 4096,
};

/// JoinGroup member metadata (ConsumerProtocolSubscription) and SyncGroup
/// assignments (ConsumerProtocolAssignment), read by the group coordinator
/// and the admin commands.
pub const GROUP_METADATA: Target = Target {
    name: "group_metadata",
    run: group_metadata,
    seeds: group_metadata_seeds,
    allocation_max_bytes: super::proportional_allocation_max_bytes,
    input_max_bytes: 4096,
};

/// What the targets let a batch decompress to (`BatchLimits`): smaller than
/// the broker's default 32 MiB so that a run covers more inputs, with the
/// same code paths.
const DECOMPRESSED_MAX_BYTES: u64 = 4 << 20;

/// Decompression reads through fixed buffers (`record_batch::record_walk`):
/// lz4 holds up to two 4 MiB blocks, zstd's window is capped at 8 MiB for
/// this limit (`decompressor::zstd_window_log_max`).
fn decompressing_allocation_max_bytes(input_bytes: usize) -> usize {
    super::proportional_allocation_max_bytes(input_bytes).max(16 << 20)
}

/// The records of a stored batch walked as ListOffsets by time and the
/// offsets replay walk them, calling `visit` with each key and value.
fn walk_stored(batch: &[u8], mut visit: impl FnMut(&[u8], Option<&[u8]>)) {
    let walked = record_batch::walk_records(batch, DECOMPRESSED_MAX_BYTES, |record| {
        if let Field::Bytes(key) = record.key {
            let value = match record.value {
                Field::Bytes(value) => Some(value),
                Field::Null | Field::Skipped(_) => None,
            };
            visit(key, value);
        }
        ControlFlow::Continue(())
    });
    std::hint::black_box(walked.is_ok());
}

/// Flag bits in byte 0 of the batch targets.
const FIX_LENGTH: u8 = 1;
const FIX_CRC: u8 = 2;

/// Input: a flag byte (bit 0: make `batchLength` agree with the input's
/// length, bit 1: recompute the CRC, bits 2–3: the size limit), then the
/// batch.
pub fn record_batch(data: &[u8]) {
    let Some((&flags, batch)) = data.split_first() else {
        return;
    };
    let batch = with_fixes(flags, batch);
    let limits = BatchLimits {
        size_max_bytes: [1 << 20, 1024, HEADER_BYTES, 100][usize::from(flags >> 2) % 4],
        decompressed_max_bytes: DECOMPRESSED_MAX_BYTES,
    };
    // Produce's checks, and what they promise in `check_validated`.
    match ValidatedBatch::validate(&batch, &limits) {
        Ok(validated) => check_validated(&validated, &limits),
        Err(record_batch::BatchError::CrcMismatch { .. }) => {
            assert!(!crc_matches(&batch), "a CRC mismatch with a matching CRC")
        }
        Err(_) => {}
    }
    // What ListOffsets by time and the offsets replay do with a stored batch.
    walk_stored(&batch, |key, value| {
        std::hint::black_box((key, value));
    });
}

/// The batch's length field and CRC made to agree with its bytes, as asked.
fn with_fixes(flags: u8, batch: &[u8]) -> Vec<u8> {
    let mut batch = batch.to_vec();
    if flags & FIX_LENGTH != 0 && batch.len() >= LOG_OVERHEAD_BYTES {
        let length = (batch.len() - LOG_OVERHEAD_BYTES) as i32;
        batch[8..12].copy_from_slice(&length.to_be_bytes());
    }
    if flags & FIX_CRC != 0 && batch.len() >= HEADER_BYTES {
        record_batch::recompute_crc(&mut batch);
    }
    batch
}

/// What a validated batch promises (the `record_batch` module invariant).
fn check_validated(validated: &ValidatedBatch<'_>, limits: &BatchLimits) {
    let bytes = validated.bytes();
    let header = *validated.header();
    assert!(bytes.len() <= limits.size_max_bytes);
    assert_eq!(BatchHeader::parse(bytes).ok(), Some(header));
    assert_eq!(check_structure(bytes).ok(), Some(header));
    assert!(crc_matches(bytes));
    assert_eq!(declared_size(bytes), Some(bytes.len()));
    assert_eq!(bytes[16], record_batch::MAGIC_V2 as u8);
    assert!(header.last_offset_delta >= 0 && header.records_count >= 0);
    let mut stored = bytes.to_vec();
    assign_broker_fields(&mut stored, 1 << 40, 7);
    let restamped = ValidatedBatch::frame_only(&stored, limits.size_max_bytes)
        .expect("the broker's fields lie outside the CRC");
    assert_eq!(restamped.header().base_offset, 1 << 40);
    if let Some(summary) = validated.records() {
        let walked = record_batch::walk_records(&stored, limits.decompressed_max_bytes, |_| {
            ControlFlow::Continue(())
        });
        assert_eq!(
            walked.ok(),
            Some(Walked::Complete(*summary)),
            "a stored batch walks as it validated"
        );
    }
    set_log_append_time(&mut stored, 1_800_000_000_000);
    let appended = ValidatedBatch::frame_only(&stored, limits.size_max_bytes)
        .expect("a LogAppendTime batch is re-CRC'd and still valid");
    assert!(appended.header().uses_log_append_time());
    assert_eq!(appended.header().max_timestamp_ms, 1_800_000_000_000);
    assert_eq!(
        appended.header().compression_codec(),
        header.compression_codec()
    );
}

fn record_batch_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let batch = encode_batch(&sample_records(3), compression);
        seeds.push([&[0u8][..], &batch].concat());
        seeds.push([&[FIX_LENGTH | FIX_CRC][..], &batch].concat());
    }
    seeds.push([&[0u8][..], &super::kafka::sample_batch()[..]].concat());
    seeds
}

fn sample_records(count: i64) -> Vec<Record> {
    (0..count)
        .map(|index| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: index,
            sequence: index as i32,
            timestamp: 1_700_000_000_000 + index,
            key: Some(Bytes::from_static(b"key")),
            value: Some(Bytes::from(vec![b'v'; 20 + index as usize])),
            headers: IndexMap::from([(
                StrBytes::from_static_str("h"),
                Some(Bytes::from_static(b"v")),
            )]),
        })
        .collect()
}

fn encode_batch(records: &[Record], compression: Compression) -> Vec<u8> {
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("sample records encode");
    out.to_vec()
}

/// Input: a 2-byte (big-endian) key length, the key, then the value; a key
/// length with its top bit set means no value (a tombstone).
pub fn offset_record(data: &[u8]) {
    let Some((prefix, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let declared = u16::from_be_bytes(*prefix);
    let tombstone = declared & 0x8000 != 0;
    let key_len = usize::from(declared & 0x7fff).min(rest.len());
    let (key, value) = rest.split_at(key_len);
    let value = (!tombstone).then_some(value);
    let Ok(Some(record)) = OffsetRecord::decode(key, value) else {
        return;
    };
    let key = record.encode_key();
    let value = record.encode_value();
    assert_eq!(value.is_none(), tombstone);
    assert_eq!(
        record.encoded_len(),
        key.len() + value.as_ref().map_or(0, Vec::len)
    );
    assert_eq!(
        OffsetRecord::decode(&key, value.as_deref()),
        Ok(Some(record)),
        "an offset record changed in a round trip"
    );
}

fn sample_offset_record(tombstone: bool) -> OffsetRecord {
    OffsetRecord {
        group: "group".to_owned(),
        key: TopicPartition {
            topic: "orders".to_owned(),
            partition: 3,
        },
        value: (!tombstone).then(|| CommittedOffset {
            offset: 42,
            leader_epoch: -1,
            metadata: "meta".to_owned(),
            commit_timestamp_ms: 1_700_000_000_000,
        }),
    }
}

fn offset_record_seeds() -> Vec<Vec<u8>> {
    [false, true]
        .into_iter()
        .map(|tombstone| {
            let record = sample_offset_record(tombstone);
            let key = record.encode_key();
            let mut declared = key.len() as u16;
            if tombstone {
                declared |= 0x8000;
            }
            let mut input = declared.to_be_bytes().to_vec();
            input.extend_from_slice(&key);
            input.extend_from_slice(&record.encode_value().unwrap_or_default());
            input
        })
        .collect()
}

/// Input: a kind byte (0 transaction, 1 producer-id block, 2 marker), then
/// as [`offset_record`]: a u16 whose top bit marks a tombstone and whose
/// rest is the key's length, the key, the value.
pub fn internal_record(data: &[u8]) {
    use crate::broker::producer_ids::ProducerIdBlock;
    use crate::broker::txn::records;
    use crate::record_batch::control;
    let Some((&kind, data)) = data.split_first() else {
        return;
    };
    let Some((prefix, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let declared = u16::from_be_bytes(*prefix);
    let key_len = usize::from(declared & 0x7fff).min(rest.len());
    let (key, value) = rest.split_at(key_len);
    let value = (declared & 0x8000 == 0).then_some(value);
    match kind % 3 {
        0 => {
            let Ok(Some((id, meta))) = records::decode(key, value) else {
                return;
            };
            let key = records::encode_key(&id);
            let value = meta.as_ref().map(records::encode_value);
            assert_eq!(
                records::decode(&key, value.as_deref()),
                Ok(Some((id, meta))),
                "a transaction record changed in a round trip"
            );
        }
        1 => {
            let Ok(Some(block)) = ProducerIdBlock::decode(key, value) else {
                return;
            };
            let value = block.encode_value();
            assert_eq!(
                ProducerIdBlock::decode(&ProducerIdBlock::encode_key(), Some(&value)),
                Ok(Some(block))
            );
        }
        _ => {
            let Ok(marker) = control::decode_record(key, value.unwrap_or_default()) else {
                return;
            };
            let batch = control::build_marker(1, 0, &marker, 0);
            assert_eq!(control::parse_marker(&batch).ok(), Some(marker));
        }
    }
}

fn internal_record_seeds() -> Vec<Vec<u8>> {
    use crate::broker::producer_ids::ProducerIdBlock;
    use crate::broker::txn::records::{self, TxnMetadata, TxnState};
    let meta = TxnMetadata {
        producer_id: 7,
        last_producer_id: -1,
        producer_epoch: 2,
        last_producer_epoch: 1,
        timeout_ms: 60_000,
        state: TxnState::Ongoing,
        partitions: [("orders".to_owned(), 1), ("orders".to_owned(), 4)]
            .into_iter()
            .collect(),
        start_ms: 1_700_000_000_000,
        last_update_ms: 1_700_000_000_001,
    };
    let block = ProducerIdBlock {
        start: 3000,
        len: 1000,
        shard: 1,
    };
    let with = |kind: u8, key: &[u8], value: Option<&[u8]>| {
        let mut declared = key.len() as u16;
        if value.is_none() {
            declared |= 0x8000;
        }
        let mut input = vec![kind];
        input.extend_from_slice(&declared.to_be_bytes());
        input.extend_from_slice(key);
        input.extend_from_slice(value.unwrap_or_default());
        input
    };
    vec![
        with(
            0,
            &records::encode_key("txn"),
            Some(&records::encode_value(&meta)),
        ),
        with(0, &records::encode_key("txn"), None),
        with(
            1,
            &ProducerIdBlock::encode_key(),
            Some(&block.encode_value()),
        ),
        with(2, &[0, 0, 0, 1], Some(&[0, 0, 0, 0, 0, 5])),
    ]
}

/// Input: a flag byte (as for [`record_batch`]), then a stored batch.
pub fn offsets_batch(data: &[u8]) {
    let Some((&flags, batch)) = data.split_first() else {
        return;
    };
    let batch = with_fixes(flags, batch);
    walk_stored(&batch, |key, value| {
        if let Ok(Some(change)) = OffsetRecord::decode(key, value) {
            std::hint::black_box(change);
        }
    });
}

fn offsets_batch_seeds() -> Vec<Vec<u8>> {
    let records: Vec<Record> = [false, true, false]
        .into_iter()
        .enumerate()
        .map(|(index, tombstone)| {
            let change = sample_offset_record(tombstone);
            let mut record = sample_records(1).remove(0);
            record.offset = index as i64;
            record.headers.clear();
            record.key = Some(Bytes::from(change.encode_key()));
            record.value = change.encode_value().map(Bytes::from);
            record
        })
        .collect();
    [Compression::None, Compression::Lz4, Compression::Zstd]
        .into_iter()
        .map(|compression| [&[0u8][..], &encode_batch(&records, compression)].concat())
        .collect()
}

/// Input: a selector byte (even: member metadata, odd: an assignment), then
/// the bytes as a member sent them: a 2-byte version, then the body.
pub fn group_metadata(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = Bytes::copy_from_slice(rest);
    if selector % 2 == 0 {
        std::hint::black_box(crate::broker::group::membership::decode_subscription(
            &mut bytes.clone(),
        ));
        round_trip_versioned::<ConsumerProtocolSubscription>(&mut bytes);
    } else {
        std::hint::black_box(crate::admin::groups::assigned_partitions(&bytes));
        round_trip_versioned::<ConsumerProtocolAssignment>(&mut bytes);
    }
}

/// Decode a version-prefixed consumer-protocol message as the broker does
/// (version clamped to what the decoder knows) and check it round-trips.
fn round_trip_versioned<M>(bytes: &mut Bytes)
where
    M: Decodable + kafka_protocol::protocol::Encodable + PartialEq + std::fmt::Debug,
{
    if bytes.remaining() < 2 {
        return;
    }
    let version = bytes.get_i16().clamp(0, 3);
    if let Ok(decoded) = M::decode(bytes, version) {
        super::kafka::assert_round_trip(&decoded, version, "consumer protocol");
    }
}

fn group_metadata_seeds() -> Vec<Vec<u8>> {
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as Assigned;
    use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as Owned;
    use kafka_protocol::protocol::Encodable;
    let topic = || TopicName(StrBytes::from_static_str("orders"));
    let mut seeds = Vec::new();
    for version in 0..=3i16 {
        let mut out = BytesMut::from(&[0u8][..]);
        out.extend_from_slice(&version.to_be_bytes());
        ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("orders")])
            .with_user_data(Some(Bytes::from_static(b"user")))
            .with_owned_partitions(if version >= 1 {
                vec![
                    Owned::default()
                        .with_topic(topic())
                        .with_partitions(vec![0]),
                ]
            } else {
                vec![]
            })
            .with_generation_id(if version >= 2 { 3 } else { -1 })
            .with_rack_id(if version >= 3 {
                Some(StrBytes::from_static_str("rack"))
            } else {
                None
            })
            .encode(&mut out, version)
            .expect("a sample subscription encodes");
        seeds.push(out.to_vec());
        let mut out = BytesMut::from(&[1u8][..]);
        out.extend_from_slice(&version.to_be_bytes());
        ConsumerProtocolAssignment::default()
            .with_assigned_partitions(vec![
                Assigned::default()
                    .with_topic(topic())
                    .with_partitions(vec![0, 1]),
            ])
            .with_user_data(Some(Bytes::from_static(b"user")))
            .encode(&mut out, version)
            .expect("a sample assignment encodes");
        seeds.push(out.to_vec());
    }
    seeds
}
