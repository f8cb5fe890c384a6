//! SyncGroup: the leader hands in the assignment; every member gets its own
//! part once the leader's request arrives.
//! It needs READ on the group (GROUP_AUTHORIZATION_FAILED).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::{decode, str_bytes};
use crate::broker::group::membership::SyncRequest;
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let sync: SyncGroupRequest = decode(request, body)?;
    let group_id = sync.group_id.to_string();
    if !request.authorizer().group(Operation::Read, &group_id) {
        return request.respond(
            SyncGroupResponse::default()
                .with_error_code(ResponseError::GroupAuthorizationFailed.code()),
        );
    }
    if group_id.is_empty() {
        return request.respond(
            SyncGroupResponse::default().with_error_code(ResponseError::InvalidGroupId.code()),
        );
    }
    let syncing = SyncRequest {
        member_id: sync.member_id.to_string(),
        instance_id: sync.group_instance_id.as_ref().map(ToString::to_string),
        generation: sync.generation_id,
        protocol_type: sync.protocol_type.as_ref().map(ToString::to_string),
        protocol_name: sync.protocol_name.as_ref().map(ToString::to_string),
        assignments: sync
            .assignments
            .iter()
            .map(|assignment| {
                (
                    assignment.member_id.to_string(),
                    assignment.assignment.clone(),
                )
            })
            .collect(),
    };
    let group = group_id.clone();
    let result = on_coordinator(
        request.shard,
        request.broker,
        &group_id,
        move |coordinator| async move { coordinator.sync(&group, syncing).await },
    )
    .await;
    let response = match result {
        Ok(result) => SyncGroupResponse::default()
            .with_error_code(result.error)
            .with_protocol_type(result.protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(result.protocol_name.as_deref().map(str_bytes))
            .with_assignment(result.assignment),
        Err(code) => SyncGroupResponse::default().with_error_code(code),
    };
    request.respond(response)
}
