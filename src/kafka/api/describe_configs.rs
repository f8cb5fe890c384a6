//! DescribeConfigs: topic configs (effective values, overrides marked) and
//! the broker's own settings (read-only; they come from sluice.toml).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::create_topics::{SOURCE_DEFAULT, SOURCE_TOPIC_OVERRIDE};
use super::{decode, str_bytes};
use crate::broker::Broker;
use crate::broker::topic_config::{
    CLEANUP_POLICY, FLUSH_MESSAGES, FLUSH_MS, MAX_MESSAGE_BYTES, MESSAGE_TIMESTAMP_TYPE,
    RETENTION_BYTES, RETENTION_MS, SEGMENT_BYTES,
};
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
const SOURCE_STATIC_BROKER: i8 = 4;
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

pub fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeConfigsRequest = decode(request, body)?;
    let results = describe
        .resources
        .iter()
        .map(|resource| {
            let keys: Option<Vec<String>> = resource
                .configuration_keys
                .as_ref()
                .map(|keys| keys.iter().map(ToString::to_string).collect());
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC => topic_configs(
                    request.broker,
                    resource.resource_name.as_str(),
                    keys.as_deref(),
                    describe.include_documentation,
                    result,
                ),
                RESOURCE_BROKER => {
                    result.with_configs(broker_configs(request.broker, keys.as_deref()))
                }
                other => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(&format!(
                        "resource type {other} is not described (topics: 2, brokers: 4)"
                    )))),
            }
        })
        .collect();
    request.respond(&DescribeConfigsResponse::default().with_results(results))
}

fn topic_configs(
    broker: &Broker,
    name: &str,
    keys: Option<&[String]>,
    documentation: bool,
    result: DescribeConfigsResult,
) -> DescribeConfigsResult {
    let cluster = broker.metadata.snapshot();
    let Some(topic) = cluster.topic(name) else {
        return result
            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
            .with_error_message(Some(str_bytes(&format!("topic {name} does not exist"))));
    };
    let configs = topic
        .config
        .describe(&topic.overrides, keys)
        .into_iter()
        .map(|entry| {
            let source = if entry.is_default {
                SOURCE_DEFAULT
            } else {
                SOURCE_TOPIC_OVERRIDE
            };
            DescribeConfigsResourceResult::default()
                .with_name(str_bytes(entry.name))
                .with_value(Some(str_bytes(&entry.value)))
                .with_config_source(source)
                .with_config_type(config_type(entry.name))
                .with_documentation(documentation.then(|| str_bytes(entry.documentation)))
        })
        .collect();
    result.with_configs(configs)
}

fn config_type(key: &str) -> i8 {
    match key {
        RETENTION_MS | RETENTION_BYTES | SEGMENT_BYTES | FLUSH_MS | FLUSH_MESSAGES => TYPE_LONG,
        MAX_MESSAGE_BYTES => TYPE_INT,
        CLEANUP_POLICY => TYPE_LIST,
        MESSAGE_TIMESTAMP_TYPE => TYPE_STRING,
        _ => TYPE_STRING,
    }
}

/// The broker settings clients commonly read, under Kafka's names.
fn broker_configs(broker: &Broker, keys: Option<&[String]>) -> Vec<DescribeConfigsResourceResult> {
    let config = &broker.config;
    let rows: [(&str, String, i8); 7] = [
        (
            "auto.create.topics.enable",
            config.kafka.auto_create_topics.to_string(),
            TYPE_BOOLEAN,
        ),
        (
            "log.flush.interval.ms",
            config.retention.flush_ms.to_string(),
            TYPE_LONG,
        ),
        (
            "log.retention.bytes",
            config.retention.retention_bytes.to_string(),
            TYPE_LONG,
        ),
        (
            "log.retention.ms",
            config.retention.retention_ms.to_string(),
            TYPE_LONG,
        ),
        (
            "log.segment.bytes",
            config.storage.segment_bytes.to_string(),
            TYPE_LONG,
        ),
        (
            "message.max.bytes",
            config.storage.message_max_bytes.to_string(),
            TYPE_INT,
        ),
        (
            "num.partitions",
            config.kafka.default_partitions.to_string(),
            TYPE_INT,
        ),
    ];
    rows.into_iter()
        .filter(|(name, _, _)| keys.is_none_or(|keys| keys.iter().any(|key| key == name)))
        .map(|(name, value, kind)| {
            DescribeConfigsResourceResult::default()
                .with_name(str_bytes(name))
                .with_value(Some(str_bytes(&value)))
                .with_read_only(true)
                .with_config_source(SOURCE_STATIC_BROKER)
                .with_config_type(kind)
        })
        .collect()
}
