//! Partition offsets for the admin commands: log start, log end and offsets
//! by time, through ListOffsets.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{describe_error, routing};
use crate::client::KafkaClient;

/// ListOffsets timestamp for the log end.
pub const LATEST: i64 = -1;
/// ListOffsets timestamp for the log start.
pub const EARLIEST: i64 = -2;

pub type PartitionKey = (String, i32);

/// How long [`list_offsets`] asks again while a partition's answer is
/// retriable.
const RETRIABLE_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// A partition's answer: its offset, or the error code it came with.
pub type Answer = Result<i64, i16>;

/// Errors a later try may not meet: right after CreateTopics a partition's
/// leader may not have created it yet, and around a failover the leader
/// moves (Kafka's tools retry these too). UNKNOWN_TOPIC_OR_PARTITION,
/// LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER.
fn retriable(error_code: i16) -> bool {
    matches!(error_code, 3 | 5 | 6)
}

/// For each partition, the offset ListOffsets gives for `timestamp`
/// (LATEST, EARLIEST or milliseconds); -1 when no record is that late.
/// Each partition is asked of its leader (in a cluster, the node `client`
/// is connected to may lead none of them); asked again, leaders looked up
/// again, for up to 5 s while an answer is retriable. The first partition
/// error is the error.
pub fn list_offsets(
    client: &mut KafkaClient,
    partitions: &[PartitionKey],
    timestamp: i64,
) -> anyhow::Result<BTreeMap<PartitionKey, i64>> {
    let mut offsets = BTreeMap::new();
    for (key, answer) in list_offsets_each(client, partitions, timestamp)? {
        match answer {
            Ok(offset) => offsets.insert(key, offset),
            Err(code) => anyhow::bail!(
                "ListOffsets {}-{}: {}",
                key.0,
                key.1,
                describe_error(code, None)
            ),
        };
    }
    Ok(offsets)
}

/// [`list_offsets`] with each partition's own answer: a partition that
/// stays unavailable (offline, no leader) after the retries keeps its
/// error code instead of failing the others.
pub fn list_offsets_each(
    client: &mut KafkaClient,
    partitions: &[PartitionKey],
    timestamp: i64,
) -> anyhow::Result<BTreeMap<PartitionKey, Answer>> {
    let deadline = std::time::Instant::now() + RETRIABLE_FOR;
    loop {
        let answers = list_offsets_once(client, partitions, timestamp)?;
        let again = answers.values().any(|answer| answer.is_err_and(retriable));
        if !again || std::time::Instant::now() >= deadline {
            return Ok(answers);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn list_offsets_once(
    client: &mut KafkaClient,
    partitions: &[PartitionKey],
    timestamp: i64,
) -> anyhow::Result<BTreeMap<PartitionKey, Answer>> {
    let topics: BTreeSet<&str> = partitions.iter().map(|(topic, _)| topic.as_str()).collect();
    let leaders = routing::leaders(client, &topics.into_iter().collect::<Vec<_>>())?;
    let mut by_leader: BTreeMap<&str, Vec<PartitionKey>> = BTreeMap::new();
    for key in partitions {
        // Without a known leader, the node asked answers with the reason.
        let address = leaders.get(key).map_or(client.address(), String::as_str);
        by_leader.entry(address).or_default().push(key.clone());
    }
    let by_leader: Vec<(String, Vec<PartitionKey>)> = by_leader
        .into_iter()
        .map(|(address, keys)| (address.to_owned(), keys))
        .collect();
    let mut offsets = BTreeMap::new();
    for (address, keys) in by_leader {
        let answered = match routing::connect_to(client, &address)? {
            Some(mut leader) => list_offsets_at(&mut leader, &keys, timestamp)?,
            None => list_offsets_at(client, &keys, timestamp)?,
        };
        offsets.extend(answered);
    }
    Ok(offsets)
}

/// [`list_offsets`] of the node `client` is connected to, once.
fn list_offsets_at(
    client: &mut KafkaClient,
    partitions: &[PartitionKey],
    timestamp: i64,
) -> anyhow::Result<BTreeMap<PartitionKey, Answer>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic).or_default().push(*partition);
    }
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(
            by_topic
                .iter()
                .map(|(topic, partitions)| {
                    ListOffsetsTopic::default()
                        .with_name(TopicName(StrBytes::from_string((*topic).to_owned())))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|&partition| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(partition)
                                        .with_timestamp(timestamp)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let response = client.call(&request)?;
    let mut offsets = BTreeMap::new();
    for topic in &response.topics {
        for partition in &topic.partitions {
            let answer = match partition.error_code {
                0 => Ok(partition.offset),
                code => Err(code),
            };
            offsets.insert((topic.name.to_string(), partition.partition_index), answer);
        }
    }
    Ok(offsets)
}

/// Partition counts of `topics` (all topics when empty), by name.
pub fn partition_counts(
    client: &mut KafkaClient,
    topics: &[String],
) -> anyhow::Result<BTreeMap<String, i32>> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let response = routing::metadata_of(client, &names)?;
    let mut counts = BTreeMap::new();
    for topic in &response.topics {
        let name = routing::topic_name(topic);
        if topic.error_code != 0 {
            anyhow::bail!("topic {name}: {}", describe_error(topic.error_code, None));
        }
        counts.insert(name, topic.partitions.len() as i32);
    }
    Ok(counts)
}
