//! DescribeProducers (version 0; KIP-664): the idempotent and
//! transactional producers with state on each partition, from its owner
//! shard: producer id, epoch, last sequence, last timestamp, coordinator
//! epoch and the first offset of its open transaction (-1 if none). What
//! an operator reads to find a transaction left hanging on a partition. A
//! partition that does not exist gets UNKNOWN_TOPIC_OR_PARTITION, one of a
//! topic the principal may not READ TOPIC_AUTHORIZATION_FAILED.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use super::{check_partition_count, decode, str_bytes};
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeProducersRequest = decode(request, body)?;
    check_partition_count(
        request,
        describe
            .topics
            .iter()
            .map(|topic| topic.partition_indexes.len())
            .sum(),
    )?;
    let cluster = request.broker.metadata.snapshot();
    let mut topics = Vec::with_capacity(describe.topics.len());
    let authorizer = request.authorizer();
    for topic in &describe.topics {
        let name = topic.name.0.to_string();
        let meta = cluster.topic(&name);
        let readable = authorizer.topic(Operation::Read, &name);
        let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
        for &index in &topic.partition_indexes {
            let response = PartitionResponse::default().with_partition_index(index);
            if !readable {
                partitions.push(
                    response
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                        .with_error_message(Some(str_bytes("not allowed to READ this topic"))),
                );
                continue;
            }
            let known = u32::try_from(index)
                .ok()
                .filter(|&index| meta.is_some_and(|meta| index < meta.partitions));
            let Some(index) = known else {
                partitions.push(
                    response
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(str_bytes("no such topic or partition"))),
                );
                continue;
            };
            if let Some(leader) = request.broker.leader_elsewhere(&name, index) {
                partitions.push(
                    response
                        .with_error_code(ResponseError::NotLeaderOrFollower.code())
                        .with_error_message(Some(str_bytes(&format!("led by node {leader}")))),
                );
                continue;
            }
            let owner = request.shard.shards.owner(&name, index);
            let topic_name = name.clone();
            let found = request
                .shard
                .run_on(owner, move |context| async move {
                    let store = context.store_for(&topic_name, index);
                    store
                        .partition_id(&topic_name, index)
                        .and_then(|id| store.producers(id))
                })
                .await;
            partitions.push(match found {
                Ok(Some(producers)) => response.with_active_producers(
                    producers
                        .into_iter()
                        .map(|producer| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(producer.producer_id))
                                .with_producer_epoch(i32::from(producer.epoch))
                                .with_last_sequence(producer.last_sequence)
                                .with_last_timestamp(producer.last_timestamp_ms)
                                .with_coordinator_epoch(producer.coordinator_epoch)
                                .with_current_txn_start_offset(producer.current_txn_start_offset)
                        })
                        .collect(),
                ),
                Ok(None) => response.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                Err(_) => response.with_error_code(ResponseError::NotLeaderOrFollower.code()),
            });
        }
        topics.push(
            TopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    request.respond(DescribeProducersResponse::default().with_topics(topics))
}
