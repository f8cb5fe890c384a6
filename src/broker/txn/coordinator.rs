//! The transaction coordinator of one shard (KIP-98, transaction version 1;
//! docs/exactly-once-design.md section 3).
//!
//! A shard-local service like the group coordinator: installed on the
//! shard's thread at start, after replaying the `__transaction_state`
//! partitions the shard owns, and found by requests routed there. One
//! thread serves every transactional id it coordinates, so there are no
//! locks; a flag per id (`busy.rs`) marks the id busy while a change is
//! written or its markers sent, as Kafka's `pendingState` does.
//! InitProducerId arriving then gets CONCURRENT_TRANSACTIONS (retriable);
//! AddPartitionsToTxn, AddOffsetsToTxn and EndTxn wait for it in arrival
//! order (at most `BUSY_WAIT_MAX`, then CONCURRENT_TRANSACTIONS), each
//! handed the id in turn, so a transaction begun while the previous one's
//! markers are written is added to, not refused, and an abort sent right
//! behind it finds it open (see `begin_in_turn`).
//!
//! Every change is a record appended to the id's partition and applied to
//! the table when it has its place in the log (under the writer lock, so
//! table order is log order); the client is answered once it is durable.
//!
//! States and answers (Kafka's order of checks: an unknown id or another
//! producer id is INVALID_PRODUCER_ID_MAPPING, another epoch is
//! PRODUCER_FENCED, or INVALID_PRODUCER_EPOCH at request versions before
//! KIP-588):
//! * InitProducerId: a new id gets a new producer id and epoch 0 (Empty); a
//!   known one in Empty or Complete* gets its epoch bumped (a new producer
//!   id once the epoch is exhausted), which fences the older instance; in
//!   Ongoing the transaction is aborted with a bumped epoch (the markers
//!   fence the old producer on every partition) and the client gets
//!   CONCURRENT_TRANSACTIONS, retries and then gets the next epoch; in
//!   Prepare* CONCURRENT_TRANSACTIONS.
//! * AddPartitionsToTxn: Ongoing with the partitions added (the start time
//!   is set when a transaction begins).
//! * EndTxn in Ongoing: PrepareCommit or PrepareAbort is made durable and
//!   answered; then a marker is appended to every partition of the
//!   transaction (on its owner shard, `ShardStore::append_marker`), retried
//!   with back-off until it is stored, and CompleteCommit or CompleteAbort
//!   is written. A retry of a finished EndTxn with the same result is
//!   answered NONE; anything else INVALID_TXN_STATE.
//! * Every `transactions.abort_check_interval_ms`, transactions open longer
//!   than their timeout are aborted the same way, with a bumped epoch.
//! * Ids idle for `transactions.id_expiration_ms` get a tombstone.
//! * After a restart, ids found in Prepare* get their markers written
//!   again (a marker for a transaction already closed is harmless), so
//!   an EndTxn answered before a crash always takes effect everywhere.
//!
//! Space: like `__consumer_offsets`, the partitions are compacted by
//! copying the live records forward and moving the log start; also whenever
//! a partition's records keep the shard's oldest segment alive.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use thiserror::Error;

use super::TXN_TOPIC;
use super::busy::{Busy, Handoff, Waiter};
use super::markers::{self, MarkerRequest};
use super::records::{self, TxnMetadata, TxnState};
use crate::broker::Broker;
use crate::broker::group::coordinator::now_ms;
use crate::broker::internal_log::{self, ReplayError, key_partition};
use crate::broker::producer_ids::{ProducerIdError, next_producer_id};
use crate::ids::{Offset, PartitionId};
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::record_batch::control::MarkerKind;
use crate::record_batch::{BatchError, ValidatedBatch};
use crate::shard::ShardContext;
use crate::storage::{AppendError, Durability, ShardStore};

/// The longest transactional id: its record stores it with an i16 length.
pub const TRANSACTIONAL_ID_BYTES_MAX: usize = i16::MAX as usize;

/// How often ids are checked for expiry.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How often partitions are checked for a copy-forward snapshot.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// A snapshot is taken once superseded records outnumber live ones twice
/// and number at least this many, or hourly while any are superseded.
const SNAPSHOT_RECORDS_MIN: u64 = 1000;
const SNAPSHOT_AGE_MAX: Duration = Duration::from_secs(3600);
/// Records per copy-forward batch.
const SNAPSHOT_RECORDS_PER_BATCH: usize = 100;
/// Back-off between attempts to write a marker or a completion.
pub(super) const RETRY_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub(super) const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long AddPartitionsToTxn, AddOffsetsToTxn and EndTxn wait for their
/// id's change in progress (most often the previous transaction's markers
/// and completion) before answering CONCURRENT_TRANSACTIONS. Far above a
/// completion's few fsyncs, far under the clients' request timeouts (30 s
/// in the Java client, librdkafka's `socket.timeout.ms` 60 s).
const BUSY_WAIT_MAX: Duration = Duration::from_secs(5);
/// Requests that may wait for one id at once; more get
/// CONCURRENT_TRANSACTIONS at once (a producer has one or two in flight).
const BUSY_WAITERS_MAX: usize = 8;
/// Debug builds with `SLUICE_FAILPOINT=txn_slow_markers`: how long a
/// completion waits before its markers, so that a test's next requests
/// find the id busy.
const FAILPOINT_SLOW_MARKERS_DELAY: Duration = Duration::from_millis(300);

thread_local! {
    static LOCAL: RefCell<Option<Rc<TxnCoordinator>>> = const { RefCell::new(None) };
}

/// Failed marker or completion writes, logged at most 20 times per 10 s.
pub(super) static RETRIES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);

/// Why the coordinator could not start (the shard does not start either).
#[derive(Debug, Error)]
pub enum TxnStartError {
    #[error(
        "{TXN_TOPIC}-{index} has no storage on this shard (partitions are reconciled with the \
         metadata before the coordinator starts: a bug)"
    )]
    NoStorage { index: u32 },
    #[error("cannot replay {TXN_TOPIC}-{index}: {source}")]
    Replay {
        index: u32,
        #[source]
        source: ReplayError,
    },
}

/// Why a transaction record was not written.
#[derive(Debug, Error)]
pub enum TxnWriteError {
    #[error("{TXN_TOPIC}-{index} is not on this shard")]
    NotHere { index: u32 },
    #[error("the transaction batch this broker built is invalid (a bug): {source}")]
    InvalidBatch {
        #[source]
        source: BatchError,
    },
    #[error("cannot append to {TXN_TOPIC}: {source}")]
    Append {
        #[from]
        source: AppendError,
    },
}

/// One transactional id.
#[derive(Debug)]
struct TxnEntry {
    meta: TxnMetadata,
    /// Held while a change is written or its markers sent: other requests
    /// wait their turn or get CONCURRENT_TRANSACTIONS.
    busy: Busy,
}

/// A place in an id's queue; leaving it early (timed out, dropped) takes
/// the request out of the queue, or passes the id on if it was handed
/// over already.
struct Queued<'a> {
    coordinator: &'a TxnCoordinator,
    id: &'a str,
    waiter: Rc<Waiter>,
    taken: bool,
}

impl Queued<'_> {
    /// The id's state if the request holds the id now (it is then the
    /// request's to `finish`); CONCURRENT_TRANSACTIONS otherwise.
    fn take(mut self) -> Result<TxnMetadata, i16> {
        if self.waiter.handoff() != Handoff::Granted {
            return Err(concurrent());
        }
        self.taken = true;
        self.coordinator.describe(self.id).ok_or_else(concurrent)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        match self.waiter.handoff() {
            Handoff::Granted => self.coordinator.finish(self.id),
            Handoff::Waiting => {
                if let Some(entry) = self.coordinator.txns.borrow_mut().get_mut(self.id) {
                    entry.busy.leave(&self.waiter);
                }
            }
            Handoff::Gone => {}
        }
    }
}

/// One `__transaction_state` partition this coordinator serves.
struct PartitionLog {
    id: PartitionId,
    /// The store holding it (in a cluster, its shard group's log on this
    /// node, which this node leads).
    store: Rc<ShardStore>,
    /// The shard group's leader epoch it was loaded at (0 on a single node).
    leader_epoch: i32,
    records_since_snapshot: u64,
    last_snapshot: Instant,
}

/// What DescribeTransactions / ListTransactions show of an id.
#[derive(Clone, Debug)]
pub struct TxnListing {
    pub transactional_id: String,
    pub meta: TxnMetadata,
}

pub struct TxnCoordinator {
    context: Rc<ShardContext>,
    broker: Arc<Broker>,
    txns: RefCell<HashMap<String, TxnEntry>>,
    logs: RefCell<BTreeMap<u32, PartitionLog>>,
    writer: futures_util::lock::Mutex<()>,
}

/// Removes this shard's coordinator when dropped.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        LOCAL.with(|local| local.borrow_mut().take());
    }
}

/// The codes a request's version gives to a producer that lost its epoch.
fn check_producer(
    meta: &TxnMetadata,
    producer_id: i64,
    epoch: i16,
    fenced: i16,
) -> Result<(), i16> {
    if producer_id != meta.producer_id {
        return Err(ResponseError::InvalidProducerIdMapping.code());
    }
    if epoch != meta.producer_epoch {
        return Err(fenced);
    }
    Ok(())
}

fn concurrent() -> i16 {
    ResponseError::ConcurrentTransactions.code()
}

/// What InitProducerId did with a known id.
enum InitOutcome {
    Answer(Result<(i64, i16), i16>),
    /// Its open transaction is being aborted to fence the old producer;
    /// the completion releases the id, and the client retries.
    Fencing,
}

impl TxnCoordinator {
    /// Replay this shard's `__transaction_state` partitions, install the
    /// coordinator, finish transactions left in Prepare* and start the
    /// timers.
    pub fn start(
        context: &Rc<ShardContext>,
        broker: &Arc<Broker>,
    ) -> Result<compio::runtime::JoinHandle<()>, TxnStartError> {
        let coordinator = Rc::new(TxnCoordinator {
            context: Rc::clone(context),
            broker: Arc::clone(broker),
            txns: RefCell::new(HashMap::new()),
            logs: RefCell::new(BTreeMap::new()),
            writer: futures_util::lock::Mutex::new(()),
        });
        coordinator.replay()?;
        LOCAL.with(|local| *local.borrow_mut() = Some(Rc::clone(&coordinator)));
        coordinator.complete_decided(None);
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

    /// Finish the transactions left in Prepare* (of partition `index`, or
    /// of all): decided before a restart or by the previous coordinator.
    fn complete_decided(self: &Rc<Self>, index: Option<u32>) {
        let partitions = self.partitions();
        let unfinished: Vec<String> = self
            .txns
            .borrow_mut()
            .iter_mut()
            .filter(|(id, entry)| {
                entry.meta.state.is_prepare()
                    && index.is_none_or(|index| key_partition(id, partitions) == index)
            })
            .map(|(id, entry)| {
                entry.busy.hold();
                id.clone()
            })
            .collect();
        for id in unfinished {
            tracing::info!(transactional_id = %id, "completing a transaction decided before this coordinator took over");
            compio::runtime::spawn(Rc::clone(self).complete(id)).detach();
        }
    }

    /// Whether this coordinator serves `__transaction_state` partition
    /// `index` now (in a cluster: this node leads its shard group and
    /// loaded it at the current leader epoch).
    pub fn serves(&self, index: u32) -> bool {
        self.logs.borrow().contains_key(&index)
    }

    /// In a cluster: serve the `__transaction_state` partitions of this
    /// shard whose shard group this node leads, loaded from the group's log
    /// on this node at the current leader epoch (finishing what the previous
    /// coordinator decided), and forget those it no longer leads.
    pub(crate) async fn match_leadership(self: &Rc<Self>) {
        let changes = crate::broker::replication::coordinator_changes(
            &self.context,
            &self.broker,
            TXN_TOPIC,
            |index| {
                self.logs
                    .borrow()
                    .get(&index)
                    .map(|log| (log.leader_epoch, Rc::clone(&log.store)))
            },
        );
        for (index, store, wanted) in changes {
            let writing = self.writer.lock().await;
            let partitions = self.partitions();
            self.logs.borrow_mut().remove(&index);
            self.txns
                .borrow_mut()
                .retain(|id, _| key_partition(id, partitions) != index);
            let Some(epoch) = wanted else {
                continue;
            };
            match self.load(index, store, epoch) {
                Ok(records) => {
                    drop(writing);
                    tracing::info!(shard = %self.context.id, partition = index, leader_epoch = epoch, records, "coordinating the transactions of a {TXN_TOPIC} partition");
                    self.complete_decided(Some(index));
                }
                Err(error) => {
                    tracing::warn!(shard = %self.context.id, partition = index, %error, "cannot load a {TXN_TOPIC} partition; trying again")
                }
            }
        }
    }

    /// This shard's coordinator.
    pub fn local() -> Option<Rc<TxnCoordinator>> {
        LOCAL.with(|local| local.borrow().clone())
    }

    fn partitions(&self) -> u32 {
        super::txn_topic_partitions(&self.broker)
    }

    fn replay(&self) -> Result<(), TxnStartError> {
        if self.broker.metadata.is_replicated() {
            // A cluster node loads the partitions of the shard groups it
            // leads as it starts leading them (`match_leadership`).
            return Ok(());
        }
        let started = Instant::now();
        let mut records = 0;
        for index in 0..self.partitions() {
            if self.context.shards.owner(TXN_TOPIC, index) != self.context.id {
                continue;
            }
            records += self.load(index, self.context.store(), 0)?;
        }
        tracing::info!(
            shard = %self.context.id,
            records,
            transactional_ids = self.txns.borrow().len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "transactions recovered"
        );
        Ok(())
    }

    /// Replay partition `index` from `store` and serve it; the records
    /// replayed.
    fn load(
        &self,
        index: u32,
        store: Rc<ShardStore>,
        leader_epoch: i32,
    ) -> Result<u64, TxnStartError> {
        let limit = self
            .broker
            .config
            .storage
            .stored_batch_limits()
            .decompressed_max_bytes;
        let id = store
            .partition_id(TXN_TOPIC, index)
            .ok_or(TxnStartError::NoStorage { index })?;
        let label = format!("{TXN_TOPIC}-{index}");
        let replayed = internal_log::replay(&store, id, &label, limit, |item| {
            let internal_log::ReplayItem::Record(record) = item else {
                return false;
            };
            match records::decode(record.key, record.value) {
                Ok(Some((transactional_id, meta))) => {
                    self.apply(transactional_id, meta);
                    true
                }
                Ok(None) => false,
                Err(error) => {
                    tracing::warn!(partition = index, offset = record.offset.0, %error, "skipping a bad transaction record");
                    false
                }
            }
        })
        .map_err(|source| TxnStartError::Replay { index, source })?;
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
        Ok(replayed)
    }

    /// Apply a record in log order (replay, or a write that has its place).
    fn apply(&self, transactional_id: String, meta: Option<TxnMetadata>) {
        let mut txns = self.txns.borrow_mut();
        match meta {
            Some(meta) => match txns.get_mut(&transactional_id) {
                Some(entry) => entry.meta = meta,
                None => {
                    txns.insert(
                        transactional_id,
                        TxnEntry {
                            meta,
                            busy: Busy::free(),
                        },
                    );
                }
            },
            None => {
                txns.remove(&transactional_id);
            }
        }
    }

    /// Mark `id` busy; CONCURRENT_TRANSACTIONS if it already is.
    fn begin(&self, id: &str) -> Result<Option<TxnMetadata>, i16> {
        let mut txns = self.txns.borrow_mut();
        let Some(entry) = txns.get_mut(id) else {
            return Ok(None);
        };
        if !entry.busy.try_hold() {
            return Err(concurrent());
        }
        Ok(Some(entry.meta.clone()))
    }

    /// Like `begin`, but a request that finds `id` busy waits its turn, in
    /// arrival order, up to [`BUSY_WAIT_MAX`], before it gets
    /// CONCURRENT_TRANSACTIONS. The requests a client sends as it begins
    /// its next transaction (AddPartitionsToTxn, AddOffsetsToTxn) thus wait
    /// for the previous one's markers instead of being refused: librdkafka
    /// counts a refused AddPartitionsToTxn as one that may have added its
    /// partitions, and an abort right after it sends EndTxn(abort), which
    /// the completed transaction could only answer with a fatal
    /// INVALID_TXN_STATE (found by the breaker trial; librdkafka issue
    /// 4849). An EndTxn queued behind them ends what they began.
    async fn begin_in_turn(&self, id: &str) -> Result<Option<TxnMetadata>, i16> {
        let waiter = {
            let mut txns = self.txns.borrow_mut();
            let Some(entry) = txns.get_mut(id) else {
                return Ok(None);
            };
            if entry.busy.try_hold() {
                return Ok(Some(entry.meta.clone()));
            }
            entry
                .busy
                .enqueue(BUSY_WAITERS_MAX)
                .ok_or_else(concurrent)?
        };
        let queued = Queued {
            coordinator: self,
            id,
            waiter,
            taken: false,
        };
        let _ = compio::time::timeout(BUSY_WAIT_MAX, queued.waiter.settled()).await;
        queued.take().map(Some)
    }

    /// Release `id`: to the first request waiting for it, if any (it stays
    /// held, so nothing arriving meanwhile overtakes the queue).
    fn finish(&self, id: &str) {
        if let Some(entry) = self.txns.borrow_mut().get_mut(id) {
            entry.busy.release();
        }
    }

    /// Append `meta` (`None`: a tombstone) for `id`, apply it, and wait
    /// until it is durable.
    async fn write(&self, id: &str, meta: Option<TxnMetadata>) -> Result<(), TxnWriteError> {
        let index = key_partition(id, self.partitions());
        let (partition, store, leader_epoch) = self
            .logs
            .borrow()
            .get(&index)
            .map(|log| (log.id, Rc::clone(&log.store), log.leader_epoch))
            .ok_or(TxnWriteError::NotHere { index })?;
        let key = records::encode_key(id);
        let value = meta.as_ref().map(records::encode_value);
        let bytes = internal_log::encode_batch([(&key[..], value.as_deref())], now_ms());
        let limits = self.broker.config.storage.stored_batch_limits();
        let batch = ValidatedBatch::validate(&bytes, &limits)
            .map_err(|source| TxnWriteError::InvalidBatch { source })?;
        let (receipt, previous) = {
            let _writing = self.writer.lock().await;
            // Transactions must be able to end, or their data would hold
            // back the last stable offset: their records go in above the
            // disk reject ratio, like the markers.
            let receipt = store
                .append_to_free_space(partition, batch, Durability::Fsynced)
                .await?;
            let previous = self.describe(id);
            self.apply(id.to_owned(), meta);
            (receipt, previous)
        };
        if let Some(log) = self.logs.borrow_mut().get_mut(&index) {
            log.records_since_snapshot += 1;
        }
        // Held by the in-sync replicas too: the transaction's state
        // survives the loss of this node (Kafka writes it with acks=all).
        let held = crate::broker::replication::durable_everywhere(
            &self.broker,
            &store,
            TXN_TOPIC,
            index,
            &receipt,
            leader_epoch,
        )
        .await;
        if let Err(error) = held {
            // Not acknowledged, so a retry must write it again (found by
            // the breaker trial: a retried AddPartitionsToTxn found the
            // unreplicated state here and wrote nothing, the coordinator
            // that took over never knew the transaction, and the client's
            // abort got a fatal INVALID_TXN_STATE).
            self.apply(id.to_owned(), previous);
            return Err(error.into());
        }
        Ok(())
    }

    /// The answer to InitProducerId for a transactional id (KIP-98,
    /// KIP-360 for `expected`, KIP-588 for `fenced`). Returns (producer id,
    /// epoch).
    pub async fn init_producer_id(
        self: &Rc<Self>,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        fenced: i16,
    ) -> Result<(i64, i16), i16> {
        // Its record stores the id with an i16 length, as Kafka's does.
        if id.len() > TRANSACTIONAL_ID_BYTES_MAX {
            return Err(ResponseError::InvalidRequest.code());
        }
        let max = self.broker.config.transactions.max_timeout_ms;
        if timeout_ms <= 0 || timeout_ms as u64 > max {
            return Err(ResponseError::InvalidTransactionTimeout.code());
        }
        let Some(meta) = self.begin(id)? else {
            return self.create(id, timeout_ms).await;
        };
        match self
            .init_known(id, meta, timeout_ms, expected, fenced)
            .await
        {
            InitOutcome::Answer(answer) => {
                self.finish(id);
                answer
            }
            InitOutcome::Fencing => Err(concurrent()),
        }
    }

    async fn create(&self, id: &str, timeout_ms: i32) -> Result<(i64, i16), i16> {
        let producer_id = self.new_producer_id().await?;
        // Another request may have created the id while this one waited.
        if self.txns.borrow().contains_key(id) {
            return Err(concurrent());
        }
        let meta = TxnMetadata {
            producer_id,
            last_producer_id: -1,
            producer_epoch: 0,
            last_producer_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: now_ms(),
        };
        self.txns.borrow_mut().insert(
            id.to_owned(),
            TxnEntry {
                meta: meta.clone(),
                busy: Busy::held(),
            },
        );
        let written = self.write(id, Some(meta)).await;
        match written {
            Ok(()) => {
                self.finish(id);
                Ok((producer_id, 0))
            }
            Err(error) => {
                self.txns.borrow_mut().remove(id);
                Err(write_failed(id, &error))
            }
        }
    }

    async fn new_producer_id(&self) -> Result<i64, i16> {
        next_producer_id(&self.context)
            .await
            .map_err(|error: ProducerIdError| {
                tracing::warn!(%error, "cannot hand out a producer id for a transactional producer");
                ResponseError::CoordinatorLoadInProgress.code()
            })
    }

    /// `meta` with its epoch bumped, or a new producer id once the epoch is
    /// exhausted (`rotate`); the old id and epoch are remembered.
    async fn bumped(&self, meta: &TxnMetadata, rotate: bool) -> Result<TxnMetadata, i16> {
        let mut next = meta.clone();
        next.last_producer_id = meta.producer_id;
        next.last_producer_epoch = meta.producer_epoch;
        match next_epoch(meta.producer_epoch, rotate) {
            Some(epoch) => next.producer_epoch = epoch,
            None => {
                next.producer_id = self.new_producer_id().await?;
                next.producer_epoch = 0;
            }
        }
        next.last_update_ms = now_ms();
        Ok(next)
    }

    async fn init_known(
        self: &Rc<Self>,
        id: &str,
        meta: TxnMetadata,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        fenced: i16,
    ) -> InitOutcome {
        if let Some((producer_id, epoch)) = expected {
            let current = producer_id == meta.producer_id && epoch == meta.producer_epoch;
            let retried = meta.last_producer_id >= 0
                && producer_id == meta.last_producer_id
                && epoch == meta.last_producer_epoch;
            if retried && matches!(meta.state, TxnState::Empty) {
                // The bump this retry asks for is done already.
                return InitOutcome::Answer(Ok((meta.producer_id, meta.producer_epoch)));
            }
            if !current && !retried {
                return InitOutcome::Answer(Err(fenced));
            }
        }
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                InitOutcome::Answer(Err(concurrent()))
            }
            TxnState::Ongoing => {
                // Fence the running producer: abort its transaction with a
                // bumped epoch; the client retries once it is complete.
                let mut next = match self.bumped(&meta, false).await {
                    Ok(next) => next,
                    Err(code) => return InitOutcome::Answer(Err(code)),
                };
                next.state = TxnState::PrepareAbort;
                tracing::info!(
                    transactional_id = id,
                    producer_id = meta.producer_id,
                    epoch = next.producer_epoch,
                    "a new producer instance fences the open transaction: aborting it"
                );
                match self.prepare_and_complete(id, next).await {
                    Ok(()) => InitOutcome::Fencing,
                    // Released already; the caller's release is harmless.
                    Err(code) => InitOutcome::Answer(Err(code)),
                }
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let mut next = match self.bumped(&meta, true).await {
                    Ok(next) => next,
                    Err(code) => return InitOutcome::Answer(Err(code)),
                };
                next.state = TxnState::Empty;
                next.partitions.clear();
                next.start_ms = -1;
                next.timeout_ms = timeout_ms;
                let written = self
                    .write(id, Some(next.clone()))
                    .await
                    .map_err(|error| write_failed(id, &error));
                InitOutcome::Answer(written.map(|()| (next.producer_id, next.producer_epoch)))
            }
        }
    }

    /// AddPartitionsToTxn (v0–3): the partitions join the transaction,
    /// which begins if none is open. The caller checked that they exist.
    pub async fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, u32)>,
        fenced: i16,
    ) -> Result<(), i16> {
        let meta = self
            .begin_in_turn(id)
            .await?
            .ok_or_else(|| ResponseError::InvalidProducerIdMapping.code())?;
        let answer = self
            .add_partitions_known(id, meta, producer_id, epoch, partitions, fenced)
            .await;
        self.finish(id);
        answer
    }

    async fn add_partitions_known(
        &self,
        id: &str,
        meta: TxnMetadata,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, u32)>,
        fenced: i16,
    ) -> Result<(), i16> {
        check_producer(&meta, producer_id, epoch, fenced)?;
        if meta.state.is_prepare() {
            return Err(concurrent());
        }
        let ongoing = meta.state == TxnState::Ongoing;
        if ongoing
            && partitions
                .iter()
                .all(|added| meta.partitions.contains(added))
        {
            return Ok(());
        }
        let mut next = meta;
        if !ongoing {
            next.partitions.clear();
            next.start_ms = now_ms();
        }
        next.state = TxnState::Ongoing;
        next.partitions.extend(partitions);
        next.last_update_ms = now_ms();
        // The id's record must fit one batch: refuse a transaction that
        // would outgrow it, rather than fail every retry.
        let record_bytes = records::encode_key(id).len() + records::encode_value(&next).len();
        if record_bytes + 128 > self.broker.config.storage.message_max_bytes as usize {
            tracing::warn!(
                transactional_id = id,
                partitions = next.partitions.len(),
                record_bytes,
                "refusing to add partitions: the transaction's record would exceed storage.message_max_bytes"
            );
            return Err(ResponseError::InvalidRequest.code());
        }
        self.write(id, Some(next))
            .await
            .map_err(|error| write_failed(id, &error))
    }

    /// EndTxn (v0–3): commit or abort the open transaction. Answered once
    /// the decision is durable; the markers follow.
    pub async fn end_txn(
        self: &Rc<Self>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        fenced: i16,
    ) -> Result<(), i16> {
        let meta = self
            .begin_in_turn(id)
            .await?
            .ok_or_else(|| ResponseError::InvalidProducerIdMapping.code())?;
        if let Err(code) = check_producer(&meta, producer_id, epoch, fenced) {
            self.finish(id);
            return Err(code);
        }
        let answer = match (meta.state, commit) {
            (TxnState::Ongoing, _) => {
                let mut next = meta;
                next.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                next.last_update_ms = now_ms();
                // The completion task releases the id.
                return self.prepare_and_complete(id, next).await;
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(()),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => Err(concurrent()),
            _ => Err(ResponseError::InvalidTxnState.code()),
        };
        self.finish(id);
        answer
    }

    /// Write `next` (a Prepare* state) and, once it is durable, start
    /// writing the markers; `id` stays held until they are all stored.
    /// On a failed write nothing changed and `id` is released.
    async fn prepare_and_complete(self: &Rc<Self>, id: &str, next: TxnMetadata) -> Result<(), i16> {
        debug_assert!(next.state.is_prepare());
        if let Err(error) = self.write(id, Some(next)).await {
            self.finish(id);
            return Err(write_failed(id, &error));
        }
        compio::runtime::spawn(Rc::clone(self).complete(id.to_owned())).detach();
        Ok(())
    }

    /// Whether `(topic, partition)` is in the open transaction of `id` at
    /// this producer id and epoch: the check a transactional Produce makes
    /// before its first batch on a partition opens the transaction there
    /// (the in-process form of KIP-890's verification). INVALID_TXN_STATE
    /// otherwise (or INVALID_PRODUCER_EPOCH for an older epoch), so a late
    /// batch of a finished transaction cannot open one no coordinator
    /// knows, which would hold the last stable offset back forever.
    pub fn verify(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: u32,
    ) -> Result<(), i16> {
        let txns = self.txns.borrow();
        let Some(entry) = txns.get(id) else {
            return Err(ResponseError::InvalidProducerIdMapping.code());
        };
        let meta = &entry.meta;
        check_producer(
            meta,
            producer_id,
            epoch,
            ResponseError::InvalidProducerEpoch.code(),
        )?;
        let added = meta.state == TxnState::Ongoing
            && meta.partitions.contains(&(topic.to_owned(), partition));
        if !added {
            return Err(ResponseError::InvalidTxnState.code());
        }
        Ok(())
    }

    /// What this coordinator knows of `id` (DescribeTransactions).
    pub fn describe(&self, id: &str) -> Option<TxnMetadata> {
        self.txns.borrow().get(id).map(|entry| entry.meta.clone())
    }

    /// Every transactional id this shard coordinates.
    pub fn list(&self) -> Vec<TxnListing> {
        self.txns
            .borrow()
            .iter()
            .map(|(id, entry)| TxnListing {
                transactional_id: id.clone(),
                meta: entry.meta.clone(),
            })
            .collect()
    }

    /// The leader epoch at which this coordinator loaded `__transaction_state`
    /// partition `index`, while it serves it.
    fn loaded_epoch(&self, index: u32) -> Option<i32> {
        self.logs.borrow().get(&index).map(|log| log.leader_epoch)
    }

    /// Write a marker to every partition of `id`'s decided transaction, then
    /// its Complete* state; retried with back-off until done.
    /// Releases the id at the end.
    async fn complete(self: Rc<Self>, id: String) {
        let Some(meta) = self.txns.borrow().get(&id).map(|entry| entry.meta.clone()) else {
            return;
        };
        let (kind, done) = match meta.state {
            TxnState::PrepareCommit => (MarkerKind::Commit, TxnState::CompleteCommit),
            TxnState::PrepareAbort => (MarkerKind::Abort, TxnState::CompleteAbort),
            _ => {
                self.finish(&id);
                return;
            }
        };
        if crate::failpoint::active("txn_before_markers") {
            tracing::warn!(transactional_id = %id, "failpoint txn_before_markers: holding the markers back");
            std::future::pending::<()>().await;
        }
        if crate::failpoint::active("txn_slow_markers") {
            compio::time::sleep(FAILPOINT_SLOW_MARKERS_DELAY).await;
        }
        // The coordinator epoch is the leader epoch of the id's
        // `__transaction_state` partition this coordinator loaded (Kafka's
        // coordinatorEpoch; 0 on a single node): a partition that took a
        // marker of a later coordinator refuses this one's (found by the
        // breaker trial: a deposed coordinator's late commit marker closed
        // the producer's next transaction, which was then aborted, so
        // read_committed consumers saw aborted records).
        let index = key_partition(&id, self.partitions());
        let Some(coordinator_epoch) = self.loaded_epoch(index) else {
            self.finish(&id);
            return;
        };
        let marker = MarkerRequest {
            producer_id: meta.producer_id,
            epoch: meta.producer_epoch,
            commit: kind == MarkerKind::Commit,
            coordinator_epoch,
            partitions: meta.partitions.iter().cloned().collect(),
        };
        let deposed = || self.loaded_epoch(index) != Some(coordinator_epoch);
        if !markers::write_until_stored(&self.context, &self.broker, marker, &deposed).await {
            tracing::info!(transactional_id = %id, "another coordinator took this transaction over before its markers were written; it completes them");
            self.finish(&id);
            return;
        }
        let mut next = meta;
        next.state = done;
        next.partitions.clear();
        next.last_update_ms = now_ms();
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            if deposed() {
                self.finish(&id);
                return;
            }
            match self.write(&id, Some(next.clone())).await {
                Ok(()) => break,
                Err(error) => {
                    if let Some(failed) = RETRIES.record(monotonic_ms()) {
                        tracing::warn!(transactional_id = %id, %error, failed, "cannot record a completed transaction; retrying");
                    }
                    compio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
        tracing::debug!(transactional_id = %id, state = done.name(), "transaction complete");
        self.finish(&id);
    }

    /// Abort every open transaction past its timeout, fencing its producer
    /// with a bumped epoch (Kafka's `abortTimedOutTransactions`).
    async fn abort_timed_out(self: &Rc<Self>) {
        let now = now_ms();
        let overdue: Vec<String> = self
            .txns
            .borrow()
            .iter()
            .filter(|(_, entry)| {
                !entry.busy.is_held()
                    && entry.meta.state == TxnState::Ongoing
                    && now.saturating_sub(entry.meta.start_ms) > i64::from(entry.meta.timeout_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in overdue {
            let Ok(Some(meta)) = self.begin(&id) else {
                continue;
            };
            let Ok(mut next) = self.bumped(&meta, false).await else {
                self.finish(&id);
                continue;
            };
            next.state = TxnState::PrepareAbort;
            metrics::counter!(crate::telemetry::names::TRANSACTION_TIMEOUTS).increment(1);
            tracing::info!(
                transactional_id = %id,
                producer_id = meta.producer_id,
                timeout_ms = meta.timeout_ms,
                "aborting a transaction open longer than its timeout; its producer is fenced"
            );
            let _ = self.prepare_and_complete(&id, next).await;
        }
    }

    /// Forget ids with no transaction in progress idle for
    /// `transactions.id_expiration_ms` (a tombstone each).
    async fn expire_ids(&self) {
        let expiration =
            i64::try_from(self.broker.config.transactions.id_expiration_ms).unwrap_or(i64::MAX);
        let now = now_ms();
        let idle: Vec<String> = self
            .txns
            .borrow()
            .iter()
            .filter(|(_, entry)| {
                !entry.busy.is_held()
                    && matches!(
                        entry.meta.state,
                        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                    )
                    && now.saturating_sub(entry.meta.last_update_ms) >= expiration
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            if !matches!(self.begin(&id), Ok(Some(_))) {
                continue;
            }
            match self.write(&id, None).await {
                Ok(()) => tracing::info!(transactional_id = %id, "transactional id expired"),
                Err(error) => {
                    self.finish(&id);
                    tracing::warn!(transactional_id = %id, %error, "cannot expire a transactional id");
                }
            }
        }
    }

    /// Copy each crowded partition's live records forward and move its log
    /// start to them (see the module docs).
    async fn snapshot_if_due(&self) {
        let partitions = self.partitions();
        let due: Vec<(u32, PartitionId)> = {
            let txns = self.txns.borrow();
            self.logs
                .borrow()
                .iter()
                .filter(|(index, log)| {
                    let live = txns
                        .keys()
                        .filter(|id| key_partition(id, partitions) == **index)
                        .count() as u64;
                    let superseded = log.records_since_snapshot.saturating_sub(live);
                    (superseded >= SNAPSHOT_RECORDS_MIN && superseded > live)
                        || (superseded > 0 && log.last_snapshot.elapsed() >= SNAPSHOT_AGE_MAX)
                        || (live > 0 && log.store.pins_the_oldest_segment(log.id))
                })
                .map(|(index, log)| (*index, log.id))
                .collect()
        };
        for (index, id) in due {
            if let Err(error) = self.snapshot(index, id, partitions).await {
                tracing::warn!(partition = index, %error, "{TXN_TOPIC} snapshot failed");
            }
        }
    }

    async fn snapshot(
        &self,
        index: u32,
        id: PartitionId,
        partitions: u32,
    ) -> Result<(), TxnWriteError> {
        let limits = self.broker.config.storage.stored_batch_limits();
        let Some((store, leader_epoch)) = self
            .logs
            .borrow()
            .get(&index)
            .map(|log| (Rc::clone(&log.store), log.leader_epoch))
        else {
            return Ok(());
        };
        let (receipt, start, live) = {
            let _writing = self.writer.lock().await;
            let live: Vec<(Vec<u8>, Vec<u8>)> = self
                .txns
                .borrow()
                .iter()
                .filter(|(txn_id, _)| key_partition(txn_id, partitions) == index)
                .map(|(txn_id, entry)| {
                    (
                        records::encode_key(txn_id),
                        records::encode_value(&entry.meta),
                    )
                })
                .collect();
            let start = store
                .offsets(id)
                .map_or(Offset(0), |offsets| offsets.next_offset);
            let mut receipt = None;
            let limit_bytes = self.broker.config.storage.message_max_bytes as usize;
            for chunk in chunks_within(&live, limit_bytes) {
                let bytes = internal_log::encode_batch(
                    chunk
                        .iter()
                        .map(|(key, value)| (&key[..], Some(&value[..]))),
                    now_ms(),
                );
                let batch = ValidatedBatch::validate(&bytes, &limits)
                    .map_err(|source| TxnWriteError::InvalidBatch { source })?;
                receipt = Some(
                    store
                        .append_to_free_space(id, batch, Durability::Fsynced)
                        .await?,
                );
            }
            (receipt, start, live.len())
        };
        if let Some(receipt) = &receipt {
            crate::broker::replication::durable_everywhere(
                &self.broker,
                &store,
                TXN_TOPIC,
                index,
                receipt,
                leader_epoch,
            )
            .await?;
        }
        if let Err(error) = store.advance_log_start(id, start) {
            tracing::warn!(partition = index, %error, "cannot move the log start of {TXN_TOPIC} after a snapshot");
            return Ok(());
        }
        if let Some(log) = self.logs.borrow_mut().get_mut(&index) {
            log.records_since_snapshot = live as u64;
            log.last_snapshot = Instant::now();
        }
        Ok(())
    }
}

/// The epoch after `epoch`, or `None` for a new producer id. InitProducerId
/// (`rotate`) takes a new id once the epoch is exhausted (Kafka's
/// rotation at `i16::MAX - 1`); a fence may take the epoch to `i16::MAX`,
/// so that the fenced producer's epoch is always below the markers', and
/// the next InitProducerId then rotates.
fn next_epoch(epoch: i16, rotate: bool) -> Option<i16> {
    if rotate && epoch >= i16::MAX - 1 {
        return None;
    }
    Some(epoch.saturating_add(1))
}

/// `records` in order, in runs of at most [`SNAPSHOT_RECORDS_PER_BATCH`]
/// records whose key and value bytes (plus a record's framing) stay under
/// `limit_bytes` with the batch header; a record too large for a batch of
/// its own is a run of one (its append then fails and is logged).
fn chunks_within(records: &[(Vec<u8>, Vec<u8>)], limit_bytes: usize) -> Vec<&[(Vec<u8>, Vec<u8>)]> {
    const RECORD_FRAMING_BYTES_MAX: usize = 32;
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = crate::record_batch::HEADER_BYTES;
    for (index, (key, value)) in records.iter().enumerate() {
        let size = key.len() + value.len() + RECORD_FRAMING_BYTES_MAX;
        if index > start
            && (index - start == SNAPSHOT_RECORDS_PER_BATCH || bytes + size > limit_bytes)
        {
            chunks.push(&records[start..index]);
            start = index;
            bytes = crate::record_batch::HEADER_BYTES;
        }
        bytes += size;
    }
    if start < records.len() {
        chunks.push(&records[start..]);
    }
    chunks
}

/// The code a failed write answers (retriable: the client tries again),
/// with the cause in the log.
fn write_failed(id: &str, error: &TxnWriteError) -> i16 {
    if let Some(failed) = RETRIES.record(monotonic_ms()) {
        tracing::warn!(transactional_id = id, %error, failed, "cannot record a transaction change");
    }
    ResponseError::CoordinatorNotAvailable.code()
}

/// Timers: timed-out transactions, id expiry, snapshots.
async fn run_timers(coordinator: std::rc::Weak<TxnCoordinator>) {
    let Some(interval) = coordinator.upgrade().map(|coordinator| {
        Duration::from_millis(
            coordinator
                .broker
                .config
                .transactions
                .abort_check_interval_ms,
        )
    }) else {
        return;
    };
    let mut last_expiry = Instant::now();
    let mut last_snapshot = Instant::now();
    loop {
        compio::time::sleep(interval).await;
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        coordinator.abort_timed_out().await;
        if last_expiry.elapsed() >= EXPIRY_CHECK_INTERVAL {
            last_expiry = Instant::now();
            coordinator.expire_ids().await;
        }
        if last_snapshot.elapsed() >= SNAPSHOT_CHECK_INTERVAL {
            last_snapshot = Instant::now();
            coordinator.snapshot_if_due().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(state: TxnState) -> TxnMetadata {
        TxnMetadata {
            producer_id: 10,
            last_producer_id: -1,
            producer_epoch: 3,
            last_producer_epoch: -1,
            timeout_ms: 60_000,
            state,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: 0,
        }
    }

    #[test]
    fn a_fence_always_raises_the_epoch_and_an_exhausted_init_rotates() {
        assert_eq!(next_epoch(0, true), Some(1));
        assert_eq!(next_epoch(i16::MAX - 2, true), Some(i16::MAX - 1));
        assert_eq!(
            next_epoch(i16::MAX - 1, true),
            None,
            "exhausted: a new producer id"
        );
        assert_eq!(
            next_epoch(i16::MAX - 1, false),
            Some(i16::MAX),
            "a fence of the last usable epoch still raises it (found by the breaker)"
        );
    }

    #[test]
    fn copy_forward_batches_stay_under_the_message_size_limit() {
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..40)
            .map(|_| (vec![0u8; 32 * 1024], vec![0u8; 100]))
            .collect();
        let chunks = chunks_within(&records, 1024 * 1024);
        assert!(
            chunks.len() > 1,
            "40 records of 32 KiB do not fit one 1 MiB batch"
        );
        assert_eq!(chunks.iter().map(|chunk| chunk.len()).sum::<usize>(), 40);
        for chunk in chunks {
            let bytes: usize = chunk
                .iter()
                .map(|(key, value)| key.len() + value.len() + 32)
                .sum();
            assert!(bytes + crate::record_batch::HEADER_BYTES <= 1024 * 1024);
        }
        let small: Vec<(Vec<u8>, Vec<u8>)> = (0..250).map(|_| (vec![1], vec![2])).collect();
        assert_eq!(
            chunks_within(&small, 1024 * 1024).len(),
            3,
            "100 records a batch at most"
        );
    }

    #[test]
    fn another_producer_id_is_a_mapping_error_and_another_epoch_is_fenced() {
        let fenced = ResponseError::ProducerFenced.code();
        let ongoing = meta(TxnState::Ongoing);
        assert_eq!(check_producer(&ongoing, 10, 3, fenced), Ok(()));
        assert_eq!(
            check_producer(&ongoing, 11, 3, fenced),
            Err(ResponseError::InvalidProducerIdMapping.code())
        );
        assert_eq!(check_producer(&ongoing, 10, 2, fenced), Err(fenced));
        assert_eq!(check_producer(&ongoing, 10, 4, fenced), Err(fenced));
    }
}
