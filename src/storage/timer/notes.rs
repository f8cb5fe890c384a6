//! What the timer's frames hold (ARCHITECTURE.md, "Delayed delivery, retry
//! and dead letters"): the delayed records of a timer batch, the delivery
//! batch built from them, and the notes that name timer entries.
//!
//! - A timer batch (`held.rs`) holds each delayed record with its own
//!   offset delta and a [`DUE_HEADER`] header: [`held_records`].
//! - A delivery batch is an ordinary, uncompressed batch of the target
//!   partition without a producer, stamped with the delivery time, whose
//!   records keep their key, value and headers (the due header removed) and
//!   gain [`ORIGIN_OFFSET`] and [`ORIGIN_TIMESTAMP`]: [`delivery_record`]
//!   and [`delivery_batch`].
//! - A note (delivery or roll) is an uncompressed batch whose records'
//!   values are timer entry indexes, 8 bytes big-endian: [`note_batch`] and
//!   [`note_entries`].

use std::ops::Range;

use super::held::{DUE_HEADER, TARGET_HEADER, held_as};
use crate::broker::retry::{DLQ_OFFSET, DLQ_TOPIC, RETRY_OFFSET, RETRY_TOPIC};
use crate::record_batch::{self, BatchBuilder, HeaderFields, RecordSpec, put_varint};
use crate::storage::compaction::records::{Reader, Records};

/// Header added at delivery: the offset the record got at Produce.
pub const ORIGIN_OFFSET: &str = "sluice.origin.offset";
/// Header added at delivery: the record's timestamp at Produce.
pub const ORIGIN_TIMESTAMP: &str = "sluice.origin.timestamp";

/// A delayed record of a timer batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldRecord {
    /// The batch's base offset plus the record's offset delta.
    pub origin_offset: i64,
    pub due_ms: i64,
    /// Its bytes in the timer batch (length prefix included).
    pub bytes: u32,
    /// The partition it goes to when not the held frame's own.
    pub target: Option<u32>,
}

/// Most bytes a timer batch's records may decompress to: the broker built
/// it from a produced batch whose records Produce bounded already.
pub const HELD_DECOMPRESSED_MAX: u64 = 1 << 30;

/// The delayed records of the timer batch `held` (stored at `base_offset`).
pub fn held_records(held: &[u8], base_offset: i64) -> Result<Vec<HeldRecord>, String> {
    let records = Records::parse(held, HELD_DECOMPRESSED_MAX)?;
    records
        .records
        .iter()
        .map(|record| {
            let bytes = &records.plain[record.bytes.clone()];
            let held = held_as(bytes)?;
            Ok(HeldRecord {
                origin_offset: base_offset + i64::from(record.offset_delta),
                due_ms: held.due_ms,
                bytes: bytes.len() as u32,
                target: held.target,
            })
        })
        .collect()
}

/// One record to deliver, as [`delivery_batch`] takes it: its body from
/// the attributes byte on, without its length prefix.
pub struct DeliveryRecord(Vec<u8>);

impl DeliveryRecord {
    /// Its bytes (without the length prefix).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The record of timer batch `held` (stored at `base_offset`) whose origin
/// offset is `origin_offset`, rewritten for delivery: timestamp delta 0
/// (the delivery batch's time), offset delta `offset_delta`, key, value
/// and headers kept but the due and target headers and any origin headers,
/// then [`ORIGIN_OFFSET`] and [`ORIGIN_TIMESTAMP`] (the broker's, so a
/// record carries one of each, whatever its producer sent). A retried or
/// dead-lettered record whose provenance the broker named at Produce
/// (`broker/retry.rs`: a topic header without its offset header) gets the
/// offset header too: the origin offset. `None` if the batch holds no such
/// record.
pub fn delivery_record(
    held: &Records,
    base_offset: i64,
    origin_offset: i64,
    offset_delta: i32,
) -> Result<Option<DeliveryRecord>, String> {
    let Some(record) = held
        .records
        .iter()
        .find(|record| base_offset + i64::from(record.offset_delta) == origin_offset)
    else {
        return Ok(None);
    };
    let bytes = &held.plain[record.bytes.clone()];
    let parts = parts(bytes)?;
    let mut body = Vec::with_capacity(bytes.len() + 64);
    body.push(0);
    body.push(0); // timestamp delta 0 (zigzag varlong)
    put_varint(&mut body, offset_delta);
    put_field(&mut body, bytes, parts.key);
    put_field(&mut body, bytes, parts.value);
    let kept: Vec<&(Range<usize>, Option<Range<usize>>)> = parts
        .headers
        .iter()
        .filter(|(key, _)| {
            ![DUE_HEADER, TARGET_HEADER, ORIGIN_OFFSET, ORIGIN_TIMESTAMP]
                .iter()
                .any(|reserved| &bytes[key.clone()] == reserved.as_bytes())
        })
        .collect();
    let has = |name: &str| {
        kept.iter()
            .any(|(key, _)| &bytes[key.clone()] == name.as_bytes())
    };
    let mut added = Vec::with_capacity(4);
    for (topic, offset) in [(RETRY_TOPIC, RETRY_OFFSET), (DLQ_TOPIC, DLQ_OFFSET)] {
        if has(topic) && !has(offset) {
            added.push((offset, origin_offset.to_string()));
        }
    }
    added.push((ORIGIN_OFFSET, origin_offset.to_string()));
    added.push((ORIGIN_TIMESTAMP, record.timestamp_ms.to_string()));
    put_varint(&mut body, (kept.len() + added.len()) as i32);
    for (key, value) in kept {
        put_field(&mut body, bytes, Some(key.clone()));
        put_field(&mut body, bytes, value.clone());
    }
    for (key, value) in added {
        put_varint(&mut body, key.len() as i32);
        body.extend_from_slice(key.as_bytes());
        put_varint(&mut body, value.len() as i32);
        body.extend_from_slice(value.as_bytes());
    }
    Ok(Some(DeliveryRecord(body)))
}

/// An uncompressed batch of `records` (offset deltas 0, 1, … as built),
/// without a producer, every record at `now_ms`.
pub fn delivery_batch(records: &[DeliveryRecord], now_ms: i64) -> Vec<u8> {
    assert!(!records.is_empty(), "a delivery holds a record");
    let mut section = Vec::new();
    for DeliveryRecord(body) in records {
        put_varint(&mut section, body.len() as i32);
        section.extend_from_slice(body);
    }
    let count = records.len() as i32;
    let fields = HeaderFields {
        attributes: 0,
        last_offset_delta: count - 1,
        base_timestamp_ms: now_ms,
        max_timestamp_ms: now_ms,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records_count: count,
    };
    record_batch::assemble(&fields, &section)
}

/// A note naming timer entries `entries` (at least one).
pub fn note_batch(entries: &[u64], now_ms: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new(now_ms);
    for entry in entries {
        builder.push(RecordSpec {
            key: None,
            value: Some(&entry.to_be_bytes()),
            timestamp_delta_ms: 0,
        });
    }
    builder.build()
}

/// The timer entries a note names.
pub fn note_entries(note: &[u8]) -> Result<Vec<u64>, String> {
    let records = Records::parse(note, note.len() as u64)?;
    records
        .records
        .iter()
        .map(|record| {
            let parts = parts(&records.plain[record.bytes.clone()])?;
            let value = parts
                .value
                .map(|value| &records.plain[record.bytes.clone()][value])
                .ok_or_else(|| "a note record without a value".to_owned())?;
            Ok(u64::from_be_bytes(value.try_into().map_err(|_| {
                format!("a note record of {} bytes, not 8", value.len())
            })?))
        })
        .collect()
}

/// The headers of a record (length prefix included): (key, value) ranges
/// of its bytes, a null value as `None`.
pub fn record_headers(record: &[u8]) -> Result<Vec<HeaderRanges>, String> {
    Ok(parts(record)?.headers)
}

/// A header's key and value (`None`: null) as ranges of its record.
pub type HeaderRanges = (Range<usize>, Option<Range<usize>>);

/// A record's key, value and headers, as ranges of its bytes.
struct Parts {
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    headers: Vec<HeaderRanges>,
}

/// Take apart a record (length prefix included).
fn parts(record: &[u8]) -> Result<Parts, String> {
    let mut reader = Reader::new(record);
    reader.varint()?;
    reader.skip(1)?;
    reader.varlong()?;
    reader.varint()?;
    let key = reader.nullable_bytes()?;
    let value = reader.nullable_bytes()?;
    let count = reader.varint()?;
    let mut headers = Vec::new();
    for _ in 0..count.max(0) {
        let key = reader
            .nullable_bytes()?
            .ok_or_else(|| "a header with a null key".to_owned())?;
        headers.push((key, reader.nullable_bytes()?));
    }
    Ok(Parts {
        key,
        value,
        headers,
    })
}

fn put_field(out: &mut Vec<u8>, bytes: &[u8], field: Option<Range<usize>>) {
    match field {
        Some(range) => {
            put_varint(out, range.len() as i32);
            out.extend_from_slice(&bytes[range]);
        }
        None => put_varint(out, -1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::BatchHeader;
    use crate::record_batch::record_walk::{Field, RecordView};
    use crate::storage::timer::held::{Hold, split};

    #[test]
    fn a_held_record_is_delivered_with_its_fields_and_its_origin() {
        let mut builder = BatchBuilder::new(5_000);
        for (index, value) in [b"a", b"b", b"c"].iter().enumerate() {
            builder.push(RecordSpec {
                key: Some(b"key"),
                value: Some(&value[..]),
                timestamp_delta_ms: index as i64,
            });
        }
        let produced = builder.build();
        let split = split(
            &produced,
            &[None, Some(Hold::at(9_000)), Some(Hold::at(8_000))],
            1 << 20,
        )
        .unwrap();
        let held = held_records(&split.held, 100).unwrap();
        assert_eq!(
            held.iter()
                .map(|record| (record.origin_offset, record.due_ms))
                .collect::<Vec<_>>(),
            [(101, 9_000), (102, 8_000)]
        );
        let records = Records::parse(&split.held, 1 << 20).unwrap();
        assert!(delivery_record(&records, 100, 100, 0).unwrap().is_none());
        let picked = [
            delivery_record(&records, 100, 102, 0).unwrap().unwrap(),
            delivery_record(&records, 100, 101, 1).unwrap().unwrap(),
        ];
        let batch = delivery_batch(&picked, 20_000);
        let header = BatchHeader::parse(&batch).unwrap();
        assert!(record_batch::crc_matches(&batch));
        assert_eq!((header.records_count, header.producer_id), (2, -1));
        let mut seen = Vec::new();
        record_batch::walk_records(&batch, 1 << 20, |record: &RecordView<'_>| {
            let Field::Bytes(value) = record.value else {
                panic!("a value")
            };
            seen.push((record.timestamp_ms, value.to_vec()));
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(seen, [(20_000, b"c".to_vec()), (20_000, b"b".to_vec())]);
        let delivered = Records::parse(&batch, 1 << 20).unwrap();
        let first = parts(&delivered.plain[delivered.records[0].bytes.clone()]).unwrap();
        let plain = &delivered.plain[delivered.records[0].bytes.clone()];
        let headers: Vec<(String, String)> = first
            .headers
            .iter()
            .map(|(key, value)| {
                (
                    String::from_utf8(plain[key.clone()].to_vec()).unwrap(),
                    String::from_utf8(plain[value.clone().unwrap()].to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            headers,
            [
                (ORIGIN_OFFSET.to_owned(), "102".to_owned()),
                (ORIGIN_TIMESTAMP.to_owned(), "5002".to_owned())
            ],
            "the due header goes, the origin comes"
        );
        assert_eq!(&plain[first.key.unwrap()], b"key");
    }

    #[test]
    fn notes_name_their_entries() {
        let note = note_batch(&[7, 1 << 40, 0], 1);
        assert_eq!(note_entries(&note).unwrap(), [7, 1 << 40, 0]);
        let not_a_note = {
            let mut builder = BatchBuilder::new(1);
            builder.push(RecordSpec {
                value: Some(b"short"),
                ..RecordSpec::default()
            });
            builder.build()
        };
        assert!(note_entries(&not_a_note).unwrap_err().contains("not 8"));
    }
}
