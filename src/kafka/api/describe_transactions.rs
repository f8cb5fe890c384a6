//! DescribeTransactions (version 0; KIP-664): each transactional id's
//! state, timeout, start time, producer id and epoch, and the partitions
//! of its transaction in progress, from its coordinator shard. An id no
//! coordinator knows gets TRANSACTIONAL_ID_NOT_FOUND. An id the principal
//! may not DESCRIBE gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED, and topics
//! it may not DESCRIBE are left out of the partitions listed, as in Kafka.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName,
};

use super::{decode, str_bytes};
use crate::broker::txn::on_txn_coordinator;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{Operation, ResourceType};

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeTransactionsRequest = decode(request, body)?;
    let mut states = Vec::with_capacity(describe.transactional_ids.len());
    let authorizer = request.authorizer();
    for transactional_id in &describe.transactional_ids {
        let id = transactional_id.0.to_string();
        if !authorizer.transactional_id(Operation::Describe, &id) {
            states.push(
                TransactionState::default()
                    .with_transactional_id(transactional_id.clone())
                    .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code()),
            );
            continue;
        }
        let key = id.clone();
        let found = on_txn_coordinator(
            request.shard,
            request.broker,
            &key,
            move |coordinator| async move { coordinator.describe(&id) },
        )
        .await;
        let state = TransactionState::default().with_transactional_id(transactional_id.clone());
        states.push(match found {
            Ok(Some(meta)) => {
                let mut topics: Vec<TopicData> = Vec::new();
                let describable = meta.partitions.iter().filter(|(topic, _)| {
                    authorizer.allows_quietly(Operation::Describe, ResourceType::Topic, topic)
                });
                for (topic, partition) in describable {
                    match topics.last_mut() {
                        Some(last) if last.topic.0.as_str() == topic => {
                            last.partitions.push(*partition as i32)
                        }
                        _ => topics.push(
                            TopicData::default()
                                .with_topic(TopicName(str_bytes(topic)))
                                .with_partitions(vec![*partition as i32]),
                        ),
                    }
                }
                state
                    .with_transaction_state(str_bytes(meta.state.name()))
                    .with_transaction_timeout_ms(meta.timeout_ms)
                    .with_transaction_start_time_ms(meta.start_ms)
                    .with_producer_id(ProducerId(meta.producer_id))
                    .with_producer_epoch(meta.producer_epoch)
                    .with_topics(topics)
            }
            Ok(None) => state.with_error_code(ResponseError::TransactionalIdNotFound.code()),
            Err(code) => state.with_error_code(code),
        });
    }
    request.respond(DescribeTransactionsResponse::default().with_transaction_states(states))
}
