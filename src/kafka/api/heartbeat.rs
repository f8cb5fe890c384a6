//! Heartbeat: keeps a member's session alive; REBALANCE_IN_PROGRESS tells
//! it to rejoin.
//! It needs READ on the group (GROUP_AUTHORIZATION_FAILED).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::decode;
use crate::broker::group::membership::MemberClaim;
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let heartbeat: HeartbeatRequest = decode(request, body)?;
    let group_id = heartbeat.group_id.to_string();
    let code = if !request.authorizer().group(Operation::Read, &group_id) {
        ResponseError::GroupAuthorizationFailed.code()
    } else if group_id.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else {
        let group = group_id.clone();
        let member = heartbeat.member_id.to_string();
        let instance = heartbeat
            .group_instance_id
            .as_ref()
            .map(ToString::to_string);
        let generation = heartbeat.generation_id;
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
                coordinator.heartbeat(&group, &claim).await
            },
        )
        .await
        .unwrap_or_else(|code| code)
    };
    request.respond(HeartbeatResponse::default().with_error_code(code))
}
