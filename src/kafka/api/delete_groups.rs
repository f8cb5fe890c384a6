//! DeleteGroups: remove groups without members, with their committed offsets.
//! A group the principal may not DELETE gets GROUP_AUTHORIZATION_FAILED.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::decode;
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let delete: DeleteGroupsRequest = decode(request, body)?;
    let mut results = Vec::with_capacity(delete.groups_names.len());
    let authorizer = request.authorizer();
    for group_id in &delete.groups_names {
        let code = if !authorizer.group(Operation::Delete, group_id) {
            ResponseError::GroupAuthorizationFailed.code()
        } else if group_id.is_empty() {
            ResponseError::InvalidGroupId.code()
        } else {
            let group = group_id.to_string();
            on_coordinator(
                request.shard,
                request.broker,
                group_id,
                move |coordinator| async move { coordinator.delete_group(&group).await },
            )
            .await
            .unwrap_or_else(|code| code)
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id.clone())
                .with_error_code(code),
        );
    }
    request.respond(DeleteGroupsResponse::default().with_results(results))
}
