//! Checkpoints: how far the commit log and the consume queues are durable,
//! so recovery scans only what follows; and producer snapshots, so recovery
//! rebuilds the idempotent producers' state from one plus the log after it.
//!
//! A producer snapshot is copied on the shard at the append end, every
//! `producer_snapshot_interval_bytes` of log and at shutdown, and written
//! by a later checkpoint once the log is durable up to that position (at
//! shutdown, at once: everything is synced by then), so a snapshot on disk
//! never holds a batch a crash could lose.
//!
//! The snapshot is taken on the shard; the fsyncs and the file replacement
//! run on the blocking pool, serialised by `CheckpointWriter`, which also
//! owns the queue files still to fsync, so a cancelled checkpoint can neither
//! race the next one nor leave unsynced files that a later one vouches for.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::{Checkpoint, CheckpointError, PartitionCheckpoint};
use super::producer_snapshot::{ProducerSnapshot, ProducerSnapshotError};
use super::recovery::{CheckpointStatus, RecoveryReport};
use super::shard_store::{ShardStore, StoreState};
use super::timer::index::{TimerCheckpoint, retire_files};
use crate::ids::LogPosition;
use crate::log_throttle::monotonic_ms;

impl ShardStore {
    pub(super) async fn run_checkpointer(self: Rc<Self>) {
        let interval = Duration::from_millis(self.options.storage.checkpoint_interval_ms);
        loop {
            compio::time::sleep(interval).await;
            if let Err(error) = self.checkpoint().await
                && let Some(failed) = self.checkpoint_failure_log.record(monotonic_ms())
            {
                tracing::error!(%error, shard = %self.options.shard, failed, "checkpoint failed; recovery will scan further back (`failed` counts failures since the last such line)");
            }
        }
    }

    /// Fsync the consume-queue files touched since the last checkpoint, then
    /// record how far the log and the queues are durable.
    /// Then write the producer snapshot if one is due and durable.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        let result = self.checkpoint_queues().await;
        if let Err(error) = self.snapshot_producers().await
            && let Some(failed) = self.checkpoint_failure_log.record(monotonic_ms())
        {
            tracing::error!(%error, shard = %self.options.shard, failed, "producer snapshot failed; the next one is retried at the next checkpoint, and recovery scans further back meanwhile");
        }
        result
    }

    async fn checkpoint_queues(&self) -> Result<(), CheckpointError> {
        if let Some(fault) = self.state.borrow().timer_fault.clone() {
            return Err(CheckpointError::Io {
                path: self.layout.timer_dir(),
                source: std::io::Error::other(format!(
                    "the delayed-delivery timer failed ({fault}); no checkpoint until a restart"
                )),
            });
        }
        let (checkpoint, dirty_files) = self.checkpoint_snapshot();
        let timer = (checkpoint.timer, checkpoint.timer_position);
        let sequence = self.checkpoint_sequence.get() + 1;
        self.checkpoint_sequence.set(sequence);
        let writer = Arc::clone(&self.checkpoint_writer);
        writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add_pending(dirty_files);
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
            Ok(Ok(())) => {
                self.retire_timer_files(timer).await;
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(error) => {
                error.resume_unwind();
                Err(CheckpointError::Io {
                    path: self.layout.root().to_owned(),
                    source: std::io::Error::other("the checkpoint task was cancelled"),
                })
            }
        }
    }

    /// Retire the timer's entry files whose entries are all done for good
    /// as of the checkpoint just written (`storage/timer/index.rs`). A
    /// failure is logged: the files stay whole and are retired after the
    /// next restart.
    async fn retire_timer_files(&self, (checkpoint, at): (TimerCheckpoint, LogPosition)) {
        let files = self.state.borrow_mut().timer.index.retire(checkpoint, at);
        if files.is_empty() {
            return;
        }
        let count = files.len();
        let result = compio::runtime::spawn_blocking(move || retire_files(files)).await;
        match result {
            Ok(Ok(())) => {
                tracing::debug!(shard = %self.options.shard, files = count, "retired timer entry files whose entries are all delivered");
            }
            Ok(Err(error)) => {
                tracing::warn!(shard = %self.options.shard, %error, "cannot retire timer entry files; they are retired after a restart");
            }
            Err(error) => error.resume_unwind(),
        }
    }

    /// Write the producer snapshot that is due and durable, if any.
    async fn snapshot_producers(&self) -> Result<(), ProducerSnapshotError> {
        let Some(snapshot) = self.producer_snapshot_due() else {
            return Ok(());
        };
        let dir = self.layout.producer_snapshots_dir();
        let written = Arc::clone(&self.producer_snapshot_written);
        let result = compio::runtime::spawn_blocking(move || {
            let mut written = written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *written >= snapshot.position {
                return Ok(()); // a newer snapshot is already on disk
            }
            snapshot.store(&dir)?;
            *written = snapshot.position;
            Ok(())
        })
        .await;
        let result = match result {
            Ok(result) => result,
            Err(error) => {
                error.resume_unwind();
                Err(ProducerSnapshotError::Io {
                    path: self.layout.producer_snapshots_dir(),
                    source: std::io::Error::other("the producer snapshot task was cancelled"),
                })
            }
        };
        if result.is_err() {
            self.producer_snapshots.borrow_mut().retry = true;
        }
        result
    }

    /// Take a producer snapshot if one is due, and hand out the one taken
    /// once the log is durable up to its position.
    fn producer_snapshot_due(&self) -> Option<ProducerSnapshot> {
        let state = self.state.borrow();
        let mut snapshots = self.producer_snapshots.borrow_mut();
        let end = state.log.append_end();
        let interval = self.options.storage.producer_snapshot_interval_bytes;
        let advanced = end.0.saturating_sub(snapshots.taken.0);
        let due = if self.stopping.get() || snapshots.retry {
            advanced > 0
        } else {
            snapshots.pending.is_none() && advanced >= interval
        };
        if due {
            snapshots.pending = Some(producer_snapshot(&state, end));
            snapshots.taken = end;
            snapshots.retry = false;
        }
        // With no append pending, every frame is durable and none lies
        // between the durable frame end and the append end (a roll's
        // unused segment tail): a snapshot taken there is exact and ready.
        // Without this, one taken after a roll waited for the next frame,
        // and retention of the rolled segment with it (a refused append
        // under disk pressure brings none).
        let durable = state.durable_frame_end;
        let all_durable = state.pending.is_empty();
        if snapshots
            .pending
            .as_ref()
            .is_some_and(|pending| pending.position <= durable || all_durable)
        {
            return snapshots.pending.take();
        }
        None
    }

    fn checkpoint_snapshot(&self) -> (Checkpoint, DirtyFiles) {
        let mut state = self.state.borrow_mut();
        // A compaction pass collected but not applied is scanned again.
        let indexed = match state.compaction.hold() {
            Some(hold) => state.durable_frame_end.min(hold),
            None => state.durable_frame_end,
        };
        let mut dirty_files = DirtyFiles::default();
        let mut partitions = Vec::with_capacity(state.partitions.len());
        for partition in state.partitions.values_mut() {
            let (queue_entries, next_offset) = partition.checkpoint_position(indexed);
            partitions.push(PartitionCheckpoint {
                id: partition.id(),
                log_start_offset: partition.log_start_offset,
                next_offset,
                queue_entries,
            });
            dirty_files
                .queue_files
                .extend(partition.queue.take_dirty_files());
        }
        partitions.sort_by_key(|partition| partition.id);
        // The timer is exact at the durable frame end (a compaction hold
        // does not concern it), which only grows.
        let timer_position = state.durable_frame_end;
        let timer = state.timer.checkpoint_at(timer_position);
        dirty_files
            .timer_files
            .extend(state.timer.index.take_dirty_files());
        let checkpoint = Checkpoint {
            indexed_position: indexed,
            partitions,
            timer,
            timer_position,
        };
        (checkpoint, dirty_files)
    }
}

/// Every partition's producer state, exact at the append end `end`: each
/// batch up to it has been applied, and none after it exists yet.
fn producer_snapshot(state: &StoreState, end: LogPosition) -> ProducerSnapshot {
    let mut partitions: Vec<_> = state
        .partitions
        .values()
        .filter(|partition| !partition.producers.is_empty())
        .map(|partition| (partition.id(), partition.producers.clone()))
        .collect();
    partitions.sort_by_key(|(id, _)| *id);
    ProducerSnapshot {
        position: end,
        partitions,
    }
}

/// The shard side of producer snapshots.
pub(super) struct ProducerSnapshots {
    /// Taken at the append end, waiting for the log to be durable there.
    pending: Option<ProducerSnapshot>,
    /// Where the last snapshot was taken (or the one recovery used).
    taken: LogPosition,
    /// The last write failed, or retention waits for a snapshot: take and
    /// write the next one at once.
    retry: bool,
}

impl ProducerSnapshots {
    pub(super) fn after_recovery(report: &RecoveryReport) -> ProducerSnapshots {
        let taken = match report.producer_snapshot {
            CheckpointStatus::Found(position) => position,
            CheckpointStatus::Missing | CheckpointStatus::Damaged(_) => LogPosition::ZERO,
        };
        ProducerSnapshots {
            pending: None,
            taken,
            retry: false,
        }
    }

    /// Take a snapshot at the next checkpoint, however little the log
    /// grew since the last one: retention waits for it to delete segments.
    /// A snapshot already waiting for durability is written first (taking
    /// a newer one each time would keep a busy shard from ever writing one).
    pub(super) fn request(&mut self) {
        if self.pending.is_none() {
            self.retry = true;
        }
    }

    pub(super) fn taken(&self) -> LogPosition {
        self.taken
    }
}

/// Files written since the last checkpoint, which the next one syncs.
#[derive(Default)]
pub(super) struct DirtyFiles {
    /// Consume-queue files, by path: they are not kept open
    /// (`queue_file.rs`), so a checkpoint opens them to sync them.
    queue_files: Vec<PathBuf>,
    /// The delayed-delivery timer's entry files, held open by the timer.
    timer_files: Vec<Arc<File>>,
}

/// Consume-queue files a checkpoint holds open at once to sync them: a
/// shard with many partitions written since the last checkpoint does not
/// take a descriptor for each at the same time.
const QUEUE_FILES_OPEN_AT_ONCE: usize = 128;

/// The blocking half of checkpointing: files waiting for an fsync and the
/// newest checkpoint written. Held under a mutex by one checkpoint at a time.
#[derive(Default)]
pub(super) struct CheckpointWriter {
    /// Queue files to sync, each once however often it was written.
    pending_queue_files: BTreeSet<PathBuf>,
    pending_timer_files: Vec<Arc<File>>,
    written_sequence: u64,
    /// The last checkpoint stored: an idle shard does not rewrite it.
    written: Option<Checkpoint>,
}

impl CheckpointWriter {
    fn add_pending(&mut self, dirty: DirtyFiles) {
        self.pending_queue_files.extend(dirty.queue_files);
        self.pending_timer_files.extend(dirty.timer_files);
    }

    fn write(
        &mut self,
        sequence: u64,
        checkpoint: &Checkpoint,
        root: &std::path::Path,
    ) -> Result<(), CheckpointError> {
        if sequence <= self.written_sequence {
            return Ok(()); // a newer checkpoint is already on disk
        }
        if self.pending_queue_files.is_empty()
            && self.pending_timer_files.is_empty()
            && self.written.as_ref() == Some(checkpoint)
        {
            self.written_sequence = sequence;
            return Ok(()); // nothing changed: no disk write on an idle shard
        }
        // Write every file's dirty pages back and wait for all of them
        // first, then fdatasync each. Straight fdatasyncs, one file after
        // another, each wrote its pages, whose completion changes the file's
        // extents (reserved blocks become written), and committed the
        // journal for that alone: a thousand partitions cost a thousand
        // journal commits a second, and the commit log's own fdatasyncs
        // (acks=all) queued behind them (p50 875 ms at 100 MB/s right after
        // 1000 partitions were written, issue 19). With the writeback done
        // first, the first fdatasync commits every file's change at once and
        // the others find theirs committed. Queue files go in groups of
        // `QUEUE_FILES_OPEN_AT_ONCE`, opened for it.
        let io_error = |source| CheckpointError::Io {
            path: root.to_owned(),
            source,
        };
        sync_files(&self.pending_timer_files).map_err(io_error)?;
        let queue_files: Vec<&PathBuf> = self.pending_queue_files.iter().collect();
        for group in queue_files.chunks(QUEUE_FILES_OPEN_AT_ONCE) {
            let mut files = Vec::with_capacity(group.len());
            for path in group {
                match File::open(path) {
                    Ok(file) => files.push(file),
                    // Removed since it was written (its partition deleted,
                    // or retention dropped it): nothing to sync.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(CheckpointError::Io {
                            path: (*path).clone(),
                            source,
                        });
                    }
                }
            }
            sync_files(&files).map_err(io_error)?;
        }
        self.pending_queue_files.clear();
        self.pending_timer_files.clear();
        checkpoint.store(root)?;
        self.written_sequence = sequence;
        self.written = Some(checkpoint.clone());
        Ok(())
    }
}

/// Write back the dirty pages of every file in `files`, then fdatasync each
/// (see [`CheckpointWriter::write`] for why in that order).
fn sync_files<F: std::borrow::Borrow<File>>(files: &[F]) -> std::io::Result<()> {
    for wait in [false, true] {
        for file in files {
            write_back(file.borrow(), wait);
        }
    }
    for file in files {
        file.borrow().sync_data()?;
    }
    Ok(())
}

/// Start the writeback of `file`'s dirty pages, or (`wait`) wait for all of
/// it to finish (`sync_file_range`). Only a hint for the fdatasync that
/// follows, which reports any error: a failure here is ignored.
fn write_back(file: &File, wait: bool) {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: sync_file_range only reads its integer arguments; the
    // descriptor is open for as long as `file` is.
    unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
}
