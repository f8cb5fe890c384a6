//! A dead letter: one record of a group's dead-letter topic `G.dlq`
//! (`broker/retry.rs`), decoded from the records of a Fetch answer, and
//! the record a replay produces from it.
//!
//! Decoding trusts nothing from the wire: a batch is read only whole, with
//! its length, magic 2 and CRC checked; its records are split by the
//! cleaner's reader (`storage::compaction::records`), decompressing at
//! most [`BATCH_DECOMPRESSED_MAX_BYTES`] whatever the codec. Control
//! batches (transaction markers) and empty batches hold no dead letters
//! and are stepped over; a batch cut short at the end of an answer (a
//! Fetch may end mid-batch) is left for the next Fetch.
//!
//! A replayed record keeps its key, value and own headers, byte for byte,
//! in their order and with any duplicates; it loses the broker's
//! bookkeeping ([`is_bookkeeping`]), so it is delivered at once and, if it
//! fails again, starts its retries from zero.

use std::ops::Range;

use crate::broker::delay::{
    DELAY_LEVEL, DELAY_MS, DELIVER_AT_MS, ORIGIN_OFFSET, ORIGIN_TIMESTAMP, RECONSUME_TIMES,
};
use crate::broker::retry::{DLQ_OFFSET, DLQ_PARTITION, DLQ_TOPIC};
use crate::record_batch::{
    self, HeaderFields, ValidatedBatch, put_optional_bytes, put_varint, put_varlong,
};
use crate::storage::compaction::records::{Reader, Records};

/// Most bytes one batch of `G.dlq` may decompress to. The broker writes
/// dead letters uncompressed, one timer delivery per batch; a producer's
/// own batch in `G.dlq` is under its `max.message.bytes` times the
/// broker's decompression ratio cap, far below this.
pub const BATCH_DECOMPRESSED_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Headers the broker writes or reads by their exact name on a record's
/// way through delays, retries and the dead-letter topic.
const BOOKKEEPING_HEADERS: [&str; 6] = [
    RECONSUME_TIMES,
    ORIGIN_OFFSET,
    ORIGIN_TIMESTAMP,
    DELAY_LEVEL,
    DELAY_MS,
    DELIVER_AT_MS,
];

/// Families of bookkeeping headers, by prefix: `sluice.dlq.topic`,
/// `.partition`, `.offset` and `sluice.retry.*` likewise (any added later
/// too: they describe the failed delivery, not the record).
const BOOKKEEPING_PREFIXES: [&str; 2] = ["sluice.dlq.", "sluice.retry."];

/// Whether a header named `key` is the broker's bookkeeping, which a
/// replayed record does not carry: the retry count, the provenance of a
/// retry or dead letter, the origin of a delayed delivery, and the delay
/// headers (a replay is delivered at once).
pub fn is_bookkeeping(key: &[u8]) -> bool {
    BOOKKEEPING_HEADERS
        .iter()
        .any(|name| key == name.as_bytes())
        || BOOKKEEPING_PREFIXES
            .iter()
            .any(|prefix| key.starts_with(prefix.as_bytes()))
}

/// One record header; a null value is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// One record of `G.dlq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// The record's time (the batch's for LogAppendTime), epoch ms.
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

/// The record a dead letter is about, from its `sluice.dlq.*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provenance<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

impl DeadLetter {
    /// The value of header `name`: the last one, as Kafka's `lastHeader`;
    /// `None` when absent or null.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|header| header.key == name.as_bytes())
            .and_then(|header| header.value.as_deref())
    }

    /// Header `name` as text: UTF-8, trimmed, not empty.
    pub fn header_text(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
            .map(str::trim)
            .filter(|text| !text.is_empty())
    }

    /// Header `name` as a decimal number.
    fn header_number<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.header_text(name)?.parse().ok()
    }

    /// The retries made before the record was dead-lettered.
    pub fn attempts(&self) -> Option<u64> {
        self.header_number(RECONSUME_TIMES)
    }

    /// The record that failed, if the dead letter names its topic.
    pub fn provenance(&self) -> Option<Provenance<'_>> {
        Some(Provenance {
            topic: self.header_text(DLQ_TOPIC)?,
            partition: self.header_number(DLQ_PARTITION),
            offset: self.header_number(DLQ_OFFSET),
        })
    }

    /// The headers a replay of it carries: its own, in order.
    pub fn replayed_headers(&self) -> impl Iterator<Item = &Header> {
        self.headers
            .iter()
            .filter(|header| !is_bookkeeping(&header.key))
    }
}

/// The dead letters in one Fetch answer's records.
#[derive(Debug, PartialEq, Eq)]
pub struct Fetched {
    /// At `from` and after, in offset order.
    pub letters: Vec<DeadLetter>,
    /// The offset after the last whole batch: where the next Fetch starts.
    /// `from` when the answer held no whole batch.
    pub next_offset: i64,
}

/// The dead letters of `partition` at offset `from` and after in `records`,
/// the records of a Fetch at `from` (its first batch may begin before).
/// A damaged batch is an error naming its offset.
pub fn decode_fetched(partition: i32, records: &[u8], from: i64) -> Result<Fetched, String> {
    let mut fetched = Fetched {
        letters: Vec::new(),
        next_offset: from,
    };
    let mut at = 0;
    while let Some(size) = record_batch::declared_size(&records[at..]) {
        let Some(bytes) = at.checked_add(size).and_then(|end| records.get(at..end)) else {
            break;
        };
        let batch = ValidatedBatch::frame_only(bytes, usize::MAX)
            .map_err(|error| format!("the batch at byte {at} of the answer: {error}"))?;
        at += size;
        let header = *batch.header();
        let next_offset = header.base_offset + i64::from(header.last_offset_delta) + 1;
        fetched.next_offset = fetched.next_offset.max(next_offset);
        if header.is_control() || header.records_count == 0 || next_offset <= from {
            continue;
        }
        let parsed = Records::parse(bytes, BATCH_DECOMPRESSED_MAX_BYTES)
            .map_err(|reason| format!("the batch at offset {}: {reason}", header.base_offset))?;
        for record in &parsed.records {
            let offset = header.base_offset + i64::from(record.offset_delta);
            if offset < from {
                continue;
            }
            let fields = RecordFields::parse(&parsed.plain[record.bytes.clone()])
                .map_err(|reason| format!("the record at offset {offset}: {reason}"))?;
            fetched
                .letters
                .push(fields.letter(partition, offset, record.timestamp_ms));
        }
    }
    Ok(fetched)
}

/// A record's key, value and headers, as ranges of its bytes.
struct RecordFields<'a> {
    bytes: &'a [u8],
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    headers: Vec<(Range<usize>, Option<Range<usize>>)>,
}

impl<'a> RecordFields<'a> {
    /// Take apart a record (length prefix included); every read is bounded
    /// by `bytes`, and nothing is reserved by a count read from them.
    fn parse(bytes: &'a [u8]) -> Result<RecordFields<'a>, String> {
        let mut reader = Reader::new(bytes);
        reader.varint()?; // length
        reader.skip(1)?; // attributes
        reader.varlong()?; // timestamp delta
        reader.varint()?; // offset delta
        let key = reader.nullable_bytes()?;
        let value = reader.nullable_bytes()?;
        let count = reader.varint()?;
        if count < 0 {
            return Err(format!("a header count of {count}"));
        }
        let mut headers = Vec::new();
        for _ in 0..count {
            let key = reader
                .nullable_bytes()?
                .ok_or_else(|| "a header with a null key".to_owned())?;
            headers.push((key, reader.nullable_bytes()?));
        }
        Ok(RecordFields {
            bytes,
            key,
            value,
            headers,
        })
    }

    fn letter(&self, partition: i32, offset: i64, timestamp_ms: i64) -> DeadLetter {
        let owned =
            |range: &Option<Range<usize>>| range.clone().map(|range| self.bytes[range].to_vec());
        DeadLetter {
            partition,
            offset,
            timestamp_ms,
            key: owned(&self.key),
            value: owned(&self.value),
            headers: self
                .headers
                .iter()
                .map(|(key, value)| Header {
                    key: self.bytes[key.clone()].to_vec(),
                    value: owned(value),
                })
                .collect(),
        }
    }
}

/// Builds one uncompressed batch of replayed records, as a producer
/// without idempotence sends it.
#[derive(Debug, Default)]
pub struct ReplayBatch {
    records: Vec<u8>,
    records_count: i32,
}

impl ReplayBatch {
    /// Add the replay of `letter`: its key, value and own headers
    /// ([`DeadLetter::replayed_headers`]).
    pub fn push(&mut self, letter: &DeadLetter) {
        self.push_record(
            letter.key.as_deref(),
            letter.value.as_deref(),
            letter.replayed_headers(),
        );
    }

    fn push_record<'h>(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Iterator<Item = &'h Header>,
    ) {
        let headers: Vec<&Header> = headers.collect();
        let mut body = Vec::new();
        body.push(0); // record attributes: unused in v2
        put_varlong(&mut body, 0); // timestamp delta: every record at the batch's time
        put_varint(&mut body, self.records_count);
        put_optional_bytes(&mut body, key);
        put_optional_bytes(&mut body, value);
        put_varint(&mut body, headers.len() as i32);
        for header in headers {
            put_optional_bytes(&mut body, Some(&header.key));
            put_optional_bytes(&mut body, header.value.as_deref());
        }
        put_varint(&mut self.records, body.len() as i32);
        self.records.extend_from_slice(&body);
        self.records_count += 1;
    }

    pub fn records_count(&self) -> i32 {
        self.records_count
    }

    pub fn is_empty(&self) -> bool {
        self.records_count == 0
    }

    /// Size of the batch [`ReplayBatch::build`] would encode now.
    pub fn encoded_len(&self) -> usize {
        record_batch::HEADER_BYTES + self.records.len()
    }

    /// The batch, every record timestamped `now_ms`: a replay is a new
    /// delivery, and the dead letter's own time may already be past the
    /// target's `retention.ms`.
    pub fn build(&self, now_ms: i64) -> Vec<u8> {
        assert!(
            self.records_count > 0,
            "a record batch holds at least one record"
        );
        let fields = HeaderFields {
            attributes: 0,
            last_offset_delta: self.records_count - 1,
            base_timestamp_ms: now_ms,
            max_timestamp_ms: now_ms,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: self.records_count,
        };
        record_batch::assemble(&fields, &self.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::retry::{RETRY_OFFSET, RETRY_PARTITION, RETRY_TOPIC};
    use crate::record_batch::Codec;
    use crate::record_batch::control::{MarkerKind, TxnMarker, build_marker};

    fn header(key: &str, value: Option<&str>) -> Header {
        Header {
            key: key.as_bytes().to_vec(),
            value: value.map(|value| value.as_bytes().to_vec()),
        }
    }

    /// A dead letter as the broker writes one: provenance, attempts,
    /// origin and a delay header around the record's own headers.
    fn letter(offset: i64, key: Option<&str>, value: &str) -> DeadLetter {
        DeadLetter {
            partition: 2,
            offset,
            timestamp_ms: 1_700_000_000_000,
            key: key.map(|key| key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: vec![
                header("trace-id", Some("abc")),
                header(DELAY_LEVEL, Some("3")),
                header(RETRY_TOPIC, Some("orders")),
                header(RETRY_PARTITION, Some("1")),
                header(RETRY_OFFSET, Some("41")),
                header("empty", None),
                header(RECONSUME_TIMES, Some("16")),
                header(DLQ_TOPIC, Some("orders")),
                header(DLQ_PARTITION, Some("1")),
                header(DLQ_OFFSET, Some("41")),
                header(ORIGIN_OFFSET, Some("900")),
                header(ORIGIN_TIMESTAMP, Some("1699999990000")),
                header("trace-id", Some("def")),
            ],
        }
    }

    /// `letters` as a stored batch of `G.dlq` at their first offset, every
    /// header kept, compressed with `codec`.
    fn dlq_batch(letters: &[DeadLetter], codec: Codec) -> Vec<u8> {
        let mut builder = ReplayBatch::default();
        for letter in letters {
            builder.push_record(
                letter.key.as_deref(),
                letter.value.as_deref(),
                letter.headers.iter(),
            );
        }
        let records = record_batch::compressor::compress(codec, -1, &builder.records).unwrap();
        let timestamp_ms = letters[0].timestamp_ms;
        let fields = HeaderFields {
            attributes: codec.id(),
            last_offset_delta: builder.records_count - 1,
            base_timestamp_ms: timestamp_ms,
            max_timestamp_ms: timestamp_ms,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: builder.records_count,
        };
        let mut bytes = record_batch::assemble(&fields, &records);
        record_batch::assign_broker_fields(&mut bytes, letters[0].offset, 0);
        bytes
    }

    #[test]
    fn bookkeeping_headers_are_stripped_and_the_records_own_kept_in_order() {
        let mut letter = letter(7, Some("k"), "v");
        letter
            .headers
            .push(header("sluice.dlq.reason", Some("later")));
        let kept: Vec<&Header> = letter.replayed_headers().collect();
        assert_eq!(
            kept,
            [
                &header("trace-id", Some("abc")),
                &header("empty", None),
                &header("trace-id", Some("def")),
            ]
        );
        assert!(!is_bookkeeping(b"sluice.dlq"));
        assert!(!is_bookkeeping(b"my.sluice.delay.ms"));
    }

    #[test]
    fn a_dead_letter_names_its_record_and_attempts() {
        let letter = letter(7, None, "v");
        assert_eq!(letter.attempts(), Some(16));
        assert_eq!(
            letter.provenance(),
            Some(Provenance {
                topic: "orders",
                partition: Some(1),
                offset: Some(41),
            })
        );
        assert_eq!(letter.header(ORIGIN_OFFSET), Some(&b"900"[..]));
        assert_eq!(letter.header("trace-id"), Some(&b"def"[..]));
    }

    #[test]
    fn dead_letters_are_decoded_from_any_codec() {
        let letters = vec![letter(40, Some("a"), "one"), letter(41, None, "two")];
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let fetched = decode_fetched(2, &dlq_batch(&letters, codec), 40).unwrap();
            assert_eq!(fetched.letters, letters, "{codec:?}");
            assert_eq!(fetched.next_offset, 42, "{codec:?}");
        }
    }

    #[test]
    fn records_before_the_fetch_offset_and_control_batches_are_skipped() {
        let letters = vec![letter(40, Some("a"), "one"), letter(41, None, "two")];
        let mut records = dlq_batch(&letters, Codec::None);
        let marker = TxnMarker {
            kind: MarkerKind::Commit,
            coordinator_epoch: 0,
        };
        let mut control = build_marker(5, 0, &marker, 0);
        record_batch::assign_broker_fields(&mut control, 42, 0);
        records.extend_from_slice(&control);
        let fetched = decode_fetched(2, &records, 41).unwrap();
        assert_eq!(fetched.letters, letters[1..]);
        assert_eq!(fetched.next_offset, 43);
    }

    #[test]
    fn a_batch_cut_short_is_left_for_the_next_fetch() {
        let first = dlq_batch(&[letter(40, Some("a"), "one")], Codec::None);
        let second = dlq_batch(&[letter(41, Some("b"), "two")], Codec::None);
        let mut records = first.clone();
        records.extend_from_slice(&second[..second.len() - 3]);
        let fetched = decode_fetched(2, &records, 40).unwrap();
        assert_eq!(fetched.letters.len(), 1);
        assert_eq!(fetched.next_offset, 41);
        let nothing = decode_fetched(2, &second[..20], 41).unwrap();
        assert_eq!(nothing.letters, []);
        assert_eq!(nothing.next_offset, 41);
    }

    #[test]
    fn a_damaged_batch_is_an_error() {
        let mut records = dlq_batch(&[letter(40, Some("a"), "one")], Codec::None);
        let last = records.len() - 1;
        records[last] ^= 0xff;
        let error = decode_fetched(2, &records, 40).unwrap_err();
        assert!(error.contains("CRC"), "{error}");
    }

    #[test]
    fn a_replayed_record_keeps_key_value_and_own_headers_only() {
        let letter = letter(40, Some("a"), "one");
        let mut batch = ReplayBatch::default();
        batch.push(&letter);
        let bytes = batch.build(5_000);
        assert_eq!(bytes.len(), batch.encoded_len());
        ValidatedBatch::validate(&bytes, &record_batch::BatchLimits::unlimited()).unwrap();
        let replayed = decode_fetched(0, &bytes, 0).unwrap().letters;
        assert_eq!(
            replayed,
            [DeadLetter {
                partition: 0,
                offset: 0,
                timestamp_ms: 5_000,
                key: letter.key.clone(),
                value: letter.value.clone(),
                headers: letter.replayed_headers().cloned().collect(),
            }]
        );
    }
}
