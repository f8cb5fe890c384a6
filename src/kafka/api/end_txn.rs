//! EndTxn (versions 0–3; KIP-98): commit or abort the producer's
//! transaction on its coordinator shard. Answered once the decision is
//! durable; the markers are then written to every partition of the
//! transaction. v2+ may answer PRODUCER_FENCED (KIP-588), older versions
//! INVALID_PRODUCER_EPOCH. Version 5 (transaction version 2, KIP-890) is
//! not served. It needs WRITE on the transactional id
//! (TRANSACTIONAL_ID_AUTHORIZATION_FAILED).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use super::add_partitions_to_txn::fenced_code;
use super::decode;
use crate::broker::txn::on_txn_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

/// The first version that may answer PRODUCER_FENCED (KIP-588).
const FENCED_FROM_VERSION: i16 = 2;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let end: EndTxnRequest = decode(request, body)?;
    let id = end.transactional_id.0.to_string();
    if !request.authorizer().transactional_id(Operation::Write, &id) {
        return request.respond(
            EndTxnResponse::default()
                .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code()),
        );
    }
    let producer_id = end.producer_id.0;
    let epoch = end.producer_epoch;
    let commit = end.committed;
    let fenced = fenced_code(request.version, FENCED_FROM_VERSION);
    let key = id.clone();
    let code = on_txn_coordinator(
        request.shard,
        request.broker,
        &key,
        move |coordinator| async move {
            coordinator
                .end_txn(&id, producer_id, epoch, commit, fenced)
                .await
        },
    )
    .await
    .and_then(|answer| answer)
    .err()
    .unwrap_or(0);
    request.respond(EndTxnResponse::default().with_error_code(code))
}
