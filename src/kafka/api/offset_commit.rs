//! OffsetCommit: store consumed positions, durably, in `__consumer_offsets`;
//! answered after the fdatasync that covers them. Members must be of the
//! current generation; clients that assign partitions themselves commit with
//! generation -1 while the group has no members. In a consumer-protocol
//! group (KIP-848) the generation field is the member epoch: another epoch is
//! STALE_MEMBER_EPOCH, and its members must use v9 (UNSUPPORTED_VERSION
//! below); from v9 a commit to an unknown group is GROUP_ID_NOT_FOUND.
//! A commit needs READ on the group (GROUP_AUTHORIZATION_FAILED for every
//! partition) and READ on each topic (TOPIC_AUTHORIZATION_FAILED for its
//! partitions; the others are committed).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::{decode, topic_access};
use crate::broker::group::coordinator::now_ms;
use crate::broker::group::membership::MemberClaim;
use crate::broker::group::offsets::{CommittedOffset, TopicPartition};
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let commit: OffsetCommitRequest = decode(request, body)?;
    let group_id = commit.group_id.to_string();
    let now = now_ms();
    let offsets: Vec<(TopicPartition, CommittedOffset)> = commit
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|partition| {
                (
                    TopicPartition {
                        topic: topic.name.to_string(),
                        partition: partition.partition_index,
                    },
                    CommittedOffset {
                        offset: partition.committed_offset,
                        leader_epoch: partition.committed_leader_epoch,
                        metadata: partition
                            .committed_metadata
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        commit_timestamp_ms: now,
                    },
                )
            })
        })
        .collect();
    let keys: Vec<TopicPartition> = offsets.iter().map(|(key, _)| key.clone()).collect();
    let authorizer = request.authorizer();
    let (offsets, refused) = topic_access::split(
        offsets,
        |(key, _)| key.topic.as_str(),
        |topic| authorizer.topic(Operation::Read, topic),
    );
    let codes = if !authorizer.group(Operation::Read, &group_id) {
        Err(ResponseError::GroupAuthorizationFailed.code())
    } else if group_id.is_empty() {
        Err(ResponseError::InvalidGroupId.code())
    } else if refused.all() {
        Ok(Vec::new())
    } else {
        let group = group_id.clone();
        let member = commit.member_id.to_string();
        let instance = commit.group_instance_id.as_ref().map(ToString::to_string);
        let generation = commit.generation_id_or_member_epoch;
        let version = request.version;
        on_coordinator(
            request.shard,
            request.broker,
            &group_id,
            move |coordinator| async move {
                let claim = MemberClaim {
                    member_id: &member,
                    instance_id: instance.as_deref(),
                    generation,
                };
                coordinator.commit(&group, &claim, version, offsets).await
            },
        )
        .await
        .and_then(|codes| codes)
    };
    let codes = match codes {
        Ok(codes) => refused.merge(codes),
        Err(code) => vec![code; keys.len()],
    };
    request.respond(OffsetCommitResponse::default().with_topics(by_topic(&keys, &codes)))
}

/// Group per-partition codes under their topics, in request order.
fn by_topic(keys: &[TopicPartition], codes: &[i16]) -> Vec<OffsetCommitResponseTopic> {
    let partitions = keys.iter().zip(codes).map(|(key, &code)| {
        let partition = OffsetCommitResponsePartition::default()
            .with_partition_index(key.partition)
            .with_error_code(code);
        (key.topic.clone(), partition)
    });
    super::by_topic(partitions)
        .into_iter()
        .map(|(name, partitions)| {
            OffsetCommitResponseTopic::default()
                .with_name(super::str_bytes(&name).into())
                .with_partitions(partitions)
        })
        .collect()
}
