//! A partition's consume queue: one fixed-size entry per stored batch.
//!
//! Entries live in files of `entries_per_file` entries,
//! `queue/<first entry index, 20 digits>.cq`, created sparse at full size and
//! memory-mapped (RocketMQ's ConsumeQueue). Entry `i` of the partition is slot
//! `i % entries_per_file` of file `i / entries_per_file`, so the i-th entry is
//! found without searching. Entries are sorted by base offset and by log
//! position, so lookup by offset is a binary search. `max_timestamp_ms` holds
//! the running maximum, which makes lookup by timestamp a binary search as well.
//!
//! Entry layout (32 bytes, little-endian):
//!
//! | bytes  | field              |
//! |--------|--------------------|
//! | 0..8   | base offset (i64)  |
//! | 8..16  | frame position (u64) in the shard's commit log |
//! | 16..20 | batch length (u32); 0 marks an empty slot |
//! | 20..24 | last offset delta (u32) |
//! | 24..32 | max timestamp so far (i64, ms) |
//!
//! The queue is derived data. Recovery truncates it back to the checkpointed
//! entry count and re-indexes from the commit log. Dropping the tail punches a
//! hole, so stale entries cannot reappear.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::MmapMut;
use thiserror::Error;

use crate::ids::{LogPosition, Offset};

pub const ENTRY_BYTES: usize = 32;
pub const QUEUE_FILE_SUFFIX: &str = ".cq";
/// Page size for clearing: whole pages are punched, the partial one zeroed.
const QUEUE_PAGE_BYTES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    pub base_offset: Offset,
    pub position: LogPosition,
    pub batch_len: u32,
    pub last_offset_delta: u32,
    pub max_timestamp_ms: i64,
}

impl QueueEntry {
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + i64::from(self.last_offset_delta))
    }

    pub fn next_offset(&self) -> Offset {
        Offset(self.last_offset().0 + 1)
    }

    fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[0..8].copy_from_slice(&self.base_offset.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.position.0.to_le_bytes());
        out[16..20].copy_from_slice(&self.batch_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.last_offset_delta.to_le_bytes());
        out[24..32].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<QueueEntry> {
        let field = |at: usize| -> [u8; 8] { bytes[at..at + 8].try_into().expect("8 bytes") };
        let batch_len = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
        if batch_len == 0 {
            return None;
        }
        Some(QueueEntry {
            base_offset: Offset(i64::from_le_bytes(field(0))),
            position: LogPosition(u64::from_le_bytes(field(8))),
            batch_len,
            last_offset_delta: u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes")),
            max_timestamp_ms: i64::from_le_bytes(field(24)),
        })
    }
}

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("consume queue file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "consume queue {dir} is missing file {missing}: the queue will be rebuilt from the commit log"
    )]
    Gap { dir: PathBuf, missing: PathBuf },
}

struct QueueFile {
    first_index: u64,
    path: PathBuf,
    file: Arc<File>,
    map: MmapMut,
}

pub struct ConsumeQueue {
    dir: PathBuf,
    entries_per_file: u64,
    files: Vec<QueueFile>,
    /// Index of the oldest entry still present (files before it were deleted).
    head_index: u64,
    /// Index one past the newest entry.
    tail_index: u64,
    /// Files written since the last [`ConsumeQueue::take_dirty_files`].
    dirty: Vec<Arc<File>>,
    last: Option<QueueEntry>,
}

impl ConsumeQueue {
    /// Open (or create empty) the queue in `dir`, trusting at most
    /// `trusted_entries` entries: later slots are cleared. Fails with
    /// [`QueueError::Gap`] if a file inside the trusted range is missing.
    pub fn open(
        dir: &Path,
        entries_per_file: u32,
        trusted_entries: u64,
    ) -> Result<ConsumeQueue, QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        let entries_per_file = u64::from(entries_per_file);
        let mut queue = ConsumeQueue {
            dir: dir.to_owned(),
            entries_per_file,
            files: Vec::new(),
            head_index: 0,
            tail_index: 0,
            dirty: Vec::new(),
            last: None,
        };
        for first_index in list_queue_files(dir)? {
            if first_index % entries_per_file != 0 {
                continue;
            }
            queue
                .files
                .push(map_file(dir, first_index, entries_per_file, false)?);
        }
        queue.check_contiguous()?;
        queue.head_index = queue.files.first().map_or(0, |file| file.first_index);
        let tail = queue.find_tail(trusted_entries);
        if tail <= queue.head_index {
            // Nothing trusted: start over at index 0 (indexes are internal).
            queue.clear_from(0)?;
            queue.head_index = 0;
            queue.tail_index = 0;
        } else {
            queue.clear_from(tail)?;
            queue.tail_index = tail;
        }
        queue.last = queue
            .tail_index
            .checked_sub(1)
            .and_then(|index| queue.get(index));
        Ok(queue)
    }

    fn check_contiguous(&self) -> Result<(), QueueError> {
        for pair in self.files.windows(2) {
            let expected = pair[0].first_index + self.entries_per_file;
            if pair[1].first_index != expected {
                return Err(QueueError::Gap {
                    dir: self.dir.clone(),
                    missing: queue_file_path(&self.dir, expected),
                });
            }
        }
        Ok(())
    }

    /// The end of the valid prefix, at most `trusted_entries`. Entries before
    /// a checkpoint are contiguous, so a binary search for the first empty slot
    /// works without touching every page.
    fn find_tail(&self, trusted_entries: u64) -> u64 {
        let Some(last_file) = self.files.last() else {
            return 0;
        };
        let limit = trusted_entries.min(last_file.first_index + self.entries_per_file);
        let mut low = self.head_index.min(limit);
        let mut high = limit;
        while low < high {
            let middle = low + (high - low) / 2;
            if self.get(middle).is_some() {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    pub fn head_index(&self) -> u64 {
        self.head_index
    }

    pub fn tail_index(&self) -> u64 {
        self.tail_index
    }

    pub fn is_empty(&self) -> bool {
        self.head_index == self.tail_index
    }

    pub fn last(&self) -> Option<QueueEntry> {
        self.last
    }

    pub fn first(&self) -> Option<QueueEntry> {
        if self.is_empty() {
            None
        } else {
            self.get(self.head_index)
        }
    }

    /// The entry at `index`, if present.
    pub fn get(&self, index: u64) -> Option<QueueEntry> {
        if index < self.head_index {
            return None;
        }
        let file = self.file_for(index)?;
        let slot = ((index - file.first_index) as usize) * ENTRY_BYTES;
        QueueEntry::decode(&file.map[slot..slot + ENTRY_BYTES])
    }

    fn file_for(&self, index: u64) -> Option<&QueueFile> {
        let first = self.files.first()?;
        let position = index.checked_sub(first.first_index)? / self.entries_per_file;
        self.files.get(usize::try_from(position).ok()?)
    }

    /// Make sure the file for the next entry exists, so the following
    /// [`ConsumeQueue::append`] cannot fail.
    pub fn reserve_next(&mut self) -> Result<(), QueueError> {
        let index = self.tail_index;
        let file_first = index - index % self.entries_per_file;
        if self
            .files
            .last()
            .is_none_or(|file| file.first_index != file_first)
        {
            let file = map_file(&self.dir, file_first, self.entries_per_file, true)?;
            if self.files.is_empty() {
                self.head_index = index;
            }
            self.files.push(file);
        }
        Ok(())
    }

    /// Append the next entry; offsets and positions must increase.
    pub fn append(&mut self, entry: QueueEntry) -> Result<(), QueueError> {
        if let Some(last) = self.last {
            assert!(
                entry.base_offset > last.last_offset(),
                "queue offsets must increase"
            );
            assert!(
                entry.position > last.position,
                "queue positions must increase"
            );
        }
        self.reserve_next()?;
        let index = self.tail_index;
        let file = self.files.last_mut().expect("file exists for the tail");
        assert_eq!(
            file.first_index,
            index - index % self.entries_per_file,
            "queue files are contiguous"
        );
        let slot = ((index - file.first_index) as usize) * ENTRY_BYTES;
        file.map[slot..slot + ENTRY_BYTES].copy_from_slice(&entry.encode());
        if !self
            .dirty
            .iter()
            .any(|dirty| Arc::ptr_eq(dirty, &file.file))
        {
            self.dirty.push(Arc::clone(&file.file));
        }
        self.tail_index += 1;
        self.last = Some(entry);
        Ok(())
    }

    /// Index of the first entry whose last offset is >= `offset` (the batch
    /// holding `offset`, or the next one after a gap); `tail_index` if none.
    pub fn search_offset(&self, offset: Offset) -> u64 {
        self.partition_point(|entry| entry.last_offset() < offset)
    }

    /// Index of the first entry whose running max timestamp is >= `timestamp_ms`.
    pub fn search_timestamp(&self, timestamp_ms: i64) -> u64 {
        self.partition_point(|entry| entry.max_timestamp_ms < timestamp_ms)
    }

    /// Number of entries (from the head) at positions below `position`.
    pub fn count_below(&self, position: LogPosition) -> u64 {
        self.partition_point(|entry| entry.position < position)
    }

    fn partition_point(&self, before: impl Fn(&QueueEntry) -> bool) -> u64 {
        let (mut low, mut high) = (self.head_index, self.tail_index);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.get(middle) {
                Some(entry) if before(&entry) => low = middle + 1,
                _ => high = middle,
            }
        }
        low
    }

    /// Drop entries from `index` on (recovery), clearing their slots.
    pub fn truncate(&mut self, index: u64) -> Result<(), QueueError> {
        let index = index.max(self.head_index);
        if index >= self.tail_index {
            return Ok(());
        }
        self.clear_from(index)?;
        self.tail_index = index;
        self.last = index.checked_sub(1).and_then(|last| self.get(last));
        Ok(())
    }

    /// Clear every slot from `index` on: delete files that start at or after
    /// it, zero the partial page in the last file and punch out the rest.
    fn clear_from(&mut self, index: u64) -> Result<(), QueueError> {
        while let Some(file) = self.files.last() {
            if file.first_index < index {
                break;
            }
            let file = self.files.pop().expect("checked above");
            drop(file.map);
            std::fs::remove_file(&file.path).map_err(|source| io_error(&file.path, source))?;
        }
        let Some(file) = self.files.last_mut() else {
            return Ok(());
        };
        let start = ((index - file.first_index) as usize) * ENTRY_BYTES;
        let map_len = file.map.len();
        let page_end = (start.div_ceil(QUEUE_PAGE_BYTES) * QUEUE_PAGE_BYTES).min(map_len);
        file.map[start..page_end].fill(0);
        if page_end < map_len {
            punch_hole(&file.file, page_end as u64, (map_len - page_end) as u64)
                .map_err(|source| io_error(&file.path, source))?;
        }
        Ok(())
    }

    /// Delete whole files whose entries all end before `offset` (retention).
    /// Returns the number of entries removed from the head.
    pub fn drop_files_before(&mut self, offset: Offset) -> Result<u64, QueueError> {
        let mut removed = 0;
        while self.files.len() > 1 {
            let next_first = self.files[1].first_index;
            let Some(last_in_first) = self.get(next_first - 1) else {
                break;
            };
            if last_in_first.last_offset() >= offset {
                break;
            }
            let file = self.files.remove(0);
            drop(file.map);
            std::fs::remove_file(&file.path).map_err(|source| io_error(&file.path, source))?;
            removed += next_first - self.head_index;
            self.head_index = next_first;
        }
        Ok(removed)
    }

    /// Delete every file (the partition is being deleted or rebuilt).
    pub fn destroy(self) -> Result<(), QueueError> {
        for file in self.files {
            drop(file.map);
            std::fs::remove_file(&file.path).map_err(|source| io_error(&file.path, source))?;
        }
        Ok(())
    }

    /// Files written since the last call: what a checkpoint must fsync.
    pub fn take_dirty_files(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.dirty)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn queue_file_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{QUEUE_FILE_SUFFIX}"))
}

fn list_queue_files(dir: &Path) -> Result<Vec<u64>, QueueError> {
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| io_error(dir, source))? {
        let name = entry.map_err(|source| io_error(dir, source))?.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|name| name.strip_suffix(QUEUE_FILE_SUFFIX))
        else {
            continue;
        };
        if let Ok(index) = stem.parse::<u64>() {
            indexes.push(index);
        }
    }
    indexes.sort_unstable();
    Ok(indexes)
}

fn map_file(
    dir: &Path,
    first_index: u64,
    entries_per_file: u64,
    create: bool,
) -> Result<QueueFile, QueueError> {
    let path = queue_file_path(dir, first_index);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(&path)
        .map_err(|source| io_error(&path, source))?;
    let size = entries_per_file * ENTRY_BYTES as u64;
    // Sparse: disk blocks are allocated only as entries are written.
    file.set_len(size)
        .map_err(|source| io_error(&path, source))?;
    // SAFETY: the data directory is locked by this process (see data_dir), so
    // no other process truncates or writes this file while it is mapped, and
    // this queue never shrinks a file it has mapped.
    let map = unsafe { MmapMut::map_mut(&file) }.map_err(|source| io_error(&path, source))?;
    Ok(QueueFile {
        first_index,
        path,
        file: Arc::new(file),
        map,
    })
}

fn punch_hole(file: &File, offset: u64, length: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate only reads its integer arguments; the fd is open.
    let status = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            length as libc::off_t,
        )
    };
    if status == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return Ok(());
    }
    Err(error)
}

fn io_error(path: &Path, source: io::Error) -> QueueError {
    QueueError::Io {
        path: path.to_owned(),
        source,
    }
}
