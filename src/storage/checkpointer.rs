//! Checkpoints: how far the commit log and the consume queues are durable,
//! so recovery scans only what follows.
//!
//! The snapshot is taken on the shard; the fsyncs and the file replacement
//! run on the blocking pool, serialised by `CheckpointWriter`, which also
//! owns the queue files still to fsync, so a cancelled checkpoint can neither
//! race the next one nor leave unsynced files that a later one vouches for.

use std::fs::File;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::{Checkpoint, CheckpointError, PartitionCheckpoint};
use super::shard_store::ShardStore;
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
            let (queue_entries, next_offset) = partition.checkpoint_position(indexed);
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
}

/// The blocking half of checkpointing: queue files waiting for an fsync and
/// the newest checkpoint written. Held under a mutex by one checkpoint at a time.
#[derive(Default)]
pub(super) struct CheckpointWriter {
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
