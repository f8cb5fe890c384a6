//! ConsumerGroupDescribe (API 69, KIP-848): a consumer-protocol group's
//! state, epochs, assignor and members, each with its subscription, its
//! current assignment and its target. v1 adds each member's type (0: joined
//! with the classic protocol, 1: the consumer protocol; KIP-1099). A group
//! that does not exist, or is a classic group, gets GROUP_ID_NOT_FOUND. A
//! group the principal may not DESCRIBE gets GROUP_AUTHORIZATION_FAILED,
//! and one whose members are assigned or subscribed to a topic the
//! principal may not DESCRIBE gets TOPIC_AUTHORIZATION_FAILED, as in Kafka.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse};

use super::{AUTHORIZED_OPERATIONS_UNKNOWN, decode, str_bytes};
use crate::broker::group::consumer_coordinator::{
    ConsumerGroupDescription, ConsumerMemberDescription, DescribedPartitions,
};
use crate::broker::group::on_coordinator;
use crate::kafka::authorize::Authorizer;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{Operation, ResourceType};

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: ConsumerGroupDescribeRequest = decode(request, body)?;
    let authorizer = request.authorizer();
    let mut groups = Vec::with_capacity(describe.group_ids.len());
    for group_id in &describe.group_ids {
        let group = group_id.to_string();
        let entry = DescribedGroup::default()
            .with_group_id(group_id.clone())
            .with_authorized_operations(AUTHORIZED_OPERATIONS_UNKNOWN);
        if group_id.is_empty() {
            groups.push(entry.with_error_code(ResponseError::InvalidGroupId.code()));
            continue;
        }
        if !authorizer.group(Operation::Describe, &group) {
            groups.push(entry.with_error_code(ResponseError::GroupAuthorizationFailed.code()));
            continue;
        }
        let entry = entry.with_authorized_operations(authorizer.operations(
            describe.include_authorized_operations,
            ResourceType::Group,
            &group,
        ));
        let described = on_coordinator(
            request.shard,
            request.broker,
            group_id,
            move |coordinator| async move { coordinator.consumer_describe(&group) },
        )
        .await;
        groups.push(match described {
            Err(code) => entry.with_error_code(code),
            Ok(Err(error)) => entry
                .with_error_code(error.error.code())
                .with_error_message(Some(str_bytes(&error.message))),
            Ok(Ok(description)) if !topics_describable(&authorizer, &description) => entry
                .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                .with_error_message(Some(str_bytes(
                    "the group's members use topics this principal may not describe",
                ))),
            Ok(Ok(description)) => described_group(entry, description),
        });
    }
    request.respond(ConsumerGroupDescribeResponse::default().with_groups(groups))
}

/// Whether every topic the group's members subscribe to or are assigned
/// may be described.
fn topics_describable(authorizer: &Authorizer, description: &ConsumerGroupDescription) -> bool {
    description.members.iter().all(|member| {
        let assigned = member
            .assignment
            .iter()
            .chain(&member.target)
            .map(|(_, name, _)| name.as_str());
        member
            .subscribed_topic_names
            .iter()
            .map(String::as_str)
            .chain(assigned)
            .all(|name| authorizer.topic(Operation::Describe, name))
    })
}

fn described_group(entry: DescribedGroup, description: ConsumerGroupDescription) -> DescribedGroup {
    entry
        .with_group_state(str_bytes(description.state))
        .with_group_epoch(description.epoch)
        .with_assignment_epoch(description.assignment_epoch)
        .with_assignor_name(str_bytes(&description.assignor))
        .with_members(description.members.into_iter().map(member).collect())
}

fn member(member: ConsumerMemberDescription) -> Member {
    Member::default()
        .with_member_id(str_bytes(&member.member_id))
        .with_instance_id(member.instance_id.as_deref().map(str_bytes))
        .with_rack_id(member.rack_id.as_deref().map(str_bytes))
        .with_member_epoch(member.member_epoch)
        .with_client_id(str_bytes(&member.client_id))
        .with_client_host(str_bytes(&member.client_host))
        .with_subscribed_topic_names(
            member
                .subscribed_topic_names
                .iter()
                .map(|name| str_bytes(name).into())
                .collect(),
        )
        .with_subscribed_topic_regex(member.subscribed_topic_regex.as_deref().map(str_bytes))
        .with_assignment(assignment(member.assignment))
        .with_target_assignment(assignment(member.target))
        .with_member_type(if member.classic { 0 } else { 1 })
}

fn assignment(partitions: Vec<DescribedPartitions>) -> Assignment {
    Assignment::default().with_topic_partitions(
        partitions
            .into_iter()
            .map(|(id, name, partitions)| {
                TopicPartitions::default()
                    .with_topic_id(uuid::Uuid::from_bytes(id.0))
                    .with_topic_name(str_bytes(&name).into())
                    .with_partitions(partitions)
            })
            .collect(),
    )
}
