//! `sluice groups list|describe|delete|reset-offsets`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use bytes::{Buf, Bytes};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerProtocolAssignment, DeleteGroupsRequest,
    DescribeGroupsRequest, GroupId, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::offsets::{self, EARLIEST, LATEST, PartitionKey};
use super::table::Table;
use super::{AdminResult, describe_error, routing};
use crate::client::KafkaClient;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// A client connected to `group`'s coordinator (in a cluster, one node
/// coordinates each group).
fn connect(brokers: &str, group: &str) -> anyhow::Result<KafkaClient> {
    routing::connect_to_coordinator(brokers, group, routing::GROUP)
}

/// Every group of every node (each coordinator lists its own).
pub fn list(brokers: &str) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let answers = routing::on_every_node(&mut client, |node| {
        let response = node.call(&ListGroupsRequest::default())?;
        if response.error_code != 0 {
            anyhow::bail!(describe_error(response.error_code, None));
        }
        Ok(response.groups)
    })?;
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
    let mut groups: Vec<_> = answers.iter().flatten().collect();
    groups.sort_by(|a, b| a.group_id.as_str().cmp(b.group_id.as_str()));
    groups.dedup_by(|a, b| a.group_id == b.group_id);
    for group in groups {
        table.row(vec![
            group.group_id.to_string(),
            group.group_state.to_string(),
            group.protocol_type.to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// Who holds a partition: (member id, client id, host).
type Holder = (String, String, String);

struct GroupView {
    state: String,
    protocol: String,
    members: usize,
    holders: BTreeMap<PartitionKey, Holder>,
}

fn describe_group(client: &mut KafkaClient, group: &str) -> anyhow::Result<GroupView> {
    let response =
        client.call(&DescribeGroupsRequest::default().with_groups(vec![GroupId(text(group))]))?;
    let described = response
        .groups
        .first()
        .context("empty DescribeGroups response")?;
    if described.error_code != 0 {
        anyhow::bail!(
            "group {group}: {}",
            describe_error(described.error_code, None)
        );
    }
    // DescribeGroups sees a consumer-protocol (KIP-848) group as Dead;
    // ConsumerGroupDescribe describes it.
    if described.group_state.as_str() == "Dead"
        && let Some(view) = describe_consumer_group(client, group)?
    {
        return Ok(view);
    }
    let mut holders = BTreeMap::new();
    for member in &described.members {
        for key in assigned_partitions(&member.member_assignment) {
            holders.insert(
                key,
                (
                    member.member_id.to_string(),
                    member.client_id.to_string(),
                    member.client_host.to_string(),
                ),
            );
        }
    }
    Ok(GroupView {
        state: described.group_state.to_string(),
        protocol: described.protocol_data.to_string(),
        members: described.members.len(),
        holders,
    })
}

/// A consumer-protocol group's view, or `None` if `group` is not one (or the
/// broker has no ConsumerGroupDescribe). Its protocol is its assignor.
fn describe_consumer_group(
    client: &mut KafkaClient,
    group: &str,
) -> anyhow::Result<Option<GroupView>> {
    if client.version_of::<ConsumerGroupDescribeRequest>().is_err() {
        return Ok(None);
    }
    let response = client.call(
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(text(group))]),
    )?;
    let Some(described) = response
        .groups
        .first()
        .filter(|group| group.error_code == 0)
    else {
        return Ok(None);
    };
    let mut holders = BTreeMap::new();
    for member in &described.members {
        for topic in &member.assignment.topic_partitions {
            for &partition in &topic.partitions {
                holders.insert(
                    (topic.topic_name.to_string(), partition),
                    (
                        member.member_id.to_string(),
                        member.client_id.to_string(),
                        member.client_host.to_string(),
                    ),
                );
            }
        }
    }
    Ok(Some(GroupView {
        state: described.group_state.to_string(),
        protocol: format!("consumer ({})", described.assignor_name),
        members: described.members.len(),
        holders,
    }))
}

/// The partitions in a consumer-protocol assignment (empty if it is not one).
pub(crate) fn assigned_partitions(assignment: &Bytes) -> Vec<PartitionKey> {
    let mut bytes = assignment.clone();
    if bytes.remaining() < 2 {
        return Vec::new();
    }
    let version = bytes.get_i16().clamp(0, 3);
    let Ok(decoded) = ConsumerProtocolAssignment::decode(&mut bytes, version) else {
        return Vec::new();
    };
    decoded
        .assigned_partitions
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|&partition| (topic.topic.to_string(), partition))
        })
        .collect()
}

/// The group's committed offsets (all partitions).
pub(crate) fn committed(
    client: &mut KafkaClient,
    group: &str,
) -> anyhow::Result<BTreeMap<PartitionKey, i64>> {
    let version = client.version_of::<OffsetFetchRequest>()?;
    let mut request = OffsetFetchRequest::default();
    if version >= 8 {
        request.groups = vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(text(group)))
                .with_topics(None),
        ];
    } else {
        request.group_id = GroupId(text(group));
        request.topics = None;
    }
    let response = client.call_at(&request, version)?;
    let mut offsets = BTreeMap::new();
    if version >= 8 {
        for fetched in &response.groups {
            if fetched.error_code != 0 {
                anyhow::bail!(
                    "group {group}: {}",
                    describe_error(fetched.error_code, None)
                );
            }
            for topic in &fetched.topics {
                for partition in &topic.partitions {
                    offsets.insert(
                        (topic.name.to_string(), partition.partition_index),
                        partition.committed_offset,
                    );
                }
            }
        }
    } else {
        if response.error_code != 0 {
            anyhow::bail!(
                "group {group}: {}",
                describe_error(response.error_code, None)
            );
        }
        for topic in &response.topics {
            for partition in &topic.partitions {
                offsets.insert(
                    (topic.name.to_string(), partition.partition_index),
                    partition.committed_offset,
                );
            }
        }
    }
    Ok(offsets)
}

pub fn describe(brokers: &str, group: &str) -> AdminResult {
    let mut client = connect(brokers, group)?;
    let view = describe_group(&mut client, group)?;
    let committed = committed(&mut client, group)?;
    if view.state == "Dead" && committed.is_empty() {
        anyhow::bail!("group {group} does not exist");
    }
    println!("GROUP     {group}");
    println!("STATE     {}", view.state);
    println!(
        "PROTOCOL  {}",
        if view.protocol.is_empty() {
            "-"
        } else {
            &view.protocol
        }
    );
    println!("MEMBERS   {}", view.members);
    let partitions: BTreeSet<PartitionKey> = committed
        .keys()
        .chain(view.holders.keys())
        .cloned()
        .collect();
    let partitions: Vec<PartitionKey> = partitions.into_iter().collect();
    let ends = if partitions.is_empty() {
        BTreeMap::new()
    } else {
        offsets::list_offsets(&mut client, &partitions, LATEST)?
    };
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "MEMBER-ID",
        "CLIENT-ID",
        "HOST",
    ]);
    let mut total_lag = 0;
    for key in &partitions {
        let current = committed.get(key).copied().filter(|offset| *offset >= 0);
        let end = ends.get(key).copied().unwrap_or(-1);
        let lag = current.map(|current| (end - current).max(0));
        total_lag += lag.unwrap_or(0);
        let (member, client_id, host) = view.holders.get(key).cloned().unwrap_or_default();
        let dash = |value: String| {
            if value.is_empty() {
                "-".to_owned()
            } else {
                value
            }
        };
        table.row(vec![
            key.0.clone(),
            key.1.to_string(),
            current.map_or("-".to_owned(), |offset| offset.to_string()),
            end.to_string(),
            lag.map_or("-".to_owned(), |lag| lag.to_string()),
            dash(member),
            dash(client_id),
            dash(host),
        ]);
    }
    println!("TOTAL-LAG {total_lag}");
    println!();
    print!("{}", table.render());
    Ok(())
}

pub fn delete(brokers: &str, group: &str) -> AdminResult {
    let mut client = connect(brokers, group)?;
    let response = client
        .call(&DeleteGroupsRequest::default().with_groups_names(vec![GroupId(text(group))]))?;
    let result = response
        .results
        .first()
        .context("empty DeleteGroups response")?;
    if result.error_code != 0 {
        anyhow::bail!(
            "cannot delete group {group}: {}",
            describe_error(result.error_code, None)
        );
    }
    println!("deleted group {group}");
    Ok(())
}

/// Where `reset-offsets` moves each partition.
#[derive(Clone, Copy, Debug)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
    TimestampMs(i64),
    ShiftBy(i64),
}

pub struct ResetRequest<'a> {
    pub group: &'a str,
    /// Topics to reset; empty with `all_topics` means every topic the group
    /// has committed offsets for.
    pub topics: &'a [String],
    pub all_topics: bool,
    pub to: ResetTo,
    pub execute: bool,
}

pub fn reset_offsets(brokers: &str, reset: &ResetRequest<'_>) -> AdminResult {
    let mut client = connect(brokers, reset.group)?;
    let view = describe_group(&mut client, reset.group)?;
    if reset.execute && view.state != "Empty" && view.state != "Dead" {
        anyhow::bail!(
            "group {} is {} with {} members: stop its consumers first (offsets can only be reset while the group is empty)",
            reset.group,
            view.state,
            view.members
        );
    }
    let committed = committed(&mut client, reset.group)?;
    let topics: Vec<String> = if reset.all_topics {
        committed
            .keys()
            .map(|(topic, _)| topic.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        reset.topics.to_vec()
    };
    if topics.is_empty() {
        anyhow::bail!("name the topics with --topic, or use --all-topics");
    }
    let counts = offsets::partition_counts(&mut client, &topics)?;
    let partitions: Vec<PartitionKey> = counts
        .iter()
        .flat_map(|(topic, &count)| (0..count).map(move |partition| (topic.clone(), partition)))
        .collect();
    let starts = offsets::list_offsets(&mut client, &partitions, EARLIEST)?;
    let ends = offsets::list_offsets(&mut client, &partitions, LATEST)?;
    let by_time = match reset.to {
        ResetTo::TimestampMs(ms) => Some(offsets::list_offsets(&mut client, &partitions, ms)?),
        _ => None,
    };
    let mut plan: Vec<(PartitionKey, Option<i64>, i64)> = Vec::new();
    for key in &partitions {
        let start = starts.get(key).copied().unwrap_or(0);
        let end = ends.get(key).copied().unwrap_or(0);
        let current = committed.get(key).copied().filter(|offset| *offset >= 0);
        let target = match reset.to {
            ResetTo::Earliest => start,
            ResetTo::Latest => end,
            ResetTo::Offset(offset) => offset,
            ResetTo::TimestampMs(_) => by_time
                .as_ref()
                .and_then(|found| found.get(key).copied())
                .filter(|offset| *offset >= 0)
                .unwrap_or(end),
            ResetTo::ShiftBy(delta) => current.unwrap_or(start).saturating_add(delta),
        };
        plan.push((key.clone(), current, target.clamp(start, end)));
    }
    let mut table = Table::new(&["TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"]);
    for ((topic, partition), current, target) in &plan {
        table.row(vec![
            topic.clone(),
            partition.to_string(),
            current.map_or("-".to_owned(), |offset| offset.to_string()),
            target.to_string(),
        ]);
    }
    print!("{}", table.render());
    if !reset.execute {
        println!("(dry run: nothing changed; add --execute to commit these offsets)");
        return Ok(());
    }
    commit_plan(&mut client, reset.group, &plan)?;
    println!("committed new offsets for group {}", reset.group);
    Ok(())
}

/// Commit each partition's new offset (the plan's last field) for `group`,
/// as a client outside the group does (generation -1, no member id).
pub(crate) fn commit_plan(
    client: &mut KafkaClient,
    group: &str,
    plan: &[(PartitionKey, Option<i64>, i64)],
) -> AdminResult {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((topic, partition), _, target) in plan {
        by_topic.entry(topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*target)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(text(""))),
        );
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(text(""))
        .with_retention_time_ms(-1)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(text(topic)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let response = client.call(&request)?;
    for topic in &response.topics {
        for partition in &topic.partitions {
            if partition.error_code != 0 {
                anyhow::bail!(
                    "committing {}-{} failed: {}",
                    topic.name.as_str(),
                    partition.partition_index,
                    describe_error(partition.error_code, None)
                );
            }
        }
    }
    Ok(())
}
