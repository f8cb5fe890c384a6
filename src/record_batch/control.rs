//! Transaction markers: the control batches that end a transaction on a
//! partition (KIP-98; Kafka's `EndTransactionMarker` and `ControlRecordType`).
//!
//! A marker is a batch with the control (0x20) and transactional (0x10)
//! attributes, the transaction's producer id and epoch, base sequence -1
//! and one record: key `{version i16 = 0, type i16}` (0 abort, 1 commit),
//! value `{version i16 = 0, coordinator epoch i32}`, big-endian. Only the
//! broker writes them; Produce refuses control batches from clients.
//! Consumers see them in fetched data and use them, with the aborted list,
//! to drop aborted records (read_committed).

use std::ops::ControlFlow;

use thiserror::Error;

use super::record_walk::Field;
use super::{
    ATTRIBUTE_CONTROL, ATTRIBUTE_TRANSACTIONAL, BatchError, HeaderFields, assemble,
    put_optional_bytes, put_varint, put_varlong, walk_records,
};

/// The control record key's version this broker writes and reads.
const KEY_VERSION: i16 = 0;
/// The marker value's version this broker writes; later versions (with
/// more fields) are read by their first fields, as Kafka does.
const VALUE_VERSION: i16 = 0;
/// A marker batch decompresses to far less than this.
const MARKER_DECOMPRESSED_MAX_BYTES: u64 = 4096;

/// Which way a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MarkerKind {
    Abort,
    Commit,
}

impl MarkerKind {
    /// The control record type (Kafka's `ControlRecordType`).
    pub fn type_id(self) -> i16 {
        match self {
            MarkerKind::Abort => 0,
            MarkerKind::Commit => 1,
        }
    }
}

/// The content of a transaction marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnMarker {
    pub kind: MarkerKind,
    /// The epoch of the transaction coordinator that wrote it; a marker
    /// from an older coordinator is refused (TRANSACTION_COORDINATOR_FENCED).
    pub coordinator_epoch: i32,
}

/// Why a control batch is not a transaction marker this broker understands.
#[derive(Debug, Error)]
pub enum MarkerError {
    #[error("the control batch has no records")]
    NoRecord,
    #[error("the control record has no key or no value")]
    MissingField,
    #[error("control record key of {len} bytes (expected at least 4)")]
    ShortKey { len: usize },
    #[error("unknown control record key version {version}")]
    KeyVersion { version: i16 },
    #[error("control record type {type_id} is not a transaction marker")]
    NotAMarker { type_id: i16 },
    #[error("marker value of {len} bytes (expected at least 6)")]
    ShortValue { len: usize },
    #[error("{0}")]
    Batch(#[from] BatchError),
}

/// A marker batch for `producer_id` at `producer_epoch`, with base offset 0
/// (the log assigns the real one) and `timestamp_ms` as its timestamp.
pub fn build_marker(
    producer_id: i64,
    producer_epoch: i16,
    marker: &TxnMarker,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&KEY_VERSION.to_be_bytes());
    key.extend_from_slice(&marker.kind.type_id().to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&VALUE_VERSION.to_be_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let mut body = Vec::with_capacity(32);
    body.push(0); // record attributes
    put_varlong(&mut body, 0); // timestamp delta
    put_varint(&mut body, 0); // offset delta
    put_optional_bytes(&mut body, Some(&key));
    put_optional_bytes(&mut body, Some(&value));
    put_varint(&mut body, 0); // header count
    let mut records = Vec::with_capacity(body.len() + 2);
    put_varint(
        &mut records,
        i32::try_from(body.len()).expect("a marker record is a few bytes"),
    );
    records.extend_from_slice(&body);
    assemble(
        &HeaderFields {
            attributes: ATTRIBUTE_CONTROL | ATTRIBUTE_TRANSACTIONAL,
            last_offset_delta: 0,
            base_timestamp_ms: timestamp_ms,
            max_timestamp_ms: timestamp_ms,
            producer_id,
            producer_epoch,
            base_sequence: -1,
            records_count: 1,
        },
        &records,
    )
}

/// The marker in the control batch `bytes` (whose frame is known whole):
/// its first record's key and value.
pub fn parse_marker(bytes: &[u8]) -> Result<TxnMarker, MarkerError> {
    let mut found = Err(MarkerError::NoRecord);
    walk_records(bytes, MARKER_DECOMPRESSED_MAX_BYTES, |record| {
        found = match (record.key, record.value) {
            (Field::Bytes(key), Field::Bytes(value)) => decode_record(key, value),
            _ => Err(MarkerError::MissingField),
        };
        ControlFlow::Break(())
    })?;
    found
}

/// A marker record's key and value (what [`parse_marker`] reads from the batch).
pub fn decode_record(key: &[u8], value: &[u8]) -> Result<TxnMarker, MarkerError> {
    let [k0, k1, k2, k3, ..] = *key else {
        return Err(MarkerError::ShortKey { len: key.len() });
    };
    let version = i16::from_be_bytes([k0, k1]);
    if version != KEY_VERSION {
        return Err(MarkerError::KeyVersion { version });
    }
    let kind = match i16::from_be_bytes([k2, k3]) {
        0 => MarkerKind::Abort,
        1 => MarkerKind::Commit,
        type_id => return Err(MarkerError::NotAMarker { type_id }),
    };
    let [_, _, e0, e1, e2, e3, ..] = *value else {
        return Err(MarkerError::ShortValue { len: value.len() });
    };
    Ok(TxnMarker {
        kind,
        coordinator_epoch: i32::from_be_bytes([e0, e1, e2, e3]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{BatchHeader, ValidatedBatch};

    #[test]
    fn a_marker_round_trips_and_is_a_transactional_control_batch() {
        for kind in [MarkerKind::Abort, MarkerKind::Commit] {
            let marker = TxnMarker {
                kind,
                coordinator_epoch: 7,
            };
            let bytes = build_marker(42, 3, &marker, 1_700_000_000_000);
            let header = BatchHeader::parse(&bytes).unwrap();
            assert!(header.is_control() && header.is_transactional());
            assert_eq!((header.producer_id, header.producer_epoch), (42, 3));
            assert_eq!((header.base_sequence, header.records_count), (-1, 1));
            assert!(ValidatedBatch::frame_only(&bytes, 1 << 20).is_ok());
            assert_eq!(parse_marker(&bytes).ok(), Some(marker));
        }
    }

    #[test]
    fn clients_may_not_send_a_marker() {
        let bytes = build_marker(
            1,
            0,
            &TxnMarker {
                kind: MarkerKind::Commit,
                coordinator_epoch: 0,
            },
            0,
        );
        let limits = crate::record_batch::BatchLimits::unlimited();
        assert!(matches!(
            ValidatedBatch::validate(&bytes, &limits),
            Err(BatchError::ControlBatch)
        ));
    }

    #[test]
    fn short_or_unknown_control_records_are_refused() {
        assert!(matches!(
            decode_record(&[0, 0, 0], &[0; 6]),
            Err(MarkerError::ShortKey { len: 3 })
        ));
        assert!(matches!(
            decode_record(&[0, 1, 0, 0], &[0; 6]),
            Err(MarkerError::KeyVersion { version: 1 })
        ));
        assert!(matches!(
            decode_record(&[0, 0, 0, 5], &[0; 6]),
            Err(MarkerError::NotAMarker { type_id: 5 })
        ));
        assert!(matches!(
            decode_record(&[0, 0, 0, 1], &[0; 5]),
            Err(MarkerError::ShortValue { len: 5 })
        ));
        // A newer value version with more fields is read by its first ones.
        assert_eq!(
            decode_record(&[0, 0, 0, 1], &[0, 1, 0, 0, 0, 9, 0xff, 0xff]).ok(),
            Some(TxnMarker {
                kind: MarkerKind::Commit,
                coordinator_epoch: 9
            })
        );
    }
}
