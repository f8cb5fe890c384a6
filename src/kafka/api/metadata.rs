//! Metadata: this broker, and the topics asked for (auto-created when
//! allowed). A single broker leads every partition at epoch 0.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::authorized_operations::{AclResource, authorized_operations};
use super::{AUTHORIZED_OPERATIONS_UNKNOWN, decode, str_bytes};
use crate::broker::metadata::TopicMeta;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::storage::partition::validate_topic_name;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let metadata: MetadataRequest = decode(request, body)?;
    let broker = request.broker;
    let node = BrokerId(broker.config.kafka.node_id);
    let wanted: Option<Vec<Option<String>>> = match metadata.topics {
        None => None,
        Some(topics) if request.version == 0 && topics.is_empty() => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .map(|topic| match topic.name {
                    Some(name) => Some(name.0.to_string()),
                    None => broker
                        .metadata
                        .snapshot()
                        .topic_by_id(crate::broker::metadata::TopicId(*topic.topic_id.as_bytes()))
                        .map(|topic| topic.name.clone()),
                })
                .collect(),
        ),
    };
    let auto_create = request.version < 4 || metadata.allow_auto_topic_creation;
    let topics = match wanted {
        None => broker
            .metadata
            .snapshot()
            .topics
            .values()
            .map(|topic| topic_response(node, topic))
            .collect(),
        Some(names) => {
            let mut topics = Vec::with_capacity(names.len());
            for name in names {
                topics.push(named_topic(request, node, name, auto_create).await);
            }
            topics
        }
    };
    let topic_operations = authorized_operations(
        metadata.include_topic_authorized_operations,
        AclResource::Topic,
    );
    let topics = topics
        .into_iter()
        .map(|topic: MetadataResponseTopic| {
            if topic.error_code == 0 {
                topic.with_topic_authorized_operations(topic_operations)
            } else {
                topic
            }
        })
        .collect();
    let (host, port) = &broker.advertised;
    let response = MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(node)
                .with_host(str_bytes(host))
                .with_port(i32::from(*port)),
        ])
        .with_cluster_id(Some(str_bytes(&broker.metadata.snapshot().cluster_id)))
        .with_controller_id(node)
        .with_topics(topics)
        .with_cluster_authorized_operations(authorized_operations(
            metadata.include_cluster_authorized_operations,
            AclResource::Cluster,
        ));
    request.respond(&response)
}

async fn named_topic(
    request: &Request<'_>,
    node: BrokerId,
    name: Option<String>,
    auto_create: bool,
) -> MetadataResponseTopic {
    let Some(name) = name else {
        return MetadataResponseTopic::default()
            .with_error_code(ResponseError::UnknownTopicId.code());
    };
    let broker = request.broker;
    let existing = broker.metadata.snapshot().topic(&name).cloned();
    let topic = match existing {
        Some(topic) => Some(topic),
        None if validate_topic_name(&name).is_err() => {
            return error_topic(&name, ResponseError::InvalidTopicException.code());
        }
        None if auto_create => broker.ensure_topic(&request.shard.shards, &name).await,
        None => None,
    };
    match topic {
        Some(topic) => topic_response(node, &topic),
        None => error_topic(&name, ResponseError::UnknownTopicOrPartition.code()),
    }
}

fn error_topic(name: &str, error_code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error_code)
        .with_name(Some(TopicName(str_bytes(name))))
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_UNKNOWN)
}

pub fn topic_response(node: BrokerId, topic: &Arc<TopicMeta>) -> MetadataResponseTopic {
    let partitions = (0..topic.partitions)
        .map(|index| {
            MetadataResponsePartition::default()
                .with_partition_index(index as i32)
                .with_leader_id(node)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_topic_id(uuid::Uuid::from_bytes(topic.id.0))
        .with_is_internal(crate::broker::is_internal_topic(&topic.name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_UNKNOWN)
}
