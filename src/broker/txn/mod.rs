//! Kafka transactions (KIP-98): the transaction coordinator and its log.
//!
//! * `busy`: an id's busy flag and the requests waiting their turn.
//! * [`records`]: the `__transaction_state` records (one per transactional
//!   id, the latest wins) and the transaction states.
//! * [`coordinator`]: a shard's coordinator: the transactional ids whose
//!   `__transaction_state` partition the shard owns, their state machine,
//!   timeouts and id expiry, and the log (write, replay, copy-forward
//!   compaction).
//! * [`markers`]: the markers that end a transaction on its partitions,
//!   written on each partition's leader node.
//! * [`verify`]: a transactional batch's check with its coordinator, on
//!   this node or another.
//!
//! Every request about a transactional id runs on its coordinator shard:
//! the owner of the `__transaction_state` partition the id hashes to
//! (FNV-1a, as groups). All state is in that log; the markers are in the
//! partitions' own logs, and the producer state that enforces them is
//! rebuilt from there (`storage::producer_state`).

mod busy;
pub mod coordinator;
pub mod markers;
pub mod records;
pub mod verify;

use crate::broker::internal_log::key_partition;
use crate::ids::ShardId;
use crate::shard::Shards;

/// The internal topic holding transaction states.
pub const TXN_TOPIC: &str = "__transaction_state";

/// Partitions of `__transaction_state` (created at broker start).
pub fn txn_topic_partitions(broker: &super::Broker) -> u32 {
    broker
        .metadata
        .snapshot()
        .topic(TXN_TOPIC)
        .map_or(1, |topic| topic.partitions)
}

/// The shard coordinating `transactional_id`.
pub fn coordinator_shard(shards: &Shards, transactional_id: &str, partitions: u32) -> ShardId {
    shards.owner(TXN_TOPIC, key_partition(transactional_id, partitions))
}

/// Run `work` with the coordinator of `transactional_id`, on its shard.
/// Errors with COORDINATOR_NOT_AVAILABLE (retriable) if that shard cannot
/// serve it, and NOT_COORDINATOR when another cluster node coordinates it.
pub async fn on_txn_coordinator<F, Fut, T>(
    shard: &std::rc::Rc<crate::shard::ShardContext>,
    broker: &super::Broker,
    transactional_id: &str,
    work: F,
) -> Result<T, i16>
where
    F: FnOnce(std::rc::Rc<coordinator::TxnCoordinator>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let unavailable = kafka_protocol::ResponseError::CoordinatorNotAvailable.code();
    let index = key_partition(transactional_id, txn_topic_partitions(broker));
    if !broker.coordinates(TXN_TOPIC, index) {
        return Err(kafka_protocol::ResponseError::NotCoordinator.code());
    }
    let target = coordinator_shard(
        &shard.shards,
        transactional_id,
        txn_topic_partitions(broker),
    );
    let loading = kafka_protocol::ResponseError::CoordinatorLoadInProgress.code();
    let ran = shard
        .run_on(target, move |_| async move {
            match coordinator::TxnCoordinator::local() {
                Some(coordinator) => {
                    if !coordinator.serves(index) {
                        // Load it now if this node just became its
                        // coordinator, rather than at the next check.
                        coordinator.match_leadership().await;
                    }
                    if coordinator.serves(index) {
                        Ok(work(coordinator).await)
                    } else {
                        // Still loading (the log's high watermark has not
                        // reached the takeover point yet): retriable.
                        Err(loading)
                    }
                }
                None => Err(unavailable),
            }
        })
        .await;
    ran.unwrap_or(Err(unavailable))
}
