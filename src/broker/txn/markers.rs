//! The markers that end a transaction on its partitions (KIP-98), written
//! on whichever node leads each partition.
//!
//! Once a transaction's Prepare* state is durable, its coordinator writes a
//! commit or abort marker to every partition in it and waits for each to
//! be fsynced before it records Complete*. Partitions led by this node are
//! written on their owner shards; those led by another node go to it in one
//! request per node (at most [`PARTITIONS_PER_CALL_MAX`] partitions each)
//! over the cluster RPC ([`PATH_MARKER`], as Kafka's coordinator sends one
//! WriteTxnMarkers per broker), and that node writes them the same way. On
//! `__consumer_offsets` the group coordinator appends the marker, so its
//! pending transactional offsets follow the log. Partitions whose marker
//! failed are retried with back-off until each is stored, gone, or refused
//! by the partition's producer state (the producer was fenced there
//! already).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use super::coordinator::{RETRIES, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN};
use crate::broker::group::OFFSETS_TOPIC;
use crate::broker::group::coordinator::Coordinator as GroupCoordinator;
use crate::broker::{Broker, is_internal_topic, peer};
use crate::log_throttle::monotonic_ms;
use crate::record_batch::control::{MarkerKind, TxnMarker};
use crate::shard::{ShardContext, Shards};
use crate::storage::{AppendError, Durability};

/// Where a coordinator on another node sends a [`MarkerRequest`]; the
/// answer is one [`MarkerWritten`] per partition, in order.
pub const PATH_MARKER: &str = "/broker/txn/marker";

/// Partitions in one request to a node: bounds its body and the work one
/// request starts there.
pub const PARTITIONS_PER_CALL_MAX: usize = 1000;

/// One transaction's marker, for some of its partitions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MarkerRequest {
    pub producer_id: i64,
    pub epoch: i16,
    /// A commit marker, or an abort marker.
    pub commit: bool,
    pub coordinator_epoch: i32,
    /// (topic, partition) of each partition to write it to.
    pub partitions: Vec<(String, u32)>,
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

    /// The same marker for `partitions`.
    fn for_partitions(&self, partitions: Vec<(String, u32)>) -> MarkerRequest {
        MarkerRequest {
            partitions,
            ..self.clone()
        }
    }
}

/// What became of one attempt to write a marker to one partition.
#[derive(Debug, Serialize, Deserialize)]
pub enum MarkerWritten {
    /// Appended and fsynced on the partition's leader.
    Stored,
    /// The partition is gone (its topic was deleted): nothing to close.
    PartitionGone,
    /// Refused for good: the partition's producer state refuses it (an
    /// older epoch than the partition has seen: the producer was fenced
    /// there already), or the request is not one a coordinator sends.
    Refused(String),
    /// Not written this time (the reason); the coordinator tries again.
    Failed(String),
}

/// Write `request`'s marker on every partition's leader, retrying the
/// partitions that failed with back-off until each is stored, gone, or
/// refused: true then; false as soon as `deposed` says another coordinator
/// took the transaction over (it writes the markers itself).
pub async fn write_until_stored(
    context: &Rc<ShardContext>,
    broker: &Arc<Broker>,
    request: MarkerRequest,
    deposed: &dyn Fn() -> bool,
) -> bool {
    let mut backoff = RETRY_BACKOFF_MIN;
    let mut remaining = request.partitions.clone();
    let producer_id = request.producer_id;
    loop {
        if deposed() {
            return false;
        }
        let outcomes = write_once(context, broker, &request.for_partitions(remaining)).await;
        remaining = Vec::new();
        for ((topic, partition), outcome) in outcomes {
            match outcome {
                MarkerWritten::Stored => {
                    let result = if request.commit { "commit" } else { "abort" };
                    metrics::counter!(crate::telemetry::names::TRANSACTION_MARKERS, "result" => result)
                        .increment(1);
                }
                MarkerWritten::PartitionGone => {
                    tracing::info!(%topic, partition, producer_id, "skipping the transaction marker of a deleted partition");
                }
                MarkerWritten::Refused(refused) => {
                    tracing::info!(%topic, partition, producer_id, %refused, "transaction marker refused by the partition");
                }
                MarkerWritten::Failed(error) => {
                    if let Some(failed) = RETRIES.record(monotonic_ms()) {
                        tracing::warn!(%topic, partition, producer_id, %error, failed, "cannot write a transaction marker; retrying");
                    }
                    remaining.push((topic, partition));
                }
            }
        }
        if remaining.is_empty() {
            return true;
        }
        compio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}

/// The node that takes markers for `topic`-`partition`: its leader; for
/// `__consumer_offsets`, its group coordinator's node. -1 while fenced.
fn marker_node(broker: &Arc<Broker>, topic: &str, partition: u32) -> i32 {
    if topic == OFFSETS_TOPIC {
        broker.coordinator_of(OFFSETS_TOPIC, partition).0
    } else {
        broker.partition_leader(topic, partition)
    }
}

/// One attempt for every partition of `request`: this node's written here,
/// the others' sent to their nodes, one request per node (and per
/// [`PARTITIONS_PER_CALL_MAX`] partitions), all at once.
async fn write_once(
    context: &Rc<ShardContext>,
    broker: &Arc<Broker>,
    request: &MarkerRequest,
) -> Vec<((String, u32), MarkerWritten)> {
    let own = broker.config.kafka.node_id;
    let mut by_node: BTreeMap<i32, Vec<(String, u32)>> = BTreeMap::new();
    for (topic, partition) in &request.partitions {
        let node = marker_node(broker, topic, *partition);
        by_node
            .entry(node)
            .or_default()
            .push((topic.clone(), *partition));
    }
    let mut outcomes = Vec::new();
    let mut calls = Vec::new();
    for (node, partitions) in by_node {
        if node == own {
            outcomes
                .extend(write_here_all(context, broker, request.for_partitions(partitions)).await);
        } else if node < 0 {
            let fenced =
                || MarkerWritten::Failed("the partition's leader node is fenced".to_owned());
            outcomes.extend(
                partitions
                    .into_iter()
                    .map(|partition| (partition, fenced())),
            );
        } else {
            for chunk in partitions.chunks(PARTITIONS_PER_CALL_MAX) {
                calls.push(send(broker, node, request.for_partitions(chunk.to_vec())));
            }
        }
    }
    for answered in join_all(calls).await {
        outcomes.extend(answered);
    }
    outcomes
}

/// Send `request` to node `node`; every partition failed if it cannot
/// answer, or answers for another number of partitions.
async fn send(
    broker: &Broker,
    node: i32,
    request: MarkerRequest,
) -> Vec<((String, u32), MarkerWritten)> {
    let answer: Result<Vec<MarkerWritten>, String> =
        peer::call(broker, node, PATH_MARKER, &request).await;
    let answer = answer.and_then(|written| {
        if written.len() == request.partitions.len() {
            Ok(written)
        } else {
            Err(format!(
                "node {node} answered for {} of {} partitions",
                written.len(),
                request.partitions.len()
            ))
        }
    });
    match answer {
        Ok(written) => request.partitions.into_iter().zip(written).collect(),
        Err(error) => request
            .partitions
            .into_iter()
            .map(|partition| (partition, MarkerWritten::Failed(error.clone())))
            .collect(),
    }
}

/// Write the marker on every partition of `request`, each on its owner
/// shard of this node, at once.
async fn write_here_all(
    context: &Rc<ShardContext>,
    broker: &Arc<Broker>,
    request: MarkerRequest,
) -> Vec<((String, u32), MarkerWritten)> {
    let writes = request
        .partitions
        .iter()
        .map(|(topic, partition)| write_here(context, broker, &request, topic.clone(), *partition));
    let written = join_all(writes).await;
    request.partitions.into_iter().zip(written).collect()
}

/// Write the marker on `topic`-`partition` on this node, on its owner
/// shard, unless another node leads the partition now.
async fn write_here(
    context: &Rc<ShardContext>,
    broker: &Arc<Broker>,
    request: &MarkerRequest,
    topic: String,
    partition: u32,
) -> MarkerWritten {
    let node = marker_node(broker, &topic, partition);
    if node != broker.config.kafka.node_id {
        return MarkerWritten::Failed(format!(
            "node {} does not lead {topic}-{partition} (node {node} does)",
            broker.config.kafka.node_id
        ));
    }
    let owner = context.shards.owner(&topic, partition);
    let (producer_id, epoch, marker) = (request.producer_id, request.epoch, request.marker());
    let broker = Arc::clone(broker);
    context
        .run_on(owner, move |owner| async move {
            append_and_wait(
                &owner,
                &broker,
                &topic,
                partition,
                producer_id,
                epoch,
                &marker,
            )
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
/// its fdatasync and, in a cluster, for the partition's in-sync replicas
/// (Kafka writes markers with acks=all: the transaction completes only
/// once no failover can lose its markers).
async fn append_and_wait(
    context: &ShardContext,
    broker: &Broker,
    topic: &str,
    partition: u32,
    producer_id: i64,
    epoch: i16,
    marker: &TxnMarker,
) -> Result<MarkerWritten, AppendError> {
    let store = &context.store_for(topic, partition);
    let leader_epoch = broker.partition_leader_epoch(topic, partition);
    let receipt = if topic == OFFSETS_TOPIC {
        let Some(group) = GroupCoordinator::local() else {
            return Ok(MarkerWritten::PartitionGone);
        };
        if !group.serves(partition) {
            // Its coordinator is loading it here (or it moved): retried.
            return Err(AppendError::NotLeader);
        }
        group
            .append_marker_in_order(partition, producer_id, epoch, marker)
            .await?
    } else {
        match store.partition_id(topic, partition) {
            Some(id) => Some(
                store
                    .append_marker(id, producer_id, epoch, marker, Durability::Fsynced)
                    .await?,
            ),
            None => None,
        }
    };
    let Some(receipt) = receipt else {
        return Ok(MarkerWritten::PartitionGone);
    };
    crate::broker::replication::durable_everywhere(
        broker,
        store,
        topic,
        partition,
        &receipt,
        leader_epoch,
    )
    .await?;
    Ok(MarkerWritten::Stored)
}

/// Why a marker request from another node is not one a coordinator sends,
/// if it is not: markers go to user topics and `__consumer_offsets`, for a
/// producer id and epochs that are not negative.
fn refused(request: &MarkerRequest) -> Option<String> {
    if request.producer_id < 0 || request.epoch < 0 || request.coordinator_epoch < 0 {
        return Some(format!(
            "a marker needs a producer id and epochs of at least 0 (producer {}, epoch {}, \
             coordinator epoch {})",
            request.producer_id, request.epoch, request.coordinator_epoch
        ));
    }
    if request.partitions.len() > PARTITIONS_PER_CALL_MAX {
        return Some(format!(
            "{} partitions in one request; at most {PARTITIONS_PER_CALL_MAX}",
            request.partitions.len()
        ));
    }
    None
}

/// Answer another node's [`PATH_MARKER`] request: one outcome per
/// partition, in order.
pub async fn serve(
    shards: Shards,
    broker: Arc<Broker>,
    request: MarkerRequest,
) -> Vec<MarkerWritten> {
    if let Some(reason) = refused(&request) {
        return request
            .partitions
            .iter()
            .map(|_| MarkerWritten::Refused(reason.clone()))
            .collect();
    }
    let metadata = broker.metadata.snapshot();
    let bare = request.for_partitions(Vec::new());
    let writes = request.partitions.iter().map(|(topic, partition)| {
        let (shards, broker, request) = (shards.clone(), Arc::clone(&broker), bare.clone());
        let (topic, partition) = (topic.clone(), *partition);
        let known = metadata
            .topic(&topic)
            .is_some_and(|meta| partition < meta.partitions);
        let takes_markers = topic == OFFSETS_TOPIC || !is_internal_topic(&topic);
        async move {
            if !known {
                return MarkerWritten::PartitionGone;
            }
            if !takes_markers {
                return MarkerWritten::Refused(format!("{topic} takes no transaction markers"));
            }
            let owner = shards.owner(&topic, partition);
            shards
                .call(owner, move |context| async move {
                    write_here(&context, &broker, &request, topic, partition).await
                })
                .await
                .unwrap_or_else(|gone| MarkerWritten::Failed(gone.to_string()))
        }
    });
    join_all(writes).await
}
