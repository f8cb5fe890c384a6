//! AddOffsetsToTxn (versions 0–3; KIP-98): the group's `__consumer_offsets`
//! partition joins the producer's transaction, so that its
//! TxnOffsetCommit records are committed or aborted with it (the marker is
//! written there too). Codes as AddPartitionsToTxn; an empty group id gets
//! INVALID_GROUP_ID. Version 4 (KIP-890) is not served. It needs WRITE on
//! the transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED) and READ on
//! the group (GROUP_AUTHORIZATION_FAILED).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use super::add_partitions_to_txn::fenced_code;
use super::decode;
use crate::broker::group::coordinator::offsets_partition;
use crate::broker::group::{OFFSETS_TOPIC, offsets_topic_partitions};
use crate::broker::txn::on_txn_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

/// The first version that may answer PRODUCER_FENCED (KIP-588).
const FENCED_FROM_VERSION: i16 = 2;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let add: AddOffsetsToTxnRequest = decode(request, body)?;
    let group = add.group_id.0.to_string();
    let authorizer = request.authorizer();
    let code = if !authorizer.transactional_id(Operation::Write, &add.transactional_id.0) {
        ResponseError::TransactionalIdAuthorizationFailed.code()
    } else if !authorizer.group(Operation::Read, &group) {
        ResponseError::GroupAuthorizationFailed.code()
    } else if group.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else {
        let partition = offsets_partition(&group, offsets_topic_partitions(request.broker));
        let id = add.transactional_id.0.to_string();
        let (producer_id, epoch) = (add.producer_id.0, add.producer_epoch);
        let fenced = fenced_code(request.version, FENCED_FROM_VERSION);
        let key = id.clone();
        on_txn_coordinator(
            request.shard,
            request.broker,
            &key,
            move |coordinator| async move {
                coordinator
                    .add_partitions(
                        &id,
                        producer_id,
                        epoch,
                        vec![(OFFSETS_TOPIC.to_owned(), partition)],
                        fenced,
                    )
                    .await
            },
        )
        .await
        .and_then(|answer| answer)
        .err()
        .unwrap_or(0)
    };
    request.respond(AddOffsetsToTxnResponse::default().with_error_code(code))
}
