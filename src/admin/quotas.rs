//! `sluice quotas set|remove|list`: client quotas through
//! AlterClientQuotas and DescribeClientQuotas (KIP-546), like
//! `kafka-configs.sh --entity-type users|clients`. Byte rates are bytes per
//! second, `request_percentage` percent of one thread (KIP-124); an entity
//! is a user, a client id or both, each named or the type's `<default>`.

use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
use kafka_protocol::messages::{AlterClientQuotasRequest, DescribeClientQuotasRequest};
use kafka_protocol::protocol::StrBytes;

use super::table::Table;
use super::{AdminResult, describe_error};
use crate::broker::quota::{
    CONSUMER_BYTE_RATE, PRODUCER_BYTE_RATE, QUOTA_KEYS, REQUEST_PERCENTAGE,
};
use crate::client::KafkaClient;

/// The entity a command names: `Some(None)` is the type's default.
#[derive(Clone, Debug, Default)]
pub struct EntityArgs {
    pub user: Option<Option<String>>,
    pub client_id: Option<Option<String>>,
}

fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

fn entity(args: &EntityArgs) -> anyhow::Result<Vec<EntityData>> {
    let parts: Vec<EntityData> = [("user", &args.user), ("client-id", &args.client_id)]
        .into_iter()
        .filter_map(|(entity_type, name)| {
            name.as_ref().map(|name| {
                EntityData::default()
                    .with_entity_type(str_bytes(entity_type))
                    .with_entity_name(name.as_deref().map(str_bytes))
            })
        })
        .collect();
    if parts.is_empty() {
        anyhow::bail!(
            "name the entity: --user NAME or --user-default, --client-id NAME or \
             --client-id-default (or a user and a client id)"
        );
    }
    Ok(parts)
}

fn alter(brokers: &str, entry: EntryData) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let response = client.call(&AlterClientQuotasRequest::default().with_entries(vec![entry]))?;
    for result in &response.entries {
        if result.error_code != 0 {
            anyhow::bail!(describe_error(
                result.error_code,
                result.error_message.as_deref()
            ));
        }
    }
    Ok(())
}

/// The quotas a `set` gives an entity; `None` leaves one as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct QuotaValues {
    /// Bytes per second.
    pub producer_byte_rate: Option<u64>,
    /// Bytes per second.
    pub consumer_byte_rate: Option<u64>,
    /// Percent of one thread's time.
    pub request_percentage: Option<u64>,
}

/// Set the entity's quotas.
pub fn set(brokers: &str, args: &EntityArgs, values: QuotaValues) -> AdminResult {
    let ops: Vec<OpData> = [
        (PRODUCER_BYTE_RATE, values.producer_byte_rate),
        (CONSUMER_BYTE_RATE, values.consumer_byte_rate),
        (REQUEST_PERCENTAGE, values.request_percentage),
    ]
    .into_iter()
    .filter_map(|(key, rate)| {
        rate.map(|rate| {
            OpData::default()
                .with_key(str_bytes(key))
                .with_value(rate as f64)
        })
    })
    .collect();
    if ops.is_empty() {
        anyhow::bail!(
            "give one or more of --producer-byte-rate, --consumer-byte-rate and \
             --request-percentage"
        );
    }
    let set: Vec<String> = ops
        .iter()
        .map(|op| format!("{}={}", op.key.as_str(), op.value as u64))
        .collect();
    alter(
        brokers,
        EntryData::default()
            .with_entity(entity(args)?)
            .with_ops(ops),
    )?;
    println!("quotas set: {}", set.join(", "));
    Ok(())
}

/// Remove the entity's `keys` (all of them when none is named).
pub fn remove(brokers: &str, args: &EntityArgs, keys: &[String]) -> AdminResult {
    let keys: Vec<&str> = if keys.is_empty() {
        QUOTA_KEYS.to_vec()
    } else {
        keys.iter().map(String::as_str).collect()
    };
    let ops = keys
        .iter()
        .map(|key| OpData::default().with_key(str_bytes(key)).with_remove(true))
        .collect();
    alter(
        brokers,
        EntryData::default()
            .with_entity(entity(args)?)
            .with_ops(ops),
    )?;
    println!("quotas removed: {}", keys.join(", "));
    Ok(())
}

/// Every quota.
pub fn list(brokers: &str) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let response = client.call(&DescribeClientQuotasRequest::default().with_strict(false))?;
    if response.error_code != 0 {
        anyhow::bail!(describe_error(
            response.error_code,
            response.error_message.as_deref()
        ));
    }
    let mut table = Table::new(&["USER", "CLIENT-ID", "QUOTA", "VALUE"]);
    for entry in response.entries.iter().flatten() {
        let part = |entity_type: &str| {
            entry
                .entity
                .iter()
                .find(|part| part.entity_type.as_str() == entity_type)
                .map_or_else(
                    || "-".to_owned(),
                    |part| {
                        part.entity_name
                            .as_deref()
                            .map_or_else(|| "<default>".to_owned(), str::to_owned)
                    },
                )
        };
        for value in &entry.values {
            table.row(vec![
                part("user"),
                part("client-id"),
                value.key.to_string(),
                format!("{}", value.value as u64),
            ]);
        }
    }
    print!("{}", table.render());
    Ok(())
}
