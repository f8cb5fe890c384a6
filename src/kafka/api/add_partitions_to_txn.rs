//! AddPartitionsToTxn (versions 0–3, the client's form; KIP-98): the
//! partitions join the producer's transaction on its coordinator shard
//! before it writes to them. v2+ may answer PRODUCER_FENCED (KIP-588),
//! older versions INVALID_PRODUCER_EPOCH.
//!
//! Every partition must exist: a missing one gets UNKNOWN_TOPIC_OR_PARTITION
//! and the others OPERATION_NOT_ATTEMPTED (nothing is added), as in Kafka;
//! internal topics get INVALID_REQUEST the same way (only the broker writes
//! them), and so does a topic the principal may not WRITE to, with
//! TOPIC_AUTHORIZATION_FAILED. Without WRITE on the transactional id every
//! partition gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED. Otherwise every
//! partition gets the coordinator's one answer.
//! Version 4 (several transactions, `verify_only`, KIP-890) is the
//! broker-to-broker form and is not served.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use super::{check_partition_count, decode};
use crate::broker::txn::on_txn_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

/// The first version that may answer PRODUCER_FENCED (KIP-588).
const FENCED_FROM_VERSION: i16 = 2;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let add: AddPartitionsToTxnRequest = decode(request, body)?;
    check_partition_count(
        request,
        add.v3_and_below_topics
            .iter()
            .map(|topic| topic.partitions.len())
            .sum(),
    )?;
    let cluster = request.broker.metadata.snapshot();
    let mut wanted = std::collections::BTreeSet::new();
    let mut refused: Option<i16> = None;
    // Each partition's own code (0: it may be added), in request order.
    let mut codes: Vec<i16> = Vec::new();
    let authorizer = request.authorizer();
    let id_refused =
        !authorizer.transactional_id(Operation::Write, &add.v3_and_below_transactional_id.0);
    for topic in &add.v3_and_below_topics {
        let name = topic.name.0.to_string();
        let meta = cluster.topic(&name);
        let internal = crate::broker::is_internal_topic(&name);
        let writable = authorizer.topic(Operation::Write, &name);
        for &partition in &topic.partitions {
            let index = u32::try_from(partition).ok();
            let exists =
                meta.is_some_and(|meta| index.is_some_and(|index| index < meta.partitions));
            let code = if !writable {
                Some(ResponseError::TopicAuthorizationFailed.code())
            } else if internal {
                Some(ResponseError::InvalidRequest.code())
            } else if !exists {
                Some(ResponseError::UnknownTopicOrPartition.code())
            } else {
                None
            };
            match (code, index) {
                (Some(code), _) => {
                    refused = Some(code);
                    codes.push(code);
                }
                (None, Some(index)) => {
                    wanted.insert((name.clone(), index));
                    codes.push(0);
                }
                (None, None) => codes.push(0),
            }
        }
    }
    let answer = if id_refused {
        Some(ResponseError::TransactionalIdAuthorizationFailed.code())
    } else if refused.is_some() {
        None
    } else {
        let id = add.v3_and_below_transactional_id.0.to_string();
        let producer_id = add.v3_and_below_producer_id.0;
        let epoch = add.v3_and_below_producer_epoch;
        let fenced = fenced_code(request.version, FENCED_FROM_VERSION);
        let key = id.clone();
        Some(
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
                            wanted.into_iter().collect(),
                            fenced,
                        )
                        .await
                },
            )
            .await
            .and_then(|answer| answer)
            .err()
            .unwrap_or(0),
        )
    };
    let not_attempted = ResponseError::OperationNotAttempted.code();
    let mut own_codes = codes.into_iter();
    let results = add
        .v3_and_below_topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|&partition| {
                    let own = own_codes.next().unwrap_or(0);
                    let code = match answer {
                        Some(code) => code,
                        None if own != 0 => own,
                        None => not_attempted,
                    };
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(partition)
                        .with_partition_error_code(code)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(partitions)
        })
        .collect();
    request
        .respond(AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results))
}

/// PRODUCER_FENCED from `from_version` on (KIP-588), INVALID_PRODUCER_EPOCH
/// before it.
pub fn fenced_code(version: i16, from_version: i16) -> i16 {
    if version >= from_version {
        ResponseError::ProducerFenced.code()
    } else {
        ResponseError::InvalidProducerEpoch.code()
    }
}
