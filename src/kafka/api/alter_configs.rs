//! AlterConfigs (v0–2), the legacy form: each resource's configs *replace*
//! its whole override set, so a config not listed goes back to its
//! default (Kafka's `legacyAlterConfigs`). kafkajs has no other way to
//! change a config.
//!
//! As Kafka answers, per resource: a resource named twice gets
//! INVALID_REQUEST (both times), a config named twice or with a null value
//! INVALID_REQUEST; a TOPIC's bad or unknown config INVALID_CONFIG and an
//! unknown topic UNKNOWN_TOPIC_OR_PARTITION; a BROKER (the empty name for
//! the cluster default, or this node's id) answers INVALID_REQUEST for
//! another id, a read-only setting or a bad value (KAFKA-13609); a GROUP
//! (KIP-848) INVALID_CONFIG for a bad or unknown config and
//! INVALID_REQUEST for the empty name. A resource the principal may not
//! ALTER_CONFIGS gets TOPIC_, CLUSTER_ or GROUP_AUTHORIZATION_FAILED
//! (`describe_configs::config_access`). With
//! `validate_only` everything is checked and nothing changes. Also the
//! helpers IncrementalAlterConfigs shares.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::describe_configs::{
    RESOURCE_BROKER, RESOURCE_GROUP, RESOURCE_TOPIC, RESOURCE_TYPES, config_access,
};
use super::{decode, str_bytes};
use crate::broker::broker_config::{BrokerScope, scope_of};
use crate::broker::{BrokerConfigError, GroupConfigError};
use crate::kafka::authorize::Authorizer;
use crate::kafka::dispatch::Request;
use crate::kafka::error_code;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation as AclOperation;

/// A resource's refusal: Kafka's error code and a message.
pub type Refusal = (i16, String);

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let alter: AlterConfigsRequest = decode(request, body)?;
    let outcomes = alter_each(
        &request.authorizer(),
        &alter.resources,
        |resource| (resource.resource_type, resource.resource_name.as_str()),
        |resource| {
            let configs = resource
                .configs
                .iter()
                .map(|config| {
                    (
                        config.name.to_string(),
                        config.value.as_ref().map(ToString::to_string),
                    )
                })
                .collect::<Vec<_>>();
            replace(
                request,
                resource.resource_type,
                resource.resource_name.as_str(),
                configs,
                alter.validate_only,
            )
        },
    )
    .await;
    let mut responses = Vec::with_capacity(alter.resources.len());
    for (resource, outcome) in alter.resources.iter().zip(outcomes) {
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        responses.push(match outcome {
            Ok(()) => response,
            Err((code, message)) => response
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&message))),
        });
    }
    request.respond(AlterConfigsResponse::default().with_responses(responses))
}

/// Replace the override set of one resource by `configs`.
async fn replace(
    request: &Request<'_>,
    resource_type: i8,
    name: &str,
    configs: Vec<(String, Option<String>)>,
    validate_only: bool,
) -> Result<(), Refusal> {
    refuse_repeated_names(configs.iter().map(|(name, _)| name.as_str()))?;
    let nulls: Vec<&str> = configs
        .iter()
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    if !nulls.is_empty() {
        return Err(null_values(&nulls));
    }
    let overrides: BTreeMap<String, String> = configs
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
        .collect();
    match resource_type {
        RESOURCE_TOPIC => set_topic(request, name, overrides, validate_only).await,
        RESOURCE_BROKER => {
            let scope = broker_scope(request, name)?;
            set_broker(request, scope, overrides, validate_only).await
        }
        RESOURCE_GROUP => set_group(request, name, overrides, validate_only).await,
        other => Err(unknown_resource_type(other)),
    }
}

/// Replace topic `name`'s overrides (INVALID_CONFIG for a bad one).
pub async fn set_topic(
    request: &Request<'_>,
    name: &str,
    overrides: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), Refusal> {
    request
        .broker
        .set_topic_overrides(&request.shard.shards, name, overrides, validate_only)
        .await
        .map_err(|error| (error_code::for_topic(&error), error.to_string()))
}

/// Replace the dynamic broker settings of `scope` (INVALID_REQUEST for a
/// refused one, as Kafka).
pub async fn set_broker(
    request: &Request<'_>,
    scope: BrokerScope,
    overrides: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), Refusal> {
    request
        .broker
        .set_broker_overrides(&request.shard.shards, scope, overrides, validate_only)
        .await
        .map_err(|error| match error {
            BrokerConfigError::Refused(message) => (ResponseError::InvalidRequest.code(), message),
            BrokerConfigError::Topic(error) => (error_code::for_topic(&error), error.to_string()),
        })
}

/// Replace group `name`'s configs (INVALID_CONFIG for a bad one).
pub async fn set_group(
    request: &Request<'_>,
    name: &str,
    overrides: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), Refusal> {
    request
        .broker
        .set_group_overrides(name, overrides, validate_only)
        .await
        .map_err(|error| {
            let code = match &error {
                GroupConfigError::Invalid(_) => ResponseError::InvalidConfig,
                GroupConfigError::Refused(_) => ResponseError::InvalidRequest,
                GroupConfigError::Metadata(_) => ResponseError::KafkaStorageError,
            };
            (code.code(), error.to_string())
        })
}

/// The scope a BROKER resource name denotes (INVALID_REQUEST otherwise).
pub fn broker_scope(request: &Request<'_>, name: &str) -> Result<BrokerScope, Refusal> {
    scope_of(name, request.broker.config.kafka.node_id)
        .map_err(|message| (ResponseError::InvalidRequest.code(), message))
}

/// The (type, name) pairs that appear more than once.
/// Alter each resource in request order with `alter`. A resource named
/// twice in one request is refused each time (INVALID_REQUEST) and not
/// altered, as Kafka refuses it, and so is one the principal may not
/// ALTER_CONFIGS; the others are unaffected.
pub async fn alter_each<'a, R, Fut>(
    authorizer: &Authorizer,
    resources: &'a [R],
    key: impl Fn(&'a R) -> (i8, &'a str),
    mut alter: impl FnMut(&'a R) -> Fut,
) -> Vec<Result<(), Refusal>>
where
    Fut: std::future::Future<Output = Result<(), Refusal>>,
{
    let repeated = repeated_resources(resources.iter().map(&key));
    let mut outcomes = Vec::with_capacity(resources.len());
    for resource in resources {
        let (resource_type, name) = key(resource);
        outcomes.push(if repeated.contains(&(resource_type, name)) {
            Err(each_resource_once())
        } else if let Err(refusal) =
            config_access(authorizer, resource_type, name, AclOperation::AlterConfigs)
        {
            Err(refusal)
        } else {
            alter(resource).await
        });
    }
    outcomes
}

fn repeated_resources<'a>(resources: impl Iterator<Item = (i8, &'a str)>) -> Vec<(i8, &'a str)> {
    let mut counts: HashMap<(i8, &str), usize> = HashMap::new();
    for resource in resources {
        *counts.entry(resource).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .map(|(resource, _)| resource)
        .collect()
}

fn each_resource_once() -> Refusal {
    (
        ResponseError::InvalidRequest.code(),
        "each resource may appear at most once in a request".to_owned(),
    )
}

/// INVALID_REQUEST if a config is named twice.
pub fn refuse_repeated_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), Refusal> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err((
                ResponseError::InvalidRequest.code(),
                format!("config {name} is given more than once"),
            ));
        }
    }
    Ok(())
}

pub fn null_values(names: &[&str]) -> Refusal {
    (
        ResponseError::InvalidRequest.code(),
        format!("a null value is not allowed for: {}", names.join(", ")),
    )
}

pub fn unknown_resource_type(resource_type: i8) -> Refusal {
    (
        ResponseError::InvalidRequest.code(),
        format!("resource type {resource_type} cannot be altered here ({RESOURCE_TYPES})"),
    )
}
