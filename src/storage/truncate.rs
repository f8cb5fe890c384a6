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

use std::path::PathBuf;

use thiserror::Error;

use super::checkpoint::{CHECKPOINT_FILE, Checkpoint};
use super::layout::ShardLayout;
use super::producer_snapshot::remove_snapshots_after;
use super::segment::{self, Segment, list_segments};
use super::shard_store::StoreOptions;
use crate::ids::LogPosition;

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
    // The checkpoint vouches for queue entries up to its position, and a
    // producer snapshot for state up to its own: both go first, so that a
    // crash in the middle never leaves them trusting positions the cut
    // removes.
    if Checkpoint::load(layout.root())
        .ok()
        .flatten()
        .is_none_or(|checkpoint| checkpoint.indexed_position > at)
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
