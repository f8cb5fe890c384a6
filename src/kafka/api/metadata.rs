//! Metadata: this broker, and the topics asked for (auto-created when
//! allowed). A single broker leads every partition at epoch 0. Topics carry
//! their ids from v10; from v12 a request may name topics by id (an unknown
//! id gets UNKNOWN_TOPIC_ID, and a topic named by id is never created); v13
//! adds a top-level error code (KIP-1102), zero unless the request is
//! invalid.
//!
//! Authorization (Kafka's `handleTopicMetadataRequest`): a request for
//! every topic lists only those the principal may DESCRIBE; a topic named
//! that it may not describe gets TOPIC_AUTHORIZATION_FAILED (with no name
//! when named by id), and so does one it may describe but not create when
//! it would be auto-created (CREATE on the cluster or on the topic).

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::{decode, str_bytes};
use crate::broker::Broker;
use crate::broker::metadata::{TopicId, TopicMeta};
use crate::kafka::authorize::{AUTHORIZED_OPERATIONS_UNKNOWN, Authorizer};
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{CLUSTER_NAME, Operation, ResourceType};
use crate::storage::partition::validate_topic_name;

/// The first version whose topics may be named by id (KIP-516); v10 and 11
/// carry the field but Kafka refuses ids there.
const TOPIC_IDS_FROM_VERSION: i16 = 12;

/// How the request names one topic.
enum Wanted {
    Name(String),
    Id(TopicId),
}

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let metadata: MetadataRequest = decode(request, body)?;
    let broker = request.broker;
    let requested = match &metadata.topics {
        None => None,
        Some(topics) if request.version == 0 && topics.is_empty() => None,
        Some(topics) => match wanted_topics(request.version, topics) {
            Ok(wanted) => Some(wanted),
            Err(()) => return request.respond(invalid_request(request.version, topics)),
        },
    };
    let auto_create = request.version < 4 || metadata.allow_auto_topic_creation;
    let authorizer = request.authorizer();
    let topics = match requested {
        None => broker
            .metadata
            .snapshot()
            .topics
            .values()
            .filter(|topic| {
                authorizer.allows_quietly(Operation::Describe, ResourceType::Topic, &topic.name)
            })
            .map(|topic| topic_response(broker, topic))
            .collect(),
        Some(wanted) => {
            let mut topics = Vec::with_capacity(wanted.len());
            for topic in wanted {
                topics.push(match topic {
                    Wanted::Name(name) => {
                        named_topic(request, &authorizer, name, auto_create).await
                    }
                    Wanted::Id(id) => topic_by_id(request, &authorizer, id),
                });
            }
            topics
        }
    };
    let include_topic_operations = metadata.include_topic_authorized_operations;
    let topics = topics
        .into_iter()
        .map(|topic: MetadataResponseTopic| {
            if topic.error_code != 0 {
                return topic;
            }
            let name = topic.name.as_ref().map_or("", |name| name.0.as_str());
            let operations =
                authorizer.operations(include_topic_operations, ResourceType::Topic, name);
            topic.with_topic_authorized_operations(operations)
        })
        .collect();
    let brokers = broker
        .brokers(request.session.listener())
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(str_bytes(&host))
                .with_port(i32::from(port))
        })
        .collect();
    let response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(&broker.metadata.snapshot().cluster_id)))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_topics(topics)
        .with_cluster_authorized_operations(authorizer.operations(
            metadata.include_cluster_authorized_operations,
            ResourceType::Cluster,
            CLUSTER_NAME,
        ));
    request.respond(response)
}

/// The topics asked for, as Kafka's `handleTopicMetadataRequest` reads
/// them: from v12, when any topic carries a (non-zero) id, the request is
/// by id and names are ignored; otherwise by name. A topic with no name
/// (v10+) outside a by-id request, or an id before v12, makes the whole
/// request invalid.
fn wanted_topics(version: i16, topics: &[MetadataRequestTopic]) -> Result<Vec<Wanted>, ()> {
    let by_id =
        version >= TOPIC_IDS_FROM_VERSION && topics.iter().any(|topic| !topic.topic_id.is_nil());
    if by_id {
        return Ok(topics
            .iter()
            .filter(|topic| !topic.topic_id.is_nil())
            .map(|topic| Wanted::Id(TopicId::from_uuid(topic.topic_id)))
            .collect());
    }
    topics
        .iter()
        .map(|topic| match &topic.name {
            Some(name) if topic.topic_id.is_nil() => Ok(Wanted::Name(name.0.to_string())),
            _ => Err(()),
        })
        .collect()
}

/// Kafka's answer to an invalid Metadata request: INVALID_REQUEST for each
/// topic asked for (and at the top level from v13).
fn invalid_request(version: i16, topics: &[MetadataRequestTopic]) -> MetadataResponse {
    let code = ResponseError::InvalidRequest.code();
    let topics = topics
        .iter()
        .map(|topic| {
            let name = topic.name.as_ref().map_or("", |name| name.0.as_str());
            MetadataResponseTopic::default()
                .with_error_code(code)
                .with_name(Some(TopicName(str_bytes(name))))
                .with_topic_id(topic.topic_id)
                .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_UNKNOWN)
        })
        .collect();
    let response = MetadataResponse::default()
        .with_topics(topics)
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_UNKNOWN);
    if version >= TOP_LEVEL_ERROR_FROM_VERSION {
        response.with_error_code(code)
    } else {
        response
    }
}

/// The first version with a top-level error code (KIP-1102).
const TOP_LEVEL_ERROR_FROM_VERSION: i16 = 13;

/// A topic asked for by id: never auto-created; an id no live topic has
/// gets UNKNOWN_TOPIC_ID with the id echoed and no name, and so does one
/// the principal may not describe, with TOPIC_AUTHORIZATION_FAILED.
fn topic_by_id(
    request: &Request<'_>,
    authorizer: &Authorizer,
    id: TopicId,
) -> MetadataResponseTopic {
    match request.broker.metadata.snapshot().topic_by_id(id) {
        Some(topic) if !authorizer.topic(Operation::Describe, &topic.name) => {
            MetadataResponseTopic::default()
                .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                .with_name(None)
                .with_topic_id(id.to_uuid())
                .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_UNKNOWN)
        }
        Some(topic) => topic_response(request.broker, topic),
        None => MetadataResponseTopic::default()
            .with_error_code(ResponseError::UnknownTopicId.code())
            .with_name(None)
            .with_topic_id(id.to_uuid())
            .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_UNKNOWN),
    }
}

async fn named_topic(
    request: &Request<'_>,
    authorizer: &Authorizer,
    name: String,
    auto_create: bool,
) -> MetadataResponseTopic {
    let broker = request.broker;
    if !authorizer.topic(Operation::Describe, &name) {
        return error_topic(&name, ResponseError::TopicAuthorizationFailed.code());
    }
    let existing = broker.metadata.snapshot().topic(&name).cloned();
    let may_create = || authorizer.may_create_topic(&name);
    let topic = match existing {
        Some(topic) => Some(topic),
        None if validate_topic_name(&name).is_err() => {
            return error_topic(&name, ResponseError::InvalidTopicException.code());
        }
        None if auto_create && !may_create() => {
            authorizer.deny(Operation::Create, ResourceType::Topic, &name);
            return error_topic(&name, ResponseError::TopicAuthorizationFailed.code());
        }
        None if !may_create() => None,
        // A group's retry and dead-letter topics are created on first use
        // even by a consumer that asks for no auto-creation (librdkafka's
        // default), so that subscribing to them is enough (issue 18).
        None if auto_create || crate::broker::retry::is_retry_or_dlq(&name) => {
            broker.ensure_topic(request.shard, &name).await
        }
        None => None,
    };
    match topic {
        Some(topic) => topic_response(request.broker, &topic),
        None => error_topic(&name, ResponseError::UnknownTopicOrPartition.code()),
    }
}

fn error_topic(name: &str, error_code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error_code)
        .with_name(Some(TopicName(str_bytes(name))))
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_UNKNOWN)
}

pub fn topic_response(broker: &Broker, topic: &Arc<TopicMeta>) -> MetadataResponseTopic {
    let partitions = (0..topic.partitions)
        .map(|index| {
            // Cluster I: a partition's data lives on its leader only; a
            // fenced leader leaves it without one (LEADER_NOT_AVAILABLE).
            let leader = BrokerId(broker.partition_leader(&topic.name, index));
            let (replicas, in_sync, offline) = broker.partition_replicas(&topic.name, index);
            let ids = |nodes: Vec<i32>| nodes.into_iter().map(BrokerId).collect();
            let partition = MetadataResponsePartition::default()
                .with_partition_index(index as i32)
                .with_leader_id(leader)
                .with_leader_epoch(broker.partition_leader_epoch(&topic.name, index))
                .with_replica_nodes(ids(replicas))
                .with_isr_nodes(ids(in_sync))
                .with_offline_replicas(ids(offline));
            if leader.0 < 0 {
                return partition.with_error_code(ResponseError::LeaderNotAvailable.code());
            }
            partition
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_topic_id(topic.id.to_uuid())
        .with_is_internal(crate::broker::is_internal_topic(&topic.name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_UNKNOWN)
}
