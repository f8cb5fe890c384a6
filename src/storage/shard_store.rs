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
use std::future::poll_fn;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use compio::runtime::fd::PollFd;
use thiserror::Error;

use super::checkpoint::{Checkpoint, CheckpointError, PartitionCheckpoint};
use super::commit_log::{CommitLog, LogAppendError, LogOptions, LogStats};
use super::consume_queue::QueueError;
use super::disk_usage::{DiskUsageProbe, statvfs_probe};
use super::durable_file::write_atomic;
use super::frame::{FRAME_HEADER_BYTES, FRAME_PREFIX_BYTES, FrameHeader};
use super::layout::ShardLayout;
use super::partition::{META_FILE, Partition, PartitionConfig, PartitionMeta, validate_topic_name};
use super::recovery::{RecoveryError, RecoveryOptions, RecoveryReport, recover};
use super::retention::{self, DiskPressure};
use super::segment::{self, SegmentError};
use crate::config::{RetentionConfig, StorageConfig};
use crate::ids::{LogPosition, Offset, PartitionId, ShardId};
use crate::io::{EventFd, IoBackend, LogIo, LogIoError, new_log_io};
use crate::record_batch::{self, ValidatedBatch};
use crate::shard::local_sync::{Event, FifoGate, Notify, yield_now};

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
    end: LogPosition,
    durability: Durability,
}

#[derive(Debug, Error)]
pub enum AppendError {
    #[error("{0} does not exist on this shard")]
    UnknownPartition(PartitionId),
    #[error("{shard}: {source}")]
    Poisoned {
        shard: ShardId,
        #[source]
        source: Arc<LogIoError>,
    },
    #[error(
        "disk usage {usage_percent:.1}% is above disk_reject_ratio ({limit_percent:.0}%): appends \
         are refused until retention frees space (retriable)"
    )]
    DiskFull {
        usage_percent: f64,
        limit_percent: f64,
    },
    #[error("batch of {size} bytes exceeds storage.message_max_bytes ({limit})")]
    BatchTooLarge { size: usize, limit: u32 },
    #[error("storage error (retriable): {0}")]
    Storage(String),
    #[error("the shard is shutting down")]
    ShuttingDown,
}

impl AppendError {
    /// Whether the producer may retry the same batch (Kafka: retriable error).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            AppendError::DiskFull { .. } | AppendError::Storage(_) | AppendError::ShuttingDown
        )
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("{0} does not exist on this shard")]
    UnknownPartition(PartitionId),
    #[error("offset {requested} is outside the partition's range {log_start}..={high_watermark}")]
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        high_watermark: Offset,
    },
}

#[derive(Debug, Error)]
pub enum PartitionError {
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: String },
    #[error("partition {topic}-{index} already exists as {id}")]
    AlreadyExists {
        topic: String,
        index: u32,
        id: PartitionId,
    },
    #[error("{0} does not exist on this shard")]
    Unknown(PartitionId),
    #[error("cannot create or delete partition files in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

#[derive(Debug, Error)]
pub enum OpenError {
    #[error("recovery of {shard} failed: {source}")]
    Recovery {
        shard: ShardId,
        #[source]
        source: RecoveryError,
    },
    #[error("cannot open the commit log of {shard}: {source}")]
    Log {
        shard: ShardId,
        #[source]
        source: SegmentError,
    },
    #[error("cannot start commit-log I/O for {shard}: {source}")]
    Io {
        shard: ShardId,
        #[source]
        source: std::io::Error,
    },
}

/// One batch's bytes in a segment file: what fetch sends.
#[derive(Clone, Debug)]
pub struct ReadSpan {
    pub file: Arc<File>,
    pub file_offset: u64,
    pub len: u32,
    pub base_offset: Offset,
    pub last_offset: Offset,
}

#[derive(Clone, Debug)]
pub struct ReadResult {
    pub spans: Vec<ReadSpan>,
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
    pub next_offset: Offset,
}

#[derive(Clone, Copy, Debug)]
struct PendingAppend {
    end: u64,
    partition: PartitionId,
    next_offset: Offset,
}

struct StoreState {
    log: CommitLog,
    partitions: HashMap<PartitionId, Partition>,
    names: HashMap<(String, u32), PartitionId>,
    /// Appends not yet durable, in log order; the first `visible` are written.
    pending: VecDeque<PendingAppend>,
    visible: usize,
    /// The last frame end at or below the durable end: checkpoints start here.
    durable_frame_end: LogPosition,
    next_partition_id: u32,
}

pub struct ShardStore {
    options: StoreOptions,
    layout: ShardLayout,
    state: RefCell<StoreState>,
    flush_kick: Notify,
    /// Signalled when a watermark advances or the log is poisoned.
    progress: Event,
    buffer_space: FifoGate,
    disk_probe: DiskUsageProbe,
    disk_pressure: Cell<DiskPressure>,
    disk_usage_ratio: Cell<f64>,
    stopping: Cell<bool>,
    flusher_stop: Cell<bool>,
    checkpoint_sequence: Cell<u64>,
    checkpoint_writer: Arc<std::sync::Mutex<CheckpointWriter>>,
    recovery: RecoveryReport,
    tasks: RefCell<Vec<compio::runtime::JoinHandle<()>>>,
    flusher: RefCell<Option<compio::runtime::JoinHandle<()>>>,
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
        let recovery_options = RecoveryOptions {
            layout: layout.clone(),
            write_mode: storage.write_mode,
            entries_per_file: storage.consume_queue_entries_per_file,
            payload_len_max: storage.segment_bytes - FRAME_HEADER_BYTES as u64,
            resync_window_bytes: resync_window_bytes(storage),
        };
        let default_config = PartitionConfig::from_defaults(&options.retention);
        let recovered = recover(&recovery_options, default_config)
            .map_err(|source| OpenError::Recovery { shard, source })?;
        let io = match hooks.log_io {
            Some(io) => io,
            None => new_log_io(
                options.backend,
                storage.inflight_writes_max + super::commit_log::LOG_SYNCS_INFLIGHT_MAX,
                &shard.to_string(),
            )
            .map_err(|source| OpenError::Io { shard, source })?,
        };
        let log_options = LogOptions {
            dir: layout.log_dir(),
            write_mode: storage.write_mode,
            segment_bytes: storage.segment_bytes,
            chunk_bytes: storage.flush_bytes as usize,
            write_buffers: storage.write_buffers as usize,
            inflight_writes_max: storage.inflight_writes_max as usize,
            flush_interval: Duration::from_millis(storage.flush_interval_ms),
        };
        let log = CommitLog::open(log_options, recovered.segments, recovered.end, io)
            .map_err(|source| OpenError::Log { shard, source })?;
        let log_start = log.start();
        let mut partitions = HashMap::new();
        let mut names = HashMap::new();
        for mut partition in recovered.partitions {
            let first_on_disk = retention::first_offset_at_or_after(&partition, log_start);
            if let Err(error) = partition.advance_log_start(first_on_disk) {
                tracing::warn!(%error, "cannot drop consume-queue files below the log start");
            }
            names.insert(
                (partition.meta.topic.clone(), partition.meta.index),
                partition.id(),
            );
            partitions.insert(partition.id(), partition);
        }
        let state = StoreState {
            durable_frame_end: recovered.end,
            log,
            partitions,
            names,
            pending: VecDeque::new(),
            visible: 0,
            next_partition_id: recovered.next_partition_id,
        };
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
            flusher_stop: Cell::new(false),
            checkpoint_sequence: Cell::new(0),
            checkpoint_writer: Arc::default(),
            recovery: recovered.report,
            tasks: RefCell::new(Vec::new()),
            flusher: RefCell::new(None),
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
}

// Partitions.
impl ShardStore {
    /// Create a partition's files (durably) and start indexing it.
    pub fn create_partition(
        &self,
        topic: &str,
        index: u32,
        config: PartitionConfig,
    ) -> Result<PartitionId, PartitionError> {
        validate_topic_name(topic).map_err(|reason| PartitionError::InvalidTopic {
            topic: topic.to_owned(),
            reason,
        })?;
        let mut state = self.state.borrow_mut();
        if let Some(&id) = state.names.get(&(topic.to_owned(), index)) {
            return Err(PartitionError::AlreadyExists {
                topic: topic.to_owned(),
                index,
                id,
            });
        }
        let id = PartitionId(state.next_partition_id);
        let ids_file = self.layout.partition_ids_file();
        write_atomic(&ids_file, format!("{}\n", id.0 + 1).as_bytes()).map_err(|source| {
            PartitionError::Io {
                path: ids_file.clone(),
                source,
            }
        })?;
        state.next_partition_id = id.0 + 1;
        let meta = PartitionMeta {
            id,
            topic: topic.to_owned(),
            index,
        };
        let dir = self.layout.partition_dir(id);
        let io_error = |source| PartitionError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io_error)?;
        segment::sync_dir(&self.layout.partitions_dir()).map_err(io_error)?;
        write_atomic(&dir.join(META_FILE), &meta.encode()).map_err(io_error)?;
        let queue = super::consume_queue::ConsumeQueue::open(
            &dir,
            self.options.storage.consume_queue_entries_per_file,
            0,
        )?;
        let partition = Partition::new(meta, config, dir, queue, None);
        state.names.insert((topic.to_owned(), index), id);
        state.partitions.insert(id, partition);
        Ok(id)
    }

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
        let mut state = self.state.borrow_mut();
        let partition = state
            .partitions
            .get_mut(&id)
            .ok_or(PartitionError::Unknown(id))?;
        partition.config = config;
        Ok(())
    }

    pub fn offsets(&self, id: PartitionId) -> Option<PartitionOffsets> {
        let state = self.state.borrow();
        state.partitions.get(&id).map(|partition| PartitionOffsets {
            log_start_offset: partition.log_start_offset,
            high_watermark: partition.high_watermark,
            next_offset: partition.next_offset,
        })
    }
}

// The write path.
impl ShardStore {
    /// Append `batch` to partition `id`. Returns once buffered, with offsets
    /// assigned; waits (in arrival order) while write buffers are full.
    pub async fn append(
        &self,
        id: PartitionId,
        batch: ValidatedBatch<'_>,
        durability: Durability,
    ) -> Result<AppendReceipt, AppendError> {
        let mut ticket = None;
        loop {
            if ticket.is_none() && !self.buffer_space.is_empty() {
                ticket = Some(self.buffer_space.enqueue());
            }
            if let Some(ticket) = &ticket
                && !ticket.is_front()
            {
                ticket.changed().await;
                continue;
            }
            match self.try_append(id, &batch, durability, Instant::now()) {
                Err(TryAppendError::NoBufferSpace) => {
                    let ticket = ticket.get_or_insert_with(|| self.buffer_space.enqueue());
                    self.flush_kick.notify();
                    ticket.changed().await;
                }
                Err(TryAppendError::Fatal(error)) => return Err(error),
                Ok(receipt) => return Ok(receipt),
            }
        }
    }

    fn try_append(
        &self,
        id: PartitionId,
        batch: &ValidatedBatch<'_>,
        durability: Durability,
        now: Instant,
    ) -> Result<AppendReceipt, TryAppendError> {
        if self.stopping.get() {
            return Err(AppendError::ShuttingDown.into());
        }
        let limit = self.options.storage.message_max_bytes;
        if batch.len() > limit as usize {
            return Err(AppendError::BatchTooLarge {
                size: batch.len(),
                limit,
            }
            .into());
        }
        if self.disk_pressure.get() == DiskPressure::Reject {
            return Err(AppendError::DiskFull {
                usage_percent: self.disk_usage_ratio.get() * 100.0,
                limit_percent: self.options.retention.disk_reject_ratio * 100.0,
            }
            .into());
        }
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let partition = state
            .partitions
            .get_mut(&id)
            .ok_or(AppendError::UnknownPartition(id))?;
        let bytes = batch.bytes();
        let header = *batch.header();
        let base_offset = partition.next_offset;
        let mut frame_prefix = [0u8; FRAME_PREFIX_BYTES];
        let mut batch_prefix = [0u8; super::frame::COVERED_PAYLOAD_PREFIX_BYTES];
        let prefix_len = batch_prefix.len();
        batch_prefix.copy_from_slice(&bytes[..prefix_len]);
        record_batch::assign_broker_fields(&mut batch_prefix, base_offset.0, LEADER_EPOCH);
        let frame = FrameHeader {
            payload_len: u32::try_from(bytes.len()).expect("batch validated against a u32 limit"),
            partition: id,
        };
        frame.encode_prefix(&batch_prefix, &mut frame_prefix);
        let durable_by = match durability {
            Durability::Fsynced => Some(now),
            Durability::Buffered | Durability::Written => {
                now.checked_add(Duration::from_millis(partition.config.flush_ms))
            }
        };
        partition
            .queue
            .reserve_next()
            .map_err(|error| AppendError::Storage(error.to_string()))?;
        let rest = &bytes[batch_prefix.len()..];
        let position = state
            .log
            .append_frame(&[&frame_prefix, rest], durable_by, now)
            .map_err(|error| self.classify_log_error(error))?;
        partition
            .index_batch(
                position,
                frame.payload_len,
                header.last_offset_delta as u32,
                header.max_timestamp_ms,
            )
            .expect("queue room was reserved");
        let end = position.plus(frame.frame_len());
        state.pending.push_back(PendingAppend {
            end: end.0,
            partition: id,
            next_offset: partition.next_offset,
        });
        drop(guard);
        self.flush_kick.notify();
        Ok(AppendReceipt {
            base_offset,
            last_offset: Offset(base_offset.0 + i64::from(header.last_offset_delta)),
            position,
            end,
            durability,
        })
    }

    fn classify_log_error(&self, error: LogAppendError) -> TryAppendError {
        match error {
            LogAppendError::NoBufferSpace { .. } => TryAppendError::NoBufferSpace,
            LogAppendError::Poisoned(source) => TryAppendError::Fatal(AppendError::Poisoned {
                shard: self.options.shard,
                source,
            }),
            LogAppendError::Roll(error) => {
                TryAppendError::Fatal(AppendError::Storage(error.to_string()))
            }
        }
    }

    /// Wait until the append reached the durability it asked for.
    pub async fn wait(&self, receipt: &AppendReceipt) -> Result<(), AppendError> {
        loop {
            let progress = {
                let state = self.state.borrow();
                if let Some(source) = state.log.poisoned() {
                    return Err(AppendError::Poisoned {
                        shard: self.options.shard,
                        source: Arc::clone(source),
                    });
                }
                let reached = match receipt.durability {
                    Durability::Buffered => true,
                    Durability::Written => state.log.written_end() >= receipt.end,
                    Durability::Fsynced => state.log.durable_end() >= receipt.end,
                };
                if reached {
                    return Ok(());
                }
                self.progress.wait()
            };
            progress.await;
        }
    }

    /// Make everything appended so far durable, then return.
    pub async fn sync(&self) -> Result<(), AppendError> {
        let end = {
            let mut state = self.state.borrow_mut();
            state.log.require_durable_now(Instant::now());
            state.log.append_end()
        };
        self.flush_kick.notify();
        let receipt = AppendReceipt {
            base_offset: Offset(0),
            last_offset: Offset(0),
            position: end,
            end,
            durability: Durability::Fsynced,
        };
        self.wait(&receipt).await
    }
}

enum TryAppendError {
    NoBufferSpace,
    Fatal(AppendError),
}

impl From<AppendError> for TryAppendError {
    fn from(error: AppendError) -> Self {
        TryAppendError::Fatal(error)
    }
}

// The read path.
impl ShardStore {
    /// Batches of partition `id` from the one holding `offset`, up to
    /// `max_bytes` (at least one batch if any is available, as Kafka requires).
    pub fn read(
        &self,
        id: PartitionId,
        offset: Offset,
        max_bytes: u64,
    ) -> Result<ReadResult, ReadError> {
        let state = self.state.borrow();
        let partition = state
            .partitions
            .get(&id)
            .ok_or(ReadError::UnknownPartition(id))?;
        if offset < partition.log_start_offset || offset > partition.high_watermark {
            return Err(ReadError::OffsetOutOfRange {
                requested: offset,
                log_start: partition.log_start_offset,
                high_watermark: partition.high_watermark,
            });
        }
        let mut spans = Vec::new();
        let mut bytes = 0u64;
        let mut index = partition.queue.search_offset(offset);
        while let Some(entry) = partition.queue.get(index) {
            if entry.base_offset >= partition.high_watermark {
                break;
            }
            let len = u64::from(entry.batch_len);
            if !spans.is_empty() && bytes + len > max_bytes {
                break;
            }
            let Some(segment) = state.log.segment_at(entry.position) else {
                break;
            };
            let batch_at = entry.position.plus(FRAME_HEADER_BYTES as u64);
            spans.push(ReadSpan {
                file: Arc::clone(&segment.reader),
                file_offset: segment.file_offset(batch_at),
                len: entry.batch_len,
                base_offset: entry.base_offset,
                last_offset: entry.last_offset(),
            });
            bytes += len;
            index += 1;
        }
        Ok(ReadResult {
            spans,
            log_start_offset: partition.log_start_offset,
            high_watermark: partition.high_watermark,
        })
    }

    /// The first batch whose records may have a timestamp >= `timestamp_ms`:
    /// (its base offset, the running max timestamp). `None` if no written
    /// batch qualifies.
    pub fn offset_for_timestamp(
        &self,
        id: PartitionId,
        timestamp_ms: i64,
    ) -> Result<Option<(Offset, i64)>, ReadError> {
        let state = self.state.borrow();
        let partition = state
            .partitions
            .get(&id)
            .ok_or(ReadError::UnknownPartition(id))?;
        let queue = &partition.queue;
        let index = queue
            .search_timestamp(timestamp_ms)
            .max(queue.search_offset(partition.log_start_offset));
        Ok(queue
            .get(index)
            .filter(|entry| entry.base_offset < partition.high_watermark)
            .map(|entry| {
                (
                    entry.base_offset.max(partition.log_start_offset),
                    entry.max_timestamp_ms,
                )
            }))
    }

    /// Wait until partition `id`'s high watermark passes `offset`, or a
    /// watermark moves (callers re-check; long-polling fetch builds on this).
    pub async fn wait_for_progress(&self) {
        self.progress.wait().await;
    }
}

/// Read a span's bytes (tests and non-zero-copy paths).
pub fn read_span(span: &ReadSpan) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; span.len as usize];
    span.file.read_exact_at(&mut bytes, span.file_offset)?;
    Ok(bytes)
}

// Background tasks.
impl ShardStore {
    async fn run_flusher(self: Rc<Self>) {
        let ready_fd = self.state.borrow().log.ready_fd().clone();
        let ready = match PollFd::new(ready_fd.clone()) {
            Ok(ready) => ready,
            Err(error) => {
                tracing::error!(%error, shard = %self.options.shard, "cannot watch commit-log completions");
                return;
            }
        };
        while !self.flusher_stop.get() {
            let deadline = self.state.borrow().log.next_deadline(Instant::now());
            if wait_any(&self.flush_kick, &ready, deadline).await == Wake::Completions {
                ready_fd.drain();
            }
            self.reap();
            self.state
                .borrow_mut()
                .log
                .submit_full_chunks(Instant::now());
            // Let other ready tasks run first so their appends share this write.
            let appended = self.stats().frames_appended;
            yield_now().await;
            self.reap();
            let idle = self.stats().frames_appended == appended;
            self.state.borrow_mut().log.flush(Instant::now(), idle);
            if !idle {
                self.flush_kick.notify();
            }
        }
    }

    /// Collect finished writes, publish watermarks, wake waiters.
    fn reap(&self) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let free_before = state.log.io_inflight();
        let advanced = state.log.reap();
        let freed = state.log.io_inflight() < free_before;
        if advanced {
            publish(state);
        }
        drop(guard);
        if advanced {
            self.progress.notify_all();
        }
        if freed {
            self.buffer_space.resource_freed();
        }
    }

    async fn run_checkpointer(self: Rc<Self>) {
        let interval = Duration::from_millis(self.options.storage.checkpoint_interval_ms);
        loop {
            compio::time::sleep(interval).await;
            if let Err(error) = self.checkpoint().await {
                tracing::error!(%error, shard = %self.options.shard, "checkpoint failed; recovery will scan further back");
            }
        }
    }

    /// Fsync the consume-queue files touched since the last checkpoint, then
    /// record how far the log and the queues are durable.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        let (checkpoint, dirty_files) = self.checkpoint_snapshot();
        let sequence = self.checkpoint_sequence.get() + 1;
        self.checkpoint_sequence.set(sequence);
        let writer = Arc::clone(&self.checkpoint_writer);
        writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending
            .extend(dirty_files);
        let root = self.layout.root().to_owned();
        // The blocking side serialises checkpoints and owns the queue files
        // still to fsync, so a cancelled checkpoint (whose closure may run
        // late or never) can neither race the next one nor leave files
        // unsynced that a later checkpoint vouches for.
        let result = compio::runtime::spawn_blocking(move || {
            let mut writer = writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            writer.write(sequence, &checkpoint, &root)
        })
        .await;
        match result {
            Ok(result) => result,
            Err(error) => {
                error.resume_unwind();
                Err(CheckpointError::Io {
                    path: self.layout.root().to_owned(),
                    source: std::io::Error::other("the checkpoint task was cancelled"),
                })
            }
        }
    }

    fn checkpoint_snapshot(&self) -> (Checkpoint, Vec<Arc<File>>) {
        let mut state = self.state.borrow_mut();
        let indexed = state.durable_frame_end;
        let mut dirty_files = Vec::new();
        let mut partitions = Vec::with_capacity(state.partitions.len());
        for partition in state.partitions.values_mut() {
            let queue_entries = partition.queue.count_below(indexed);
            let next_offset = queue_entries
                .checked_sub(1)
                .and_then(|last| partition.queue.get(last))
                .map_or(partition.log_start_offset, |entry| entry.next_offset());
            partitions.push(PartitionCheckpoint {
                id: partition.id(),
                log_start_offset: partition.log_start_offset,
                next_offset,
                queue_entries,
            });
            dirty_files.extend(partition.queue.take_dirty_files());
        }
        partitions.sort_by_key(|partition| partition.id);
        let checkpoint = Checkpoint {
            indexed_position: indexed,
            partitions,
        };
        (checkpoint, dirty_files)
    }

    async fn run_retention(self: Rc<Self>) {
        let retention = self.options.retention.clone();
        let mut last_run = Instant::now();
        loop {
            compio::time::sleep(Duration::from_millis(retention.disk_check_interval_ms)).await;
            let pressure = self.check_disk();
            let due = last_run.elapsed() >= Duration::from_millis(retention.check_interval_ms);
            if due || pressure >= DiskPressure::Clean {
                self.enforce_retention(segment::now_ms());
                last_run = Instant::now();
            }
        }
    }

    /// Sample disk usage and update the guard state; returns the pressure.
    pub fn check_disk(&self) -> DiskPressure {
        let ratio = match (self.disk_probe)() {
            Ok(ratio) => ratio,
            Err(error) => {
                tracing::warn!(%error, "cannot read disk usage; keeping the previous value");
                self.disk_usage_ratio.get()
            }
        };
        let pressure = DiskPressure::from_ratio(ratio, &self.options.retention);
        let previous = self.disk_pressure.replace(pressure);
        self.disk_usage_ratio.set(ratio);
        if pressure != previous {
            let percent = ratio * 100.0;
            match pressure {
                DiskPressure::Reject => tracing::error!(
                    percent,
                    "disk nearly full: refusing appends until usage drops"
                ),
                DiskPressure::ForceClean => tracing::warn!(
                    percent,
                    "disk usage high: deleting oldest segments even if not expired"
                ),
                DiskPressure::Clean => tracing::warn!(
                    percent,
                    "disk usage above clean threshold: deleting expired segments now"
                ),
                DiskPressure::Normal => tracing::info!(percent, "disk usage back to normal"),
            }
        }
        pressure
    }

    /// Apply retention now: per-partition log starts, then whole segments,
    /// then (under force pressure) the oldest segments regardless.
    pub fn enforce_retention(&self, now_ms: u64) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let ages: Vec<_> = state
            .log
            .segments()
            .map(|segment| (segment.base, segment.end(), segment.last_write_ms()))
            .collect();
        for partition in state.partitions.values_mut() {
            let start = retention::retained_start(partition, &ages, now_ms);
            advance_log_start(partition, start);
        }
        let needed = retention::lowest_needed_position(&mut state.partitions.values());
        let needed = needed.unwrap_or(state.log.written_end());
        while state.log.segments().len() > 1
            && state
                .log
                .segments()
                .next()
                .is_some_and(|oldest| oldest.end() <= needed)
        {
            delete_oldest_segment(state, "retention");
        }
        drop(guard);
        while self.disk_pressure.get() >= DiskPressure::ForceClean {
            let mut state = self.state.borrow_mut();
            if state.log.segments().len() < 2 {
                break;
            }
            delete_oldest_segment(&mut state, "disk usage above disk_force_clean_ratio");
            drop(state);
            self.check_disk();
        }
        // Deleted ranges count as written and durable: publish, wake waiters,
        // and let the flusher recompute its deadlines.
        publish(&mut self.state.borrow_mut());
        self.progress.notify_all();
        self.flush_kick.notify();
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
        synced
    }
}

/// The blocking half of checkpointing: queue files waiting for an fsync and
/// the newest checkpoint written. Held under a mutex by one checkpoint at a time.
#[derive(Default)]
struct CheckpointWriter {
    pending: Vec<Arc<File>>,
    written_sequence: u64,
    /// The last checkpoint stored: an idle shard does not rewrite it.
    written: Option<Checkpoint>,
}

impl CheckpointWriter {
    fn write(
        &mut self,
        sequence: u64,
        checkpoint: &Checkpoint,
        root: &std::path::Path,
    ) -> Result<(), CheckpointError> {
        if sequence <= self.written_sequence {
            return Ok(()); // a newer checkpoint is already on disk
        }
        if self.pending.is_empty() && self.written.as_ref() == Some(checkpoint) {
            self.written_sequence = sequence;
            return Ok(()); // nothing changed: no disk write on an idle shard
        }
        for file in &self.pending {
            file.sync_data().map_err(|source| CheckpointError::Io {
                path: root.to_owned(),
                source,
            })?;
        }
        self.pending.clear();
        checkpoint.store(root)?;
        self.written_sequence = sequence;
        self.written = Some(checkpoint.clone());
        Ok(())
    }
}

/// Advance high watermarks for written appends and forget durable ones.
fn publish(state: &mut StoreState) {
    let written = state.log.written_end().0;
    while let Some(pending) = state.pending.get(state.visible).copied() {
        if pending.end > written {
            break;
        }
        if let Some(partition) = state.partitions.get_mut(&pending.partition) {
            partition.high_watermark = partition.high_watermark.max(pending.next_offset);
        }
        state.visible += 1;
    }
    let durable = state.log.durable_end().0;
    while let Some(pending) = state.pending.front().copied() {
        if pending.end > durable {
            break;
        }
        assert!(state.visible > 0, "durable data is always written");
        state.durable_frame_end = LogPosition(pending.end);
        state.pending.pop_front();
        state.visible -= 1;
    }
}

fn advance_log_start(partition: &mut Partition, start: Offset) {
    if start <= partition.log_start_offset {
        return;
    }
    tracing::debug!(topic = %partition.meta.topic, index = partition.meta.index, from = partition.log_start_offset.0, to = start.0, "retention moves log start");
    if let Err(error) = partition.advance_log_start(start) {
        tracing::warn!(%error, "cannot delete expired consume-queue files");
    }
}

fn delete_oldest_segment(state: &mut StoreState, reason: &str) {
    let Some((base, end, result)) = state.log.delete_oldest_segment() else {
        return;
    };
    match result {
        Ok(()) => tracing::info!(
            base = base.0,
            end = end.0,
            reason,
            "deleted commit-log segment"
        ),
        Err(error) => {
            tracing::error!(base = base.0, %error, "cannot delete commit-log segment file")
        }
    }
    for partition in state.partitions.values_mut() {
        let start = retention::first_offset_at_or_after(partition, end);
        advance_log_start(partition, start);
    }
}

/// How far past damage recovery looks for valid frames: everything that may
/// have been in flight at a crash (every write buffer), with margin.
fn resync_window_bytes(storage: &StorageConfig) -> u64 {
    let in_flight = u64::from(storage.flush_bytes) * u64::from(storage.write_buffers + 1);
    in_flight.max(16 * 1024 * 1024)
}

/// Wait for a kick, a completion, or the deadline, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Kick,
    Completions,
    Deadline,
}

async fn wait_any(kick: &Notify, ready: &PollFd<EventFd>, deadline: Option<Instant>) -> Wake {
    let mut sleep = pin!(async move {
        match deadline {
            Some(deadline) => compio::time::sleep_until(deadline).await,
            None => std::future::pending::<()>().await,
        }
    });
    poll_fn(|cx| {
        if kick.poll_notified(cx.waker()).is_ready() {
            return Poll::Ready(Wake::Kick);
        }
        if let Poll::Ready(result) = ready.poll_read_ready(cx) {
            if let Err(error) = result {
                tracing::warn!(%error, "waiting for commit-log completions failed");
            }
            return Poll::Ready(Wake::Completions);
        }
        sleep.as_mut().poll(cx).map(|()| Wake::Deadline)
    })
    .await
}
