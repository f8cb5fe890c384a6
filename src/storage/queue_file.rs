//! One consume-queue file: a header, then a fixed number of entry slots,
//! memory-mapped.
//!
//! File layout (version 2):
//!
//! | bytes | field |
//! |-------|-------|
//! | 0..4  | magic `SLCQ` |
//! | 4..6  | version (u16 LE, 2) |
//! | 6..8  | entry size in bytes (u16 LE, 40) |
//! | 8..12 | entries per file (u32 LE) |
//! | 12..16 | reserved, zero |
//! | 16..24 | index of the file's first entry (u64 LE) |
//! | 24..28 | CRC32C of bytes 0..24 |
//! | 28..64 | zero |
//! | 64..   | `entries per file` slots of [`ENTRY_BYTES`] |
//!
//! The header records the geometry, so changing
//! `storage.consume_queue_entries_per_file` applies to new queues only and
//! never reinterprets existing files. A file without a valid header (an older
//! layout, or damage) is refused with [`QueueError::Format`] and the queue is
//! rebuilt from the commit log.
//!
//! The file is not kept open: its mapping outlives the descriptor, so a
//! partition holds no descriptor, and the few calls that need one (fallocate
//! to reserve blocks, a hole punch to clear, a checkpoint's fdatasync) open
//! the file by its path for the call. Found by a breaker trial: with one
//! descriptor per queue file, 20 000 partitions ran a 20 000 open-files
//! limit out, refused appends, and the broker could not start again.
//! A queue file's path names it for its whole life: it is created, mapped,
//! cleared and removed by its [`QueueFile`] alone (the data directory is
//! locked by this process).
//!
//! Invariant: a slot is written through the map only after the blocks under
//! it were allocated ([`QueueFile::write_slot`] reserves ahead with
//! fallocate, or writes zeros where fallocate is missing), so a full disk is
//! an ENOSPC error here, never a SIGBUS in the shard thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::consume_queue::QueueError;
use super::preallocate::{self, Allocation};
use super::queue_entry::{ENTRY_BYTES, EntryError, QueueEntry};

pub const QUEUE_FILE_SUFFIX: &str = ".cq";
pub const HEADER_BYTES: usize = 64;
const MAGIC: [u8; 4] = *b"SLCQ";
const VERSION: u16 = 2;
const HEADER_CRC_AT: usize = 24;
/// Blocks are reserved this far ahead of the slot being written: one
/// fallocate per ~1600 entries.
pub const RESERVE_AHEAD_BYTES: u64 = 64 * 1024;
/// Page size for clearing: whole pages are punched, the partial one zeroed.
const PAGE_BYTES: usize = 4096;

const _: () = assert!(HEADER_BYTES >= HEADER_CRC_AT + 4);
const _: () = assert!((RESERVE_AHEAD_BYTES as usize).is_multiple_of(PAGE_BYTES));
const _: () = assert!(ENTRY_BYTES <= u16::MAX as usize);
const _: () = assert!(ENTRY_BYTES as u64 <= RESERVE_AHEAD_BYTES);
const _: () = assert!(HEADER_BYTES <= PAGE_BYTES, "the header fits the first page");

pub fn queue_file_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{QUEUE_FILE_SUFFIX}"))
}

pub struct QueueFile {
    pub first_index: u64,
    pub path: PathBuf,
    entries: u64,
    map: MmapMut,
    /// Bytes below this are allocated on disk or hold entries: the next
    /// reservation starts here, and zeros are only ever written above it.
    allocated_end: u64,
    /// Names this file's blocks as a reservation made off the shard saw
    /// them: new for every file and after every clear, so a reservation
    /// that finishes after the file was cleared (or removed and made
    /// again) is not taken for one of its blocks.
    epoch: u64,
    /// A reservation ahead ([`QueueFile::reservation_ahead`]) is out.
    reserving: bool,
}

/// Blocks to reserve ahead of a queue file's entries, off the shard thread
/// ([`QueueReservation::run`], then [`QueueFile::reservation_done`]), so the
/// shard's own reservation at the tail ([`QueueFile::reserve_slot`]) finds
/// them there and makes no system call.
#[derive(Debug)]
pub struct QueueReservation {
    pub first_index: u64,
    epoch: u64,
    path: PathBuf,
    from: u64,
    to: u64,
}

impl QueueReservation {
    /// fallocate the range (blocking; the file is opened for it, and a file
    /// removed meanwhile is an error the epoch makes harmless). A file
    /// system without fallocate reserves nothing here: zeros are written
    /// only by the shard, below its own writes (see
    /// [`QueueFile::reserve_slot`]).
    pub fn run(&self) -> io::Result<Allocation> {
        let file = open_for_write(&self.path)?;
        preallocate::allocate(&file, self.from, self.to - self.from)
    }
}

/// A fresh [`QueueFile::epoch`].
fn next_epoch() -> u64 {
    static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl QueueFile {
    /// Create an empty file for entries `first_index..first_index + entries`
    /// (a stale file of that name is replaced).
    pub fn create(dir: &Path, first_index: u64, entries: u64) -> Result<QueueFile, QueueError> {
        let path = queue_file_path(dir, first_index);
        let io_error = |source| QueueError::io(&path, source);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error)?;
        let size = file_bytes(entries);
        file.set_len(size).map_err(io_error)?;
        let header = encode_header(entries, first_index);
        file.write_all_at(&header, 0)
            .map_err(|source| QueueError::from_write(&path, source))?;
        QueueFile::mapped(&file, path, first_index, entries)
    }

    /// Open an existing file; its header must name `first_index`.
    pub fn open(dir: &Path, first_index: u64) -> Result<QueueFile, QueueError> {
        let path = queue_file_path(dir, first_index);
        let io_error = |source| QueueError::io(&path, source);
        let file = open_for_write(&path).map_err(io_error)?;
        let length = file.metadata().map_err(io_error)?.len();
        let mut header = [0u8; HEADER_BYTES];
        if length >= HEADER_BYTES as u64 {
            file.read_exact_at(&mut header, 0).map_err(io_error)?;
        }
        let entries = decode_header(&header, first_index).map_err(|reason| QueueError::Format {
            path: path.clone(),
            reason,
        })?;
        if length != file_bytes(entries) {
            return Err(QueueError::Format {
                path,
                reason: format!(
                    "file is {length} bytes; its header's {entries} entries need {}",
                    file_bytes(entries)
                ),
            });
        }
        QueueFile::mapped(&file, path, first_index, entries)
    }

    /// Map a file whose header is in place; the caller closes `file` (the
    /// map keeps the file). Only the header's block is known to be
    /// allocated.
    fn mapped(
        file: &File,
        path: PathBuf,
        first_index: u64,
        entries: u64,
    ) -> Result<QueueFile, QueueError> {
        // SAFETY: the data directory is locked by this process (see data_dir),
        // so no other process truncates or writes this file while it is
        // mapped, and this queue never shrinks a file it has mapped.
        let map =
            unsafe { MmapMut::map_mut(file) }.map_err(|source| QueueError::io(&path, source))?;
        Ok(QueueFile {
            first_index,
            path,
            entries,
            map,
            allocated_end: HEADER_BYTES as u64,
            epoch: next_epoch(),
            reserving: false,
        })
    }

    /// Entries this file holds (from its header).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The entry in slot `slot`: `Ok(None)` for an empty slot.
    pub fn entry(&self, slot: u64) -> Result<Option<QueueEntry>, EntryError> {
        assert!(slot < self.entries, "slot {slot} outside the file");
        let at = slot_offset(slot) as usize;
        let bytes: &[u8; ENTRY_BYTES] = self.map[at..at + ENTRY_BYTES]
            .try_into()
            .expect("slot inside the map");
        QueueEntry::decode(bytes)
    }

    /// Note that slots from `slot` on are empty: reservations (and the zeros
    /// written where fallocate is missing) start no lower than this.
    pub fn set_tail(&mut self, slot: u64) {
        self.allocated_end = self.allocated_end.max(slot_offset(slot));
    }

    /// Make sure `slot` has blocks under it, reserving
    /// [`RESERVE_AHEAD_BYTES`] ahead when it has not (then true). A full
    /// disk is [`QueueError::NoSpace`].
    pub fn reserve_slot(&mut self, slot: u64) -> Result<bool, QueueError> {
        assert!(slot < self.entries, "slot {slot} outside the file");
        let at = slot_offset(slot);
        let end = at + ENTRY_BYTES as u64;
        if end <= self.allocated_end {
            return Ok(false);
        }
        self.reserve(at, end, RESERVE_AHEAD_BYTES)?;
        Ok(true)
    }

    /// Reserve the blocks of `slot`'s page only: a new file's first
    /// entries, without the step ahead (a fresh broker's hundred internal
    /// partitions would take 64 KiB each). Reservations ahead, off the
    /// shard, grow it once entries arrive.
    pub fn reserve_page_of(&mut self, slot: u64) -> Result<(), QueueError> {
        assert!(slot < self.entries, "slot {slot} outside the file");
        let at = slot_offset(slot);
        let end = at + ENTRY_BYTES as u64;
        if end > self.allocated_end {
            self.reserve(at, end, 0)?;
        }
        Ok(())
    }

    /// When fewer than half of [`RESERVE_AHEAD_BYTES`] are reserved past
    /// `slot` (the next to be written) and no reservation is out: the next
    /// [`RESERVE_AHEAD_BYTES`] of blocks, to reserve off the shard thread.
    pub fn reservation_ahead(&mut self, slot: u64) -> Option<QueueReservation> {
        let map_len = self.map.len() as u64;
        let slot_end = slot_offset(slot) + ENTRY_BYTES as u64;
        if self.reserving
            || self.allocated_end >= map_len
            || slot_end + RESERVE_AHEAD_BYTES / 2 <= self.allocated_end
        {
            return None;
        }
        let from = self.allocated_end;
        let to = (slot_end + RESERVE_AHEAD_BYTES)
            .next_multiple_of(PAGE_BYTES as u64)
            .min(map_len);
        if to <= from {
            return None;
        }
        self.reserving = true;
        Some(QueueReservation {
            first_index: self.first_index,
            epoch: self.epoch,
            path: self.path.clone(),
            from,
            to,
        })
    }

    /// `reservation` finished with `result`: its blocks count as reserved
    /// if it allocated them and the file was not cleared meanwhile.
    pub fn reservation_done(
        &mut self,
        reservation: &QueueReservation,
        result: &io::Result<Allocation>,
    ) {
        if reservation.epoch != self.epoch {
            return;
        }
        self.reserving = false;
        if matches!(result, Ok(Allocation::Allocated)) && reservation.from <= self.allocated_end {
            self.allocated_end = self.allocated_end.max(reservation.to);
        }
    }

    /// Write `entry` into `slot`, reserving blocks first if that was not done.
    /// Done means in the page cache; a checkpoint fsyncs the file later.
    pub fn write_slot(&mut self, slot: u64, entry: &QueueEntry) -> Result<(), QueueError> {
        self.reserve_slot(slot)?;
        let at = slot_offset(slot);
        assert!(
            at + ENTRY_BYTES as u64 <= self.allocated_end,
            "writing a slot with no blocks"
        );
        let at = at as usize;
        self.map[at..at + ENTRY_BYTES].copy_from_slice(&entry.encode());
        Ok(())
    }

    /// Reserve from the slot (or the allocated end) to
    /// [`RESERVE_AHEAD_BYTES`] past it, always to a page boundary: a write
    /// through the map allocates its whole page, so a page whose last
    /// blocks were left out (file systems with blocks under 4 KiB) raised
    /// SIGBUS on a full disk (found by the breaker trial on a 1 KiB-block
    /// ext4). On ENOSPC it tries again up to the slot's page end only:
    /// recovery re-indexes entries into pages the running broker had
    /// reserved, so it must not fail for want of space beyond them.
    fn reserve(&mut self, slot_start: u64, slot_end: u64, ahead: u64) -> Result<(), QueueError> {
        let page = PAGE_BYTES as u64;
        // From the slot's page start too (no entry lies between the
        // allocated end and the slot), never below the allocated end (the
        // zeros written where fallocate is missing would erase entries).
        let from = self.allocated_end.max(slot_start / page * page);
        let map_len = self.map.len() as u64;
        let ahead = (slot_end + ahead).next_multiple_of(page).min(map_len);
        let needed = slot_end.next_multiple_of(page).min(map_len);
        let mut to = ahead;
        let file =
            open_for_write(&self.path).map_err(|source| QueueError::io(&self.path, source))?;
        let mut allocated = preallocate::allocate(&file, from, to - from);
        if let Err(error) = &allocated
            && matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            && needed < ahead
        {
            to = needed;
            allocated = preallocate::allocate(&file, from, to - from);
        }
        match allocated {
            Ok(Allocation::Allocated) => {}
            Ok(Allocation::Unsupported) => {
                preallocate::log_unsupported(
                    &self.path,
                    "consume-queue space is reserved by writing zeros",
                );
                preallocate::write_zeros(&file, from, to - from)
                    .map_err(|source| QueueError::from_write(&self.path, source))?;
            }
            Err(source) => return Err(QueueError::from_write(&self.path, source)),
        }
        self.allocated_end = to;
        Ok(())
    }

    /// Empty every slot from `slot` on: zero the partial page through the map
    /// and punch out the rest (or, where punching is unsupported, zero every
    /// page that holds data).
    pub fn clear_from(&mut self, slot: u64) -> Result<(), QueueError> {
        let start = slot_offset(slot.min(self.entries)) as usize;
        let map_len = self.map.len();
        let page_end = (start.div_ceil(PAGE_BYTES) * PAGE_BYTES).min(map_len);
        // Pages that hold entries have blocks, so these writes allocate none.
        self.map[start..page_end].fill(0);
        if page_end < map_len {
            let punched = open_for_write(&self.path)
                .and_then(|file| punch_hole(&file, page_end as u64, (map_len - page_end) as u64))
                .map_err(|source| QueueError::io(&self.path, source))?;
            if !punched {
                self.zero_pages_with_data(page_end);
            }
        }
        self.allocated_end = self
            .allocated_end
            .min(start as u64)
            .max(HEADER_BYTES as u64);
        // A reservation still out allocated what was just punched: it must
        // not count.
        self.epoch = next_epoch();
        self.reserving = false;
        Ok(())
    }

    /// Zero, through the map, each page from `from` that holds a non-zero
    /// byte. Holes read as zeros and are skipped, so nothing is allocated.
    fn zero_pages_with_data(&mut self, from: usize) {
        let mut at = from;
        while at < self.map.len() {
            let end = (at + PAGE_BYTES).min(self.map.len());
            let page = &mut self.map[at..end];
            if page.iter().any(|&byte| byte != 0) {
                page.fill(0);
            }
            at = end;
        }
    }

    /// Unmap and remove the file.
    pub fn remove(self) -> Result<(), QueueError> {
        drop(self.map);
        std::fs::remove_file(&self.path).map_err(|source| QueueError::io(&self.path, source))
    }
}

/// Open a queue file for one call that needs a descriptor (the file is not
/// kept open: see the module doc).
fn open_for_write(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

fn slot_offset(slot: u64) -> u64 {
    HEADER_BYTES as u64 + slot * ENTRY_BYTES as u64
}

fn file_bytes(entries: u64) -> u64 {
    slot_offset(entries)
}

pub(crate) fn encode_header(entries: u64, first_index: u64) -> [u8; HEADER_BYTES] {
    let entries = u32::try_from(entries).expect("entries per file fit in u32 (config limit)");
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&VERSION.to_le_bytes());
    header[6..8].copy_from_slice(&(ENTRY_BYTES as u16).to_le_bytes());
    header[8..12].copy_from_slice(&entries.to_le_bytes());
    header[16..24].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32c::crc32c(&header[..HEADER_CRC_AT]);
    header[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The entries per file a header records, or why it is not usable.
pub(crate) fn decode_header(header: &[u8; HEADER_BYTES], first_index: u64) -> Result<u64, String> {
    if header[0..4] != MAGIC {
        return Err("no SLCQ header (a consume queue of an older layout, or damage)".to_owned());
    }
    let field = |at: usize| -> [u8; 4] { header[at..at + 4].try_into().expect("4 bytes") };
    let stored = u32::from_le_bytes(field(HEADER_CRC_AT));
    let computed = crc32c::crc32c(&header[..HEADER_CRC_AT]);
    if stored != computed {
        return Err(format!(
            "header CRC32C mismatch: stored {stored:#010x}, bytes hash to {computed:#010x}"
        ));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    let entry_bytes = u16::from_le_bytes([header[6], header[7]]);
    if version != VERSION || usize::from(entry_bytes) != ENTRY_BYTES {
        return Err(format!(
            "version {version} with {entry_bytes}-byte entries; this build reads version \
             {VERSION} with {ENTRY_BYTES}-byte entries"
        ));
    }
    let entries = u64::from(u32::from_le_bytes(field(8)));
    let named = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    if entries == 0 || named != first_index || !first_index.is_multiple_of(entries) {
        return Err(format!(
            "header says {entries} entries from index {named}; the file name says {first_index}"
        ));
    }
    Ok(entries)
}

/// Punch `[offset, offset + length)`; false where the file system cannot.
fn punch_hole(file: &File, offset: u64, length: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    let length = libc::off_t::try_from(length).map_err(io::Error::other)?;
    loop {
        // SAFETY: fallocate only reads its integer arguments; the fd is open.
        let status = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) };
        if status == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Ok(false),
            _ => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Found by the breaker trial: a reservation ending inside a page left
    /// that page's last blocks unallocated on file systems with 1 KiB
    /// blocks, and the first write through the map into it raised SIGBUS on
    /// a full disk. Reservations end on page boundaries.
    #[test]
    fn reservations_end_on_a_page_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = QueueFile::create(dir.path(), 0, 100_000).unwrap();
        // Slot 3300 lies past the first reservation, in the middle of a
        // page: its page is reserved from its start.
        for slot in [0, 1, 1700, 3300] {
            file.reserve_slot(slot).unwrap();
            assert!(
                file.allocated_end.is_multiple_of(PAGE_BYTES as u64),
                "slot {slot}: reserved to {}",
                file.allocated_end
            );
            assert!(file.allocated_end >= slot_offset(slot) + ENTRY_BYTES as u64);
        }
        let page = PAGE_BYTES as u64;
        let first =
            (ENTRY_BYTES as u64 + HEADER_BYTES as u64 + RESERVE_AHEAD_BYTES).next_multiple_of(page);
        let second = file.allocated_end - slot_offset(3300) / page * page;
        let allocated = std::fs::metadata(&file.path).unwrap().blocks() * 512;
        assert!(
            allocated >= first + second,
            "{allocated} bytes allocated, reserved to {}",
            file.allocated_end
        );
    }

    /// Reservations made ahead off the shard: asked for only when the
    /// reserved space runs low, one at a time, and counted only if the
    /// file was not cleared while one was out (its blocks were punched).
    #[test]
    fn a_reservation_ahead_counts_unless_the_file_was_cleared_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = QueueFile::create(dir.path(), 0, 100_000).unwrap();
        file.reserve_slot(0).unwrap();
        assert!(file.reservation_ahead(1).is_none(), "plenty reserved");
        let last_reserved = (file.allocated_end - HEADER_BYTES as u64) / ENTRY_BYTES as u64 - 1;
        let ahead = file.reservation_ahead(last_reserved).expect("running low");
        assert!(
            file.reservation_ahead(last_reserved).is_none(),
            "one at a time"
        );
        let before = file.allocated_end;
        let result = ahead.run();
        file.reservation_done(&ahead, &result);
        assert!(
            file.allocated_end >= slot_offset(last_reserved) + RESERVE_AHEAD_BYTES,
            "reserved to {} from {before}",
            file.allocated_end
        );
        assert!(file.allocated_end.is_multiple_of(PAGE_BYTES as u64));

        let last_reserved = (file.allocated_end - HEADER_BYTES as u64) / ENTRY_BYTES as u64 - 1;
        let late = file
            .reservation_ahead(last_reserved)
            .expect("running low again");
        let result = late.run();
        file.clear_from(0).unwrap();
        let cleared_end = file.allocated_end;
        file.reservation_done(&late, &result);
        assert_eq!(
            file.allocated_end, cleared_end,
            "a reservation that outlived a clear does not count"
        );
        assert!(file.reservation_ahead(0).is_some(), "a new one may go out");

        // The file made again under the same name (a queue cut back to its
        // start, then appended to): the old file's reservation, finishing
        // late, reserved nothing in this one.
        drop(file);
        let mut old = QueueFile::create(dir.path(), 0, 100_000).unwrap();
        old.reserve_slot(0).unwrap();
        let last_reserved = (old.allocated_end - HEADER_BYTES as u64) / ENTRY_BYTES as u64 - 1;
        let ahead = old.reservation_ahead(last_reserved).unwrap();
        let result = ahead.run();
        drop(old);
        let mut file = QueueFile::create(dir.path(), 0, 100_000).unwrap();
        file.reserve_slot(last_reserved - 200).unwrap();
        let remade_end = file.allocated_end;
        assert!(remade_end >= ahead.from && remade_end < ahead.to);
        file.reservation_done(&ahead, &result);
        assert_eq!(
            file.allocated_end, remade_end,
            "another file's reservation does not count"
        );
    }
}
