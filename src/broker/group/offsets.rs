//! Committed offsets: a group's in-memory table, and the records that make
//! it durable in the internal `__consumer_offsets` topic.
//!
//! A record's key names (group, topic, partition) and its value holds the
//! offset, leader epoch, metadata and commit time; a record without a value
//! (a tombstone) deletes the key. The layouts are Kafka's own
//! `OffsetCommitKey` v1 and `OffsetCommitValue` v3 (big-endian, i16-length
//! strings), so a reader of the topic sees familiar bytes. Replaying the
//! records of a partition in offset order rebuilds the table exactly.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::broker::internal_log::{FieldError, get_i16, get_i32, get_i64, get_string, put_string};

const KEY_VERSION: i16 = 1;
const VALUE_VERSION: i16 = 3;

/// The longest string a record holds: the layouts give group ids, topic
/// names and metadata an i16 length. Requests may carry longer ones (compact
/// strings have u32 lengths), so every string is checked against this
/// before a record is built: group ids by OffsetCommit (INVALID_GROUP_ID),
/// topic names by topic creation, metadata by `offset_metadata_max_bytes`.
pub const RECORD_STRING_BYTES_MAX: usize = i16::MAX as usize;

const _: () = assert!(crate::storage::partition::TOPIC_NAME_BYTES_MAX <= RECORD_STRING_BYTES_MAX);

/// Why a stored offset record does not decode (replay skips it with a
/// warning: the record was damaged, or not written by this broker).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OffsetRecordError {
    #[error("offset record: {0}")]
    Field(#[from] FieldError),
    #[error("offset value version {found} (expected {VALUE_VERSION})")]
    ValueVersion { found: i16 },
}

/// Bytes of a key beyond its two strings: version, two lengths, partition.
const KEY_FIXED_BYTES: usize = 2 + 2 + 2 + 4;
/// Bytes of a value beyond its metadata: version, offset, leader epoch,
/// metadata length, commit time.
const VALUE_FIXED_BYTES: usize = 2 + 8 + 4 + 2 + 8;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One group's committed offsets, ordered by topic and partition.
#[derive(Debug, Default)]
pub struct GroupOffsets {
    entries: BTreeMap<TopicPartition, CommittedOffset>,
}

impl GroupOffsets {
    pub fn get(&self, key: &TopicPartition) -> Option<&CommittedOffset> {
        self.entries.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TopicPartition, &CommittedOffset)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Apply one change: a new value, or `None` to delete.
    pub fn apply(&mut self, key: TopicPartition, value: Option<CommittedOffset>) {
        match value {
            Some(value) => {
                self.entries.insert(key, value);
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }
}

/// One change to the offsets table, as stored in `__consumer_offsets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetRecord {
    pub group: String,
    pub key: TopicPartition,
    pub value: Option<CommittedOffset>,
}

impl OffsetRecord {
    /// Bytes of the encoded key and value together.
    pub fn encoded_len(&self) -> usize {
        let key = KEY_FIXED_BYTES + self.group.len() + self.key.topic.len();
        let value = self
            .value
            .as_ref()
            .map_or(0, |value| VALUE_FIXED_BYTES + value.metadata.len());
        key + value
    }

    pub fn encode_key(&self) -> Vec<u8> {
        let mut out =
            BytesMut::with_capacity(KEY_FIXED_BYTES + self.group.len() + self.key.topic.len());
        out.put_i16(KEY_VERSION);
        put_string(&mut out, &self.group);
        put_string(&mut out, &self.key.topic);
        out.put_i32(self.key.partition);
        out.to_vec()
    }

    pub fn encode_value(&self) -> Option<Vec<u8>> {
        let value = self.value.as_ref()?;
        let mut out = BytesMut::with_capacity(VALUE_FIXED_BYTES + value.metadata.len());
        out.put_i16(VALUE_VERSION);
        out.put_i64(value.offset);
        out.put_i32(value.leader_epoch);
        put_string(&mut out, &value.metadata);
        out.put_i64(value.commit_timestamp_ms);
        Some(out.to_vec())
    }

    /// Decode a stored record; `None` for keys this version does not know
    /// (skipped, so a future record type does not stop a replay).
    pub fn decode(
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<OffsetRecord>, OffsetRecordError> {
        let mut key = Bytes::copy_from_slice(key);
        let version = get_i16(&mut key)?;
        if version != 0 && version != KEY_VERSION {
            return Ok(None);
        }
        let group = get_string(&mut key)?;
        let topic = get_string(&mut key)?;
        let partition = get_i32(&mut key)?;
        let value = match value {
            None => None,
            Some(bytes) => Some(decode_value(bytes)?),
        };
        Ok(Some(OffsetRecord {
            group,
            key: TopicPartition { topic, partition },
            value,
        }))
    }
}

fn decode_value(bytes: &[u8]) -> Result<CommittedOffset, OffsetRecordError> {
    let mut value = Bytes::copy_from_slice(bytes);
    let version = get_i16(&mut value)?;
    if version != VALUE_VERSION {
        return Err(OffsetRecordError::ValueVersion { found: version });
    }
    Ok(CommittedOffset {
        offset: get_i64(&mut value)?,
        leader_epoch: get_i32(&mut value)?,
        metadata: get_string(&mut value)?,
        commit_timestamp_ms: get_i64(&mut value)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_including_tombstones() {
        let record = OffsetRecord {
            group: "billing".to_owned(),
            key: TopicPartition {
                topic: "orders".to_owned(),
                partition: 7,
            },
            value: Some(CommittedOffset {
                offset: 42,
                leader_epoch: -1,
                metadata: "meta".to_owned(),
                commit_timestamp_ms: 1_700_000_000_000,
            }),
        };
        let key = record.encode_key();
        let value = record.encode_value();
        assert_eq!(
            record.encoded_len(),
            key.len() + value.as_ref().map_or(0, Vec::len)
        );
        assert_eq!(
            OffsetRecord::decode(&key, value.as_deref()).unwrap(),
            Some(record.clone())
        );
        let tombstone = OffsetRecord {
            value: None,
            ..record
        };
        assert_eq!(tombstone.encoded_len(), tombstone.encode_key().len());
        assert_eq!(
            OffsetRecord::decode(&tombstone.encode_key(), None).unwrap(),
            Some(tombstone)
        );
    }

    #[test]
    fn records_with_the_longest_strings_round_trip() {
        let longest = "x".repeat(RECORD_STRING_BYTES_MAX);
        let record = OffsetRecord {
            group: longest.clone(),
            key: TopicPartition {
                topic: "t".to_owned(),
                partition: 0,
            },
            value: Some(CommittedOffset {
                offset: 1,
                leader_epoch: 0,
                metadata: longest,
                commit_timestamp_ms: 0,
            }),
        };
        let key = record.encode_key();
        let value = record.encode_value();
        assert_eq!(
            OffsetRecord::decode(&key, value.as_deref()).unwrap(),
            Some(record)
        );
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let record = OffsetRecord {
            group: "g".to_owned(),
            key: TopicPartition {
                topic: "t".to_owned(),
                partition: 0,
            },
            value: None,
        };
        let key = record.encode_key();
        for len in 0..key.len() {
            assert!(
                matches!(
                    OffsetRecord::decode(&key[..len], None),
                    Err(OffsetRecordError::Field(FieldError::EndsEarly { .. }))
                ),
                "a key cut to {len} bytes"
            );
        }
    }
}
