//! The log cleaner of a shard: compaction passes for partitions with
//! `cleanup.policy=compact`, and the application of every pass whose commit
//! frames are durable (this node's own, its leader's, or recovery's).
//! Design: ARCHITECTURE.md, "Log compaction".

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::compaction::clean_section::CleanSection;
use super::compaction::collector::CompletePass;
use super::compaction::commit::{self, CommitPart};
use super::compaction::records::Records;
use super::consume_queue::QueueEntry;
use super::frame::{COVERED_PAYLOAD_PREFIX_BYTES, FRAME_PREFIX_BYTES, FrameHeader, FrameKind};
use super::producer_state::AbortedTxn;
use super::shard_store::{AppendReceipt, Durability, ReadBatch, ShardStore};
use super::store_errors::TryAppendError;
use super::store_errors::{AppendError, ReadError};
use crate::ids::{Offset, PartitionId};
use crate::log_throttle::monotonic_ms;
use crate::shard::local_sync::yield_now;

/// A pass still collecting commit parts after this long was cut short (its
/// leader stopped between parts): it is dropped, so that it no longer holds
/// the checkpoint back.
const INCOMPLETE_PASS_MAX_AGE: Duration = Duration::from_secs(60);
/// Batches read per step of a pass.
const READ_STEP_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes a key-map entry is counted as (Kafka's 16-byte hash and 8-byte
/// offset).
const KEY_MAP_ENTRY_BYTES: u64 = 24;
/// Head entries summed exactly when looking at a partition's dirty ratio.
const HEAD_ENTRIES_SUMMED: u64 = 4096;

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum CleanerError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("reading batch bytes: {0}")]
    Bytes(std::io::Error),
    #[error("batch at offset {offset}: {reason}")]
    Batch { offset: Offset, reason: String },
    #[error("writing the clean section: {0}")]
    Section(String),
}

/// What one pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassStats {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub clean_end: Offset,
}

/// What the cleaner knows of a partition before a pass.
struct Plan {
    log_start: Offset,
    clean_end: Offset,
    /// The head's cleanable part ends here.
    cleanable_end: Offset,
    generation: u64,
    delete_retention_ms: i64,
    /// The partition's next offset when the pass was planned.
    partition_end: Offset,
    /// The partition's topic and index, for the log.
    topic: String,
    index: u32,
    /// The aborted transactions among the batches cleaned: their records
    /// are dropped (all cleaned batches are below the last stable offset,
    /// so every transaction among them is decided).
    aborted: Vec<AbortedTxn>,
}

impl ShardStore {
    pub(super) async fn run_cleaner(self: Rc<Self>) {
        let backoff = Duration::from_millis(self.options.storage.cleaner_backoff_ms);
        let mut next_pass = Instant::now() + backoff;
        loop {
            let progress = self.progress.wait();
            self.apply_durable_compactions().await;
            if Instant::now() >= next_pass {
                next_pass = Instant::now() + backoff;
                self.state
                    .borrow_mut()
                    .compaction
                    .abandon_older_than(Instant::now(), INCOMPLETE_PASS_MAX_AGE);
                if !self.is_follower() && !self.stopping.get() {
                    self.clean_due_partitions().await;
                }
            }
            let sleep = compio::time::sleep_until(next_pass);
            futures_util::future::select(Box::pin(progress), Box::pin(sleep)).await;
        }
    }

    /// One pass for every compacted partition that is due.
    async fn clean_due_partitions(&self) {
        let due: Vec<PartitionId> = {
            let state = self.state.borrow();
            state
                .partitions
                .values()
                .filter(|partition| partition.config.compact)
                .map(|partition| partition.id())
                .collect()
        };
        for id in due {
            if self.is_follower() || self.stopping.get() {
                return;
            }
            match self.clean_partition(id, false).await {
                Ok(_) => {}
                Err(error) => {
                    let deleted = {
                        let mut state = self.state.borrow_mut();
                        state.compaction.forget(id);
                        !state.partitions.contains_key(&id)
                    };
                    if deleted {
                        tracing::debug!(shard = %self.options.shard, partition = %id, %error, "a compaction pass ended with its partition, deleted meanwhile");
                    } else if let Some(failed) = self.cleaner_failure_log.record(monotonic_ms()) {
                        let partition = self.partition_label(id);
                        tracing::warn!(shard = %self.options.shard, %partition, %error, failed, "a compaction pass stopped; the partition keeps its previous clean section and is tried again later (`failed` counts failures since the last such line)");
                    }
                }
            }
        }
    }

    /// `topic/index` of partition `id` for log lines (its shard-local id
    /// once the partition is deleted).
    fn partition_label(&self, id: PartitionId) -> String {
        self.state.borrow().partitions.get(&id).map_or_else(
            || id.to_string(),
            |partition| format!("{}/{}", partition.meta.topic, partition.meta.index),
        )
    }

    /// Run one compaction pass over partition `id` if it is due (or at
    /// once with `force`, when anything is cleanable): `None` when nothing
    /// was done. Returns once the new clean section is in use.
    pub async fn clean_partition(
        &self,
        id: PartitionId,
        force: bool,
    ) -> Result<Option<PassStats>, CleanerError> {
        let Some(plan) = self.plan_pass(id, force)? else {
            return Ok(None);
        };
        let started = Instant::now();
        tracing::info!(shard = %self.options.shard, topic = %plan.topic, partition = plan.index, generation = plan.generation, from = plan.log_start.0, cleanable_end = plan.cleanable_end.0, "compacting a partition");
        let mut stats = PassStats {
            bytes_read: 0,
            bytes_written: 0,
            records_removed: 0,
            clean_end: plan.clean_end,
        };
        let mut throttle = Throttle::new(self.options.storage.cleaner_io_max_bytes_per_second);
        let key_limit = self.options.storage.cleaner_dedupe_buffer_bytes / KEY_MAP_ENTRY_BYTES;
        let decompressed_max = u64::from(self.options.storage.batch_ceiling_bytes())
            * u64::from(self.options.storage.decompressed_batch_ratio_max);
        let aborted_txns = Arc::new(plan.aborted.clone());
        // 1. The key map over the cleanable head. Reading, decompressing
        // and hashing run on the blocking pool, never on the shard thread.
        let mut latest = KeyMap::default();
        let mut cleanable_end = plan.cleanable_end;
        let mut offset = plan.clean_end.max(plan.log_start);
        while offset < cleanable_end {
            let batches = self.plan_read(id, offset, cleanable_end)?;
            let Some(last) = batches.last() else {
                break;
            };
            offset = Offset(last.last_offset.0 + 1);
            let aborted_txns = Arc::clone(&aborted_txns);
            let (map, step) = off_shard(move || {
                let mut map = latest;
                let step = map_step(
                    &mut map,
                    batches,
                    &aborted_txns,
                    key_limit,
                    decompressed_max,
                );
                (map, step)
            })
            .await?;
            latest = map;
            let step = step?;
            stats.bytes_read += step.bytes_read;
            throttle.spend(step.bytes_read).await;
            if let Some(full_at) = step.full_at {
                // The map is full: this pass cleans up to there.
                cleanable_end = full_at;
                break;
            }
        }
        if cleanable_end <= plan.clean_end.max(plan.log_start) {
            return Ok(None);
        }
        // 2. Copy the survivors of the clean section and the cleanable head
        // (filtered off the shard thread, appended on it).
        let filter = Arc::new(Filter {
            // The partition's last batch is never dropped while nothing
            // follows it: a consumer reads up to the high watermark, and one
            // at an offset with no stored batch at or after it would wait
            // forever (Kafka never cleans the active segment).
            keep_last_of: if cleanable_end >= plan.partition_end {
                Offset(plan.partition_end.0 - 1)
            } else {
                Offset(i64::MAX)
            },
            latest,
            aborted: plan.aborted.clone(),
            delete_retention_ms: plan.delete_retention_ms,
            now_ms: wall_ms(),
            decompressed_max,
        });
        let mut entries: Vec<QueueEntry> = Vec::new();
        let mut offset = plan.log_start;
        while offset < cleanable_end {
            let batches = self.plan_read(id, offset, cleanable_end)?;
            let Some(last) = batches.last() else {
                break;
            };
            offset = Offset(last.last_offset.0 + 1);
            let filter = Arc::clone(&filter);
            let copies = off_shard(move || filter.step(batches)).await??;
            for copy in copies {
                stats.bytes_read += copy.read;
                stats.records_removed += copy.removed;
                throttle.spend(copy.read).await;
                let Some(bytes) = copy.survivor else {
                    continue;
                };
                throttle.spend(bytes.len() as u64).await;
                let receipt = self
                    .append_compaction_frame(id, FrameKind::CompactionCopy, &bytes)
                    .await?;
                stats.bytes_written += bytes.len() as u64;
                let running_max = entries
                    .last()
                    .map_or(i64::MIN, |entry| entry.max_timestamp_ms);
                entries.push(QueueEntry {
                    base_offset: copy.base_offset,
                    position: receipt.position,
                    batch_len: bytes.len() as u32,
                    last_offset_delta: copy.last_offset_delta,
                    max_timestamp_ms: copy.max_timestamp_ms.max(running_max),
                    attributes: copy.attributes,
                });
            }
            yield_now().await;
        }
        // 3. Commit: the entries, in parts that each fit the log's largest
        // batch; the last one fsynced.
        let per_part = commit::entries_per_part(self.options.storage.batch_ceiling_bytes());
        let parts = entries.chunks(per_part).count().max(1);
        let mut last_receipt = None;
        for index in 0..parts {
            let chunk = entries
                .chunks(per_part)
                .nth(index)
                .map_or(Vec::new(), <[QueueEntry]>::to_vec);
            let part = CommitPart {
                generation: plan.generation,
                clean_end: cleanable_end,
                last: index + 1 == parts,
                index: u16::try_from(index).map_err(|_| {
                    CleanerError::Section(format!(
                        "{} entries need more than 65 536 commit parts",
                        entries.len()
                    ))
                })?,
                entries: chunk,
            };
            let bytes = part.encode(wall_ms());
            last_receipt = Some(
                self.append_compaction_frame(id, FrameKind::CompactionCommit, &bytes)
                    .await?,
            );
        }
        let receipt = last_receipt.expect("at least one commit part");
        self.wait(&receipt).await?;
        self.apply_durable_compactions().await;
        stats.clean_end = cleanable_end;
        self.metrics.compaction_pass(
            stats.bytes_read,
            stats.bytes_written,
            stats.records_removed,
            started.elapsed(),
        );
        tracing::info!(shard = %self.options.shard, topic = %plan.topic, partition = plan.index, generation = plan.generation, clean_end = cleanable_end.0, bytes_read = stats.bytes_read, bytes_written = stats.bytes_written, records_removed = stats.records_removed, elapsed_ms = started.elapsed().as_millis() as u64, "compacted a partition");
        Ok(Some(stats))
    }

    /// Whether partition `id` is due a pass, and what it covers.
    fn plan_pass(&self, id: PartitionId, force: bool) -> Result<Option<Plan>, ReadError> {
        let state = self.state.borrow();
        let Some(partition) = state.partitions.get(&id) else {
            return Ok(None);
        };
        if !partition.config.compact {
            return Ok(None);
        }
        let index_error = |source| ReadError::Index {
            partition: id,
            source,
        };
        let now_ms = wall_ms();
        let limit = partition.high_watermark.min(partition.last_stable_offset());
        let young_from = now_ms.saturating_sub(partition.config.min_compaction_lag_ms.max(0));
        let clean_end = partition.clean_end().max(partition.log_start_offset);
        // Binary searches, so that a long head costs the shard thread
        // microseconds: the head's cleanable entries end before the first
        // one past the limit and before the first younger than the lag
        // (timestamps are a running maximum).
        let queue = &partition.queue;
        let first = queue.search_offset(clean_end).map_err(index_error)?;
        let past_limit = queue.search_offset(limit).map_err(index_error)?;
        // Kafka applies the lag only when it is set: a record stamped in
        // the future must not hold the partition back for good.
        let young = if partition.config.min_compaction_lag_ms > 0 {
            queue
                .search_timestamp(young_from.saturating_add(1))
                .map_err(index_error)?
        } else {
            queue.tail_index()
        };
        let end = past_limit.min(young);
        // The oldest uncleaned batch, cleanable or not (the delay gauge).
        let oldest_dirty_ms = queue
            .get(first)
            .map_err(index_error)?
            .map(|entry| entry.max_timestamp_ms);
        let delay_ms = oldest_dirty_ms.map_or(0, |oldest| now_ms.saturating_sub(oldest).max(0));
        let delay = Duration::from_millis(delay_ms as u64);
        if end <= first {
            let (topic, index) = (&partition.meta.topic, partition.meta.index);
            self.metrics.compaction_state(topic, index, 0.0, delay);
            return Ok(None);
        }
        let Some(last) = queue.get(end - 1).map_err(index_error)? else {
            return Ok(None);
        };
        let cleanable_end = last.next_offset();
        let dirty_bytes = head_bytes(queue, first, end).map_err(index_error)?;
        let clean_bytes = match &partition.clean {
            Some(clean) => clean
                .bytes_from(partition.log_start_offset)
                .map_err(index_error)?,
            None => 0,
        };
        let ratio_ppm = dirty_bytes.saturating_mul(1_000_000) / (dirty_bytes + clean_bytes).max(1);
        let overdue = oldest_dirty_ms.is_some_and(|oldest| {
            oldest < now_ms.saturating_sub(partition.config.max_compaction_lag_ms.max(0))
        });
        self.metrics.compaction_state(
            &partition.meta.topic,
            partition.meta.index,
            ratio_ppm as f64 / 1e6,
            delay,
        );
        if !force
            && ratio_ppm < u64::from(partition.config.min_cleanable_dirty_ratio_ppm)
            && !overdue
        {
            return Ok(None);
        }
        Ok(Some(Plan {
            log_start: partition.log_start_offset,
            clean_end,
            cleanable_end,
            // Past any generation collected for the partition, so that no
            // part a crash or a stopped pass left behind joins this pass.
            generation: partition
                .clean
                .as_ref()
                .map_or(0, |clean| clean.generation)
                .max(state.compaction.newest_generation(id).unwrap_or(0))
                + 1,
            delete_retention_ms: partition.config.delete_retention_ms,
            partition_end: partition.next_offset,
            topic: partition.meta.topic.clone(),
            index: partition.meta.index,
            aborted: partition
                .producers
                .aborted_between(partition.log_start_offset, cleanable_end),
        }))
    }

    /// The batches of `id` from `offset` below `end`, at most
    /// [`READ_STEP_BYTES`] (at least one), as the read path plans them.
    fn plan_read(
        &self,
        id: PartitionId,
        offset: Offset,
        end: Offset,
    ) -> Result<Vec<ReadBatch>, CleanerError> {
        let read = self.read(id, offset, READ_STEP_BYTES)?;
        Ok(read
            .batches
            .into_iter()
            .filter(|batch| batch.base_offset < end)
            .collect())
    }

    /// Append a compaction frame of `kind` for partition `id` holding
    /// `batch` as it is (its offsets are the original's): not indexed, not
    /// a producer's batch. A commit part is collected for the apply and
    /// asked to be durable at once.
    async fn append_compaction_frame(
        &self,
        id: PartitionId,
        kind: FrameKind,
        batch: &[u8],
    ) -> Result<AppendReceipt, AppendError> {
        self.in_buffer_order(|| match self.try_append_compaction(id, kind, batch) {
            Ok(receipt) => Ok(receipt),
            Err(TryAppendError::NoBufferSpace) => Err(None),
            Err(TryAppendError::Fatal(error)) => Err(Some(error)),
        })
        .await
    }

    fn try_append_compaction(
        &self,
        id: PartitionId,
        kind: FrameKind,
        batch: &[u8],
    ) -> Result<AppendReceipt, TryAppendError> {
        if self.stopping.get() {
            return Err(AppendError::ShuttingDown.into());
        }
        if self.follower.get() {
            return Err(AppendError::NotLeader.into());
        }
        // Above the reject ratio the copies wait: the room left is for the
        // appends that free space (the coordinators' snapshots, markers).
        if self.disk_pressure.get() == super::retention::DiskPressure::Reject {
            return Err(AppendError::DiskFull {
                usage_percent: self.disk_usage_ratio.get() * 100.0,
                limit_percent: self.options.retention.disk_reject_ratio * 100.0,
            }
            .into());
        }
        // A copy of a batch stored under a larger limit than today's: the
        // pass stops (the log cannot take the frame) and the partition keeps
        // its clean section.
        let limit = self.options.storage.batch_ceiling_bytes();
        if batch.len() > limit as usize {
            return Err(AppendError::BatchTooLarge {
                size: batch.len(),
                limit,
            }
            .into());
        }
        let now = Instant::now();
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let partition = state
            .partitions
            .get(&id)
            .ok_or(AppendError::UnknownPartition(id))?;
        let next_offset = partition.next_offset;
        let frame = FrameHeader {
            payload_len: u32::try_from(batch.len()).expect("a batch under 4 GiB"),
            partition: id,
            kind,
        };
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        frame.encode_prefix(&batch[..COVERED_PAYLOAD_PREFIX_BYTES], &mut prefix);
        let durable_by = (kind == FrameKind::CompactionCommit).then_some(now);
        let position = state
            .log
            .append_frame(
                &[&prefix, &batch[COVERED_PAYLOAD_PREFIX_BYTES..]],
                durable_by,
                now,
            )
            .map_err(|error| self.classify_log_error(error))?;
        state.log.note_append(u64::MAX, super::segment::now_ms());
        let end = position.plus(frame.frame_len());
        if kind == FrameKind::CompactionCommit {
            let part = CommitPart::decode(batch).expect("a part this cleaner encoded");
            state.compaction.collect(id, position, end, part, now);
        }
        state.push_pending(id, end, next_offset);
        drop(guard);
        self.flush_kick.notify();
        Ok(AppendReceipt {
            base_offset: next_offset,
            last_offset: next_offset,
            position,
            end,
            durability: if kind == FrameKind::CompactionCommit {
                Durability::Fsynced
            } else {
                Durability::Buffered
            },
            duplicate: false,
        })
    }

    /// Apply every collected pass whose commit frames are durable: write
    /// its clean section (off the shard thread), switch the partition to
    /// it and delete the one it replaces.
    pub(super) async fn apply_durable_compactions(&self) {
        let passes = {
            let mut state = self.state.borrow_mut();
            if !state.compaction.has_ready() {
                return;
            }
            // Durable here and, in a cluster, below the high watermark, so
            // no failover truncates a pass this node applied.
            let limit = state.log.durable_end().0.min(state.visible_limit);
            state
                .compaction
                .take_durable(crate::ids::LogPosition(limit))
        };
        for pass in passes {
            let partition = pass.partition;
            let generation = pass.generation;
            if let Err(error) = self.apply_compaction(pass).await {
                tracing::error!(shard = %self.options.shard, %partition, generation, %error, "cannot apply a compaction pass; the partition keeps its previous clean section");
            }
        }
        // Until now the checkpoint was held at the passes' first parts.
        self.state.borrow_mut().compaction.applied();
    }

    async fn apply_compaction(&self, pass: CompletePass) -> Result<(), CleanerError> {
        let id = pass.partition;
        let generation = pass.generation;
        let dir = self.layout.partition_dir(id);
        let entries_per_file = self.options.storage.consume_queue_entries_per_file;
        let current = self
            .state
            .borrow()
            .partitions
            .get(&id)
            .map(|partition| partition.clean.as_ref().map_or(0, |clean| clean.generation));
        if current.is_none_or(|current| current >= pass.generation) {
            return Ok(());
        }
        let written = compio::runtime::spawn_blocking(move || {
            CleanSection::write(
                &dir,
                pass.generation,
                pass.clean_end,
                pass.first_part,
                &pass.entries,
                entries_per_file,
            )
        })
        .await;
        let section = match written {
            Ok(section) => section.map_err(|error| CleanerError::Section(error.to_string()))?,
            Err(error) => {
                error.resume_unwind();
                return Err(CleanerError::Section("the write was cancelled".to_owned()));
            }
        };
        let label = self.partition_label(id);
        let replaced = {
            let mut state = self.state.borrow_mut();
            let log_start = state.log.start();
            match state.partitions.get_mut(&id) {
                // Deleted meanwhile: the new section goes with it.
                None => Some(section),
                Some(partition) => {
                    let end = section.end;
                    let replaced = partition.clean.replace(section);
                    self.metrics.compaction_state(
                        &partition.meta.topic,
                        partition.meta.index,
                        0.0,
                        Duration::ZERO,
                    );
                    // The head's entries below the clean end are not read
                    // again: whole files of them go, once the log no longer
                    // holds their frames (a copy started again at the log's
                    // start finds each partition's offset there in them,
                    // `offsets_at_log_start`).
                    let on_disk = partition
                        .queue
                        .count_below(log_start)
                        .and_then(|index| partition.queue.get(index));
                    let drop_below = match on_disk {
                        Ok(Some(entry)) => entry.base_offset.min(end),
                        Ok(None) => end,
                        Err(_) => Offset(i64::MIN),
                    };
                    if let Err(error) = partition.queue.drop_files_before(drop_below) {
                        tracing::warn!(partition = %label, %error, "cannot drop consume-queue files below the clean end");
                    }
                    replaced
                }
            }
        };
        tracing::info!(shard = %self.options.shard, partition = %label, generation, "applied a compaction pass");
        if let Some(replaced) = replaced {
            let removed = compio::runtime::spawn_blocking(move || replaced.remove()).await;
            if let Ok(Err(error)) = removed {
                tracing::warn!(partition = %label, %error, "cannot delete a replaced clean section; the next start deletes it");
            }
        }
        Ok(())
    }
}

/// Bytes of the queue's entries `[first, end)`: summed when there are at
/// most [`HEAD_ENTRIES_SUMMED`], else estimated from an even sample of that
/// many (the dirty ratio need not be exact; the shard thread must not walk
/// millions of entries every `log.cleaner.backoff.ms`).
fn head_bytes(
    queue: &super::consume_queue::ConsumeQueue,
    first: u64,
    end: u64,
) -> Result<u64, super::consume_queue::QueueError> {
    let count = end - first;
    let step = count.div_ceil(HEAD_ENTRIES_SUMMED).max(1);
    let mut sampled = 0u64;
    let mut bytes = 0u64;
    let mut index = first;
    while index < end {
        if let Some(entry) = queue.get(index)? {
            bytes += u64::from(entry.batch_len);
            sampled += 1;
        }
        index += step;
    }
    Ok(bytes.saturating_mul(count) / sampled.max(1))
}

/// Transaction markers are copied whole: read_committed readers need them.
fn is_control(attributes: u16) -> bool {
    const CONTROL: u16 = 1 << 5;
    attributes & CONTROL != 0
}

/// Whether `batch` belongs to one of the `aborted` transactions (its
/// producer's, begun at or before it and ended by a marker after it).
fn aborted(aborted: &[AbortedTxn], batch: &crate::record_batch::BatchHeader) -> bool {
    batch.is_transactional()
        && aborted.iter().any(|txn| {
            txn.producer_id == batch.producer_id
                && txn.first_offset.0 <= batch.base_offset
                && batch.base_offset <= txn.last_offset.0
        })
}

/// Keys' 128-bit hashes to the offset of their latest record.
type KeyMap = HashMap<u128, i64>;

/// What one step of the key-map phase read.
struct MapStep {
    bytes_read: u64,
    /// The map filled at this batch: the pass ends before it.
    full_at: Option<Offset>,
}

/// Enter the keys of `batches` (read here) into `map`, stopping before the
/// batch that would take it past `key_limit` keys (the first batch goes in whatever its size). Blocking.
fn map_step(
    map: &mut KeyMap,
    batches: Vec<ReadBatch>,
    aborted_txns: &[AbortedTxn],
    key_limit: u64,
    decompressed_max: u64,
) -> Result<MapStep, CleanerError> {
    let mut step = MapStep {
        bytes_read: 0,
        full_at: None,
    };
    for batch in batches {
        let bytes = super::read_batch_bytes(&batch).map_err(CleanerError::Bytes)?;
        step.bytes_read += bytes.len() as u64;
        if is_control(batch.attributes) {
            continue;
        }
        let records = parse(&bytes, batch.base_offset, decompressed_max)?;
        if aborted(aborted_txns, &records.header) {
            continue;
        }
        let keys: Vec<(u128, i64)> = records
            .records
            .iter()
            .filter_map(|record| {
                let key = records.key(record)?;
                Some((
                    key_hash(key),
                    records.header.base_offset + i64::from(record.offset_delta),
                ))
            })
            .collect();
        let new_keys = keys
            .iter()
            .filter(|(hash, _)| !map.contains_key(hash))
            .count() as u64;
        // A batch with more keys than the map holds still goes in whole
        // when it comes first (the map exceeds its budget by that batch,
        // itself bounded by the decompressed batch limit); refusing it
        // would stop the partition's compaction there for good.
        if !map.is_empty() && map.len() as u64 + new_keys > key_limit {
            step.full_at = Some(batch.base_offset);
            return Ok(step);
        }
        map.extend(keys);
    }
    Ok(step)
}

/// What the copy phase keeps of each record.
struct Filter {
    /// A batch holding this offset keeps at least its last record.
    keep_last_of: Offset,
    latest: KeyMap,
    aborted: Vec<AbortedTxn>,
    delete_retention_ms: i64,
    now_ms: i64,
    decompressed_max: u64,
}

/// One cleaned batch: what was read, what survives of it.
struct Copy {
    base_offset: Offset,
    last_offset_delta: u32,
    max_timestamp_ms: i64,
    attributes: u16,
    read: u64,
    removed: u64,
    /// The batch to copy forward (`None`: nothing of it survives).
    survivor: Option<Vec<u8>>,
}

impl Filter {
    /// Read `batches` and filter each to its surviving records. Blocking.
    fn step(&self, batches: Vec<ReadBatch>) -> Result<Vec<Copy>, CleanerError> {
        batches
            .into_iter()
            .map(|batch| {
                let bytes = super::read_batch_bytes(&batch).map_err(CleanerError::Bytes)?;
                self.copy(&batch, bytes)
            })
            .collect()
    }

    fn copy(&self, batch: &ReadBatch, bytes: Vec<u8>) -> Result<Copy, CleanerError> {
        let header = crate::record_batch::BatchHeader::parse(&bytes).map_err(|error| {
            CleanerError::Batch {
                offset: batch.base_offset,
                reason: error.to_string(),
            }
        })?;
        let mut copy = Copy {
            base_offset: batch.base_offset,
            last_offset_delta: header.last_offset_delta as u32,
            max_timestamp_ms: header.max_timestamp_ms,
            attributes: header.attributes as u16,
            read: bytes.len() as u64,
            removed: 0,
            survivor: None,
        };
        // A damaged batch is copied as it is, never re-encoded with a fresh
        // CRC: consumers checking CRCs must still see the damage.
        if is_control(batch.attributes) || !crate::record_batch::crc_matches(&bytes) {
            copy.survivor = Some(bytes);
            return Ok(copy);
        }
        let records = parse(&bytes, batch.base_offset, self.decompressed_max)?;
        if records.records.is_empty() && batch.last_offset >= self.keep_last_of {
            // An empty last batch (a produced batch whose records are all
            // held by the delay timer) stays as it is, for the same reason
            // as below.
            copy.survivor = Some(bytes);
            return Ok(copy);
        }
        let dropped = aborted(&self.aborted, &records.header);
        let keep: Vec<usize> = records
            .records
            .iter()
            .enumerate()
            .filter(|(_, record)| {
                let Some(key) = records.key(record) else {
                    return false;
                };
                let at = records.header.base_offset + i64::from(record.offset_delta);
                let newest = self
                    .latest
                    .get(&key_hash(key))
                    .is_none_or(|&newest| newest <= at);
                let expired = record.tombstone
                    && record.timestamp_ms.saturating_add(self.delete_retention_ms) < self.now_ms;
                !dropped && newest && !expired
            })
            .map(|(index, _)| index)
            .collect();
        let mut keep = keep;
        if keep.is_empty()
            && batch.last_offset >= self.keep_last_of
            && let Some(last) = records.records.len().checked_sub(1)
        {
            // The partition's last batch survives with its last record (its
            // last offset delta is kept whatever survives).
            keep.push(last);
        }
        copy.removed = (records.records.len() - keep.len()) as u64;
        copy.survivor = if keep.is_empty() {
            None
        } else if keep.len() == records.records.len() {
            Some(bytes)
        } else {
            Some(
                records
                    .rebuild(&bytes, &keep)
                    .map_err(|error| CleanerError::Batch {
                        offset: batch.base_offset,
                        reason: format!("recompressing: {error}"),
                    })?,
            )
        };
        Ok(copy)
    }
}

fn parse(bytes: &[u8], offset: Offset, decompressed_max: u64) -> Result<Records, CleanerError> {
    Records::parse(bytes, decompressed_max).map_err(|reason| CleanerError::Batch { offset, reason })
}

/// Run `work` on the blocking pool.
async fn off_shard<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CleanerError> {
    match compio::runtime::spawn_blocking(work).await {
        Ok(done) => Ok(done),
        Err(error) => {
            error.resume_unwind();
            Err(CleanerError::Bytes(std::io::Error::other(
                "the cleaner's blocking task was cancelled",
            )))
        }
    }
}

/// A 128-bit hash of a record key: two SipHash-1-3 runs with different
/// prefixes (a collision, at 2^-128, would drop a live record, as an MD5
/// collision would in Kafka's cleaner).
fn key_hash(key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut hasher);
        key.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// `log.cleaner.io.max.bytes.per.second`: a pass sleeps whenever it is
/// ahead of the rate since it began.
struct Throttle {
    bytes_per_second: u64,
    started: Instant,
    spent: u64,
}

impl Throttle {
    fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            bytes_per_second: bytes_per_second.max(1),
            started: Instant::now(),
            spent: 0,
        }
    }

    async fn spend(&mut self, bytes: u64) {
        self.spent += bytes;
        let due = Duration::from_secs_f64(self.spent as f64 / self.bytes_per_second as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            compio::time::sleep(due - elapsed).await;
        }
    }
}
