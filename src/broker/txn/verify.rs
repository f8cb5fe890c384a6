//! A transactional batch's check with its transaction's coordinator, on
//! this node or another (KIP-890's verification).
//!
//! Before a producer's first transactional batch on a partition is
//! appended, the partition's owner shard asks the transactional id's
//! coordinator whether the partition is in the producer's open transaction
//! (or, from Produce v12, adds it). In a cluster that coordinator may lead
//! `__transaction_state` on another node: the question then travels to it
//! over the cluster RPC ([`PATH_VERIFY`], as Kafka's brokers send each
//! other a verify-only AddPartitionsToTxn), and an unreachable node is
//! answered NETWORK_EXCEPTION, which the produce path turns into a
//! retriable error.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};

use super::coordinator::TRANSACTIONAL_ID_BYTES_MAX;
use super::{TXN_TOPIC, coordinator_shard, on_txn_coordinator, txn_topic_partitions};
use crate::broker::group::OFFSETS_TOPIC;
use crate::broker::internal_log::key_partition;
use crate::broker::{Broker, is_internal_topic, peer};
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::shard::{ShardContext, Shards};

/// Where another node's partition leader sends a [`VerifyRequest`]; the
/// answer is `Result<(), i16>` (the coordinator's error code).
pub const PATH_VERIFY: &str = "/broker/txn/verify";

/// Unreachable coordinator nodes, logged at most 10 times per 10 s.
static UNREACHABLE: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 10);

/// A partition a producer writes a transactional batch to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    pub topic: String,
    pub partition: u32,
    /// Add the partition to the transaction (Produce v12+, KIP-890's
    /// transactions v2) rather than only check that it is in it.
    pub implicit_add: bool,
    /// The code a fenced producer gets (the request version's).
    pub fenced: i16,
}

/// Ask the transactional id's coordinator, wherever it runs, whether the
/// partition is in the producer's open transaction (adding it with
/// `implicit_add`). Errors with the coordinator's code, NOT_COORDINATOR or
/// COORDINATOR_NOT_AVAILABLE while it moves or is fenced, and
/// NETWORK_EXCEPTION when its node cannot be reached (all retriable).
pub async fn verify(
    context: &Rc<ShardContext>,
    broker: &Broker,
    request: VerifyRequest,
) -> Result<(), i16> {
    let index = key_partition(&request.transactional_id, txn_topic_partitions(broker));
    let node = broker.coordinator_of(TXN_TOPIC, index).0;
    if node == broker.config.kafka.node_id {
        return verify_here(context, broker, request).await;
    }
    if node < 0 {
        return Err(ResponseError::CoordinatorNotAvailable.code());
    }
    match peer::call(broker, node, PATH_VERIFY, &request).await {
        Ok(answer) => answer,
        Err(error) => {
            if let Some(failed) = UNREACHABLE.record(monotonic_ms()) {
                tracing::warn!(node, transactional_id = %request.transactional_id, %error, failed, "cannot reach a transaction's coordinator node to verify a batch; the producer retries");
            }
            Err(ResponseError::NetworkException.code())
        }
    }
}

/// Ask this node's coordinator of the id.
async fn verify_here(
    context: &Rc<ShardContext>,
    broker: &Broker,
    request: VerifyRequest,
) -> Result<(), i16> {
    let transactional_id = request.transactional_id.clone();
    on_txn_coordinator(
        context,
        broker,
        &transactional_id,
        move |coordinator| async move {
            let VerifyRequest {
                transactional_id,
                producer_id,
                epoch,
                topic,
                partition,
                implicit_add,
                fenced,
            } = request;
            if implicit_add {
                let partitions = vec![(topic, partition)];
                coordinator
                    .add_partitions(&transactional_id, producer_id, epoch, partitions, fenced)
                    .await
            } else {
                coordinator.verify(&transactional_id, producer_id, epoch, &topic, partition)
            }
        },
    )
    .await
    .and_then(|verified| verified)
}

/// Why a request from another node is not one a partition leader sends,
/// if it is not (the error code): a transactional id the Kafka API would
/// take, a partition of a topic the metadata has (user topics and
/// `__consumer_offsets` join transactions), a producer id and epoch that
/// are not negative.
fn check(broker: &Broker, request: &VerifyRequest) -> Result<(), i16> {
    let invalid = ResponseError::InvalidRequest.code();
    let id = &request.transactional_id;
    if id.is_empty() || id.len() > TRANSACTIONAL_ID_BYTES_MAX {
        return Err(invalid);
    }
    if request.producer_id < 0 || request.epoch < 0 {
        return Err(invalid);
    }
    let known = broker
        .metadata
        .snapshot()
        .topic(&request.topic)
        .is_some_and(|topic| request.partition < topic.partitions);
    if !known {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    }
    if is_internal_topic(&request.topic) && request.topic != OFFSETS_TOPIC {
        return Err(invalid);
    }
    Ok(())
}

/// Answer another node's [`PATH_VERIFY`] request, on the id's coordinator
/// shard here (NOT_COORDINATOR if this node no longer coordinates it).
pub async fn serve(shards: Shards, broker: Arc<Broker>, request: VerifyRequest) -> Result<(), i16> {
    check(&broker, &request)?;
    let unavailable = ResponseError::CoordinatorNotAvailable.code();
    let partitions = txn_topic_partitions(&broker);
    let target = coordinator_shard(&shards, &request.transactional_id, partitions);
    shards
        .call(target, move |context| async move {
            verify_here(&context, &broker, request).await
        })
        .await
        .unwrap_or(Err(unavailable))
}
