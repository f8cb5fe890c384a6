//! The timer index of one shard: delayed records by due time (ARCHITECTURE.md,
//! "Delayed delivery, retry and dead letters").
//!
//! Entries ([`TimerEntry`], 64 bytes) are appended to entry files of
//! `entries_per_file` entries each, `<first index>.te` in the timer
//! directory, and never move. The wheel is a ring of `slots` slots of
//! `slot_ms` each, in memory (16 bytes a slot, whatever the number of
//! pending records): a slot holds its absolute slot number (time /
//! `slot_ms`) and its newest entry, and a slot's entries form a list
//! through their `previous` field, on disk. An entry is listed in its due
//! slot, or the cursor's slot when that is later (due already), or the
//! window's last slot when its due slot lies past the window; there, when
//! the slot comes up, it is inserted again (RocketMQ 5's timer roll): the
//! caller takes such entries ([`TimerIndex::take_again`]), records that in
//! the log and calls [`TimerIndex::reinsert`], so that every copy of the
//! log numbers its entries alike.
//!
//! The index is derived state. Its checkpoint ([`TimerCheckpoint`]) is the
//! entry count and the cursor, taken with the consume queues' at one
//! indexed log position after [`TimerIndex::sync`]; [`TimerIndex::open`]
//! truncates the entries to the count, rebuilds the ring by reading the
//! entry files in order (rewriting any list link that differs, as after a
//! damaged entry), and treats as pending again every entry done at or past
//! the indexed position (its delivery or roll frame may be lost) or
//! reinserted as an entry past the count. Entries listed in slots before
//! the cursor that are still pending (handed out, not yet delivered) are due
//! at once. The frames after the indexed position are then replayed into it
//! by the caller.
//!
//! An entry file whose entries are all done for good is *retired*
//! ([`TimerIndex::retire`], after a checkpoint): cut to zero bytes, which
//! the open reads as "nothing pending here" and skips, so the directory and
//! the open's reading grow with the pending entries, not with every record
//! ever delayed. For good means: the file is full and below the
//! checkpoint's entry count, every entry was delivered or moved by a frame
//! before the checkpoint's log position, or listed again as an entry below
//! its count, or dropped, and every entry's slot lies before its cursor (so
//! no slot list still to be walked runs through it).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::entry::{Done, ENTRY_BYTES, TimerEntry};
use crate::ids::{LogPosition, PartitionId};

const FILE_SUFFIX: &str = ".te";

#[derive(Debug, Error)]
pub enum TimerError {
    #[error("timer index {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> TimerError + '_ {
    move |source| TimerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The geometry of a timer index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerGeometry {
    /// Milliseconds of one wheel slot.
    pub slot_ms: i64,
    /// Slots in the wheel: the window is `slots * slot_ms`.
    pub slots: u64,
    /// Entries per entry file.
    pub entries_per_file: u64,
}

/// What a checkpoint records of the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerCheckpoint {
    /// Entries written.
    pub entries: u64,
    /// The next absolute slot to load.
    pub cursor: i64,
}

/// What [`TimerIndex::open`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries not done.
    pub pending: u64,
    /// Entries that failed their CRC (their records are no longer timed).
    pub damaged: u64,
    /// List links and done fields rewritten.
    pub repaired: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct RingSlot {
    absolute: i64,
    /// The newest entry's index + 1; 0 for none.
    newest: u64,
}

pub struct TimerIndex {
    dir: PathBuf,
    geometry: TimerGeometry,
    files: BTreeMap<u64, Arc<File>>,
    /// First indexes of files written since the last sync.
    dirty: BTreeSet<u64>,
    count: u64,
    ring: Vec<RingSlot>,
    cursor: i64,
    /// Loaded entries waiting for their due time, by (due, index).
    current: BTreeMap<(i64, u64), TimerEntry>,
    /// Loaded entries due past the slot they were listed in, waiting to be
    /// inserted again, by index.
    again: BTreeMap<u64, TimerEntry>,
    pending: u64,
    /// Bytes of the pending entries' records.
    pending_bytes: u64,
    /// Pending entries per [`PIN_BUCKET_BYTES`] of log where their timer
    /// batch lies: what retention must keep.
    pinned: BTreeMap<u64, u64>,
    /// Pending entries by partition and due minute (its first epoch
    /// millisecond; the hour's, flagged `true`, for entries counted when
    /// [`DUE_MINUTES_MAX`] pairs were counted already): what `sluice
    /// delays` shows.
    by_due_minute: BTreeMap<(PartitionId, i64, bool), u64>,
    /// What retiring needs to know of each entry file, by first index.
    file_stats: BTreeMap<u64, FileStats>,
}

/// The entries of one entry file, for [`TimerIndex::retire`].
#[derive(Clone, Copy, Debug, Default)]
struct FileStats {
    entries: u64,
    pending: u64,
    /// The latest slot an entry was listed in.
    latest_slot: i64,
    /// Past the latest log position an entry was delivered or moved at.
    done_before: u64,
    /// Past the latest index an entry was listed again as.
    newer_before: u64,
}

impl FileStats {
    /// Count entry `entry` (as read or written).
    fn count(&mut self, entry: &TimerEntry) {
        self.entries += 1;
        self.latest_slot = self.latest_slot.max(entry.slot);
        match entry.done {
            None => self.pending += 1,
            Some(done) => self.done(done),
        }
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Delivered(at) | Done::Moved(at) => {
                self.done_before = self.done_before.max(at.0 + 1);
            }
            Done::Reinserted(newer) => self.newer_before = self.newer_before.max(newer + 1),
            Done::Dropped => {}
        }
    }
}

/// The grain of [`TimerIndex::pending_by_due_minute`], milliseconds.
pub const DUE_MINUTE_MS: i64 = 60_000;
/// The most (partition, due minute) pairs counted one by one (about 5 MB);
/// past it, entries of a pair not counted yet are counted by due hour, so
/// this memory stays bounded however the pending records spread.
const DUE_MINUTES_MAX: usize = 100_000;
const DUE_HOUR_MS: i64 = 3_600_000;

/// The grain (bytes of log) at which pending entries pin the log.
pub const PIN_BUCKET_BYTES: u64 = 1 << 20;

impl TimerIndex {
    /// Open (or create) the index in `dir` as of `checkpoint`, taken at
    /// log position `indexed`; see the module doc.
    pub fn open(
        dir: &Path,
        geometry: TimerGeometry,
        checkpoint: TimerCheckpoint,
        indexed: LogPosition,
    ) -> Result<(TimerIndex, OpenReport), TimerError> {
        assert!(geometry.slot_ms > 0 && geometry.slots > 0 && geometry.entries_per_file > 0);
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut index = TimerIndex {
            dir: dir.to_owned(),
            geometry,
            files: BTreeMap::new(),
            dirty: BTreeSet::new(),
            count: checkpoint.entries,
            ring: vec![RingSlot::default(); geometry.slots as usize],
            cursor: checkpoint.cursor,
            current: BTreeMap::new(),
            again: BTreeMap::new(),
            pending: 0,
            pending_bytes: 0,
            pinned: BTreeMap::new(),
            by_due_minute: BTreeMap::new(),
            file_stats: BTreeMap::new(),
        };
        let retired = index.open_files()?;
        let mut report = OpenReport::default();
        let per_file = index.geometry.entries_per_file;
        // From the first file on, every file's entries but a retired
        // one's: a file missing in between is damage, read entry by entry
        // as such.
        let first = index
            .files
            .keys()
            .chain(&retired)
            .min()
            .copied()
            .unwrap_or(index.count);
        let ranges: Vec<std::ops::Range<u64>> = (first..index.count)
            .step_by(per_file as usize)
            .filter(|first| !retired.contains(first))
            .map(|first| first..(first + per_file).min(index.count))
            .collect();
        for at in ranges.into_iter().flatten() {
            let mut entry = match index.read(at)? {
                Ok(entry) => entry,
                Err(_) => {
                    report.damaged += 1;
                    continue;
                }
            };
            let mut rewrite = false;
            let lost = match entry.done {
                Some(Done::Delivered(position) | Done::Moved(position)) => position >= indexed,
                Some(Done::Reinserted(newer)) => newer >= index.count,
                Some(Done::Dropped) | None => false,
            };
            if lost {
                entry.done = None;
                rewrite = true;
            }
            if entry.slot >= index.cursor {
                let expected = index.link(entry.slot, at);
                if entry.previous != expected {
                    entry.previous = expected;
                    rewrite = true;
                }
            } else if entry.done.is_none() {
                index.load_one(entry.slot, at, entry);
            }
            if entry.done.is_none() {
                index.pending += 1;
                index.pin(&entry, 1);
            }
            index.stats(at).count(&entry);
            if rewrite {
                report.repaired += 1;
                index.write(at, &entry)?;
            }
        }
        report.pending = index.pending;
        Ok((index, report))
    }

    /// The entry files on disk; those wholly past the count go, and the
    /// last is cut to the count.
    /// Returns the first indexes of the retired files (left empty).
    fn open_files(&mut self) -> Result<BTreeSet<u64>, TimerError> {
        let mut retired_files = BTreeSet::new();
        let listing = std::fs::read_dir(&self.dir).map_err(io_error(&self.dir))?;
        for item in listing {
            let item = item.map_err(io_error(&self.dir))?;
            let name = item.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|name| name.strip_suffix(FILE_SUFFIX))
                .and_then(|stem| stem.parse::<u64>().ok())
            else {
                continue;
            };
            let path = item.path();
            if first >= self.count {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
                continue;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_error(&path))?;
            let retired = first + self.geometry.entries_per_file <= self.count
                && file.metadata().map_err(io_error(&path))?.len() == 0;
            if retired {
                retired_files.insert(first);
                continue;
            }
            let kept = (self.count - first).min(self.geometry.entries_per_file);
            file.set_len(kept * ENTRY_BYTES as u64)
                .map_err(io_error(&path))?;
            self.files.insert(first, Arc::new(file));
        }
        Ok(retired_files)
    }

    /// Entries not done.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Where the oldest pending entry's timer batch lies, rounded down to
    /// [`PIN_BUCKET_BYTES`]: the log from here on must be kept.
    pub fn pinned_from(&self) -> Option<LogPosition> {
        self.pinned
            .keys()
            .next()
            .map(|bucket| LogPosition(bucket * PIN_BUCKET_BYTES))
    }

    /// Bytes of the pending entries' records.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// The due time of the oldest loaded entry not done (handed out
    /// entries are not counted until put back).
    pub fn oldest_due(&self) -> Option<i64> {
        self.current.keys().next().map(|(due, _)| *due)
    }

    /// Count `entry` as pending (`delta` 1) or no longer (-1).
    fn pin(&mut self, entry: &TimerEntry, delta: i64) {
        let bytes = u64::from(entry.record_bytes);
        self.pending_bytes = if delta > 0 {
            self.pending_bytes + bytes
        } else {
            self.pending_bytes.saturating_sub(bytes)
        };
        let bucket = entry.held_position.0 / PIN_BUCKET_BYTES;
        let count = self.pinned.entry(bucket).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.pinned.remove(&bucket);
        }
        let minute = (
            entry.partition,
            entry.due_ms.div_euclid(DUE_MINUTE_MS) * DUE_MINUTE_MS,
            false,
        );
        let hour = (
            entry.partition,
            entry.due_ms.div_euclid(DUE_HOUR_MS) * DUE_HOUR_MS,
            true,
        );
        // Counted by minute if that pair is counted or there is room,
        // else by hour; taken off the minute's count if there is one, else
        // the hour's (each partition's total stays exact).
        let key = if self.by_due_minute.contains_key(&minute)
            || (delta > 0 && self.by_due_minute.len() < DUE_MINUTES_MAX)
        {
            minute
        } else {
            hour
        };
        let count = self.by_due_minute.entry(key).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.by_due_minute.remove(&key);
        }
    }

    /// Pending entries by (partition, due minute: its first epoch ms; or
    /// due hour, when many pairs are counted), in partition order.
    pub fn pending_by_due_minute(&self) -> impl Iterator<Item = (PartitionId, i64, u64)> + '_ {
        self.by_due_minute
            .iter()
            .map(|(&(partition, minute, _), &count)| (partition, minute, count))
    }

    /// The next entry's index.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The checkpoint of the index as it is now.
    pub fn checkpoint(&self) -> TimerCheckpoint {
        TimerCheckpoint {
            entries: self.count,
            cursor: self.cursor,
        }
    }

    /// Time a record: `entry`'s `previous`, `slot` and `done` are set here.
    /// Returns its index.
    pub fn insert(&mut self, entry: TimerEntry) -> Result<u64, TimerError> {
        let index = self.place(entry, self.cursor)?;
        self.pending += 1;
        self.pin(&entry, 1);
        Ok(index)
    }

    /// Write `entry` as the next entry, listed relative to `base`, the first
    /// slot not loaded yet.
    fn place(&mut self, mut entry: TimerEntry, base: i64) -> Result<u64, TimerError> {
        let at = self.count;
        let due_slot = entry.due_ms.div_euclid(self.geometry.slot_ms);
        entry.done = None;
        if due_slot < base {
            // Due in a slot already loaded: straight to the loaded set.
            entry.slot = base - 1;
            entry.previous = 0;
            self.write(at, &entry)?;
            self.current.insert((entry.due_ms, at), entry);
        } else {
            entry.slot = due_slot.min(base + self.geometry.slots as i64 - 1);
            entry.previous = self.link(entry.slot, at);
            self.write(at, &entry)?;
        }
        self.count += 1;
        self.stats(at).count(&entry);
        Ok(at)
    }

    /// The stats of the file holding entry `at`.
    fn stats(&mut self, at: u64) -> &mut FileStats {
        let (first, _) = self.locate(at);
        self.file_stats.entry(first).or_default()
    }

    /// Retire the entry files whose entries are all done for good as of
    /// `checkpoint`, taken at log position `at` and durable (see the module
    /// docs): they are forgotten here and handed back, to be cut to zero
    /// bytes (and fsynced) off the shard thread by [`retire_files`].
    pub fn retire(
        &mut self,
        checkpoint: TimerCheckpoint,
        at: LogPosition,
    ) -> Vec<(PathBuf, Arc<File>)> {
        let per_file = self.geometry.entries_per_file;
        let done: Vec<u64> = self
            .file_stats
            .iter()
            .filter(|&(&first, stats)| {
                first + per_file <= checkpoint.entries
                    && stats.entries == per_file
                    && stats.pending == 0
                    && stats.latest_slot < checkpoint.cursor
                    && stats.done_before <= at.0
                    && stats.newer_before <= checkpoint.entries
            })
            .map(|(&first, _)| first)
            .collect();
        done.into_iter()
            .filter_map(|first| {
                self.file_stats.remove(&first);
                self.dirty.remove(&first);
                let file = self.files.remove(&first)?;
                Some((self.path(first), file))
            })
            .collect()
    }

    /// Make entry `at` the newest of absolute slot `slot`; returns the
    /// `previous` link it takes.
    fn link(&mut self, slot: i64, at: u64) -> u64 {
        let ring = &mut self.ring[slot.rem_euclid(self.geometry.slots as i64) as usize];
        let previous = if ring.absolute == slot {
            ring.newest
        } else {
            0
        };
        *ring = RingSlot {
            absolute: slot,
            newest: at + 1,
        };
        previous
    }

    /// The pending entries due at `now_ms` (at most `max`), in due order
    /// (ties in index order), loading the slots up to the one after now.
    /// They stay pending until [`TimerIndex::finish`]; a restart before
    /// that hands them out again.
    pub fn due(&mut self, now_ms: i64, max: usize) -> Result<Vec<(u64, TimerEntry)>, TimerError> {
        // The next slot is loaded a slot ahead of its time, so that reading
        // a crowded slot's list does not make its first records late.
        let now_slot = (now_ms + self.geometry.slot_ms).div_euclid(self.geometry.slot_ms);
        if now_slot >= self.cursor {
            let window = self.geometry.slots as i64;
            // Every slot up to now is loaded before any entry is listed
            // again, so that no list of a slot not loaded yet is replaced.
            let mut again = Vec::new();
            if now_slot - self.cursor >= window {
                // A whole window or more behind (a long stop): each ring
                // slot once, not every slot in between.
                let behind: Vec<i64> = self
                    .ring
                    .iter()
                    .filter(|ring| {
                        ring.newest > 0 && (self.cursor..=now_slot).contains(&ring.absolute)
                    })
                    .map(|ring| ring.absolute)
                    .collect();
                for slot in behind {
                    self.load(slot, &mut again)?;
                }
            } else {
                for slot in self.cursor..=now_slot {
                    self.load(slot, &mut again)?;
                }
            }
            self.cursor = now_slot + 1;
            self.again.extend(again);
        }
        let mut due = Vec::new();
        while due.len() < max {
            let Some((&(due_ms, at), _)) = self.current.first_key_value() else {
                break;
            };
            if due_ms > now_ms {
                break;
            }
            let entry = self.current.remove(&(due_ms, at)).expect("the first key");
            due.push((at, entry));
        }
        Ok(due)
    }

    /// Up to `max` loaded entries due past the slot they were listed in,
    /// oldest first: each is to be [`TimerIndex::reinsert`]ed once the log
    /// records that (or handed out again after a restart).
    pub fn take_again(&self, max: usize) -> Vec<u64> {
        self.again.keys().take(max).copied().collect()
    }

    /// List entry `at` again, as a new entry (relative to the cursor);
    /// returns the new index. An entry already done stays done (`None`).
    pub fn reinsert(&mut self, at: u64) -> Result<Option<u64>, TimerError> {
        let entry = match self.again.remove(&at) {
            Some(entry) => entry,
            None => match self.read(at)? {
                Ok(entry) => entry,
                Err(_) => return Ok(None),
            },
        };
        if entry.done.is_some() {
            return Ok(None);
        }
        self.current.remove(&(entry.due_ms, at));
        let newer = self.place(entry, self.cursor)?;
        self.mark(at, Done::Reinserted(newer))?;
        Ok(Some(newer))
    }

    /// Put back entries handed out by [`TimerIndex::due`] and not done
    /// (their delivery could not be appended now).
    pub fn put_back(&mut self, entries: impl IntoIterator<Item = (u64, TimerEntry)>) {
        for (at, entry) in entries {
            self.current.insert((entry.due_ms, at), entry);
        }
    }

    /// Load absolute slot `slot`: its pending entries go to the loaded
    /// set, or, when due past it (listed in a window's last slot), to
    /// `again`, to be listed again.
    fn load(&mut self, slot: i64, again: &mut Vec<(u64, TimerEntry)>) -> Result<(), TimerError> {
        let ring = self.ring[slot.rem_euclid(self.geometry.slots as i64) as usize];
        if ring.absolute != slot {
            return Ok(());
        }
        let mut next = ring.newest;
        while next > 0 {
            let at = next - 1;
            let Ok(entry) = self.read(at)? else {
                // A damaged entry ends the list; the next open relinks it.
                break;
            };
            next = entry.previous;
            if entry.done.is_some() {
                continue;
            }
            if entry.due_ms.div_euclid(self.geometry.slot_ms) > slot {
                again.push((at, entry));
            } else {
                self.current.insert((entry.due_ms, at), entry);
            }
        }
        Ok(())
    }

    /// A pending entry of a slot before the cursor: due, or to be listed
    /// again when due past it.
    fn load_one(&mut self, slot: i64, at: u64, entry: TimerEntry) {
        if entry.due_ms.div_euclid(self.geometry.slot_ms) > slot {
            self.again.insert(at, entry);
        } else {
            self.current.insert((entry.due_ms, at), entry);
        }
    }

    /// Entry `at` is done (delivered, dropped): wherever it is listed, it
    /// is no longer handed out. Returns it, or `None` when it was done
    /// already or cannot be read (damaged, or past the entries).
    pub fn finish(&mut self, at: u64, done: Done) -> Result<Option<TimerEntry>, TimerError> {
        if at >= self.count {
            return Ok(None);
        }
        let entry = match self.read(at)? {
            Ok(entry) if entry.done.is_none() => entry,
            _ => return Ok(None),
        };
        self.current.remove(&(entry.due_ms, at));
        self.again.remove(&at);
        self.pending -= 1;
        self.pin(&entry, -1);
        self.mark(at, done)?;
        Ok(Some(entry))
    }

    fn mark(&mut self, at: u64, done: Done) -> Result<(), TimerError> {
        let stats = self.stats(at);
        stats.pending = stats.pending.saturating_sub(1);
        stats.done(done);
        let (file, within) = self.locate(at);
        let path = self.path(file);
        let bytes = Done::field_bytes(Some(done));
        self.files[&file]
            .write_all_at(&bytes, within + Done::FIELD_AT as u64)
            .map_err(io_error(&path))?;
        self.dirty.insert(file);
        Ok(())
    }

    /// The entry files written since the last call, for a checkpoint to
    /// fsync before it records [`TimerIndex::checkpoint`] (as it does the
    /// consume queues').
    pub fn take_dirty_files(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|first| Arc::clone(&self.files[&first]))
            .collect()
    }

    /// Make every entry written so far durable (before a checkpoint that
    /// records [`TimerIndex::checkpoint`]).
    pub fn sync(&mut self) -> Result<(), TimerError> {
        for first in std::mem::take(&mut self.dirty) {
            let path = self.path(first);
            self.files[&first].sync_data().map_err(io_error(&path))?;
        }
        Ok(())
    }

    /// (first index of the file holding `at`, byte offset within it).
    fn locate(&self, at: u64) -> (u64, u64) {
        let per_file = self.geometry.entries_per_file;
        let first = at - at % per_file;
        (first, (at - first) * ENTRY_BYTES as u64)
    }

    fn path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}{FILE_SUFFIX}"))
    }

    fn write(&mut self, at: u64, entry: &TimerEntry) -> Result<(), TimerError> {
        let (first, within) = self.locate(at);
        let path = self.path(first);
        if !self.files.contains_key(&first) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_error(&path))?;
            crate::storage::segment::sync_dir(&self.dir).map_err(io_error(&self.dir))?;
            self.files.insert(first, Arc::new(file));
        }
        self.files[&first]
            .write_all_at(&entry.encode(), within)
            .map_err(io_error(&path))?;
        self.dirty.insert(first);
        Ok(())
    }

    /// Entry `at`: `Ok(Err(reason))` when it is damaged or missing.
    fn read(&self, at: u64) -> Result<Result<TimerEntry, String>, TimerError> {
        let (first, within) = self.locate(at);
        let Some(file) = self.files.get(&first) else {
            return Ok(Err("its entry file is missing".to_owned()));
        };
        let mut bytes = [0; ENTRY_BYTES];
        match file.read_exact_at(&mut bytes, within) {
            Ok(()) => Ok(TimerEntry::decode(&bytes)),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Ok(Err("past the end of its file".to_owned()))
            }
            Err(source) => Err(TimerError::Io {
                path: self.path(first),
                source,
            }),
        }
    }
}

/// Cut retired entry files (from [`TimerIndex::retire`]) to zero bytes and
/// make that durable; a crash before leaves them whole, to be retired
/// again after the restart.
pub fn retire_files(files: Vec<(PathBuf, Arc<File>)>) -> Result<(), TimerError> {
    for (path, file) in files {
        file.set_len(0).map_err(io_error(&path))?;
        file.sync_all().map_err(io_error(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Offset, PartitionId};

    const NOW: i64 = 1_700_000_000_000;
    const GEOMETRY: TimerGeometry = TimerGeometry {
        slot_ms: 1000,
        slots: 60,
        entries_per_file: 4,
    };

    fn start() -> TimerCheckpoint {
        TimerCheckpoint {
            entries: 0,
            cursor: NOW / 1000,
        }
    }

    fn entry(due_ms: i64, origin: i64) -> TimerEntry {
        TimerEntry {
            due_ms,
            held_position: LogPosition(origin as u64 * 100),
            record_bytes: 90,
            partition: PartitionId(1),
            origin_offset: Offset(origin),
            previous: 0,
            slot: 0,
            done: None,
        }
    }

    fn origins(due: &[(u64, TimerEntry)]) -> Vec<i64> {
        due.iter().map(|(_, entry)| entry.origin_offset.0).collect()
    }

    fn open(dir: &Path, checkpoint: TimerCheckpoint, indexed: u64) -> (TimerIndex, OpenReport) {
        TimerIndex::open(dir, GEOMETRY, checkpoint, LogPosition(indexed)).unwrap()
    }

    #[test]
    fn entries_come_due_in_due_order_and_ties_in_insertion_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = open(dir.path(), start(), 0);
        for (due, origin) in [(500, 0), (2500, 1), (1500, 2), (1500, 3), (-5000, 4)] {
            index.insert(entry(NOW + due, origin)).unwrap();
        }
        assert_eq!(index.pending(), 5);
        assert_eq!(origins(&index.due(NOW, 10).unwrap()), [4], "already due");
        assert_eq!(origins(&index.due(NOW + 1000, 10).unwrap()), [0]);
        let due = index.due(NOW + 3000, 2).unwrap();
        assert_eq!(origins(&due), [2, 3], "at most 2, ties in order");
        assert_eq!(origins(&index.due(NOW + 3000, 10).unwrap()), [1]);
        for (at, _) in due {
            assert!(
                index
                    .finish(at, Done::Delivered(LogPosition(7)))
                    .unwrap()
                    .is_some()
            );
        }
        assert_eq!(index.pending(), 3, "handed out is not done");
        let minute = |due: i64| (NOW + due).div_euclid(DUE_MINUTE_MS) * DUE_MINUTE_MS;
        let mut expected: BTreeMap<i64, u64> = BTreeMap::new();
        for due in [500, 2500, -5000] {
            *expected.entry(minute(due)).or_default() += 1;
        }
        let counted: BTreeMap<i64, u64> = index
            .pending_by_due_minute()
            .map(|(partition, minute, count)| {
                assert_eq!(partition, PartitionId(1));
                (minute, count)
            })
            .collect();
        assert_eq!(counted, expected, "the pending ones, by due minute");
        let (reopened, _) = open(dir.path(), index.checkpoint(), 8);
        assert_eq!(
            reopened.pending_by_due_minute().collect::<Vec<_>>(),
            index.pending_by_due_minute().collect::<Vec<_>>(),
            "counted again at open"
        );
    }

    /// A full file whose entries were all delivered before the checkpoint's
    /// position, in slots before its cursor, is retired (cut to zero bytes)
    /// and skipped by the next open; one with a pending entry, or delivered
    /// at or past the position, stays. (4 entries a file here.)
    #[test]
    fn a_file_of_entries_all_delivered_for_good_is_retired() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = open(dir.path(), start(), 0);
        for origin in 0..9 {
            let due = if origin == 5 { 50_000 } else { 1_000 };
            index.insert(entry(NOW + due, origin)).unwrap();
        }
        let due = index.due(NOW + 2_000, 100).unwrap();
        assert_eq!(due.len(), 8);
        for (at, _) in due {
            index.finish(at, Done::Delivered(LogPosition(700))).unwrap();
        }
        index.sync().unwrap();
        let checkpoint = index.checkpoint();
        assert!(
            index.retire(checkpoint, LogPosition(700)).is_empty(),
            "delivered at the checkpoint's position: its frame may be lost"
        );
        let retired = index.retire(checkpoint, LogPosition(701));
        let names: Vec<String> = retired
            .iter()
            .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [format!("{:020}{FILE_SUFFIX}", 0)],
            "the file with a pending entry and the one not full stay"
        );
        retire_files(retired).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join(&names[0])).unwrap().len(),
            0
        );
        assert!(
            index.retire(checkpoint, LogPosition(701)).is_empty(),
            "once"
        );
        let (reopened, report) = open(dir.path(), checkpoint, 701);
        assert_eq!((report.pending, report.damaged), (1, 0), "{report:?}");
        assert_eq!(reopened.count(), 9);
        assert_eq!(
            std::fs::metadata(dir.path().join(&names[0])).unwrap().len(),
            0,
            "left empty"
        );
        drop(reopened);
        std::fs::remove_file(dir.path().join(format!("{:020}{FILE_SUFFIX}", 4))).unwrap();
        let (_, report) = open(dir.path(), checkpoint, 701);
        assert_eq!(
            (report.pending, report.damaged),
            (0, 4),
            "a file gone, unlike a retired one, is damage"
        );
    }

    #[test]
    fn an_entry_due_past_the_window_is_listed_again_until_due() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = open(dir.path(), start(), 0);
        index.insert(entry(NOW + 150_000, 0)).unwrap();
        assert!(index.due(NOW + 59_999, 10).unwrap().is_empty());
        assert_eq!(index.take_again(10), [0], "its window's last slot came up");
        assert_eq!(index.reinsert(0).unwrap(), Some(1));
        assert_eq!(index.reinsert(0).unwrap(), None, "once");
        assert!(index.due(NOW + 120_000, 10).unwrap().is_empty());
        assert_eq!(index.take_again(10), [1]);
        assert_eq!(index.reinsert(1).unwrap(), Some(2));
        assert_eq!(index.checkpoint().entries, 3, "listed again twice");
        assert_eq!(index.pending(), 1);
        assert_eq!(index.pinned_from(), Some(LogPosition(0)));
        // After a restart only the newest listing is pending.
        index.sync().unwrap();
        let checkpoint = index.checkpoint();
        drop(index);
        let (mut index, report) = open(dir.path(), checkpoint, 0);
        assert_eq!(report.pending, 1, "{report:?}");
        assert!(index.due(NOW + 120_000, 10).unwrap().is_empty());
        let due = index.due(NOW + 150_000, 10).unwrap();
        assert_eq!(origins(&due), [0]);
        assert_eq!(due[0].1.due_ms, NOW + 150_000);
    }

    #[test]
    fn an_entry_waiting_to_be_listed_again_at_a_restart_is_not_due_early() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = open(dir.path(), start(), 0);
        index.insert(entry(NOW + 150_000, 0)).unwrap();
        assert!(index.due(NOW + 59_999, 10).unwrap().is_empty());
        index.sync().unwrap();
        let checkpoint = index.checkpoint();
        drop(index);
        let (mut index, report) = open(dir.path(), checkpoint, 0);
        assert_eq!(report.pending, 1);
        assert!(index.due(NOW + 60_000, 10).unwrap().is_empty());
        assert_eq!(index.take_again(10), [0]);
        index.reinsert(0).unwrap();
        assert!(due_rolling(&mut index, NOW + 149_999).is_empty());
        assert_eq!(origins(&due_rolling(&mut index, NOW + 150_000)), [0]);
    }

    /// What is due at `now`, listing again (as the store does through the
    /// log) whatever comes up due past its slot.
    fn due_rolling(index: &mut TimerIndex, now: i64) -> Vec<(u64, TimerEntry)> {
        let due = index.due(now, 10).unwrap();
        for at in index.take_again(10) {
            index.reinsert(at).unwrap();
        }
        due
    }

    #[test]
    fn a_restart_keeps_pending_entries_and_those_done_past_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = open(dir.path(), start(), 0);
        for origin in 0..5 {
            index.insert(entry(NOW + 1000 + origin, origin)).unwrap();
        }
        let due = index.due(NOW + 2000, 10).unwrap();
        assert_eq!(origins(&due), [0, 1, 2, 3, 4]);
        // 0 delivered below the checkpoint's position, 1 past it (its
        // frame may be lost), 2 handed out only.
        index
            .finish(due[0].0, Done::Delivered(LogPosition(500)))
            .unwrap();
        index
            .finish(due[1].0, Done::Delivered(LogPosition(1500)))
            .unwrap();
        index.sync().unwrap();
        let checkpoint = index.checkpoint();
        // Written after the checkpoint: gone at the restart.
        index.insert(entry(NOW + 9000, 9)).unwrap();
        drop(index);
        let (mut index, report) = open(dir.path(), checkpoint, 1000);
        assert_eq!(report.pending, 4, "{report:?}");
        assert_eq!(report.repaired, 1, "entry 1's lost delivery");
        assert_eq!(origins(&index.due(NOW + 60_000, 10).unwrap()), [1, 2, 3, 4]);
        assert_eq!(index.checkpoint().entries, 5);
    }

    #[test]
    fn a_damaged_entry_is_skipped_and_its_slot_relinked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = open(dir.path(), start(), 0);
        for origin in 0..3 {
            index.insert(entry(NOW + 5000, origin)).unwrap();
        }
        index.sync().unwrap();
        let checkpoint = index.checkpoint();
        drop(index);
        let file = dir.path().join(format!("{:020}{FILE_SUFFIX}", 0));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[ENTRY_BYTES + 2] ^= 0x10; // entry 1's due time
        std::fs::write(&file, &bytes).unwrap();
        let (mut index, report) = open(dir.path(), checkpoint, 0);
        assert_eq!((report.damaged, report.pending), (1, 2), "{report:?}");
        assert_eq!(report.repaired, 1, "entry 2 now links to entry 0");
        assert_eq!(origins(&index.due(NOW + 5000, 10).unwrap()), [0, 2]);
    }

    #[test]
    fn after_a_stop_longer_than_the_window_everything_due_comes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = open(dir.path(), start(), 0);
        for (due, origin) in [(1000, 0), (30_000, 1), (400_000, 2), (59_000, 3)] {
            index.insert(entry(NOW + due, origin)).unwrap();
        }
        index.sync().unwrap();
        let checkpoint = index.checkpoint();
        drop(index);
        let (mut index, _) = open(dir.path(), checkpoint, 0);
        let later = NOW + 300_000;
        assert_eq!(origins(&due_rolling(&mut index, later)), [0, 1, 3]);
        assert_eq!(index.pending(), 4);
        assert!(due_rolling(&mut index, NOW + 399_999).is_empty());
        assert_eq!(origins(&due_rolling(&mut index, NOW + 400_000)), [2]);
    }
}
