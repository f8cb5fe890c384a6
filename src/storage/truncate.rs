//! Cutting a closed store's log back to a position: how a replica drops
//! the tail that diverges from its new leader's log (ARCHITECTURE.md,
//! "Cluster II design: truncation on divergence").
//!
//! The store is shut down first; then the bytes of the log from the cut on
//! are zeroed (later segments deleted), and whatever records positions past
//! the cut as settled (the checkpoint, producer snapshots) is removed, so
//! that opening the store again runs recovery, which rebuilds the consume
//! queues and producer state from the frames that remain (ARCHITECTURE.md,
//! "Recovery"). Each step is safe to crash after: a cut repeated on the
//! next start finds less to do, and the replica asks its leader again
//! before it copies anything.
//!
//! A copy whose log ends before its leader's log start (retention deleted
//! what it lacks while it was away) cannot be cut into shape: it is
//! emptied and started again at the leader's log start
//! ([`restart_closed`]), as Kafka's follower truncates fully and starts at
//! the leader's log start offset when it fetches below it.

use std::path::PathBuf;

use thiserror::Error;

use serde::{Deserialize, Serialize};

use super::checkpoint::{CHECKPOINT_FILE, Checkpoint, PartitionCheckpoint};
use super::durable_file::write_atomic;
use super::layout::ShardLayout;
use super::producer_snapshot::remove_snapshots_after;
use super::segment::{self, Segment, list_segments};
use super::shard_store::StoreOptions;
use crate::config::WriteMode;
use crate::ids::{LogPosition, Offset, PartitionId};

#[derive(Debug, Error)]
pub enum TruncateError {
    #[error("cannot cut the commit log in {dir} at {at}: {source}")]
    Io {
        dir: PathBuf,
        at: LogPosition,
        #[source]
        source: std::io::Error,
    },
    /// The cut is below the oldest segment retention kept: nothing of this
    /// copy is shared with the leader's log.
    #[error(
        "cannot cut the commit log in {dir} at {at}: its oldest segment starts at {first}, \
         so none of it matches the leader's log"
    )]
    BelowLogStart {
        dir: PathBuf,
        at: LogPosition,
        first: LogPosition,
    },
}

/// What a cut removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truncated {
    pub segments_deleted: usize,
    pub checkpoint_removed: bool,
    pub producer_snapshots_removed: usize,
}

/// Cut the log of the closed store `options` describes at `at` (a frame
/// boundary of its log), so that opening it again recovers a log ending
/// there. Must not run while the store is open.
pub fn truncate_closed(
    options: &StoreOptions,
    at: LogPosition,
) -> Result<Truncated, TruncateError> {
    let layout = ShardLayout::new(&options.data_dir, options.shard);
    let log_dir = layout.log_dir();
    let io = |source: std::io::Error| TruncateError::Io {
        dir: log_dir.clone(),
        at,
        source,
    };
    let bases = list_segments(&log_dir).map_err(|error| io(std::io::Error::other(error)))?;
    if let Some(&first) = bases.first()
        && at < first
    {
        return Err(TruncateError::BelowLogStart {
            dir: log_dir.clone(),
            at,
            first,
        });
    }
    let mut truncated = Truncated::default();
    // The checkpoint vouches for queue entries and timer entries up to its
    // positions (the timer's is the later), and a
    // producer snapshot for state up to its own: both go first, so that a
    // crash in the middle never leaves them trusting positions the cut
    // removes.
    if Checkpoint::load(layout.root())
        .ok()
        .flatten()
        .is_none_or(|checkpoint| checkpoint.timer_position > at)
    {
        match std::fs::remove_file(layout.root().join(CHECKPOINT_FILE)) {
            Ok(()) => truncated.checkpoint_removed = true,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io(error)),
        }
        segment::sync_dir(layout.root()).map_err(io)?;
    }
    truncated.producer_snapshots_removed =
        remove_snapshots_after(&layout.producer_snapshots_dir(), at).map_err(io)?;
    for (number, &base) in bases.iter().enumerate().rev() {
        let segment = Segment::open(&log_dir, base, options.storage.write_mode)
            .map_err(|error| io(std::io::Error::other(error)))?;
        if base >= at && number > 0 {
            drop(segment);
            std::fs::remove_file(segment::segment_path(&log_dir, base)).map_err(io)?;
            truncated.segments_deleted += 1;
            continue;
        }
        segment::zero_range(&segment, at.max(base), segment.end()).map_err(io)?;
        break;
    }
    segment::sync_dir(&log_dir).map_err(io)?;
    Ok(truncated)
}

/// The file in a shard's directory that a [`restart_closed`] leaves until
/// it is done; recovery finishes a restart it finds there.
pub const RESTART_FILE: &str = "restart-at";

/// Where a copy's emptied log starts again, and the offset each partition
/// continues from there (the leader's: its first batch at or past
/// `start`, else its next offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRestart {
    pub start: LogPosition,
    pub offsets: Vec<(PartitionId, Offset)>,
}

/// [`LogRestart`] as [`RESTART_FILE`] holds it (JSON).
#[derive(Serialize, Deserialize)]
struct RestartRecord {
    start: u64,
    offsets: Vec<(u32, i64)>,
}

impl LogRestart {
    fn record(&self) -> RestartRecord {
        RestartRecord {
            start: self.start.0,
            offsets: self
                .offsets
                .iter()
                .map(|(id, offset)| (id.0, offset.0))
                .collect(),
        }
    }

    fn from_record(record: RestartRecord) -> LogRestart {
        LogRestart {
            start: LogPosition(record.start),
            offsets: record
                .offsets
                .into_iter()
                .map(|(id, offset)| (PartitionId(id), Offset(offset)))
                .collect(),
        }
    }
}

/// Empty the log of the closed store `options` describes (segments,
/// consume queues, producer snapshots, checkpoint) and start it again at
/// `restart.start` with each listed partition at its offset, so that
/// opening it recovers an empty log there. The restart is written down
/// first and finished by recovery if the process dies on the way
/// ([`finish_pending_restart`]). Must not run while the store is open.
pub fn restart_closed(options: &StoreOptions, restart: &LogRestart) -> Result<(), TruncateError> {
    let layout = ShardLayout::new(&options.data_dir, options.shard);
    let marker = layout.root().join(RESTART_FILE);
    let bytes = serde_json::to_vec(&restart.record()).map_err(std::io::Error::other);
    bytes
        .and_then(|bytes| write_atomic(&marker, &bytes))
        .map_err(|source| TruncateError::Io {
            dir: layout.root().to_owned(),
            at: restart.start,
            source,
        })?;
    finish_restart(
        &layout,
        options.storage.segment_bytes,
        options.storage.write_mode,
        restart,
    )
}

/// Finish a [`restart_closed`] the process died in, if `layout`'s shard
/// has one pending; before recovery opens anything.
pub fn finish_pending_restart(
    layout: &ShardLayout,
    segment_bytes: u64,
    mode: WriteMode,
) -> Result<(), TruncateError> {
    let marker = layout.root().join(RESTART_FILE);
    let io = |source: std::io::Error| TruncateError::Io {
        dir: layout.root().to_owned(),
        at: LogPosition::ZERO,
        source,
    };
    let bytes = match std::fs::read(&marker) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io(error)),
    };
    // Written whole by a rename: damage here is not a torn write.
    let restart = serde_json::from_slice::<RestartRecord>(&bytes)
        .map(LogRestart::from_record)
        .map_err(|error| io(std::io::Error::new(std::io::ErrorKind::InvalidData, error)))?;
    tracing::warn!(start = %restart.start, "finishing a restart of this copy's log that was interrupted");
    finish_restart(layout, segment_bytes, mode, &restart)
}

/// The steps of a restart, each safe to repeat: everything that records
/// the old log goes, then one empty segment at the start and a checkpoint
/// holding the partitions' offsets there, then the marker.
fn finish_restart(
    layout: &ShardLayout,
    segment_bytes: u64,
    mode: WriteMode,
    restart: &LogRestart,
) -> Result<(), TruncateError> {
    let log_dir = layout.log_dir();
    let at = restart.start;
    let io = |source: std::io::Error| TruncateError::Io {
        dir: log_dir.clone(),
        at,
        source,
    };
    match std::fs::remove_file(layout.root().join(CHECKPOINT_FILE)) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(error)),
    }
    remove_snapshots_after(&layout.producer_snapshots_dir(), LogPosition::ZERO).map_err(io)?;
    let partitions = match std::fs::read_dir(layout.partitions_dir()) {
        Ok(entries) => entries.collect::<Result<Vec<_>, _>>().map_err(io)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(io(error)),
    };
    for partition in partitions {
        super::recovery::remove_queue_files(&partition.path())
            .map_err(|error| io(std::io::Error::other(error)))?;
    }
    // The timer is derived from the log, which starts again here.
    match std::fs::remove_dir_all(layout.timer_dir()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(error)),
    }
    let bases = list_segments(&log_dir).map_err(|error| io(std::io::Error::other(error)))?;
    for base in bases {
        std::fs::remove_file(segment::segment_path(&log_dir, base)).map_err(io)?;
    }
    std::fs::create_dir_all(&log_dir).map_err(io)?;
    let (segment, _) = Segment::create(&log_dir, at, segment_bytes, 0, mode)
        .map_err(|error| io(std::io::Error::other(error)))?;
    drop(segment);
    segment::sync_dir(&log_dir).map_err(io)?;
    let checkpoint = Checkpoint {
        indexed_position: at,
        partitions: restart
            .offsets
            .iter()
            .map(|&(id, offset)| PartitionCheckpoint {
                id,
                log_start_offset: offset,
                next_offset: offset,
                queue_entries: 0,
            })
            .collect(),
        timer: Default::default(),
        timer_position: at,
    };
    checkpoint
        .store(layout.root())
        .map_err(|error| io(std::io::Error::other(error)))?;
    std::fs::remove_file(layout.root().join(RESTART_FILE)).map_err(io)?;
    segment::sync_dir(layout.root()).map_err(io)?;
    Ok(())
}
