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

/// The header a timer batch's record names the partition it is delivered
/// to in, when that is not the held frame's own (a dead letter goes from
/// `G.retry` to `G.dlq`, `broker/retry.rs`): the [`crate::ids::PartitionId`]
/// in decimal. Produce refuses a record carrying one.
pub const TARGET_HEADER: &str = "sluice.target.partition";

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

/// How a delayed record is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Its due time, ms since the Unix epoch.
    pub due_ms: i64,
    /// Headers set on the held record: any it carries with one of these
    /// keys are removed, then these follow its others (before the due
    /// header).
    pub headers: Vec<(&'static str, String)>,
    /// Headers removed from the held record.
    pub removed: Vec<&'static str>,
}

impl Hold {
    /// Held until `due_ms`, headers as produced.
    pub fn at(due_ms: i64) -> Hold {
        Hold {
            due_ms,
            headers: Vec::new(),
            removed: Vec::new(),
        }
    }
}

/// Split the checked batch `batch` (with its broker fields assigned) by
/// `due`: one entry per record, in order, how a delayed record is held or
/// `None` for an immediate one. Errors: `due` not one per record, no
/// delayed record, or a batch that does not parse (decompressing at most
/// `decompressed_max_bytes`).
pub fn split(
    batch: &[u8],
    due: &[Option<Hold>],
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
        if let Some(hold) = due {
            let bytes = &records.plain[record.bytes.clone()];
            let due = hold.due_ms.to_string();
            let mut set: Vec<(&str, &str)> = hold
                .headers
                .iter()
                .map(|(key, value)| (*key, value.as_str()))
                .collect();
            set.push((DUE_HEADER, &due));
            section.extend_from_slice(&with_headers(bytes, &set, &hold.removed)?);
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

/// What the timer reads of a held record: its due time ([`DUE_HEADER`])
/// and the partition it goes to ([`TARGET_HEADER`]; `None`: the held
/// frame's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldAs {
    pub due_ms: i64,
    pub target: Option<u32>,
}

/// How a timer batch's record is held; `record` is the whole record, its
/// length prefix included.
pub fn held_as(record: &[u8]) -> Result<HeldAs, String> {
    let mut reader = Reader::new(record);
    let headers_at = skip_to_headers(&mut reader)?;
    reader.at = headers_at;
    let count = reader.varint()?;
    // The broker's are the last (Produce refuses a record carrying one).
    let mut due = Err(format!("a held record without a {DUE_HEADER} header"));
    let mut target = Ok(None);
    for _ in 0..count {
        let key = reader.nullable_bytes()?;
        let value = reader.nullable_bytes()?;
        let number = |name: &str| {
            value
                .clone()
                .and_then(|value| std::str::from_utf8(&record[value]).ok()?.parse().ok())
                .ok_or_else(|| format!("a {name} header that is not a number"))
        };
        match key.map(|key| &record[key]) {
            Some(key) if key == DUE_HEADER.as_bytes() => due = number(DUE_HEADER),
            Some(key) if key == TARGET_HEADER.as_bytes() => {
                target = number(TARGET_HEADER).map(Some);
            }
            _ => {}
        }
    }
    Ok(HeldAs {
        due_ms: due?,
        target: target?
            .map(|target: i64| {
                u32::try_from(target)
                    .map_err(|_| format!("a {TARGET_HEADER} header that is not a partition id"))
            })
            .transpose()?,
    })
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

/// `record` (length prefix included) with the headers `set` (key, value)
/// after its own, any of its own with one of those keys or one of
/// `removed` removed.
fn with_headers(record: &[u8], set: &[(&str, &str)], removed: &[&str]) -> Result<Vec<u8>, String> {
    let mut reader = Reader::new(record);
    let headers_at = skip_to_headers(&mut reader)?;
    let body_at = {
        let mut prefix = Reader::new(record);
        prefix.varint()?;
        prefix.at
    };
    reader.at = headers_at;
    let count = reader.varint()?;
    let mut kept = Vec::with_capacity(record.len() - reader.at);
    let mut kept_count = 0;
    for _ in 0..count {
        let start = reader.at;
        let key = reader.nullable_bytes()?;
        reader.nullable_bytes()?;
        let named = |key: &[u8]| {
            set.iter().any(|(name, _)| name.as_bytes() == key)
                || removed.iter().any(|name| name.as_bytes() == key)
        };
        if !key.is_some_and(|key| named(&record[key])) {
            kept.extend_from_slice(&record[start..reader.at]);
            kept_count += 1;
        }
    }
    let added: usize = set
        .iter()
        .map(|(key, value)| key.len() + value.len() + 10)
        .sum();
    let mut body = Vec::with_capacity(record.len() + added);
    body.extend_from_slice(&record[body_at..headers_at]);
    put_varint(&mut body, kept_count + set.len() as i32);
    body.extend_from_slice(&kept);
    for (key, value) in set {
        put_varint(&mut body, key.len() as i32);
        body.extend_from_slice(key.as_bytes());
        put_varint(&mut body, value.len() as i32);
        body.extend_from_slice(value.as_bytes());
    }
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
            let split =
                split(&batch, &holds(&[None, Some(7_000), None, Some(9_000)]), MAX).unwrap();
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
                .map(|record| held_as(&held.plain[record.bytes.clone()]).unwrap().due_ms)
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
        let split = split(&batch, &holds(&[Some(1); 4]), MAX).unwrap();
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
        assert!(split(&batch, &holds(&[None, Some(1)]), MAX).is_err());
        assert!(split(&batch, &holds(&[None; 4]), MAX).is_err());
    }

    #[test]
    fn a_record_without_the_due_header_is_refused() {
        let batch = produced(Codec::None);
        let records = Records::parse(&batch, MAX).unwrap();
        let first = &records.plain[records.records[0].bytes.clone()];
        assert!(held_as(first).is_err());
        let tagged = with_headers(first, &[(DUE_HEADER, "not a number")], &[]).unwrap();
        assert!(held_as(&tagged).is_err());
        let tagged = with_headers(first, &[(DUE_HEADER, "42")], &[]).unwrap();
        assert_eq!(
            held_as(&tagged),
            Ok(HeldAs {
                due_ms: 42,
                target: None
            })
        );
        let tagged = with_headers(&tagged, &[(TARGET_HEADER, "x")], &[]).unwrap();
        assert!(held_as(&tagged).is_err());
        let tagged = with_headers(&tagged, &[(TARGET_HEADER, "7")], &[]).unwrap();
        assert_eq!(held_as(&tagged).unwrap().target, Some(7));
    }

    fn holds(due: &[Option<i64>]) -> Vec<Option<Hold>> {
        due.iter().map(|due| due.map(Hold::at)).collect()
    }

    #[test]
    fn a_hold_replaces_the_headers_it_sets() {
        let batch = produced(Codec::Lz4);
        let hold = Hold {
            due_ms: 5,
            headers: vec![("n", "2".to_owned()), ("m", "x".to_owned())],
            removed: vec!["gone"],
        };
        let records = Records::parse(&batch, MAX).unwrap();
        let first = &records.plain[records.records[0].bytes.clone()];
        let before = with_headers(first, &[("keep", "1"), ("gone", "1"), ("n", "1")], &[]).unwrap();
        let set: Vec<(&str, &str)> = hold.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let after = with_headers(&before, &set, &hold.removed).unwrap();
        let headers = crate::storage::timer::notes::record_headers(&after).unwrap();
        let named: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(key, value)| (&after[key.clone()], &after[value.clone().unwrap()]))
            .collect();
        assert_eq!(
            named,
            [
                (&b"keep"[..], &b"1"[..]),
                (&b"n"[..], &b"2"[..]),
                (&b"m"[..], &b"x"[..])
            ]
        );
        let split = split(&batch, &[None, Some(hold), None, None], MAX).unwrap();
        let held = Records::parse(&split.held, MAX).unwrap();
        let bytes = &held.plain[held.records[0].bytes.clone()];
        assert_eq!(held_as(bytes).unwrap().due_ms, 5);
    }
}
