//! FindCoordinator: this broker coordinates every group and every
//! transactional id (key type 1, KIP-98); v4+ asks for several keys at once.
//! An empty transactional id, or an unknown key type, gets INVALID_REQUEST.
//! A group needs DESCRIBE on it (GROUP_AUTHORIZATION_FAILED), a
//! transactional id DESCRIBE on it (TRANSACTIONAL_ID_AUTHORIZATION_FAILED).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::{decode, str_bytes};
use crate::kafka::authorize::Authorizer;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// Why a key gets no coordinator, or `None` when this node is it.
fn refusal(authorizer: &Authorizer, key_type: i8, key: &str) -> Option<(i16, &'static str)> {
    match key_type {
        KEY_TYPE_GROUP if !authorizer.group(Operation::Describe, key) => Some((
            ResponseError::GroupAuthorizationFailed.code(),
            "not allowed to DESCRIBE this group (a consumer needs READ on its group, which \
             includes DESCRIBE)",
        )),
        KEY_TYPE_GROUP => None,
        KEY_TYPE_TRANSACTION if key.is_empty() => Some((
            ResponseError::InvalidRequest.code(),
            "a transactional id must not be empty",
        )),
        KEY_TYPE_TRANSACTION if !authorizer.transactional_id(Operation::Describe, key) => Some((
            ResponseError::TransactionalIdAuthorizationFailed.code(),
            "not allowed to DESCRIBE this transactional id",
        )),
        KEY_TYPE_TRANSACTION => None,
        _ => Some((
            ResponseError::InvalidRequest.code(),
            "unknown coordinator key type: 0 is a group, 1 a transactional id",
        )),
    }
}

pub fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let find: FindCoordinatorRequest = decode(request, body)?;
    let broker = request.broker;
    let listener = request.session.listener();
    let authorizer = request.authorizer();
    // The node coordinating a key: its internal partition's leader, at its
    // address on the client's listener.
    let coordinator_of = |key: &str| {
        if find.key_type == KEY_TYPE_TRANSACTION {
            let partitions = crate::broker::txn::txn_topic_partitions(broker);
            let index = crate::broker::internal_log::key_partition(key, partitions);
            broker.coordinator_on(crate::broker::txn::TXN_TOPIC, index, listener)
        } else {
            let partitions = crate::broker::group::offsets_topic_partitions(broker);
            let index = crate::broker::group::coordinator::offsets_partition(key, partitions);
            broker.coordinator_on(crate::broker::group::OFFSETS_TOPIC, index, listener)
        }
    };
    let mut response = FindCoordinatorResponse::default();
    if request.version >= 4 {
        response.coordinators = find
            .coordinator_keys
            .iter()
            .map(|key| {
                let mut coordinator = Coordinator::default().with_key(key.clone());
                match refusal(&authorizer, find.key_type, key) {
                    Some((code, message)) => {
                        coordinator.node_id = BrokerId(-1);
                        coordinator.port = -1;
                        coordinator.error_code = code;
                        coordinator.error_message = Some(str_bytes(message));
                    }
                    None => {
                        let (node, host, port) = coordinator_of(key.as_str());
                        if node < 0 {
                            coordinator.error_code = ResponseError::CoordinatorNotAvailable.code();
                        }
                        coordinator.node_id = BrokerId(node);
                        coordinator.host = str_bytes(&host);
                        coordinator.port = i32::from(port);
                    }
                }
                coordinator
            })
            .collect();
    } else {
        match refusal(&authorizer, find.key_type, &find.key) {
            Some((code, message)) => {
                response.node_id = BrokerId(-1);
                response.port = -1;
                response.error_code = code;
                if request.version >= 1 {
                    response.error_message = Some(str_bytes(message));
                }
            }
            None => {
                let (node, host, port) = coordinator_of(find.key.as_str());
                if node < 0 {
                    response.error_code = ResponseError::CoordinatorNotAvailable.code();
                }
                response.node_id = BrokerId(node);
                response.host = str_bytes(&host);
                response.port = i32::from(port);
            }
        }
    }
    request.respond(response)
}
