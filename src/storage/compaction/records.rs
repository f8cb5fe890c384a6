//! The records inside a stored batch, as the cleaner needs them: each
//! record's bytes, offset, timestamp, key and whether its value is null;
//! and a batch rebuilt around the records that survive.
//!
//! Record layout (Kafka protocol guide, "Record"): length varint, then
//! attributes i8, timestampDelta varlong, offsetDelta varint, keyLength
//! varint (-1: null) and key, valueLength varint (-1: null) and value,
//! header count varint and headers.

use std::ops::Range;

use crate::record_batch::decompressor::Codec;
use crate::record_batch::{self, BatchError, BatchHeader, HEADER_BYTES, HeaderFields};

/// One record of a batch; ranges are into [`Records::plain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The whole record, its length prefix included.
    pub bytes: Range<usize>,
    pub offset_delta: i32,
    pub timestamp_ms: i64,
    /// `None`: a null key.
    pub key: Option<Range<usize>>,
    /// A null value: a tombstone.
    pub tombstone: bool,
}

/// A batch's header and its records, decompressed.
pub struct Records {
    pub header: BatchHeader,
    pub codec: Codec,
    pub plain: Vec<u8>,
    pub records: Vec<Record>,
}

impl Records {
    /// Split the (checked) batch `batch` into records, decompressing at most
    /// `decompressed_max_bytes`.
    pub fn parse(batch: &[u8], decompressed_max_bytes: u64) -> Result<Records, String> {
        let header = BatchHeader::parse(batch).map_err(|error| error.to_string())?;
        let codec = Codec::from_id(header.compression_codec())
            .ok_or_else(|| format!("unknown codec {}", header.compression_codec()))?;
        let section = batch
            .get(HEADER_BYTES..)
            .ok_or_else(|| "a batch shorter than its header".to_owned())?;
        let plain = match codec {
            Codec::None => section.to_vec(),
            _ => record_batch::decompress_all(codec, section, decompressed_max_bytes)
                .map_err(|error: BatchError| error.to_string())?,
        };
        let mut records = Vec::new();
        let mut reader = Reader::new(&plain);
        while reader.at < plain.len() {
            let start = reader.at;
            let length = usize::try_from(reader.varint()?)
                .map_err(|_| "a negative record length".to_owned())?;
            let end = reader
                .at
                .checked_add(length)
                .filter(|&end| end <= plain.len())
                .ok_or_else(|| "a record runs past its batch".to_owned())?;
            reader.skip(1)?;
            let timestamp_delta = reader.varlong()?;
            let offset_delta = reader.varint()?;
            let key = reader.nullable_bytes()?;
            let value = reader.nullable_bytes()?;
            reader.at = end;
            records.push(Record {
                bytes: start..end,
                offset_delta,
                // A LogAppendTime batch's records carry the broker's time,
                // its max timestamp (Kafka's DefaultRecordBatch).
                timestamp_ms: if header.uses_log_append_time() {
                    header.max_timestamp_ms
                } else {
                    header.base_timestamp_ms.saturating_add(timestamp_delta)
                },
                key,
                tombstone: value.is_none(),
            });
        }
        if records.len() != usize::try_from(header.records_count).unwrap_or(usize::MAX) {
            return Err(format!(
                "{} records where the header says {}",
                records.len(),
                header.records_count
            ));
        }
        Ok(Records {
            header,
            codec,
            plain,
            records,
        })
    }

    /// The key bytes of `record`.
    pub fn key(&self, record: &Record) -> Option<&[u8]> {
        record.key.clone().map(|range| &self.plain[range])
    }

    /// The batch with only `keep` (indexes into `records`, increasing):
    /// every header field kept (base offset, leader epoch, last offset
    /// delta, timestamps, producer fields, codec), the records' own bytes
    /// unchanged, lengths, count and CRC computed anew.
    pub fn rebuild(&self, original: &[u8], keep: &[usize]) -> Result<Vec<u8>, std::io::Error> {
        let mut section = Vec::new();
        for &index in keep {
            section.extend_from_slice(&self.plain[self.records[index].bytes.clone()]);
        }
        let compressed = match self.codec {
            Codec::None => section,
            codec => record_batch::compressor::compress(codec, default_level(codec), &section)?,
        };
        let fields = HeaderFields {
            records_count: i32::try_from(keep.len()).expect("fewer records than the original"),
            ..HeaderFields::of(&self.header)
        };
        let mut batch = record_batch::assemble(&fields, &compressed);
        // Base offset and leader epoch lie outside the CRC: the original's.
        batch[..8].copy_from_slice(&original[..8]);
        batch[12..16].copy_from_slice(&original[12..16]);
        Ok(batch)
    }
}

/// The level a rebuilt batch is compressed at: Kafka's default per codec.
fn default_level(codec: Codec) -> i32 {
    match codec {
        Codec::Lz4 => 9,
        Codec::Zstd => 3,
        _ => -1,
    }
}

/// Reads a record's fields (varints, nullable byte strings) from `bytes`
/// at `at`; every read is bounded by `bytes`.
pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    pub(crate) fn skip(&mut self, count: usize) -> Result<(), String> {
        self.at = self
            .at
            .checked_add(count)
            .filter(|&at| at <= self.bytes.len())
            .ok_or_else(|| "a record field runs past its record".to_owned())?;
        Ok(())
    }

    pub(crate) fn unsigned(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| "a varint runs past its record".to_owned())?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint longer than 10 bytes".to_owned())
    }

    pub(crate) fn varlong(&mut self) -> Result<i64, String> {
        let raw = self.unsigned()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    pub(crate) fn varint(&mut self) -> Result<i32, String> {
        i32::try_from(self.varlong()?).map_err(|_| "a varint outside 32 bits".to_owned())
    }

    pub(crate) fn nullable_bytes(&mut self) -> Result<Option<Range<usize>>, String> {
        let length = self.varint()?;
        if length < 0 {
            return Ok(None);
        }
        let start = self.at;
        self.skip(length as usize)?;
        Ok(Some(start..self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{BatchBuilder, RecordSpec};

    /// (key, value) of each record; `None` is null.
    type Spec<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    fn batch(records: &[Spec<'_>]) -> Vec<u8> {
        let mut builder = BatchBuilder::new(1_000);
        for (index, (key, value)) in records.iter().enumerate() {
            builder.push(RecordSpec {
                key: *key,
                value: *value,
                timestamp_delta_ms: index as i64,
            });
        }
        let mut bytes = builder.build();
        record_batch::assign_broker_fields(&mut bytes, 500, 3);
        bytes
    }

    #[test]
    fn records_are_split_with_their_keys_offsets_and_tombstones() {
        let bytes = batch(&[
            (Some(b"a"), Some(b"1")),
            (None, Some(b"2")),
            (Some(b"b"), None),
        ]);
        let parsed = Records::parse(&bytes, 1 << 20).unwrap();
        assert_eq!(parsed.records.len(), 3);
        assert_eq!(parsed.key(&parsed.records[0]), Some(&b"a"[..]));
        assert_eq!(parsed.key(&parsed.records[1]), None);
        assert!(parsed.records[2].tombstone);
        assert_eq!(parsed.records[2].offset_delta, 2);
        assert_eq!(parsed.records[2].timestamp_ms, 1_002);
    }

    #[test]
    fn records_of_a_log_append_time_batch_carry_the_brokers_time() {
        let mut bytes = batch(&[(Some(b"a"), None), (Some(b"b"), Some(b"1"))]);
        record_batch::set_log_append_time(&mut bytes, 9_000);
        let parsed = Records::parse(&bytes, 1 << 20).unwrap();
        assert!(
            parsed
                .records
                .iter()
                .all(|record| record.timestamp_ms == 9_000)
        );
    }

    #[test]
    fn a_rebuilt_batch_keeps_offsets_and_header_fields() {
        let bytes = batch(&[
            (Some(b"a"), Some(b"1")),
            (Some(b"b"), Some(b"2")),
            (Some(b"a"), Some(b"3")),
        ]);
        let parsed = Records::parse(&bytes, 1 << 20).unwrap();
        let rebuilt = parsed.rebuild(&bytes, &[1, 2]).unwrap();
        assert!(record_batch::crc_matches(&rebuilt));
        let header = record_batch::check_structure(&rebuilt).unwrap();
        assert_eq!(header.base_offset, 500);
        assert_eq!(
            header.last_offset_delta, 2,
            "the batch still ends where it did"
        );
        assert_eq!(header.records_count, 2);
        assert_eq!(rebuilt[12..16], bytes[12..16], "leader epoch kept");
        let again = Records::parse(&rebuilt, 1 << 20).unwrap();
        let deltas: Vec<i32> = again
            .records
            .iter()
            .map(|record| record.offset_delta)
            .collect();
        assert_eq!(deltas, [1, 2]);
        assert_eq!(again.key(&again.records[0]), Some(&b"b"[..]));
    }

    #[test]
    fn a_compressed_batch_is_rebuilt_in_its_codec() {
        let bytes = batch(&[(Some(b"a"), Some(b"1")), (Some(b"a"), Some(b"2"))]);
        let zstd = record_batch::recompress(&bytes, Codec::Zstd, 3, 1 << 20)
            .unwrap()
            .unwrap();
        let parsed = Records::parse(&zstd, 1 << 20).unwrap();
        let rebuilt = parsed.rebuild(&zstd, &[1]).unwrap();
        let header = record_batch::check_structure(&rebuilt).unwrap();
        assert_eq!(header.compression_codec(), Codec::Zstd.id());
        let again = Records::parse(&rebuilt, 1 << 20).unwrap();
        assert_eq!(again.records.len(), 1);
        assert_eq!(again.records[0].offset_delta, 1);
    }
}
