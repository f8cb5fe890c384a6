//! InitProducerId (versions 0–4): gives an idempotent producer its producer
//! id and epoch (KIP-98; v3 adds the producer's current id and epoch for an
//! epoch bump, KIP-360; v4 may answer PRODUCER_FENCED, KIP-588).
//!
//! A request without a transactional id gets a producer id never handed out
//! before (from this shard's block cache, `broker::producer_ids`) and epoch
//! 0, whatever id and epoch it sends: as in Kafka, a non-transactional
//! producer bumping its epoch after an error simply gets a fresh id and its
//! old state expires. A transactional id is served by its transaction
//! coordinator (`broker::txn::coordinator`): a new id gets a producer id,
//! a known one its epoch bumped, which fences the previous instance.
//!
//! Errors: INVALID_REQUEST when exactly one of producer id and epoch is -1
//! (Kafka's rule) or for an empty transactional id;
//! INVALID_TRANSACTION_TIMEOUT above `transactions.max_timeout_ms`;
//! CONCURRENT_TRANSACTIONS while the id's previous transaction is being
//! completed; PRODUCER_FENCED (v4+, else INVALID_PRODUCER_EPOCH) for a
//! KIP-360 bump from an instance that is not the current one;
//! COORDINATOR_LOAD_IN_PROGRESS (retriable: clients retry InitProducerId)
//! when no id can be handed out now, with the cause in the broker's log.
//!
//! A transactional id needs WRITE on it (TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
//! an idempotent producer IDEMPOTENT_WRITE on the cluster or WRITE on some
//! topic (KIP-679; CLUSTER_AUTHORIZATION_FAILED).

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::add_partitions_to_txn::fenced_code;
use super::decode;
use crate::broker::producer_ids::next_producer_id;
use crate::broker::txn::on_txn_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::security::acl::Operation;

/// The id and epoch "none" in requests and error responses.
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

/// The first version that may answer PRODUCER_FENCED (KIP-588).
const FENCED_FROM_VERSION: i16 = 4;

/// Failed allocations, logged at most 20 times per 10 s: while the disk
/// refuses appends every producer's retry fails.
static ALLOCATION_FAILURES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let init: InitProducerIdRequest = decode(request, body)?;
    let authorizer = request.authorizer();
    let refused = match &init.transactional_id {
        Some(id) if !authorizer.transactional_id(Operation::Write, &id.0) => {
            Some(ResponseError::TransactionalIdAuthorizationFailed)
        }
        None if !authorizer.idempotent_write() => Some(ResponseError::ClusterAuthorizationFailed),
        _ => None,
    };
    if let Some(error) = refused {
        return request.respond(
            InitProducerIdResponse::default()
                .with_error_code(error.code())
                .with_producer_id(ProducerId(NO_PRODUCER_ID))
                .with_producer_epoch(NO_PRODUCER_EPOCH),
        );
    }
    let answer = match (
        &init.transactional_id,
        init.producer_id.0,
        init.producer_epoch,
    ) {
        (_, NO_PRODUCER_ID, epoch) if epoch != NO_PRODUCER_EPOCH => {
            Err(ResponseError::InvalidRequest)
        }
        (_, id, NO_PRODUCER_EPOCH) if id != NO_PRODUCER_ID => Err(ResponseError::InvalidRequest),
        (Some(transactional_id), _, _) if transactional_id.0.is_empty() => {
            Err(ResponseError::InvalidRequest)
        }
        (Some(transactional_id), producer_id, epoch) => {
            let id = transactional_id.0.to_string();
            let timeout_ms = init.transaction_timeout_ms;
            let expected = (producer_id != NO_PRODUCER_ID).then_some((producer_id, epoch));
            let fenced = fenced_code(request.version, FENCED_FROM_VERSION);
            let key = id.clone();
            let answer = on_txn_coordinator(
                request.shard,
                request.broker,
                &key,
                move |coordinator| async move {
                    coordinator
                        .init_producer_id(&id, timeout_ms, expected, fenced)
                        .await
                },
            )
            .await
            .and_then(|answer| answer);
            return request.respond(match answer {
                Ok((id, epoch)) => InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(epoch),
                Err(code) => InitProducerIdResponse::default()
                    .with_error_code(code)
                    .with_producer_id(ProducerId(NO_PRODUCER_ID))
                    .with_producer_epoch(NO_PRODUCER_EPOCH),
            });
        }
        (None, _, _) => match next_producer_id(request.shard).await {
            Ok(id) => Ok(id),
            Err(error) => {
                if let Some(failed) = ALLOCATION_FAILURES.record(monotonic_ms()) {
                    tracing::warn!(
                        peer = %request.peer,
                        %error,
                        failed,
                        "cannot hand out a producer id; the producer will retry (`failed` counts \
                         since the last such line)"
                    );
                }
                Err(ResponseError::CoordinatorLoadInProgress)
            }
        },
    };
    let response = match answer {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(error) => InitProducerIdResponse::default()
            .with_error_code(error.code())
            .with_producer_id(ProducerId(NO_PRODUCER_ID))
            .with_producer_epoch(NO_PRODUCER_EPOCH),
    };
    request.respond(response)
}
