//! Kafka error codes for what storage and the broker report.

use kafka_protocol::ResponseError;

use crate::broker::TopicError;
use crate::record_batch::BatchError;
use crate::storage::{AppendError, ReadError};

pub const NONE: i16 = 0;

pub fn code(error: ResponseError) -> i16 {
    error.code()
}

pub fn for_append(error: &AppendError) -> i16 {
    match error {
        AppendError::UnknownPartition(_) => ResponseError::UnknownTopicOrPartition.code(),
        AppendError::BatchTooLarge { .. } => ResponseError::MessageTooLarge.code(),
        AppendError::Poisoned { .. }
        | AppendError::DiskFull { .. }
        | AppendError::Queue { .. }
        | AppendError::Roll { .. }
        | AppendError::Storage(_) => ResponseError::KafkaStorageError.code(),
        AppendError::ShuttingDown => ResponseError::NotLeaderOrFollower.code(),
    }
}

pub fn for_batch(error: &BatchError) -> i16 {
    match error {
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge.code(),
        // Produce v3+ carries magic 2 only; Kafka answers INVALID_RECORD.
        BatchError::UnsupportedMagic { .. } => ResponseError::InvalidRecord.code(),
        BatchError::CrcMismatch { .. }
        | BatchError::TooShort { .. }
        | BatchError::LengthMismatch { .. } => ResponseError::CorruptMessage.code(),
        BatchError::InvalidLastOffsetDelta { .. } | BatchError::InvalidRecordsCount { .. } => {
            ResponseError::InvalidRecord.code()
        }
    }
}

pub fn for_read(error: &ReadError) -> i16 {
    match error {
        ReadError::UnknownPartition(_) => ResponseError::UnknownTopicOrPartition.code(),
        ReadError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        ReadError::Index { .. } => ResponseError::KafkaStorageError.code(),
    }
}

pub fn for_topic(error: &TopicError) -> i16 {
    match error {
        TopicError::InvalidName { .. } | TopicError::Internal(_) => {
            ResponseError::InvalidTopicException.code()
        }
        TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists.code(),
        TopicError::Unknown(_) => ResponseError::UnknownTopicOrPartition.code(),
        TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions.code(),
        TopicError::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
        TopicError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor.code(),
        TopicError::Metadata(_) | TopicError::Storage(_) => ResponseError::KafkaStorageError.code(),
    }
}
