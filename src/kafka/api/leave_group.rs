//! LeaveGroup: members leave at once instead of timing out (v3+ several
//! members per request, static members by instance id).
//! It needs READ on the group (GROUP_AUTHORIZATION_FAILED).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::decode;
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let leave: LeaveGroupRequest = decode(request, body)?;
    let group_id = leave.group_id.to_string();
    if !request.authorizer().group(Operation::Read, &group_id) {
        return request.respond(
            LeaveGroupResponse::default()
                .with_error_code(ResponseError::GroupAuthorizationFailed.code()),
        );
    }
    if group_id.is_empty() {
        return request.respond(
            LeaveGroupResponse::default().with_error_code(ResponseError::InvalidGroupId.code()),
        );
    }
    let departures: Vec<(String, Option<String>)> = if request.version >= 3 {
        leave
            .members
            .iter()
            .map(|member| {
                (
                    member.member_id.to_string(),
                    member.group_instance_id.as_ref().map(ToString::to_string),
                )
            })
            .collect()
    } else {
        vec![(leave.member_id.to_string(), None)]
    };
    let group = group_id.clone();
    let asked = departures.clone();
    let codes = on_coordinator(
        request.shard,
        request.broker,
        &group_id,
        move |coordinator| async move { coordinator.leave(&group, &asked).await },
    )
    .await;
    let response = match codes {
        Err(code) => LeaveGroupResponse::default().with_error_code(code),
        Ok(codes) if request.version >= 3 => LeaveGroupResponse::default().with_members(
            departures
                .iter()
                .zip(codes)
                .map(|((member_id, instance_id), code)| {
                    MemberResponse::default()
                        .with_member_id(super::str_bytes(member_id))
                        .with_group_instance_id(instance_id.as_deref().map(super::str_bytes))
                        .with_error_code(code)
                })
                .collect(),
        ),
        Ok(codes) => {
            LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0))
        }
    };
    request.respond(response)
}
