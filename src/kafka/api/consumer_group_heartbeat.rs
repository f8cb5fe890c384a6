//! ConsumerGroupHeartbeat (API 68, KIP-848): a consumer-protocol member
//! joins (epoch 0), heartbeats (its epoch, and what it owns), or leaves
//! (epoch -1; -2 for a static member leaving for now), and is answered with
//! its epoch, the heartbeat interval and, when it changed, its assignment.
//! v0: the coordinator makes a joining member's id; v1 (KIP-1082): the
//! member brings its own, and may subscribe with a regex.
//!
//! The request is checked here first, as Kafka's group coordinator service
//! checks it (INVALID_REQUEST with Kafka's messages, UNSUPPORTED_ASSIGNOR),
//! then runs on the group's coordinator shard.
//!
//! It needs READ on the group (GROUP_AUTHORIZATION_FAILED, checked before
//! anything else) and DESCRIBE on every topic subscribed to by name
//! (TOPIC_AUTHORIZATION_FAILED, naming them), as Kafka's
//! `handleConsumerGroupHeartbeat`; a regex subscription matches only the
//! topics the member may DESCRIBE (its principal as of its last heartbeat,
//! `security/acl.rs`'s `Viewer`), as Kafka 4 does.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};

use super::{decode, str_bytes};
use crate::broker::group::consumer::group::{
    GroupError, HeartbeatRequest, LEAVE_EPOCH, STATIC_LEAVE_EPOCH,
};
use crate::broker::group::consumer::member::Assignment as Partitions;
use crate::broker::group::offsets::RECORD_STRING_BYTES_MAX;
use crate::broker::group::on_coordinator;
use crate::broker::metadata::TopicId;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

/// From this version the member makes its own id (KIP-1082).
const MEMBER_ID_FROM_CLIENT_VERSION: i16 = 1;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let heartbeat: ConsumerGroupHeartbeatRequest = decode(request, body)?;
    let group_id = heartbeat.group_id.to_string();
    let authorizer = request.authorizer();
    if !authorizer.group(Operation::Read, &group_id) {
        let error = GroupError::new(
            ResponseError::GroupAuthorizationFailed,
            "not allowed to READ this group",
        );
        return respond_error(request, &error);
    }
    let assignors = &request.broker.config.groups.consumer_assignors;
    if let Err(error) = validate(&heartbeat, request.version, assignors) {
        return respond_error(request, &error);
    }
    let hidden: Vec<&str> = heartbeat
        .subscribed_topic_names
        .iter()
        .flatten()
        .map(|name| name.0.as_str())
        .filter(|name| !authorizer.topic(Operation::Describe, name))
        .collect();
    if !hidden.is_empty() {
        let error = GroupError::new(
            ResponseError::TopicAuthorizationFailed,
            format!("not allowed to DESCRIBE topics {}", hidden.join(", ")),
        );
        return respond_error(request, &error);
    }
    let decoded = decode_heartbeat(request, &heartbeat);
    // The group's own interval where it sets one (KIP-848 group configs).
    let heartbeat_interval = request.broker.group_settings(&group_id).heartbeat_interval;
    let heartbeat_interval_ms = i32::try_from(heartbeat_interval.as_millis()).unwrap_or(i32::MAX);
    let epoch = heartbeat.member_epoch;
    let group = group_id.clone();
    let answer = on_coordinator(
        request.shard,
        request.broker,
        &group_id,
        move |coordinator| async move {
            if epoch == LEAVE_EPOCH || epoch == STATIC_LEAVE_EPOCH {
                coordinator
                    .consumer_leave(&group, decoded.member_id, decoded.instance_id, epoch)
                    .await
                    .map(|(member_id, epoch)| (member_id, epoch, None, 0))
            } else {
                coordinator
                    .consumer_heartbeat(&group, decoded)
                    .await
                    .map(|answer| {
                        (
                            answer.member_id,
                            answer.member_epoch,
                            answer.assignment,
                            heartbeat_interval_ms,
                        )
                    })
            }
        },
    )
    .await;
    match answer {
        Err(code) => {
            request.respond(ConsumerGroupHeartbeatResponse::default().with_error_code(code))
        }
        Ok(Err(error)) => respond_error(request, &error),
        Ok(Ok((member_id, epoch, assignment, interval))) => request.respond(
            ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(str_bytes(&member_id)))
                .with_member_epoch(epoch)
                .with_heartbeat_interval_ms(interval)
                .with_assignment(assignment.map(|assignment| encode_assignment(&assignment))),
        ),
    }
}

fn respond_error(request: &Request<'_>, error: &GroupError) -> Result<Response, RequestError> {
    request.respond(
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(error.error.code())
            .with_error_message(Some(str_bytes(&error.message))),
    )
}

fn encode_assignment(assignment: &Partitions) -> Assignment {
    Assignment::default().with_topic_partitions(
        assignment
            .iter()
            .map(|(topic, partitions)| {
                TopicPartitions::default()
                    .with_topic_id(uuid::Uuid::from_bytes(topic.0))
                    .with_partitions(partitions.iter().copied().collect())
            })
            .collect(),
    )
}

fn invalid(message: &str) -> GroupError {
    GroupError::new(ResponseError::InvalidRequest, message)
}

/// Kafka's `Utils.throwIfEmptyString`: present and blank.
fn blank(value: Option<&str>) -> bool {
    value.is_some_and(|value| value.trim().is_empty())
}

/// Kafka's checks of a heartbeat before it reaches the group, in its order,
/// then this broker's: every string fits the group records (an i16 length).
fn validate(
    heartbeat: &ConsumerGroupHeartbeatRequest,
    version: i16,
    assignors: &[String],
) -> Result<(), GroupError> {
    let epoch = heartbeat.member_epoch;
    if (version >= MEMBER_ID_FROM_CLIENT_VERSION || epoch > 0 || epoch == LEAVE_EPOCH)
        && blank(Some(&heartbeat.member_id))
    {
        return Err(invalid("MemberId can't be empty."));
    }
    if blank(Some(&heartbeat.group_id)) {
        return Err(invalid("GroupId can't be empty."));
    }
    if blank(heartbeat.instance_id.as_deref()) {
        return Err(invalid("InstanceId can't be empty."));
    }
    if blank(heartbeat.rack_id.as_deref()) {
        return Err(invalid("RackId can't be empty."));
    }
    if epoch == 0 {
        if heartbeat.rebalance_timeout_ms == -1 {
            return Err(invalid(
                "RebalanceTimeoutMs must be provided in first request.",
            ));
        }
        if heartbeat
            .topic_partitions
            .as_ref()
            .is_none_or(|owned| !owned.is_empty())
        {
            return Err(invalid("TopicPartitions must be empty when (re-)joining."));
        }
        if heartbeat.subscribed_topic_names.is_none() && heartbeat.subscribed_topic_regex.is_none()
        {
            return Err(invalid(
                "Either SubscribedTopicNames or SubscribedTopicRegex must be non-null when \
                 (re-)joining.",
            ));
        }
    } else if epoch == STATIC_LEAVE_EPOCH {
        if heartbeat.instance_id.is_none() {
            return Err(invalid("InstanceId can't be null."));
        }
    } else if epoch < STATIC_LEAVE_EPOCH {
        return Err(invalid("MemberEpoch is invalid."));
    }
    if let Some(assignor) = &heartbeat.server_assignor
        && !assignors.iter().any(|known| known == assignor.as_str())
    {
        return Err(GroupError::new(
            ResponseError::UnsupportedAssignor,
            format!(
                "ServerAssignor {assignor} is not supported. Supported assignors: {}.",
                assignors.join(", ")
            ),
        ));
    }
    check_lengths(heartbeat)
}

/// Group records hold strings with an i16 length (as Kafka's do).
fn check_lengths(heartbeat: &ConsumerGroupHeartbeatRequest) -> Result<(), GroupError> {
    if heartbeat.group_id.len() > RECORD_STRING_BYTES_MAX {
        return Err(GroupError::new(
            ResponseError::InvalidGroupId,
            format!("GroupId is longer than {RECORD_STRING_BYTES_MAX} bytes."),
        ));
    }
    let fields = [
        ("MemberId", Some(heartbeat.member_id.as_str())),
        ("InstanceId", heartbeat.instance_id.as_deref()),
        ("RackId", heartbeat.rack_id.as_deref()),
        (
            "SubscribedTopicRegex",
            heartbeat.subscribed_topic_regex.as_deref(),
        ),
        ("ServerAssignor", heartbeat.server_assignor.as_deref()),
    ];
    let names = heartbeat
        .subscribed_topic_names
        .iter()
        .flatten()
        .map(|name| ("SubscribedTopicNames", Some(name.as_str())));
    for (field, value) in fields.into_iter().chain(names) {
        if value.is_some_and(|value| value.len() > RECORD_STRING_BYTES_MAX) {
            return Err(invalid(&format!(
                "{field} is longer than {RECORD_STRING_BYTES_MAX} bytes."
            )));
        }
    }
    Ok(())
}

fn decode_heartbeat(
    request: &Request<'_>,
    heartbeat: &ConsumerGroupHeartbeatRequest,
) -> HeartbeatRequest {
    // The header's client id has an i16 length in every header version, so
    // it fits a record.
    let client_id = request
        .header
        .client_id
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    HeartbeatRequest {
        viewer: request.authorizer().viewer(),
        member_id: heartbeat.member_id.to_string(),
        member_epoch: heartbeat.member_epoch,
        instance_id: heartbeat.instance_id.as_ref().map(ToString::to_string),
        rack_id: heartbeat.rack_id.as_ref().map(ToString::to_string),
        rebalance_timeout_ms: heartbeat.rebalance_timeout_ms,
        subscribed_topic_names: heartbeat
            .subscribed_topic_names
            .as_ref()
            .map(|names| names.iter().map(|name| name.0.to_string()).collect()),
        subscribed_topic_regex: heartbeat
            .subscribed_topic_regex
            .as_ref()
            .map(ToString::to_string),
        server_assignor: heartbeat.server_assignor.as_ref().map(ToString::to_string),
        owned: heartbeat.topic_partitions.as_ref().map(|owned| {
            owned
                .iter()
                .map(|topic| {
                    (
                        TopicId(*topic.topic_id.as_bytes()),
                        topic.partitions.clone(),
                    )
                })
                .collect()
        }),
        client_id,
        client_host: format!("/{}", request.peer.ip()),
    }
}
