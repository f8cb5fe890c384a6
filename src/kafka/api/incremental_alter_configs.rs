//! IncrementalAlterConfigs (v0–1, KIP-339): SET, DELETE (back to the
//! default), APPEND and SUBTRACT on list configs, for TOPIC, BROKER and
//! GROUP (KIP-848) resources. Each resource's operations apply to its current overrides and
//! the result is checked whole; a refused resource changes nothing.
//!
//! APPEND and SUBTRACT, as Kafka's `ConfigurationControlManager`: the
//! current list is the override, or the value the resource inherits when
//! there is none; APPEND adds each comma-separated element not yet in it,
//! SUBTRACT removes each; a config that is not a LIST gets INVALID_CONFIG
//! (`cleanup.policy` and the throttled-replicas lists are the topic lists).
//! The other errors are those of AlterConfigs (`alter_configs.rs`).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::alter_configs::{
    Refusal, alter_each, broker_scope, null_values, refuse_repeated_names, set_broker, set_group,
    set_topic, unknown_resource_type,
};
use super::describe_configs::{RESOURCE_BROKER, RESOURCE_GROUP, RESOURCE_TOPIC};
use super::str_bytes;
use crate::broker::broker_config::{BrokerScope, BrokerView, ConfigSource, SettingKind, kind_of};
use crate::broker::config_value::list_items;
use crate::broker::topic_config::config_def;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let alter: IncrementalAlterConfigsRequest = super::decode(request, body)?;
    let outcomes = alter_each(
        &request.authorizer(),
        &alter.resources,
        |resource| (resource.resource_type, resource.resource_name.as_str()),
        |resource| alter_resource(request, resource, alter.validate_only),
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
    request.respond(IncrementalAlterConfigsResponse::default().with_responses(responses))
}

/// One operation on one config.
struct Operation {
    name: String,
    op: i8,
    value: Option<String>,
}

async fn alter_resource(
    request: &Request<'_>,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), Refusal> {
    refuse_repeated_names(resource.configs.iter().map(|config| config.name.as_str()))?;
    let operations: Vec<Operation> = resource
        .configs
        .iter()
        .map(|config| Operation {
            name: config.name.to_string(),
            op: config.config_operation,
            value: config.value.as_ref().map(ToString::to_string),
        })
        .collect();
    if let Some(unknown) = operations
        .iter()
        .find(|operation| !(OP_SET..=OP_SUBTRACT).contains(&operation.op))
    {
        return Err((
            ResponseError::InvalidRequest.code(),
            format!(
                "unknown config operation {} for {}",
                unknown.op, unknown.name
            ),
        ));
    }
    let nulls: Vec<&str> = operations
        .iter()
        .filter(|operation| operation.op != OP_DELETE && operation.value.is_none())
        .map(|operation| operation.name.as_str())
        .collect();
    if !nulls.is_empty() {
        return Err(null_values(&nulls));
    }
    let name = resource.resource_name.as_str();
    match resource.resource_type {
        RESOURCE_TOPIC => alter_topic(request, name, &operations, validate_only).await,
        RESOURCE_BROKER => alter_broker(request, name, &operations, validate_only).await,
        RESOURCE_GROUP => alter_group(request, name, &operations, validate_only).await,
        other => Err(unknown_resource_type(other)),
    }
}

async fn alter_topic(
    request: &Request<'_>,
    name: &str,
    operations: &[Operation],
    validate_only: bool,
) -> Result<(), Refusal> {
    let Some(topic) = request.broker.metadata.snapshot().topic(name).cloned() else {
        return Err((
            ResponseError::UnknownTopicOrPartition.code(),
            format!("topic {name} does not exist"),
        ));
    };
    let inherited = |key: &str| topic.config.value_of(key).map(str::to_owned);
    let is_list = |key: &str| match config_def(key) {
        Some(def) if def.spec.kind.is_list() => Ok(()),
        Some(_) => Err(format!("{key} is not a LIST config")),
        None => Err(format!("{key} is not a topic config")),
    };
    let overrides = apply(topic.overrides.clone(), operations, inherited, is_list)?;
    set_topic(request, name, overrides, validate_only).await
}

async fn alter_broker(
    request: &Request<'_>,
    name: &str,
    operations: &[Operation],
    validate_only: bool,
) -> Result<(), Refusal> {
    let scope = broker_scope(request, name)?;
    let cluster = request.broker.metadata.snapshot();
    let view = BrokerView {
        statics: request.broker.metadata.statics(),
        overrides: &cluster.broker,
    };
    // What a setting is where this resource does not set it: the levels
    // below it (for the node: the cluster default, then sluice.toml).
    let current = cluster.broker.of(scope);
    let inherited = |key: &str| {
        view.levels(key)
            .into_iter()
            .find(|(source, _)| match scope {
                BrokerScope::Node => *source != ConfigSource::DynamicBroker,
                BrokerScope::Cluster => !matches!(
                    source,
                    ConfigSource::DynamicBroker | ConfigSource::DynamicDefaultBroker
                ),
            })
            .map(|(_, value)| value)
    };
    let is_list = |key: &str| match kind_of(key) {
        SettingKind::TopicDefault(def) if def.spec.kind.is_list() => Ok(()),
        SettingKind::Unknown => Err(format!("{key} is not a broker setting Sluice knows")),
        _ => Err(format!("{key} is not a LIST setting")),
    };
    let overrides = apply(current.clone(), operations, inherited, is_list)?;
    set_broker(request, scope, overrides, validate_only).await
}

/// A group's configs are INTs: APPEND and SUBTRACT never apply.
async fn alter_group(
    request: &Request<'_>,
    name: &str,
    operations: &[Operation],
    validate_only: bool,
) -> Result<(), Refusal> {
    let current = request
        .broker
        .metadata
        .snapshot()
        .group_configs
        .get(name)
        .cloned()
        .unwrap_or_default();
    let is_list = |key: &str| Err(format!("{key} is not a LIST group config"));
    let overrides = apply(current, operations, |_| None, is_list)?;
    set_group(request, name, overrides, validate_only).await
}

/// `overrides` after `operations`. `inherited` gives a config's value where
/// it is not overridden; `is_list` says why APPEND/SUBTRACT do not apply.
fn apply(
    mut overrides: BTreeMap<String, String>,
    operations: &[Operation],
    inherited: impl Fn(&str) -> Option<String>,
    is_list: impl Fn(&str) -> Result<(), String>,
) -> Result<BTreeMap<String, String>, Refusal> {
    for operation in operations {
        let key = &operation.name;
        let value = operation.value.as_deref().unwrap_or_default();
        match operation.op {
            OP_SET => {
                overrides.insert(key.clone(), value.to_owned());
            }
            OP_DELETE => {
                overrides.remove(key);
            }
            op => {
                let verb = if op == OP_APPEND {
                    "APPEND"
                } else {
                    "SUBTRACT"
                };
                is_list(key).map_err(|why| {
                    (
                        ResponseError::InvalidConfig.code(),
                        format!("cannot {verb} to {key}: {why}"),
                    )
                })?;
                let current = overrides.get(key).cloned().or_else(|| inherited(key));
                let mut items: Vec<String> = list_items(current.as_deref().unwrap_or_default())
                    .into_iter()
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect();
                for element in value.split(',') {
                    if op == OP_APPEND {
                        if !items.iter().any(|item| item == element) {
                            items.push(element.to_owned());
                        }
                    } else {
                        items.retain(|item| item != element);
                    }
                }
                overrides.insert(key.clone(), items.join(","));
            }
        }
    }
    Ok(overrides)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(name: &str, op: i8, value: &str) -> Operation {
        Operation {
            name: name.to_owned(),
            op,
            value: Some(value.to_owned()),
        }
    }

    fn lists(key: &str) -> Result<(), String> {
        if key.ends_with("replicas") || key == "cleanup.policy" {
            Ok(())
        } else {
            Err("not a list".to_owned())
        }
    }

    #[test]
    fn append_and_subtract_work_on_the_inherited_list_and_keep_order() {
        let inherited = |_: &str| Some("delete".to_owned());
        let ops = [
            operation(
                "leader.replication.throttled.replicas",
                OP_APPEND,
                "0:1,1:1",
            ),
            operation(
                "leader.replication.throttled.replicas",
                OP_APPEND,
                "1:1,2:1",
            ),
        ];
        let no_inherited = |_: &str| None;
        let done = apply(BTreeMap::new(), &ops, no_inherited, lists).unwrap();
        assert_eq!(done["leader.replication.throttled.replicas"], "0:1,1:1,2:1");
        let ops = [operation("cleanup.policy", OP_APPEND, "compact")];
        let done = apply(BTreeMap::new(), &ops, inherited, lists).unwrap();
        assert_eq!(done["cleanup.policy"], "delete,compact");
        let ops = [operation("cleanup.policy", OP_SUBTRACT, "delete")];
        let done = apply(BTreeMap::new(), &ops, inherited, lists).unwrap();
        assert_eq!(done["cleanup.policy"], "");
    }

    #[test]
    fn append_to_a_non_list_is_invalid_config() {
        let ops = [operation("retention.ms", OP_APPEND, "5")];
        let (code, message) = apply(BTreeMap::new(), &ops, |_| None, lists).unwrap_err();
        assert_eq!(code, ResponseError::InvalidConfig.code());
        assert!(message.contains("retention.ms"));
    }
}
