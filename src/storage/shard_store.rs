//! A shard's storage: its commit log, the partitions it owns, and the tasks
//! that flush, checkpoint and enforce retention.
//!
//! This is the storage API the Kafka front end uses, from the owning shard's
//! thread (other shards reach it through the shard mailboxes):
//!
//! * [`ShardStore::append`] stores a validated RecordBatch. It returns once the
//!   batch is **buffered**, with its base offset assigned. Await
//!   [`ShardStore::wait`] on the receipt to learn when it reached the
//!   durability asked for: [`Durability::Written`] (readable) or
//!   [`Durability::Fsynced`] (acks=all).
//! * [`ShardStore::read`] returns the batches of a partition from an offset as
//!   file spans (file, offset, length) for zero-copy sends. Only written data
//!   is returned.
//!
//! The store is single-threaded (`Rc`, `RefCell`). No borrow of its state is
//! held across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpointer::{CheckpointWriter, ProducerSnapshots};
use super::commit_log::{CommitLog, LogOptions, LogStats};
use super::consume_queue::QueueError;
use super::disk_usage::{DiskUsageProbe, statvfs_probe};
use super::frame::FRAME_HEADER_BYTES;
use super::layout::ShardLayout;
use super::partition::{Partition, PartitionConfig, StoredBytesStep};
use super::producer_state::AbortedTxn;
use super::queue_file::QueueReservation;
use super::recovery::{RecoveryOptions, RecoveryReport, recover};
use super::retention::{self, DiskPressure};
use super::segment;
use super::store_errors::{AppendError, OpenError, PartitionError};
use crate::config::{RetentionConfig, StorageConfig};
use crate::ids::{LogPosition, Offset, PartitionId, ShardId};
use crate::io::{IoBackend, LogIo, new_log_io};
use crate::log_throttle::LogThrottle;
use crate::shard::local_sync::{Event, FifoGate, Notify};
use crate::telemetry::storage::{LogMetrics, StoreMetrics};

/// The partition leader epoch written into stored batches (single node).
pub const LEADER_EPOCH: i32 = 0;

/// What an append must reach before its producer is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Answer once buffered (acks=0/1 with the default write path); written at
    /// the next flush and fsynced within the partition's `flush.ms`.
    Buffered,
    /// Answer once written to the segment file (readable by consumers).
    Written,
    /// Answer once an fdatasync covering the batch returned (acks=all).
    Fsynced,
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub shard: ShardId,
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub retention: RetentionConfig,
    pub backend: IoBackend,
}

/// Parts of a store that tests replace: the commit log's device (to inject
/// faults or simulate power loss) and the disk-usage probe.
#[derive(Default)]
pub struct StoreHooks {
    pub log_io: Option<Box<dyn LogIo>>,
    pub disk_probe: Option<DiskUsageProbe>,
}

#[derive(Clone, Copy, Debug)]
pub struct AppendReceipt {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub position: LogPosition,
    pub(super) end: LogPosition,
    pub(super) durability: Durability,
    /// A retry of a batch an idempotent producer already stored: nothing
    /// was appended, the offsets are the original's.
    pub duplicate: bool,
}

/// Where a piece of a fetched batch is: a span of a segment file (final
/// blocks, sent zero-copy) or memory (the partial last block).
#[derive(Clone, Debug)]
pub enum ReadPart {
    File {
        file: Arc<File>,
        offset: u64,
        len: u32,
        /// The file's bytes below this offset were final (never written
        /// again: `CommitLog::final_end`) when the part was planned, so a
        /// read may run on past the part up to here (`kafka::cold_read`).
        final_len: u64,
    },
    Memory(bytes::Bytes),
}

impl AppendReceipt {
    /// Where the last appended frame ends in the shard's log.
    pub fn end(&self) -> LogPosition {
        self.end
    }
}

impl ReadPart {
    /// Bytes in this part.
    pub fn len(&self) -> u64 {
        match self {
            ReadPart::File { len, .. } => u64::from(*len),
            ReadPart::Memory(bytes) => bytes.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One stored batch, ready to send: its parts in order add up to `len` bytes.
#[derive(Clone, Debug)]
pub struct ReadBatch {
    /// Where the batch's frame starts in the shard's commit log.
    pub position: LogPosition,
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub len: u32,
    /// The batch's attributes (codec in bits 0-2), from the consume queue.
    pub attributes: u16,
    pub parts: Vec<ReadPart>,
}

#[derive(Clone, Debug)]
pub struct ReadResult {
    pub batches: Vec<ReadBatch>,
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
    pub last_stable_offset: Offset,
    /// For [`Isolation::ReadCommitted`]: the aborted transactions among the
    /// batches returned (what a consumer must drop); `None` otherwise.
    pub aborted: Option<Vec<AbortedTxn>>,
}

/// Which records a read may return (KIP-98 isolation levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Everything below the high watermark.
    ReadUncommitted,
    /// Only what is below the last stable offset, with the aborted
    /// transactions among it listed.
    ReadCommitted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
    /// Below it every transaction is decided (equals the high watermark
    /// when no transaction is open).
    pub last_stable_offset: Offset,
    pub next_offset: Offset,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct PendingAppend {
    pub(super) end: u64,
    pub(super) partition: PartitionId,
    pub(super) next_offset: Offset,
}

pub(super) struct StoreState {
    pub(super) log: CommitLog,
    pub(super) partitions: HashMap<PartitionId, Partition>,
    pub(super) names: HashMap<(String, u32), PartitionId>,
    /// Appends not yet durable, in log order; the first `visible` are written.
    pub(super) pending: VecDeque<PendingAppend>,
    pub(super) visible: usize,
    /// The last frame end at or below the durable end: checkpoints start here.
    pub(super) durable_frame_end: LogPosition,
    /// The end of the newest frame of a partition that does not copy its
    /// records forward ([`super::PartitionConfig::copies_forward`]), or of
    /// one deleted since; the recovered end after a restart. The only
    /// segment's roll under disk pressure frees space only if one lies in
    /// it (`retention_task.rs`): the internal topics' own copies stay.
    pub(super) last_frame_not_copied_forward: LogPosition,
    /// Appends ending past this stay invisible even once written: a
    /// cluster leader's high watermark, what its in-sync followers hold
    /// durably (`u64::MAX` otherwise).
    pub(super) visible_limit: u64,
    pub(super) next_partition_id: u32,
    /// Partitions whose files are being made (`partition_create.rs`), by
    /// name: their names and ids are taken.
    pub(super) creating: HashMap<(String, u32), PartitionId>,
    /// Consume-queue blocks to reserve ahead of appends, off the shard
    /// (the flusher starts them: `flusher.rs`).
    pub(super) queue_reservations: Vec<(PartitionId, QueueReservation)>,
    /// Compaction commit frames stored but not applied yet.
    pub(super) compaction: super::compaction::collector::Collector,
    /// Delayed records by due time (issue 18; `timer_store.rs`).
    pub(super) timer: super::timer::shard_timer::ShardTimer,
    /// Why the timer's files failed, if they did: checkpoints stop, so a
    /// restart rebuilds it from the log.
    pub(super) timer_fault: Option<String>,
}

pub struct ShardStore {
    pub(super) options: StoreOptions,
    pub(super) layout: ShardLayout,
    pub(super) state: RefCell<StoreState>,
    pub(super) flush_kick: Notify,
    /// Signalled when a watermark advances or the log is poisoned.
    pub(super) progress: Event,
    pub(super) buffer_space: FifoGate,
    pub(super) disk_probe: DiskUsageProbe,
    pub(super) disk_pressure: Cell<DiskPressure>,
    pub(super) disk_usage_ratio: Cell<f64>,
    pub(super) stopping: Cell<bool>,
    /// A copy following its shard group's leader: appends are refused
    /// ([`AppendError::NotLeader`]); copied frames are not.
    pub(super) follower: Cell<bool>,
    /// Where the log ended when this store last began to lead its shard
    /// group, and when (none: it never took over a group's log); see
    /// [`AppendError::SequenceGapAfterFailover`].
    pub(super) leading_from: Cell<Option<(LogPosition, Instant)>>,
    pub(super) flusher_stop: Cell<bool>,
    /// A batch of `StoreState::queue_reservations` is out.
    pub(super) queue_reserving: Cell<bool>,
    /// Segment files retention deleted that the blocking pool has not
    /// unlinked yet (`retention_task.rs`).
    pub(super) unlinks_pending: Rc<Cell<u32>>,
    pub(super) unlinker: super::retention_task::Unlinker,
    pub(super) checkpoint_sequence: Cell<u64>,
    pub(super) checkpoint_writer: Arc<std::sync::Mutex<CheckpointWriter>>,
    /// Producer snapshots taken and waiting for the log to be durable.
    pub(super) producer_snapshots: RefCell<ProducerSnapshots>,
    /// The position of the newest producer snapshot on disk; its lock
    /// serialises the writes, so an older one never replaces a newer one.
    pub(super) producer_snapshot_written: Arc<std::sync::Mutex<LogPosition>>,
    /// The partition-id counter last written to disk; its lock serialises
    /// the writes, so a late batch never records a smaller one.
    pub(super) partition_ids_written: Arc<std::sync::Mutex<u32>>,
    pub(super) recovery: RecoveryReport,
    pub(super) tasks: RefCell<Vec<compio::runtime::JoinHandle<()>>>,
    pub(super) flusher: RefCell<Option<compio::runtime::JoinHandle<()>>>,
    pub(super) metrics: StoreMetrics,
    /// Refused appends are logged at most once per interval, with a count.
    pub(super) rejection_log: LogThrottle,
    /// So is forced deletion held back by a topic that does not allow it.
    pub(super) forced_deletion_log: LogThrottle,
    /// Failed checkpoints (every `checkpoint_interval_ms` while the cause
    /// lasts).
    pub(super) checkpoint_failure_log: LogThrottle,
    /// Fetches refused because a batch's bytes are not on disk (every
    /// consumer poll while the damage lasts).
    pub(super) missing_batch_log: LogThrottle,
    pub(super) cleaner_failure_log: LogThrottle,
}

/// How often a refused append (full disk, poisoned log) is logged.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What a shard's storage holds and owes, for its gauges.
/// Pending delayed records of one partition due in one minute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingDelays {
    pub topic: String,
    pub partition: u32,
    /// The minute's first epoch millisecond.
    pub due_minute_ms: i64,
    pub records: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct StoreGauges {
    pub partitions: usize,
    pub segments: usize,
    /// From the oldest segment's base to the append end.
    pub log_bytes: u64,
    /// Appended but not yet durable.
    pub unflushed_bytes: u64,
    /// Memory held by the commit log's tail cache.
    pub tail_cache_bytes: u64,
    /// Writes and fdatasyncs in flight.
    pub io_inflight: usize,
    pub stats: LogStats,
    /// Delayed records waiting in the timer, and their bytes.
    pub delayed_records: u64,
    pub delayed_bytes: u64,
    /// The due time of the oldest due record not delivered yet (epoch ms).
    pub oldest_due_ms: Option<i64>,
}

impl ShardStore {
    /// Recover the shard's files and start its tasks. Must run inside the
    /// shard's compio runtime.
    pub fn open(options: StoreOptions) -> Result<Rc<ShardStore>, OpenError> {
        ShardStore::open_with(options, StoreHooks::default())
    }

    /// As [`ShardStore::open`], with parts replaced (fault injection, fake
    /// disk usage).
    pub fn open_with(
        options: StoreOptions,
        hooks: StoreHooks,
    ) -> Result<Rc<ShardStore>, OpenError> {
        let disk_probe = hooks
            .disk_probe
            .unwrap_or_else(|| statvfs_probe(options.data_dir.clone()));
        let shard = options.shard;
        let layout = ShardLayout::new(&options.data_dir, shard);
        let storage = &options.storage;
        super::truncate::finish_pending_restart(&layout, storage.segment_bytes, storage.write_mode)
            .map_err(|source| OpenError::Restart { shard, source })?;
        let recovery_options = RecoveryOptions {
            layout: layout.clone(),
            write_mode: storage.write_mode,
            entries_per_file: storage.consume_queue_entries_per_file,
            payload_len_max: storage.segment_bytes - FRAME_HEADER_BYTES as u64,
            resync_window_bytes: resync_window_bytes(storage),
        };
        let default_config = PartitionConfig::from_defaults(&options.retention, &options.storage);
        let recovered = recover(&recovery_options, default_config)
            .map_err(|source| OpenError::Recovery { shard, source })?;
        let io = match hooks.log_io {
            Some(io) => io,
            None => new_log_io(
                options.backend,
                storage.inflight_writes_max + super::commit_log::LOG_SYNCS_INFLIGHT_MAX,
                shard,
            )
            .map_err(|source| OpenError::Io { shard, source })?,
        };
        let log_options = LogOptions {
            dir: layout.log_dir(),
            write_mode: storage.write_mode,
            segment_bytes: storage.segment_bytes,
            reserve_max_bytes: storage.preallocate_bytes,
            sync_interval_bytes: storage.sync_interval_bytes,
            tail_cache_bytes: storage.tail_cache_bytes,
            age_roll_min_ms: storage.segment_roll_min_ms,
            chunk_bytes: storage.flush_bytes as usize,
            write_buffers: storage.write_buffers as usize,
            inflight_writes_max: storage.inflight_writes_max as usize,
            flush_interval: Duration::from_millis(storage.flush_interval_ms),
            metrics: LogMetrics::for_shard(shard),
        };
        let log = CommitLog::open(log_options, recovered.segments, recovered.end, io)
            .map_err(|source| OpenError::Log { shard, source })?;
        let timer = super::timer_store::open_timer(
            &options,
            &layout,
            &log,
            (recovered.timer, recovered.timer_from),
            &recovered.report.timer_frames,
        )?;
        let log_start = log.start();
        let mut partitions = HashMap::new();
        let mut names = HashMap::new();
        for mut partition in recovered.partitions {
            // A compaction pass recovery collected but has not applied yet
            // holds offsets below the first batch the head keeps on disk:
            // the log start stays until it is applied.
            if recovered
                .compaction
                .newest_generation(partition.id())
                .is_none()
            {
                let advanced = retention::first_offset_at_or_after(&partition, log_start)
                    .and_then(|first_on_disk| partition.advance_log_start(first_on_disk));
                if let Err(error) = advanced {
                    tracing::warn!(%error, "cannot move the log start to the oldest segment");
                }
            }
            names.insert(
                (partition.meta.topic.clone(), partition.meta.index),
                partition.id(),
            );
            partitions.insert(partition.id(), partition);
        }
        let next_partition_id = recovered.next_partition_id;
        let state = StoreState {
            durable_frame_end: recovered.end,
            last_frame_not_copied_forward: recovered.end,
            log,
            partitions,
            names,
            pending: VecDeque::new(),
            visible: 0,
            visible_limit: u64::MAX,
            next_partition_id,
            creating: HashMap::new(),
            queue_reservations: Vec::new(),
            compaction: recovered.compaction,
            timer,
            timer_fault: None,
        };
        let producer_snapshots = ProducerSnapshots::after_recovery(&recovered.report);
        let store = Rc::new(ShardStore {
            layout,
            state: RefCell::new(state),
            flush_kick: Notify::default(),
            progress: Event::default(),
            buffer_space: FifoGate::default(),
            disk_probe,
            disk_pressure: Cell::new(DiskPressure::Normal),
            disk_usage_ratio: Cell::new(0.0),
            stopping: Cell::new(false),
            follower: Cell::new(false),
            leading_from: Cell::new(None),
            flusher_stop: Cell::new(false),
            queue_reserving: Cell::new(false),
            unlinks_pending: Rc::new(Cell::new(0)),
            unlinker: Default::default(),
            checkpoint_sequence: Cell::new(0),
            checkpoint_writer: Arc::default(),
            partition_ids_written: Arc::new(std::sync::Mutex::new(next_partition_id)),
            producer_snapshot_written: Arc::new(std::sync::Mutex::new(producer_snapshots.taken())),
            producer_snapshots: RefCell::new(producer_snapshots),
            recovery: recovered.report,
            tasks: RefCell::new(Vec::new()),
            flusher: RefCell::new(None),
            metrics: StoreMetrics::for_shard(shard),
            rejection_log: LogThrottle::new(REJECTION_LOG_INTERVAL),
            forced_deletion_log: LogThrottle::new(REJECTION_LOG_INTERVAL),
            checkpoint_failure_log: LogThrottle::new(REJECTION_LOG_INTERVAL),
            missing_batch_log: LogThrottle::new(REJECTION_LOG_INTERVAL),
            cleaner_failure_log: LogThrottle::new(REJECTION_LOG_INTERVAL),
            options,
        });
        store.check_disk();
        store.start_tasks();
        Ok(store)
    }

    fn start_tasks(self: &Rc<Self>) {
        let flusher = compio::runtime::spawn(Rc::clone(self).run_flusher());
        *self.flusher.borrow_mut() = Some(flusher);
        let mut tasks = self.tasks.borrow_mut();
        tasks.push(compio::runtime::spawn(Rc::clone(self).run_checkpointer()));
        tasks.push(compio::runtime::spawn(Rc::clone(self).run_retention()));
        tasks.push(compio::runtime::spawn(Rc::clone(self).run_cleaner()));
        tasks.push(compio::runtime::spawn(Rc::clone(self).run_timer()));
    }

    /// Resolves at the store's next progress: a watermark advanced (more
    /// written, durable or visible) or the log was poisoned.
    pub fn progressed(&self) -> impl Future<Output = ()> + '_ {
        self.progress.wait()
    }

    /// Let appends ending at or below `limit` become visible (a cluster
    /// leader's high watermark: what its in-sync followers hold durably;
    /// `u64::MAX` positions for no limit). The limit never moves back.
    pub fn set_visible_limit(&self, limit: LogPosition) {
        let mut state = self.state.borrow_mut();
        // Without a limit everything written is visible: a new limit starts
        // there at least, so nothing visible becomes a frontier again.
        let floor = if state.visible_limit == u64::MAX {
            state.log.written_end().0
        } else {
            state.visible_limit
        };
        let limit = limit.0.max(floor);
        if limit == state.visible_limit {
            return;
        }
        state.visible_limit = limit;
        publish(&mut state);
        drop(state);
        self.progress.notify_all();
    }

    /// Where consumers' view of the log ends: the visible limit, or the
    /// written end when there is none (a cluster leader's high watermark,
    /// sent to its followers).
    pub fn visible_end(&self) -> LogPosition {
        let state = self.state.borrow();
        LogPosition(state.log.written_end().0.min(state.visible_limit))
    }

    /// Make this store a copy that follows its shard group's leader (`true`:
    /// appends are refused with [`AppendError::NotLeader`]) or the leader's
    /// own log (`false`).
    /// `false` is a takeover: it also records where the log ends now.
    pub fn set_follower(&self, follower: bool) {
        if !follower {
            let end = self.state.borrow().log.append_end();
            self.leading_from.set(Some((end, Instant::now())));
        }
        self.follower.set(follower);
    }

    /// Whether appends are refused because this store follows a leader.
    pub fn is_follower(&self) -> bool {
        self.follower.get()
    }

    /// Lift the visible limit ([`ShardStore::set_visible_limit`]): every
    /// written append becomes visible.
    pub fn clear_visible_limit(&self) {
        let mut state = self.state.borrow_mut();
        if state.visible_limit == u64::MAX {
            return;
        }
        state.visible_limit = u64::MAX;
        publish(&mut state);
        drop(state);
        self.progress.notify_all();
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    pub fn shard(&self) -> ShardId {
        self.options.shard
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn stats(&self) -> LogStats {
        self.state.borrow().log.stats()
    }

    /// Where the log starts: retention deleted the segments before.
    pub fn log_start(&self) -> LogPosition {
        self.state.borrow().log.start()
    }

    pub fn log_ends(&self) -> (LogPosition, LogPosition, LogPosition) {
        let state = self.state.borrow();
        (
            state.log.append_end(),
            state.log.written_end(),
            state.log.durable_end(),
        )
    }

    pub fn disk_usage_ratio(&self) -> f64 {
        self.disk_usage_ratio.get()
    }

    /// Pending delayed records by topic, partition and due minute (its first
    /// epoch millisecond), in no particular order: what `sluice delays`
    /// shows through the metrics.
    pub fn pending_delays(&self) -> Vec<PendingDelays> {
        let state = self.state.borrow();
        state
            .timer
            .index
            .pending_by_due_minute()
            .filter_map(|(partition, due_minute_ms, records)| {
                let meta = &state.partitions.get(&partition)?.meta;
                Some(PendingDelays {
                    topic: meta.topic.clone(),
                    partition: meta.index,
                    due_minute_ms,
                    records,
                })
            })
            .collect()
    }

    pub fn gauges(&self) -> StoreGauges {
        let state = self.state.borrow();
        let log = &state.log;
        StoreGauges {
            partitions: state.partitions.len(),
            segments: log.segments().len(),
            log_bytes: log.append_end().0 - log.start().0,
            unflushed_bytes: log.append_end().0 - log.durable_end().0,
            tail_cache_bytes: log.tail_cache_bytes(),
            io_inflight: log.io_inflight(),
            stats: log.stats(),
            delayed_records: state.timer.index.pending(),
            delayed_bytes: state.timer.index.pending_bytes(),
            oldest_due_ms: state.timer.index.oldest_due(),
        }
    }
}

// Partitions.
impl ShardStore {
    /// Delete a partition's queue and metadata. Its frames stay in the
    /// commit log, unreferenced, until retention removes their segments.
    pub fn delete_partition(&self, id: PartitionId) -> Result<(), PartitionError> {
        let mut state = self.state.borrow_mut();
        let partition = state
            .partitions
            .remove(&id)
            .ok_or(PartitionError::Unknown(id))?;
        state
            .names
            .remove(&(partition.meta.topic.clone(), partition.meta.index));
        state.compaction.forget(id);
        let dir = partition.dir.clone();
        partition.queue.destroy()?;
        let io_error = |source| PartitionError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::remove_dir_all(&dir).map_err(io_error)?;
        segment::sync_dir(&self.layout.partitions_dir()).map_err(io_error)?;
        Ok(())
    }

    pub fn partition_id(&self, topic: &str, index: u32) -> Option<PartitionId> {
        self.state
            .borrow()
            .names
            .get(&(topic.to_owned(), index))
            .copied()
    }

    /// (topic, index, id) of every partition on this shard.
    pub fn partitions(&self) -> Vec<(String, u32, PartitionId)> {
        let state = self.state.borrow();
        let mut all: Vec<_> = state
            .partitions
            .values()
            .map(|partition| {
                (
                    partition.meta.topic.clone(),
                    partition.meta.index,
                    partition.id(),
                )
            })
            .collect();
        all.sort();
        all
    }

    pub fn set_partition_config(
        &self,
        id: PartitionId,
        config: PartitionConfig,
    ) -> Result<(), PartitionError> {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let partition = state
            .partitions
            .get_mut(&id)
            .ok_or(PartitionError::Unknown(id))?;
        // A `segment.ms` lowered later applies to the active segment too
        // when it holds this partition's frames (found by a breaker trial:
        // only the value at append time counted, so an active segment
        // written under the 7-day default kept its data that long).
        let active_base = state.log.segments().next_back().map(|segment| segment.base);
        if partition
            .queue
            .last()
            .zip(active_base)
            .is_some_and(|(last, base)| last.position >= base)
        {
            state.log.note_segment_ms(config.segment_ms);
        }
        partition.config = config;
        Ok(())
    }

    /// Move partition `id`'s log start forward to `offset` (never back, never
    /// past the next offset): what is below it is no longer readable and no
    /// longer keeps segments alive. The checkpoint remembers it.
    pub fn advance_log_start(&self, id: PartitionId, offset: Offset) -> Result<(), PartitionError> {
        let mut state = self.state.borrow_mut();
        let partition = state
            .partitions
            .get_mut(&id)
            .ok_or(PartitionError::Unknown(id))?;
        partition.advance_log_start(offset)?;
        Ok(())
    }

    /// (topic, index, high watermark − last stable offset) of every
    /// partition whose last stable offset is below its high watermark.
    pub fn unstable_partitions(&self) -> Vec<(String, u32, i64)> {
        let state = self.state.borrow();
        state
            .partitions
            .values()
            .filter_map(|partition| {
                let lag = partition.high_watermark.0 - partition.last_stable_offset().0;
                (lag > 0).then(|| (partition.meta.topic.clone(), partition.meta.index, lag))
            })
            .collect()
    }

    /// The producers with state on partition `id` (DescribeProducers);
    /// `None` for an unknown partition.
    pub fn producers(
        &self,
        id: PartitionId,
    ) -> Option<Vec<super::producer_state::ProducerSummary>> {
        let state = self.state.borrow();
        state
            .partitions
            .get(&id)
            .map(|partition| partition.producers.summaries())
    }

    /// The largest producer id in any partition's producer state on this
    /// shard (what recovery rebuilt from the log, plus what was appended
    /// since), or `None` when no idempotent producer wrote here.
    pub fn largest_producer_id(&self) -> Option<i64> {
        let state = self.state.borrow();
        state
            .partitions
            .values()
            .flat_map(|partition| partition.producers.entries().map(|(id, _)| id))
            .max()
    }

    /// One slice of the count of partition `id`'s stored bytes (see
    /// [`Partition::stored_bytes_step`]); `None` for an unknown partition.
    pub fn stored_bytes_step(
        &self,
        id: PartitionId,
        from: Option<u64>,
        entries_max: u64,
    ) -> Option<Result<StoredBytesStep, QueueError>> {
        let state = self.state.borrow();
        let partition = state.partitions.get(&id)?;
        Some(partition.stored_bytes_step(from, entries_max))
    }

    /// This shard's directory (`<data_dir>/shard-<n>`).
    pub fn root_dir(&self) -> &Path {
        self.layout.root()
    }

    /// How many consume-queue reservations partition `id`'s appends made on
    /// the shard thread because none made ahead, off it, covered them
    /// (its files' creation included); see `flusher.rs`.
    pub fn queue_reserved_in_line(&self, id: PartitionId) -> Option<u64> {
        let state = self.state.borrow();
        Some(state.partitions.get(&id)?.queue.reserved_in_line())
    }

    pub fn offsets(&self, id: PartitionId) -> Option<PartitionOffsets> {
        let state = self.state.borrow();
        state.partitions.get(&id).map(|partition| PartitionOffsets {
            log_start_offset: partition.log_start_offset,
            high_watermark: partition.high_watermark,
            last_stable_offset: partition.last_stable_offset(),
            next_offset: partition.next_offset,
        })
    }
}

// Shutdown.
impl ShardStore {
    /// Refuse new appends, make everything durable, write a checkpoint and
    /// stop the store's tasks.
    pub async fn shutdown(&self) -> Result<(), AppendError> {
        self.stopping.set(true);
        let tasks: Vec<_> = self.tasks.borrow_mut().drain(..).collect();
        for task in tasks {
            task.cancel().await;
        }
        let synced = self.sync().await;
        self.flusher_stop.set(true);
        self.flush_kick.notify();
        let flusher = self.flusher.borrow_mut().take();
        if let Some(flusher) = flusher {
            let _ = flusher.await;
        }
        if let Err(error) = self.checkpoint().await {
            tracing::error!(%error, "final checkpoint failed; the next start scans further back");
        }
        // What is left of deleted segments goes without pauses now.
        self.unlinker.set_hurry(true);
        self.segment_files_removed().await;
        synced
    }
}

impl StoreState {
    /// Record an append of partition `partition` ending at `end`, after
    /// which the partition's next offset is `next_offset`: visible once
    /// written (and below the visible limit), forgotten once durable.
    pub(super) fn push_pending(
        &mut self,
        partition: PartitionId,
        end: LogPosition,
        next_offset: Offset,
    ) {
        assert!(
            self.pending.back().is_none_or(|last| last.end < end.0),
            "pending appends are in log order"
        );
        if !self
            .partitions
            .get(&partition)
            .is_some_and(|partition| partition.config.copies_forward)
        {
            self.last_frame_not_copied_forward = end;
        }
        self.pending.push_back(PendingAppend {
            end: end.0,
            partition,
            next_offset,
        });
    }
}

/// Advance high watermarks for written appends (below the visible limit)
/// and forget durable visible ones.
pub(super) fn publish(state: &mut StoreState) {
    let written = state.log.written_end().0.min(state.visible_limit);
    while let Some(pending) = state.pending.get(state.visible).copied() {
        if pending.end > written {
            break;
        }
        if let Some(partition) = state.partitions.get_mut(&pending.partition) {
            partition.high_watermark = partition.high_watermark.max(pending.next_offset);
            partition.producers.stabilize(partition.high_watermark);
            assert!(
                partition.log_start_offset <= partition.high_watermark
                    && partition.high_watermark <= partition.next_offset,
                "{}: log start {} <= high watermark {} <= next offset {}",
                partition.id(),
                partition.log_start_offset,
                partition.high_watermark,
                partition.next_offset
            );
        }
        state.visible += 1;
    }
    assert!(state.visible <= state.pending.len());
    let durable = state.log.durable_end().0;
    while let Some(pending) = state.pending.front().copied() {
        // Durable but held back by the visible limit: kept until visible.
        if pending.end > durable || state.visible == 0 {
            break;
        }
        assert!(
            state.durable_frame_end.0 <= pending.end,
            "the durable frame end never moves back"
        );
        state.durable_frame_end = LogPosition(pending.end);
        state.pending.pop_front();
        state.visible -= 1;
    }
}

/// How far past damage recovery looks for valid frames: everything that may
/// have been in flight at a crash (every write buffer), with margin.
fn resync_window_bytes(storage: &StorageConfig) -> u64 {
    let in_flight = u64::from(storage.flush_bytes) * u64::from(storage.write_buffers + 1);
    in_flight.max(16 * 1024 * 1024)
}
