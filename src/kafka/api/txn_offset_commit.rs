//! TxnOffsetCommit (versions 0–3; KIP-98, KIP-447 for v3's member fields):
//! a transactional producer commits a consumer group's offsets as part of
//! its transaction (`send_offsets_to_transaction`).
//!
//! The group coordinator asks the transaction coordinator whether the
//! group's offsets partition is in the producer's open transaction
//! (AddOffsetsToTxn adds it): INVALID_TXN_STATE, INVALID_PRODUCER_EPOCH or
//! INVALID_PRODUCER_ID_MAPPING for every partition if not (with a token
//! against a marker landing meanwhile, as Produce). It also checks the member like OffsetCommit (v3: generation, member
//! and instance id: ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
//! FENCED_INSTANCE_ID; v0–2 carry none) and each partition
//! (UNKNOWN_TOPIC_OR_PARTITION, OFFSET_METADATA_TOO_LARGE), and appends the
//! offsets to the group's partition as a transactional batch. They become
//! the group's committed offsets when the transaction commits, and vanish
//! if it aborts. Versions 4+ (KIP-890) are not served.
//!
//! It needs WRITE on the transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED
//! for every partition), READ on the group (GROUP_AUTHORIZATION_FAILED) and
//! READ on each topic (TOPIC_AUTHORIZATION_FAILED for its partitions; the
//! others are committed).

use bytes::Bytes;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::{check_partition_count, decode};
use crate::broker::group::coordinator::now_ms;
use crate::broker::group::membership::MemberClaim;
use crate::broker::group::offsets::{CommittedOffset, TopicPartition};
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

/// The first version with member fields (KIP-447).
const MEMBER_FIELDS_FROM_VERSION: i16 = 3;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let commit: TxnOffsetCommitRequest = decode(request, body)?;
    check_partition_count(
        request,
        commit
            .topics
            .iter()
            .map(|topic| topic.partitions.len())
            .sum(),
    )?;
    let group = commit.group_id.0.to_string();
    let (producer_id, epoch) = (commit.producer_id.0, commit.producer_epoch);
    let offsets: Vec<(TopicPartition, CommittedOffset)> = commit
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|partition| {
                (
                    TopicPartition {
                        topic: topic.name.0.to_string(),
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
                        commit_timestamp_ms: now_ms(),
                    },
                )
            })
        })
        .collect();
    let codes = commit_offsets(request, &commit, group, producer_id, epoch, offsets).await;
    let mut codes = codes.into_iter();
    let topics = commit
        .topics
        .iter()
        .map(|topic| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|partition| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(partition.partition_index)
                                .with_error_code(codes.next().unwrap_or(0))
                        })
                        .collect(),
                )
        })
        .collect();
    request.respond(TxnOffsetCommitResponse::default().with_topics(topics))
}

/// One code per offset, in request order.
async fn commit_offsets(
    request: &Request<'_>,
    commit: &TxnOffsetCommitRequest,
    group: String,
    producer_id: i64,
    epoch: i16,
    offsets: Vec<(TopicPartition, CommittedOffset)>,
) -> Vec<i16> {
    let count = offsets.len();
    let all = |code: i16| vec![code; count];
    let authorizer = request.authorizer();
    if !authorizer.transactional_id(Operation::Write, &commit.transactional_id.0) {
        return all(kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    if !authorizer.group(Operation::Read, &group) {
        return all(kafka_protocol::ResponseError::GroupAuthorizationFailed.code());
    }
    if group.is_empty() {
        return all(kafka_protocol::ResponseError::InvalidGroupId.code());
    }
    let (offsets, refused) = super::topic_access::split(
        offsets,
        |(key, _)| key.topic.as_str(),
        |topic| authorizer.topic(Operation::Read, topic),
    );
    if refused.all() {
        return refused.merge(Vec::new());
    }
    let transactional_id = commit.transactional_id.0.to_string();
    let with_member = request.version >= MEMBER_FIELDS_FROM_VERSION;
    let member_id = if with_member {
        commit.member_id.to_string()
    } else {
        String::new()
    };
    let instance_id = commit
        .group_instance_id
        .as_ref()
        .filter(|_| with_member)
        .map(ToString::to_string);
    let generation = if with_member {
        commit.generation_id
    } else {
        -1
    };
    let group_key = group.clone();
    on_coordinator(
        request.shard,
        request.broker,
        &group_key,
        move |coordinator| async move {
            let claim = MemberClaim {
                member_id: &member_id,
                instance_id: instance_id.as_deref(),
                generation,
            };
            coordinator
                .txn_commit(
                    &transactional_id,
                    &group,
                    &claim,
                    producer_id,
                    epoch,
                    offsets,
                )
                .await
        },
    )
    .await
    .and_then(|codes| codes)
    .map(|codes| refused.merge(codes))
    .unwrap_or_else(all)
}
