//! The markers that end a transaction on its partitions (KIP-98), written
//! on whichever node leads each partition.
//!
//! Once a transaction's Prepare* state is durable, its coordinator writes a
//! commit or abort marker to every partition in it and waits for each to
//! be fsynced before it records Complete*. A partition led by this node is
//! written on its owner shard; one led by another node gets the marker over
//! the cluster RPC ([`PATH_MARKER`], as Kafka's coordinator sends
//! WriteTxnMarkers to the partitions' leaders), and that node writes it the
//! same way. On `__consumer_offsets` the group coordinator appends it, so
//! its pending transactional offsets follow the log. Every failure is
//! retried with back-off until the marker is stored, its partition is gone,
//! or the partition's producer state refuses it (the producer was fenced
//! there already).

use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::coordinator::{RETRIES, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN};
use crate::broker::group::OFFSETS_TOPIC;
use crate::broker::group::coordinator::Coordinator as GroupCoordinator;
use crate::broker::{Broker, peer};
use crate::log_throttle::monotonic_ms;
use crate::record_batch::control::{MarkerKind, TxnMarker};
use crate::shard::{ShardContext, Shards};
use crate::storage::{AppendError, Durability};

/// Where a coordinator on another node sends a [`MarkerRequest`]; the
/// answer is a [`MarkerWritten`].
pub const PATH_MARKER: &str = "/broker/txn/marker";

/// One marker for one partition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MarkerRequest {
    pub topic: String,
    pub partition: u32,
    pub producer_id: i64,
    pub epoch: i16,
    /// A commit marker, or an abort marker.
    pub commit: bool,
    pub coordinator_epoch: i32,
}

impl MarkerRequest {
    fn marker(&self) -> TxnMarker {
        TxnMarker {
            kind: if self.commit {
                MarkerKind::Commit
            } else {
                MarkerKind::Abort
            },
            coordinator_epoch: self.coordinator_epoch,
        }
    }
}

/// What became of one attempt to write a marker.
#[derive(Debug, Serialize, Deserialize)]
pub enum MarkerWritten {
    /// Appended and fsynced on the partition's leader.
    Stored,
    /// The partition is gone (its topic was deleted): nothing to close.
    PartitionGone,
    /// The partition's producer state refused it (an older epoch than the
    /// partition has seen: the producer was fenced there already).
    Refused(String),
    /// Not written this time (the reason); the coordinator tries again.
    Failed(String),
}

/// Write `request`'s marker on its partition's leader, retrying with
/// back-off until it is stored, the partition is gone, or it is refused.
pub async fn write_until_stored(
    context: Rc<ShardContext>,
    broker: Arc<Broker>,
    request: MarkerRequest,
) {
    let mut backoff = RETRY_BACKOFF_MIN;
    let (topic, partition, producer_id) = (&request.topic, request.partition, request.producer_id);
    loop {
        let error = match write_once(&context, &broker, request.clone()).await {
            MarkerWritten::Stored => {
                let result = if request.commit { "commit" } else { "abort" };
                metrics::counter!(crate::telemetry::names::TRANSACTION_MARKERS, "result" => result)
                    .increment(1);
                return;
            }
            MarkerWritten::PartitionGone => {
                tracing::info!(%topic, partition, producer_id, "skipping the transaction marker of a deleted partition");
                return;
            }
            MarkerWritten::Refused(refused) => {
                tracing::info!(%topic, partition, producer_id, %refused, "transaction marker refused by the partition's producer state");
                return;
            }
            MarkerWritten::Failed(error) => error,
        };
        if let Some(failed) = RETRIES.record(monotonic_ms()) {
            tracing::warn!(%topic, partition, producer_id, %error, failed, "cannot write a transaction marker; retrying");
        }
        compio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}

/// The node that takes markers for `topic`-`partition`: its leader; for
/// `__consumer_offsets`, its group coordinator's node. -1 while fenced.
fn marker_node(broker: &Broker, topic: &str, partition: u32) -> i32 {
    if topic == OFFSETS_TOPIC {
        broker.coordinator_of(OFFSETS_TOPIC, partition).0
    } else {
        broker.partition_leader(topic, partition)
    }
}

/// One attempt, here or on the partition's leader node.
async fn write_once(
    context: &Rc<ShardContext>,
    broker: &Broker,
    request: MarkerRequest,
) -> MarkerWritten {
    let node = marker_node(broker, &request.topic, request.partition);
    if node == broker.config.kafka.node_id {
        return write_here(context, broker, request).await;
    }
    if node < 0 {
        return MarkerWritten::Failed("the partition's leader node is fenced".to_owned());
    }
    peer::call(broker, node, PATH_MARKER, &request)
        .await
        .unwrap_or_else(MarkerWritten::Failed)
}

/// Write the marker on this node, on the partition's owner shard, unless
/// another node leads the partition now.
async fn write_here(
    context: &Rc<ShardContext>,
    broker: &Broker,
    request: MarkerRequest,
) -> MarkerWritten {
    let node = marker_node(broker, &request.topic, request.partition);
    if node != broker.config.kafka.node_id {
        return MarkerWritten::Failed(format!(
            "node {} does not lead {}-{} (node {node} does)",
            broker.config.kafka.node_id, request.topic, request.partition
        ));
    }
    let owner = context.shards.owner(&request.topic, request.partition);
    context
        .run_on(owner, move |owner| async move {
            append_and_wait(&owner, &request)
                .await
                .unwrap_or_else(|error| match error {
                    AppendError::Producer(refused) => MarkerWritten::Refused(refused.to_string()),
                    error => MarkerWritten::Failed(error.to_string()),
                })
        })
        .await
        .unwrap_or_else(|gone| MarkerWritten::Failed(gone.to_string()))
}

/// Append the marker on this, the partition's owner shard, and wait for
/// its fdatasync.
async fn append_and_wait(
    context: &ShardContext,
    request: &MarkerRequest,
) -> Result<MarkerWritten, AppendError> {
    let store = &context.store;
    let (partition, producer_id, epoch) = (request.partition, request.producer_id, request.epoch);
    let marker = request.marker();
    let receipt = if request.topic == OFFSETS_TOPIC {
        let Some(group) = GroupCoordinator::local() else {
            return Ok(MarkerWritten::PartitionGone);
        };
        group
            .append_marker_in_order(partition, producer_id, epoch, &marker)
            .await?
    } else {
        match store.partition_id(&request.topic, partition) {
            Some(id) => Some(
                store
                    .append_marker(id, producer_id, epoch, &marker, Durability::Fsynced)
                    .await?,
            ),
            None => None,
        }
    };
    let Some(receipt) = receipt else {
        return Ok(MarkerWritten::PartitionGone);
    };
    store.wait(&receipt).await?;
    Ok(MarkerWritten::Stored)
}

/// Answer another node's [`PATH_MARKER`] request.
pub async fn serve(shards: Shards, broker: Arc<Broker>, request: MarkerRequest) -> MarkerWritten {
    let owner = shards.owner(&request.topic, request.partition);
    shards
        .call(owner, move |context| async move {
            write_here(&context, &broker, request).await
        })
        .await
        .unwrap_or_else(|gone| MarkerWritten::Failed(gone.to_string()))
}
