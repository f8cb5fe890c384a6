//! DeleteRecords (versions 0–2): move partitions' log start offsets forward
//! (the `kafka-delete-records` tool, `AdminClient.deleteRecords`). Records
//! below the new log start are no longer readable (a Fetch there gets
//! OFFSET_OUT_OF_RANGE and the consumer's `auto.offset.reset` applies) and
//! no longer keep segments alive; retention and the consume queue go on
//! from there. Offset -1 means the high watermark. Each partition gets its
//! new low watermark, or OFFSET_OUT_OF_RANGE for an offset past the high
//! watermark, UNKNOWN_TOPIC_OR_PARTITION for one that does not exist, and
//! INVALID_TOPIC_EXCEPTION for an internal topic (only the broker moves
//! their log starts), TOPIC_AUTHORIZATION_FAILED for a topic the principal
//! may not DELETE from. A log start never moves back. The move is recorded by
//! the shard's next checkpoint (`storage.checkpoint_interval_ms`, 1 s), as
//! Kafka's log-start-offset checkpoint: a crash before it makes the records
//! readable again, never loses any above it.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::{check_partition_count, decode};
use crate::ids::Offset;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

/// "Up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let delete: DeleteRecordsRequest = decode(request, body)?;
    check_partition_count(
        request,
        delete
            .topics
            .iter()
            .map(|topic| topic.partitions.len())
            .sum(),
    )?;
    let cluster = request.broker.metadata.snapshot();
    // The request's timeout bounds the wait for the copies (a cluster).
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_millis(u64::try_from(delete.timeout_ms).unwrap_or(0));
    let mut topics = Vec::with_capacity(delete.topics.len());
    let authorizer = request.authorizer();
    for topic in &delete.topics {
        let name = topic.name.0.to_string();
        let refused = !authorizer.topic(Operation::Delete, &name);
        let meta = cluster.topic(&name);
        let internal = crate::broker::is_internal_topic(&name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let result = DeleteRecordsPartitionResult::default()
                .with_partition_index(partition.partition_index)
                .with_low_watermark(-1);
            if refused {
                partitions
                    .push(result.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
                continue;
            }
            let index = u32::try_from(partition.partition_index)
                .ok()
                .filter(|&index| meta.is_some_and(|meta| index < meta.partitions));
            let (Some(index), false) = (index, internal) else {
                let code = if internal {
                    ResponseError::InvalidTopicException
                } else {
                    ResponseError::UnknownTopicOrPartition
                };
                partitions.push(result.with_error_code(code.code()));
                continue;
            };
            // Kafka refuses DeleteRecords on a topic without the delete
            // cleanup policy (`UnifiedLog.maybeIncrementLogStartOffset`).
            if meta.is_some_and(|meta| !meta.config.delete_policy) {
                partitions.push(result.with_error_code(ResponseError::PolicyViolation.code()));
                continue;
            }
            if request.broker.leader_elsewhere(&name, index).is_some() {
                partitions.push(result.with_error_code(ResponseError::NotLeaderOrFollower.code()));
                continue;
            }
            let offset = partition.offset;
            let topic_name = name.clone();
            let broker = std::sync::Arc::clone(request.broker);
            let moved = request
                .shard
                .run_on(request.shard.shards.owner(&name, index), move |context| async move {
                    let store = &context.store_for(&topic_name, index);
                    let Some(id) = store.partition_id(&topic_name, index) else {
                        return Err(ResponseError::UnknownTopicOrPartition.code());
                    };
                    let Some(offsets) = store.offsets(id) else {
                        return Err(ResponseError::UnknownTopicOrPartition.code());
                    };
                    let target = if offset == HIGH_WATERMARK {
                        offsets.high_watermark
                    } else if (0..=offsets.high_watermark.0).contains(&offset) {
                        Offset(offset)
                    } else {
                        return Err(ResponseError::OffsetOutOfRange.code());
                    };
                    store.advance_log_start(id, target).map_err(|error| {
                        tracing::warn!(%error, partition = %id, "DeleteRecords could not move the log start");
                        ResponseError::KafkaStorageError.code()
                    })?;
                    let low_watermark =
                        store.offsets(id).map_or(target.0, |after| after.log_start_offset.0);
                    // In a cluster, answered once the in-sync copies moved
                    // theirs too (Kafka's delayed DeleteRecords).
                    crate::broker::replication::wait_log_start_replicated(
                        &context,
                        &broker,
                        &topic_name,
                        index,
                        deadline,
                    )
                    .await?;
                    Ok(low_watermark)
                })
                .await;
            partitions.push(match moved {
                Ok(Ok(low_watermark)) => result.with_low_watermark(low_watermark),
                Ok(Err(code)) => result.with_error_code(code),
                Err(_) => result.with_error_code(ResponseError::NotLeaderOrFollower.code()),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    request.respond(DeleteRecordsResponse::default().with_topics(topics))
}
