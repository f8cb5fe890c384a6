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
//! The leader's shard keeps, per follower, the durable end it reported and
//! when it last had everything the leader had written at its previous
//! answer (Kafka's `lastCaughtUpTime`). Every [`ISR_CHECK_INTERVAL`] the
//! leader sets the group's in-sync set to itself and the followers caught
//! up within `cluster.replica_lag_time_max_ms` (a `SetInSync` command,
//! checked against the group's leader epoch by the controller), and
//! acks=all writes wait until every in-sync member holds them durably
//! ([`wait_in_sync`]): refused with NOT_ENOUGH_REPLICAS when the in-sync
//! set is smaller than the topic's `min.insync.replicas`.
//!
//! Not yet: the high watermark that consumers read up to, failover and
//! truncation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use serde::{Deserialize, Serialize};

use super::{Broker, is_internal_topic, peer};
use crate::broker::metadata::ClusterMetadata;
use crate::ids::{LogPosition, PartitionId, ShardId};
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::shard::local_sync::Event;
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

/// Back-off after a failed fetch, doubled up to the maximum.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Failed fetches and appends, logged at most 10 times per 10 s.
static FAILURES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 10);

/// How often a leader's shard looks at its groups' in-sync sets.
pub const ISR_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A gap between two checks this much longer than planned means the node
/// was stopped, not its followers.
const PAUSE_DETECTED_AFTER: Duration = Duration::from_secs(2);

/// After such a pause, no follower leaves an in-sync set for this long
/// (they fetch again within one long poll).
const SHRINK_GRACE_AFTER_PAUSE: Duration = Duration::from_secs(3);

/// What a group's leader knows of one follower (on the leader's shard).
#[derive(Clone, Copy, Debug)]
struct Follower {
    /// The durable end it reported.
    durable: LogPosition,
    /// The leader's written end when it last answered it.
    answered_end: Option<LogPosition>,
    /// When it last asked from at least `answered_end`.
    caught_up_at: Option<Instant>,
}

thread_local! {
    /// This shard's followers, by (group, node).
    static FOLLOWERS: RefCell<HashMap<(u32, u64), Follower>> = RefCell::new(HashMap::new());
    /// Notified when a follower reports a new durable end.
    static PROGRESS: Rc<Event> = Rc::new(Event::default());
}

/// A follower's request for the frames of shard group `group` from
/// position `from`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchRequest {
    pub group: u32,
    /// The follower's node id.
    pub node: u64,
    /// The group's leader epoch as the follower knows it: a leader at
    /// another epoch refuses the fetch (Kafka's FENCED_LEADER_EPOCH and
    /// UNKNOWN_LEADER_EPOCH), so a stale leader never feeds a follower.
    pub leader_epoch: i32,
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

/// Whether no live partition has id `id` (its topic was deleted): its
/// frames are kept unindexed.
fn gone(live: &std::collections::HashSet<PartitionId>, id: PartitionId) -> bool {
    !live.contains(&id)
}

/// The ids of every partition of the metadata.
fn live_partition_ids(cluster: &ClusterMetadata) -> std::collections::HashSet<PartitionId> {
    cluster
        .topics
        .values()
        .flat_map(|topic| (0..topic.partitions).filter_map(|index| topic.partition_id(index)))
        .collect()
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
        let Some((leader, leader_epoch)) = cluster
            .placement
            .as_ref()
            .and_then(|placement| placement.groups.get(group as usize))
            .map(|record| (record.leader, record.leader_epoch))
        else {
            return;
        };
        if i64::try_from(leader).ok() == Some(i64::from(broker.config.kafka.node_id)) {
            // This node leads the group now (failover, not built yet): a
            // copy does not follow itself.
            tracing::warn!(%shard, group, "this node leads a group it kept a copy of; the copy stops following");
            return;
        }
        let (append_end, _, durable) = store.log_ends();
        let request = FetchRequest {
            group,
            node: u64::try_from(broker.config.kafka.node_id).unwrap_or(u64::MAX),
            leader_epoch,
            from: append_end.0,
            durable: durable.0,
            max_bytes: FETCH_BYTES_MAX,
            wait_ms: FETCH_WAIT_MAX.as_millis() as u32,
        };
        let leader_id = i32::try_from(leader).unwrap_or(-1);
        let outcome = match peer::call_raw(&broker, leader_id, PATH_FETCH, &request, false).await {
            Ok(answer) => match decode(&answer) {
                Ok((read, leader_end)) => {
                    let live = std::cell::OnceCell::new();
                    let mut copied = store
                        .append_replicated_with(&read, &|id| {
                            // Built once per fetch, and only for a frame of
                            // a partition the copy lacks.
                            gone(live.get_or_init(|| live_partition_ids(&cluster)), id)
                        })
                        .await;
                    // Durable before the next fetch reports it: acks=all
                    // and the high watermark wait for that report.
                    if copied.is_ok() && !read.frames.is_empty() {
                        copied = store
                            .sync()
                            .await
                            .map(|()| read.end())
                            .map_err(ReplicaAppendError::Append);
                    }
                    let lag = leader_end.0.saturating_sub(store.log_ends().0.0);
                    metrics::gauge!(crate::telemetry::names::REPLICA_LAG_BYTES, "group" => group.to_string())
                        .set(lag as f64);
                    let behind = lag > u64::from(FETCH_BYTES_MAX);
                    copied.map(|end| if behind { end.0.saturating_sub(append_end.0) } else { 0 }).map_err(|error| {
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
        let outcome: Result<u64, String> = outcome;
        match outcome {
            Ok(copied) => {
                backoff = RETRY_BACKOFF_MIN;
                throttle(&broker, copied).await;
            }
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
    if request.leader_epoch != record.leader_epoch {
        return Err((
            409,
            format!(
                "shard group {} is at leader epoch {}, the follower asked at {}",
                request.group, record.leader_epoch, request.leader_epoch
            ),
        ));
    }
    let shard = ShardId((request.group % placement.shards) as u16);
    let max_bytes = request.max_bytes.min(FETCH_BYTES_MAX) as usize;
    let wait = Duration::from_millis(u64::from(request.wait_ms)).min(FETCH_WAIT_MAX);
    let from = LogPosition(request.from);
    let (group, node, durable) = (request.group, request.node, LogPosition(request.durable));
    shards
        .call(shard, move |context| async move {
            let deadline = Instant::now() + wait;
            let mut recorded = false;
            loop {
                // A position this log does not have (past its end, inside
                // a frame) is refused before the follower's report counts.
                let read = context
                    .store
                    .read_log(from, max_bytes)
                    .map_err(|error| (409, error.to_string()))?;
                if !recorded {
                    recorded = true;
                    record_fetch(group, node, from, durable);
                    update_high_watermark(&context, &broker, group);
                }
                let now = Instant::now();
                if read.frames.is_empty() && now < deadline {
                    // Woken by the next write (or the deadline).
                    let written = context.store.progressed();
                    let _ = compio::time::timeout(deadline - now, written).await;
                    continue;
                }
                let written_end = context.store.log_ends().1;
                record_answer(group, node, written_end);
                return Ok(encode(&read, written_end));
            }
        })
        .await
        .unwrap_or_else(|gone| Err((503, gone.to_string())))
}

/// On the leader's shard: a follower asked from `from` with `durable`
/// durable.
fn record_fetch(group: u32, node: u64, from: LogPosition, durable: LogPosition) {
    let now = Instant::now();
    FOLLOWERS.with(|followers| {
        let mut followers = followers.borrow_mut();
        let follower = followers.entry((group, node)).or_insert(Follower {
            durable: durable.min(from),
            answered_end: None,
            caught_up_at: None,
        });
        // A follower holds nothing durably past where it asks from; one
        // that lost its copy (an emptied data dir) reports less than before,
        // and acks=all must not count what it no longer has.
        follower.durable = durable.min(from);
        if follower.answered_end.is_some_and(|end| from >= end) {
            follower.caught_up_at = Some(now);
        }
    });
    PROGRESS.with(|progress| progress.notify_all());
}

/// On the leader's shard: let consumers see what every in-sync follower of
/// `group` holds durably (the group's high watermark; the leader's own
/// writes bound it too), or everything written when the leader is alone
/// in sync.
fn update_high_watermark(context: &ShardContext, broker: &Broker, group: u32) {
    let snapshot = broker.metadata.snapshot();
    let Some(record) = snapshot
        .placement
        .as_ref()
        .and_then(|placement| placement.groups.get(group as usize))
    else {
        return;
    };
    let own = u64::try_from(broker.config.kafka.node_id).unwrap_or(u64::MAX);
    if record.leader != own {
        return;
    }
    let limit = record
        .in_sync
        .iter()
        .filter(|&&node| node != own)
        .map(|&node| follower_durable(group, node).unwrap_or(LogPosition::ZERO))
        .min();
    match limit {
        Some(limit) => context.store.set_visible_limit(limit),
        None => context.store.clear_visible_limit(),
    }
}

/// On the leader's shard: a follower was answered with the log written up
/// to `written_end`.
fn record_answer(group: u32, node: u64, written_end: LogPosition) {
    FOLLOWERS.with(|followers| {
        if let Some(follower) = followers.borrow_mut().get_mut(&(group, node)) {
            follower.answered_end = Some(written_end);
        }
    });
}

/// The durable end follower `node` of `group` reported, if it did.
fn follower_durable(group: u32, node: u64) -> Option<LogPosition> {
    FOLLOWERS.with(|followers| {
        followers
            .borrow()
            .get(&(group, node))
            .map(|follower| follower.durable)
    })
}

/// Whether follower `node` of `group` caught up within `lag_max`.
fn caught_up(group: u32, node: u64, lag_max: Duration) -> bool {
    FOLLOWERS.with(|followers| {
        followers
            .borrow()
            .get(&(group, node))
            .and_then(|follower| follower.caught_up_at)
            .is_some_and(|at| at.elapsed() <= lag_max)
    })
}

/// Keep the in-sync sets of the groups this shard leads: the leader and
/// the followers caught up within `cluster.replica_lag_time_max_ms`,
/// unfenced. Runs for as long as the shard.
pub async fn maintain_in_sync(context: Rc<ShardContext>, broker: Arc<Broker>) {
    let Some(cluster_config) = broker.config.cluster.clone() else {
        return;
    };
    let lag_max = Duration::from_millis(cluster_config.replica_lag_time_max_ms);
    let own = u64::try_from(broker.config.kafka.node_id).unwrap_or(u64::MAX);
    let mut last_check = Instant::now();
    let mut shrink_from = Instant::now();
    loop {
        compio::time::sleep(ISR_CHECK_INTERVAL).await;
        // A check far later than planned means this node itself was
        // stopped (SIGSTOP, a stalled host): its followers only look
        // stale by its clock, so none is dropped until they had time to
        // fetch again.
        let now = Instant::now();
        if now - last_check > PAUSE_DETECTED_AFTER {
            shrink_from = now + SHRINK_GRACE_AFTER_PAUSE;
        }
        last_check = now;
        let may_shrink = now >= shrink_from;
        let snapshot = broker.metadata.snapshot();
        let Some(placement) = &snapshot.placement else {
            continue;
        };
        let shards = placement.shards as usize;
        for (number, record) in placement.groups.iter().enumerate() {
            if number % shards != usize::from(context.id.0) || record.leader != own {
                continue;
            }
            let group = number as u32;
            update_high_watermark(&context, &broker, group);
            let label = group.to_string();
            metrics::gauge!(crate::telemetry::names::GROUP_IN_SYNC_REPLICAS, "group" => label.clone())
                .set(record.in_sync.len() as f64);
            metrics::gauge!(crate::telemetry::names::GROUP_REPLICAS, "group" => label)
                .set(record.members.len() as f64);
            let live = |node: &u64| snapshot.nodes.get(node).is_some_and(|info| !info.fenced);
            let in_sync: Vec<u64> = record
                .members
                .iter()
                .copied()
                .filter(|&node| {
                    let kept = !may_shrink && record.in_sync.contains(&node);
                    node == own || (live(&node) && (kept || caught_up(group, node, lag_max)))
                })
                .collect();
            if in_sync == record.in_sync {
                continue;
            }
            let command = crate::broker::metadata_command::MetadataCommand::SetInSync {
                group,
                leader_epoch: record.leader_epoch,
                in_sync: in_sync.clone(),
            };
            match broker.metadata.submit(command).await {
                Ok(Ok(_)) => {
                    tracing::info!(shard = %context.id, group, ?in_sync, was = ?record.in_sync, "in-sync set of a shard group changed")
                }
                Ok(Err(refusal)) => {
                    tracing::warn!(shard = %context.id, group, %refusal, "the controller refused an in-sync set change")
                }
                Err(error) => {
                    tracing::debug!(shard = %context.id, group, %error, "in-sync set change not committed yet")
                }
            }
        }
    }
}

/// Before an acks=all write to `topic`-`index` in a cluster:
/// NOT_ENOUGH_REPLICAS when its shard group's in-sync set is smaller than
/// the topic's `min.insync.replicas` (Kafka's check before the append).
pub fn check_in_sync(broker: &Broker, topic: &str, index: u32) -> Result<(), i16> {
    let snapshot = broker.metadata.snapshot();
    let (Some(placement), Some(meta)) = (&snapshot.placement, snapshot.topic(topic)) else {
        return Ok(());
    };
    if is_internal_topic(topic) {
        return Ok(());
    }
    let in_sync = placement.group(topic, index).in_sync.len();
    if (in_sync as i64) < i64::from(meta.config.min_insync_replicas) {
        return Err(ResponseError::NotEnoughReplicas.code());
    }
    Ok(())
}

/// After an acks=all write to `topic`-`index` that this node holds
/// durably up to `end`: wait until every member of the group's in-sync set
/// does (on the partition's owner shard, which leads the group).
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND when the set shrinks below
/// `min.insync.replicas` meanwhile; REQUEST_TIMED_OUT past `deadline`.
pub async fn wait_in_sync(
    broker: &Broker,
    topic: &str,
    index: u32,
    end: LogPosition,
    deadline: Option<Instant>,
) -> Result<(), i16> {
    let own = u64::try_from(broker.config.kafka.node_id).unwrap_or(u64::MAX);
    let progress = PROGRESS.with(Rc::clone);
    loop {
        let snapshot = broker.metadata.snapshot();
        let (Some(placement), Some(meta)) = (&snapshot.placement, snapshot.topic(topic)) else {
            return Ok(());
        };
        if is_internal_topic(topic) {
            return Ok(());
        }
        let group = placement.group_number(topic, index) as u32;
        let record = &placement.groups[group as usize];
        if (record.in_sync.len() as i64) < i64::from(meta.config.min_insync_replicas) {
            return Err(ResponseError::NotEnoughReplicasAfterAppend.code());
        }
        let held = record.in_sync.iter().all(|&node| {
            node == own || follower_durable(group, node).is_some_and(|durable| durable >= end)
        });
        if held {
            return Ok(());
        }
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Err(ResponseError::RequestTimedOut.code());
        }
        // A follower's report, or a metadata change (the set shrank).
        let wait = progress.wait();
        let _ = compio::time::timeout(Duration::from_millis(50), wait).await;
    }
}

/// After copying `copied` bytes while catching up: wait as long as
/// `cluster.replica_catchup_bytes_per_second` asks.
async fn throttle(broker: &Broker, copied: u64) {
    let rate = broker
        .config
        .cluster
        .as_ref()
        .map_or(0, |cluster| cluster.replica_catchup_bytes_per_second);
    if rate == 0 || copied == 0 {
        return;
    }
    compio::time::sleep(Duration::from_secs_f64(copied as f64 / rate as f64)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_counts_as_holding_nothing_past_where_it_asks_from() {
        record_fetch(7, 2, LogPosition(100), LogPosition(10_000));
        assert_eq!(follower_durable(7, 2), Some(LogPosition(100)));
        record_fetch(7, 2, LogPosition(500), LogPosition(400));
        assert_eq!(follower_durable(7, 2), Some(LogPosition(400)));
        // A follower that lost its copy starts again from 0.
        record_fetch(7, 2, LogPosition(0), LogPosition(0));
        assert_eq!(follower_durable(7, 2), Some(LogPosition(0)));
    }

    #[test]
    fn a_follower_is_caught_up_once_it_asks_from_where_the_last_answer_ended() {
        let lag_max = Duration::from_secs(30);
        record_fetch(8, 3, LogPosition(0), LogPosition(0));
        assert!(
            !caught_up(8, 3, lag_max),
            "no answer yet to have caught up with"
        );
        record_answer(8, 3, LogPosition(4096));
        record_fetch(8, 3, LogPosition(1024), LogPosition(1024));
        assert!(!caught_up(8, 3, lag_max));
        record_fetch(8, 3, LogPosition(4096), LogPosition(1024));
        assert!(caught_up(8, 3, lag_max));
    }
}
