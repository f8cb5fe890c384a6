//! A produced batch with delayed records split in two (ARCHITECTURE.md,
//! "Delayed delivery, retry and dead letters", two adjacent frames per
//! produced batch): the *visible batch*, which the partition serves at once,
//! and the *timer batch* stored in the held frame before it.
//!
//! - The visible batch keeps the immediate records with their own bytes
//!   and every header field (base offset, last offset delta, timestamps,
//!   producer fields, codec), as a compaction pass rebuilds a batch: the
//!   delayed records' offsets are gaps. With no immediate record it is an
//!   empty, uncompressed batch (records count 0), which Kafka clients skip.
//! - The timer batch holds the delayed records, in the produced batch's
//!   codec (so a batch within the limits compressed stays so), each with its
//!   own offset delta (so base offset + delta is its *origin offset*),
//!   timestamp delta, key, value and headers, plus a [`DUE_HEADER`] header
//!   giving its due time. Its header fields are the produced batch's; its `partitionLeaderEpoch` field, outside the CRC and
//!   otherwise unused in a held frame, records the visible batch's CRC, by
//!   which recovery pairs the two frames.
//!
//! Record layout (Kafka protocol guide, "Record"): length varint, then
//! attributes i8, timestampDelta varlong, offsetDelta varint, key and value
//! (varint length, -1 for null), header count varint, and per header a key
//! (varint length) and a value (varint length, -1 for null).

use crate::record_batch::{self, HeaderFields, put_varint, stored_crc};
use crate::storage::compaction::records::{Reader, Records};

/// The header a timer batch's record carries its due time in: decimal
/// milliseconds since the Unix epoch.
pub const DUE_HEADER: &str = "sluice.due.ms";

/// The codec bits of a batch's attributes.
const CODEC_BITS: i16 = 0x07;

/// The two batches a produced batch with delayed records is stored as.
#[derive(Debug)]
pub struct Split {
    /// The batch the partition serves now (its immediate records).
    pub visible: Vec<u8>,
    /// The timer batch of the held frame (its delayed records).
    pub held: Vec<u8>,
}

/// Split the checked batch `batch` (with its broker fields assigned) by
/// `due`: one entry per record, in order, the due time of a delayed record
/// (ms since the Unix epoch) or `None` for an immediate one. Errors: `due`
/// not one per record, no delayed record, or a batch that does not parse
/// (decompressing at most `decompressed_max_bytes`).
pub fn split(
    batch: &[u8],
    due: &[Option<i64>],
    decompressed_max_bytes: u64,
) -> Result<Split, String> {
    let records = Records::parse(batch, decompressed_max_bytes)?;
    if due.len() != records.records.len() {
        return Err(format!(
            "{} due times for {} records",
            due.len(),
            records.records.len()
        ));
    }
    if due.iter().all(Option::is_none) {
        return Err("no delayed record to hold".to_owned());
    }
    let keep: Vec<usize> = (0..due.len())
        .filter(|&index| due[index].is_none())
        .collect();
    let mut visible = if keep.is_empty() {
        let fields = HeaderFields {
            attributes: records.header.attributes & !CODEC_BITS,
            records_count: 0,
            ..HeaderFields::of(&records.header)
        };
        record_batch::assemble(&fields, &[])
    } else {
        records
            .rebuild(batch, &keep)
            .map_err(|error| format!("cannot recompress the visible batch: {error}"))?
    };
    let mut section = Vec::new();
    let mut held_count = 0i32;
    for (record, due) in records.records.iter().zip(due) {
        if let Some(due) = due {
            let bytes = &records.plain[record.bytes.clone()];
            section.extend_from_slice(&with_header(bytes, DUE_HEADER, &due.to_string())?);
            held_count += 1;
        }
    }
    let fields = HeaderFields {
        attributes: records.header.attributes & !CODEC_BITS,
        records_count: held_count,
        ..HeaderFields::of(&records.header)
    };
    let mut held = record_batch::assemble(&fields, &section);
    // In the produced batch's codec, so that a batch within the limits
    // when compressed stays within them held.
    let codec = records.header.attributes & CODEC_BITS;
    if codec != 0
        && let Some(compressed) =
            record_batch::recompress(&held, records.codec, 1, decompressed_max_bytes)
                .map_err(|error| format!("cannot compress the timer batch: {error}"))?
    {
        held = compressed;
    }
    // Base offset (and, for the visible batch, leader epoch) lie outside
    // the CRC: the produced batch's; the held batch's epoch field names
    // the visible batch.
    visible[..8].copy_from_slice(&batch[..8]);
    visible[12..16].copy_from_slice(&batch[12..16]);
    held[..8].copy_from_slice(&batch[..8]);
    held[12..16].copy_from_slice(&stored_crc(&visible).to_be_bytes());
    Ok(Split { visible, held })
}

/// The CRC of the visible batch that timer batch `held` belongs with.
pub fn visible_crc(held: &[u8]) -> u32 {
    assert!(held.len() >= 16, "a batch header");
    u32::from_be_bytes([held[12], held[13], held[14], held[15]])
}

/// The due time a timer batch's record carries ([`DUE_HEADER`]); `record`
/// is the whole record, its length prefix included.
pub fn due_of(record: &[u8]) -> Result<i64, String> {
    let mut reader = Reader::new(record);
    let headers_at = skip_to_headers(&mut reader)?;
    reader.at = headers_at;
    let count = reader.varint()?;
    // The broker's is the last (Produce refuses a record carrying one).
    let mut due = Err(format!("a held record without a {DUE_HEADER} header"));
    for _ in 0..count {
        let key = reader.nullable_bytes()?;
        let value = reader.nullable_bytes()?;
        if key.is_some_and(|key| &record[key] == DUE_HEADER.as_bytes()) {
            due = value
                .and_then(|value| std::str::from_utf8(&record[value]).ok()?.parse().ok())
                .ok_or_else(|| format!("a {DUE_HEADER} header that is not a number"));
        }
    }
    due
}

/// Where the header count of `reader`'s record starts (the reader is left
/// anywhere).
fn skip_to_headers(reader: &mut Reader<'_>) -> Result<usize, String> {
    let length = reader.varint()?;
    let end = usize::try_from(length)
        .ok()
        .and_then(|length| reader.at.checked_add(length))
        .filter(|&end| end <= reader.bytes.len())
        .ok_or_else(|| "a record length past its bytes".to_owned())?;
    reader.skip(1)?;
    reader.varlong()?;
    reader.varint()?;
    reader.nullable_bytes()?;
    reader.nullable_bytes()?;
    if reader.at > end {
        return Err("a record runs past its length".to_owned());
    }
    Ok(reader.at)
}

/// `record` (length prefix included) with one more header `key` = `value`
/// after its own.
fn with_header(record: &[u8], key: &str, value: &str) -> Result<Vec<u8>, String> {
    let mut reader = Reader::new(record);
    let headers_at = skip_to_headers(&mut reader)?;
    let body_at = {
        let mut prefix = Reader::new(record);
        prefix.varint()?;
        prefix.at
    };
    reader.at = headers_at;
    let count = reader.varint()?;
    let mut body = Vec::with_capacity(record.len() + key.len() + value.len() + 8);
    body.extend_from_slice(&record[body_at..headers_at]);
    put_varint(&mut body, count + 1);
    body.extend_from_slice(&record[reader.at..]);
    put_varint(&mut body, key.len() as i32);
    body.extend_from_slice(key.as_bytes());
    put_varint(&mut body, value.len() as i32);
    body.extend_from_slice(value.as_bytes());
    let mut out = Vec::with_capacity(body.len() + 5);
    put_varint(
        &mut out,
        i32::try_from(body.len()).map_err(|_| "a record over 2 GiB".to_owned())?,
    );
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::decompressor::Codec;
    use crate::record_batch::{BatchBuilder, BatchHeader, RecordSpec};

    const MAX: u64 = 1 << 20;

    /// Four records (values v0..v3), base offset 500, compressed with
    /// `codec`.
    fn produced(codec: Codec) -> Vec<u8> {
        let mut builder = BatchBuilder::new(1_000);
        for index in 0..4u8 {
            builder.push(RecordSpec {
                key: Some(&[b'k', b'0' + index]),
                value: Some(&[b'v', b'0' + index]),
                timestamp_delta_ms: i64::from(index),
            });
        }
        let plain = builder.build();
        let mut bytes = match codec {
            Codec::None => plain,
            codec => record_batch::recompress(&plain, codec, -1, MAX)
                .unwrap()
                .unwrap(),
        };
        record_batch::assign_broker_fields(&mut bytes, 500, 3);
        bytes
    }

    fn values(records: &Records) -> Vec<(i32, Vec<u8>)> {
        records
            .records
            .iter()
            .map(|record| {
                let bytes = &records.plain[record.bytes.clone()];
                (
                    record.offset_delta,
                    bytes[bytes.len() - 3..bytes.len() - 1].to_vec(),
                )
            })
            .collect()
    }

    /// `batch` is a stored batch the log takes: its header parses and its
    /// CRC holds (a visible batch with gaps, like a compacted one, is not
    /// what Produce's checks want from a producer).
    fn valid(batch: &[u8]) {
        BatchHeader::parse(batch).unwrap();
        assert!(record_batch::crc_matches(batch));
    }

    #[test]
    fn delayed_records_go_to_the_held_batch_with_their_offsets_and_due_times() {
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Lz4,
            Codec::Zstd,
            Codec::Snappy,
        ] {
            let batch = produced(codec);
            let split = split(&batch, &[None, Some(7_000), None, Some(9_000)], MAX).unwrap();
            valid(&split.visible);
            let visible = Records::parse(&split.visible, MAX).unwrap();
            assert_eq!(visible.codec, codec, "the visible batch keeps its codec");
            let offsets: Vec<i32> = visible.records.iter().map(|r| r.offset_delta).collect();
            assert_eq!(offsets, [0, 2]);
            assert_eq!(visible.header.base_offset, 500);
            assert_eq!(visible.header.last_offset_delta, 3);
            let held = Records::parse(&split.held, MAX).unwrap();
            assert_eq!(held.codec, codec, "the timer batch keeps the codec too");
            assert_eq!(held.header.base_offset, 500);
            let offsets: Vec<i32> = held.records.iter().map(|r| r.offset_delta).collect();
            assert_eq!(offsets, [1, 3], "base + delta is each origin offset");
            let due: Vec<i64> = held
                .records
                .iter()
                .map(|record| due_of(&held.plain[record.bytes.clone()]).unwrap())
                .collect();
            assert_eq!(due, [7_000, 9_000]);
            let timestamps: Vec<i64> = held.records.iter().map(|r| r.timestamp_ms).collect();
            assert_eq!(timestamps, [1_001, 1_003], "timestamps kept");
            assert_eq!(visible_crc(&split.held), stored_crc(&split.visible));
            // The held batch is a sound batch too, whose keys and values
            // are the records' own.
            valid(&split.held);
            let key = held.key(&held.records[0]).unwrap();
            assert_eq!(key, b"k1");
        }
    }

    #[test]
    fn an_all_delayed_batch_leaves_an_empty_uncompressed_visible_batch() {
        let batch = produced(Codec::Gzip);
        let split = split(&batch, &[Some(1); 4], MAX).unwrap();
        let visible = BatchHeader::parse(&split.visible).unwrap();
        assert_eq!(visible.records_count, 0);
        assert_eq!(visible.compression_codec(), 0);
        assert_eq!(
            (visible.base_offset, visible.last_offset_delta),
            (500, 3),
            "the offsets stay taken"
        );
        assert!(record_batch::crc_matches(&split.visible));
        let held = Records::parse(&split.held, MAX).unwrap();
        assert_eq!(values(&held).len(), 4);
    }

    #[test]
    fn a_split_needs_one_due_time_per_record_and_a_delayed_one() {
        let batch = produced(Codec::None);
        assert!(split(&batch, &[None, Some(1)], MAX).is_err());
        assert!(split(&batch, &[None; 4], MAX).is_err());
    }

    #[test]
    fn a_record_without_the_due_header_is_refused() {
        let batch = produced(Codec::None);
        let records = Records::parse(&batch, MAX).unwrap();
        let first = &records.plain[records.records[0].bytes.clone()];
        assert!(due_of(first).is_err());
        let tagged = with_header(first, DUE_HEADER, "not a number").unwrap();
        assert!(due_of(&tagged).is_err());
        let tagged = with_header(first, DUE_HEADER, "42").unwrap();
        assert_eq!(due_of(&tagged), Ok(42));
    }
}
