//! Kafka error codes for what storage and the broker report.

use kafka_protocol::ResponseError;

use crate::broker::TopicError;
use crate::record_batch::BatchError;
use crate::record_batch::record_walk::RecordsError;
use crate::storage::producer_state::ProducerError;
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
        | AppendError::Reserve { .. } => ResponseError::KafkaStorageError.code(),
        AppendError::ShuttingDown
        | AppendError::NotLeader
        | AppendError::SequenceGapAfterFailover { .. } => ResponseError::NotLeaderOrFollower.code(),
        // Kafka answers INVALID_PRODUCER_EPOCH, not PRODUCER_FENCED, from
        // Produce since 2.7, so the client aborts and retries (KIP-588).
        AppendError::Producer(ProducerError::InvalidEpoch { .. }) => {
            ResponseError::InvalidProducerEpoch.code()
        }
        AppendError::Producer(ProducerError::OutOfOrderSequence { .. }) => {
            ResponseError::OutOfOrderSequenceNumber.code()
        }
        AppendError::Producer(
            ProducerError::NonTransactionalInTransaction { .. }
            | ProducerError::EpochChangedInTransaction { .. }
            | ProducerError::TransactionEnded { .. },
        ) => ResponseError::InvalidTxnState.code(),
        AppendError::Producer(ProducerError::CoordinatorFenced { .. }) => {
            ResponseError::TransactionCoordinatorFenced.code()
        }
    }
}

/// The code Produce answers for a refused batch. The frame (CRC, lengths)
/// is CORRUPT_MESSAGE, as Kafka's `CorruptRecordException`: retriable, since
/// a network fault can cause it. What the producer itself got wrong inside a
/// whole batch is INVALID_RECORD, as Kafka's `InvalidRecordException` (not
/// retriable: resending cannot help), including compressed data that does
/// not decompress (Kafka wraps that in a generic `KafkaException`, which
/// clients see as UNKNOWN_SERVER_ERROR). Size limits are MESSAGE_TOO_LARGE.
pub fn for_batch(error: &BatchError) -> i16 {
    match error {
        BatchError::TooLarge { .. }
        | BatchError::Records(RecordsError::DecompressedTooLarge { .. }) => {
            ResponseError::MessageTooLarge.code()
        }
        BatchError::CrcMismatch { .. }
        | BatchError::TooShort { .. }
        | BatchError::LengthMismatch { .. } => ResponseError::CorruptMessage.code(),
        // Kafka's `CompressionType.forId` refuses ids it does not define.
        BatchError::UnsupportedCompression { .. } => {
            ResponseError::UnsupportedCompressionType.code()
        }
        // `LogValidator.validateTimestamp`: "Producer should not set
        // timestamp type to LogAppendTime".
        BatchError::LogAppendTimeFromClient => ResponseError::InvalidTimestamp.code(),
        // Produce v3+ carries magic 2 only; Kafka answers INVALID_RECORD.
        BatchError::UnsupportedMagic { .. }
        | BatchError::InvalidLastOffsetDelta { .. }
        | BatchError::InvalidRecordsCount { .. }
        | BatchError::NoRecords { .. }
        | BatchError::CountMismatch { .. }
        | BatchError::ControlBatch
        | BatchError::NonZeroBaseOffset { .. }
        | BatchError::MissingSequence { .. }
        | BatchError::Records(_) => ResponseError::InvalidRecord.code(),
        BatchError::Recompress { .. } => ResponseError::UnknownServerError.code(),
    }
}

pub fn for_read(error: &ReadError) -> i16 {
    match error {
        ReadError::UnknownPartition(_) => ResponseError::UnknownTopicOrPartition.code(),
        ReadError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        ReadError::Index { .. } | ReadError::BatchMissing { .. } => {
            ResponseError::KafkaStorageError.code()
        }
    }
}

pub fn for_topic(error: &TopicError) -> i16 {
    match error {
        TopicError::InvalidName { .. } | TopicError::Internal(_) => {
            ResponseError::InvalidTopicException.code()
        }
        TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists.code(),
        TopicError::Unknown(_) => ResponseError::UnknownTopicOrPartition.code(),
        TopicError::UnknownId(_) => ResponseError::UnknownTopicId.code(),
        TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions.code(),
        TopicError::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
        TopicError::InvalidReplicationFactor { .. } => {
            ResponseError::InvalidReplicationFactor.code()
        }
        TopicError::InvalidRequest(_) => ResponseError::InvalidRequest.code(),
        TopicError::Metadata(_) | TopicError::Storage { .. } | TopicError::ShardGone(_) => {
            ResponseError::KafkaStorageError.code()
        }
    }
}
