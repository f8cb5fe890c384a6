//! `sluice topics list|create|describe|alter|delete`.

use anyhow::Context;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::offsets::{self, EARLIEST, LATEST};
use super::table::Table;
use super::{AdminResult, describe_error};
use crate::broker::metadata::TopicId;
use crate::client::KafkaClient;

/// DescribeConfigs resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// DescribeConfigs config source: set on the topic.
const SOURCE_TOPIC: i8 = 1;
/// IncrementalAlterConfigs operations (KIP-339).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

pub fn list(brokers: &str) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let counts = offsets::partition_counts(&mut client, &[])?;
    let mut table = Table::new(&["NAME", "PARTITIONS"]);
    for (name, partitions) in counts {
        table.row(vec![name, partitions.to_string()]);
    }
    print!("{}", table.render());
    Ok(())
}

/// Create topic `name`; `None` counts take the broker's defaults (-1 in
/// CreateTopics v4+, KIP-464).
pub fn create(
    brokers: &str,
    name: &str,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: &[(String, String)],
) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let topic = CreatableTopic::default()
        .with_name(TopicName(text(name)))
        .with_num_partitions(partitions.unwrap_or(-1))
        .with_replication_factor(replication_factor.unwrap_or(-1))
        .with_configs(
            configs
                .iter()
                .map(|(key, value)| {
                    CreatableTopicConfig::default()
                        .with_name(text(key))
                        .with_value(Some(text(value)))
                })
                .collect(),
        );
    let response = client.call(
        &CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(30_000),
    )?;
    let result = response
        .topics
        .first()
        .context("empty CreateTopics response")?;
    if result.error_code != 0 {
        anyhow::bail!(
            "cannot create {name}: {}",
            describe_error(result.error_code, result.error_message.as_deref())
        );
    }
    let created = if result.num_partitions > 0 {
        result.num_partitions
    } else {
        partitions.unwrap_or_default()
    };
    let plural = if created == 1 { "" } else { "s" };
    println!("created topic {name} with {created} partition{plural}");
    Ok(())
}

pub fn describe(brokers: &str, name: &str) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let counts = offsets::partition_counts(&mut client, &[name.to_owned()])?;
    let partitions = counts.get(name).copied().unwrap_or(0);
    let configs = client.call(&DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(text(name))
                .with_configuration_keys(None),
        ]))?;
    println!("NAME        {name}");
    let metadata = topic_metadata(&mut client, name)?;
    let id = metadata
        .as_ref()
        .map(|topic| TopicId(*topic.topic_id.as_bytes()))
        .filter(|id| *id != TopicId::ZERO);
    if let Some(id) = id {
        println!("ID          {id}");
    }
    println!("PARTITIONS  {partitions}");
    if let Some(resource) = configs.results.first() {
        let set: Vec<String> = resource
            .configs
            .iter()
            .filter(|config| config.config_source == SOURCE_TOPIC)
            .map(|config| {
                format!(
                    "{}={}",
                    config.name.as_str(),
                    config.value.as_deref().unwrap_or("")
                )
            })
            .collect();
        println!(
            "CONFIGS     {}",
            if set.is_empty() {
                "(defaults)".to_owned()
            } else {
                set.join(", ")
            }
        );
    }
    let keys: Vec<offsets::PartitionKey> = (0..partitions)
        .map(|partition| (name.to_owned(), partition))
        .collect();
    let starts = offsets::list_offsets_each(&mut client, &keys, EARLIEST)?;
    let ends = offsets::list_offsets_each(&mut client, &keys, LATEST)?;
    // High watermark minus log start: the offsets a consumer reads through.
    // On a compacted topic fewer records remain than offsets, so no record
    // count is claimed. Leader, replicas and in-sync replicas as Metadata
    // gives them (kafka-topics.sh --describe); a partition without a
    // leader shows -1 and why its offsets are missing.
    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "ISR",
        "LOG-START-OFFSET",
        "HIGH-WATERMARK",
        "OFFSETS",
    ]);
    let mut unavailable = Vec::new();
    for key in &keys {
        let placed = metadata.as_ref().and_then(|topic| {
            topic
                .partitions
                .iter()
                .find(|partition| partition.partition_index == key.1)
        });
        let nodes = |ids: &[BrokerId]| {
            ids.iter()
                .map(|id| id.0.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let (leader, replicas, in_sync) = placed.map_or_else(
            || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            |partition| {
                (
                    partition.leader_id.0.to_string(),
                    nodes(&partition.replica_nodes),
                    nodes(&partition.isr_nodes),
                )
            },
        );
        let mut row = vec![key.1.to_string(), leader, replicas, in_sync];
        match (starts.get(key), ends.get(key)) {
            (Some(Ok(start)), Some(Ok(end))) => row.extend([
                start.to_string(),
                end.to_string(),
                (end - start).max(0).to_string(),
            ]),
            (start, end) => {
                let code = [start, end]
                    .into_iter()
                    .find_map(|answer| answer.and_then(|answer| answer.err()));
                unavailable.push(format!(
                    "partition {}: {}",
                    key.1,
                    code.map_or_else(|| "no answer".to_owned(), |code| describe_error(code, None))
                ));
                row.extend(["-".to_owned(), "-".to_owned(), "-".to_owned()]);
            }
        }
        table.row(row);
    }
    println!();
    print!("{}", table.render());
    for line in &unavailable {
        println!("{line}");
    }
    if !unavailable.is_empty() {
        anyhow::bail!(
            "{} of {} partitions did not answer (offline: no in-sync replica is up, or moving)",
            unavailable.len(),
            keys.len()
        );
    }
    Ok(())
}

/// The topic as Metadata describes it: its id (KIP-516; zero from a broker
/// without ids) and its partitions' leaders, replicas and in-sync replicas.
fn topic_metadata(
    client: &mut KafkaClient,
    name: &str,
) -> anyhow::Result<Option<MetadataResponseTopic>> {
    let response = client.call(
        &MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(TopicName(text(name)))),
            ]))
            .with_allow_auto_topic_creation(false),
    )?;
    Ok(response.topics.into_iter().next())
}

/// Set `configs` and remove `deleted` on topic `name`, in one
/// IncrementalAlterConfigs request (KIP-339): the broker applies all or
/// none.
pub fn alter(
    brokers: &str,
    name: &str,
    configs: &[(String, String)],
    deleted: &[String],
) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let changes = configs
        .iter()
        .map(|(key, value)| {
            AlterableConfig::default()
                .with_name(text(key))
                .with_config_operation(OP_SET)
                .with_value(Some(text(value)))
        })
        .chain(deleted.iter().map(|key| {
            AlterableConfig::default()
                .with_name(text(key))
                .with_config_operation(OP_DELETE)
        }))
        .collect();
    let response = client.call(
        &IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(text(name))
                .with_configs(changes),
        ]),
    )?;
    let result = response
        .responses
        .first()
        .context("empty IncrementalAlterConfigs response")?;
    if result.error_code != 0 {
        anyhow::bail!(
            "cannot alter {name}: {}",
            describe_error(result.error_code, result.error_message.as_deref())
        );
    }
    println!("altered topic {name}");
    Ok(())
}

pub fn delete(brokers: &str, name: &str) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let version = client.version_of::<DeleteTopicsRequest>()?;
    let mut request = DeleteTopicsRequest::default().with_timeout_ms(30_000);
    if version >= 6 {
        request.topics = vec![DeleteTopicState::default().with_name(Some(TopicName(text(name))))];
    } else {
        request.topic_names = vec![TopicName(text(name))];
    }
    let response = client.call_at(&request, version)?;
    let result = response
        .responses
        .first()
        .context("empty DeleteTopics response")?;
    if result.error_code != 0 {
        anyhow::bail!(
            "cannot delete {name}: {}",
            describe_error(result.error_code, result.error_message.as_deref())
        );
    }
    println!("deleted topic {name}");
    Ok(())
}
