//! One commit-log segment file: `log/<base position, 20 digits>.log`.
//!
//! A segment file has its full size from its creation, but disk space is
//! reserved in steps ahead of the write position (issue 19: a fresh broker
//! takes a few MiB, not a segment per shard): the commit log reserves the
//! first step when it creates the file and the next ones off the shard
//! thread before the writes reach them ([`reserve`]). A reservation first
//! tries `FALLOC_FL_WRITE_ZEROES` (Linux 6.17+, on devices with a cheap
//! write-zeroes command), which leaves *written* zeroed extents, so later
//! fdatasyncs need no extent-conversion journal commit. Otherwise it uses a
//! plain fallocate: unwritten extents, still no fragmentation, and ENOSPC
//! at the reservation (a retriable refusal of the append) rather than in
//! the middle of group commit. On a file system without fallocate nothing
//! is reserved (logged once).
//!
//! Each
//! segment has two descriptors: the writer (O_DIRECT in `direct` mode), used
//! only by the commit log's I/O layer, and a buffered reader for recovery and
//! fetch.
//!
//! Invariant: positions inside a segment run from `base` to `base + size`;
//! the next segment's base is exactly this segment's end.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

use super::preallocate::{self, Allocation};
use crate::config::WriteMode;
use crate::ids::LogPosition;
use crate::io::LogFile;

pub const SEGMENT_SUFFIX: &str = ".log";
/// Linux 6.17's fallocate mode that allocates written, zeroed extents.
const FALLOC_FL_WRITE_ZEROES: libc::c_int = 0x80;

#[derive(Debug, Error)]
pub enum SegmentError {
    #[error("cannot create segment {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot preallocate {size_bytes} bytes for segment {path}: {source}")]
    Preallocate {
        path: PathBuf,
        size_bytes: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot reserve disk space for bytes {from}..{to} of segment {path}: {source}")]
    Reserve {
        path: PathBuf,
        from: u64,
        to: u64,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("cannot open segment {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list segments in {dir}: {source}")]
    List {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How a range of a segment's space was reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preallocation {
    WrittenZeroes,
    Unwritten,
    /// The file system has no fallocate: nothing was reserved, so a full
    /// disk shows up as a failed write (which poisons the log) rather than
    /// a refused append.
    Sparse,
}

#[derive(Debug)]
pub struct Segment {
    pub base: LogPosition,
    pub size_bytes: u64,
    pub path: PathBuf,
    pub writer: Arc<LogFile>,
    pub reader: Arc<File>,
    /// Wall-clock ms of the last write into this segment (retention by age).
    last_write_ms: Cell<u64>,
}

pub fn segment_path(dir: &Path, base: LogPosition) -> PathBuf {
    dir.join(format!("{:020}{SEGMENT_SUFFIX}", base.0))
}

/// Bases of the segment files in `dir`, ascending. Other files are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<LogPosition>, SegmentError> {
    let list_error = |source| SegmentError::List {
        dir: dir.to_owned(),
        source,
    };
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_error)? {
        let name = entry.map_err(list_error)?.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        if stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(LogPosition(base));
        }
    }
    bases.sort();
    Ok(bases)
}

impl Segment {
    /// Create a new segment file of `size_bytes` with its first
    /// `reserve_bytes` (at most `size_bytes`) reserved on disk. An empty
    /// file of that name (left by a create that failed before its
    /// preallocation) holds nothing and is replaced; any other existing file
    /// is an error.
    pub fn create(
        dir: &Path,
        base: LogPosition,
        size_bytes: u64,
        reserve_bytes: u64,
        mode: WriteMode,
    ) -> Result<(Segment, Preallocation), SegmentError> {
        let path = segment_path(dir, base);
        let file = create_writer(&path, mode).map_err(|source| SegmentError::Create {
            path: path.clone(),
            source,
        })?;
        let sized = file
            .set_len(size_bytes)
            .and_then(|()| reserve(&file, &path, 0, reserve_bytes.min(size_bytes)));
        let preallocation = sized.map_err(|source| {
            let _ = std::fs::remove_file(&path);
            SegmentError::Preallocate {
                path: path.clone(),
                size_bytes: reserve_bytes.min(size_bytes),
                source,
            }
        })?;
        // The file is not part of the log until this returns: on any
        // failure past its creation it goes, or every later roll to this
        // base would fail on it ("File exists") until a restart.
        let segment =
            Segment::from_writer(path.clone(), base, size_bytes, file).inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            })?;
        Ok((segment, preallocation))
    }

    /// Open an existing segment; its size is the file's length.
    pub fn open(dir: &Path, base: LogPosition, mode: WriteMode) -> Result<Segment, SegmentError> {
        let path = segment_path(dir, base);
        let open_error = |source| SegmentError::Open {
            path: path.clone(),
            source,
        };
        let file = open_writer(&path, mode, false).map_err(open_error)?;
        let metadata = file.metadata().map_err(open_error)?;
        let segment = Segment::from_writer(path.clone(), base, metadata.len(), file)?;
        let modified_ms = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |age| age.as_millis() as u64);
        segment.last_write_ms.set(modified_ms);
        Ok(segment)
    }

    fn from_writer(
        path: PathBuf,
        base: LogPosition,
        size_bytes: u64,
        writer: File,
    ) -> Result<Segment, SegmentError> {
        let reader = open_reader(&path).map_err(|source| SegmentError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Segment {
            base,
            size_bytes,
            writer: Arc::new(LogFile {
                file: writer,
                path: path.clone(),
            }),
            reader: Arc::new(reader),
            path,
            last_write_ms: Cell::new(now_ms()),
        })
    }

    pub fn end(&self) -> LogPosition {
        self.base.plus(self.size_bytes)
    }

    pub fn contains(&self, position: LogPosition) -> bool {
        self.base <= position && position < self.end()
    }

    pub fn file_offset(&self, position: LogPosition) -> u64 {
        assert!(
            self.base <= position && position <= self.end(),
            "position {position} outside segment {}..{}",
            self.base,
            self.end()
        );
        position.0 - self.base.0
    }

    pub fn last_write_ms(&self) -> u64 {
        self.last_write_ms.get()
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_write_ms.set(now_ms);
    }

    /// Read exactly `buf.len()` bytes at `position` through the page cache,
    /// returning fewer only at the end of the file.
    pub fn read_at(&self, position: LogPosition, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        let offset = self.file_offset(position);
        while done < buf.len() {
            match self.reader.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(read) => done += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(done)
    }
}

/// `open_writer` for a new file; an existing empty one is removed first.
/// Issue 12: an empty file under the name of the next segment used to fail
/// every roll with EEXIST, so every later append on the shard failed.
fn create_writer(path: &Path, mode: WriteMode) -> io::Result<File> {
    match open_writer(path, mode, true) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            if std::fs::metadata(path)?.len() != 0 {
                return Err(error);
            }
            tracing::warn!(path = %path.display(), "replacing an empty segment file left by an earlier failed create");
            std::fs::remove_file(path)?;
            open_writer(path, mode, true)
        }
        result => result,
    }
}

fn open_writer(path: &Path, mode: WriteMode, create_new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create_new {
        options.create_new(true);
    }
    if mode == WriteMode::Direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

/// Reserve disk blocks for `[offset, offset + length)` of a segment file
/// that holds no data there (a write-zeroes reservation zeroes the range):
/// the commit log reserves only ahead of everything it has written.
/// ENOSPC and other errors are returned as they are; a file system without
/// fallocate reserves nothing ([`Preallocation::Sparse`], logged once).
pub fn reserve(file: &File, path: &Path, offset: u64, length: u64) -> io::Result<Preallocation> {
    if length == 0 {
        return Ok(Preallocation::Unwritten);
    }
    let (start, len) = (
        libc::off_t::try_from(offset).map_err(io::Error::other)?,
        libc::off_t::try_from(length).map_err(io::Error::other)?,
    );
    // SAFETY: fallocate only reads its integer arguments; the fd is open.
    let status = unsafe { libc::fallocate(file.as_raw_fd(), FALLOC_FL_WRITE_ZEROES, start, len) };
    if status == 0 {
        return Ok(Preallocation::WrittenZeroes);
    }
    match preallocate::allocate(file, offset, length)? {
        Allocation::Allocated => Ok(Preallocation::Unwritten),
        Allocation::Unsupported => {
            preallocate::log_unsupported(
                path,
                "commit-log segments are written without reserved space, so a disk that fills \
                 stops the shard's log (poisoned until restart) instead of refusing appends",
            );
            Ok(Preallocation::Sparse)
        }
    }
}

/// fsync a directory so entries created or removed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Give the file system back the blocks of `[offset, offset + length)` of a
/// segment file whose range holds no data (a reservation that failed part
/// way). Whole blocks only; nothing where holes cannot be punched.
pub fn release_range(file: &File, offset: u64, length: u64) -> io::Result<()> {
    const BLOCK: u64 = 4096;
    let start = offset.next_multiple_of(BLOCK);
    let end = offset + length;
    if start >= end {
        return Ok(());
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (offset, len) = (
        libc::off_t::try_from(start).map_err(io::Error::other)?,
        libc::off_t::try_from(end - start).map_err(io::Error::other)?,
    );
    // SAFETY: fallocate only reads its integer arguments; the fd is open.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } != 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => Ok(()),
            _ => Err(error),
        };
    }
    Ok(())
}

/// Give the file system back the blocks of `segment` from `from` (the end
/// of its last frame) to its end, keeping the file's size: the range reads
/// as zeros, as the unused end of a rolled segment does anyway. Only whole
/// blocks past `from` are released, so no write in flight (which never
/// passes the block holding `from`) overlaps them. Returns the bytes
/// released, 0 where the file system cannot punch holes.
pub fn release_tail(segment: &Segment, from: LogPosition) -> io::Result<u64> {
    const BLOCK: u64 = 4096;
    let start = segment.file_offset(from).div_ceil(BLOCK) * BLOCK;
    if start >= segment.size_bytes {
        return Ok(0);
    }
    let length = segment.size_bytes - start;
    let file = File::options().write(true).open(&segment.path)?;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (offset, len) = (
        libc::off_t::try_from(start).map_err(io::Error::other)?,
        libc::off_t::try_from(length).map_err(io::Error::other)?,
    );
    // SAFETY: fallocate only reads its integer arguments; the fd is open.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } != 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => Ok(0),
            _ => Err(error),
        };
    }
    Ok(length)
}

/// Zero `[from, to)` of a segment file so stale bytes past a truncation point
/// can never be read back as frames. Punches whole blocks (cheap, metadata
/// only) and writes zeros over partial blocks, then re-reserves the space.
pub fn zero_range(segment: &Segment, from: LogPosition, to: LogPosition) -> io::Result<()> {
    const BLOCK: u64 = 4096;
    let start = segment.file_offset(from);
    let end = segment.file_offset(to);
    if start >= end {
        return Ok(());
    }
    let file = File::options().write(true).open(&segment.path)?;
    let aligned_start = start.div_ceil(BLOCK) * BLOCK;
    let head_end = aligned_start.min(end);
    if head_end > start {
        file.write_all_at(&vec![0u8; (head_end - start) as usize], start)?;
    }
    if end > aligned_start {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let (offset, length) = (
            aligned_start as libc::off_t,
            (end - aligned_start) as libc::off_t,
        );
        // SAFETY: fallocate only reads its integer arguments; the fd is open.
        if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(error);
            }
            // No hole punching here: write zeros instead.
            file.write_all_at(&vec![0u8; (end - aligned_start) as usize], aligned_start)?;
        } else if let Err(error) = preallocate::allocate(&file, aligned_start, end - aligned_start)
        {
            // The range stays a hole: a later write there allocates, and on a
            // full disk fails (poisoning the log) instead of being refused.
            tracing::warn!(path = %segment.path.display(), %error, "cannot re-reserve the zeroed range");
        }
    }
    file.sync_data()
}

/// The segment's read handle. The failpoint `segment_reader_open_once`
/// (debug builds) fails the first open of a segment past the log's first
/// (a roll) with EMFILE, as a process at its open-files limit does between
/// opening a new segment's writer and its reader.
fn open_reader(path: &Path) -> std::io::Result<File> {
    if crate::failpoint::active("segment_reader_open_once") {
        static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let rolled = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .is_some_and(|stem| !stem.trim_start_matches('0').is_empty());
        if rolled && !FIRED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        }
    }
    File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE_BYTES: u64 = 64 * 1024;

    #[test]
    fn an_empty_file_under_a_new_segments_name_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let base = LogPosition(SIZE_BYTES);
        // What a create that failed before its preallocation leaves behind.
        File::create(segment_path(dir.path(), base)).unwrap();
        let (segment, _) = Segment::create(
            dir.path(),
            base,
            SIZE_BYTES,
            SIZE_BYTES,
            WriteMode::Buffered,
        )
        .expect("an empty leftover does not block the roll");
        assert_eq!(segment.end(), base.plus(SIZE_BYTES));
        let on_disk = std::fs::metadata(segment_path(dir.path(), base)).unwrap();
        assert_eq!(on_disk.len(), SIZE_BYTES);
    }

    #[test]
    fn a_file_with_data_under_a_new_segments_name_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let base = LogPosition(0);
        let path = segment_path(dir.path(), base);
        std::fs::write(&path, b"frames").unwrap();
        let error = Segment::create(
            dir.path(),
            base,
            SIZE_BYTES,
            SIZE_BYTES,
            WriteMode::Buffered,
        )
        .expect_err("an existing segment with data is refused");
        assert!(matches!(error, SegmentError::Create { .. }), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"frames");
    }
}
