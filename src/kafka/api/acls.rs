//! CreateAcls, DescribeAcls and DeleteAcls (versions 1–3, as Kafka 4
//! serves them; KIP-140, KIP-290 for prefixed patterns): the cluster's ACLs (`security/acl.rs`), kept in
//! the cluster metadata (`metadata.toml`, or the controller's log in a
//! cluster) so that every node authorizes alike.
//!
//! As Kafka answers:
//! - without an authorizer (`security.authorizer = "none"`) every creation,
//!   the describe and every filter get SECURITY_DISABLED;
//! - creating and deleting need ALTER on the cluster, describing DESCRIBE
//!   (CLUSTER_AUTHORIZATION_FAILED);
//! - a creation Kafka would not store (an ANY or UNKNOWN element, an empty
//!   name, a CLUSTER not named `kafka-cluster`, a principal other than
//!   `User:<name>`, a host neither `*` nor an IP address, an operation the
//!   resource type has not) gets INVALID_REQUEST with the reason, and the
//!   others are created; a filter with an unknown code gets INVALID_REQUEST.
//!
//! A deletion removes the bindings
//! its filters matched when the request was served, in one metadata
//! command, and reports each.

use std::collections::BTreeSet;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};

use super::{decode, str_bytes};
use crate::broker::metadata_command::MetadataCommand;
use crate::config::AuthorizerKind;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{ACLS_MAX, AclBinding, AclFilter, Operation};

const SECURITY_DISABLED: &str =
    "no authorizer is configured: set security.authorizer = \"acl\" to use ACLs";

/// Why the request is not served: Kafka's code and a message.
fn refusal(request: &Request<'_>, operation: Operation) -> Option<(ResponseError, String)> {
    if request.broker.config.security.authorizer == AuthorizerKind::None {
        return Some((
            ResponseError::SecurityDisabled,
            SECURITY_DISABLED.to_owned(),
        ));
    }
    if !request.authorizer().cluster(operation) {
        let operation = operation.name();
        return Some((
            ResponseError::ClusterAuthorizationFailed,
            format!(
                "{} may not {operation} ACLs: that needs {operation} on the cluster; log in as a \
                 super user (security.super_users, the bootstrap user) or one granted it (sluice \
                 acls add --cluster --operation {operation})",
                request.session.principal()
            ),
        ));
    }
    None
}

/// Give every outcome still `Ok` the command's `error`: nothing of the
/// request was applied.
fn fail_the_rest<T>(outcomes: &mut [Result<T, (i16, String)>], error: &(i16, String)) {
    for outcome in outcomes {
        if outcome.is_ok() {
            *outcome = Err(error.clone());
        }
    }
}

/// Submit `command`, or say why it failed.
async fn commit(request: &Request<'_>, command: MetadataCommand) -> Result<(), (i16, String)> {
    match request.broker.metadata.submit(command).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(refused)) => Err((ResponseError::InvalidRequest.code(), refused.to_string())),
        Err(failure) => Err((
            ResponseError::UnknownServerError.code(),
            failure.to_string(),
        )),
    }
}

pub async fn create(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let create: CreateAclsRequest = decode(request, body)?;
    let refused = refusal(request, Operation::Alter);
    let mut outcomes: Vec<Result<AclBinding, (i16, String)>> = create
        .creations
        .iter()
        .map(|creation| match &refused {
            Some((code, message)) => Err((code.code(), message.clone())),
            None => AclBinding::from_wire(
                creation.resource_type,
                &creation.resource_name,
                creation.resource_pattern_type,
                &creation.principal,
                &creation.host,
                creation.operation,
                creation.permission_type,
            )
            .map_err(|invalid| (ResponseError::InvalidRequest.code(), invalid.to_string())),
        })
        .collect();
    let bindings: Vec<AclBinding> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok().cloned())
        .collect();
    if !bindings.is_empty() {
        let created = bindings.len();
        match commit(request, MetadataCommand::CreateAcls { bindings }).await {
            Ok(()) => tracing::info!(
                principal = %request.session.principal(),
                created,
                "ACLs created"
            ),
            Err(error) => fail_the_rest(&mut outcomes, &error),
        }
    }
    let results = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(_) => AclCreationResult::default(),
            Err((code, message)) => AclCreationResult::default()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&message))),
        })
        .collect();
    request.respond(CreateAclsResponse::default().with_results(results))
}

pub fn describe(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeAclsRequest = decode(request, body)?;
    let refuse = |code: ResponseError, message: String| {
        request.respond(
            DescribeAclsResponse::default()
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(&message))),
        )
    };
    if let Some((code, message)) = refusal(request, Operation::Describe) {
        return refuse(code, message);
    }
    let filter = match AclFilter::from_wire(
        describe.resource_type_filter,
        describe.resource_name_filter.as_deref(),
        describe.pattern_type_filter,
        describe.principal_filter.as_deref(),
        describe.host_filter.as_deref(),
        describe.operation,
        describe.permission_type,
    ) {
        Ok(filter) => filter,
        Err(invalid) => return refuse(ResponseError::InvalidRequest, invalid.to_string()),
    };
    let snapshot = request.broker.metadata.snapshot();
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    // The set iterates in binding order: resource type, name, pattern first.
    for binding in snapshot
        .acls
        .iter()
        .filter(|binding| filter.matches(binding))
    {
        let same_resource = resources.last().is_some_and(|last| {
            last.resource_type == binding.resource_type.code()
                && last.resource_name.as_str() == binding.resource_name
                && last.pattern_type == binding.pattern_type.code()
        });
        if !same_resource {
            resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(binding.resource_type.code())
                    .with_resource_name(str_bytes(&binding.resource_name))
                    .with_pattern_type(binding.pattern_type.code()),
            );
        }
        resources.last_mut().expect("pushed above").acls.push(
            AclDescription::default()
                .with_principal(str_bytes(&binding.principal))
                .with_host(str_bytes(&binding.host))
                .with_operation(binding.operation.code())
                .with_permission_type(binding.permission.code()),
        );
    }
    request.respond(DescribeAclsResponse::default().with_resources(resources))
}

pub async fn delete(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let delete: DeleteAclsRequest = decode(request, body)?;
    let refused = refusal(request, Operation::Alter);
    let snapshot = request.broker.metadata.snapshot();
    let mut outcomes: Vec<Result<Vec<AclBinding>, (i16, String)>> = delete
        .filters
        .iter()
        .map(|filter| {
            if let Some((code, message)) = &refused {
                return Err((code.code(), message.clone()));
            }
            let filter = AclFilter::from_wire(
                filter.resource_type_filter,
                filter.resource_name_filter.as_deref(),
                filter.pattern_type_filter,
                filter.principal_filter.as_deref(),
                filter.host_filter.as_deref(),
                filter.operation,
                filter.permission_type,
            )
            .map_err(|invalid| (ResponseError::InvalidRequest.code(), invalid.to_string()))?;
            Ok(snapshot
                .acls
                .iter()
                .filter(|binding| filter.matches(binding))
                .cloned()
                .collect())
        })
        .collect();
    // Each filter reports what it matched, so many broad filters could make
    // an answer far larger than the request: past ACLS_MAX entries in all,
    // the request is refused whole and nothing is deleted.
    let reported: usize = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok())
        .map(Vec::len)
        .sum();
    if reported > ACLS_MAX {
        let message = format!(
            "the filters match {reported} ACL entries in all; Sluice answers at most {ACLS_MAX} \
             per request: delete with fewer or narrower filters"
        );
        for outcome in &mut outcomes {
            *outcome = Err((ResponseError::InvalidRequest.code(), message.clone()));
        }
    }
    let doomed: BTreeSet<AclBinding> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok())
        .flatten()
        .cloned()
        .collect();
    if !doomed.is_empty() {
        let deleted = doomed.len();
        let command = MetadataCommand::DeleteAcls {
            bindings: doomed.into_iter().collect(),
        };
        match commit(request, command).await {
            Ok(()) => tracing::info!(
                principal = %request.session.principal(),
                deleted,
                "ACLs deleted"
            ),
            Err(error) => fail_the_rest(&mut outcomes, &error),
        }
    }
    let results = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(matched) => DeleteAclsFilterResult::default().with_matching_acls(
                matched
                    .iter()
                    .map(|binding| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(binding.resource_type.code())
                            .with_resource_name(str_bytes(&binding.resource_name))
                            .with_pattern_type(binding.pattern_type.code())
                            .with_principal(str_bytes(&binding.principal))
                            .with_host(str_bytes(&binding.host))
                            .with_operation(binding.operation.code())
                            .with_permission_type(binding.permission.code())
                    })
                    .collect(),
            ),
            Err((code, message)) => DeleteAclsFilterResult::default()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&message))),
        })
        .collect();
    request.respond(DeleteAclsResponse::default().with_filter_results(results))
}
