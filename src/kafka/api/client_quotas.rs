//! DescribeClientQuotas and AlterClientQuotas (versions 0–1, KIP-546): the
//! client quotas in the cluster metadata (`broker/quota.rs`), for entities
//! of type `user` and `client-id` (a null name is the type's `<default>`).
//!
//! As Kafka answers:
//! - describing needs DESCRIBE_CONFIGS on the cluster, altering
//!   ALTER_CONFIGS (CLUSTER_AUTHORIZATION_FAILED);
//! - a filter component: `match_type` 0 names an entity, 1 is the default
//!   entity, 2 any entity of the type; `strict` keeps only entities made of
//!   exactly the filtered types;
//! - an alteration with an unknown or repeated entity type, an empty
//!   entity, an unknown key (Sluice keeps `producer_byte_rate`,
//!   `consumer_byte_rate` and `request_percentage`), a key given twice, or a
//!   value that is not a positive whole number (bytes per second, percent)
//!   gets INVALID_REQUEST, and changes nothing of its entity;
//!   `validate_only` checks and changes nothing at all.
//!
//! Connection-rate (`ip`) quotas are not kept: their entity type and keys
//! are refused with INVALID_REQUEST. A fractional `request_percentage`
//! (Kafka takes a double) is refused the same way.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_client_quotas_response::{
    EntityData as DescribedEntity, EntryData as DescribedEntry, ValueData,
};
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse, alter_client_quotas_response,
};

use super::{decode, str_bytes};
use crate::broker::metadata_command::MetadataCommand;
use crate::broker::quota::{
    EntityName, QUOTA_KEYS, QUOTA_NAME_BYTES_MAX, QUOTA_VALUE_MAX, QuotaEntity, REQUEST_PERCENTAGE,
};
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

const USER: &str = "user";
const CLIENT_ID: &str = "client-id";
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_ANY: i8 = 2;

fn unsupported_type(entity_type: &str) -> String {
    format!("entity type {entity_type:?} is not kept: Sluice keeps quotas for user and client-id")
}

/// The parts of `entity` by type.
fn parts(entity: &QuotaEntity) -> [(&'static str, Option<&EntityName>); 2] {
    [
        (USER, entity.user.as_ref()),
        (CLIENT_ID, entity.client_id.as_ref()),
    ]
}

pub fn describe(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeClientQuotasRequest = decode(request, body)?;
    let refuse = |error: ResponseError, message: String| {
        request.respond(
            DescribeClientQuotasResponse::default()
                .with_error_code(error.code())
                .with_error_message(Some(str_bytes(&message)))
                .with_entries(None),
        )
    };
    if !request.authorizer().cluster(Operation::DescribeConfigs) {
        return refuse(
            ResponseError::ClusterAuthorizationFailed,
            format!("client quotas need DESCRIBE_CONFIGS on the cluster{GRANT_HINT}"),
        );
    }
    let mut filtered_types = BTreeSet::new();
    for component in &describe.components {
        let entity_type = component.entity_type.as_str();
        if entity_type != USER && entity_type != CLIENT_ID {
            return refuse(ResponseError::InvalidRequest, unsupported_type(entity_type));
        }
        if !filtered_types.insert(entity_type) {
            return refuse(
                ResponseError::InvalidRequest,
                format!("entity type {entity_type:?} is filtered twice"),
            );
        }
        if !matches!(
            component.match_type,
            MATCH_EXACT | MATCH_DEFAULT | MATCH_ANY
        ) {
            return refuse(
                ResponseError::InvalidRequest,
                format!("match type {} is not 0, 1 or 2", component.match_type),
            );
        }
    }
    let snapshot = request.broker.metadata.snapshot();
    let matches = |entity: &QuotaEntity| {
        let entity_parts = parts(entity);
        let component_ok = describe.components.iter().all(|component| {
            let part = entity_parts
                .iter()
                .find(|(entity_type, _)| *entity_type == component.entity_type.as_str())
                .and_then(|(_, name)| *name);
            match (component.match_type, part) {
                (_, None) => false,
                (MATCH_EXACT, Some(EntityName::Named(name))) => {
                    component._match.as_deref() == Some(name.as_str())
                }
                (MATCH_EXACT, Some(EntityName::Default)) => false,
                (MATCH_DEFAULT, Some(name)) => *name == EntityName::Default,
                _ => true,
            }
        });
        let strict_ok = !describe.strict
            || entity_parts
                .iter()
                .filter(|(_, name)| name.is_some())
                .all(|(entity_type, _)| filtered_types.contains(entity_type));
        component_ok && strict_ok
    };
    let entries = snapshot
        .client_quotas
        .iter()
        .filter(|(entity, _)| matches(entity))
        .map(|(entity, values)| {
            let entity = parts(entity)
                .into_iter()
                .filter_map(|(entity_type, name)| {
                    name.map(|name| {
                        DescribedEntity::default()
                            .with_entity_type(str_bytes(entity_type))
                            .with_entity_name(name.to_wire().map(str_bytes))
                    })
                })
                .collect();
            let values = values
                .iter()
                .map(|(key, value)| {
                    ValueData::default()
                        .with_key(str_bytes(key))
                        .with_value(*value as f64)
                })
                .collect();
            DescribedEntry::default()
                .with_entity(entity)
                .with_values(values)
        })
        .collect();
    request.respond(
        DescribeClientQuotasResponse::default()
            .with_error_message(None)
            .with_entries(Some(entries)),
    )
}

/// How a refused principal gets access.
const GRANT_HINT: &str = ": log in as a super user, or have one grant it with \
     `sluice acls add --cluster --operation ... --principal User:NAME`";

/// An alteration for the log: `user=alice client-id=<default>:
/// producer_byte_rate=1000, remove consumer_byte_rate`.
fn describe_change(command: &MetadataCommand) -> String {
    let MetadataCommand::AlterClientQuotas {
        entity,
        set,
        remove,
    } = command
    else {
        return String::new();
    };
    let name = |name: &EntityName| name.to_wire().unwrap_or("<default>").to_owned();
    let parts: Vec<String> = [(USER, &entity.user), (CLIENT_ID, &entity.client_id)]
        .into_iter()
        .filter_map(|(entity_type, part)| {
            part.as_ref()
                .map(|part| format!("{entity_type}={}", name(part)))
        })
        .collect();
    let changes: Vec<String> = set
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .chain(remove.iter().map(|key| format!("remove {key}")))
        .collect();
    format!("{}: {}", parts.join(" "), changes.join(", "))
}

/// One entry's alteration, checked: the command to run, or why not.
fn check_entry(
    entry: &kafka_protocol::messages::alter_client_quotas_request::EntryData,
) -> Result<MetadataCommand, String> {
    let mut entity = QuotaEntity {
        user: None,
        client_id: None,
    };
    for part in &entry.entity {
        let slot = match part.entity_type.as_str() {
            USER => &mut entity.user,
            CLIENT_ID => &mut entity.client_id,
            other => return Err(unsupported_type(other)),
        };
        if slot.is_some() {
            return Err(format!(
                "entity type {:?} is given twice",
                part.entity_type.as_str()
            ));
        }
        let name = part.entity_name.as_deref();
        if name.is_some_and(|name| name.len() > QUOTA_NAME_BYTES_MAX) {
            return Err(format!(
                "an entity name is longer than {QUOTA_NAME_BYTES_MAX} bytes"
            ));
        }
        *slot = Some(EntityName::from_wire(name));
    }
    if entity.user.is_none() && entity.client_id.is_none() {
        return Err("the entity is empty: name a user, a client-id or both".to_owned());
    }
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    let mut seen = BTreeSet::new();
    for op in &entry.ops {
        let key = op.key.as_str();
        if !QUOTA_KEYS.contains(&key) {
            return Err(format!(
                "quota key {key:?} is not kept: Sluice enforces {}",
                QUOTA_KEYS.join(", ")
            ));
        }
        if !seen.insert(key) {
            return Err(format!("quota key {key:?} is given twice"));
        }
        if op.remove {
            remove.push(key.to_owned());
            continue;
        }
        let value = op.value;
        if !value.is_finite()
            || value < 1.0
            || value > QUOTA_VALUE_MAX as f64
            || value.fract() != 0.0
        {
            let unit = if key == REQUEST_PERCENTAGE {
                "percent of a thread"
            } else {
                "bytes per second"
            };
            let bound = if value > QUOTA_VALUE_MAX as f64 {
                format!("at most {QUOTA_VALUE_MAX}")
            } else {
                "at least 1".to_owned()
            };
            return Err(format!(
                "{key} = {value} is refused: it must be a whole number of {unit}, {bound}"
            ));
        }
        set.insert(key.to_owned(), value as u64);
    }
    Ok(MetadataCommand::AlterClientQuotas {
        entity,
        set,
        remove,
    })
}

pub async fn alter(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let alter: AlterClientQuotasRequest = decode(request, body)?;
    let permitted = request.authorizer().cluster(Operation::AlterConfigs);
    let mut results = Vec::with_capacity(alter.entries.len());
    for entry in &alter.entries {
        let entity = entry
            .entity
            .iter()
            .map(|part| {
                alter_client_quotas_response::EntityData::default()
                    .with_entity_type(part.entity_type.clone())
                    .with_entity_name(part.entity_name.clone())
            })
            .collect();
        // Kafka sends a null message with no error.
        let result = alter_client_quotas_response::EntryData::default()
            .with_entity(entity)
            .with_error_message(None);
        let outcome: Result<(), (ResponseError, String)> = if !permitted {
            Err((
                ResponseError::ClusterAuthorizationFailed,
                format!("client quotas need ALTER_CONFIGS on the cluster{GRANT_HINT}"),
            ))
        } else {
            match check_entry(entry) {
                Err(reason) => Err((ResponseError::InvalidRequest, reason)),
                Ok(command) if alter.validate_only => request
                    .broker
                    .metadata
                    .dry_run(command)
                    .map(|_| ())
                    .map_err(|refused| (ResponseError::InvalidRequest, refused.to_string())),
                Ok(command) => {
                    let change = describe_change(&command);
                    match request.broker.metadata.submit(command).await {
                        Ok(Ok(_)) => {
                            tracing::info!(
                                principal = %request.session.principal(),
                                %change,
                                "client quotas altered"
                            );
                            Ok(())
                        }
                        Ok(Err(refused)) => {
                            Err((ResponseError::InvalidRequest, refused.to_string()))
                        }
                        Err(failure) => {
                            Err((ResponseError::UnknownServerError, failure.to_string()))
                        }
                    }
                }
            }
        };
        results.push(match outcome {
            Ok(()) => result,
            Err((error, message)) => result
                .with_error_code(error.code())
                .with_error_message(Some(str_bytes(&message))),
        });
    }
    request.respond(AlterClientQuotasResponse::default().with_entries(results))
}
