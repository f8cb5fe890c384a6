//! The next segment, made ahead of the roll that needs it (issue 19 item
//! 3). Creating a segment file, sizing it, reserving its first step and
//! fsyncing the log directory took 20–40 ms of the shard thread at every
//! roll on a slow disk, in the middle of group commit; every producer of
//! the shard waited. Once the active segment is half written, the flusher
//! asks [`super::commit_log::CommitLog::segment_ahead_due`] for this work,
//! runs it on the blocking pool and hands the segment back; the roll then
//! only switches files.
//!
//! The file is made under its real name, at the active segment's end
//! (every roll, by size or by age, starts the next segment there), and its
//! directory entry is durable before it is used. A crash leaves it as a
//! trailing segment without frames, which recovery removes. While the work
//! is out, a roll waits for it (`AwaitingReservation`, retried like an
//! append short of buffers): making the file in line too would race it.

use std::path::PathBuf;

use super::segment::{self, Preallocation, Segment, SegmentError};
use crate::config::WriteMode;
use crate::ids::LogPosition;

/// Making the segment at `base`; run off the shard thread.
#[derive(Clone, Debug)]
pub struct SegmentAheadWork {
    pub dir: PathBuf,
    pub base: LogPosition,
    pub size_bytes: u64,
    pub reserve_bytes: u64,
    pub mode: WriteMode,
}

/// A segment made ahead, durable in its directory, not yet in the log.
#[derive(Debug)]
pub struct SegmentAhead {
    pub segment: Segment,
    pub preallocation: Preallocation,
    pub reserve_bytes: u64,
}

impl SegmentAheadWork {
    /// Create, size and reserve the file, then fsync the directory
    /// (blocking: milliseconds). On any failure the file is removed.
    pub fn run(&self) -> Result<SegmentAhead, SegmentError> {
        let (segment, preallocation) = Segment::create(
            &self.dir,
            self.base,
            self.size_bytes,
            self.reserve_bytes,
            self.mode,
        )?;
        if let Err(source) = segment::sync_dir(&self.dir) {
            if let Err(error) = std::fs::remove_file(&segment.path) {
                tracing::warn!(path = %segment.path.display(), %error, "cannot remove the segment made ahead whose directory fsync failed");
            }
            return Err(SegmentError::Create {
                path: segment.path.clone(),
                source,
            });
        }
        Ok(SegmentAhead {
            segment,
            preallocation,
            reserve_bytes: self.reserve_bytes,
        })
    }
}
