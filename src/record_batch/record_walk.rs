//! One pass over the records of a batch, decompressing as it goes, that
//! checks every record the way Kafka's `DefaultRecord.readFrom` and
//! `DefaultRecordBatch.RecordIterator` do, and a little more:
//!
//! * each record: a positive length varint; attributes; a timestamp delta
//!   (the timestamp must not overflow); an offset delta equal to the
//!   record's index (Kafka rewrites a compressed batch whose inner offsets
//!   are not 0, 1, 2, ...; Sluice stores batches as sent, so it refuses
//!   them); key, value and headers that lie inside the record (negative
//!   key/value lengths are null, as in Kafka; header counts and header key
//!   lengths must not be negative); and the record's length consumed exactly;
//! * the batch: exactly `recordsCount` records, nothing after the last
//!   (Kafka: "Incorrect declared batch size, records still remaining"), and
//!   for a compressed batch a stream that decompresses cleanly to exactly
//!   those bytes, at most `decompressed_max_bytes` of them.
//!
//! Nothing is allocated by a length read from the batch, and a compressed
//! batch is never held decompressed: it is read through a fixed
//! [`CHUNK_BYTES`] buffer, and a key or value is skipped, not copied. The
//! work is bounded by the batch's size (uncompressed) or the cap on its
//! decompressed size; no record's declared length is trusted before its
//! bytes are there. Borrowed keys and values are handed to the visitor only
//! for uncompressed batches (the offsets topic needs them); for compressed
//! ones the visitor sees their lengths.

use std::io;
use std::ops::ControlFlow;

use thiserror::Error;

use super::decompressor::{Codec, Decompressor};

/// The buffer a compressed batch is read through: LZ4's smallest block
/// size, so an lz4 block (64 KiB in librdkafka's and kafka-protocol's
/// frames) decodes straight into it instead of through the decoder's own
/// buffer (measured: a 1 MiB batch validates in 0.78 ms instead of 1.05).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// A varint of a 32-bit value is at most 5 bytes, of a 64-bit one 10.
const VARINT_MAX_BYTES: u32 = 5;
const VARLONG_MAX_BYTES: u32 = 10;

/// Why a batch's records are not what its header says.
#[derive(Debug, Error)]
pub enum RecordsError {
    #[error("record {index}: {reason}")]
    Record { index: i32, reason: String },
    #[error("the batch ends after {found} of the {declared} records its header declares")]
    TooFewRecords { declared: i32, found: i32 },
    #[error("bytes follow the last of the batch's {declared} records")]
    TrailingBytes { declared: i32 },
    #[error(
        "the batch decompresses to more than {limit} bytes (storage.decompressed_batch_ratio_max \
         x max.message.bytes); send smaller batches or raise the ratio"
    )]
    DecompressedTooLarge { limit: u64 },
    #[error("the {codec} data of the batch does not decompress: {source}")]
    Decompress {
        codec: &'static str,
        #[source]
        source: io::Error,
    },
}

impl RecordsError {
    /// The record a KIP-467 `record_errors` entry should name, if one.
    pub fn record_index(&self) -> Option<i32> {
        match self {
            RecordsError::Record { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// Key, value or header bytes of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    Null,
    /// The bytes, from an uncompressed batch.
    Bytes(&'a [u8]),
    /// Skipped in a compressed batch: only the length is known.
    Skipped(usize),
}

/// One record, as the visitor sees it.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    pub index: i32,
    /// `firstTimestamp + timestampDelta` (for LogAppendTime batches Kafka
    /// reports the batch's `maxTimestamp` instead; that is the caller's
    /// business).
    pub timestamp_ms: i64,
    pub key: Field<'a>,
    pub value: Field<'a>,
    /// Whether a header's key starts with [`SLUICE_HEADER_PREFIX`].
    pub sluice_header: bool,
}

/// The prefix of the record headers Sluice acts on (`sluice.delay.ms` and
/// the others of delayed delivery and retries, `broker/delay.rs`).
pub const SLUICE_HEADER_PREFIX: &[u8] = b"sluice.";

/// Kafka's "no timestamp" (`RecordBatch.NO_TIMESTAMP`).
pub const NO_TIMESTAMP: i64 = -1;

/// What a complete walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordsSummary {
    pub records: i32,
    /// The largest record timestamp (`firstTimestamp` + delta), or -1
    /// (Kafka's `NO_TIMESTAMP`) below any.
    pub max_timestamp_ms: i64,
    /// The smallest record timestamp other than -1 (`NO_TIMESTAMP`), `None`
    /// when there is none: with the largest, what Produce checks against
    /// `message.timestamp.before.max.ms` (KIP-937).
    pub min_timestamp_ms: Option<i64>,
    /// Records whose key is null: what Produce refuses on a compacted topic.
    pub keyless_records: i32,
    /// Records with a header whose key starts with [`SLUICE_HEADER_PREFIX`]:
    /// what Produce reads further for delayed delivery.
    pub sluice_header_records: i32,
    /// Bytes of the records section, decompressed.
    pub records_bytes: u64,
}

/// How a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walked {
    /// Every record was visited and the batch checked to its end.
    Complete(RecordsSummary),
    /// The visitor stopped the walk; what follows was not checked.
    Stopped,
}

/// What the walk needs from a batch.
#[derive(Clone, Copy, Debug)]
pub struct WalkInput<'a> {
    /// The bytes after the 61-byte header.
    pub records: &'a [u8],
    pub codec: Codec,
    pub records_count: i32,
    pub first_timestamp_ms: i64,
    /// Most bytes the records section may decompress to.
    pub decompressed_max_bytes: u64,
}

/// Walk the records of a batch, calling `visit` for each in order.
pub fn walk<'a>(
    input: WalkInput<'a>,
    visit: impl FnMut(&RecordView<'a>) -> ControlFlow<()>,
) -> Result<Walked, RecordsError> {
    if input.codec == Codec::None {
        let mut source = SliceSource {
            bytes: input.records,
            position: 0,
        };
        return walk_source(&mut source, &input, visit);
    }
    let codec = input.codec.name();
    let decompressor = Decompressor::new(input.codec, input.records, input.decompressed_max_bytes)
        .map_err(|source| RecordsError::Decompress { codec, source })?;
    let mut source = StreamSource {
        decompressor: Some(decompressor),
        codec,
        chunk: vec![0; CHUNK_BYTES].into_boxed_slice(),
        at: 0,
        end: 0,
        consumed_before_chunk: 0,
        limit: input.decompressed_max_bytes,
    };
    walk_source(&mut source, &input, visit)
}

fn walk_source<'a, S: Source<'a>>(
    source: &mut S,
    input: &WalkInput<'a>,
    mut visit: impl FnMut(&RecordView<'a>) -> ControlFlow<()>,
) -> Result<Walked, RecordsError> {
    let mut max_timestamp_ms = -1i64;
    let mut min_timestamp_ms: Option<i64> = None;
    let mut keyless_records = 0;
    let mut sluice_header_records = 0;
    for index in 0..input.records_count.max(0) {
        if source.at_end().map_err(|fault| fault.at(index))? {
            return Err(RecordsError::TooFewRecords {
                declared: input.records_count,
                found: index,
            });
        }
        let record = read_record(source, index, input.first_timestamp_ms)
            .map_err(|fault| fault.at(index))?;
        max_timestamp_ms = max_timestamp_ms.max(record.timestamp_ms);
        if record.timestamp_ms != NO_TIMESTAMP {
            min_timestamp_ms = Some(
                min_timestamp_ms.map_or(record.timestamp_ms, |min| min.min(record.timestamp_ms)),
            );
        }
        if record.key == Field::Null {
            keyless_records += 1;
        }
        if record.sluice_header {
            sluice_header_records += 1;
        }
        if visit(&record).is_break() {
            return Ok(Walked::Stopped);
        }
    }
    match source.finish() {
        Ok(()) => {}
        Err(Fault::Trailing) => {
            return Err(RecordsError::TrailingBytes {
                declared: input.records_count,
            });
        }
        Err(fault) => return Err(fault.at(input.records_count)),
    }
    Ok(Walked::Complete(RecordsSummary {
        records: input.records_count,
        max_timestamp_ms,
        min_timestamp_ms,
        keyless_records,
        sluice_header_records,
        records_bytes: source.position(),
    }))
}

/// What went wrong inside one record, before it is tied to its index.
enum Fault {
    /// The data ended (cut short or, compressed, decompressed to its end).
    EndOfData,
    /// Bytes follow the last record (from `Source::finish` only).
    Trailing,
    Invalid(String),
    TooLarge(u64),
    Decompress(&'static str, io::Error),
}

impl Fault {
    fn at(self, index: i32) -> RecordsError {
        match self {
            Fault::EndOfData => RecordsError::Record {
                index,
                reason: "the batch ends inside the record".to_owned(),
            },
            Fault::Trailing => RecordsError::Record {
                index,
                reason: "bytes follow the last record".to_owned(),
            },
            Fault::Invalid(reason) => RecordsError::Record { index, reason },
            Fault::TooLarge(limit) => RecordsError::DecompressedTooLarge { limit },
            Fault::Decompress(codec, source) => RecordsError::Decompress { codec, source },
        }
    }
}

/// Where record bytes come from: the batch itself, or a decompressor.
trait Source<'a> {
    fn byte(&mut self) -> Result<u8, Fault>;
    /// `len` bytes: borrowed when they are in memory, else skipped.
    fn take(&mut self, len: usize) -> Result<Field<'a>, Fault>;
    /// Skip `len` bytes; whether they start with `prefix`.
    fn skip_checking(&mut self, len: usize, prefix: &[u8]) -> Result<bool, Fault>;
    /// Bytes of the records section consumed so far.
    fn position(&self) -> u64;
    /// True when no byte follows (the next record would start here).
    fn at_end(&mut self) -> Result<bool, Fault>;
    /// Confirm nothing follows.
    fn finish(&mut self) -> Result<(), Fault>;
    /// Whether `len` more bytes may follow: in an uncompressed batch they
    /// must be there; in a compressed one they must fit under the cap.
    fn may_hold(&self, len: u64) -> Result<(), Fault>;
}

/// Parse one record at the source's position.
fn read_record<'a, S: Source<'a>>(
    source: &mut S,
    index: i32,
    first_timestamp_ms: i64,
) -> Result<RecordView<'a>, Fault> {
    let length = read_varint(source, u64::MAX)?;
    let length = u64::try_from(length)
        .ok()
        .filter(|&length| length > 0)
        .ok_or_else(|| Fault::Invalid(format!("record length {length} is not positive")))?;
    source.may_hold(length)?;
    let end = source.position() + length;
    let _attributes = bounded_byte(source, end)?;
    let timestamp_delta = read_varlong(source, end)?;
    let timestamp_ms = first_timestamp_ms
        .checked_add(timestamp_delta)
        .ok_or_else(|| {
            Fault::Invalid(format!(
                "timestamp delta {timestamp_delta} overflows the first timestamp {first_timestamp_ms}"
            ))
        })?;
    let offset_delta = read_varint(source, end)?;
    if offset_delta != index {
        return Err(Fault::Invalid(format!(
            "offset delta {offset_delta}, expected {index}: inner offsets must count up from 0"
        )));
    }
    let key = read_field(source, end, "key")?;
    let value = read_field(source, end, "value")?;
    let headers = read_varint(source, end)?;
    if headers < 0 {
        return Err(Fault::Invalid(format!(
            "header count {headers} is negative"
        )));
    }
    let mut sluice_header = false;
    for _ in 0..headers {
        let key_length = read_varint(source, end)?;
        if key_length < 0 {
            return Err(Fault::Invalid(format!(
                "header key length {key_length} is negative"
            )));
        }
        within(source, end, key_length as u64)?;
        let prefixed = source.skip_checking(key_length as usize, SLUICE_HEADER_PREFIX)?;
        sluice_header |= prefixed;
        let value_length = read_varint(source, end)?;
        if value_length > 0 {
            skip_within(source, end, value_length as u64)?;
        }
    }
    if source.position() != end {
        return Err(Fault::Invalid(format!(
            "record length {length}, but its fields take {}",
            length - (end - source.position())
        )));
    }
    Ok(RecordView {
        index,
        timestamp_ms,
        key,
        value,
        sluice_header,
    })
}

/// A key or value: a varint length (negative: null), then the bytes.
fn read_field<'a, S: Source<'a>>(source: &mut S, end: u64, what: &str) -> Result<Field<'a>, Fault> {
    let length = read_varint(source, end)?;
    if length < 0 {
        return Ok(Field::Null);
    }
    let length = length as u64;
    if source.position() + length > end {
        return Err(Fault::Invalid(format!(
            "{what} of {length} bytes runs past the end of the record"
        )));
    }
    source.take(length as usize)
}

fn skip_within<'a, S: Source<'a>>(source: &mut S, end: u64, length: u64) -> Result<(), Fault> {
    within(source, end, length)?;
    source.take(length as usize).map(drop)
}

/// Whether a header field of `length` bytes ends within the record.
fn within<'a, S: Source<'a>>(source: &S, end: u64, length: u64) -> Result<(), Fault> {
    if source.position() + length > end {
        return Err(Fault::Invalid(format!(
            "header field of {length} bytes runs past the end of the record"
        )));
    }
    Ok(())
}

/// A byte that must lie before `end`.
fn bounded_byte<'a, S: Source<'a>>(source: &mut S, end: u64) -> Result<u8, Fault> {
    if source.position() >= end {
        return Err(Fault::Invalid(
            "the record's fields run past its length".to_owned(),
        ));
    }
    source.byte()
}

/// A zig-zag varint (Kafka `ByteUtils.readVarint`) lying before `end`.
fn read_varint<'a, S: Source<'a>>(source: &mut S, end: u64) -> Result<i32, Fault> {
    let raw = read_unsigned(source, end, VARINT_MAX_BYTES)?;
    let raw = raw as u32;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// A zig-zag varlong (Kafka `ByteUtils.readVarlong`) lying before `end`.
fn read_varlong<'a, S: Source<'a>>(source: &mut S, end: u64) -> Result<i64, Fault> {
    let raw = read_unsigned(source, end, VARLONG_MAX_BYTES)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn read_unsigned<'a, S: Source<'a>>(
    source: &mut S,
    end: u64,
    bytes_max: u32,
) -> Result<u64, Fault> {
    let mut value = 0u64;
    for byte_index in 0..bytes_max {
        let byte = bounded_byte(source, end)?;
        value |= u64::from(byte & 0x7f) << (7 * byte_index);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Fault::Invalid(format!(
        "varint longer than {bytes_max} bytes"
    )))
}

/// An uncompressed records section, read in place.
struct SliceSource<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Source<'a> for SliceSource<'a> {
    fn byte(&mut self) -> Result<u8, Fault> {
        let byte = *self.bytes.get(self.position).ok_or(Fault::EndOfData)?;
        self.position += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize) -> Result<Field<'a>, Fault> {
        let bytes = self
            .bytes
            .get(self.position..self.position.saturating_add(len))
            .ok_or(Fault::EndOfData)?;
        self.position += len;
        Ok(Field::Bytes(bytes))
    }

    fn skip_checking(&mut self, len: usize, prefix: &[u8]) -> Result<bool, Fault> {
        match self.take(len)? {
            Field::Bytes(bytes) => Ok(bytes.starts_with(prefix)),
            _ => Ok(false),
        }
    }

    fn position(&self) -> u64 {
        self.position as u64
    }

    fn at_end(&mut self) -> Result<bool, Fault> {
        Ok(self.position == self.bytes.len())
    }

    fn finish(&mut self) -> Result<(), Fault> {
        if self.at_end()? {
            Ok(())
        } else {
            Err(Fault::Trailing)
        }
    }

    fn may_hold(&self, len: u64) -> Result<(), Fault> {
        if len > (self.bytes.len() - self.position) as u64 {
            return Err(Fault::Invalid(format!(
                "record length {len} runs past the end of the batch"
            )));
        }
        Ok(())
    }
}

/// A compressed records section, decompressed through `chunk`.
struct StreamSource<'a> {
    /// Taken by [`Source::finish`].
    decompressor: Option<Decompressor<'a>>,
    codec: &'static str,
    chunk: Box<[u8]>,
    at: usize,
    end: usize,
    /// Decompressed bytes before `chunk[0]`.
    consumed_before_chunk: u64,
    limit: u64,
}

impl StreamSource<'_> {
    /// Refill an exhausted chunk; false at the end of the stream.
    fn refill(&mut self) -> Result<bool, Fault> {
        debug_assert_eq!(self.at, self.end, "refill only an exhausted chunk");
        let Some(decompressor) = self.decompressor.as_mut() else {
            return Ok(false);
        };
        self.consumed_before_chunk += self.end as u64;
        self.at = 0;
        self.end = 0;
        let read = decompressor
            .read(&mut self.chunk[..])
            .map_err(|source| Fault::Decompress(self.codec, source))?;
        if self.consumed_before_chunk + read as u64 > self.limit {
            return Err(Fault::TooLarge(self.limit));
        }
        self.end = read;
        Ok(read > 0)
    }
}

impl<'a> Source<'a> for StreamSource<'a> {
    fn byte(&mut self) -> Result<u8, Fault> {
        if self.at == self.end && !self.refill()? {
            return Err(Fault::EndOfData);
        }
        let byte = self.chunk[self.at];
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize) -> Result<Field<'a>, Fault> {
        let mut left = len;
        while left > 0 {
            if self.at == self.end && !self.refill()? {
                return Err(Fault::EndOfData);
            }
            let step = left.min(self.end - self.at);
            self.at += step;
            left -= step;
        }
        Ok(Field::Skipped(len))
    }

    fn skip_checking(&mut self, len: usize, prefix: &[u8]) -> Result<bool, Fault> {
        let mut matches = len >= prefix.len();
        let mut compared = 0;
        let mut left = len;
        while left > 0 {
            if self.at == self.end && !self.refill()? {
                return Err(Fault::EndOfData);
            }
            let step = left.min(self.end - self.at);
            if matches && compared < prefix.len() {
                let count = (prefix.len() - compared).min(step);
                matches =
                    self.chunk[self.at..self.at + count] == prefix[compared..compared + count];
                compared += count;
            }
            self.at += step;
            left -= step;
        }
        Ok(matches)
    }

    fn position(&self) -> u64 {
        self.consumed_before_chunk + self.at as u64
    }

    fn at_end(&mut self) -> Result<bool, Fault> {
        Ok(self.at == self.end && !self.refill()?)
    }

    fn finish(&mut self) -> Result<(), Fault> {
        if !self.at_end()? {
            return Err(Fault::Trailing);
        }
        let Some(decompressor) = self.decompressor.take() else {
            return Ok(());
        };
        decompressor
            .finish()
            .map_err(|source| Fault::Decompress(self.codec, source))
    }

    fn may_hold(&self, len: u64) -> Result<(), Fault> {
        if self.position().saturating_add(len) > self.limit {
            return Err(Fault::TooLarge(self.limit));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;
    use crate::record_batch::decompressor::zstd_window_log_max;
    use crate::record_batch::{
        BatchBuilder, BatchError, BatchLimits, HeaderFields, RecordSpec, ValidatedBatch, assemble,
        put_optional_bytes, put_varint, put_varlong, walk_records,
    };

    const LIMITS: BatchLimits = BatchLimits {
        size_max_bytes: 1 << 20,
        decompressed_max_bytes: 4 << 20,
    };
    const CODECS: [Codec; 4] = [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];

    fn codec_id(codec: Codec) -> i16 {
        (0..5)
            .find(|&id| Codec::from_id(id) == Some(codec))
            .unwrap()
    }

    /// Compressed as the clients send it (snappy: raw, as librdkafka does).
    fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
        match codec {
            Codec::None => data.to_vec(),
            Codec::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(data).unwrap();
                encoder.finish().unwrap()
            }
            Codec::Snappy => snap::raw::Encoder::new().compress_vec(data).unwrap(),
            Codec::Lz4 => {
                let mut encoder = lz4::EncoderBuilder::new()
                    .block_mode(lz4::BlockMode::Independent)
                    .build(Vec::new())
                    .unwrap();
                encoder.write_all(data).unwrap();
                let (out, result) = encoder.finish();
                result.unwrap();
                out
            }
            Codec::Zstd => zstd::encode_all(data, 3).unwrap(),
        }
    }

    fn builder(records: usize, value: &[u8]) -> BatchBuilder {
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        for index in 0..records {
            builder.push(RecordSpec {
                key: Some(b"key"),
                value: Some(value),
                timestamp_delta_ms: (index * 3 % 7) as i64,
            });
        }
        builder
    }

    /// The builder's records, compressed with `codec`, under its header.
    fn batch_with(codec: Codec, builder: &BatchBuilder) -> Vec<u8> {
        let fields = HeaderFields {
            attributes: codec_id(codec),
            ..builder.header_fields()
        };
        assemble(&fields, &compress(codec, builder.records()))
    }

    fn record(offset_delta: i32, value: &[u8]) -> Vec<u8> {
        let mut body = vec![0];
        put_varlong(&mut body, 0);
        put_varint(&mut body, offset_delta);
        put_optional_bytes(&mut body, None);
        put_optional_bytes(&mut body, Some(value));
        put_varint(&mut body, 0);
        let mut out = Vec::new();
        put_varint(&mut out, body.len() as i32);
        out.extend_from_slice(&body);
        out
    }

    fn fields(records_count: i32) -> HeaderFields {
        HeaderFields {
            attributes: 0,
            last_offset_delta: records_count - 1,
            base_timestamp_ms: 1_700_000_000_000,
            max_timestamp_ms: 1_700_000_000_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count,
        }
    }

    fn refused(bytes: &[u8]) -> BatchError {
        ValidatedBatch::validate(bytes, &LIMITS).expect_err("the batch is refused")
    }

    #[test]
    fn batches_of_every_codec_from_kafka_protocol_walk_with_headers() {
        let records: Vec<Record> = (0..50)
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
                // Out of order: the maximum is not the last.
                timestamp: 1_700_000_000_000 + (index * 7) % 50,
                key: (index % 2 == 0).then(|| Bytes::from(format!("key-{index}"))),
                value: Some(Bytes::from(vec![b'v'; 300 + index as usize])),
                headers: IndexMap::from([
                    ("h1".into(), Some(Bytes::from_static(b"x"))),
                    ("h2".into(), None),
                    // Every third record carries a Sluice header; the
                    // others one that only starts alike.
                    if index % 3 == 0 {
                        ("sluice.delay.ms".into(), Some(Bytes::from_static(b"10")))
                    } else {
                        ("sluicE.x".into(), None)
                    },
                ]),
            })
            .collect();
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut bytes = BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression,
            };
            RecordBatchEncoder::encode(&mut bytes, &records, &options).unwrap();
            let batch = ValidatedBatch::validate(&bytes, &LIMITS)
                .unwrap_or_else(|error| panic!("{compression:?}: {error}"));
            let summary = batch.records().expect("walked");
            assert_eq!(summary.records, 50, "{compression:?}");
            assert_eq!(
                summary.max_timestamp_ms, 1_700_000_000_049,
                "{compression:?}"
            );
            // Odd records have no key, compressed or not.
            assert_eq!(summary.keyless_records, 25, "{compression:?}");
            assert_eq!(summary.sluice_header_records, 17, "{compression:?}");
        }
    }

    #[test]
    fn raw_snappy_and_every_codec_as_clients_send_them_validate() {
        let builder = builder(200, &[b'z'; 500]);
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let bytes = batch_with(codec, &builder);
            let batch = ValidatedBatch::validate(&bytes, &LIMITS)
                .unwrap_or_else(|error| panic!("{codec:?}: {error}"));
            let summary = batch.records().unwrap();
            assert_eq!(summary.records, 200);
            assert_eq!(summary.keyless_records, 0);
            assert_eq!(summary.records_bytes, builder.records().len() as u64);
        }
    }

    /// Issue 12: the header inputs that were stored and then killed the
    /// broker on a ListOffsets by time.
    #[test]
    fn header_counts_that_disagree_are_refused() {
        let records = [record(0, b"a"), record(1, b"b"), record(2, b"c")].concat();
        let cases = [(0x7fff_ffff, 0), (3, 0x7fff_fffe), (0, -1), (0, 0), (2, 2)];
        for (records_count, last_offset_delta) in cases {
            let bytes = assemble(
                &HeaderFields {
                    records_count,
                    last_offset_delta,
                    ..fields(3)
                },
                &records,
            );
            let error = refused(&bytes);
            assert!(
                matches!(
                    error,
                    BatchError::CountMismatch { .. }
                        | BatchError::NoRecords { .. }
                        | BatchError::InvalidLastOffsetDelta { .. }
                ),
                "count {records_count}, last delta {last_offset_delta}: {error}"
            );
        }
        // Consistent, but more records declared than the batch holds.
        let bytes = assemble(&fields(0x7fff_ffff), &records);
        assert!(matches!(
            refused(&bytes),
            BatchError::Records(RecordsError::TooFewRecords { found: 3, .. })
        ));
    }

    #[test]
    fn undefined_codecs_and_undecompressible_data_are_refused() {
        let builder = builder(3, b"value");
        for id in 5..=7 {
            let bytes = assemble(
                &HeaderFields {
                    attributes: id,
                    ..builder.header_fields()
                },
                builder.records(),
            );
            assert!(matches!(
                refused(&bytes),
                BatchError::UnsupportedCompression { id: found } if found == id
            ));
        }
        for codec in CODECS {
            let mut compressed = compress(codec, builder.records());
            let middle = compressed.len() / 2;
            compressed[middle] ^= 0xff;
            compressed.truncate(compressed.len() - 2);
            let garbage = assemble(
                &HeaderFields {
                    attributes: codec_id(codec),
                    ..builder.header_fields()
                },
                &compressed,
            );
            let error = refused(&garbage);
            assert!(
                matches!(error, BatchError::Records(_)),
                "{codec:?}: {error}"
            );
            let not_compressed = assemble(
                &HeaderFields {
                    attributes: codec_id(codec),
                    ..builder.header_fields()
                },
                builder.records(),
            );
            assert!(
                matches!(refused(&not_compressed), BatchError::Records(_)),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn inner_offsets_must_count_up_from_zero() {
        let records = [record(0, b"a"), record(2, b"b"), record(1, b"c")].concat();
        for codec in [Codec::None, Codec::Zstd] {
            let bytes = assemble(
                &HeaderFields {
                    attributes: codec_id(codec),
                    ..fields(3)
                },
                &compress(codec, &records),
            );
            let error = refused(&bytes);
            let BatchError::Records(records_error) = &error else {
                panic!("{error}");
            };
            assert_eq!(records_error.record_index(), Some(1), "{codec:?}: {error}");
        }
    }

    #[test]
    fn bytes_after_the_last_record_are_refused() {
        let builder = builder(3, b"value");
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let mut records = builder.records().to_vec();
            records.extend_from_slice(&[0, 1, 2]);
            let inside = assemble(
                &HeaderFields {
                    attributes: codec_id(codec),
                    ..builder.header_fields()
                },
                &compress(codec, &records),
            );
            assert!(
                matches!(
                    refused(&inside),
                    BatchError::Records(RecordsError::TrailingBytes { declared: 3 })
                ),
                "{codec:?}"
            );
        }
        for codec in CODECS {
            let mut compressed = compress(codec, builder.records());
            compressed.extend_from_slice(b"junk");
            let after = assemble(
                &HeaderFields {
                    attributes: codec_id(codec),
                    ..builder.header_fields()
                },
                &compressed,
            );
            let error = refused(&after);
            assert!(
                matches!(error, BatchError::Records(RecordsError::Decompress { .. })),
                "{codec:?}: {error}"
            );
        }
    }

    #[test]
    fn records_whose_fields_leave_their_length_are_refused() {
        let mut negative_headers = record(0, b"abc");
        *negative_headers.last_mut().unwrap() = 1; // header count -1
        let mut short_length = record(0, b"abc");
        short_length[0] -= 2; // the length claims one byte fewer
        let mut long_value = Vec::new();
        put_varint(&mut long_value, 6);
        long_value.extend_from_slice(&[0, 0, 0, 1]); // attrs, ts, delta, null key
        put_varint(&mut long_value, 1_000_000); // value longer than the record
        long_value.push(0);
        let zero_length = vec![0u8];
        let long_varint = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        for (what, records) in [
            ("negative header count", negative_headers),
            ("length shorter than the fields", short_length),
            ("value past the record", long_value),
            ("zero length", zero_length),
            ("six-byte varint", long_varint),
        ] {
            let bytes = assemble(&fields(1), &records);
            let error = refused(&bytes);
            assert!(
                matches!(
                    error,
                    BatchError::Records(RecordsError::Record { index: 0, .. })
                ),
                "{what}: {error}"
            );
        }
    }

    /// Issue 12: compression bombs stop at the cap, whichever codec.
    #[test]
    fn batches_that_decompress_past_the_cap_are_refused() {
        let builder = builder(160, &vec![0u8; 64 * 1024]);
        for codec in CODECS {
            let bytes = batch_with(codec, &builder);
            assert!(bytes.len() < 1 << 20, "{codec:?}: {} bytes", bytes.len());
            let error = refused(&bytes);
            assert!(
                matches!(
                    error,
                    BatchError::Records(RecordsError::DecompressedTooLarge { limit }) if limit == 4 << 20
                ),
                "{codec:?}: {error}"
            );
            // A record longer than the cap is refused before it is read.
            let mut one = BatchBuilder::new(0);
            one.push(RecordSpec {
                key: None,
                value: Some(&vec![0u8; 5 << 20]),
                timestamp_delta_ms: 0,
            });
            let error = refused(&batch_with(codec, &one));
            assert!(
                matches!(
                    error,
                    BatchError::Records(RecordsError::DecompressedTooLarge { .. })
                ),
                "{codec:?}: {error}"
            );
        }
    }

    /// The builder's records as one zstd frame of unknown content size
    /// that declares a window of 2^`window_log` bytes (as a streaming
    /// encoder at a high level writes it).
    fn zstd_batch_with_window(builder: &BatchBuilder, window_log: u32) -> Vec<u8> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::WindowLog(window_log))
            .unwrap();
        encoder.include_contentsize(false).unwrap();
        encoder.write_all(builder.records()).unwrap();
        let compressed = encoder.finish().unwrap();
        let fields = HeaderFields {
            attributes: codec_id(Codec::Zstd),
            ..builder.header_fields()
        };
        assemble(&fields, &compressed)
    }

    #[test]
    fn the_zstd_window_is_capped_by_what_the_batch_may_decompress_to() {
        assert_eq!(zstd_window_log_max(1), 23);
        assert_eq!(zstd_window_log_max(4 << 20), 23);
        assert_eq!(zstd_window_log_max((8 << 20) + 1), 24);
        assert_eq!(zstd_window_log_max(32 << 20), 25);
        assert_eq!(zstd_window_log_max(u64::MAX), 27);
    }

    /// Issue 12 (fuzz finding 4): a zstd frame that declares a window larger
    /// than its batch may decompress to is refused before libzstd allocates
    /// it; windows up to the cap still decode.
    #[test]
    fn a_zstd_frame_asking_for_a_window_past_the_cap_is_refused() {
        let builder = builder(3, b"value");
        let within = zstd_batch_with_window(&builder, 23);
        let batch = ValidatedBatch::validate(&within, &LIMITS).expect("a 2^23 window decodes");
        assert_eq!(batch.records().expect("walked").records, 3);
        let past = zstd_batch_with_window(&builder, 26);
        assert!(past.len() < 200, "{} bytes", past.len());
        let error = refused(&past);
        assert!(
            matches!(
                error,
                BatchError::Records(RecordsError::Decompress { codec: "zstd", .. })
            ),
            "{error}"
        );
        let roomy = BatchLimits {
            decompressed_max_bytes: 64 << 20,
            ..LIMITS
        };
        ValidatedBatch::validate(&past, &roomy).expect("a 2^26 window under a 64 MiB cap decodes");
    }

    #[test]
    fn a_visitor_can_stop_the_walk_and_sees_keys_of_uncompressed_batches() {
        let builder = builder(10, b"value");
        let bytes = batch_with(Codec::None, &builder);
        let mut seen = Vec::new();
        let walked = walk_records(&bytes, u64::MAX, |record| {
            seen.push((record.index, record.key, record.value));
            if record.index == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(walked, Walked::Stopped);
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[2], (2, Field::Bytes(b"key"), Field::Bytes(b"value")));
        let compressed = batch_with(Codec::Lz4, &builder);
        let mut fields = Vec::new();
        walk_records(&compressed, u64::MAX, |record| {
            fields.push(record.value);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(fields, vec![Field::Skipped(5); 10]);
    }
}
