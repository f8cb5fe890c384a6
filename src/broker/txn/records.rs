//! The records of `__transaction_state`: one per transactional id, the
//! latest wins (KIP-98; the fields of Kafka's `TransactionLogValue`, in a
//! layout of our own).
//!
//! Key: `{version i16 = 0, transactional id string}`. Value: `{version i16 =
//! 0, producer id i64, last producer id i64, producer epoch i16, last
//! producer epoch i16, timeout ms i32, state i8, topic count i32, per topic
//! {name string, partition count i32, partitions i32...}, start ms i64,
//! last update ms i64}`, big-endian, strings with an i16 length. A
//! tombstone (no value) forgets the id. Decoding trusts nothing: every
//! count is checked against the bytes left as it is read.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::broker::internal_log::{
    FieldError, get_i8, get_i16, get_i32, get_i64, get_string, put_string,
};

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

/// A transaction's state (Kafka's `TransactionState`, with its ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// No transaction in progress.
    Empty,
    /// Partitions were added; data may be written.
    Ongoing,
    /// EndTxn(commit) is recorded; markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fencing InitProducerId is recorded;
    /// markers are being written.
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// Every state, in Kafka's id order.
    pub const ALL: [TxnState; 6] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ];

    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    fn from_id(id: i8) -> Option<TxnState> {
        Some(match id {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    /// The name Kafka's admin tools show (DescribeTransactions,
    /// ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    pub fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// What the coordinator knows of one transactional id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    /// The producer id and epoch before the latest bump or rotation (-1:
    /// none), so a retried bump (KIP-360) is recognised.
    pub last_producer_id: i64,
    pub producer_epoch: i16,
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions of the transaction in progress.
    pub partitions: BTreeSet<(String, u32)>,
    /// When the transaction in progress began (wall clock ms; -1: none).
    pub start_ms: i64,
    pub last_update_ms: i64,
}

/// Why a stored transaction record does not decode (the replay skips it
/// with a warning).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TxnRecordError {
    #[error("transaction record: {0}")]
    Field(#[from] FieldError),
    #[error("transaction record version {found}")]
    Version { found: i16 },
    #[error("unknown transaction state {id}")]
    State { id: i8 },
    #[error("negative {what} {count}")]
    NegativeCount { what: &'static str, count: i32 },
    #[error("negative partition {partition} of topic {topic}")]
    NegativePartition { topic: String, partition: i32 },
}

pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(4 + transactional_id.len());
    out.put_i16(KEY_VERSION);
    put_string(&mut out, transactional_id);
    out.to_vec()
}

pub fn encode_value(meta: &TxnMetadata) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(VALUE_VERSION);
    out.put_i64(meta.producer_id);
    out.put_i64(meta.last_producer_id);
    out.put_i16(meta.producer_epoch);
    out.put_i16(meta.last_producer_epoch);
    out.put_i32(meta.timeout_ms);
    out.put_i8(meta.state.id());
    let mut topics: Vec<(&str, Vec<u32>)> = Vec::new();
    for (topic, partition) in &meta.partitions {
        match topics.last_mut() {
            Some((last, partitions)) if last == topic => partitions.push(*partition),
            _ => topics.push((topic, vec![*partition])),
        }
    }
    out.put_i32(i32::try_from(topics.len()).expect("fewer topics than i32::MAX"));
    for (topic, partitions) in topics {
        put_string(&mut out, topic);
        out.put_i32(i32::try_from(partitions.len()).expect("fewer partitions than i32::MAX"));
        for partition in partitions {
            out.put_i32(i32::try_from(partition).expect("partition indexes fit an i32"));
        }
    }
    out.put_i64(meta.start_ms);
    out.put_i64(meta.last_update_ms);
    out.to_vec()
}

/// A stored record: the transactional id and its metadata (`None`: a
/// tombstone). `Ok(None)` for a key version this broker does not know.
#[allow(clippy::type_complexity)]
pub fn decode(
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<(String, Option<TxnMetadata>)>, TxnRecordError> {
    let mut key = Bytes::copy_from_slice(key);
    if get_i16(&mut key)? != KEY_VERSION {
        return Ok(None);
    }
    let transactional_id = get_string(&mut key)?;
    let meta = match value {
        None => None,
        Some(value) => Some(decode_value(value)?),
    };
    Ok(Some((transactional_id, meta)))
}

fn decode_value(bytes: &[u8]) -> Result<TxnMetadata, TxnRecordError> {
    let mut value = Bytes::copy_from_slice(bytes);
    let version = get_i16(&mut value)?;
    if version != VALUE_VERSION {
        return Err(TxnRecordError::Version { found: version });
    }
    let producer_id = get_i64(&mut value)?;
    let last_producer_id = get_i64(&mut value)?;
    let producer_epoch = get_i16(&mut value)?;
    let last_producer_epoch = get_i16(&mut value)?;
    let timeout_ms = get_i32(&mut value)?;
    let state_id = get_i8(&mut value)?;
    let state = TxnState::from_id(state_id).ok_or(TxnRecordError::State { id: state_id })?;
    let topics = count(get_i32(&mut value)?, "topic count")?;
    let mut partitions = BTreeSet::new();
    for _ in 0..topics {
        let topic = get_string(&mut value)?;
        let count = count(get_i32(&mut value)?, "partition count")?;
        for _ in 0..count {
            let partition = get_i32(&mut value)?;
            let Ok(index) = u32::try_from(partition) else {
                return Err(TxnRecordError::NegativePartition { topic, partition });
            };
            partitions.insert((topic.clone(), index));
        }
    }
    Ok(TxnMetadata {
        producer_id,
        last_producer_id,
        producer_epoch,
        last_producer_epoch,
        timeout_ms,
        state,
        partitions,
        start_ms: get_i64(&mut value)?,
        last_update_ms: get_i64(&mut value)?,
    })
}

fn count(count: i32, what: &'static str) -> Result<u32, TxnRecordError> {
    u32::try_from(count).map_err(|_negative| TxnRecordError::NegativeCount { what, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TxnMetadata {
        TxnMetadata {
            producer_id: 4000,
            last_producer_id: 3999,
            producer_epoch: 7,
            last_producer_epoch: 6,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: [
                ("a".to_owned(), 0),
                ("a".to_owned(), 3),
                ("b".to_owned(), 1),
            ]
            .into_iter()
            .collect(),
            start_ms: 1_700_000_000_000,
            last_update_ms: 1_700_000_000_500,
        }
    }

    #[test]
    fn records_round_trip_including_tombstones() {
        let key = encode_key("txn-1");
        let value = encode_value(&meta());
        assert_eq!(
            decode(&key, Some(&value)),
            Ok(Some(("txn-1".to_owned(), Some(meta()))))
        );
        assert_eq!(decode(&key, None), Ok(Some(("txn-1".to_owned(), None))));
    }

    #[test]
    fn truncated_or_bad_records_are_errors_not_panics() {
        let key = encode_key("txn-1");
        let value = encode_value(&meta());
        for len in 0..value.len() {
            assert!(
                decode(&key, Some(&value[..len])).is_err(),
                "a value cut to {len} bytes"
            );
        }
        for len in 0..key.len() {
            assert!(
                decode(&key[..len], None).is_err(),
                "a key cut to {len} bytes"
            );
        }
        let mut bad_state = value.clone();
        bad_state[2 + 8 + 8 + 2 + 2 + 4] = 9;
        assert_eq!(
            decode(&key, Some(&bad_state)),
            Err(TxnRecordError::State { id: 9 })
        );
        let mut huge_count = value.clone();
        huge_count[2 + 8 + 8 + 2 + 2 + 4 + 1..][..4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(
            decode(&key, Some(&huge_count)).is_err(),
            "counts are checked as read"
        );
    }
}
