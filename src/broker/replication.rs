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
use crate::broker::metadata::{ClusterMetadata, ShardGroup};
use crate::broker::replica_log_starts;
use crate::ids::{LogPosition, Offset, PartitionId, ShardId};
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::shard::local_sync::Event;
use crate::shard::{ShardContext, Shards};
use crate::storage::leader_epochs::LeaderEpochs;
use crate::storage::replica::{LogRead, ReplicaAppendError};
use crate::storage::truncate::LogRestart;
use crate::storage::{OpenError, PartitionError, ShardStore};

/// Where a follower asks a group's leader for frames ([`FetchRequest`]);
/// the answer is the position of the first frame, the leader's written end
/// and its high watermark (8 bytes each, big-endian), followed by the
/// frames.
pub const PATH_FETCH: &str = "/broker/replica/fetch";

/// Most bytes of frames a follower asks for at once (a single bigger frame
/// still comes whole).
pub const FETCH_BYTES_MAX: u32 = 4 << 20;

/// Longest a leader holds a fetch that finds nothing new.
pub const FETCH_WAIT_MAX: Duration = Duration::from_millis(500);

/// Back-off after a failed fetch, doubled up to the maximum.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
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
    /// The leader epoch it fetched at.
    epoch: i32,
    /// The durable end it reported.
    durable: LogPosition,
    /// The leader's written end when it last answered it.
    answered_end: Option<LogPosition>,
    /// When it last asked from at least `answered_end`.
    caught_up_at: Option<Instant>,
    /// The version of the group's log-start moves it applied.
    log_starts_seen: u64,
    /// Out of the in-sync set but caught up: the leader's durable end when
    /// acks=all writes began to wait for it too. It joins the set once it
    /// holds that much (then it holds everything acknowledged: what was
    /// acknowledged before is below that end, what came after waited for
    /// it; Kafka's "maximal ISR", KIP-497 and KAFKA-13091).
    joining: Option<LogPosition>,
}

thread_local! {
    /// This shard's followers, by (group, node).
    static FOLLOWERS: RefCell<HashMap<(u32, u64), Follower>> = RefCell::new(HashMap::new());
    /// Notified when a follower reports a new durable end.
    static PROGRESS: Rc<Event> = Rc::new(Event::default());
    /// The groups this shard leads: (leader epoch, where its log ended when
    /// it started leading at that epoch).
    static LEADING_SINCE: RefCell<HashMap<u32, (i32, LogPosition)>> = RefCell::new(HashMap::new());
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
    /// The version of the group's log-start moves the follower applied
    /// ([`replica_log_starts`]).
    #[serde(default)]
    pub log_starts_seen: u64,
}

/// A fetch answer: the first frame's position, the leader's written end
/// and high watermark (8 bytes each, big-endian), the log-start moves
/// ([`replica_log_starts::encode`]), then the frames.
fn encode(
    read: &LogRead,
    written_end: LogPosition,
    high_watermark: LogPosition,
    log_starts: (u64, &[(PartitionId, Offset)]),
) -> Vec<u8> {
    let mut answer = Vec::with_capacity(36 + log_starts.1.len() * 12 + read.frames.len());
    answer.extend_from_slice(&read.position.0.to_be_bytes());
    answer.extend_from_slice(&written_end.0.to_be_bytes());
    answer.extend_from_slice(&high_watermark.0.to_be_bytes());
    replica_log_starts::encode(log_starts.0, log_starts.1, &mut answer);
    answer.extend_from_slice(&read.frames);
    answer
}

/// What a fetch answer holds ([`encode`]).
struct FetchAnswer {
    read: LogRead,
    written_end: LogPosition,
    high_watermark: LogPosition,
    log_starts_version: u64,
    log_starts: replica_log_starts::LogStartMoves,
}

fn decode(bytes: &[u8]) -> Result<FetchAnswer, String> {
    let short = || format!("a {}-byte answer lacks its positions", bytes.len());
    let (position, rest) = bytes.split_first_chunk::<8>().ok_or_else(short)?;
    let (written_end, rest) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let (high_watermark, rest) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let (log_starts_version, log_starts, frames) = replica_log_starts::decode(rest)?;
    Ok(FetchAnswer {
        read: LogRead {
            position: LogPosition(u64::from_be_bytes(*position)),
            frames: frames.to_vec(),
        },
        written_end: LogPosition(u64::from_be_bytes(*written_end)),
        high_watermark: LogPosition(u64::from_be_bytes(*high_watermark)),
        log_starts_version,
        log_starts,
    })
}

/// Shard group `group`'s record (leader, epoch, members, in-sync set) as
/// the metadata says now; `None` without a placement or such a group.
fn group_record(broker: &Broker, group: u32) -> Option<ShardGroup> {
    broker
        .metadata
        .snapshot()
        .placement
        .as_ref()
        .and_then(|placement| placement.groups.get(group as usize))
        .cloned()
}

/// This node's id as the placement records it.
fn own_id(broker: &Broker) -> u64 {
    u64::try_from(broker.config.kafka.node_id).unwrap_or(u64::MAX)
}

/// The shard groups shard `shard` of this node is a member of, and the
/// cluster's group count and this shard's home group (the one this node
/// is the preferred leader of, kept in `<data_dir>/shard-<n>`).
fn member_groups(broker: &Broker, shard: ShardId) -> Option<(Vec<u32>, u32, u32)> {
    let snapshot = broker.metadata.snapshot();
    let placement = snapshot.placement.as_ref()?;
    let own = own_id(broker);
    let shards = placement.shards as usize;
    let position = placement.nodes.iter().position(|node| *node == own)?;
    let home = (position * shards + usize::from(shard.0)) as u32;
    let groups = placement
        .groups
        .iter()
        .enumerate()
        .filter(|(number, group)| {
            number % shards == usize::from(shard.0) && group.members.contains(&own)
        })
        .map(|(number, _)| number as u32)
        .collect();
    Some((groups, placement.groups.len() as u32, home))
}

/// Open this shard's copies of the shard groups it is a member of besides
/// its home group (`<data_dir>/replicas/group-<g>/`), hold them and the
/// home store as followers until their group tasks run, and register
/// every group store with the shard. Runs before the shard's
/// partitions are reconciled, so that each store gets its group's.
pub fn open_groups(context: &Rc<ShardContext>, broker: &Arc<Broker>) -> Result<(), OpenError> {
    let Some((groups, count, home)) = member_groups(broker, context.id) else {
        return Ok(());
    };
    context.join_groups(count, home);
    // The home store too shows nothing and takes no append until its
    // group's task knows whether this node leads it: recovery made its
    // whole log visible, tail not acknowledged to acks=all included.
    hold_as_copy(&context.store());
    for group in groups.into_iter().filter(|group| *group != home) {
        let mut options = context.store().options().clone();
        options.data_dir = options
            .data_dir
            .join("replicas")
            .join(format!("group-{group}"));
        let store = ShardStore::open(options)?;
        hold_as_copy(&store);
        context.replace(group, store);
    }
    Ok(())
}

/// Start a task per shard group this shard keeps: it leads the group's log
/// or follows the leader's, as the metadata says, for as long as the
/// shard runs.
pub fn run_groups(
    context: &Rc<ShardContext>,
    broker: &Arc<Broker>,
) -> Vec<compio::runtime::JoinHandle<()>> {
    context
        .group_stores()
        .into_iter()
        .map(|(group, _)| {
            compio::runtime::spawn(replicate(Arc::clone(broker), Rc::clone(context), group))
        })
        .collect()
}

/// A store that follows: appends refused, and nothing it copies becomes
/// visible past what its leader's high watermark says.
fn hold_as_copy(store: &ShardStore) {
    store.set_follower(true);
    store.set_visible_limit(LogPosition::ZERO);
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

/// Make every group store of this shard hold its group's partitions
/// ([`reconcile_group_store`]).
pub fn reconcile_groups(context: &ShardContext, broker: &Broker) -> Result<(), PartitionError> {
    for (group, store) in context.group_stores() {
        reconcile_group_store(&store, broker, &context.shards, group, context.id)?;
    }
    Ok(())
}

/// Make a group store's partitions those of its group's log: create what
/// it lacks (under the controller's ids), apply every topic's config,
/// delete what no topic claims.
fn reconcile_group_store(
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
            let config = topic.storage_config();
            let id = topic.partition_id(index);
            match store.create_partition_as(&topic.name, index, id, config) {
                Ok(_) | Err(PartitionError::AlreadyExists { .. }) => {}
                Err(error) => return Err(error),
            }
            if let Some(id) = store.partition_id(&topic.name, index) {
                store.set_partition_config(id, config)?;
            }
        }
    }
    for (topic, index, id) in store.partitions() {
        let claimed = cluster
            .topic(&topic)
            .is_some_and(|meta| index < meta.partitions)
            && in_group(&cluster, shards, shard, group, &topic, index);
        if !claimed {
            tracing::info!(%shard, group, %topic, index, "deleting partition no topic claims");
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

/// What a group store is doing, at which leader epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Starting,
    Leading(i32),
    Following(i32),
}

/// How often a group's task looks at the metadata while it leads.
const LEADING_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Lead or follow shard group `group`'s log on this shard, as the metadata
/// says, for as long as the shard runs: a store that starts leading
/// records the new epoch in its history before it takes appends; one that
/// starts following refuses appends, cuts its log where it diverges from
/// the new leader's ([`align_with_leader`]), then copies the leader's
/// frames.
async fn replicate(broker: Arc<Broker>, context: Rc<ShardContext>, group: u32) {
    let own = own_id(&broker);
    let shard = context.id;
    let mut role = Role::Starting;
    let mut backoff = RETRY_BACKOFF_MIN;
    let mut backing_off_from = None;
    loop {
        let cluster = broker.metadata.snapshot();
        let Some(record) = cluster
            .placement
            .as_ref()
            .and_then(|placement| placement.groups.get(group as usize))
        else {
            return;
        };
        let Some(store) = context.group_store(group) else {
            return;
        };
        let epoch = record.leader_epoch;
        // Failures against one leader say nothing about the next one: a
        // new leader is tried at once and then backed off from afresh
        // (its first answers may come before it has taken over).
        if backing_off_from.replace((record.leader, epoch)) != Some((record.leader, epoch)) {
            backoff = RETRY_BACKOFF_MIN;
        }
        let outcome = if record.leader == own {
            if role != Role::Leading(epoch) {
                match begin_leading(&store, group, epoch, &record.in_sync) {
                    Ok(()) => {
                        if role != Role::Starting || epoch > 0 {
                            tracing::info!(%shard, group, leader_epoch = epoch, "this node leads a shard group now");
                            metrics::counter!(crate::telemetry::names::GROUP_LEADERSHIPS_TAKEN, "group" => group.to_string()).increment(1);
                        }
                        role = Role::Leading(epoch);
                    }
                    Err(error) => {
                        report_failure(shard, group, record.leader, &error, backoff);
                        compio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                        continue;
                    }
                }
            }
            backoff = RETRY_BACKOFF_MIN;
            compio::time::sleep(LEADING_CHECK_INTERVAL).await;
            continue;
        } else if role != Role::Following(epoch) {
            hold_as_copy(&store);
            replica_log_starts::forget(group);
            align_with_leader(&broker, &context, group, record.leader, epoch)
                .await
                .map(|cut| {
                    tracing::info!(%shard, group, leader = record.leader, leader_epoch = epoch, ?cut, "following a shard group's leader");
                    role = Role::Following(epoch);
                    0
                })
        } else {
            copy_once(
                &broker,
                &context,
                &cluster,
                group,
                record.leader,
                epoch,
                &store,
            )
            .await
        };
        match outcome {
            Ok(copied) => {
                backoff = RETRY_BACKOFF_MIN;
                throttle(&broker, copied).await;
                // A follower that fetches only once a second (debug
                // builds): the window in which a returning copy is caught
                // up but not yet holding what the others acknowledged.
                if crate::failpoint::active("follower_slow_fetch") {
                    compio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Err(error) => {
                report_failure(shard, group, record.leader, &error, backoff);
                // Fetches that keep failing against the same leader may
                // mean its log no longer has where this copy ends (its
                // retention moved on): align with it again, which starts
                // such a copy over at the leader's log start.
                if backoff >= REALIGN_AFTER_BACKOFF && matches!(role, Role::Following(_)) {
                    role = Role::Starting;
                }
                back_off_unless_moved(&broker, group, (record.leader, epoch), backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
        }
    }
}

/// A follower whose copying failed until its back-off reached this aligns
/// with its leader again.
const REALIGN_AFTER_BACKOFF: Duration = Duration::from_millis(800);

/// Wait `backoff` after a failed copy, or less once group `group`'s leader
/// or epoch is no longer `was`: a copy that kept failing against a dead
/// leader must follow the new one at once, since acks=all waits for it.
async fn back_off_unless_moved(broker: &Broker, group: u32, was: (u64, i32), backoff: Duration) {
    let until = Instant::now() + backoff;
    while Instant::now() < until {
        let moved = group_record(broker, group)
            .is_none_or(|record| (record.leader, record.leader_epoch) != was);
        if moved {
            return;
        }
        compio::time::sleep(
            LEADING_CHECK_INTERVAL.min(until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
}

/// A failed attempt to lead or copy: a warning (throttled) once failures
/// have gone on for about 1.5 s (`backoff` grown to a second), at debug
/// before: around every leader change a copy's first calls meet a leader
/// that has not taken over yet (409, 503), which is no fault (found by
/// the fresh-user trial: hundreds of such warnings on ordinary restarts).
fn report_failure(shard: ShardId, group: u32, leader: u64, error: &str, backoff: Duration) {
    if backoff < PERSISTENT_FAILURE_BACKOFF {
        tracing::debug!(%shard, group, leader, %error, "a shard group's copy cannot follow or lead yet; retrying");
    } else if let Some(failed) = FAILURES.record(monotonic_ms()) {
        tracing::warn!(%shard, group, leader, %error, failed, "a shard group's copy cannot follow or lead yet; retrying (`failed` counts failures since the last such line)");
    }
}

/// The back-off at which failures to follow or lead are warned about.
const PERSISTENT_FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// This store leads its group from its log end on at `epoch`: the epoch
/// goes into its history (durably) before appends are let in. The in-sync
/// followers count as caught up from now (Kafka's new leader does the
/// same), so they stay in sync for `cluster.replica_lag_time_max_ms` while
/// they start following it; acks=all still waits for their reports.
fn begin_leading(
    store: &ShardStore,
    group: u32,
    epoch: i32,
    in_sync: &[u64],
) -> Result<(), String> {
    let now = Instant::now();
    FOLLOWERS.with(|followers| {
        let mut followers = followers.borrow_mut();
        for &node in in_sync {
            let fresh = Follower {
                epoch,
                durable: LogPosition::ZERO,
                answered_end: None,
                caught_up_at: Some(now),
                log_starts_seen: 0,
                joining: None,
            };
            let follower = followers.entry((group, node)).or_insert(fresh);
            if follower.epoch != epoch {
                *follower = fresh;
            }
        }
    });
    let dir = store.root_dir();
    let mut history = LeaderEpochs::load(dir).unwrap_or_else(|error| {
        tracing::warn!(%error, "starting a new leader-epoch history");
        LeaderEpochs::default()
    });
    let before = history.clone();
    let start = store.log_ends().0;
    history.begin(epoch, start);
    if history != before {
        history.store(dir).map_err(|error| error.to_string())?;
    }
    store.set_follower(false);
    LEADING_SINCE.with(|leading| leading.borrow_mut().insert(group, (epoch, start)));
    Ok(())
}

/// The leader epoch at which this shard may serve the coordinator of
/// internal partition `topic`-`index` from its shard group's log: this
/// node leads the group, its log took appends at the current epoch, and
/// its high watermark reached where the log ended when it took over, so
/// every record the previous coordinator wrote (and had acknowledged) is
/// visible to the replay. `None` while any of that is not so.
pub fn coordinator_epoch(
    context: &ShardContext,
    broker: &Broker,
    topic: &str,
    index: u32,
) -> Option<i32> {
    let snapshot = broker.metadata.snapshot();
    let placement = snapshot.placement.as_ref()?;
    let group = placement.group_number(topic, index) as u32;
    let record = placement.groups.get(group as usize)?;
    if record.leader != own_id(broker) {
        return None;
    }
    let store = context.group_store(group)?;
    let (epoch, start) = LEADING_SINCE.with(|leading| leading.borrow().get(&group).copied())?;
    (epoch == record.leader_epoch && !store.is_follower() && store.visible_end() >= start)
        .then_some(epoch)
}

/// The leader's answer to [`PATH_EPOCHS`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochsAnswer {
    /// Its leader-epoch history: (epoch, start position).
    pub entries: Vec<(i32, u64)>,
    /// Its log end.
    pub end: u64,
    /// Where its log starts (retention deleted what was before).
    #[serde(default)]
    pub start: u64,
    /// Each partition's offset at `start` (partition id, offset): where a
    /// copy that must start again there continues it.
    #[serde(default)]
    pub offsets_at_start: Vec<(u32, i64)>,
}

/// Before following `leader` at `epoch`: ask it for its epoch history, cut
/// this copy's log where its last epoch ends in the leader's (when it holds
/// more; Kafka's OffsetsForLeaderEpoch, by log position), and take the
/// leader's history as its own. The cut position when there was one.
async fn align_with_leader(
    broker: &Broker,
    context: &Rc<ShardContext>,
    group: u32,
    leader: u64,
    epoch: i32,
) -> Result<Option<LogPosition>, String> {
    let request = EpochsRequest {
        group,
        node: own_id(broker),
        leader_epoch: epoch,
    };
    let leader_id = i32::try_from(leader).unwrap_or(-1);
    let answer: EpochsAnswer = peer::call(broker, leader_id, PATH_EPOCHS, &request).await?;
    let theirs = LeaderEpochs::from_entries(
        answer
            .entries
            .iter()
            .map(|&(epoch, start)| (epoch, LogPosition(start)))
            .collect(),
    )
    .map_err(|reason| format!("node {leader} sent a bad leader-epoch history: {reason}"))?;
    let store = context
        .group_store(group)
        .ok_or_else(|| format!("this shard keeps no copy of group {group}"))?;
    let mine = LeaderEpochs::load(store.root_dir()).unwrap_or_else(|error| {
        tracing::warn!(%error, "a damaged leader-epoch history counts as epoch 0 only");
        LeaderEpochs::default()
    });
    let cut = theirs.end_of(mine.latest().0, LogPosition(answer.end));
    let end = store.log_ends().0;
    let leader_start = LogPosition(answer.start);
    let mut cut_at = None;
    // What this copy shares with the leader's log ends at `cut` (or its
    // own end): when that is before the leader's log start, nothing it
    // lacks can be fetched any more (retention deleted it while it was
    // away), so it starts again, empty, where the leader's log starts.
    let store = if cut.min(end) < leader_start {
        let restart = LogRestart {
            start: leader_start,
            offsets: answer
                .offsets_at_start
                .iter()
                .map(|&(id, offset)| (PartitionId(id), Offset(offset)))
                .collect(),
        };
        restart_copy(context, group, store, &restart).await?
    } else if cut < end {
        cut_at = Some(cut);
        cut_copy(context, group, store, cut).await?
    } else {
        store
    };
    theirs
        .store(store.root_dir())
        .map_err(|error| error.to_string())?;
    Ok(cut_at)
}

/// Shut `store` down, empty its log and start it again as `restart` says
/// (the leader's log start), and open it again, in place of the old one.
async fn restart_copy(
    context: &Rc<ShardContext>,
    group: u32,
    store: Rc<ShardStore>,
    restart: &LogRestart,
) -> Result<Rc<ShardStore>, String> {
    let (start, end) = (store.log_start(), store.log_ends().0);
    tracing::warn!(shard = %context.id, group, %start, %end, leader_log_start = %restart.start, "this copy of a shard group's log ends before its leader's log starts (retention deleted what it lacks): emptying it and copying again from the leader's log start");
    reopen_changed(context, group, store, |options| {
        crate::storage::truncate::restart_closed(options, restart)
            .map_err(|error| error.to_string())
    })
    .await
}

/// Shut `store` down, change its closed files with `change`, and open it
/// again (recovery rebuilds its indexes and producer state from what
/// remains), in place of the old one.
async fn reopen_changed(
    context: &Rc<ShardContext>,
    group: u32,
    store: Rc<ShardStore>,
    change: impl FnOnce(&crate::storage::StoreOptions) -> Result<(), String>,
) -> Result<Rc<ShardStore>, String> {
    let options = store.options().clone();
    // A failed shutdown leaves the files as recovery finds them: the
    // change applies to those just the same.
    if let Err(error) = store.shutdown().await {
        tracing::warn!(shard = %context.id, group, %error, "the copy did not shut down cleanly before it was changed");
    }
    drop(store);
    change(&options)?;
    let reopened = ShardStore::open(options).map_err(|error| error.to_string())?;
    hold_as_copy(&reopened);
    context.replace(group, Rc::clone(&reopened));
    Ok(reopened)
}

/// Shut `store` down, cut its log at `cut` and open it again (recovery
/// rebuilds its indexes and producer state from what remains), in place of
/// the old one.
async fn cut_copy(
    context: &Rc<ShardContext>,
    group: u32,
    store: Rc<ShardStore>,
    cut: LogPosition,
) -> Result<Rc<ShardStore>, String> {
    let end = store.log_ends().0;
    tracing::warn!(shard = %context.id, group, %cut, %end, dropped_bytes = end.0 - cut.0, "this copy of a shard group's log holds a tail its new leader does not: cutting it there (none of it was acknowledged to acks=all producers)");
    reopen_changed(context, group, store, |options| {
        crate::storage::truncate::truncate_closed(options, cut)
            .map(drop)
            .map_err(|error| error.to_string())
    })
    .await
}

/// One fetch from the leader, appended and made durable; the bytes copied
/// when the copy is catching up (for the throttle), else 0.
async fn copy_once(
    broker: &Broker,
    context: &ShardContext,
    cluster: &ClusterMetadata,
    group: u32,
    leader: u64,
    leader_epoch: i32,
    store: &ShardStore,
) -> Result<u64, String> {
    let (append_end, _, durable) = store.log_ends();
    let request = FetchRequest {
        group,
        node: own_id(broker),
        leader_epoch,
        from: append_end.0,
        durable: durable.0,
        max_bytes: FETCH_BYTES_MAX,
        wait_ms: FETCH_WAIT_MAX.as_millis() as u32,
        log_starts_seen: replica_log_starts::applied(group),
    };
    let leader_id = i32::try_from(leader).unwrap_or(-1);
    let answer = peer::call_raw(broker, leader_id, PATH_FETCH, &request, false).await?;
    let FetchAnswer {
        read,
        written_end: leader_end,
        high_watermark,
        log_starts_version,
        log_starts,
    } = decode(&answer)?;
    let live = std::cell::OnceCell::new();
    let mut copied = store
        .append_replicated_with(&read, &|id| {
            // Built once per fetch, and only for a frame of a partition the
            // copy lacks.
            gone(live.get_or_init(|| live_partition_ids(cluster)), id)
        })
        .await;
    // Durable before the next fetch reports it: acks=all and the high
    // watermark wait for that report.
    if copied.is_ok() && !read.frames.is_empty() {
        copied = store
            .sync()
            .await
            .map(|()| read.end())
            .map_err(ReplicaAppendError::Append);
    }
    if copied.is_ok() {
        replica_log_starts::apply(group, store, log_starts_version, &log_starts);
    }
    let end = store.log_ends().0;
    metrics::counter!(crate::telemetry::names::REPLICA_COPIED_BYTES, "group" => group.to_string())
        .increment(end.0.saturating_sub(append_end.0));
    // What the leader's consumers see, this copy's show too (once it holds
    // it), so a promoted copy never shows more than was committed.
    store.set_visible_limit(high_watermark.min(end));
    let lag = leader_end.0.saturating_sub(end.0);
    metrics::gauge!(crate::telemetry::names::REPLICA_LAG_BYTES, "group" => group.to_string())
        .set(lag as f64);
    let behind = lag > u64::from(FETCH_BYTES_MAX);
    copied
        .map(|copied_end| {
            if behind {
                copied_end.0.saturating_sub(append_end.0)
            } else {
                0
            }
        })
        .map_err(|error| {
            // A partition created since the last reconcile.
            if matches!(error, ReplicaAppendError::UnknownPartition { .. })
                && let Err(error) =
                    reconcile_group_store(store, broker, &context.shards, group, context.id)
            {
                tracing::warn!(shard = %context.id, group, %error, "cannot create a copy's partition");
            }
            error.to_string()
        })
}

/// A replica's question to a group's leader before it follows: the
/// leader's epoch history ([`EpochsAnswer`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochsRequest {
    pub group: u32,
    pub node: u64,
    pub leader_epoch: i32,
}

/// Where a replica asks a group's leader for its epoch history.
pub const PATH_EPOCHS: &str = "/broker/replica/epochs";

/// The store of `group` on this node when it leads the group at `epoch`
/// and has started leading it; refused (409) otherwise.
fn leading_store(
    broker: &Broker,
    context: &ShardContext,
    group: u32,
    epoch: i32,
) -> Result<Rc<ShardStore>, (u16, String)> {
    let snapshot = broker.metadata.snapshot();
    let placement = snapshot
        .placement
        .as_ref()
        .ok_or((409, "this node has no placement yet".to_owned()))?;
    let record = placement
        .groups
        .get(group as usize)
        .ok_or((400, format!("there is no shard group {group}")))?;
    let own = own_id(broker);
    if record.leader != own {
        return Err((
            409,
            format!(
                "node {own} does not lead shard group {group} (node {} does)",
                record.leader
            ),
        ));
    }
    if epoch != record.leader_epoch {
        return Err((
            409,
            format!(
                "shard group {group} is at leader epoch {}, the follower asked at {epoch}",
                record.leader_epoch
            ),
        ));
    }
    match context.group_store(group) {
        Some(store) if !store.is_follower() => Ok(store),
        _ => Err((
            409,
            format!("node {own} has not started leading shard group {group} yet"),
        )),
    }
}

/// Answer a replica's [`PATH_EPOCHS`] on the group's shard.
pub async fn serve_epochs(
    shards: Shards,
    broker: Arc<Broker>,
    request: EpochsRequest,
) -> Result<EpochsAnswer, (u16, String)> {
    let shard = shard_of_group(&shards, &broker, request.group)?;
    shards
        .call(shard, move |context| async move {
            let store = leading_store(&broker, &context, request.group, request.leader_epoch)?;
            let history =
                LeaderEpochs::load(store.root_dir()).map_err(|error| (500, error.to_string()))?;
            let (start, offsets) = store
                .offsets_at_log_start()
                .map_err(|error| (500, error.to_string()))?;
            Ok(EpochsAnswer {
                entries: history
                    .entries()
                    .iter()
                    .map(|&(epoch, start)| (epoch, start.0))
                    .collect(),
                end: store.log_ends().0.0,
                start: start.0,
                offsets_at_start: offsets
                    .iter()
                    .map(|(id, offset)| (id.0, offset.0))
                    .collect(),
            })
        })
        .await
        .unwrap_or_else(|gone| Err((503, gone.to_string())))
}

/// The shard that keeps group `group`'s log on every member; 400 for a
/// group the placement does not have.
fn shard_of_group(shards: &Shards, broker: &Broker, group: u32) -> Result<ShardId, (u16, String)> {
    let groups = broker
        .metadata
        .snapshot()
        .placement
        .as_ref()
        .map_or(0, |placement| placement.groups.len() as u32);
    if group >= groups {
        return Err((400, format!("there is no shard group {group}")));
    }
    Ok(ShardId((group as usize % shards.count()) as u16))
}

/// Answer a follower's [`PATH_FETCH`]: the frames of this node's log for
/// the group from the requested position, held up to the request's wait
/// (at most [`FETCH_WAIT_MAX`]) while there are none. Refused (409) when
/// this node does not lead the group at the request's epoch or the
/// position is not in its log.
pub async fn serve(
    shards: Shards,
    broker: Arc<Broker>,
    request: FetchRequest,
) -> Result<Vec<u8>, (u16, String)> {
    let shard = shard_of_group(&shards, &broker, request.group)?;
    // Only the group's other members copy it: what the leader keeps per
    // follower stays bounded by the replication factor (found by the
    // breaker trial: invented node ids each added an entry for good).
    let follower = group_record(&broker, request.group).is_some_and(|record| {
        record.members.contains(&request.node) && request.node != own_id(&broker)
    });
    if !follower {
        return Err((
            403,
            format!(
                "node {} is not a follower of shard group {}",
                request.node, request.group
            ),
        ));
    }
    let max_bytes = request.max_bytes.min(FETCH_BYTES_MAX) as usize;
    let wait = Duration::from_millis(u64::from(request.wait_ms)).min(FETCH_WAIT_MAX);
    let from = LogPosition(request.from);
    let (group, node, durable) = (request.group, request.node, LogPosition(request.durable));
    let log_starts_seen = request.log_starts_seen;
    let epoch = request.leader_epoch;
    shards
        .call(shard, move |context| async move {
            let deadline = Instant::now() + wait;
            let mut recorded = false;
            loop {
                let store = leading_store(&broker, &context, group, epoch)?;
                // A position this log does not have (past its end, inside
                // a frame) is refused before the follower's report counts.
                let read = store
                    .read_log(from, max_bytes)
                    .map_err(|error| (409, error.to_string()))?;
                if !recorded {
                    recorded = true;
                    record_fetch(group, node, epoch, from, durable);
                    record_log_starts_seen(group, node, epoch, log_starts_seen);
                    update_high_watermark(&context, &broker, group);
                }
                let now = Instant::now();
                if read.frames.is_empty() && now < deadline {
                    // Woken by the next write (or the deadline).
                    let written = store.progressed();
                    let _ = compio::time::timeout(deadline - now, written).await;
                    continue;
                }
                let written_end = store.log_ends().1;
                record_answer(group, node, written_end);
                let (version, moves) =
                    replica_log_starts::moves_since(group, &store, log_starts_seen);
                return Ok(encode(
                    &read,
                    written_end,
                    store.visible_end(),
                    (version, &moves),
                ));
            }
        })
        .await
        .unwrap_or_else(|gone| Err((503, gone.to_string())))
}

/// On the leader's shard: a follower asked from `from` with `durable`
/// durable, at leader epoch `epoch` (what it reported at an earlier epoch
/// no longer counts: it may have cut its log since).
fn record_fetch(group: u32, node: u64, epoch: i32, from: LogPosition, durable: LogPosition) {
    let now = Instant::now();
    FOLLOWERS.with(|followers| {
        let mut followers = followers.borrow_mut();
        let fresh = Follower {
            epoch,
            durable: durable.min(from),
            answered_end: None,
            caught_up_at: None,
            log_starts_seen: 0,
            joining: None,
        };
        let follower = followers.entry((group, node)).or_insert(fresh);
        if follower.epoch != epoch {
            *follower = fresh;
        }
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
    let Some(record) = group_record(broker, group) else {
        return;
    };
    let own = own_id(broker);
    let Some(store) = context.group_store(group) else {
        return;
    };
    if record.leader != own || store.is_follower() {
        return;
    }
    let limit = counted_followers(group, &record, own)
        .map(|node| follower_durable(group, node, record.leader_epoch).unwrap_or(LogPosition::ZERO))
        .min();
    match limit {
        Some(limit) => store.set_visible_limit(limit),
        None => store.clear_visible_limit(),
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

/// The durable end follower `node` of `group` reported at leader epoch
/// `epoch`, if it did.
/// On the leader's shard: forget follower `node` of `group` (it was
/// fenced): nothing it reported counts any more.
fn forget_follower(group: u32, node: u64) {
    FOLLOWERS.with(|followers| followers.borrow_mut().remove(&(group, node)));
}

/// On the leader's shard: the log-start version a follower fetching at
/// `epoch` reported applied (after [`record_fetch`]).
fn record_log_starts_seen(group: u32, node: u64, epoch: i32, seen: u64) {
    FOLLOWERS.with(|followers| {
        if let Some(follower) = followers
            .borrow_mut()
            .get_mut(&(group, node))
            .filter(|follower| follower.epoch == epoch)
        {
            follower.log_starts_seen = seen;
        }
    });
}

/// DeleteRecords in a cluster (Kafka's delayed DeleteRecords): once the
/// leader moved partition `index` of `topic`'s log start, wait until every
/// in-sync follower of its group applied the move (the log-start version
/// it reports with its fetches reaches one that lists it), so that no copy
/// that could take over still serves what was deleted. NOT_LEADER_OR_
/// FOLLOWER when the group's leader or epoch changes meanwhile,
/// REQUEST_TIMED_OUT at `deadline`; at once on a single node or for a
/// leader alone in sync.
pub async fn wait_log_start_replicated(
    context: &ShardContext,
    broker: &Broker,
    topic: &str,
    index: u32,
    deadline: Instant,
) -> Result<(), i16> {
    let own = own_id(broker);
    let snapshot = broker.metadata.snapshot();
    let Some(placement) = &snapshot.placement else {
        return Ok(());
    };
    let group = placement.group_number(topic, index) as u32;
    let epoch = placement.groups[group as usize].leader_epoch;
    let Some(store) = context.group_store(group) else {
        return Ok(());
    };
    let version = replica_log_starts::version_now(group, &store);
    let progress = PROGRESS.with(Rc::clone);
    loop {
        let Some(record) = group_record(broker, group) else {
            return Ok(());
        };
        if record.leader != own || record.leader_epoch != epoch {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        let applied = record.in_sync.iter().all(|&node| {
            node == own
                || FOLLOWERS.with(|followers| {
                    followers
                        .borrow()
                        .get(&(group, node))
                        .is_some_and(|follower| {
                            follower.epoch == epoch && follower.log_starts_seen >= version
                        })
                })
        });
        if applied {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ResponseError::RequestTimedOut.code());
        }
        let _ = compio::time::timeout(Duration::from_millis(50), progress.wait()).await;
    }
}

fn follower_durable(group: u32, node: u64, epoch: i32) -> Option<LogPosition> {
    FOLLOWERS.with(|followers| {
        followers
            .borrow()
            .get(&(group, node))
            .filter(|follower| follower.epoch == epoch)
            .map(|follower| follower.durable)
    })
}

/// The followers of `group` that acks=all writes and the high watermark
/// wait for at `record`'s leader epoch: the in-sync set's, and those
/// joining it ([`Follower::joining`]).
fn counted_followers(group: u32, record: &ShardGroup, own: u64) -> impl Iterator<Item = u64> {
    record.members.iter().copied().filter(move |&node| {
        node != own
            && (record.in_sync.contains(&node)
                || joining_since(group, node, record.leader_epoch).is_some())
    })
}

/// Since which durable end of the leader follower `node` of `group` is
/// joining the in-sync set at leader epoch `epoch`, if it is.
fn joining_since(group: u32, node: u64, epoch: i32) -> Option<LogPosition> {
    FOLLOWERS.with(|followers| {
        followers
            .borrow()
            .get(&(group, node))
            .filter(|follower| follower.epoch == epoch)
            .and_then(|follower| follower.joining)
    })
}

/// On the leader's shard, for follower `node` of `group`, caught up at
/// leader epoch `epoch` but not in the in-sync set: whether it may join it
/// now. The first call makes acks=all writes wait for it from the
/// leader's durable end `leader_durable` on; it may join once it holds
/// that end durably.
fn may_join(group: u32, node: u64, epoch: i32, leader_durable: LogPosition) -> bool {
    FOLLOWERS.with(|followers| {
        let mut followers = followers.borrow_mut();
        let Some(follower) = followers
            .get_mut(&(group, node))
            .filter(|follower| follower.epoch == epoch)
        else {
            return false;
        };
        let since = *follower.joining.get_or_insert(leader_durable);
        follower.durable >= since
    })
}

/// On the leader's shard: follower `node` of `group` is in the in-sync
/// set, or fell behind before it joined it: acks no longer wait for it as
/// a joining follower.
fn stop_joining(group: u32, node: u64) {
    FOLLOWERS.with(|followers| {
        if let Some(follower) = followers.borrow_mut().get_mut(&(group, node)) {
            follower.joining = None;
        }
    });
}

/// Whether follower `node` of `group` caught up within `lag_max` at leader
/// epoch `epoch`.
fn caught_up(group: u32, node: u64, epoch: i32, lag_max: Duration) -> bool {
    FOLLOWERS.with(|followers| {
        followers
            .borrow()
            .get(&(group, node))
            .filter(|follower| follower.epoch == epoch)
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
    let own = own_id(&broker);
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
            let Some(store) = context
                .group_store(group)
                .filter(|store| !store.is_follower())
            else {
                continue;
            };
            update_high_watermark(&context, &broker, group);
            let label = group.to_string();
            metrics::gauge!(crate::telemetry::names::GROUP_IN_SYNC_REPLICAS, "group" => label.clone())
                .set(record.in_sync.len() as f64);
            metrics::gauge!(crate::telemetry::names::GROUP_REPLICAS, "group" => label)
                .set(record.members.len() as f64);
            let live = |node: &u64| snapshot.nodes.get(node).is_some_and(|info| !info.fenced);
            // A fenced node forgets what it reported: when it returns, it
            // rejoins only after fetching up to this leader's end again
            // (found by the breaker trial: a returning node re-admitted on
            // its reports from before its crash lacked records acknowledged
            // while it was out, and leading again, had them cut).
            for node in record.members.iter().filter(|node| !live(node)) {
                forget_follower(group, *node);
            }
            let leader_durable = store.log_ends().2;
            let epoch = record.leader_epoch;
            let in_sync: Vec<u64> = record
                .members
                .iter()
                .copied()
                .filter(|&node| {
                    if node == own {
                        return true;
                    }
                    if !live(&node) {
                        return false;
                    }
                    let current = caught_up(group, node, epoch, lag_max);
                    if record.in_sync.contains(&node) {
                        stop_joining(group, node);
                        return current || !may_shrink;
                    }
                    // A follower caught up with the leader's written end
                    // may still lack what the others acknowledged since
                    // its last fetch (the breaker trial's loss: it joined,
                    // led next, and those records were cut).
                    if !current {
                        stop_joining(group, node);
                        return false;
                    }
                    may_join(group, node, epoch, leader_durable)
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
/// durably up to `end`, appended while it led the partition's shard group
/// at `leader_epoch`: wait until every member of the group's in-sync set
/// does (on the partition's owner shard, which leads the group).
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND when the set shrinks below
/// `min.insync.replicas` meanwhile; NOT_LEADER_OR_FOLLOWER when the group
/// got another leader or epoch (the write may be cut from the log: it is
/// not acknowledged); REQUEST_TIMED_OUT past `deadline`.
pub async fn wait_in_sync(
    broker: &Broker,
    topic: &str,
    index: u32,
    end: LogPosition,
    leader_epoch: i32,
    deadline: Option<Instant>,
) -> Result<(), i16> {
    let own = own_id(broker);
    let progress = PROGRESS.with(Rc::clone);
    loop {
        let snapshot = broker.metadata.snapshot();
        let (Some(placement), Some(meta)) = (&snapshot.placement, snapshot.topic(topic)) else {
            return Ok(());
        };
        let group = placement.group_number(topic, index) as u32;
        let record = &placement.groups[group as usize];
        if record.leader != own || record.leader_epoch != leader_epoch {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        if (record.in_sync.len() as i64) < i64::from(meta.config.min_insync_replicas) {
            return Err(ResponseError::NotEnoughReplicasAfterAppend.code());
        }
        let held = counted_followers(group, record, own).all(|node| {
            follower_durable(group, node, leader_epoch).is_some_and(|durable| durable >= end)
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

/// The internal partitions of `topic` on this shard whose coordinator
/// state must change: (index, the store holding it, the leader epoch to
/// load it at, or `None` to drop it), for each index where what `loaded`
/// says the coordinator holds (epoch and store) differs from what
/// [`coordinator_epoch`] says it should.
pub fn coordinator_changes(
    context: &ShardContext,
    broker: &Broker,
    topic: &str,
    loaded: impl Fn(u32) -> Option<(i32, Rc<ShardStore>)>,
) -> Vec<(u32, Rc<ShardStore>, Option<i32>)> {
    let partitions = broker
        .metadata
        .snapshot()
        .topic(topic)
        .map_or(0, |meta| meta.partitions);
    (0..partitions)
        .filter(|&index| context.shards.owner(topic, index) == context.id)
        .filter_map(|index| {
            let store = context.store_for(topic, index);
            let wanted = coordinator_epoch(context, broker, topic, index);
            let current = match loaded(index) {
                Some((epoch, held)) => Some(epoch) == wanted && Rc::ptr_eq(&held, &store),
                None => wanted.is_none(),
            };
            (!current).then_some((index, store, wanted))
        })
        .collect()
}

/// How often a cluster node's coordinators compare what they serve with
/// the shard groups this node leads.
const LEADERSHIP_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Run `check` on a coordinator every [`LEADERSHIP_CHECK_INTERVAL`] for as
/// long as it exists, in a cluster (`replicated`); returns at once on a
/// single node.
pub async fn follow_leadership<C>(
    coordinator: std::rc::Weak<C>,
    replicated: bool,
    check: impl Fn(Rc<C>) -> futures_util::future::LocalBoxFuture<'static, ()>,
) {
    if !replicated {
        return;
    }
    loop {
        compio::time::sleep(LEADERSHIP_CHECK_INTERVAL).await;
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        check(coordinator).await;
    }
}

/// Wait until an append to `topic`-`index` in `store` (made while this
/// node led its shard group at `leader_epoch`) is durable here and, in a
/// cluster, held by the in-sync replicas ([`wait_for_replicas`]).
pub async fn durable_everywhere(
    broker: &Broker,
    store: &ShardStore,
    topic: &str,
    index: u32,
    receipt: &crate::storage::AppendReceipt,
    leader_epoch: i32,
) -> Result<(), crate::storage::AppendError> {
    store.wait(receipt).await?;
    wait_for_replicas(broker, topic, index, receipt.end(), leader_epoch).await
}

/// Longest a coordinator's write or a transaction marker waits for the
/// in-sync replicas (Kafka's `offsets.commit.timeout.ms`).
pub const INTERNAL_REPLICATION_TIMEOUT: Duration = Duration::from_secs(5);

/// After a write this node holds durably up to `end` in `topic`-`index`'s
/// log, appended while it led the partition's shard group at
/// `leader_epoch`, that must not be lost with this node: a coordinator's
/// record (offsets, group and transaction state) or a transaction marker.
/// In a cluster, wait until the group's in-sync set holds it, as Kafka's
/// coordinators write with acks=all; refused as `NotLeader` (retriable)
/// when the set is too small, the leadership moved, or
/// [`INTERNAL_REPLICATION_TIMEOUT`] passed. Nothing to wait for on a single
/// node.
pub async fn wait_for_replicas(
    broker: &Broker,
    topic: &str,
    index: u32,
    end: LogPosition,
    leader_epoch: i32,
) -> Result<(), crate::storage::AppendError> {
    if !broker.metadata.is_replicated() {
        return Ok(());
    }
    let deadline = Instant::now() + INTERNAL_REPLICATION_TIMEOUT;
    wait_in_sync(broker, topic, index, end, leader_epoch, Some(deadline))
        .await
        .map_err(|code| {
            if let Some(failed) = FAILURES.record(monotonic_ms()) {
                tracing::warn!(%topic, partition = index, code, failed, "a coordinator's write or a transaction marker did not reach the in-sync replicas; the client retries");
            }
            crate::storage::AppendError::NotLeader
        })
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
        record_fetch(7, 2, 0, LogPosition(100), LogPosition(10_000));
        assert_eq!(follower_durable(7, 2, 0), Some(LogPosition(100)));
        record_fetch(7, 2, 0, LogPosition(500), LogPosition(400));
        assert_eq!(follower_durable(7, 2, 0), Some(LogPosition(400)));
        // A follower that lost its copy starts again from 0.
        record_fetch(7, 2, 0, LogPosition(0), LogPosition(0));
        assert_eq!(follower_durable(7, 2, 0), Some(LogPosition(0)));
        // What it reported at another leader epoch does not count.
        assert_eq!(follower_durable(7, 2, 1), None);
        record_fetch(7, 2, 1, LogPosition(300), LogPosition(300));
        assert_eq!(follower_durable(7, 2, 1), Some(LogPosition(300)));
        assert_eq!(follower_durable(7, 2, 0), None);
    }

    #[test]
    fn a_caught_up_follower_joins_only_once_it_holds_the_leaders_durable_end_from_when_acks_began_to_wait_for_it()
     {
        let record = ShardGroup {
            members: vec![1, 2, 3],
            leader: 1,
            leader_epoch: 4,
            in_sync: vec![1, 2],
        };
        record_fetch(9, 3, 4, LogPosition(1024), LogPosition(1024));
        assert_eq!(counted_followers(9, &record, 1).collect::<Vec<_>>(), [2]);
        assert!(!may_join(9, 3, 4, LogPosition(8192)));
        assert_eq!(
            counted_followers(9, &record, 1).collect::<Vec<_>>(),
            [2, 3],
            "acks wait for a joining follower"
        );
        // The leader's end moved on meanwhile; the follower needs the end
        // from when it began to count only.
        record_fetch(9, 3, 4, LogPosition(8192), LogPosition(8192));
        assert!(may_join(9, 3, 4, LogPosition(20_000)));
        assert!(!may_join(9, 3, 5, LogPosition(0)), "at its epoch only");
        stop_joining(9, 3);
        assert_eq!(counted_followers(9, &record, 1).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_follower_is_caught_up_once_it_asks_from_where_the_last_answer_ended() {
        let lag_max = Duration::from_secs(30);
        record_fetch(8, 3, 0, LogPosition(0), LogPosition(0));
        assert!(
            !caught_up(8, 3, 0, lag_max),
            "no answer yet to have caught up with"
        );
        record_answer(8, 3, LogPosition(4096));
        record_fetch(8, 3, 0, LogPosition(1024), LogPosition(1024));
        assert!(!caught_up(8, 3, 0, lag_max));
        record_fetch(8, 3, 0, LogPosition(4096), LogPosition(1024));
        assert!(caught_up(8, 3, 0, lag_max));
        assert!(
            !caught_up(8, 3, 1, lag_max),
            "at the epoch it fetched at only"
        );
    }
}
