//! JoinGroup: join (or rejoin) a group; answered when the rebalance's join
//! phase completes, with the leader getting every member's metadata.
//! It needs READ on the group (GROUP_AUTHORIZATION_FAILED).

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::{decode, str_bytes};
use crate::broker::group::membership::JoinRequest;
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let join: JoinGroupRequest = decode(request, body)?;
    let group_id = join.group_id.to_string();
    let member_id = join.member_id.to_string();
    if !request.authorizer().group(Operation::Read, &group_id) {
        return respond_error(
            request,
            ResponseError::GroupAuthorizationFailed.code(),
            &member_id,
        );
    }
    if group_id.is_empty() {
        return respond_error(request, ResponseError::InvalidGroupId.code(), &member_id);
    }
    let session_timeout_ms = u64::try_from(join.session_timeout_ms).unwrap_or(0);
    // v0 has no rebalance timeout: Kafka uses the session timeout.
    let rebalance_timeout_ms = if request.version >= 1 {
        u64::try_from(join.rebalance_timeout_ms).unwrap_or(0)
    } else {
        session_timeout_ms
    };
    let client_id = request
        .header
        .client_id
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let joining = JoinRequest {
        member_id: member_id.clone(),
        instance_id: join.group_instance_id.as_ref().map(ToString::to_string),
        client_id,
        client_host: format!("/{}", request.peer.ip()),
        session_timeout: Duration::from_millis(session_timeout_ms),
        rebalance_timeout: Duration::from_millis(rebalance_timeout_ms),
        protocol_type: join.protocol_type.to_string(),
        protocols: join
            .protocols
            .iter()
            .map(|protocol| (protocol.name.to_string(), protocol.metadata.clone()))
            .collect(),
        requires_known_member_id: request.version >= 4,
        supports_skip_assignment: request.version >= 9,
    };
    let group = group_id.clone();
    let result = on_coordinator(
        request.shard,
        request.broker,
        &group_id,
        move |coordinator| async move { coordinator.join(&group, joining).await },
    )
    .await;
    let result = match result {
        Ok(result) => result,
        Err(code) => return respond_error(request, code, &member_id),
    };
    let response = JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation)
        .with_protocol_type(result.protocol_type.as_deref().map(str_bytes))
        .with_protocol_name(result.protocol_name.as_deref().map(str_bytes))
        .with_leader(str_bytes(&result.leader))
        .with_member_id(str_bytes(&result.member_id))
        .with_skip_assignment(result.skip_assignment)
        .with_members(
            result
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&id))
                        .with_group_instance_id(instance.as_deref().map(str_bytes))
                        .with_metadata(metadata)
                })
                .collect(),
        );
    request.respond(fit_protocol_name(response, request.version))
}

/// Before v7 the protocol name is not nullable: an error answer carries "".
fn fit_protocol_name(mut response: JoinGroupResponse, version: i16) -> JoinGroupResponse {
    if version < 7 && response.protocol_name.is_none() {
        response.protocol_name = Some(str_bytes(""));
    }
    response
}

fn respond_error(
    request: &Request<'_>,
    code: i16,
    member_id: &str,
) -> Result<Response, RequestError> {
    let response = JoinGroupResponse::default()
        .with_error_code(code)
        .with_generation_id(-1)
        .with_member_id(str_bytes(member_id));
    request.respond(fit_protocol_name(response, request.version))
}
