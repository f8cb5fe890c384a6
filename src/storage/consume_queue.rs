//! A partition's consume queue: one fixed-size entry per stored batch.
//!
//! Entries live in files of `entries` slots each,
//! `<first entry index, 20 digits>.cq` in the partition's directory, created
//! sparse at full size and memory-mapped (RocketMQ's ConsumeQueue); the file
//! format is in [`super::queue_file`], the entry format in
//! [`super::queue_entry`]. Entry `i` of the partition is slot `i % entries`
//! of file `i / entries`, so the i-th entry is found without searching.
//! Entries are sorted by base offset and by log position, so lookup by
//! offset is a binary search. `max_timestamp_ms` holds the running maximum,
//! which makes lookup by timestamp a binary search as well.
//!
//! Every entry carries a CRC. A damaged entry makes the lookup that meets it
//! fail with [`QueueError::CorruptEntry`]. Opening a queue verifies every
//! entry it is asked to trust and ends the queue before the first damaged
//! (or empty) one, so the next start re-indexes from there out of the commit
//! log ([`ConsumeQueue::damage_found_at_open`] says where).
//!
//! The queue is derived data. Recovery truncates it back to the checkpointed
//! entry count and re-indexes from the commit log. Dropping the tail punches a
//! hole, so stale entries cannot reappear.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::preallocate::Allocation;
pub use super::queue_entry::{ENTRY_BYTES, EntryError, QueueEntry};
pub use super::queue_file::{QUEUE_FILE_SUFFIX, queue_file_path};
use super::queue_file::{QueueFile, QueueReservation};
use crate::ids::{LogPosition, Offset};

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("consume queue file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no space to extend consume queue file {path}: {source}; appends are refused (retriable) \
         until space is freed"
    )]
    NoSpace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "consume queue {dir} is missing file {missing}: the queue will be rebuilt from the commit log"
    )]
    Gap { dir: PathBuf, missing: PathBuf },
    #[error(
        "consume queue file {path} is not usable: {reason}; the queue will be rebuilt from the commit log"
    )]
    Format { path: PathBuf, reason: String },
    #[error(
        "consume queue file {path}: entry {index} is damaged ({error}); reads that reach it fail \
         until a restart re-indexes the partition from the commit log"
    )]
    CorruptEntry {
        path: PathBuf,
        index: u64,
        error: EntryError,
    },
}

impl QueueError {
    pub(super) fn io(path: &Path, source: io::Error) -> QueueError {
        QueueError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// An error while allocating or writing: ENOSPC (and EDQUOT) become
    /// [`QueueError::NoSpace`], which appends report as retriable.
    pub(super) fn from_write(path: &Path, source: io::Error) -> QueueError {
        match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => QueueError::NoSpace {
                path: path.to_owned(),
                source,
            },
            _ => QueueError::io(path, source),
        }
    }

    /// The index of a damaged entry, if that is what this error is.
    pub fn corrupt_index(&self) -> Option<u64> {
        match self {
            QueueError::CorruptEntry { index, .. } => Some(*index),
            _ => None,
        }
    }
}

pub struct ConsumeQueue {
    dir: PathBuf,
    /// Entries per file: from the existing files' headers, else the setting.
    entries_per_file: u64,
    files: Vec<QueueFile>,
    /// Index of the oldest entry still present (files before it were deleted).
    head_index: u64,
    /// Index one past the newest entry.
    tail_index: u64,
    /// Files written since the last [`ConsumeQueue::take_dirty_files`].
    dirty: Vec<PathBuf>,
    /// Reservations [`ConsumeQueue::reserve_next`] made itself, on the
    /// caller's thread, because none made ahead covered the next entry.
    reserved_in_line: u64,
    last: Option<QueueEntry>,
    /// The first damaged entry the open met among those it was asked to
    /// trust; the queue ends before it.
    damaged_at_open: Option<DamagedEntry>,
}

/// A damaged entry found by [`ConsumeQueue::open`]: where it is and why its
/// bytes are not an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedEntry {
    pub path: PathBuf,
    pub index: u64,
    pub error: EntryError,
}

impl ConsumeQueue {
    /// Open (or create empty) the queue in `dir`, trusting at most
    /// `trusted_entries` entries: each is verified (CRC and fields), the
    /// queue ends before the first damaged or empty one, and later slots are
    /// cleared. A new queue gets `entries_per_file` slots per file; an
    /// existing one keeps what its files record. Fails with
    /// [`QueueError::Gap`] if a file inside the trusted range is missing,
    /// [`QueueError::Format`] if a file is of another layout or its header
    /// is damaged (the caller rebuilds the queue).
    pub fn open(
        dir: &Path,
        entries_per_file: u32,
        trusted_entries: u64,
    ) -> Result<ConsumeQueue, QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::io(dir, source))?;
        let mut files = Vec::new();
        for first_index in list_queue_files(dir)? {
            files.push(QueueFile::open(dir, first_index)?);
        }
        let entries_per_file = match files.first() {
            Some(file) => file.entries(),
            None => u64::from(entries_per_file),
        };
        assert!(entries_per_file > 0, "a queue file holds entries");
        if let Some(odd) = files.iter().find(|file| file.entries() != entries_per_file) {
            return Err(QueueError::Format {
                path: odd.path.clone(),
                reason: format!(
                    "holds {} entries where the queue's other files hold {entries_per_file}",
                    odd.entries()
                ),
            });
        }
        let mut queue = ConsumeQueue {
            dir: dir.to_owned(),
            entries_per_file,
            files,
            head_index: 0,
            tail_index: 0,
            dirty: Vec::new(),
            reserved_in_line: 0,
            last: None,
            damaged_at_open: None,
        };
        queue.check_contiguous()?;
        queue.head_index = queue.files.first().map_or(0, |file| file.first_index);
        let (tail, damaged) = queue.verify_prefix(trusted_entries);
        queue.damaged_at_open = damaged;
        if tail <= queue.head_index {
            // Nothing trusted: start over at index 0 (indexes are internal).
            queue.clear_from(0)?;
            queue.head_index = 0;
            queue.tail_index = 0;
        } else {
            queue.clear_from(tail)?;
            queue.tail_index = tail;
        }
        if let Some(file) = queue.files.last_mut() {
            let slot = queue.tail_index.saturating_sub(file.first_index);
            file.set_tail(slot.min(queue.entries_per_file));
        }
        queue.last = match queue.tail_index.checked_sub(1) {
            Some(index) => queue.get(index)?,
            None => None,
        };
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

    /// The end of the valid prefix, at most `trusted_entries`, and the
    /// damaged entry that ended it, if one did. Every entry is checked (a
    /// CRC over 40 bytes, in file order): a binary search for the first
    /// empty slot would step over damage in the middle, which then failed
    /// every read that reached it while each restart trusted it again
    /// (issue 12). An empty slot inside the trusted range ends the prefix
    /// too: the entries after it are re-indexed rather than left behind a
    /// hole.
    fn verify_prefix(&self, trusted_entries: u64) -> (u64, Option<DamagedEntry>) {
        let Some(last_file) = self.files.last() else {
            return (0, None);
        };
        let limit = trusted_entries.min(last_file.first_index + self.entries_per_file);
        for file in &self.files {
            let slots = limit
                .saturating_sub(file.first_index)
                .min(self.entries_per_file);
            for slot in 0..slots {
                match file.entry(slot) {
                    Ok(Some(_)) => {}
                    Ok(None) => return (file.first_index + slot, None),
                    Err(error) => {
                        let damaged = DamagedEntry {
                            path: file.path.clone(),
                            index: file.first_index + slot,
                            error,
                        };
                        return (damaged.index, Some(damaged));
                    }
                }
            }
        }
        (limit.max(self.head_index), None)
    }

    /// The first damaged entry [`ConsumeQueue::open`] met among those it was
    /// asked to trust (the queue ends before it), for recovery to report.
    pub fn damage_found_at_open(&self) -> Option<&DamagedEntry> {
        self.damaged_at_open.as_ref()
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

    pub fn first(&self) -> Result<Option<QueueEntry>, QueueError> {
        if self.is_empty() {
            Ok(None)
        } else {
            self.get(self.head_index)
        }
    }

    /// The entry at `index`: `Ok(None)` when there is none (before the head,
    /// past the files, or an empty slot), an error when it is damaged.
    pub fn get(&self, index: u64) -> Result<Option<QueueEntry>, QueueError> {
        if index < self.head_index {
            return Ok(None);
        }
        let Some(file) = self.file_for(index) else {
            return Ok(None);
        };
        file.entry(index - file.first_index)
            .map_err(|error| QueueError::CorruptEntry {
                path: file.path.clone(),
                index,
                error,
            })
    }

    fn file_for(&self, index: u64) -> Option<&QueueFile> {
        let first = self.files.first()?;
        let position = index.checked_sub(first.first_index)? / self.entries_per_file;
        self.files.get(usize::try_from(position).ok()?)
    }

    /// Make the file for the next entry and the blocks of its page, when
    /// they are missing, without reserving ahead: a new partition's first
    /// file, made with it (`partition_create.rs`).
    pub fn prepare_next(&mut self) -> Result<(), QueueError> {
        let index = self.tail_index;
        self.open_tail_file()?;
        let file = self.files.last_mut().expect("file exists for the tail");
        file.reserve_page_of(index - file.first_index)
    }

    /// Create the file for the next entry if it is missing.
    fn open_tail_file(&mut self) -> Result<(), QueueError> {
        let index = self.tail_index;
        let file_first = index - index % self.entries_per_file;
        if self
            .files
            .last()
            .is_none_or(|file| file.first_index != file_first)
        {
            let file = QueueFile::create(&self.dir, file_first, self.entries_per_file)?;
            if self.files.is_empty() {
                self.head_index = index;
            }
            self.files.push(file);
        }
        Ok(())
    }

    /// Make sure the file for the next entry exists and has blocks for it,
    /// so the following [`ConsumeQueue::append`] cannot fail. A full disk is
    /// [`QueueError::NoSpace`].
    pub fn reserve_next(&mut self) -> Result<(), QueueError> {
        let index = self.tail_index;
        self.open_tail_file()?;
        let file = self.files.last_mut().expect("file exists for the tail");
        if file.reserve_slot(index - file.first_index)? {
            self.reserved_in_line += 1;
        }
        Ok(())
    }

    /// How many reservations [`ConsumeQueue::reserve_next`] had to make
    /// itself (creating the queue's files included).
    pub fn reserved_in_line(&self) -> u64 {
        self.reserved_in_line
    }

    /// Blocks to reserve off the shard thread ahead of the next entry, when
    /// they run low ([`QueueFile::reservation_ahead`]); hand the outcome to
    /// [`ConsumeQueue::reservation_done`].
    pub fn reservation_ahead(&mut self) -> Option<QueueReservation> {
        let index = self.tail_index;
        let file = self.files.last_mut()?;
        let slot = index.checked_sub(file.first_index)?;
        if slot >= self.entries_per_file {
            return None;
        }
        file.reservation_ahead(slot)
    }

    /// `reservation` finished with `result` (its file may be gone).
    pub fn reservation_done(
        &mut self,
        reservation: &QueueReservation,
        result: &std::io::Result<Allocation>,
    ) {
        if let Some(file) = self
            .files
            .iter_mut()
            .find(|file| file.first_index == reservation.first_index)
        {
            file.reservation_done(reservation, result);
        }
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
            assert!(
                entry.max_timestamp_ms >= last.max_timestamp_ms,
                "queue timestamps are a running maximum"
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
        file.write_slot(index - file.first_index, &entry)?;
        if !self.dirty.contains(&file.path) {
            self.dirty.push(file.path.clone());
        }
        self.tail_index += 1;
        self.last = Some(entry);
        Ok(())
    }

    /// Index of the first entry whose last offset is >= `offset` (the batch
    /// holding `offset`, or the next one after a gap); `tail_index` if none.
    pub fn search_offset(&self, offset: Offset) -> Result<u64, QueueError> {
        self.partition_point(|entry| entry.last_offset() < offset)
    }

    /// Index of the first entry whose running max timestamp is >= `timestamp_ms`.
    pub fn search_timestamp(&self, timestamp_ms: i64) -> Result<u64, QueueError> {
        self.partition_point(|entry| entry.max_timestamp_ms < timestamp_ms)
    }

    /// Number of entries (from the head) at positions below `position`.
    pub fn count_below(&self, position: LogPosition) -> Result<u64, QueueError> {
        self.partition_point(|entry| entry.position < position)
    }

    fn partition_point(&self, before: impl Fn(&QueueEntry) -> bool) -> Result<u64, QueueError> {
        let (mut low, mut high) = (self.head_index, self.tail_index);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.get(middle)? {
                Some(entry) if before(&entry) => low = middle + 1,
                _ => high = middle,
            }
        }
        Ok(low)
    }

    /// Drop entries from `index` on (recovery), clearing their slots.
    pub fn truncate(&mut self, index: u64) -> Result<(), QueueError> {
        let index = index.max(self.head_index);
        if index >= self.tail_index {
            return Ok(());
        }
        self.clear_from(index)?;
        self.tail_index = index;
        self.last = match index.checked_sub(1) {
            Some(last) => self.get(last)?,
            None => None,
        };
        Ok(())
    }

    /// Clear every slot from `index` on: delete files that start at or after
    /// it and empty the rest of the last file.
    fn clear_from(&mut self, index: u64) -> Result<(), QueueError> {
        while let Some(file) = self.files.last() {
            if file.first_index < index {
                break;
            }
            self.files.pop().expect("checked above").remove()?;
        }
        let Some(file) = self.files.last_mut() else {
            return Ok(());
        };
        file.clear_from(index - file.first_index)
    }

    /// Delete whole files whose entries all end before `offset` (retention).
    /// Returns the number of entries removed from the head.
    pub fn drop_files_before(&mut self, offset: Offset) -> Result<u64, QueueError> {
        let mut removed = 0;
        while self.files.len() > 1 {
            let next_first = self.files[1].first_index;
            let Some(last_in_first) = self.get(next_first - 1)? else {
                break;
            };
            if last_in_first.last_offset() >= offset {
                break;
            }
            self.files.remove(0).remove()?;
            removed += next_first - self.head_index;
            self.head_index = next_first;
        }
        Ok(removed)
    }

    /// Delete every file (the partition is being deleted or rebuilt).
    pub fn destroy(self) -> Result<(), QueueError> {
        for file in self.files {
            file.remove()?;
        }
        Ok(())
    }

    /// The paths of the files written since the last call: what a
    /// checkpoint must fsync (queue files are not kept open).
    pub fn take_dirty_files(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.dirty)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn list_queue_files(dir: &Path) -> Result<Vec<u64>, QueueError> {
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| QueueError::io(dir, source))? {
        let name = entry
            .map_err(|source| QueueError::io(dir, source))?
            .file_name();
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::storage::queue_file::HEADER_BYTES;

    fn entry(index: u64) -> QueueEntry {
        QueueEntry {
            base_offset: Offset(index as i64 * 3),
            position: LogPosition(index * 1000),
            batch_len: 900,
            last_offset_delta: 2,
            max_timestamp_ms: 1_700_000_000_000 + index as i64,
            attributes: 0,
        }
    }

    /// Flip `byte`'s worth of bits at `at` bytes into entry `index` of the
    /// first file, as disk damage would.
    fn damage(dir: &Path, index: u64, at: u64, byte: u8) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(queue_file_path(dir, 0))
            .unwrap();
        let offset = HEADER_BYTES as u64 + index * ENTRY_BYTES as u64 + at;
        file.write_all_at(&[byte], offset).unwrap();
    }

    fn filled(dir: &Path, entries_per_file: u32, count: u64) -> ConsumeQueue {
        let mut queue = ConsumeQueue::open(dir, entries_per_file, 0).unwrap();
        for index in 0..count {
            queue.append(entry(index)).unwrap();
        }
        queue
    }

    #[test]
    fn entries_per_file_comes_from_the_files_not_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), 1024, 3000));
        // Issue 12: a changed setting used to reinterpret existing files.
        let mut queue = ConsumeQueue::open(dir.path(), 4096, 3000).unwrap();
        assert_eq!(queue.tail_index(), 3000);
        for index in [0, 1023, 1024, 2999] {
            assert_eq!(queue.get(index).unwrap(), Some(entry(index)));
        }
        for index in 3000..3100 {
            queue.append(entry(index)).unwrap();
        }
        assert!(queue_file_path(dir.path(), 3072).exists());
        assert_eq!(queue.search_offset(Offset(3050 * 3)).unwrap(), 3050);
    }

    #[test]
    fn a_damaged_entry_fails_lookups_while_the_queue_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let queue = filled(dir.path(), 1024, 600);
        // Damage under a mapped queue, as a disk would do it.
        let damaged = 100u64;
        damage(dir.path(), damaged, 9, 0xee);
        let error = queue.get(damaged).unwrap_err();
        assert_eq!(error.corrupt_index(), Some(damaged), "{error}");
        assert!(queue.search_offset(Offset(damaged as i64 * 3)).is_err());
    }

    /// Issue 12: the open used to binary-search for the tail, stepped over
    /// damage in the middle and trusted it again at every start, so reads
    /// that reached it failed forever.
    #[test]
    fn a_damaged_entry_anywhere_in_the_trusted_range_ends_the_queue_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), 1024, 3000));
        // 3 and 1500 are not among the slots a binary search would probe.
        for damaged in [1500u64, 3] {
            let file_first = damaged - damaged % 1024;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(queue_file_path(dir.path(), file_first))
                .unwrap();
            let at = HEADER_BYTES as u64 + (damaged - file_first) * ENTRY_BYTES as u64 + 5;
            file.write_all_at(&[0x5a], at).unwrap();
            let queue = ConsumeQueue::open(dir.path(), 1024, 3000).unwrap();
            assert_eq!(queue.tail_index(), damaged);
            assert_eq!(queue.last(), Some(entry(damaged - 1)));
            let found = queue.damage_found_at_open().unwrap();
            assert_eq!(found.index, damaged);
            assert_eq!(found.path, queue_file_path(dir.path(), file_first));
            assert!(matches!(found.error, EntryError::Checksum { .. }));
            assert_eq!(
                queue.get(damaged).unwrap(),
                None,
                "the damaged slot is cleared"
            );
        }
        let queue = ConsumeQueue::open(dir.path(), 1024, 3000).unwrap();
        assert_eq!(queue.tail_index(), 3);
        assert_eq!(queue.damage_found_at_open(), None);
    }

    #[test]
    fn an_empty_slot_inside_the_trusted_range_ends_the_queue_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), 1024, 600));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(queue_file_path(dir.path(), 0))
            .unwrap();
        let at = HEADER_BYTES as u64 + 250 * ENTRY_BYTES as u64;
        file.write_all_at(&[0; ENTRY_BYTES], at).unwrap();
        let queue = ConsumeQueue::open(dir.path(), 1024, 600).unwrap();
        assert_eq!(queue.tail_index(), 250);
        assert_eq!(queue.damage_found_at_open(), None);
        assert_eq!(
            queue.get(251).unwrap(),
            None,
            "entries after the hole are cleared"
        );
    }

    #[test]
    fn a_damaged_entry_the_open_meets_ends_the_queue_there() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), 1024, 600));
        // Slot 300 is the binary search's first probe of 600 entries.
        damage(dir.path(), 300, 0, 0xee);
        let queue = ConsumeQueue::open(dir.path(), 1024, 600).unwrap();
        assert_eq!(queue.tail_index(), 300);
        assert_eq!(queue.get(300).unwrap(), None, "the damaged slot is cleared");
    }

    #[test]
    fn a_damaged_last_trusted_entry_is_cut_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), 1024, 50));
        damage(dir.path(), 49, 0, 1);
        let queue = ConsumeQueue::open(dir.path(), 1024, 50).unwrap();
        assert_eq!(queue.tail_index(), 49);
        assert_eq!(queue.last(), Some(entry(48)));
    }

    #[test]
    fn files_of_the_old_layout_are_refused_for_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        // A version-1 file: 32-byte entries from byte 0, no header.
        std::fs::write(queue_file_path(dir.path(), 0), vec![7u8; 32 * 1024]).unwrap();
        let error = ConsumeQueue::open(dir.path(), 1024, 10).err().unwrap();
        assert!(matches!(error, QueueError::Format { .. }), "{error}");
    }

    #[test]
    fn entries_past_the_trusted_count_are_cleared_and_never_reappear() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), 1024, 900));
        let queue = ConsumeQueue::open(dir.path(), 1024, 100).unwrap();
        assert_eq!(queue.tail_index(), 100);
        assert_eq!(queue.get(500).unwrap(), None);
        drop(queue);
        let queue = ConsumeQueue::open(dir.path(), 1024, 900).unwrap();
        assert_eq!(queue.tail_index(), 100, "cleared entries came back");
        let mut queue = queue;
        queue.append(entry(100)).unwrap();
        assert_eq!(queue.get(100).unwrap(), Some(entry(100)));
    }
}
