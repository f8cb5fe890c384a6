//! DescribeGroups: state, protocol and members (with their metadata and
//! assignment) of each group asked for; an unknown group is "Dead". A group
//! the principal may not DESCRIBE gets GROUP_AUTHORIZATION_FAILED.

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use kafka_protocol::ResponseError;

use super::{decode, str_bytes};
use crate::broker::group::on_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{Operation, ResourceType};

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeGroupsRequest = decode(request, body)?;
    let mut described = Vec::with_capacity(describe.groups.len());
    let authorizer = request.authorizer();
    for group_id in &describe.groups {
        let group = group_id.to_string();
        if !authorizer.group(Operation::Describe, &group) {
            described.push(
                DescribedGroup::default()
                    .with_group_id(group_id.clone())
                    .with_error_code(ResponseError::GroupAuthorizationFailed.code()),
            );
            continue;
        }
        let operations = authorizer.operations(
            describe.include_authorized_operations,
            ResourceType::Group,
            &group,
        );
        let result = on_coordinator(
            request.shard,
            request.broker,
            group_id,
            move |coordinator| async move { coordinator.describe(&group) },
        )
        .await;
        let entry = DescribedGroup::default().with_group_id(group_id.clone());
        described.push(match result {
            Err(code) => entry.with_error_code(code),
            Ok(description) => entry
                .with_authorized_operations(operations)
                .with_group_state(str_bytes(&description.state))
                .with_protocol_type(str_bytes(&description.protocol_type))
                .with_protocol_data(str_bytes(&description.protocol_name))
                .with_members(
                    description
                        .members
                        .into_iter()
                        .map(|member| {
                            DescribedGroupMember::default()
                                .with_member_id(str_bytes(&member.member_id))
                                .with_group_instance_id(
                                    member.instance_id.as_deref().map(str_bytes),
                                )
                                .with_client_id(str_bytes(&member.client_id))
                                .with_client_host(str_bytes(&member.client_host))
                                .with_member_metadata(member.metadata)
                                .with_member_assignment(member.assignment)
                        })
                        .collect(),
                ),
        });
    }
    request.respond(DescribeGroupsResponse::default().with_groups(described))
}
