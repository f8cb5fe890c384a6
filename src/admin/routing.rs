//! Where an admin request must go in a cluster: a group's or a
//! transactional id's coordinator (FindCoordinator, KIP-699 batches from
//! v4), a partition's leader (Metadata), or every node (ListGroups and
//! ListTransactions answer for the coordinator asked only). On a single
//! node each of these is the node the command connected to.

use std::collections::BTreeMap;

use anyhow::Context;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::describe_error;
use crate::client::KafkaClient;

/// FindCoordinator key type of a consumer group.
pub const GROUP: i8 = 0;
/// FindCoordinator key type of a transactional id.
pub const TRANSACTION: i8 = 1;

/// Every node of the cluster `client` is connected to, by id: its
/// `host:port` (Metadata's broker list).
pub fn nodes(client: &mut KafkaClient) -> anyhow::Result<BTreeMap<i32, String>> {
    let response = client.call(&MetadataRequest::default().with_topics(Some(Vec::new())))?;
    Ok(response
        .brokers
        .iter()
        .map(|broker| {
            (
                broker.node_id.0,
                format!("{}:{}", broker.host.as_str(), broker.port),
            )
        })
        .collect())
}

/// A client connected to `address`, reusing `client` when it is the one.
pub fn connect_to(client: &mut KafkaClient, address: &str) -> anyhow::Result<Option<KafkaClient>> {
    if client.address() == address {
        return Ok(None);
    }
    let other = KafkaClient::connect(address)
        .with_context(|| format!("connecting to the node at {address}"))?;
    Ok(Some(other))
}

/// The `host:port` of the coordinator of `key` (`key_type`: [`GROUP`] or
/// [`TRANSACTION`]).
pub fn coordinator(client: &mut KafkaClient, key: &str, key_type: i8) -> anyhow::Result<String> {
    let version = client.version_of::<FindCoordinatorRequest>()?;
    let key_text = StrBytes::from_string(key.to_owned());
    let request = if version >= 4 {
        FindCoordinatorRequest::default()
            .with_key_type(key_type)
            .with_coordinator_keys(vec![key_text])
    } else {
        FindCoordinatorRequest::default()
            .with_key_type(key_type)
            .with_key(key_text)
    };
    let response = client.call_at(&request, version)?;
    let (error, host, port) = match response.coordinators.first() {
        Some(found) if version >= 4 => (found.error_code, found.host.to_string(), found.port),
        _ => (
            response.error_code,
            response.host.to_string(),
            response.port,
        ),
    };
    if error != 0 {
        anyhow::bail!("no coordinator for {key}: {}", describe_error(error, None));
    }
    Ok(format!("{host}:{port}"))
}

/// A client connected to the coordinator of `key` (`key_type`: [`GROUP`]
/// or [`TRANSACTION`]), found through the first of `brokers` that answers.
pub fn connect_to_coordinator(
    brokers: &str,
    key: &str,
    key_type: i8,
) -> anyhow::Result<KafkaClient> {
    let mut client = KafkaClient::connect(brokers)?;
    let address = coordinator(&mut client, key, key_type)?;
    Ok(connect_to(&mut client, &address)?.unwrap_or(client))
}

/// Run `call` against every node of the cluster `client` is connected to
/// (the node itself included), in node id order.
pub fn on_every_node<T>(
    client: &mut KafkaClient,
    mut call: impl FnMut(&mut KafkaClient) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let mut answers = Vec::new();
    for address in nodes(client)?.values() {
        let answer = match connect_to(client, address)? {
            Some(mut other) => call(&mut other),
            None => call(client),
        };
        answers.push(answer.with_context(|| format!("asking the node at {address}"))?);
    }
    Ok(answers)
}

/// Metadata for `topics` (every topic when empty), never creating one.
pub fn metadata_of(client: &mut KafkaClient, topics: &[&str]) -> anyhow::Result<MetadataResponse> {
    let listed = (!topics.is_empty()).then(|| {
        topics
            .iter()
            .map(|name| {
                MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string((*name).to_owned()))))
            })
            .collect()
    });
    let request = MetadataRequest::default()
        .with_topics(listed)
        .with_allow_auto_topic_creation(false);
    Ok(client.call(&request)?)
}

/// A Metadata answer's topic name ("" when it has none).
pub fn topic_name(topic: &MetadataResponseTopic) -> String {
    topic
        .name
        .as_ref()
        .map(|name| name.0.to_string())
        .unwrap_or_default()
}

/// Each partition's leader `host:port` for `topics` (Metadata), by
/// (topic, partition); partitions without a leader are left out.
pub fn leaders(
    client: &mut KafkaClient,
    topics: &[&str],
) -> anyhow::Result<BTreeMap<(String, i32), String>> {
    let nodes = nodes(client)?;
    let response = metadata_of(client, topics)?;
    let mut leaders = BTreeMap::new();
    for topic in &response.topics {
        let name = topic_name(topic);
        for partition in &topic.partitions {
            if let Some(address) = nodes.get(&partition.leader_id.0) {
                leaders.insert((name.clone(), partition.partition_index), address.clone());
            }
        }
    }
    Ok(leaders)
}
