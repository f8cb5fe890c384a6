//! `sluice transactions list|describe|abort`: what the transaction
//! coordinators know (ListTransactions, DescribeTransactions,
//! DescribeProducers; KIP-664), and fencing a transactional id, which
//! aborts its open transaction.

use std::time::{Duration, Instant};

use anyhow::Context;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeTransactionsRequest, InitProducerIdRequest,
    ListTransactionsRequest, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use super::table::Table;
use super::{AdminResult, describe_error, routing};
use crate::client::KafkaClient;

/// How long `abort` retries while the coordinator is still completing the
/// id's previous transaction (CONCURRENT_TRANSACTIONS).
const ABORT_WAIT: Duration = Duration::from_secs(30);
/// The transaction timeout `abort` falls back to when the id's own is
/// above `transactions.max_timeout_ms` now (the smallest maximum allowed).
const ABORT_FALLBACK_TIMEOUT_MS: i32 = 1000;

/// The transaction states, for `--state` in any case.
const STATES: [&str; 6] = [
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
];

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// Every transactional id, optionally only those in `state` or of
/// `producer_id`.
pub fn list(brokers: &str, state: Option<&str>, producer_id: Option<i64>) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let mut listed =
        routing::on_every_node(&mut client, |node| list_on(node, state, producer_id))?.concat();
    listed.sort();
    listed.dedup();
    let mut table = Table::new(&["TRANSACTIONAL-ID", "PRODUCER-ID", "STATE"]);
    for (id, producer, state) in listed {
        table.row(vec![id, producer.to_string(), state]);
    }
    print!("{}", table.render());
    Ok(())
}

/// What one node's transaction coordinators list: (transactional id,
/// producer id, state).
fn list_on(
    client: &mut KafkaClient,
    state: Option<&str>,
    producer_id: Option<i64>,
) -> anyhow::Result<Vec<(String, i64, String)>> {
    // The broker matches state names exactly; accept any case here.
    let state = state.map(|wanted| {
        STATES
            .iter()
            .find(|name| name.eq_ignore_ascii_case(wanted))
            .map_or(wanted, |name| *name)
    });
    let request = ListTransactionsRequest::default()
        .with_state_filters(state.map(text).into_iter().collect())
        .with_producer_id_filters(producer_id.map(ProducerId).into_iter().collect())
        .with_duration_filter(-1);
    let response = client.call(&request)?;
    if response.error_code != 0 {
        anyhow::bail!(describe_error(response.error_code, None));
    }
    if let Some(unknown) = response.unknown_state_filters.first() {
        anyhow::bail!(
            "unknown state {unknown}: use Empty, Ongoing, PrepareCommit, PrepareAbort, \
             CompleteCommit or CompleteAbort"
        );
    }
    Ok(response
        .transaction_states
        .iter()
        .map(|state| {
            (
                state.transactional_id.to_string(),
                state.producer_id.0,
                state.transaction_state.to_string(),
            )
        })
        .collect())
}

/// One transactional id: its state, producer, timeout, and the partitions
/// of its transaction in progress with where it began on each.
pub fn describe(brokers: &str, transactional_id: &str) -> AdminResult {
    let mut client =
        routing::connect_to_coordinator(brokers, transactional_id, routing::TRANSACTION)?;
    let response = client.call(
        &DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(text(transactional_id))]),
    )?;
    let state = response
        .transaction_states
        .first()
        .context("empty DescribeTransactions response")?;
    if state.error_code == ResponseError::TransactionalIdNotFound.code() {
        anyhow::bail!("transactional id {transactional_id} does not exist");
    }
    if state.error_code != 0 {
        anyhow::bail!(
            "transactional id {transactional_id}: {}",
            describe_error(state.error_code, None)
        );
    }
    println!("TRANSACTIONAL-ID  {transactional_id}");
    println!("STATE             {}", state.transaction_state);
    println!("PRODUCER-ID       {}", state.producer_id.0);
    println!("PRODUCER-EPOCH    {}", state.producer_epoch);
    println!("TIMEOUT-MS        {}", state.transaction_timeout_ms);
    println!(
        "STARTED           {}",
        if state.transaction_start_time_ms >= 0
            && !state.transaction_state.starts_with("Complete")
            && state.transaction_state.as_str() != "Empty"
        {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as i64);
            let ago_s = now_ms.saturating_sub(state.transaction_start_time_ms) / 1000;
            format!(
                "{} ms since the epoch ({ago_s} s ago)",
                state.transaction_start_time_ms
            )
        } else {
            "-".to_owned()
        }
    );
    if state.topics.is_empty() {
        return Ok(());
    }
    // Each partition's producers are known to its leader.
    let names: Vec<&str> = state
        .topics
        .iter()
        .map(|topic| topic.topic.as_str())
        .collect();
    let leaders = routing::leaders(&mut client, &names)?;
    let mut by_leader: std::collections::BTreeMap<String, Vec<TopicRequest>> =
        std::collections::BTreeMap::new();
    for topic in &state.topics {
        for &partition in &topic.partitions {
            let key = (topic.topic.to_string(), partition);
            let leader = leaders
                .get(&key)
                .cloned()
                .unwrap_or_else(|| client.address().to_owned());
            by_leader.entry(leader).or_default().push(
                TopicRequest::default()
                    .with_name(topic.topic.clone())
                    .with_partition_indexes(vec![partition]),
            );
        }
    }
    let mut answered = Vec::new();
    for (address, topics) in by_leader {
        let request = DescribeProducersRequest::default().with_topics(topics);
        let response = match routing::connect_to(&mut client, &address)? {
            Some(mut leader) => leader.call(&request)?,
            None => client.call(&request)?,
        };
        answered.extend(response.topics);
    }
    let mut rows = Vec::new();
    for topic in &answered {
        for partition in &topic.partitions {
            let open_since = partition
                .active_producers
                .iter()
                .find(|producer| producer.producer_id == state.producer_id)
                .map(|producer| producer.current_txn_start_offset)
                .filter(|&offset| offset >= 0)
                .map_or_else(|| "-".to_owned(), |offset| offset.to_string());
            let open_since = if partition.error_code == 0 {
                open_since
            } else {
                describe_error(partition.error_code, None)
            };
            rows.push((
                topic.name.to_string(),
                partition.partition_index,
                open_since,
            ));
        }
    }
    rows.sort();
    let mut table = Table::new(&["TOPIC", "PARTITION", "OPEN-SINCE-OFFSET"]);
    for (topic, partition, open_since) in rows {
        table.row(vec![topic, partition.to_string(), open_since]);
    }
    print!("{}", table.render());
    Ok(())
}

/// Fence `transactional_id`'s producer and abort its open transaction:
/// InitProducerId for the id, as a new instance of the producer would send
/// (the coordinator aborts the open transaction with a bumped epoch, so
/// the old producer's further writes are refused).
pub fn abort(brokers: &str, transactional_id: &str) -> AdminResult {
    let mut client =
        routing::connect_to_coordinator(brokers, transactional_id, routing::TRANSACTION)?;
    let described = client.call(
        &DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(text(transactional_id))]),
    )?;
    let state = described
        .transaction_states
        .first()
        .context("empty DescribeTransactions response")?;
    if state.error_code == ResponseError::TransactionalIdNotFound.code() {
        anyhow::bail!("transactional id {transactional_id} does not exist");
    }
    let was = state.transaction_state.to_string();
    // Keep the id's own timeout (the producer's setting).
    let mut timeout_ms = state.transaction_timeout_ms;
    let deadline = Instant::now() + ABORT_WAIT;
    loop {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(text(transactional_id))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response = client.call(&request)?;
        if response.error_code == 0 {
            let outcome = if matches!(was.as_str(), "Ongoing" | "PrepareAbort") {
                "its open transaction was aborted"
            } else if was == "PrepareCommit" {
                "its transaction had been committed already"
            } else {
                "it had no open transaction"
            };
            println!(
                "fenced transactional id {transactional_id} (it was {was}): producer id {} is \
                 now at epoch {}; {outcome}",
                response.producer_id.0, response.producer_epoch
            );
            return Ok(());
        }
        if response.error_code == ResponseError::InvalidTransactionTimeout.code()
            && timeout_ms != ABORT_FALLBACK_TIMEOUT_MS
        {
            timeout_ms = ABORT_FALLBACK_TIMEOUT_MS;
            continue;
        }
        let concurrent = response.error_code == ResponseError::ConcurrentTransactions.code();
        if !concurrent || Instant::now() >= deadline {
            anyhow::bail!(
                "transactional id {transactional_id}: {}",
                describe_error(response.error_code, None)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
