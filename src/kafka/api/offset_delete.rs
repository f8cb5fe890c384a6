//! OffsetDelete: forget a group's committed offsets for some partitions,
//! unless the group's members subscribe to the topic. It needs DELETE on
//! the group (GROUP_AUTHORIZATION_FAILED) and READ on each topic
//! (TOPIC_AUTHORIZATION_FAILED for its partitions).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use super::{decode, topic_access};
use crate::broker::group::offsets::TopicPartition;
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let delete: OffsetDeleteRequest = decode(request, body)?;
    let group_id = delete.group_id.to_string();
    let keys: Vec<TopicPartition> = delete
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|partition| TopicPartition {
                topic: topic.name.to_string(),
                partition: partition.partition_index,
            })
        })
        .collect();
    let authorizer = request.authorizer();
    let (asked, refused) = topic_access::split(
        keys.clone(),
        |key| key.topic.as_str(),
        |topic| authorizer.topic(Operation::Read, topic),
    );
    let codes = if !authorizer.group(Operation::Delete, &group_id) {
        Err(ResponseError::GroupAuthorizationFailed.code())
    } else if group_id.is_empty() {
        Err(ResponseError::InvalidGroupId.code())
    } else if refused.all() {
        Ok(Vec::new())
    } else {
        let group = group_id.clone();
        on_coordinator(
            request.shard,
            request.broker,
            &group_id,
            move |coordinator| async move { coordinator.delete_offsets(&group, asked).await },
        )
        .await
        .and_then(|codes| codes)
    };
    let response = match codes {
        Err(code) => OffsetDeleteResponse::default().with_error_code(code),
        Ok(codes) => {
            let codes = refused.merge(codes);
            let partitions = keys.iter().zip(codes).map(|(key, code)| {
                let partition = OffsetDeleteResponsePartition::default()
                    .with_partition_index(key.partition)
                    .with_error_code(code);
                (key.topic.clone(), partition)
            });
            let topics = super::by_topic(partitions)
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(super::str_bytes(&name).into())
                        .with_partitions(partitions)
                })
                .collect();
            OffsetDeleteResponse::default().with_topics(topics)
        }
    };
    request.respond(response)
}
