//! ListGroups: every group on every shard, optionally filtered by state
//! (v4+) and type (v5+: "classic", or "consumer" for KIP-848 groups, whose
//! states are Empty, Assigning, Reconciling and Stable). A principal allowed
//! DESCRIBE on the cluster sees every group, any other only those it may
//! DESCRIBE (Kafka's `handleListGroupsRequest`).

use bytes::Bytes;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{ListGroupsRequest, ListGroupsResponse};

use super::{decode, str_bytes};
use crate::broker::group::coordinator::{Coordinator, GroupListing};
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{Operation, ResourceType};

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let list: ListGroupsRequest = decode(request, body)?;
    let mut listed: Vec<GroupListing> = Vec::new();
    for shard in request.shard.shards.ids() {
        let groups = request
            .shard
            .run_on(shard, |_| async move {
                Coordinator::local()
                    .map(|coordinator| coordinator.list())
                    .unwrap_or_default()
            })
            .await
            .unwrap_or_default();
        listed.extend(groups);
    }
    listed.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    let states: Vec<String> = list
        .states_filter
        .iter()
        .map(|state| state.to_lowercase())
        .collect();
    let types: Vec<String> = list
        .types_filter
        .iter()
        .map(|kind| kind.to_lowercase())
        .collect();
    let authorizer = request.authorizer();
    let every_group = authorizer.allows_quietly(
        Operation::Describe,
        ResourceType::Cluster,
        crate::security::acl::CLUSTER_NAME,
    );
    let groups = listed
        .into_iter()
        .filter(|group| {
            every_group
                || authorizer.allows_quietly(
                    Operation::Describe,
                    ResourceType::Group,
                    &group.group_id,
                )
        })
        .filter(|group| states.is_empty() || states.contains(&group.state.to_lowercase()))
        .filter(|group| types.is_empty() || types.iter().any(|kind| kind == group.group_type))
        .map(|group| {
            ListedGroup::default()
                .with_group_id(str_bytes(&group.group_id).into())
                .with_protocol_type(str_bytes(&group.protocol_type))
                .with_group_state(str_bytes(group.state))
                .with_group_type(str_bytes(group.group_type))
        })
        .collect();
    request.respond(ListGroupsResponse::default().with_groups(groups))
}
