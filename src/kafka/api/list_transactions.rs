//! ListTransactions (versions 0–1; KIP-664, KIP-994 for v1's duration
//! filter): every transactional id the coordinators of all shards know,
//! with its producer id and state, filtered by state names, producer ids
//! and (v1) how long the transaction has been running. Unknown state names
//! are echoed in `unknown_state_filters`, as Kafka does. Version 2 (an id
//! pattern) is not served. Only the ids the principal may DESCRIBE are
//! listed.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};

use super::{decode, str_bytes};
use crate::broker::group::coordinator::now_ms;
use crate::broker::txn::coordinator::{TxnCoordinator, TxnListing};
use crate::broker::txn::records::TxnState;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{Operation, ResourceType};

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let list: ListTransactionsRequest = decode(request, body)?;
    let wanted_states: Vec<String> = list.state_filters.iter().map(ToString::to_string).collect();
    let unknown: Vec<_> = wanted_states
        .iter()
        .filter(|name| {
            !TxnState::ALL
                .iter()
                .any(|state| state.name() == name.as_str())
        })
        .map(|name| str_bytes(name))
        .collect();
    let producers: Vec<i64> = list.producer_id_filters.iter().map(|id| id.0).collect();
    // -1 (or v0): no duration filter.
    let longer_than = (request.version >= 1 && list.duration_filter >= 0)
        .then(|| Duration::from_millis(list.duration_filter as u64));
    let shards = &request.shard.shards;
    let lists = shards.ids().map(|shard| {
        request.shard.run_on(shard, |_| async move {
            TxnCoordinator::local()
                .map(|coordinator| coordinator.list())
                .unwrap_or_default()
        })
    });
    let now = now_ms();
    let authorizer = request.authorizer();
    let mut states: Vec<TxnListing> = join_all(lists)
        .await
        .into_iter()
        .flat_map(Result::unwrap_or_default)
        .filter(|listing| {
            authorizer.allows_quietly(
                Operation::Describe,
                ResourceType::TransactionalId,
                &listing.transactional_id,
            )
        })
        .filter(|listing| {
            let meta = &listing.meta;
            (wanted_states.is_empty() || wanted_states.iter().any(|name| name == meta.state.name()))
                && (producers.is_empty() || producers.contains(&meta.producer_id))
                && longer_than.is_none_or(|duration| {
                    meta.start_ms >= 0
                        && now.saturating_sub(meta.start_ms) > duration.as_millis() as i64
                })
        })
        .collect();
    states.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
    let transaction_states = states
        .into_iter()
        .map(|listing| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(&listing.transactional_id)))
                .with_producer_id(ProducerId(listing.meta.producer_id))
                .with_transaction_state(str_bytes(listing.meta.state.name()))
        })
        .collect();
    request.respond(
        ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown)
            .with_transaction_states(transaction_states),
    )
}
