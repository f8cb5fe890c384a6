//! OffsetDelete: forget a group's committed offsets for some partitions,
//! unless the group's members subscribe to the topic.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use super::decode;
use crate::broker::group::offsets::TopicPartition;
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::response::Response;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, String> {
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
    let codes = if group_id.is_empty() {
        Err(ResponseError::InvalidGroupId.code())
    } else {
        let group = group_id.clone();
        let asked = keys.clone();
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
            let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
            for (key, code) in keys.iter().zip(codes) {
                let partition = OffsetDeleteResponsePartition::default()
                    .with_partition_index(key.partition)
                    .with_error_code(code);
                match topics.last_mut() {
                    Some(topic) if topic.name.as_str() == key.topic => {
                        topic.partitions.push(partition)
                    }
                    _ => topics.push(
                        OffsetDeleteResponseTopic::default()
                            .with_name(super::str_bytes(&key.topic).into())
                            .with_partitions(vec![partition]),
                    ),
                }
            }
            OffsetDeleteResponse::default().with_topics(topics)
        }
    };
    request.respond(&response)
}
