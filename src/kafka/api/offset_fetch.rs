//! OffsetFetch: committed offsets of chosen partitions, or of all of a
//! group's partitions (topics = null); v8+ asks for several groups at once.
//! A partition without a committed offset gets -1. Offsets committed in a
//! transaction (TxnOffsetCommit) are not visible until its commit marker;
//! with `require_stable` (v7+, KIP-447) a partition that has such offsets
//! pending gets UNSTABLE_OFFSET_COMMIT (retriable) instead. v9 (KIP-848)
//! names the member asking: in a consumer-protocol group it must be a
//! member at its current epoch (UNKNOWN_MEMBER_ID, STALE_MEMBER_EPOCH for
//! the group otherwise); no member id and epoch -1 reads freely.
//!
//! A group needs DESCRIBE on it (GROUP_AUTHORIZATION_FAILED); a partition
//! named of a topic the principal may not DESCRIBE gets
//! TOPIC_AUTHORIZATION_FAILED, and a fetch of all partitions leaves such
//! topics out, as Kafka does.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};

use super::{by_topic, decode, str_bytes};
use crate::broker::group::offsets::{CommittedOffset, TopicPartition};
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{Operation, ResourceType};

/// Per partition: its committed offset, or the partition's error code.
type Fetched = Vec<(TopicPartition, Result<Option<CommittedOffset>, i16>)>;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let fetch: OffsetFetchRequest = decode(request, body)?;
    if request.version >= 8 {
        let mut groups = Vec::with_capacity(fetch.groups.len());
        for group in &fetch.groups {
            let wanted = group.topics.as_ref().map(|topics| {
                partitions_of(
                    topics
                        .iter()
                        .map(|topic| (&topic.name, &topic.partition_indexes)),
                )
            });
            let member = (
                group.member_id.as_ref().map(ToString::to_string),
                group.member_epoch,
            );
            let fetched = fetch_group(
                request,
                &group.group_id,
                wanted,
                fetch.require_stable,
                member,
            )
            .await;
            groups.push(group_response(&group.group_id, fetched));
        }
        return request.respond(OffsetFetchResponse::default().with_groups(groups));
    }
    let wanted = fetch.topics.as_ref().map(|topics| {
        partitions_of(
            topics
                .iter()
                .map(|topic| (&topic.name, &topic.partition_indexes)),
        )
    });
    let require_stable = request.version >= 7 && fetch.require_stable;
    let response =
        match fetch_group(request, &fetch.group_id, wanted, require_stable, (None, -1)).await {
            Ok(fetched) => OffsetFetchResponse::default().with_topics(topics_v7(fetched)),
            Err(code) => OffsetFetchResponse::default().with_error_code(code),
        };
    request.respond(response)
}

/// The partitions a request names, topic by topic.
fn partitions_of<'a>(
    topics: impl Iterator<Item = (&'a kafka_protocol::messages::TopicName, &'a Vec<i32>)>,
) -> Vec<TopicPartition> {
    topics
        .flat_map(|(name, partitions)| {
            partitions.iter().map(|&partition| TopicPartition {
                topic: name.to_string(),
                partition,
            })
        })
        .collect()
}

async fn fetch_group(
    request: &Request<'_>,
    group_id: &str,
    wanted: Option<Vec<TopicPartition>>,
    require_stable: bool,
    (member_id, member_epoch): (Option<String>, i32),
) -> Result<Fetched, i16> {
    let authorizer = request.authorizer();
    if !authorizer.group(Operation::Describe, group_id) {
        return Err(ResponseError::GroupAuthorizationFailed.code());
    }
    if group_id.is_empty() {
        return Err(ResponseError::InvalidGroupId.code());
    }
    let every_partition = wanted.is_none();
    let group = group_id.to_owned();
    let unstable = ResponseError::UnstableOffsetCommit.code();
    on_coordinator(
        request.shard,
        request.broker,
        group_id,
        move |coordinator| async move {
            coordinator.check_fetch(&group, member_id.as_deref(), member_epoch)?;
            Ok(coordinator
                .fetch(&group, wanted)
                .into_iter()
                .map(|(key, value)| {
                    if require_stable && coordinator.has_pending_txn_offset(&group, &key) {
                        (key, Err(unstable))
                    } else {
                        (key, Ok(value))
                    }
                })
                .collect())
        },
    )
    .await
    .and_then(|fetched: Result<Fetched, i16>| fetched)
    .map(|fetched| {
        let refused = ResponseError::TopicAuthorizationFailed.code();
        fetched
            .into_iter()
            .filter_map(|(key, value)| {
                let describable = if every_partition {
                    authorizer.allows_quietly(Operation::Describe, ResourceType::Topic, &key.topic)
                } else {
                    authorizer.topic(Operation::Describe, &key.topic)
                };
                if describable {
                    Some((key, value))
                } else if every_partition {
                    None
                } else {
                    Some((key, Err(refused)))
                }
            })
            .collect()
    })
}

/// (offset, leader epoch, metadata, error code) of one partition.
fn partition_values(value: Result<Option<CommittedOffset>, i16>) -> (i64, i32, String, i16) {
    match value {
        Ok(Some(value)) => (value.offset, value.leader_epoch, value.metadata, 0),
        Ok(None) => (-1, -1, String::new(), 0),
        Err(code) => (-1, -1, String::new(), code),
    }
}

fn topics_v7(fetched: Fetched) -> Vec<OffsetFetchResponseTopic> {
    by_topic(fetched.into_iter().map(|(key, value)| {
        let (offset, epoch, metadata, code) = partition_values(value);
        let partition = OffsetFetchResponsePartition::default()
            .with_partition_index(key.partition)
            .with_committed_offset(offset)
            .with_committed_leader_epoch(epoch)
            .with_metadata(Some(str_bytes(&metadata)))
            .with_error_code(code);
        (key.topic, partition)
    }))
    .into_iter()
    .map(|(name, partitions)| {
        OffsetFetchResponseTopic::default()
            .with_name(str_bytes(&name).into())
            .with_partitions(partitions)
    })
    .collect()
}

fn group_response(
    group_id: &kafka_protocol::messages::GroupId,
    fetched: Result<Fetched, i16>,
) -> OffsetFetchResponseGroup {
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(code) => {
            return OffsetFetchResponseGroup::default()
                .with_group_id(group_id.clone())
                .with_error_code(code);
        }
    };
    let topics = by_topic(fetched.into_iter().map(|(key, value)| {
        let (offset, epoch, metadata, code) = partition_values(value);
        let partition = OffsetFetchResponsePartitions::default()
            .with_partition_index(key.partition)
            .with_committed_offset(offset)
            .with_committed_leader_epoch(epoch)
            .with_metadata(Some(str_bytes(&metadata)))
            .with_error_code(code);
        (key.topic, partition)
    }))
    .into_iter()
    .map(|(name, partitions)| {
        OffsetFetchResponseTopics::default()
            .with_name(str_bytes(&name).into())
            .with_partitions(partitions)
    })
    .collect();
    OffsetFetchResponseGroup::default()
        .with_group_id(group_id.clone())
        .with_topics(topics)
}
