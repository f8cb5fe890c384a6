//! IncrementalAlterConfigs: SET and DELETE topic config overrides (APPEND
//! and SUBTRACT on list configs). Broker settings live in sluice.toml and are
//! read-only here.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::{decode, str_bytes};
use crate::kafka::dispatch::Request;
use crate::kafka::error_code;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let alter: IncrementalAlterConfigsRequest = decode(request, body)?;
    let mut responses = Vec::with_capacity(alter.resources.len());
    for resource in &alter.resources {
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let outcome = match resource.resource_type {
            RESOURCE_TOPIC => alter_topic(request, resource, alter.validate_only).await,
            RESOURCE_BROKER => Err((
                ResponseError::InvalidRequest.code(),
                "broker settings are read-only at runtime; set them in sluice.toml".to_owned(),
            )),
            other => Err((
                ResponseError::InvalidRequest.code(),
                format!("resource type {other} cannot be altered"),
            )),
        };
        responses.push(match outcome {
            Ok(()) => response,
            Err((code, message)) => response
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&message))),
        });
    }
    request.respond(&IncrementalAlterConfigsResponse::default().with_responses(responses))
}

async fn alter_topic(
    request: &Request<'_>,
    resource: &kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let name = resource.resource_name.as_str();
    let Some(topic) = request.broker.metadata.snapshot().topic(name).cloned() else {
        return Err((
            ResponseError::UnknownTopicOrPartition.code(),
            format!("topic {name} does not exist"),
        ));
    };
    let mut named = std::collections::BTreeSet::new();
    if let Some(config) = resource
        .configs
        .iter()
        .find(|config| !named.insert(config.name.as_str()))
    {
        return Err((
            ResponseError::InvalidRequest.code(),
            format!("config {} is given more than once", config.name.as_str()),
        ));
    }
    let mut overrides = topic.overrides.clone();
    for config in &resource.configs {
        let key = config.name.to_string();
        let value = config.value.as_ref().map(ToString::to_string);
        match (config.config_operation, value) {
            (OP_SET, Some(value)) => {
                overrides.insert(key, value);
            }
            (OP_SET, None) => {
                return Err((
                    ResponseError::InvalidConfig.code(),
                    format!("SET {key} needs a value"),
                ));
            }
            (OP_DELETE, _) => {
                overrides.remove(&key);
            }
            (OP_APPEND | OP_SUBTRACT, _) => {
                return Err((
                    ResponseError::InvalidConfig.code(),
                    format!(
                        "{key} is not a list this broker can append to or subtract from; use SET"
                    ),
                ));
            }
            (other, _) => {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    format!("unknown config operation {other}"),
                ));
            }
        }
    }
    request
        .broker
        .set_topic_overrides(&request.shard.shards, name, overrides, validate_only)
        .await
        .map_err(|error| (error_code::for_topic(&error), error.to_string()))
}
