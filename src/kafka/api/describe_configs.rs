//! DescribeConfigs (v1–4): a topic's every config (effective value, source,
//! synonyms and documentation, as Kafka's `ConfigHelper`), and the broker's
//! settings (`broker_config.rs`): this node's all, the cluster default's
//! those set at that level; and a group's configs (`group/config.rs`, KIP-848),
//! known group or not, as Kafka answers.
//!
//! A resource needs DESCRIBE_CONFIGS on its topic, the cluster (broker
//! settings) or its group; without it the resource gets
//! TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED or
//! GROUP_AUTHORIZATION_FAILED ([`config_access`]).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::{decode, str_bytes};
use crate::broker::Broker;
use crate::broker::broker_config::{BrokerView, ConfigSource, scope_of};
use crate::broker::config_value::ConfigType;
use crate::broker::group::config as group_config;
use crate::kafka::authorize::Authorizer;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
/// KIP-848's GROUP config resource.
pub const RESOURCE_GROUP: i8 = 32;
/// What an unsupported resource type's refusal lists.
pub const RESOURCE_TYPES: &str = "topics: 2, brokers: 4, groups: 32";

/// Whether the principal may do `operation` (DESCRIBE_CONFIGS or
/// ALTER_CONFIGS) to config resource `resource_type` `name`, or Kafka's
/// refusal. A type configs are not kept for is left to the caller.
pub fn config_access(
    authorizer: &Authorizer,
    resource_type: i8,
    name: &str,
    operation: Operation,
) -> Result<(), (i16, String)> {
    let (allowed, error, what) = match resource_type {
        RESOURCE_TOPIC => (
            authorizer.topic(operation, name),
            ResponseError::TopicAuthorizationFailed,
            "topic",
        ),
        RESOURCE_BROKER => (
            authorizer.cluster(operation),
            ResponseError::ClusterAuthorizationFailed,
            "cluster",
        ),
        RESOURCE_GROUP => (
            authorizer.group(operation, name),
            ResponseError::GroupAuthorizationFailed,
            "group",
        ),
        _ => return Ok(()),
    };
    if allowed {
        return Ok(());
    }
    Err((
        error.code(),
        format!("not allowed to {} on this {what}", operation.name()),
    ))
}

/// What the request asked to be included in each row.
#[derive(Clone, Copy)]
struct Include {
    synonyms: bool,
    documentation: bool,
}

pub fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeConfigsRequest = decode(request, body)?;
    let include = Include {
        synonyms: describe.include_synonyms,
        documentation: describe.include_documentation,
    };
    let authorizer = request.authorizer();
    let results = describe
        .resources
        .iter()
        .map(|resource| {
            // Kafka: a null or empty key list asks for every config.
            let keys: Option<Vec<String>> = resource
                .configuration_keys
                .as_ref()
                .filter(|keys| !keys.is_empty())
                .map(|keys| keys.iter().map(ToString::to_string).collect());
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let name = resource.resource_name.as_str();
            let access = config_access(
                &authorizer,
                resource.resource_type,
                name,
                Operation::DescribeConfigs,
            );
            let described = match resource.resource_type {
                _ if access.is_err() => access.map(|()| Vec::new()),
                RESOURCE_TOPIC => topic_configs(request.broker, name, keys.as_deref(), include),
                RESOURCE_BROKER => broker_configs(request.broker, name, keys.as_deref(), include),
                RESOURCE_GROUP => group_configs(request.broker, name, keys.as_deref(), include),
                other => Err((
                    ResponseError::InvalidRequest.code(),
                    format!("resource type {other} is not described here ({RESOURCE_TYPES})"),
                )),
            };
            match described {
                Ok(configs) => result.with_configs(configs),
                Err((code, message)) => result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message))),
            }
        })
        .collect();
    request.respond(DescribeConfigsResponse::default().with_results(results))
}

type Rows = Result<Vec<DescribeConfigsResourceResult>, (i16, String)>;

fn topic_configs(broker: &Broker, name: &str, keys: Option<&[String]>, include: Include) -> Rows {
    let cluster = broker.metadata.snapshot();
    let Some(topic) = cluster.topic(name) else {
        return Err((
            ResponseError::UnknownTopicOrPartition.code(),
            format!("topic {name} does not exist"),
        ));
    };
    let view = BrokerView {
        statics: broker.metadata.statics(),
        overrides: &cluster.broker,
    };
    Ok(view
        .describe_topic(&topic.config, &topic.overrides, keys)
        .into_iter()
        .map(|entry| {
            row(
                entry.def.name,
                &entry.value,
                entry.source,
                entry.synonyms,
                include,
            )
            .with_config_type(entry.def.spec.kind.code())
            .with_documentation(include.documentation.then(|| str_bytes(entry.def.doc)))
        })
        .collect())
}

fn broker_configs(broker: &Broker, name: &str, keys: Option<&[String]>, include: Include) -> Rows {
    let scope = scope_of(name, broker.config.kafka.node_id)
        .map_err(|message| (ResponseError::InvalidRequest.code(), message))?;
    let cluster = broker.metadata.snapshot();
    let view = BrokerView {
        statics: broker.metadata.statics(),
        overrides: &cluster.broker,
    };
    Ok(view
        .describe(scope, keys)
        .into_iter()
        .map(|entry| {
            row(
                &entry.name,
                &entry.value,
                entry.source,
                entry.synonyms,
                include,
            )
            .with_read_only(entry.read_only)
            .with_config_type(entry.kind.code())
            .with_documentation(include.documentation.then(|| str_bytes(entry.doc)))
        })
        .collect())
}

fn group_configs(broker: &Broker, name: &str, keys: Option<&[String]>, include: Include) -> Rows {
    if name.is_empty() {
        return Err((
            ResponseError::InvalidRequest.code(),
            "Group name must not be empty".to_owned(),
        ));
    }
    let cluster = broker.metadata.snapshot();
    Ok(
        group_config::describe(&broker.config.groups, cluster.group_configs.get(name), keys)
            .into_iter()
            .map(|entry| {
                row(
                    entry.def.name,
                    &entry.value,
                    entry.source,
                    entry.synonyms,
                    include,
                )
                .with_config_type(ConfigType::Int.code())
                .with_documentation(include.documentation.then(|| str_bytes(entry.def.doc)))
            })
            .collect(),
    )
}

fn row(
    name: &str,
    value: &str,
    source: ConfigSource,
    synonyms: Vec<(String, String, ConfigSource)>,
    include: Include,
) -> DescribeConfigsResourceResult {
    let synonyms = if include.synonyms {
        synonyms
            .into_iter()
            .map(|(name, value, source)| {
                DescribeConfigsSynonym::default()
                    .with_name(str_bytes(&name))
                    .with_value(Some(str_bytes(&value)))
                    .with_source(source.code())
            })
            .collect()
    } else {
        Vec::new()
    };
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_config_source(source.code())
        .with_synonyms(synonyms)
}
