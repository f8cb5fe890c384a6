//! Record batches for the load generator: built once per producer and sent
//! many times, so the client spends its CPU on the socket, not on encoding.
//!
//! For end-to-end latency the first record's key carries a stamp: an 8-byte
//! marker and the send time in nanoseconds since the Unix epoch (client and
//! consumer run on the same host, so they share the clock). Uncompressed
//! batches are stamped in place (key bytes and CRC); compressed ones are
//! re-encoded, which costs CPU but e2e runs at a fixed `--rate`.
//!
//! Every send also stamps the producer fields of the header in place
//! (KIP-98: producer id, epoch, base sequence, and the transactional
//! attribute): an idempotent or transactional producer's from
//! [`IdempotentProducer`], -1s and no attribute otherwise. The CRC is
//! recomputed for every send in every case, so plain, idempotent and
//! transactional runs cost the client the same and their difference is the
//! broker's.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use clap::ValueEnum;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression as Codec, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType,
};

use crate::record_batch::{
    self, BatchBuilder, BatchHeader, HEADER_BYTES, RecordSpec, increment_sequence,
};

/// Marks a stamped key: "sluice-e" followed by the send time.
const STAMP_MARKER: [u8; 8] = *b"sluice-e";
/// Marker plus nanoseconds.
pub const STAMP_BYTES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn codec(self) -> Codec {
        match self {
            Compression::None => Codec::None,
            Compression::Gzip => Codec::Gzip,
            Compression::Snappy => Codec::Snappy,
            Compression::Lz4 => Codec::Lz4,
            Compression::Zstd => Codec::Zstd,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The records of one batch: values of `record_size` bytes of lowercase
/// letters from a seeded generator (about as compressible as text), and a
/// key slot for the stamp in the first record.
pub struct BatchTemplate {
    values: Vec<Bytes>,
    compression: Compression,
    /// The encoded batch, stamped with zero until [`BatchTemplate::stamp`].
    bytes: Vec<u8>,
    /// Where the stamp's nanoseconds lie in `bytes`, when uncompressed.
    stamp_at: Option<usize>,
    /// Headers every record carries (`sluice.delay.ms` for delayed loads).
    headers: Vec<(String, Bytes)>,
}

impl BatchTemplate {
    pub fn new(records: usize, record_size: usize, compression: Compression, seed: u64) -> Self {
        assert!(records > 0, "a batch holds at least one record");
        let mut state = seed | 1;
        let values = (0..records)
            .map(|_| {
                let value: Vec<u8> = (0..record_size)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        b'a' + (state % 26) as u8
                    })
                    .collect();
                Bytes::from(value)
            })
            .collect();
        let mut template = BatchTemplate {
            values,
            compression,
            bytes: Vec::new(),
            stamp_at: None,
            headers: Vec::new(),
        };
        template.bytes = template.encode(0);
        template.stamp_at = template.find_stamp();
        template
    }

    /// The template with `headers` on every record.
    pub fn with_headers(mut self, headers: &[(String, Vec<u8>)]) -> Self {
        self.headers = headers
            .iter()
            .map(|(key, value)| (key.clone(), Bytes::from(value.clone())))
            .collect();
        self.bytes = self.encode(0);
        self.stamp_at = self.find_stamp();
        self
    }

    /// Where the stamp's nanoseconds lie in the uncompressed batch.
    fn find_stamp(&self) -> Option<usize> {
        if self.compression != Compression::None {
            return None;
        }
        let marker_at = self.bytes[HEADER_BYTES..]
            .windows(STAMP_MARKER.len())
            .position(|window| window == STAMP_MARKER)
            .expect("the first record's key holds the marker");
        Some(HEADER_BYTES + marker_at + STAMP_MARKER.len())
    }

    pub fn records(&self) -> usize {
        self.values.len()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Make the batch ready for one send: the producer fields from
    /// `producer`, and with `send_nanos` (e2e) the send time in the first
    /// record's key; then the CRC, once.
    pub fn prepare(&mut self, producer: ProducerStamp, send_nanos: Option<u64>) {
        match (send_nanos, self.stamp_at) {
            (Some(nanos), Some(at)) => self.bytes[at..at + 8].copy_from_slice(&nanos.to_be_bytes()),
            (Some(nanos), None) => self.bytes = self.encode(nanos),
            (None, _) => {}
        }
        record_batch::assign_producer_fields(
            &mut self.bytes,
            producer.producer_id,
            producer.producer_epoch,
            producer.base_sequence,
        );
        record_batch::assign_transactional(&mut self.bytes, producer.transactional);
        record_batch::recompute_crc(&mut self.bytes);
    }

    fn encode(&self, nanos: u64) -> Vec<u8> {
        let mut key = STAMP_MARKER.to_vec();
        key.extend_from_slice(&nanos.to_be_bytes());
        let timestamp_ms = now_nanos() as i64 / 1_000_000;
        if self.compression == Compression::None && self.headers.is_empty() {
            let mut builder = BatchBuilder::new(timestamp_ms);
            for (index, value) in self.values.iter().enumerate() {
                builder.push(RecordSpec {
                    key: (index == 0).then_some(key.as_slice()),
                    value: Some(value),
                    timestamp_delta_ms: 0,
                });
            }
            return builder.build();
        }
        let key = Bytes::from(key);
        let records: Vec<Record> = self
            .values
            .iter()
            .enumerate()
            .map(|(index, value)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: index as i64,
                // kafka-protocol keeps records in one batch only while
                // offset - sequence stays constant; base sequence stays -1.
                sequence: index as i32 - 1,
                timestamp: timestamp_ms,
                key: (index == 0).then(|| key.clone()),
                value: Some(value.clone()),
                headers: self
                    .headers
                    .iter()
                    .map(|(key, value)| (StrBytes::from_string(key.clone()), Some(value.clone())))
                    .collect(),
            })
            .collect();
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: self.compression.codec(),
            },
        )
        .expect("encoding a record batch in memory cannot fail");
        out.to_vec()
    }
}

/// The producer fields of one send (KIP-98).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// The batch belongs to the producer's open transaction (attribute
    /// 0x10).
    pub transactional: bool,
}

impl ProducerStamp {
    /// A plain (non-idempotent) producer's batch.
    pub const NONE: ProducerStamp = ProducerStamp {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        transactional: false,
    };
}

/// An idempotent producer: the id and epoch InitProducerId gave its
/// connection, and the next base sequence of each partition it writes
/// (indexed by the partition's slot in its list). A transactional producer
/// is one too, whose batches also carry the transactional attribute; its
/// sequences run on across transactions, as Kafka's do within an epoch. A partition's sequence
/// starts at 0 and advances by each batch's record count, wrapping from
/// `i32::MAX` to 0 as Kafka's producer does
/// (`DefaultRecordBatch.incrementSequence`); the broker expects exactly that
/// and answers anything else with OUT_OF_ORDER_SEQUENCE_NUMBER, or a
/// repeated range as a duplicate.
#[derive(Debug)]
pub struct IdempotentProducer {
    producer_id: i64,
    producer_epoch: i16,
    transactional: bool,
    next_sequence: Vec<i32>,
}

impl IdempotentProducer {
    pub fn new(producer_id: i64, producer_epoch: i16, partitions: usize) -> Self {
        assert!(producer_id >= 0, "InitProducerId hands out ids from 0 up");
        IdempotentProducer {
            producer_id,
            producer_epoch,
            transactional: false,
            next_sequence: vec![0; partitions],
        }
    }

    /// A transactional producer's stamps: as [`IdempotentProducer::new`],
    /// with the transactional attribute on every batch.
    pub fn transactional(producer_id: i64, producer_epoch: i16, partitions: usize) -> Self {
        IdempotentProducer {
            transactional: true,
            ..IdempotentProducer::new(producer_id, producer_epoch, partitions)
        }
    }

    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch
    }

    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// The stamp of the next batch of `records` records to the partition in
    /// `slot`; advances that partition's sequence past them.
    pub fn next(&mut self, slot: usize, records: usize) -> ProducerStamp {
        let records = i32::try_from(records).expect("--batch-records is checked to fit an i32");
        assert!(records > 0, "a batch holds at least one record");
        let sequence = &mut self.next_sequence[slot];
        let stamp = ProducerStamp {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: *sequence,
            transactional: self.transactional,
        };
        *sequence = increment_sequence(*sequence, records);
        stamp
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// The send time stamped into a batch's first key, if it carries one.
pub fn read_stamp(batch: &[u8]) -> Option<u64> {
    let header = BatchHeader::parse(batch).ok()?;
    if header.compression_codec() == 0 {
        // Uncompressed: the first record's key is within its first bytes.
        let head = &batch[HEADER_BYTES..batch.len().min(HEADER_BYTES + 64)];
        let at = head
            .windows(STAMP_MARKER.len())
            .position(|window| window == STAMP_MARKER)?;
        let nanos = head.get(at + 8..at + STAMP_BYTES)?;
        return Some(u64::from_be_bytes(nanos.try_into().ok()?));
    }
    let mut buf = Bytes::copy_from_slice(batch);
    let set = RecordBatchDecoder::decode(&mut buf).ok()?;
    let key = set.records.first()?.key.as_ref()?;
    if key.len() != STAMP_BYTES || key[..8] != STAMP_MARKER {
        return None;
    }
    Some(u64::from_be_bytes(key[8..].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{BatchLimits, ValidatedBatch};

    #[test]
    fn stamped_batches_stay_valid_and_carry_the_stamp() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let mut template = BatchTemplate::new(10, 100, compression, 7);
            template.prepare(ProducerStamp::NONE, Some(123_456_789));
            let batch = template.bytes();
            let validated =
                ValidatedBatch::validate(batch, &BatchLimits::unlimited()).expect("valid batch");
            assert_eq!(
                validated.header().records_count,
                10,
                "one batch: {compression:?}"
            );
            assert_eq!(validated.len(), batch.len(), "nothing after the batch");
            assert_eq!(read_stamp(batch), Some(123_456_789), "{compression:?}");
        }
    }

    #[test]
    fn idempotent_sequences_advance_per_partition_by_the_record_count() {
        let mut producer = IdempotentProducer::new(42, 3, 2);
        let sequences: Vec<(usize, i32)> = [0, 1, 0, 0, 1]
            .into_iter()
            .map(|slot| (slot, producer.next(slot, 10).base_sequence))
            .collect();
        assert_eq!(sequences, [(0, 0), (1, 0), (0, 10), (0, 20), (1, 10)]);
        let stamp = producer.next(1, 1);
        assert_eq!((stamp.producer_id, stamp.producer_epoch), (42, 3));
    }

    #[test]
    fn idempotent_sequence_wraps_from_i32_max_to_zero() {
        let mut producer = IdempotentProducer::new(1, 0, 1);
        producer.next_sequence[0] = i32::MAX - 14;
        assert_eq!(producer.next(0, 10).base_sequence, i32::MAX - 14);
        // 10 records from MAX - 4: MAX - 4 ..= MAX, then 0 ..= 4.
        assert_eq!(producer.next(0, 10).base_sequence, i32::MAX - 4);
        assert_eq!(producer.next(0, 10).base_sequence, 5);
        // Landing exactly on MAX + 1 wraps to 0.
        producer.next_sequence[0] = i32::MAX - 9;
        producer.next(0, 10);
        assert_eq!(producer.next(0, 10).base_sequence, 0);
    }

    #[test]
    fn producer_stamp_is_in_the_header_and_the_crc_stays_valid() {
        for compression in [Compression::None, Compression::Zstd] {
            let mut template = BatchTemplate::new(10, 100, compression, 7);
            let mut producer = IdempotentProducer::new(1_234_567_890_123, 7, 1);
            for send_nanos in [None, Some(99), None] {
                let stamp = producer.next(0, template.records());
                template.prepare(stamp, send_nanos);
                let validated =
                    ValidatedBatch::validate(template.bytes(), &BatchLimits::unlimited())
                        .expect("the CRC covers the stamped fields");
                let header = validated.header();
                assert_eq!(
                    (
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence
                    ),
                    (1_234_567_890_123, 7, stamp.base_sequence),
                    "{compression:?}"
                );
                assert_eq!(header.last_sequence(), stamp.base_sequence + 9);
            }
            template.prepare(ProducerStamp::NONE, None);
            let validated = ValidatedBatch::validate(template.bytes(), &BatchLimits::unlimited())
                .expect("a plain send is valid too");
            assert!(!validated.header().has_producer(), "{compression:?}");
            assert_eq!(validated.header().base_sequence, -1);
        }
    }

    #[test]
    fn transactional_stamp_sets_the_attribute_and_a_plain_send_clears_it() {
        for compression in [Compression::None, Compression::Lz4] {
            let mut template = BatchTemplate::new(10, 100, compression, 7);
            let codec = BatchHeader::parse(template.bytes())
                .unwrap()
                .compression_codec();
            let mut producer = IdempotentProducer::transactional(5, 2, 2);
            for (slot, sequence) in [(1, 0), (1, 10)] {
                let stamp = producer.next(slot, template.records());
                template.prepare(stamp, None);
                let validated =
                    ValidatedBatch::validate(template.bytes(), &BatchLimits::unlimited())
                        .expect("the CRC covers the attribute");
                let header = validated.header();
                assert!(header.is_transactional(), "{compression:?}");
                assert!(!header.is_control(), "{compression:?}");
                assert_eq!(header.compression_codec(), codec, "codec bits kept");
                assert_eq!(
                    (
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence
                    ),
                    (5, 2, sequence)
                );
            }
            template.prepare(ProducerStamp::NONE, None);
            let validated = ValidatedBatch::validate(template.bytes(), &BatchLimits::unlimited())
                .expect("a plain send after a transactional one is valid");
            assert!(!validated.header().is_transactional(), "{compression:?}");
            assert_eq!(validated.header().compression_codec(), codec);
        }
    }

    #[test]
    fn compression_shrinks_the_batch() {
        let plain = BatchTemplate::new(100, 1024, Compression::None, 1);
        let zstd = BatchTemplate::new(100, 1024, Compression::Zstd, 1);
        assert!(zstd.bytes().len() < plain.bytes().len() * 3 / 4);
    }
}
