//! ListOffsets: earliest (-2), latest (-1), the record with the largest
//! timestamp (-3, v7+, KIP-734), the earliest local offset (-4, v8+,
//! KIP-405), the latest tiered offset (-5, v9+, KIP-1005), or the first
//! record at or after a timestamp. Sluice has no tiered storage, so as in a
//! Kafka broker without it the local log is the whole log: earliest local
//! is the log start offset, and latest tiered is offset -1 with leader
//! epoch -1 (nothing is tiered). v10's `timeout_ms` bounds remote reads,
//! which there are none of. A special timestamp the request's version does
//! not define, or any other negative one, gets UNSUPPORTED_VERSION, as
//! Kafka's `ReplicaManager.fetchOffset` answers. A topic the principal may
//! not DESCRIBE gets TOPIC_AUTHORIZATION_FAILED for each partition.
//!
//! Timestamp lookups binary-search the consume queue's running maximum for
//! the batch, then walk that batch's records (decompressing through a fixed
//! buffer, under the same cap as Produce) to return the exact record offset
//! and its timestamp, as Kafka does. A batch stored before Produce checked
//! records may not walk (a declared count its records do not reach, an
//! unknown codec, data that does not decompress): then the answer is the
//! batch's own base offset and `maxTimestamp`, the earliest offset that can
//! hold the record, with a warning in the log.
//!
//! The isolation level (v2+, KIP-98) sets the last offset a lookup may
//! answer: the high watermark (read_uncommitted) or the last stable offset
//! (read_committed). Latest is that offset; a lookup by time whose record
//! lies at or past it finds nothing (-1), as in Kafka.

use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::decode;
use crate::error_chain::error_chain;
use crate::ids::{Offset, PartitionId};
use crate::kafka::dispatch::Request;
use crate::kafka::error_code;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::record_batch::record_walk::Walked;
use crate::record_batch::{self, BatchError, BatchHeader};
use crate::security::acl::Operation;
use crate::shard::ShardContext;
use crate::storage::{ReadError, ShardStore, read_batch_bytes};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

/// The first version that may ask for each special timestamp, as Kafka's
/// `ReplicaManager.timestampMinSupportedVersion`.
const SPECIAL_TIMESTAMPS_FROM_VERSION: [(i64, i16); 5] = [
    (LATEST, 1),
    (EARLIEST, 1),
    (MAX_TIMESTAMP, 7),
    (EARLIEST_LOCAL, 8),
    (LATEST_TIERED, 9),
];

/// Whether `version` may ask for `timestamp` (every non-negative one is a
/// time to look up).
fn timestamp_supported(timestamp: i64, version: i16) -> bool {
    timestamp >= 0
        || SPECIAL_TIMESTAMPS_FROM_VERSION
            .iter()
            .any(|&(special, from)| special == timestamp && version >= from)
}

/// Lookups by time that failed, and stored batches they could not read:
/// each logged at most 20 times per 10 s (clients can repeat a lookup at
/// will).
static LOOKUP_FAILURES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);
static UNREADABLE_BATCHES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);

/// `isolation_level` 1 in ListOffsets and Fetch.
const READ_COMMITTED: i8 = 1;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let list: ListOffsetsRequest = decode(request, body)?;
    let committed = list.isolation_level == READ_COMMITTED;
    let authorizer = request.authorizer();
    let mut topics = Vec::with_capacity(list.topics.len());
    for topic in &list.topics {
        let name = topic.name.0.to_string();
        if !authorizer.topic(Operation::Describe, &name) {
            let refused = topic.partitions.iter().map(|partition| {
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(partition.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1)
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
            });
            topics.push(
                ListOffsetsTopicResponse::default()
                    .with_name(topic.name.clone())
                    .with_partitions(refused.collect()),
            );
            continue;
        }
        let lookups = topic.partitions.iter().map(|partition| {
            lookup(
                request,
                name.clone(),
                partition.partition_index,
                partition.timestamp,
                committed,
            )
        });
        let partitions = join_all(lookups).await;
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    request.respond(ListOffsetsResponse::default().with_topics(topics))
}

async fn lookup(
    request: &Request<'_>,
    topic: String,
    index: i32,
    timestamp: i64,
    committed: bool,
) -> ListOffsetsPartitionResponse {
    let mut response = ListOffsetsPartitionResponse::default()
        .with_partition_index(index)
        .with_timestamp(-1)
        .with_offset(-1);
    if request.version >= 4 {
        response = response.with_leader_epoch(0);
    }
    // Kafka checks the timestamp before it looks for the partition.
    if !timestamp_supported(timestamp, request.version) {
        return response.with_error_code(ResponseError::UnsupportedVersion.code());
    }
    let exists = request
        .broker
        .metadata
        .snapshot()
        .topic(&topic)
        .is_some_and(|meta| u32::try_from(index).is_ok_and(|index| index < meta.partitions));
    if !exists {
        return response.with_error_code(ResponseError::UnknownTopicOrPartition.code());
    }
    if request
        .broker
        .leader_elsewhere(&topic, index as u32)
        .is_some()
    {
        return response.with_error_code(ResponseError::NotLeaderOrFollower.code());
    }
    if timestamp == LATEST_TIERED {
        return response.with_leader_epoch(-1);
    }
    let index = index as u32;
    let owner = request.shard.shards.owner(&topic, index);
    let limits = request.broker.config.storage.stored_batch_limits();
    let found = request
        .shard
        .run_on(owner, move |context| async move {
            lookup_on_owner(
                &context,
                &topic,
                index,
                timestamp,
                committed,
                limits.decompressed_max_bytes,
            )
        })
        .await;
    match found {
        Ok(Ok((offset, timestamp))) => response.with_offset(offset).with_timestamp(timestamp),
        Ok(Err(code)) => response.with_error_code(code),
        Err(_) => response.with_error_code(ResponseError::NotLeaderOrFollower.code()),
    }
}

/// (offset, timestamp) for the lookup, on the partition's owner shard.
fn lookup_on_owner(
    context: &ShardContext,
    topic: &str,
    index: u32,
    timestamp: i64,
    committed: bool,
    decompressed_max_bytes: u64,
) -> Result<(i64, i64), i16> {
    let store = &context.store_for(topic, index);
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    let id = store.partition_id(topic, index).ok_or(unknown)?;
    let offsets = store.offsets(id).ok_or(unknown)?;
    let fetchable = if committed {
        offsets.last_stable_offset
    } else {
        offsets.high_watermark
    };
    let target = match timestamp {
        EARLIEST | EARLIEST_LOCAL => return Ok((offsets.log_start_offset.0, -1)),
        LATEST => return Ok((fetchable.0, -1)),
        MAX_TIMESTAMP => match store
            .max_timestamp(id)
            .map_err(|error| error_code::for_read(&error))?
        {
            Some(max) => max,
            None => return Ok((-1, -1)),
        },
        target => target,
    };
    let Some((base_offset, _)) = store
        .offset_for_timestamp(id, target)
        .map_err(|error| error_code::for_read(&error))?
    else {
        return Ok((-1, -1));
    };
    let record = first_record_at_or_after(store, id, base_offset, target, decompressed_max_bytes)
        .map_err(|error| {
        if let Some(failed) = LOOKUP_FAILURES.record(monotonic_ms()) {
            let reason = error_chain(&error);
            tracing::warn!(partition = id.0, %reason, failed, "ListOffsets by time failed (`failed` counts failures since the last such line)");
        }
        ResponseError::KafkaStorageError.code()
    })?;
    let offset = record.0.max(offsets.log_start_offset.0);
    if offset >= fetchable.0 {
        return Ok((-1, -1));
    }
    Ok((offset, record.1))
}

/// Why the batch a timestamp lookup chose could not be read (the answer is
/// KAFKA_STORAGE_ERROR, and the log says why).
#[derive(Debug, thiserror::Error)]
enum TimeLookupError {
    #[error("cannot read the batch at offset {offset}: {source}")]
    Read {
        offset: Offset,
        #[source]
        source: ReadError,
    },
    #[error("no batch at offset {offset}, which the consume queue's timestamp index named")]
    Missing { offset: Offset },
    #[error("cannot read the bytes of the batch at offset {offset}: {source}")]
    Bytes {
        offset: Offset,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the batch at offset {offset} has maxTimestamp {max_timestamp_ms}, before {target}, \
         though the timestamp index chose it"
    )]
    EarlierThanIndexed {
        offset: Offset,
        max_timestamp_ms: i64,
        target: i64,
    },
    #[error("the stored batch at offset {offset} has no valid header: {source}")]
    Header {
        offset: Offset,
        #[source]
        source: BatchError,
    },
}

/// The first record of the batch at `base_offset` with a timestamp at or
/// after `target` (the batch is known to hold one, by its `maxTimestamp`).
fn first_record_at_or_after(
    store: &ShardStore,
    id: PartitionId,
    base_offset: Offset,
    target: i64,
    decompressed_max_bytes: u64,
) -> Result<(i64, i64), TimeLookupError> {
    let offset = base_offset;
    let batch = store
        .read(id, base_offset, 1)
        .map_err(|source| TimeLookupError::Read { offset, source })?
        .batches
        .into_iter()
        .next()
        .ok_or(TimeLookupError::Missing { offset })?;
    let bytes =
        read_batch_bytes(&batch).map_err(|source| TimeLookupError::Bytes { offset, source })?;
    let header =
        BatchHeader::parse(&bytes).map_err(|source| TimeLookupError::Header { offset, source })?;
    let whole_batch = (header.base_offset, header.max_timestamp_ms);
    if header.uses_log_append_time() {
        if header.max_timestamp_ms < target {
            return Err(TimeLookupError::EarlierThanIndexed {
                offset,
                max_timestamp_ms: header.max_timestamp_ms,
                target,
            });
        }
        return Ok(whole_batch);
    }
    let mut found = None;
    let walked = record_batch::walk_records(&bytes, decompressed_max_bytes, |record| {
        if record.timestamp_ms >= target {
            found = Some((
                header.base_offset + i64::from(record.index),
                record.timestamp_ms,
            ));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    match walked {
        Ok(Walked::Stopped) => Ok(found.unwrap_or(whole_batch)),
        // Only a batch whose maxTimestamp overstates its records gets here
        // (Produce corrects those): the batch start is still a safe answer.
        Ok(Walked::Complete(_)) => Ok(whole_batch),
        Err(error) => {
            if let Some(unreadable) = UNREADABLE_BATCHES.record(monotonic_ms()) {
                tracing::warn!(
                    partition = id.0,
                    offset = header.base_offset,
                    %error,
                    unreadable,
                    "ListOffsets by time: cannot read the records of a stored batch; answering \
                     with its base offset (`unreadable` counts such batches met since the last \
                     such line)"
                );
            }
            Ok(whole_batch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_timestamps_need_the_version_that_defines_them() {
        assert!(timestamp_supported(0, 1));
        assert!(timestamp_supported(LATEST, 1) && timestamp_supported(EARLIEST, 1));
        assert!(!timestamp_supported(MAX_TIMESTAMP, 6) && timestamp_supported(MAX_TIMESTAMP, 7));
        assert!(!timestamp_supported(EARLIEST_LOCAL, 7) && timestamp_supported(EARLIEST_LOCAL, 8));
        assert!(!timestamp_supported(LATEST_TIERED, 8) && timestamp_supported(LATEST_TIERED, 9));
        assert!(!timestamp_supported(-6, 10));
    }
}
