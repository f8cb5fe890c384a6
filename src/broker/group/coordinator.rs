//! The group coordinator of one shard: the groups whose offsets partition
//! this shard owns, their membership, and their committed offsets.
//!
//! A group's coordinator is fixed by its id: the group hashes to a partition
//! of `__consumer_offsets`, and the shard owning that partition coordinates
//! it (so every request about a group runs on one thread, without locks).
//! Each shard's coordinator is a shard-local service, like Seastar's
//! `sharded<T>::local()`: installed on the shard's thread at start and found
//! by requests that were routed there.
//!
//! Durability: a commit is appended to the group's offsets partition and
//! applied to the in-memory table in log order, then answered after the
//! fdatasync that covers it. At start, each owned offsets partition is
//! replayed from its log start. Classic membership is not persisted: after
//! a restart, classic members find their ids unknown and rejoin.
//! Consumer-protocol groups (KIP-848, `consumer_coordinator.rs`) are: their
//! records share the partition with the offsets, are replayed with them and
//! are copied forward with them.
//!
//! Space: a shard's commit log is shared, so the offsets topic is compacted
//! by copying forward. When a partition holds more superseded records than
//! live ones (and enough of them, or long enough since the last snapshot),
//! the live entries are appended again as a snapshot and, once it is
//! durable, the partition's log start moves to it. The records below stop
//! pinning old segments, and retention can delete them. Live entries are
//! also copied forward hourly, so idle groups do not pin old segments, and
//! within seconds when disk usage passes `retention.disk_force_clean_ratio`
//! and the partition holds the shard's oldest segment, so forced deletion
//! under disk pressure is never blocked by committed offsets.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::OFFSETS_TOPIC;
use super::consumer::assignor::Assignor;
use super::consumer::group::{ConsumerGroup, ConsumerGroupLimits};
use super::consumer::records as consumer_records;
use super::coordinator_error::{CoordinatorStartError, OffsetsWriteError};
use super::log_record::{EncodedRecord, LogRecord};
use super::membership::{
    CONSUMER_PROTOCOL_TYPE, Group, GroupLimits, GroupState, JoinRequest, JoinResult, MemberClaim,
    Reply, SyncRequest, SyncResult,
};
use super::offsets::{CommittedOffset, OffsetRecord, RECORD_STRING_BYTES_MAX, TopicPartition};
use crate::broker::Broker;
use crate::broker::internal_log::{self, ReplayItem};
use crate::broker::txn::verify::{VerifyRequest, verify};
use crate::ids::{Offset, PartitionId};
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::record_batch::{HEADER_BYTES, ValidatedBatch};
use crate::shard::ShardContext;
use crate::storage::{AppendError, Durability, ShardStore};

/// How often memberships are checked for expired sessions and finished joins.
const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// How often offsets of empty groups are checked for expiry.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How often offsets partitions are checked for a snapshot.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A snapshot is taken once superseded records outnumber live ones and
/// there are at least this many of them...
const SNAPSHOT_RECORDS_MIN: u64 = 10_000;
/// ...or this long has passed since the last snapshot.
const SNAPSHOT_AGE_MAX: Duration = Duration::from_secs(600);
/// Live entries are copied forward at least this often even when nothing
/// changed, so an idle group's offsets never pin an old segment for long.
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(3600);
/// Under disk pressure (`retention.disk_force_clean_ratio`), a partition
/// whose records pin the shard's oldest segment is copied forward at once,
/// but not more often than this.
const SNAPSHOT_UNDER_PRESSURE_INTERVAL: Duration = Duration::from_secs(5);
/// Offset records per stored batch, at most; fewer when their bytes would
/// pass `storage.message_max_bytes` (see [`batch_chunks`]).
const RECORDS_PER_BATCH_MAX: usize = 100;
/// Bytes a record adds to a batch beyond its key and value, at most: its
/// length, attributes, timestamp and offset deltas (varints), key and value
/// lengths, and header count.
const RECORD_FRAMING_BYTES_MAX: usize = 5 + 1 + 10 + 5 + 5 + 5 + 1;

thread_local! {
    static LOCAL: RefCell<Option<Rc<Coordinator>>> = const { RefCell::new(None) };
}

/// The partition of `__consumer_offsets` holding `group` (FNV-1a).
pub fn offsets_partition(group: &str, partitions: u32) -> u32 {
    internal_log::key_partition(group, partitions)
}

/// Removes this shard's coordinator when dropped.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        LOCAL.with(|local| local.borrow_mut().take());
    }
}

/// One offsets partition this coordinator serves: where its log is, and
/// bookkeeping for its snapshots.
struct PartitionLog {
    id: PartitionId,
    /// The store holding it: the shard's own on a single node; in a
    /// cluster, its shard group's log on this node, which this node leads.
    store: Rc<ShardStore>,
    /// The shard group's leader epoch it was loaded at (0 on a single
    /// node): another epoch means the partition was led elsewhere since,
    /// so it is loaded again.
    leader_epoch: i32,
    records_since_snapshot: u64,
    last_snapshot: Instant,
}

/// What DescribeGroups shows of a group.
#[derive(Debug, Default)]
pub struct GroupDescription {
    pub state: String,
    pub protocol_type: String,
    pub protocol_name: String,
    /// (member id, instance id, client id, client host, metadata, assignment).
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Default)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// One group as ListGroups shows it.
#[derive(Debug)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
    /// `classic` or `consumer` (ListGroups v5, KIP-848).
    pub group_type: &'static str,
}

/// ListGroups' group types (v5).
pub const CLASSIC_GROUP_TYPE: &str = "classic";
pub const CONSUMER_GROUP_TYPE: &str = "consumer";

pub struct Coordinator {
    pub(super) context: Rc<ShardContext>,
    pub(super) broker: Arc<Broker>,
    pub(super) limits: GroupLimits,
    pub(super) consumer_limits: ConsumerGroupLimits,
    /// Classic groups, and every group's committed offsets (a consumer
    /// group's entry here holds only its offsets).
    pub(super) groups: RefCell<HashMap<String, Group>>,
    /// Consumer-protocol groups (KIP-848). A group id here is a consumer
    /// group: its entry in `groups`, if any, has no classic members.
    pub(super) consumer_groups: RefCell<HashMap<String, ConsumerGroup>>,
    logs: RefCell<BTreeMap<u32, PartitionLog>>,
    /// Held while appending group records or transaction markers, so
    /// records reach the log and the table in the same order, and a
    /// snapshot is not interleaved. A consumer group is changed only while
    /// it is held, from the copy taken to the copy installed.
    pub(super) writer: futures_util::lock::Mutex<()>,
    /// Transactional offset commits (TxnOffsetCommit) waiting for their
    /// transaction's marker, by (offsets partition, producer id), in log
    /// order: a commit marker applies them, an abort drops them (KIP-98).
    pending_txn: RefCell<HashMap<(u32, i64), Vec<OffsetRecord>>>,
}

impl Coordinator {
    /// Replay this shard's offsets partitions, install the coordinator on
    /// this shard's thread and start its timer.
    pub fn start(
        context: &Rc<ShardContext>,
        broker: &Arc<Broker>,
    ) -> Result<compio::runtime::JoinHandle<()>, CoordinatorStartError> {
        let groups_config = &broker.config.groups;
        let limits = GroupLimits {
            initial_rebalance_delay: Duration::from_millis(
                groups_config.initial_rebalance_delay_ms,
            ),
            session_timeout_min: Duration::from_millis(groups_config.session_timeout_min_ms),
            session_timeout_max: Duration::from_millis(groups_config.session_timeout_max_ms),
            members_max: groups_config.members_max as usize,
        };
        let consumer_limits = ConsumerGroupLimits {
            session_timeout: Duration::from_millis(groups_config.consumer_session_timeout_ms),
            heartbeat_interval: Duration::from_millis(groups_config.consumer_heartbeat_interval_ms),
            members_max: groups_config.members_max as usize,
            assignors: groups_config
                .consumer_assignors
                .iter()
                .filter_map(|name| Assignor::from_name(name))
                .collect(),
        };
        let coordinator = Rc::new(Coordinator {
            context: Rc::clone(context),
            broker: Arc::clone(broker),
            limits,
            consumer_limits,
            groups: RefCell::new(HashMap::new()),
            consumer_groups: RefCell::new(HashMap::new()),
            logs: RefCell::new(BTreeMap::new()),
            writer: futures_util::lock::Mutex::new(()),
            pending_txn: RefCell::new(HashMap::new()),
        });
        coordinator.replay()?;
        LOCAL.with(|local| *local.borrow_mut() = Some(Rc::clone(&coordinator)));
        // The timer task owns the installation: when the shard cancels its
        // service tasks at shutdown, the coordinator (and its hold on the
        // shard's storage) goes with it.
        // Offsets of topics deleted while a previous forget did not finish
        // (a crash right after the deletion) go now.
        let sweeper = Rc::clone(&coordinator);
        compio::runtime::spawn(async move {
            let cluster = sweeper.broker.metadata.snapshot();
            let forgotten = sweeper
                .forget_topics(|topic| cluster.topic(topic).is_none())
                .await;
            if forgotten > 0 {
                tracing::info!(forgotten, "forgot committed offsets of deleted topics");
            }
        })
        .detach();
        let installed = Installed;
        let timers = run_timers(Rc::downgrade(&coordinator));
        let leadership = crate::broker::replication::follow_leadership(
            Rc::downgrade(&coordinator),
            broker.metadata.is_replicated(),
            |coordinator| Box::pin(async move { coordinator.match_leadership().await }),
        );
        Ok(compio::runtime::spawn(async move {
            let _installed = installed;
            futures_util::future::join(timers, leadership).await;
        }))
    }

    /// In a cluster: serve the offsets partitions of this shard whose
    /// shard group this node leads, each loaded from the group's log on
    /// this node at the group's current leader epoch once that log started
    /// leading (the state the previous coordinator wrote there, copied by
    /// replication), and drop the groups of those it no longer leads.
    pub(crate) async fn match_leadership(&self) {
        let changes = crate::broker::replication::coordinator_changes(
            &self.context,
            &self.broker,
            OFFSETS_TOPIC,
            |index| {
                self.logs
                    .borrow()
                    .get(&index)
                    .map(|log| (log.leader_epoch, Rc::clone(&log.store)))
            },
        );
        for (index, store, wanted) in changes {
            let _writing = self.writer.lock().await;
            self.unload(index);
            let Some(epoch) = wanted else {
                continue;
            };
            match self.load(index, store, epoch) {
                Ok(records) => {
                    tracing::info!(shard = %self.context.id, partition = index, leader_epoch = epoch, records, "coordinating the groups of an offsets partition")
                }
                Err(error) => {
                    tracing::warn!(shard = %self.context.id, partition = index, %error, "cannot load an offsets partition; trying again")
                }
            }
        }
    }

    /// Forget offsets partition `index` and its groups (another node
    /// coordinates them now).
    fn unload(&self, index: u32) {
        let partitions = self.offsets_partitions();
        self.logs.borrow_mut().remove(&index);
        self.groups
            .borrow_mut()
            .retain(|id, _| offsets_partition(id, partitions) != index);
        self.consumer_groups
            .borrow_mut()
            .retain(|id, _| offsets_partition(id, partitions) != index);
        self.pending_txn
            .borrow_mut()
            .retain(|(pending, _), _| *pending != index);
    }

    /// Replay offsets partition `index` from `store` and serve it; the
    /// records replayed.
    fn load(
        &self,
        index: u32,
        store: Rc<ShardStore>,
        leader_epoch: i32,
    ) -> Result<u64, CoordinatorStartError> {
        let id = store
            .partition_id(OFFSETS_TOPIC, index)
            .ok_or(CoordinatorStartError::NoStorage { index })?;
        let replayed = self.replay_partition(index, id, &store)?;
        self.logs.borrow_mut().insert(
            index,
            PartitionLog {
                id,
                store,
                leader_epoch,
                records_since_snapshot: replayed,
                last_snapshot: Instant::now(),
            },
        );
        let partitions = self.offsets_partitions();
        let now = Instant::now();
        for group in self
            .consumer_groups
            .borrow_mut()
            .values_mut()
            .filter(|group| offsets_partition(&group.id, partitions) == index)
        {
            let limits = self.consumer_limits_for(&group.id);
            group.restart_timers(limits.session_timeout, now);
        }
        Ok(replayed)
    }

    /// This shard's coordinator.
    pub fn local() -> Option<Rc<Coordinator>> {
        LOCAL.with(|local| local.borrow().clone())
    }

    fn replay(&self) -> Result<(), CoordinatorStartError> {
        if self.broker.metadata.is_replicated() {
            // A cluster node loads the partitions of the shard groups it
            // leads as it starts leading them (`follow_leadership`).
            return Ok(());
        }
        let Some(topic) = self
            .broker
            .metadata
            .snapshot()
            .topic(OFFSETS_TOPIC)
            .cloned()
        else {
            return Err(CoordinatorStartError::OffsetsTopicMissing);
        };
        let started = Instant::now();
        let mut records = 0u64;
        for index in 0..topic.partitions {
            if self.context.shards.owner(OFFSETS_TOPIC, index) != self.context.id {
                continue;
            }
            let store = self.context.store();
            let Some(id) = store.partition_id(OFFSETS_TOPIC, index) else {
                return Err(CoordinatorStartError::NoStorage { index });
            };
            let replayed = self.replay_partition(index, id, &store)?;
            records += replayed;
            self.logs.borrow_mut().insert(
                index,
                PartitionLog {
                    id,
                    store,
                    leader_epoch: 0,
                    records_since_snapshot: replayed,
                    last_snapshot: Instant::now(),
                },
            );
        }
        let now = Instant::now();
        for group in self.consumer_groups.borrow_mut().values_mut() {
            let limits = self.consumer_limits_for(&group.id);
            group.restart_timers(limits.session_timeout, now);
        }
        let groups = self.groups.borrow();
        let offsets: usize = groups.values().map(|group| group.offsets.len()).sum();
        tracing::info!(
            shard = %self.context.id,
            records,
            groups = groups.len(),
            consumer_groups = self.consumer_groups.borrow().len(),
            offsets,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "committed offsets recovered"
        );
        Ok(())
    }

    fn replay_partition(
        &self,
        index: u32,
        id: PartitionId,
        store: &ShardStore,
    ) -> Result<u64, CoordinatorStartError> {
        let limit = self
            .broker
            .config
            .storage
            .stored_batch_limits()
            .decompressed_max_bytes;
        let label = format!("{OFFSETS_TOPIC}-{index}");
        internal_log::replay(store, id, &label, limit, |item| {
            let record = match item {
                ReplayItem::Record(record) => record,
                ReplayItem::Marker {
                    producer_id,
                    commit,
                } => {
                    self.complete_txn(index, producer_id, commit);
                    return true;
                }
            };
            match LogRecord::decode(record.key, record.value) {
                Ok(Some(LogRecord::Offset(change))) => {
                    match record.transactional_producer {
                        Some(producer_id) => self
                            .pending_txn
                            .borrow_mut()
                            .entry((index, producer_id))
                            .or_default()
                            .push(change),
                        None => self.apply(change, Instant::now()),
                    }
                    true
                }
                Ok(Some(LogRecord::Consumer(change))) => {
                    consumer_records::apply(
                        &mut self.consumer_groups.borrow_mut(),
                        change,
                        Instant::now(),
                    );
                    true
                }
                Ok(None) => false,
                Err(error) => {
                    tracing::warn!(partition = index, offset = record.offset.0, %error, "skipping a bad group record");
                    false
                }
            }
        })
        .map_err(|source| CoordinatorStartError::Replay { index, source })
    }

    fn apply(&self, change: OffsetRecord, now: Instant) {
        let mut groups = self.groups.borrow_mut();
        if change.value.is_none() && !groups.contains_key(&change.group) {
            return;
        }
        let group = groups
            .entry(change.group.clone())
            .or_insert_with(|| Group::new(&change.group, now));
        group.offsets.apply(change.key, change.value);
    }

    /// `producer_id`'s transaction on offsets partition `index` ended: its
    /// pending offset commits become committed offsets (in their log order)
    /// or are dropped.
    fn complete_txn(&self, index: u32, producer_id: i64, commit: bool) {
        let Some(pending) = self.pending_txn.borrow_mut().remove(&(index, producer_id)) else {
            return;
        };
        if commit {
            let now = Instant::now();
            for change in pending {
                self.apply(change, now);
            }
        }
    }

    /// Whether `group` has transactional offsets for `partition` awaiting
    /// their transaction's outcome (OffsetFetch with `require_stable`
    /// answers UNSTABLE_OFFSET_COMMIT for them, KIP-447).
    pub fn has_pending_txn_offset(&self, group: &str, partition: &TopicPartition) -> bool {
        let index = offsets_partition(group, self.offsets_partitions());
        self.pending_txn
            .borrow()
            .iter()
            .filter(|((pending_index, _), _)| *pending_index == index)
            .flat_map(|(_, changes)| changes)
            .any(|change| change.group == group && change.key == *partition)
    }

    /// TxnOffsetCommit (KIP-98; v3's member checks, KIP-447): store `offsets`
    /// as part of `transactional_id`'s transaction, by `producer_id` at
    /// `epoch`. They are in the log now and become the group's committed
    /// offsets when the transaction's commit marker is written to this
    /// offsets partition. Unless the producer's transaction is open on the
    /// partition already, the transaction coordinator is asked first
    /// whether the partition is in it, with a token taken before asking, so
    /// a marker landing meanwhile refuses the batch (as Produce does).
    /// Per-partition codes as [`Coordinator::commit`].
    pub async fn txn_commit(
        &self,
        transactional_id: &str,
        group_id: &str,
        claim: &MemberClaim<'_>,
        producer_id: i64,
        epoch: i16,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    ) -> Result<Vec<i16>, i16> {
        if group_id.is_empty() || group_id.len() > RECORD_STRING_BYTES_MAX {
            return Err(ResponseError::InvalidGroupId.code());
        }
        let index = offsets_partition(group_id, self.offsets_partitions());
        let (id, store) = self
            .log_of(index)
            .ok_or_else(|| ResponseError::NotCoordinator.code())?;
        let token = store
            .txn_token(id, producer_id)
            .ok_or_else(|| ResponseError::NotCoordinator.code())?;
        if !token.joins_open_transaction(epoch) {
            let request = VerifyRequest {
                transactional_id: transactional_id.to_owned(),
                producer_id,
                epoch,
                topic: OFFSETS_TOPIC.to_owned(),
                partition: index,
                implicit_add: false,
                fenced: ResponseError::InvalidProducerEpoch.code(),
            };
            verify(&self.context, &self.broker, request)
                .await
                .map_err(txn_offset_commit_error)?;
        }
        // v0-2 carry no member: anyone may commit within the transaction.
        if claim.generation >= 0 || !claim.member_id.is_empty() {
            self.check_commit(group_id, claim, None)
                .map_err(|error| error.code())?;
        }
        let (codes, changes) = self.accepted_changes(group_id, offsets);
        if changes.is_empty() {
            return Ok(codes);
        }
        let written = async {
            let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = changes
                .iter()
                .map(|change| (change.encode_key(), change.encode_value()))
                .collect();
            let bytes = internal_log::encode_transactional_batch(
                encoded
                    .iter()
                    .map(|(key, value)| (key.as_slice(), value.as_deref())),
                now_ms(),
                producer_id,
                epoch,
            );
            if bytes.len() > self.broker.config.storage.message_max_bytes as usize {
                return Err(OffsetsWriteError::RecordTooLarge {
                    size: bytes.len(),
                    limit: self.broker.config.storage.message_max_bytes,
                });
            }
            let batch = ValidatedBatch::frame_only(&bytes, bytes.len())
                .map_err(|source| OffsetsWriteError::InvalidBatch { source })?;
            let receipt = {
                let _writing = self.writer.lock().await;
                let receipt = store
                    .append_verified(id, batch, Durability::Fsynced, token)
                    .await?;
                self.pending_txn
                    .borrow_mut()
                    .entry((index, producer_id))
                    .or_default()
                    .extend(changes);
                receipt
            };
            if let Some(log) = self.logs.borrow_mut().get_mut(&index) {
                log.records_since_snapshot += encoded.len() as u64;
            }
            self.durable(index, &receipt).await?;
            Ok::<(), OffsetsWriteError>(())
        }
        .await;
        let mut codes = codes;
        if let Err(error) = written {
            if let Some(failed) = COMMIT_FAILURES.record(monotonic_ms()) {
                tracing::warn!(group = group_id, %error, failed, "transactional offset commit failed (`failed` counts failures since the last such line)");
            }
            let code = match &error {
                OffsetsWriteError::Append {
                    source: crate::storage::AppendError::Producer(producer),
                } => crate::kafka::error_code::for_append(&crate::storage::AppendError::Producer(
                    producer.clone(),
                )),
                other => commit_error_code(other),
            };
            for stored in codes.iter_mut().filter(|code| **code == 0) {
                *stored = code;
            }
        }
        Ok(codes)
    }

    /// Append a transaction marker for `producer_id` to offsets partition
    /// `index` and apply its outcome to the pending offsets while holding
    /// the writer, so the table follows the log's order (design 3.3). The
    /// caller waits for the receipt's durability.
    pub async fn append_marker_in_order(
        &self,
        index: u32,
        producer_id: i64,
        epoch: i16,
        marker: &crate::record_batch::control::TxnMarker,
    ) -> Result<Option<crate::storage::AppendReceipt>, crate::storage::AppendError> {
        let Some((id, store)) = self.log_of(index) else {
            return Ok(None);
        };
        let _writing = self.writer.lock().await;
        let receipt = store
            .append_marker(id, producer_id, epoch, marker, Durability::Fsynced)
            .await?;
        let commit = marker.kind == crate::record_batch::control::MarkerKind::Commit;
        self.complete_txn(index, producer_id, commit);
        Ok(Some(receipt))
    }

    fn offsets_partitions(&self) -> u32 {
        super::offsets_topic_partitions(&self.broker)
    }

    /// Append `changes` to their offsets partition, apply them to the table
    /// in log order, and wait until they are durable.
    async fn write(&self, changes: Vec<OffsetRecord>) -> Result<(), OffsetsWriteError> {
        let Some(group) = changes.first().map(|change| change.group.clone()) else {
            return Ok(());
        };
        let changes: Vec<LogRecord> = changes.into_iter().map(LogRecord::Offset).collect();
        let receipt = {
            let _writing = self.writer.lock().await;
            self.append_group_records(changes).await?
        };
        if let Some(receipt) = receipt {
            self.durable_for_group(&group, &receipt).await?;
        }
        Ok(())
    }

    /// Offsets partition `index`'s id and store, while this coordinator
    /// serves it.
    fn log_of(&self, index: u32) -> Option<(PartitionId, Rc<ShardStore>)> {
        self.logs
            .borrow()
            .get(&index)
            .map(|log| (log.id, Rc::clone(&log.store)))
    }

    /// Wait until an append to offsets partition `index` is durable here
    /// and, in a cluster, held by the in-sync replicas (a committed offset
    /// survives the loss of this node).
    pub(super) async fn durable(
        &self,
        index: u32,
        receipt: &crate::storage::AppendReceipt,
    ) -> Result<(), AppendError> {
        let (store, leader_epoch) = self
            .logs
            .borrow()
            .get(&index)
            .map(|log| (Rc::clone(&log.store), log.leader_epoch))
            .ok_or(AppendError::NotLeader)?;
        crate::broker::replication::durable_everywhere(
            &self.broker,
            &store,
            OFFSETS_TOPIC,
            index,
            receipt,
            leader_epoch,
        )
        .await
    }

    /// [`Coordinator::durable`] for an append of `group`'s records.
    pub(super) async fn durable_for_group(
        &self,
        group: &str,
        receipt: &crate::storage::AppendReceipt,
    ) -> Result<(), AppendError> {
        self.durable(offsets_partition(group, self.offsets_partitions()), receipt)
            .await
    }

    /// Whether this coordinator serves offsets partition `index` now (in a
    /// cluster: this node leads its shard group and loaded it at the
    /// current leader epoch).
    pub fn serves(&self, index: u32) -> bool {
        self.logs.borrow().contains_key(&index)
    }

    /// Append one group's records to its offsets partition, applying the
    /// offset records to the table in log order. The caller holds the
    /// writer lock and waits for the receipt's durability.
    pub(super) async fn append_group_records(
        &self,
        changes: Vec<LogRecord>,
    ) -> Result<Option<crate::storage::AppendReceipt>, OffsetsWriteError> {
        let Some(first) = changes.first() else {
            return Ok(None);
        };
        let index = offsets_partition(first.group(), self.offsets_partitions());
        let count = changes.len() as u64;
        let receipt = self
            .append_in_order(index, changes, Purpose::Commit)
            .await?;
        if let Some(log) = self.logs.borrow_mut().get_mut(&index) {
            log.records_since_snapshot += count;
        }
        Ok(receipt)
    }

    /// Append batches of records and apply each batch once it has its place
    /// in the log. The caller holds the writer lock. A snapshot goes in even
    /// above `retention.disk_reject_ratio`: it is what lets retention delete
    /// the segments the offsets pin.
    async fn append_in_order(
        &self,
        index: u32,
        changes: Vec<LogRecord>,
        purpose: Purpose,
    ) -> Result<Option<crate::storage::AppendReceipt>, OffsetsWriteError> {
        let (id, store) = self
            .log_of(index)
            .ok_or(OffsetsWriteError::NotHere { index })?;
        let limits = self.broker.config.storage.stored_batch_limits();
        let encoded: Vec<EncodedRecord> = changes.iter().map(LogRecord::encode).collect();
        let mut last = None;
        let mut done = 0;
        for chunk in batch_chunks(&encoded, self.broker.config.storage.message_max_bytes)? {
            let bytes = encode_batch(chunk);
            let applied = &changes[done..done + chunk.len()];
            done += chunk.len();
            let batch = ValidatedBatch::validate(&bytes, &limits)
                .map_err(|source| OffsetsWriteError::InvalidBatch { source })?;
            let receipt = match purpose {
                Purpose::Commit => store.append(id, batch, Durability::Fsynced).await?,
                Purpose::Snapshot => {
                    store
                        .append_to_free_space(id, batch, Durability::Fsynced)
                        .await?
                }
            };
            // Consumer group records describe a change the caller installs
            // itself once they are appended.
            let now = Instant::now();
            for change in applied {
                if let LogRecord::Offset(change) = change {
                    self.apply(change.clone(), now);
                }
            }
            last = Some(receipt);
        }
        Ok(last)
    }
}

/// Failed offset commits, logged at most 20 times per 10 s: while the disk
/// refuses appends every commit fails.
static COMMIT_FAILURES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);

/// Why offset records are appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// Clients' commits (and expiry tombstones): refused when the disk is
    /// past `retention.disk_reject_ratio`, like any append.
    Commit,
    /// Live offsets copied forward so older segments can go.
    Snapshot,
}

/// `changes` in order, split into batches of at most
/// [`RECORDS_PER_BATCH_MAX`] records and `limit_bytes` bytes each. Group ids
/// and metadata may each be up to 32 KiB, so a count alone does not keep a
/// batch under the limit. A record too large for a batch of its own is
/// RecordTooLarge (INVALID_COMMIT_OFFSET_SIZE to the committer).
fn batch_chunks(
    changes: &[EncodedRecord],
    limit_bytes: u32,
) -> Result<Vec<&[EncodedRecord]>, OffsetsWriteError> {
    let limit = limit_bytes as usize;
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut batch_bytes = HEADER_BYTES;
    for (index, (key, value)) in changes.iter().enumerate() {
        let record_bytes =
            RECORD_FRAMING_BYTES_MAX + key.len() + value.as_ref().map_or(0, Vec::len);
        if HEADER_BYTES + record_bytes > limit {
            return Err(OffsetsWriteError::RecordTooLarge {
                size: HEADER_BYTES + record_bytes,
                limit: limit_bytes,
            });
        }
        if index > start
            && (index - start == RECORDS_PER_BATCH_MAX || batch_bytes + record_bytes > limit)
        {
            chunks.push(&changes[start..index]);
            start = index;
            batch_bytes = HEADER_BYTES;
        }
        batch_bytes += record_bytes;
    }
    if start < changes.len() {
        chunks.push(&changes[start..]);
    }
    Ok(chunks)
}

fn encode_batch(chunk: &[EncodedRecord]) -> Vec<u8> {
    internal_log::encode_batch(
        chunk
            .iter()
            .map(|(key, value)| (key.as_slice(), value.as_deref())),
        now_ms(),
    )
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Membership requests.
impl Coordinator {
    pub async fn join(&self, group_id: &str, request: JoinRequest) -> JoinResult {
        // Under the writer lock, so a consumer group cannot appear between
        // the check and the join (see `consumer_coordinator.rs`).
        let writing = self.writer.lock().await;
        if let Some((result, receipt)) = self.join_consumer_group(group_id, &request).await {
            drop(writing);
            if let Err(error) = self.wait_durable(group_id, receipt).await {
                return JoinResult {
                    error: error.error.code(),
                    generation: -1,
                    member_id: request.member_id,
                    ..JoinResult::default()
                };
            }
            return result;
        }
        let now = Instant::now();
        let reply = {
            let mut groups = self.groups.borrow_mut();
            let group = groups
                .entry(group_id.to_owned())
                .or_insert_with(|| Group::new(group_id, now));
            group.join(request.clone(), &self.limits, now)
        };
        drop(writing);
        match reply {
            Reply::Now(result) => result,
            Reply::Later(receiver) => receiver.await.unwrap_or_else(|_| JoinResult {
                error: ResponseError::CoordinatorNotAvailable.code(),
                generation: -1,
                member_id: request.member_id,
                ..JoinResult::default()
            }),
        }
    }

    pub async fn sync(&self, group_id: &str, request: SyncRequest) -> SyncResult {
        if let Some(result) = self.sync_consumer_group(group_id, &request).await {
            return result;
        }
        let now = Instant::now();
        let reply = {
            let mut groups = self.groups.borrow_mut();
            match groups.get_mut(group_id) {
                Some(group) => group.sync(request, now),
                None => Reply::Now(SyncResult {
                    error: ResponseError::UnknownMemberId.code(),
                    ..SyncResult::default()
                }),
            }
        };
        match reply {
            Reply::Now(result) => result,
            Reply::Later(receiver) => receiver.await.unwrap_or_else(|_| SyncResult {
                error: ResponseError::CoordinatorNotAvailable.code(),
                ..SyncResult::default()
            }),
        }
    }

    pub async fn heartbeat(&self, group_id: &str, claim: &MemberClaim<'_>) -> i16 {
        if let Some(code) = self.heartbeat_consumer_group(group_id, claim).await {
            return code;
        }
        let mut groups = self.groups.borrow_mut();
        match groups.get_mut(group_id) {
            Some(group) => match group.heartbeat(claim, Instant::now()) {
                Ok(()) => 0,
                Err(error) => error.code(),
            },
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// LeaveGroup: one error code per departing member.
    pub async fn leave(&self, group_id: &str, departures: &[(String, Option<String>)]) -> Vec<i16> {
        if let Some(codes) = self.leave_consumer_group(group_id, departures).await {
            return codes;
        }
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.get_mut(group_id) else {
            return vec![ResponseError::UnknownMemberId.code(); departures.len()];
        };
        for (member_id, _) in departures {
            tracing::debug!(group = group_id, member = %member_id, "member leaves");
        }
        group
            .leave(departures, &self.limits, Instant::now())
            .into_iter()
            .map(|result| result.err().map_or(0, |error| error.code()))
            .collect()
    }

    pub fn list(&self) -> Vec<GroupListing> {
        let consumer_groups = self.consumer_groups.borrow();
        let mut listed: Vec<GroupListing> = self
            .groups
            .borrow()
            .values()
            .filter(|group| !consumer_groups.contains_key(&group.id))
            .map(|group| GroupListing {
                group_id: group.id.clone(),
                protocol_type: group.protocol_type.clone().unwrap_or_default(),
                state: group.state.name(),
                group_type: CLASSIC_GROUP_TYPE,
            })
            .collect();
        listed.extend(consumer_groups.values().map(|group| GroupListing {
            group_id: group.id.clone(),
            protocol_type: CONSUMER_PROTOCOL_TYPE.to_owned(),
            state: group.state().name(),
            group_type: CONSUMER_GROUP_TYPE,
        }));
        listed
    }

    /// DescribeGroups. A consumer-protocol group is `Dead` to it, as Kafka
    /// answers DescribeGroups before v6 (ConsumerGroupDescribe describes it).
    pub fn describe(&self, group_id: &str) -> GroupDescription {
        if self.consumer_groups.borrow().contains_key(group_id) {
            return GroupDescription {
                state: "Dead".to_owned(),
                ..GroupDescription::default()
            };
        }
        let groups = self.groups.borrow();
        let Some(group) = groups.get(group_id) else {
            return GroupDescription {
                state: "Dead".to_owned(),
                ..GroupDescription::default()
            };
        };
        let protocol = group.protocol_name.clone().unwrap_or_default();
        let stable = group.state == GroupState::Stable;
        GroupDescription {
            state: group.state.name().to_owned(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol_name: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: group
                .members()
                .map(|member| MemberDescription {
                    member_id: member.id.clone(),
                    instance_id: member.instance_id.clone(),
                    client_id: member.client_id.clone(),
                    client_host: member.client_host.clone(),
                    metadata: member.metadata(&protocol),
                    assignment: if stable {
                        member.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }
}

/// Offset requests.
impl Coordinator {
    /// OffsetCommit. `Err` is an error for the whole request; `Ok` holds one
    /// code per partition, in request order.
    pub async fn commit(
        &self,
        group_id: &str,
        claim: &MemberClaim<'_>,
        version: i16,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    ) -> Result<Vec<i16>, i16> {
        // Kafka sets no limit of its own; past this its record encoder
        // fails. The group id is the request's word, so it is a Kafka error.
        if group_id.len() > RECORD_STRING_BYTES_MAX {
            return Err(ResponseError::InvalidGroupId.code());
        }
        self.check_commit(group_id, claim, Some(version))
            .map_err(|error| error.code())?;
        let (mut codes, changes) = self.accepted_changes(group_id, offsets);
        if let Err(error) = self.write(changes).await {
            if let Some(failed) = COMMIT_FAILURES.record(monotonic_ms()) {
                tracing::warn!(group = group_id, %error, failed, "offset commit failed (`failed` counts failures since the last such line)");
            }
            let code = commit_error_code(&error);
            for stored in codes.iter_mut().filter(|code| **code == 0) {
                *stored = code;
            }
        }
        Ok(codes)
    }

    /// Each offset's code (0: accepted, else UNKNOWN_TOPIC_OR_PARTITION or
    /// OFFSET_METADATA_TOO_LARGE) and the records of the accepted ones.
    fn accepted_changes(
        &self,
        group_id: &str,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    ) -> (Vec<i16>, Vec<OffsetRecord>) {
        let metadata_max = self.broker.config.groups.offset_metadata_max_bytes as usize;
        let cluster = self.broker.metadata.snapshot();
        let mut codes = Vec::with_capacity(offsets.len());
        let mut changes = Vec::new();
        for (key, value) in offsets {
            let known = cluster.topic(&key.topic).is_some_and(|topic| {
                u32::try_from(key.partition).is_ok_and(|index| index < topic.partitions)
            });
            let code = if !known {
                ResponseError::UnknownTopicOrPartition.code()
            } else if value.metadata.len() > metadata_max {
                ResponseError::OffsetMetadataTooLarge.code()
            } else {
                changes.push(OffsetRecord {
                    group: group_id.to_owned(),
                    key,
                    value: Some(value),
                });
                0
            };
            codes.push(code);
        }
        (codes, changes)
    }

    /// Who may commit: a member of the current generation, or anyone with
    /// generation -1 and no member id while the group has no members
    /// (clients that assign partitions themselves). A consumer-protocol
    /// group checks member epochs instead (see `ConsumerGroup::check_commit`).
    /// `version` is the OffsetCommit version (None: TxnOffsetCommit).
    fn check_commit(
        &self,
        group_id: &str,
        claim: &MemberClaim<'_>,
        version: Option<i16>,
    ) -> Result<(), ResponseError> {
        if let Some(group) = self.consumer_groups.borrow().get(group_id) {
            return group
                .check_commit(claim.member_id, claim.generation, version)
                .map_err(|error| error.error);
        }
        let groups = self.groups.borrow();
        let Some(group) = groups.get(group_id) else {
            if claim.generation < 0 {
                return Ok(());
            }
            // Kafka: from OffsetCommit v9 an unknown group is
            // GROUP_ID_NOT_FOUND, before it ILLEGAL_GENERATION.
            if version.is_some_and(|version| version >= 9) {
                return Err(ResponseError::GroupIdNotFound);
            }
            return Err(ResponseError::IllegalGeneration);
        };
        if claim.generation < 0 && claim.member_id.is_empty() {
            if group.has_members() {
                return Err(ResponseError::UnknownMemberId);
            }
            return Ok(());
        }
        group.check_member(claim)?;
        if group.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Every committed offset held here, as (group, partition, offset): what
    /// the consumer-lag gauges are computed from.
    pub fn committed_offsets(&self) -> Vec<(String, TopicPartition, i64)> {
        self.groups
            .borrow()
            .values()
            .flat_map(|group| {
                group
                    .offsets
                    .iter()
                    .map(|(key, value)| (group.id.clone(), key.clone(), value.offset))
            })
            .collect()
    }

    /// OffsetFetch v9's member check, for consumer-protocol groups (a
    /// classic group reads freely, as in Kafka).
    pub fn check_fetch(
        &self,
        group_id: &str,
        member_id: Option<&str>,
        epoch: i32,
    ) -> Result<(), i16> {
        match self.consumer_groups.borrow().get(group_id) {
            Some(group) => group
                .check_fetch(member_id, epoch)
                .map_err(|error| error.error.code()),
            None => Ok(()),
        }
    }

    /// OffsetFetch: the committed offset of each partition asked for, or of
    /// every partition with one when `partitions` is None.
    pub fn fetch(
        &self,
        group_id: &str,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Vec<(TopicPartition, Option<CommittedOffset>)> {
        let groups = self.groups.borrow();
        let group = groups.get(group_id);
        match partitions {
            Some(partitions) => partitions
                .into_iter()
                .map(|key| {
                    let value = group.and_then(|group| group.offsets.get(&key).cloned());
                    (key, value)
                })
                .collect(),
            None => group
                .map(|group| {
                    group
                        .offsets
                        .iter()
                        .map(|(key, value)| (key.clone(), Some(value.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// OffsetDelete: refused for topics the group's members subscribe to.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<i16>, i16> {
        // A consumer group refuses the topics its members subscribe to
        // (by name or regex), at any state, as Kafka does.
        let consumer_subscribed = self.consumer_subscribed_topics(group_id);
        let (codes, changes) = {
            let groups = self.groups.borrow();
            let group = groups.get(group_id);
            let subscribed: Vec<String> = match (consumer_subscribed, group) {
                (Some(subscribed), _) => subscribed.into_iter().collect(),
                (None, None) => return Err(ResponseError::GroupIdNotFound.code()),
                (None, Some(group)) => {
                    let subscribed = group.subscribed_topics();
                    if subscribed.is_none() && group.has_members() {
                        return Err(ResponseError::NonEmptyGroup.code());
                    }
                    subscribed.unwrap_or_default()
                }
            };
            let mut codes = Vec::with_capacity(partitions.len());
            let mut changes = Vec::new();
            for key in partitions {
                if subscribed.contains(&key.topic) {
                    codes.push(ResponseError::GroupSubscribedToTopic.code());
                    continue;
                }
                if group.is_some_and(|group| group.offsets.get(&key).is_some()) {
                    changes.push(OffsetRecord {
                        group: group_id.to_owned(),
                        key,
                        value: None,
                    });
                }
                codes.push(0);
            }
            (codes, changes)
        };
        self.write(changes)
            .await
            .map_err(|error| commit_error_code(&error))?;
        Ok(codes)
    }

    /// Forget every group's committed offsets for the topics `gone`
    /// (deleted): tombstones, one write per group, as Kafka's
    /// `handleDeletedPartitions` does. A topic re-created with the same name
    /// then starts from the consumer's `auto.offset.reset`, never from an
    /// offset of the old topic's data. Returns how many offsets were
    /// forgotten; a failed write is logged and retried at the next start.
    pub async fn forget_topics(&self, gone: impl Fn(&str) -> bool) -> usize {
        let by_group: Vec<Vec<OffsetRecord>> = self
            .groups
            .borrow()
            .iter()
            .map(|(group_id, group)| {
                group
                    .offsets
                    .iter()
                    .filter(|(key, _)| gone(&key.topic))
                    .map(|(key, _)| OffsetRecord {
                        group: group_id.clone(),
                        key: key.clone(),
                        value: None,
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|changes| !changes.is_empty())
            .collect();
        let mut forgotten = 0;
        for changes in by_group {
            let count = changes.len();
            match self.write(changes).await {
                Ok(()) => forgotten += count,
                Err(error) => {
                    tracing::warn!(%error, "cannot forget the committed offsets of a deleted topic; retried at the next start");
                }
            }
        }
        forgotten
    }

    /// DeleteGroups: only a group without members; its offsets go with it.
    pub async fn delete_group(&self, group_id: &str) -> i16 {
        if let Some(code) = self.delete_consumer_group(group_id).await {
            return code;
        }
        let changes: Vec<OffsetRecord> = {
            let groups = self.groups.borrow();
            let Some(group) = groups.get(group_id) else {
                return ResponseError::GroupIdNotFound.code();
            };
            if group.has_members() {
                return ResponseError::NonEmptyGroup.code();
            }
            group
                .offsets
                .iter()
                .map(|(key, _)| OffsetRecord {
                    group: group_id.to_owned(),
                    key: key.clone(),
                    value: None,
                })
                .collect()
        };
        if let Err(error) = self.write(changes).await {
            return commit_error_code(&error);
        }
        let mut groups = self.groups.borrow_mut();
        if groups
            .get(group_id)
            .is_some_and(|group| !group.has_members())
        {
            groups.remove(group_id);
        }
        tracing::info!(group = group_id, "deleted group");
        0
    }
}

/// How long an empty group without committed offsets is kept before the
/// coordinator forgets it.
const EMPTY_GROUP_KEPT_FOR: Duration = Duration::from_secs(60);

/// Timers: session expiry, join deadlines, offset expiry, snapshots.
impl Coordinator {
    fn tick(&self, now: Instant) {
        let mut groups = self.groups.borrow_mut();
        for group in groups.values_mut().filter(|group| group.is_active()) {
            for member in group.tick(&self.limits, now) {
                tracing::info!(group = %group.id, %member, "member evicted: session timed out");
            }
        }
        // An empty group without offsets stays for a while, as Kafka's
        // stays until its next cleanup (`offsets.retention.check.interval.
        // ms`): a DeleteGroups right after an OffsetDelete of its last
        // offsets finds it (a CI failure: @platformatic/kafka's delete got
        // GROUP_ID_NOT_FOUND when a tick came between).
        groups.retain(|_, group| {
            group.has_members()
                || !group.offsets.is_empty()
                || now.saturating_duration_since(group.empty_since) < EMPTY_GROUP_KEPT_FOR
        });
    }

    /// Tombstones for offsets of groups that have been empty too long.
    async fn expire_offsets(&self) {
        let retention = Duration::from_millis(self.broker.config.groups.offsets_retention_ms);
        let now_ms = now_ms();
        let now = Instant::now();
        // A consumer group's offsets expire once it is empty, from when it
        // became empty, like a classic group's.
        let consumer_empty_since: HashMap<String, Option<Instant>> = self
            .consumer_groups
            .borrow()
            .values()
            .map(|group| {
                let since = group.members.is_empty().then_some(group.empty_since);
                (group.id.clone(), since)
            })
            .collect();
        let expired: Vec<OffsetRecord> = self
            .groups
            .borrow()
            .values()
            .filter_map(|group| match consumer_empty_since.get(&group.id) {
                Some(since) => since.map(|since| (group, since)),
                None => (!group.has_members()).then_some((group, group.empty_since)),
            })
            .flat_map(|(group, empty_since)| {
                let empty_for = now.duration_since(empty_since);
                group.offsets.iter().filter_map(move |(key, value)| {
                    let committed_ago = u64::try_from(now_ms - value.commit_timestamp_ms)
                        .map(Duration::from_millis)
                        .unwrap_or_default();
                    (committed_ago.min(empty_for) >= retention).then(|| OffsetRecord {
                        group: group.id.clone(),
                        key: key.clone(),
                        value: None,
                    })
                })
            })
            .collect();
        if expired.is_empty() {
            self.delete_abandoned_consumer_groups().await;
            return;
        }
        let mut by_group: BTreeMap<String, Vec<OffsetRecord>> = BTreeMap::new();
        for record in expired {
            by_group
                .entry(record.group.clone())
                .or_default()
                .push(record);
        }
        for (group, records) in by_group {
            let count = records.len();
            match self.write(records).await {
                Ok(()) => tracing::info!(group, offsets = count, "expired committed offsets"),
                Err(error) => tracing::warn!(group, %error, "cannot expire offsets"),
            }
        }
        self.delete_abandoned_consumer_groups().await;
    }

    /// Copy the live entries of crowded offsets partitions forward, then
    /// release what lies below them.
    async fn snapshot_if_due(&self) {
        let partitions = self.offsets_partitions();
        let due: Vec<(u32, PartitionId)> = {
            let mut live: HashMap<u32, u64> = HashMap::new();
            for group in self.groups.borrow().values() {
                *live
                    .entry(offsets_partition(&group.id, partitions))
                    .or_default() += group.offsets.len() as u64;
            }
            for group in self.consumer_groups.borrow().values() {
                // The group, its target epoch, and three per member.
                *live
                    .entry(offsets_partition(&group.id, partitions))
                    .or_default() += 2 + 3 * group.members.len() as u64;
            }
            self.logs
                .borrow()
                .iter()
                .filter(|(index, log)| {
                    let live = live.get(index).copied().unwrap_or(0);
                    let age = log.last_snapshot.elapsed();
                    let crowded = log.records_since_snapshot > live
                        && (log.records_since_snapshot - live >= SNAPSHOT_RECORDS_MIN
                            || age >= SNAPSHOT_AGE_MAX);
                    let pins_oldest = age >= SNAPSHOT_UNDER_PRESSURE_INTERVAL
                        && log
                            .store
                            .pins_the_oldest_segment_under_disk_pressure(log.id);
                    crowded || (live > 0 && age >= SNAPSHOT_REFRESH) || pins_oldest
                })
                .map(|(&index, log)| (index, log.id))
                .collect()
        };
        for (index, id) in due {
            if let Err(error) = self.snapshot(index, id, partitions).await {
                tracing::warn!(partition = index, %error, "offsets snapshot failed");
            }
        }
    }

    async fn snapshot(
        &self,
        index: u32,
        id: PartitionId,
        partitions: u32,
    ) -> Result<(), OffsetsWriteError> {
        let (_, store) = self
            .log_of(index)
            .ok_or(OffsetsWriteError::NotHere { index })?;
        let (receipt, start, live) = {
            let _writing = self.writer.lock().await;
            let mut live: Vec<LogRecord> = self
                .groups
                .borrow()
                .values()
                .filter(|group| offsets_partition(&group.id, partitions) == index)
                .flat_map(|group| {
                    group.offsets.iter().map(|(key, value)| {
                        LogRecord::Offset(OffsetRecord {
                            group: group.id.clone(),
                            key: key.clone(),
                            value: Some(value.clone()),
                        })
                    })
                })
                .collect();
            for group in self
                .consumer_groups
                .borrow()
                .values()
                .filter(|group| offsets_partition(&group.id, partitions) == index)
            {
                live.extend(
                    consumer_records::changes(None, Some(group))
                        .into_iter()
                        .map(LogRecord::Consumer),
                );
            }
            // Never past the first record of a transaction still open
            // here: its offsets are not in the table, only in the log.
            let start = store.offsets(id).map_or(Offset(0), |offsets| {
                offsets.next_offset.min(offsets.last_stable_offset)
            });
            let count = live.len();
            let receipt = self.append_in_order(index, live, Purpose::Snapshot).await?;
            (receipt, start, count)
        };
        if let Some(receipt) = &receipt {
            self.durable(index, receipt).await?;
        }
        store.advance_log_start(id, start).map_err(|source| {
            OffsetsWriteError::AdvanceLogStart {
                index,
                start,
                source,
            }
        })?;
        if let Some(log) = self.logs.borrow_mut().get_mut(&index) {
            log.records_since_snapshot = live as u64;
            log.last_snapshot = Instant::now();
        }
        tracing::debug!(
            partition = index,
            live,
            log_start = start.0,
            "offsets snapshot"
        );
        Ok(())
    }
}

async fn run_timers(coordinator: std::rc::Weak<Coordinator>) {
    let mut last_expiry = Instant::now();
    let mut last_snapshot_check = Instant::now();
    loop {
        compio::time::sleep(TICK_INTERVAL).await;
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        let now = Instant::now();
        coordinator.tick(now);
        coordinator.expire_consumer_members().await;
        if now.duration_since(last_expiry) >= EXPIRY_CHECK_INTERVAL {
            last_expiry = now;
            coordinator.expire_offsets().await;
        }
        if now.duration_since(last_snapshot_check) >= SNAPSHOT_CHECK_INTERVAL {
            last_snapshot_check = now;
            coordinator.snapshot_if_due().await;
        }
    }
}

/// How a failed offsets write is reported (as Kafka does): retriable
/// coordinator errors, or INVALID_COMMIT_OFFSET_SIZE for an oversized batch.
fn commit_error_code(error: &OffsetsWriteError) -> i16 {
    match error {
        OffsetsWriteError::RecordTooLarge { .. }
        | OffsetsWriteError::Append {
            source: AppendError::BatchTooLarge { .. },
        } => ResponseError::InvalidCommitOffsetSize.code(),
        OffsetsWriteError::Append {
            source: AppendError::ShuttingDown,
        } => ResponseError::NotCoordinator.code(),
        _ => ResponseError::CoordinatorNotAvailable.code(),
    }
}

/// The code TxnOffsetCommit answers for a failed verification with the
/// transaction's coordinator: one the group's clients retry without
/// looking the group coordinator up again, as Kafka's
/// `maybeConvertOffsetCommitError` does (an unreachable or moving
/// transaction coordinator is not this group coordinator's fault).
fn txn_offset_commit_error(code: i16) -> i16 {
    let moving = [
        ResponseError::NetworkException,
        ResponseError::NotCoordinator,
        ResponseError::CoordinatorNotAvailable,
    ];
    if moving.iter().any(|error| error.code() == code) {
        ResponseError::CoordinatorLoadInProgress.code()
    } else {
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(group: &str, metadata_bytes: usize) -> EncodedRecord {
        LogRecord::Offset(OffsetRecord {
            group: group.to_owned(),
            key: TopicPartition {
                topic: "t".to_owned(),
                partition: 0,
            },
            value: Some(CommittedOffset {
                offset: 1,
                leader_epoch: -1,
                metadata: "m".repeat(metadata_bytes),
                commit_timestamp_ms: 0,
            }),
        })
        .encode()
    }

    #[test]
    fn offset_batches_hold_at_most_the_record_count_limit() {
        let changes = vec![record("g", 0); RECORDS_PER_BATCH_MAX + 1];
        let chunks = batch_chunks(&changes, 1 << 20).unwrap();
        let sizes: Vec<usize> = chunks.iter().map(|chunk| chunk.len()).collect();
        assert_eq!(sizes, [RECORDS_PER_BATCH_MAX, 1]);
    }

    /// Issue 12: group ids and metadata of up to 32 KiB each make 100
    /// records far larger than a batch may be; the batches split by bytes.
    #[test]
    fn offset_batches_of_the_longest_strings_stay_under_the_size_limit() {
        let group = "g".repeat(RECORD_STRING_BYTES_MAX);
        let changes = vec![record(&group, RECORD_STRING_BYTES_MAX); 40];
        let limit = crate::config::MESSAGE_MAX_BYTES_DEFAULT;
        let chunks = batch_chunks(&changes, limit).unwrap();
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(|chunk| chunk.len()).sum::<usize>(), 40);
        for chunk in chunks {
            let bytes = encode_batch(chunk);
            ValidatedBatch::validate(
                &bytes,
                &crate::record_batch::BatchLimits::new(limit as usize, 32),
            )
            .unwrap();
        }
    }

    #[test]
    fn an_offset_record_larger_than_a_batch_may_be_is_record_too_large() {
        let changes = vec![record("g", 2000)];
        assert!(matches!(
            batch_chunks(&changes, 1000),
            Err(OffsetsWriteError::RecordTooLarge { limit: 1000, .. })
        ));
        assert_eq!(
            commit_error_code(&OffsetsWriteError::RecordTooLarge { size: 0, limit: 0 }),
            ResponseError::InvalidCommitOffsetSize.code()
        );
    }
}
