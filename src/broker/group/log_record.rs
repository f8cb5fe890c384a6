//! Every kind of record the group coordinator keeps in `__consumer_offsets`:
//! committed offsets (key versions 0 and 1, `offsets.rs`) and the state of
//! consumer-protocol groups (key versions 3 and 5–8, `consumer/records.rs`).
//! The key's leading version says which; records of versions this broker
//! does not know are skipped by the replay, so a later record type never
//! stops a start.

use thiserror::Error;

use super::consumer::records::{ConsumerRecord, ConsumerRecordError, is_consumer_key_version};
use super::offsets::{OffsetRecord, OffsetRecordError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    Offset(OffsetRecord),
    Consumer(ConsumerRecord),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LogRecordError {
    #[error(transparent)]
    Offset(#[from] OffsetRecordError),
    #[error(transparent)]
    Consumer(#[from] ConsumerRecordError),
}

/// A record's key and value (`None`: a tombstone), as stored.
pub type EncodedRecord = (Vec<u8>, Option<Vec<u8>>);

impl LogRecord {
    pub fn group(&self) -> &str {
        match self {
            LogRecord::Offset(record) => &record.group,
            LogRecord::Consumer(record) => record.group(),
        }
    }

    pub fn encode(&self) -> EncodedRecord {
        match self {
            LogRecord::Offset(record) => (record.encode_key(), record.encode_value()),
            LogRecord::Consumer(record) => (record.encode_key(), record.encode_value()),
        }
    }

    /// Decode a stored record; `None` for a key version this broker does
    /// not know.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<LogRecord>, LogRecordError> {
        let Some(version) = key.get(..2).map(|raw| i16::from_be_bytes([raw[0], raw[1]])) else {
            // Too short for a version: the offset decoder says why.
            return Ok(OffsetRecord::decode(key, value)?.map(LogRecord::Offset));
        };
        if is_consumer_key_version(version) {
            return Ok(Some(LogRecord::Consumer(ConsumerRecord::decode(
                key, value,
            )?)));
        }
        Ok(OffsetRecord::decode(key, value)?.map(LogRecord::Offset))
    }
}
