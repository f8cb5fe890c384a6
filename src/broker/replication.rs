//! Followers copying their shard groups' logs from the leaders (issue 16;
//! ARCHITECTURE.md, "Cluster II design").
//!
//! In a cluster, shard `i` of every node is a member of the shard groups
//! `j·S + i` whose members include that node. For each group it follows
//! (a member, not the leader) the shard keeps a follower store, a
//! [`ShardStore`] of its own under `<data_dir>/replicas/group-<g>/`, holding
//! the same partitions (same ids) as the leader's shard, and runs a loop
//! that asks the leader for the frames past its end ([`PATH_FETCH`], a long
//! poll over the cluster listener, answered with the leader's frames as its
//! log holds them) and appends them at the same positions
//! (`ShardStore::append_replicated_with`), so offsets, consume queues and
//! producer state are the leader's by construction.
//!
//! Built so far: the copying. Not yet: the high watermark and acks=all over
//! the in-sync set, in-sync set changes, failover and truncation.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Broker, is_internal_topic, peer};
use crate::broker::metadata::ClusterMetadata;
use crate::ids::{LogPosition, PartitionId, ShardId};
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::shard::{ShardContext, Shards};
use crate::storage::replica::{LogRead, ReplicaAppendError};
use crate::storage::{OpenError, PartitionError, ShardStore};

/// Where a follower asks a group's leader for frames ([`FetchRequest`]);
/// the answer is the position of the first frame and the leader's written
/// end (8 bytes each, big-endian), followed by the frames.
pub const PATH_FETCH: &str = "/broker/replica/fetch";

/// Most bytes of frames a follower asks for at once (a single bigger frame
/// still comes whole).
pub const FETCH_BYTES_MAX: u32 = 4 << 20;

/// Longest a leader holds a fetch that finds nothing new.
pub const FETCH_WAIT_MAX: Duration = Duration::from_millis(500);

/// How often a held fetch looks for new frames.
const FETCH_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Back-off after a failed fetch, doubled up to the maximum.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Failed fetches and appends, logged at most 10 times per 10 s.
static FAILURES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 10);

/// A follower's request for the frames of shard group `group` from
/// position `from`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchRequest {
    pub group: u32,
    /// The follower's log end: where the frames it lacks start.
    pub from: u64,
    /// The follower's durable end (for the high watermark, issue 16).
    pub durable: u64,
    pub max_bytes: u32,
    pub wait_ms: u32,
}

fn encode(read: &LogRead, written_end: LogPosition) -> Vec<u8> {
    let mut answer = Vec::with_capacity(16 + read.frames.len());
    answer.extend_from_slice(&read.position.0.to_be_bytes());
    answer.extend_from_slice(&written_end.0.to_be_bytes());
    answer.extend_from_slice(&read.frames);
    answer
}

/// The frames read and the leader's written end.
fn decode(bytes: &[u8]) -> Result<(LogRead, LogPosition), String> {
    let short = || format!("a {}-byte answer lacks its positions", bytes.len());
    let (position, rest) = bytes.split_first_chunk::<8>().ok_or_else(short)?;
    let (written_end, frames) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let read = LogRead {
        position: LogPosition(u64::from_be_bytes(*position)),
        frames: frames.to_vec(),
    };
    Ok((read, LogPosition(u64::from_be_bytes(*written_end))))
}

/// The shard groups this node follows on `shard`: (group number, leader).
fn followed_groups(broker: &Broker, shard: ShardId) -> Vec<(u32, u64)> {
    let snapshot = broker.metadata.snapshot();
    let Some(placement) = &snapshot.placement else {
        return Vec::new();
    };
    let own = u64::try_from(broker.config.kafka.node_id).unwrap_or(u64::MAX);
    let shards = placement.shards as usize;
    placement
        .groups
        .iter()
        .enumerate()
        .filter(|(number, group)| {
            number % shards == usize::from(shard.0)
                && group.members.contains(&own)
                && group.leader != own
        })
        .map(|(number, group)| (number as u32, group.leader))
        .collect()
}

/// Open the follower stores of this shard and start their loops.
pub fn start_followers(
    context: &Rc<ShardContext>,
    broker: &Arc<Broker>,
) -> Result<Vec<compio::runtime::JoinHandle<()>>, OpenError> {
    let mut tasks = Vec::new();
    for (group, leader) in followed_groups(broker, context.id) {
        let mut options = context.store.options().clone();
        options.data_dir = options
            .data_dir
            .join("replicas")
            .join(format!("group-{group}"));
        let store = ShardStore::open(options)?;
        if let Err(error) = reconcile_replica(&store, broker, &context.shards, group, context.id) {
            tracing::warn!(shard = %context.id, group, %error, "cannot match a follower copy's partitions to the metadata yet");
        }
        tracing::info!(shard = %context.id, group, leader, "following a shard group");
        context.replicas.borrow_mut().push(Rc::clone(&store));
        tasks.push(compio::runtime::spawn(follow(
            Arc::clone(broker),
            context.shards.clone(),
            context.id,
            group,
            store,
        )));
    }
    Ok(tasks)
}

/// Whether partition `index` of `topic` is in group `group`'s log: its
/// group's, or an internal topic's that the group's shard keeps (every
/// node keeps the internal topics on their owner shard).
fn in_group(
    cluster: &ClusterMetadata,
    shards: &Shards,
    shard: ShardId,
    group: u32,
    topic: &str,
    index: u32,
) -> bool {
    let Some(placement) = &cluster.placement else {
        return false;
    };
    shards.owner(topic, index) == shard
        && (is_internal_topic(topic) || placement.group_number(topic, index) == group as usize)
}

/// Make a follower store's partitions those of its group's log: create
/// what it lacks (under the controller's ids), delete what no topic claims.
fn reconcile_replica(
    store: &ShardStore,
    broker: &Broker,
    shards: &Shards,
    group: u32,
    shard: ShardId,
) -> Result<(), PartitionError> {
    let cluster = broker.metadata.snapshot();
    for topic in cluster.topics.values() {
        for index in 0..topic.partitions {
            if !in_group(&cluster, shards, shard, group, &topic.name, index) {
                continue;
            }
            let config = topic.config.partition_config();
            let id = topic.partition_id(index);
            match store.create_partition_as(&topic.name, index, id, config) {
                Ok(_) | Err(PartitionError::AlreadyExists { .. }) => {}
                Err(error) => return Err(error),
            }
        }
    }
    for (topic, index, id) in store.partitions() {
        let claimed = cluster
            .topic(&topic)
            .is_some_and(|meta| index < meta.partitions)
            && in_group(&cluster, shards, shard, group, &topic, index);
        if !claimed {
            store.delete_partition(id)?;
        }
    }
    Ok(())
}

/// Whether no partition of the metadata has id `id` (its topic was
/// deleted): its frames are kept unindexed.
fn gone(cluster: &ClusterMetadata, id: PartitionId) -> bool {
    !cluster
        .topics
        .values()
        .any(|topic| (0..topic.partitions).any(|index| topic.partition_id(index) == Some(id)))
}

/// Copy group `group`'s log from its leader into `store`, for as long as
/// the shard runs.
async fn follow(
    broker: Arc<Broker>,
    shards: Shards,
    shard: ShardId,
    group: u32,
    store: Rc<ShardStore>,
) {
    let mut seen = broker.metadata.snapshot();
    let mut backoff = RETRY_BACKOFF_MIN;
    loop {
        let cluster = broker.metadata.snapshot();
        if !Arc::ptr_eq(&cluster, &seen) {
            seen = Arc::clone(&cluster);
            if let Err(error) = reconcile_replica(&store, &broker, &shards, group, shard) {
                tracing::warn!(%shard, group, %error, "cannot match a follower copy's partitions to the metadata");
            }
        }
        let Some(leader) = cluster
            .placement
            .as_ref()
            .and_then(|placement| placement.groups.get(group as usize))
            .map(|record| record.leader)
        else {
            return;
        };
        let (append_end, _, durable) = store.log_ends();
        let request = FetchRequest {
            group,
            from: append_end.0,
            durable: durable.0,
            max_bytes: FETCH_BYTES_MAX,
            wait_ms: FETCH_WAIT_MAX.as_millis() as u32,
        };
        let leader_id = i32::try_from(leader).unwrap_or(-1);
        let outcome = match peer::call_raw(&broker, leader_id, PATH_FETCH, &request).await {
            Ok(answer) => match decode(&answer) {
                Ok((read, leader_end)) => {
                    let copied = store
                        .append_replicated_with(&read, &|id| gone(&cluster, id))
                        .await;
                    let lag = leader_end.0.saturating_sub(store.log_ends().0.0);
                    metrics::gauge!(crate::telemetry::names::REPLICA_LAG_BYTES, "group" => group.to_string())
                        .set(lag as f64);
                    copied.map(drop).map_err(|error| {
                        // A partition created since the last reconcile.
                        if matches!(error, ReplicaAppendError::UnknownPartition { .. })
                            && let Err(error) =
                                reconcile_replica(&store, &broker, &shards, group, shard)
                        {
                            tracing::warn!(%shard, group, %error, "cannot create a follower copy's partition");
                        }
                        error.to_string()
                    })
                }
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => backoff = RETRY_BACKOFF_MIN,
            Err(error) => {
                if let Some(failed) = FAILURES.record(monotonic_ms()) {
                    tracing::warn!(%shard, group, leader, %error, failed, "a follower cannot copy its shard group's log yet; retrying (`failed` counts failures since the last such line)");
                }
                compio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
        }
    }
}

/// Answer a follower's [`PATH_FETCH`]: the frames of this node's log for
/// the group from the requested position, held up to the request's wait
/// (at most [`FETCH_WAIT_MAX`]) while there are none. Refused (409) when
/// this node does not lead the group or the position is not in its log.
pub async fn serve(
    shards: Shards,
    broker: Arc<Broker>,
    request: FetchRequest,
) -> Result<Vec<u8>, (u16, String)> {
    let snapshot = broker.metadata.snapshot();
    let placement = snapshot
        .placement
        .as_ref()
        .ok_or((409, "this node has no placement yet".to_owned()))?;
    let record = placement
        .groups
        .get(request.group as usize)
        .ok_or((400, format!("there is no shard group {}", request.group)))?;
    let own = u64::try_from(broker.config.kafka.node_id).unwrap_or(u64::MAX);
    if record.leader != own {
        return Err((
            409,
            format!(
                "node {own} does not lead shard group {} (node {} does)",
                request.group, record.leader
            ),
        ));
    }
    let shard = ShardId((request.group % placement.shards) as u16);
    let max_bytes = request.max_bytes.min(FETCH_BYTES_MAX) as usize;
    let wait = Duration::from_millis(u64::from(request.wait_ms)).min(FETCH_WAIT_MAX);
    let from = LogPosition(request.from);
    shards
        .call(shard, move |context| async move {
            let deadline = Instant::now() + wait;
            loop {
                match context.store.read_log(from, max_bytes) {
                    Ok(read) if read.frames.is_empty() && Instant::now() < deadline => {
                        compio::time::sleep(FETCH_POLL_INTERVAL).await;
                    }
                    Ok(read) => return Ok(encode(&read, context.store.log_ends().1)),
                    Err(error) => return Err((409, error.to_string())),
                }
            }
        })
        .await
        .unwrap_or_else(|gone| Err((503, gone.to_string())))
}
