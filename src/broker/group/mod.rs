//! Consumer groups: the classic Kafka group protocol, the consumer protocol
//! of KIP-848, and committed offsets.
//!
//! * [`membership`]: one group's rebalance state machine (join, sync,
//!   heartbeat, leave, session expiry, generations, static members).
//! * [`consumer`]: consumer-protocol groups (epochs, server-side assignors,
//!   reconciliation, their records); [`consumer_coordinator`]: how the
//!   coordinator serves and stores them, and the rules between the two
//!   protocols; [`log_record`]: every record kind in `__consumer_offsets`.
//! * [`config`]: per-group configs (session timeout, heartbeat interval).
//! * [`offsets`]: the committed-offsets table and its stored records.
//! * [`coordinator`]: a shard's groups, with the waiting, the timers and the
//!   `__consumer_offsets` log (write, replay, snapshot compaction);
//!   [`coordinator_error`]: what its start and its writes can fail with.
//!
//! Every request about a group runs on the group's coordinator shard: the
//! owner of the `__consumer_offsets` partition the group id hashes to.

pub mod config;
pub mod consumer;
pub mod consumer_coordinator;
pub mod coordinator;
pub mod coordinator_error;
pub mod log_record;
pub mod membership;
pub mod offsets;

use crate::ids::ShardId;
use crate::shard::Shards;

/// The internal topic holding committed offsets. Clients may read it but not
/// produce to it, delete it or change it.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Partitions of `__consumer_offsets` (created at broker start).
pub fn offsets_topic_partitions(broker: &super::Broker) -> u32 {
    broker
        .metadata
        .snapshot()
        .topic(OFFSETS_TOPIC)
        .map_or(1, |topic| topic.partitions)
}

/// The shard coordinating `group`, given the offsets topic's partition count.
pub fn coordinator_shard(shards: &Shards, group: &str, offsets_partitions: u32) -> ShardId {
    let index = coordinator::offsets_partition(group, offsets_partitions);
    shards.owner(OFFSETS_TOPIC, index)
}

/// Run `work` with the coordinator of `group`, on its shard. Errors with
/// COORDINATOR_NOT_AVAILABLE (retriable) if that shard cannot serve it, and
/// NOT_COORDINATOR when another cluster node coordinates the group.
pub async fn on_coordinator<F, Fut, T>(
    shard: &std::rc::Rc<crate::shard::ShardContext>,
    broker: &super::Broker,
    group: &str,
    work: F,
) -> Result<T, i16>
where
    F: FnOnce(std::rc::Rc<coordinator::Coordinator>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let unavailable = kafka_protocol::ResponseError::CoordinatorNotAvailable.code();
    let index = coordinator::offsets_partition(group, offsets_topic_partitions(broker));
    if !broker.coordinates(OFFSETS_TOPIC, index) {
        return Err(kafka_protocol::ResponseError::NotCoordinator.code());
    }
    let target = coordinator_shard(&shard.shards, group, offsets_topic_partitions(broker));
    let loading = kafka_protocol::ResponseError::CoordinatorLoadInProgress.code();
    let ran = shard
        .run_on(target, move |_| async move {
            match coordinator::Coordinator::local() {
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
