//! CreateTopics: a single broker, so replication factor 1 (or -1, the
//! default) and replica assignments naming only this node.
//!
//! Authorization as Kafka's: a topic needs CREATE on the cluster or on the
//! topic (TOPIC_AUTHORIZATION_FAILED), and its configs are returned only to
//! a principal allowed DESCRIBE_CONFIGS on it (otherwise the topic's
//! `topic_config_error_code` is TOPIC_AUTHORIZATION_FAILED).

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::{decode, str_bytes};
use crate::broker::broker_config::BrokerView;
use crate::broker::metadata::TopicMeta;
use crate::broker::{Broker, TopicError};
use crate::kafka::dispatch::Request;
use crate::kafka::error_code;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{Operation, ResourceType};

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let create: CreateTopicsRequest = decode(request, body)?;
    let broker = request.broker;
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = create
        .topics
        .iter()
        .map(|topic| topic.name.0.to_string())
        .filter(|name| !seen.insert(name.clone()))
        .collect();
    let mut results = Vec::with_capacity(create.topics.len());
    let authorizer = request.authorizer();
    for topic in create.topics {
        let name = topic.name.0.to_string();
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        if duplicates.contains(&name) {
            results.push(failed(
                result,
                ResponseError::InvalidRequest.code(),
                "topic listed more than once in the request",
            ));
            continue;
        }
        if !authorizer.may_create_topic(&name) {
            authorizer.deny(Operation::Create, ResourceType::Topic, &name);
            results.push(failed(
                result,
                ResponseError::TopicAuthorizationFailed.code(),
                "not allowed to CREATE this topic",
            ));
            continue;
        }
        // Every partition gets the copies of its shard group: a topic asking
        // for fewer gets more than it asked, never fewer.
        let copies = broker
            .metadata
            .snapshot()
            .placement
            .as_ref()
            .map_or(1, |placement| placement.replication_factor as i16);
        let asked = topic.replication_factor;
        if asked != -1 && !(1..=copies).contains(&asked) {
            let error = TopicError::InvalidReplicationFactor { asked, copies };
            results.push(failed(
                result,
                error_code::for_topic(&error),
                &error.to_string(),
            ));
            continue;
        }
        let node = broker.config.kafka.node_id;
        if copies > 1 && !topic.assignments.is_empty() {
            results.push(failed(
                result,
                ResponseError::InvalidReplicaAssignment.code(),
                "this cluster places each partition on its shard group's members: omit the \
                 replica assignment",
            ));
            continue;
        }
        if topic
            .assignments
            .iter()
            .any(|assignment| assignment.broker_ids.iter().any(|id| id.0 != node))
        {
            results.push(failed(
                result,
                ResponseError::InvalidReplicaAssignment.code(),
                &format!("this cluster has only broker {node}"),
            ));
            continue;
        }
        let partitions = match (topic.num_partitions, topic.assignments.len()) {
            (-1, 0) => broker.config.kafka.default_partitions,
            (-1, assigned) => assigned as u32,
            (count, _) => u32::try_from(count).unwrap_or(0),
        };
        let overrides = match config_overrides(&topic.configs) {
            Ok(overrides) => overrides,
            Err((code, message)) => {
                results.push(failed(result, code, &message));
                continue;
            }
        };
        let created = broker
            .create_topic(
                &request.shard.shards,
                &name,
                partitions,
                overrides,
                create.validate_only,
            )
            .await;
        results.push(match created {
            Ok(meta) if !authorizer.topic(Operation::DescribeConfigs, &name) => {
                succeeded(broker, result, &meta)
                    .with_configs(None)
                    .with_topic_config_error_code(ResponseError::TopicAuthorizationFailed.code())
            }
            Ok(meta) => succeeded(broker, result, &meta),
            Err(error) => failed(result, error_code::for_topic(&error), &error.to_string()),
        });
    }
    request.respond(CreateTopicsResponse::default().with_topics(results))
}

/// The topic configs a CreateTopics request sets, by name. As Kafka: a
/// name given twice is INVALID_REQUEST, a null value INVALID_CONFIG.
fn config_overrides(
    configs: &[kafka_protocol::messages::create_topics_request::CreatableTopicConfig],
) -> Result<BTreeMap<String, String>, (i16, String)> {
    let mut overrides = BTreeMap::new();
    for config in configs {
        let name = config.name.to_string();
        let Some(value) = config.value.as_ref() else {
            return Err((
                ResponseError::InvalidConfig.code(),
                format!("config {name} has a null value"),
            ));
        };
        if overrides.insert(name.clone(), value.to_string()).is_some() {
            return Err((
                ResponseError::InvalidRequest.code(),
                format!("config {name} is given more than once"),
            ));
        }
    }
    Ok(overrides)
}

/// The created topic, with every config as DescribeConfigs would show it
/// (CreateTopics v5+, KIP-525).
fn succeeded(
    broker: &Broker,
    result: CreatableTopicResult,
    meta: &TopicMeta,
) -> CreatableTopicResult {
    let cluster = broker.metadata.snapshot();
    let view = BrokerView {
        statics: broker.metadata.statics(),
        overrides: &cluster.broker,
    };
    let configs = view
        .describe_topic(&meta.config, &meta.overrides, None)
        .into_iter()
        .map(|entry| {
            CreatableTopicConfigs::default()
                .with_name(str_bytes(entry.def.name))
                .with_value(Some(str_bytes(&entry.value)))
                .with_config_source(entry.source.code())
        })
        .collect();
    result
        .with_topic_id(uuid::Uuid::from_bytes(meta.id.0))
        .with_num_partitions(meta.partitions as i32)
        .with_replication_factor(1)
        .with_configs(Some(configs))
}

fn failed(result: CreatableTopicResult, error_code: i16, message: &str) -> CreatableTopicResult {
    result
        .with_error_code(error_code)
        .with_error_message(Some(str_bytes(message)))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
}
