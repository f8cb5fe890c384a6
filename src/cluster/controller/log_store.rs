//! The controller's durable Raft log: openraft's [`RaftLogStorage`] on
//! files in `<data_dir>/controller/log/` ([`LogStore::dir_in`]).
//!
//! * Entries are framed (length, CRC32C, JSON) in segment files named by
//!   their first index, after a versioned header (format in
//!   `log_store/segment.rs`); a segment that has reached
//!   `SEGMENT_BYTES_TARGET` (64 MiB) gets no more entries. Every entry not
//!   yet purged is also kept in memory, so reads never touch the disk: the
//!   controller log holds metadata changes and is purged behind snapshots.
//! * `vote.json`, `committed.json` and `purged.json` hold the vote, the
//!   last committed log id and the last purged log id, each replaced
//!   atomically ([`write_atomic`]).
//!
//! What "done" means: [`RaftLogStorage::append`] writes the entries and
//! fdatasyncs the segment (a new segment: fsync, then the directory's)
//! before it reports them flushed to openraft's callback; `save_vote`,
//! `save_committed`, `truncate` and `purge` return once their change is
//! fsynced. A purge records its log id before deleting any segment, and a
//! truncate deletes later segments before it shortens the one it cuts, so a
//! crash part way leaves a log that recovery reads.
//!
//! Recovery ([`LogStore::open`], in `log_store/recovery.rs`) checks every
//! frame's CRC and that indexes are consecutive. A torn tail of the last
//! segment (a frame cut short, a bad CRC in the frame that ends the file,
//! zeros to the end) was never acknowledged, since append reports only
//! after its fdatasync, and is truncated away with a log line; damage
//! anywhere else is an error naming the file and offset, never skipped.
//! Entries at or below the last purged index are skipped, on reading and on
//! appending (Raft never appends them; they are in the snapshot).
//!
//! A failed write poisons the store: it refuses every later write until the
//! node restarts and recovers the log from disk (openraft stops on a
//! storage error anyway).
//!
//! The file I/O is blocking inside these async methods. That is deliberate:
//! they run on the cluster thread's own runtime, never on a shard thread,
//! and a controller write is one small frame and one fdatasync per
//! metadata change.

mod recovery;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

pub use self::segment::FrameDamage;
use self::segment::{
    FRAME_PAYLOAD_BYTES_MAX, SEGMENT_BYTES_TARGET, SEGMENT_HEADER_BYTES, encode_frame,
    segment_file_name, segment_header,
};
use super::ControllerTypes;
use crate::storage::durable_file::write_atomic;

/// Where in the data directory the controller log lives.
pub const LOG_DIR: &str = "controller/log";
pub const VOTE_FILE: &str = "vote.json";
pub const COMMITTED_FILE: &str = "committed.json";
pub const PURGED_FILE: &str = "purged.json";

type Entry = openraft::Entry<ControllerTypes>;
type NodeId = u64;
type Entries = BTreeMap<u64, Entry>;

#[derive(Debug, Error)]
pub enum LogStoreError {
    #[error("cannot create the controller log directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list the controller log directory {path}: {source}")]
    ListDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} {path}: {source}")]
    Write {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} does not hold a {what} (as JSON): {source}; it is written atomically, so this is \
         damage from outside sluice: restore it from a backup or rebuild this node from empty"
    )]
    DecodeFile {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "controller log segment {path} is damaged at byte {offset}: {damage}; this is not a write \
         cut short by a crash, so the log is not trusted: restore the data directory from a \
         backup or rebuild this node from empty (the other controllers hold the log)"
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        #[source]
        damage: FrameDamage,
    },
    #[error(
        "controller log segment {path}: the entry at byte {offset} passed its CRC but is not a log \
         entry: {source}"
    )]
    DecodeEntry {
        path: PathBuf,
        offset: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "controller log segment {path}: the entry at byte {offset} has index {found} where index \
         {expected} belongs; entries are missing or a segment file was removed or renamed"
    )]
    IndexGap {
        path: PathBuf,
        offset: u64,
        expected: u64,
        found: u64,
    },
    #[error(
        "controller log segment {path} holds no entries but is followed by other segments; a \
         segment is written whole before the next one is created"
    )]
    EmptySegment { path: PathBuf },
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "log entry {index} is {bytes} bytes as JSON, over the frame limit of \
         {FRAME_PAYLOAD_BYTES_MAX} bytes"
    )]
    EntryTooLarge { index: u64, bytes: usize },
    #[error(
        "log entry {found} appended where entry {expected} comes next (openraft appends in order)"
    )]
    AppendOutOfOrder { expected: u64, found: u64 },
    #[error(
        "truncate from index {index} would remove purged (committed) entries up to {last_purged}"
    )]
    TruncatePurged { index: u64, last_purged: u64 },
    #[error(
        "the controller log in {dir} refuses writes after an earlier write failed; restart the \
         node to recover the log from disk"
    )]
    Poisoned { dir: PathBuf },
    #[error("the controller log's entries are unavailable: {reason}")]
    EntriesUnavailable { reason: String },
}

/// One segment file as the store tracks it: never empty.
#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    /// Byte offset of each entry's frame, entry `first_index + i` at `i`
    /// (including entries purged since the segment was written).
    frame_offsets: Vec<u64>,
    len_bytes: u64,
}

impl Segment {
    fn last_index(&self) -> u64 {
        assert!(
            !self.frame_offsets.is_empty(),
            "a tracked segment holds an entry"
        );
        self.first_index + self.frame_offsets.len() as u64 - 1
    }
}

/// The controller's Raft log, vote and committed log id (module docs).
pub struct LogStore {
    dir: PathBuf,
    /// Entries after the last purged one, shared with the [`LogReader`]s.
    entries: Arc<RwLock<Entries>>,
    /// Oldest first; consecutive: each starts after the previous one's last
    /// entry.
    segments: Vec<Segment>,
    /// The last segment, open for writing; `None` when there is none.
    tail: Option<File>,
    segment_bytes_target: u64,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    /// Set when a write failed; every later write is refused.
    poisoned: bool,
}

/// Reads the entries of a [`LogStore`] from memory, concurrently with its
/// writes (openraft's replication tasks each hold one).
#[derive(Clone)]
pub struct LogReader {
    entries: Arc<RwLock<Entries>>,
}

impl LogStore {
    /// The log directory of the data directory `data_dir`.
    pub fn dir_in(data_dir: &Path) -> PathBuf {
        data_dir.join(LOG_DIR)
    }

    /// Open the log in `dir`, creating the directory (and its missing
    /// parents) durably if needed, and recover what it holds (module docs).
    pub fn open(dir: &Path) -> Result<LogStore, LogStoreError> {
        LogStore::open_with_segment_target(dir, SEGMENT_BYTES_TARGET)
    }

    fn open_with_segment_target(
        dir: &Path,
        segment_bytes_target: u64,
    ) -> Result<LogStore, LogStoreError> {
        assert!(segment_bytes_target > SEGMENT_HEADER_BYTES as u64);
        create_dir_durably(dir)?;
        let vote = read_json_file::<Vote<NodeId>>(&dir.join(VOTE_FILE), "vote")?;
        let committed =
            read_json_file::<Option<LogId<NodeId>>>(&dir.join(COMMITTED_FILE), "committed log id")?
                .flatten();
        let last_purged = read_json_file::<LogId<NodeId>>(&dir.join(PURGED_FILE), "purged log id")?;
        let recovered = recovery::recover(dir, last_purged.as_ref())?;
        let mut store = LogStore {
            dir: dir.to_owned(),
            entries: Arc::new(RwLock::new(recovered.entries)),
            segments: recovered.segments,
            tail: None,
            segment_bytes_target,
            vote,
            committed,
            last_purged,
            poisoned: false,
        };
        // A crash between recording a purge and deleting its segments
        // leaves them behind; finish the purge.
        store.remove_purged_segments()?;
        store.open_tail()?;
        store.assert_invariants();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last purged log id and the last log id (the last purged one when
    /// no entry follows it).
    pub fn log_state(&self) -> Result<LogState<ControllerTypes>, LogStoreError> {
        let last_entry = self.last_entry_id()?;
        let last_log_id = last_entry.or(self.last_purged);
        Ok(LogState {
            last_purged_log_id: self.last_purged,
            last_log_id,
        })
    }

    pub fn vote(&self) -> Option<Vote<NodeId>> {
        self.vote
    }

    pub fn committed(&self) -> Option<LogId<NodeId>> {
        self.committed
    }

    pub fn reader(&self) -> LogReader {
        LogReader {
            entries: Arc::clone(&self.entries),
        }
    }

    /// Write `vote` atomically; done when fsynced.
    pub fn save_vote_durably(&mut self, vote: &Vote<NodeId>) -> Result<(), LogStoreError> {
        self.write_json_file(VOTE_FILE, "vote", vote)?;
        self.vote = Some(*vote);
        Ok(())
    }

    /// Write `committed` atomically; done when fsynced.
    pub fn save_committed_durably(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), LogStoreError> {
        self.write_json_file(COMMITTED_FILE, "committed log id", &committed)?;
        self.committed = committed;
        Ok(())
    }

    /// Append `entries`, which continue the log; done when fdatasynced.
    /// Entries at or below the last purged index are skipped.
    pub fn append_durably(&mut self, entries: Vec<Entry>) -> Result<(), LogStoreError> {
        self.check_writable()?;
        let writes = self.plan_append(&entries)?;
        for write in writes {
            let written = self.write_segment(write);
            self.poison_on_error(written)?;
        }
        let mut map = write_entries(&self.entries)?;
        for entry in entries {
            if !self.is_purged(entry.log_id.index) {
                map.insert(entry.log_id.index, entry);
            }
        }
        drop(map);
        self.assert_invariants();
        Ok(())
    }

    /// Remove the entries from `index` on; done when the shortened segment
    /// and the directory are fsynced.
    pub fn truncate_durably(&mut self, index: u64) -> Result<(), LogStoreError> {
        self.check_writable()?;
        if let Some(purged) = self.last_purged
            && index <= purged.index
        {
            return Err(LogStoreError::TruncatePurged {
                index,
                last_purged: purged.index,
            });
        }
        let truncated = self.truncate_segments(index);
        self.poison_on_error(truncated)?;
        let mut map = write_entries(&self.entries)?;
        map.split_off(&index);
        drop(map);
        self.assert_invariants();
        Ok(())
    }

    /// Purge the entries up to `log_id` inclusive: record it (done when
    /// fsynced), then delete the segments holding only purged entries.
    pub fn purge_durably(&mut self, log_id: LogId<NodeId>) -> Result<(), LogStoreError> {
        self.check_writable()?;
        if let Some(purged) = self.last_purged
            && purged.index >= log_id.index
        {
            return Ok(());
        }
        self.write_json_file(PURGED_FILE, "purged log id", &log_id)?;
        self.last_purged = Some(log_id);
        let mut map = write_entries(&self.entries)?;
        *map = map.split_off(&(log_id.index + 1));
        drop(map);
        let removed = self.remove_purged_segments();
        self.poison_on_error(removed)?;
        self.assert_invariants();
        Ok(())
    }

    fn check_writable(&self) -> Result<(), LogStoreError> {
        if self.poisoned {
            return Err(LogStoreError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn poison_on_error<T>(&mut self, result: Result<T, LogStoreError>) -> Result<T, LogStoreError> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn write_json_file<T: Serialize>(
        &mut self,
        name: &str,
        what: &'static str,
        value: &T,
    ) -> Result<(), LogStoreError> {
        self.check_writable()?;
        let bytes =
            serde_json::to_vec(value).map_err(|source| LogStoreError::Encode { what, source })?;
        let path = self.dir.join(name);
        let written = write_atomic(&path, &bytes).map_err(|source| LogStoreError::Write {
            action: "write",
            path,
            source,
        });
        self.poison_on_error(written)
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, LogStoreError> {
        let map = read_entries(&self.entries)?;
        Ok(map.last_key_value().map(|(_, entry)| entry.log_id))
    }

    /// Whether the entry at `index` is covered by the last purge.
    fn is_purged(&self, index: u64) -> bool {
        self.last_purged.is_some_and(|purged| index <= purged.index)
    }

    /// The index the next appended entry must have, if the log has had one.
    fn next_index(&self) -> Result<Option<u64>, LogStoreError> {
        let last = self.last_entry_id()?.or(self.last_purged);
        Ok(last.map(|log_id| log_id.index + 1))
    }

    /// Encode `entries` into the writes that append them: to the tail
    /// segment, then to new segments whenever one reaches the target size.
    fn plan_append(&self, entries: &[Entry]) -> Result<Vec<SegmentWrite>, LogStoreError> {
        let mut next = self.next_index()?;
        let mut writes: Vec<SegmentWrite> = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            if self.is_purged(index) {
                // Already covered by the snapshot the purge followed, as
                // recovery skips such entries. Raft never sends them; the
                // storage suite does.
                continue;
            }
            if let Some(expected) = next
                && index != expected
            {
                return Err(LogStoreError::AppendOutOfOrder {
                    expected,
                    found: index,
                });
            }
            next = Some(index + 1);
            let payload = serde_json::to_vec(entry).map_err(|source| LogStoreError::Encode {
                what: "a log entry",
                source,
            })?;
            if payload.len() > FRAME_PAYLOAD_BYTES_MAX as usize {
                return Err(LogStoreError::EntryTooLarge {
                    index,
                    bytes: payload.len(),
                });
            }
            let segment_len = match writes.last() {
                Some(write) => write.end(),
                None => self.segments.last().map_or(0, |segment| segment.len_bytes),
            };
            let needs_new_segment = (self.tail.is_none() && writes.is_empty())
                || segment_len >= self.segment_bytes_target;
            if needs_new_segment {
                writes.push(SegmentWrite::new_segment(index));
            } else if writes.is_empty() {
                writes.push(SegmentWrite::tail(segment_len));
            }
            let write = writes.last_mut().expect("a write was pushed above");
            write.frame_offsets.push(write.end());
            encode_frame(&payload, &mut write.bytes);
        }
        Ok(writes)
    }

    fn write_segment(&mut self, write: SegmentWrite) -> Result<(), LogStoreError> {
        match write.new_segment_first_index {
            Some(first_index) => self.create_segment(first_index, write),
            None => self.extend_tail(write),
        }
    }

    fn create_segment(
        &mut self,
        first_index: u64,
        write: SegmentWrite,
    ) -> Result<(), LogStoreError> {
        let path = self.dir.join(segment_file_name(first_index));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| write_error("create", &path, source))?;
        file.write_all_at(&write.bytes, 0)
            .map_err(|source| write_error("write", &path, source))?;
        file.sync_all()
            .map_err(|source| write_error("fsync", &path, source))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            first_index,
            path,
            frame_offsets: write.frame_offsets,
            len_bytes: write.bytes.len() as u64,
        });
        self.tail = Some(file);
        Ok(())
    }

    fn extend_tail(&mut self, write: SegmentWrite) -> Result<(), LogStoreError> {
        let (Some(file), Some(segment)) = (&self.tail, self.segments.last_mut()) else {
            unreachable!("plan_append writes to the tail only when there is one");
        };
        assert_eq!(write.start_offset, segment.len_bytes);
        file.write_all_at(&write.bytes, write.start_offset)
            .map_err(|source| write_error("write", &segment.path, source))?;
        file.sync_data()
            .map_err(|source| write_error("fdatasync", &segment.path, source))?;
        segment.len_bytes = write.end();
        segment.frame_offsets.extend(write.frame_offsets);
        Ok(())
    }

    /// Delete the segments that start at or after `index` (newest first),
    /// then cut the one holding `index` at that entry's frame.
    fn truncate_segments(&mut self, index: u64) -> Result<(), LogStoreError> {
        let mut removed_any = false;
        while let Some(segment) = self.segments.last()
            && segment.first_index >= index
        {
            self.tail = None;
            remove_file(&segment.path)?;
            self.segments.pop();
            removed_any = true;
        }
        if removed_any {
            sync_dir(&self.dir)?;
            self.open_tail()?;
        }
        let Some(segment) = self.segments.last_mut() else {
            return Ok(());
        };
        if segment.last_index() < index {
            return Ok(());
        }
        let kept = usize::try_from(index - segment.first_index).expect("within the segment");
        let offset = segment.frame_offsets[kept];
        let file = self.tail.as_ref().expect("the last segment is open");
        file.set_len(offset)
            .map_err(|source| write_error("truncate", &segment.path, source))?;
        file.sync_all()
            .map_err(|source| write_error("fsync", &segment.path, source))?;
        segment.frame_offsets.truncate(kept);
        segment.len_bytes = offset;
        Ok(())
    }

    /// Delete the oldest segments while every entry in them is purged.
    fn remove_purged_segments(&mut self) -> Result<(), LogStoreError> {
        let Some(purged) = self.last_purged else {
            return Ok(());
        };
        let purged_count = self
            .segments
            .iter()
            .take_while(|segment| segment.last_index() <= purged.index)
            .count();
        if purged_count == 0 {
            return Ok(());
        }
        if purged_count == self.segments.len() {
            self.tail = None;
        }
        for segment in self.segments.drain(..purged_count) {
            remove_file(&segment.path)?;
        }
        sync_dir(&self.dir)
    }

    fn open_tail(&mut self) -> Result<(), LogStoreError> {
        self.tail = match self.segments.last() {
            Some(segment) => Some(
                OpenOptions::new()
                    .write(true)
                    .open(&segment.path)
                    .map_err(|source| write_error("open", &segment.path, source))?,
            ),
            None => None,
        };
        Ok(())
    }

    fn assert_invariants(&self) {
        for pair in self.segments.windows(2) {
            assert_eq!(
                pair[0].last_index() + 1,
                pair[1].first_index,
                "segments are consecutive"
            );
        }
        assert_eq!(self.tail.is_some(), !self.segments.is_empty());
        let Ok(map) = self.entries.read() else {
            return;
        };
        assert_eq!(
            map.is_empty(),
            self.segments.is_empty(),
            "a segment holding only purged entries is deleted"
        );
        if let (Some((&first, _)), Some((&last, _))) = (map.first_key_value(), map.last_key_value())
        {
            assert_eq!(
                last - first + 1,
                map.len() as u64,
                "entries are consecutive"
            );
            let last_segment = self.segments.last().expect("entries are on disk");
            assert_eq!(
                last_segment.last_index(),
                last,
                "memory matches the segments"
            );
        }
        if let Some(purged) = self.last_purged {
            assert!(map.keys().all(|&index| index > purged.index));
        }
    }
}

/// The bytes one append writes to one segment.
struct SegmentWrite {
    /// `Some(first index)` when the write creates the segment.
    new_segment_first_index: Option<u64>,
    start_offset: u64,
    bytes: Vec<u8>,
    frame_offsets: Vec<u64>,
}

impl SegmentWrite {
    fn new_segment(first_index: u64) -> SegmentWrite {
        SegmentWrite {
            new_segment_first_index: Some(first_index),
            start_offset: 0,
            bytes: segment_header().to_vec(),
            frame_offsets: Vec::new(),
        }
    }

    fn tail(start_offset: u64) -> SegmentWrite {
        SegmentWrite {
            new_segment_first_index: None,
            start_offset,
            bytes: Vec::new(),
            frame_offsets: Vec::new(),
        }
    }

    fn end(&self) -> u64 {
        self.start_offset + self.bytes.len() as u64
    }
}

impl LogReader {
    /// The entries with indexes in `range` that are in the log.
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, LogStoreError> {
        let Some((first, last)) = inclusive_bounds(&range) else {
            return Ok(Vec::new());
        };
        let map = read_entries(&self.entries)?;
        Ok(map
            .range(first..=last)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

/// `range` as `first..=last`, or `None` when it holds no index.
fn inclusive_bounds(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let first = match range.start_bound() {
        Bound::Included(&first) => first,
        Bound::Excluded(&before) => before.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let last = match range.end_bound() {
        Bound::Included(&last) => last,
        Bound::Excluded(&after) => after.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (first <= last).then_some((first, last))
}

fn read_entries(
    entries: &RwLock<Entries>,
) -> Result<std::sync::RwLockReadGuard<'_, Entries>, LogStoreError> {
    entries
        .read()
        .map_err(|poisoned| LogStoreError::EntriesUnavailable {
            reason: poisoned.to_string(),
        })
}

fn write_entries(
    entries: &RwLock<Entries>,
) -> Result<std::sync::RwLockWriteGuard<'_, Entries>, LogStoreError> {
    entries
        .write()
        .map_err(|poisoned| LogStoreError::EntriesUnavailable {
            reason: poisoned.to_string(),
        })
}

fn write_error(action: &'static str, path: &Path, source: io::Error) -> LogStoreError {
    LogStoreError::Write {
        action,
        path: path.to_owned(),
        source,
    }
}

fn remove_file(path: &Path) -> Result<(), LogStoreError> {
    std::fs::remove_file(path).map_err(|source| write_error("remove", path, source))
}

fn sync_dir(dir: &Path) -> Result<(), LogStoreError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| write_error("fsync the directory", dir, source))
}

/// `create_dir_all`, then fsync the parent of every directory it created,
/// so the new directories survive a crash.
fn create_dir_durably(dir: &Path) -> Result<(), LogStoreError> {
    let create_error = |path: &Path, source| LogStoreError::CreateDir {
        path: path.to_owned(),
        source,
    };
    let mut missing = Vec::new();
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        match std::fs::metadata(ancestor) {
            Ok(_) => break,
            Err(error) if error.kind() == io::ErrorKind::NotFound => missing.push(ancestor),
            Err(error) => return Err(create_error(ancestor, error)),
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| create_error(dir, source))?;
    for created in missing.into_iter().rev() {
        sync_dir(created.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// The JSON value in `path`, or `None` when there is no such file.
fn read_json_file<T: DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Option<T>, LogStoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LogStoreError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| LogStoreError::DecodeFile {
            path: path.to_owned(),
            what,
            source,
        })
}

/// A [`LogStoreError`] as openraft's error (which stops the Raft node).
fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &LogStoreError,
) -> StorageError<NodeId> {
    StorageError::from(StorageIOError::new(subject, verb, error))
}

impl RaftLogReader<ControllerTypes> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.entries(range)
            .map_err(|error| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &error))
    }
}

impl RaftLogReader<ControllerTypes> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.reader()
            .entries(range)
            .map_err(|error| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &error))
    }
}

impl RaftLogStorage<ControllerTypes> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<ControllerTypes>, StorageError<NodeId>> {
        self.log_state()
            .map_err(|error| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &error))
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.save_vote_durably(vote)
            .map_err(|error| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &error))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.save_committed_durably(committed)
            .map_err(|error| storage_error(ErrorSubject::Store, ErrorVerb::Write, &error))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<ControllerTypes>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.append_durably(entries.into_iter().collect()) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                let storage = storage_error(ErrorSubject::Logs, ErrorVerb::Write, &error);
                callback.log_io_completed(Err(io::Error::other(error)));
                Err(storage)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.truncate_durably(log_id.index)
            .map_err(|error| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, &error))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.purge_durably(log_id)
            .map_err(|error| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, &error))
    }
}
