//! Fetch reads of segment files with O_DIRECT (issue 19 item 2: "catch-up
//! reads of cold data keep going to disk without evicting the hot set").
//!
//! With `storage.write_mode = "direct"` the commit log's writes leave
//! nothing in the page cache, and what the tail cache no longer holds is on
//! disk only: every file part of a fetch response is a cold read. Spliced
//! through the page cache, such a read fills fresh page-cache pages (and
//! evicts whatever else the host caches), and the first CPU to touch those
//! pages is the consumer's, in its copy out of the socket. On a VM whose
//! kernel hands freed pages back to its host, that first touch is a fault
//! into the host per page: a copying consumer read cold data at 0.3 × the
//! host's cold read (benches/README.md, "Why the copying consumer's cold
//! read is slow here").
//!
//! Here a response's file parts are read with O_DIRECT into a few reused
//! aligned buffers and written to the socket from them: the disk's DMA
//! lands in memory the broker touched before, the page cache is left
//! alone, and the read of the next chunk overlaps the send of this one.
//! The parts are planned together ([`ResponseReads`]): neighbouring spans
//! of one file (one partition's batches, 20 bytes of frame header apart)
//! are read as one run in chunks of [`CHUNK_BYTES`], up to
//! [`READS_IN_FLIGHT`] ahead of the send across the whole response, so
//! small batches cost no more reads than large ones. Reads also go on past
//! a response's last run of a file, as many bytes as the response asked
//! of it (when that is at most [`READ_AHEAD_ASKED_MAX`]) and only up to
//! what was final when it was planned ([`ReadAhead`]),
//! and the connection's next response takes them over when it starts in
//! them: a consumer catching up asks next for the bytes that follow, and
//! the disk no longer idles while the response travels and the next fetch
//! comes back (with librdkafka's default 1 MiB a partition, 2314–2322 MB/s
//! against 1645–1678). The price is one copy
//! into the socket per cold byte, which splice avoids on a real NIC.
//!
//! The buffers come from a pool per shard thread of [`POOL_BUFFERS_MAX`]
//! (memory = that × `CHUNK_BYTES`), made [`POOL_GROWTH_BUFFERS`] at a time
//! from one region advised as transparent huge pages
//! ([`AlignedBuf::pool`]): a 1 MiB read into 4 KiB pages is 256 segments,
//! more than the virtio disk's 254 a request, unless the pages happen to
//! be physically contiguous, so the block layer split reads in two
//! depending on how fragmented memory was. From huge pages a read is one
//! segment: cold catch-up with 1 MB batches ran 2125–2418 MB/s against
//! 1333–1877 from fragmented 4 KiB pages (alternating, same binary;
//! benches/README.md, "Cold reads into huge pages"). A response that finds the pool empty
//! is spliced (or copied) as before, so the memory is bounded however many
//! consumers catch up at once. A file system without O_DIRECT (ramfs;
//! tmpfs before Linux 6.6) gets the same fallback, logged once. `sluice_kafka_fetch_file_bytes_total
//! {read}` shows which way file bytes went, and
//! `sluice_kafka_cold_read_pool_empty_total` the parts that found the pool
//! empty (consumers that stop reading hold their buffers while their sends
//! wait).
//!
//! Reads use the segment's own descriptor reopened with O_DIRECT through
//! `/proc/self/fd`, once per file per response, so a segment deleted by
//! retention is still read whole (and its space freed when the send ends,
//! or, for a read-ahead, once the connection's next response drops it or
//! the connection has been quiet for [`READ_AHEAD_KEPT_MAX`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf, IoBufMut, SetLen};
use compio::driver::SharedFd;
use compio::driver::op::ReadAt;

use crate::config::DIRECT_IO_ALIGNMENT_BYTES;
use crate::io::aligned_buf::AlignedBuf;
use crate::kafka::response::Part;
use crate::kafka::transport::Transport;

/// One O_DIRECT read (1 MiB): at one read in flight `dd iflag=direct` ran
/// 1.1–1.3 GB/s here at 1, 4 and 16 MiB alike, and from huge pages 4
/// reads of 4 MiB or 8 of 2 MiB were no faster than 4 of 1 MiB.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Reads a part keeps ahead of its send.
pub const READS_IN_FLIGHT: usize = 4;
/// How long a connection keeps a [`ReadAhead`] while it sends nothing
/// (`ResponseWriter::while_quiet`): it holds its segment file open, so a
/// segment retention deleted meanwhile keeps its space until it goes. A
/// consumer catching up fetches again within milliseconds.
pub const READ_AHEAD_KEPT_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// A response reads on past a run only when it asked at most this much of
/// it: the time between one response and the next fetch matters next to
/// a response of 1 MiB a partition (librdkafka's default), 1.15–1.4 ×
/// with the read-ahead, but not next to one of 16 MiB, where compare.sh's
/// copying consumer ran about 10 % slower with it (benches/README.md,
/// "Reading on past a response").
pub const READ_AHEAD_ASKED_MAX: u64 = 4 << 20;
/// Buffers one shard thread holds at most (64 MiB).
pub const POOL_BUFFERS_MAX: usize = 64;
/// Buffers the pool makes at once, cut from one huge-page region: one
/// response's worth (4 MiB, two huge pages).
pub const POOL_GROWTH_BUFFERS: usize = READS_IN_FLIGHT;
const _: () = assert!(POOL_BUFFERS_MAX.is_multiple_of(POOL_GROWTH_BUFFERS));

const BLOCK: u64 = DIRECT_IO_ALIGNMENT_BYTES as u64;

/// Logged once per process: segment files cannot be opened with O_DIRECT.
static UNSUPPORTED_LOGGED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// An aligned buffer of the shard thread's pool that an io_uring read may
/// own; `len` bytes from its start are filled. Dropped, it goes back to
/// the pool, wherever that happens (a read task dropped with its
/// connection hands it back when the kernel is done with it).
struct DirectBuf {
    buf: Option<AlignedBuf>,
    len: usize,
}

impl DirectBuf {
    fn bytes(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("held until dropped")
    }
}

impl Drop for DirectBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            // At thread exit the pool may be gone: the buffer is freed.
            let _ = POOL.try_with(|pool| pool.borrow_mut().free.push(buf));
        }
    }
}

impl IoBuf for DirectBuf {
    fn as_init(&self) -> &[u8] {
        &self.bytes().as_slice()[..self.len]
    }
}

impl SetLen for DirectBuf {
    unsafe fn set_len(&mut self, len: usize) {
        assert!(len <= self.bytes().capacity(), "set_len past the buffer");
        self.len = len;
    }
}

impl IoBufMut for DirectBuf {
    fn as_uninit(&mut self) -> &mut [MaybeUninit<u8>] {
        let bytes = self
            .buf
            .as_mut()
            .expect("held until dropped")
            .as_mut_slice();
        // SAFETY: u8 and MaybeUninit<u8> have the same layout, and every
        // byte of an AlignedBuf is initialised (it is allocated zeroed).
        unsafe { &mut *(bytes as *mut [u8] as *mut [MaybeUninit<u8>]) }
    }
}

/// The shard thread's buffers: those free, and how many were made.
struct Pool {
    free: Vec<AlignedBuf>,
    made: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { free: Vec::new(), made: 0 }) };
}

/// A buffer from the pool, which makes [`POOL_GROWTH_BUFFERS`] more while
/// fewer than [`POOL_BUFFERS_MAX`] were made; `None` when all are taken.
fn take_buffer() -> Option<DirectBuf> {
    POOL.with_borrow_mut(|pool| {
        if pool.free.is_empty() && pool.made < POOL_BUFFERS_MAX {
            pool.free.extend(AlignedBuf::pool(
                POOL_GROWTH_BUFFERS,
                CHUNK_BYTES,
                BLOCK as usize,
            ));
            pool.made += POOL_GROWTH_BUFFERS;
        }
        let buf = pool.free.pop()?;
        Some(DirectBuf {
            buf: Some(buf),
            len: 0,
        })
    })
}

/// Buffers the pool can still hand out: those free and those it may
/// still make.
fn pool_left() -> usize {
    POOL.with_borrow(|pool| pool.free.len() + (POOL_BUFFERS_MAX - pool.made))
}

/// What [`ResponseReads::send_next`] did with a part. In every case but `Done` nothing
/// was read or written: the caller sends the part another way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The part's bytes were written to the socket.
    Done,
    /// All of the shard thread's buffers are in use.
    PoolEmpty,
    /// The O_DIRECT open failed for now (out of descriptors, say).
    OpenFailed,
    /// Segment files cannot be opened with O_DIRECT at all (logged once):
    /// the caller stops trying.
    Unsupported,
}

/// The counters of file parts sent, for one shard's connections
/// (`sluice_kafka_fetch_file_bytes_total{read}`,
/// `sluice_kafka_cold_read_pool_empty_total`).
#[derive(Clone)]
pub struct FileReadMetrics {
    pub direct_bytes: metrics::Counter,
    pub page_cache_bytes: metrics::Counter,
    pub pool_empty: metrics::Counter,
}

impl FileReadMetrics {
    pub fn for_shard(shard: crate::ids::ShardId) -> FileReadMetrics {
        use crate::telemetry::names;
        let shard = crate::telemetry::storage::shard_label(shard);
        FileReadMetrics {
            direct_bytes: metrics::counter!(names::KAFKA_FETCH_FILE_BYTES, "shard" => shard.clone(), "read" => "direct"),
            page_cache_bytes: metrics::counter!(names::KAFKA_FETCH_FILE_BYTES, "shard" => shard.clone(), "read" => "page_cache"),
            pool_empty: metrics::counter!(names::KAFKA_COLD_READ_POOL_EMPTY, "shard" => shard),
        }
    }
}

/// Reopen `file` (a segment's read descriptor) with O_DIRECT.
fn open_direct(file: &File) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// A read of `want` bytes at `at` (both block-aligned but for the file's
/// end) into `buffer`, run as a task of its own so that it proceeds while
/// the caller writes.
type ReadTask = compio::runtime::JoinHandle<BufResult<usize, DirectBuf>>;

fn spawn_read(fd: SharedFd<File>, at: u64, want: usize, buffer: DirectBuf) -> ReadTask {
    compio::runtime::spawn(async move {
        let BufResult(result, slice) =
            compio::runtime::submit(ReadAt::new(fd, at, buffer.slice(..want)))
                .await
                .into_inner();
        let mut buffer = slice.into_inner();
        if let Ok(read) = result {
            // SAFETY: the kernel filled `read` bytes from the start (at
            // most `want`, within the buffer).
            unsafe { buffer.set_len(read.min(want)) };
        }
        BufResult(result, buffer)
    })
}

/// Spans of one file closer than this (the 20-byte frame headers between
/// one partition's batches, or a few small batches of other partitions)
/// are read as one: reading the gap costs less than starting a new read.
pub const GAP_READ_BYTES_MAX: u64 = 64 * 1024;

/// A bug of the plan, reported instead of sending wrong bytes.
fn out_of_step() -> io::Error {
    io::Error::other("a file span's bytes are not the next read (cold_read plan out of step)")
}

/// A block-aligned run of one file that covers one or more consecutive
/// spans of a response, read in chunks of [`CHUNK_BYTES`].
struct Extent {
    file: Arc<File>,
    /// First byte to read (block-aligned).
    start: u64,
    /// End of the last span in it (not aligned: the read rounds it up).
    end: u64,
    /// The file's bytes below this offset were final when the response
    /// was planned (`Part::File::final_len`): how far a read past the
    /// plan may go.
    final_len: u64,
    source: Source,
}

/// Where an extent's reads come from.
enum Source {
    /// Not opened yet: the reads have not reached it.
    Unopened,
    Direct(SharedFd<File>),
    /// Its spans go the other way, for this reason.
    Declined(Sent),
}

/// A read ahead of the send, in plan order.
struct Read {
    extent: usize,
    at: u64,
    want: usize,
    task: ReadTask,
}

/// A read that came back, the bytes from `at` on of which are being sent.
struct Filled {
    extent: usize,
    at: u64,
    buffer: DirectBuf,
}

/// Reads of one file started past the end of a response's plan, kept by
/// the connection for its next response: a consumer catching up asks next
/// for the bytes that follow, and without them the disk idled from one
/// response's last read to the next response's first.
///
/// They cover whole blocks from the block that holds the last planned
/// span's end up to at most the file's final bytes at the time (never
/// bytes an O_DIRECT rewrite of the partial tail block may still change),
/// in file order and contiguous. A response whose first run starts in
/// them takes them over ([`ResponseReads::plan`]); any other drops them
/// (their buffers go back to the pool when the reads complete).
pub struct ReadAhead {
    file: Arc<File>,
    fd: SharedFd<File>,
    reads: VecDeque<Read>,
}

/// The file parts of one response, read with O_DIRECT ahead of their send
/// across the whole response (a fetch of 16 MiB of 1 MB batches is 16
/// parts; reading each only when its turn came kept one read in flight).
///
/// Spans are sent in the order [`ResponseReads::plan`] saw them, each with
/// [`ResponseReads::send_next`]. At most [`READS_IN_FLIGHT`] buffers are
/// held, one of them while its bytes go to the socket.
pub struct ResponseReads {
    extents: Vec<Extent>,
    /// Per span, in send order: (extent, offset, len).
    spans: Vec<(usize, u64, usize)>,
    next_span: usize,
    /// The next read: its extent and file offset.
    plan_extent: usize,
    plan_at: u64,
    reads: VecDeque<Read>,
    filled: Option<Filled>,
    /// A buffer kept between reads, so a started response never waits on
    /// other connections for the pool.
    spare: Option<DirectBuf>,
    /// Set when the pool was empty at the start: every span goes the
    /// other way.
    declined: Option<Sent>,
    /// Once every planned read has started: the next read past the plan,
    /// in the last extent's file, and the end of what may be read there.
    beyond: Option<(u64, u64)>,
    /// The previous response's reads past its plan, for this extent
    /// ([`Self::park`]); they count as held buffers.
    parked: Option<(usize, VecDeque<Read>)>,
}

impl ResponseReads {
    /// The reads for `parts`' file spans, or `None` when it has none.
    /// Nothing is read or opened until the first [`Self::send_next`].
    ///
    /// `read_ahead`, the reads the connection's previous response started
    /// past its plan, is taken over when this response's first run starts
    /// in them, and dropped when it starts elsewhere; a response without
    /// file parts leaves it.
    pub fn plan(parts: &[Part], read_ahead: &mut Option<ReadAhead>) -> Option<ResponseReads> {
        let mut extents: Vec<Extent> = Vec::new();
        let mut spans = Vec::new();
        for part in parts {
            let Part::File {
                file,
                offset,
                len,
                final_len,
            } = part
            else {
                continue;
            };
            let (offset, len) = (*offset, *len as usize);
            let end = offset + len as u64;
            match extents.last_mut() {
                Some(last)
                    if Arc::ptr_eq(&last.file, file)
                        && offset >= last.end
                        && offset - last.end <= GAP_READ_BYTES_MAX =>
                {
                    last.end = end;
                    last.final_len = last.final_len.max(*final_len);
                }
                _ => extents.push(Extent {
                    file: Arc::clone(file),
                    start: offset - offset % BLOCK,
                    end,
                    final_len: *final_len,
                    source: Source::Unopened,
                }),
            }
            spans.push((extents.len() - 1, offset, len));
        }
        let first = extents.first()?.start;
        let mut reads = ResponseReads {
            extents,
            spans,
            next_span: 0,
            plan_extent: 0,
            plan_at: first,
            reads: VecDeque::with_capacity(READS_IN_FLIGHT),
            filled: None,
            spare: None,
            declined: None,
            beyond: None,
            parked: None,
        };
        if let Some(ahead) = read_ahead.take() {
            reads.park(ahead);
        }
        Some(reads)
    }

    /// Keep `ahead`'s reads for the first run of their file when that run
    /// starts in them; they join the reads when the plan reaches the run
    /// ([`Self::read_ahead`]). Those that end before the run are dropped,
    /// and those from the run's last block on (the next run gets reads
    /// of its own).
    fn park(&mut self, mut ahead: ReadAhead) {
        let Some(index) = self
            .extents
            .iter()
            .position(|run| Arc::ptr_eq(&run.file, &ahead.file))
        else {
            return;
        };
        let run = &self.extents[index];
        while ahead
            .reads
            .front()
            .is_some_and(|read| read.at + read.want as u64 <= run.start)
        {
            ahead.reads.pop_front();
        }
        if ahead.reads.front().is_none_or(|read| read.at > run.start) {
            return;
        }
        let read_end = run.end.next_multiple_of(BLOCK);
        while ahead.reads.back().is_some_and(|read| read.at >= read_end) {
            ahead.reads.pop_back();
        }
        for read in &mut ahead.reads {
            read.extent = index;
        }
        // The run's reads use the same descriptor: it is the first run of
        // that file, so nothing has opened it yet.
        self.extents[index].source = Source::Direct(ahead.fd);
        self.parked = Some((index, ahead.reads));
    }

    /// The reads started past the plan, for the connection's next
    /// response; `None` when there are none (or the plan did not run to
    /// its end).
    pub fn into_read_ahead(self) -> Option<ReadAhead> {
        if self.next_span < self.spans.len() || self.beyond.is_none() || self.reads.is_empty() {
            return None;
        }
        let last = self.extents.last().expect("a plan has a run");
        let Source::Direct(fd) = &last.source else {
            return None;
        };
        Some(ReadAhead {
            file: Arc::clone(&last.file),
            fd: fd.clone(),
            reads: self.reads,
        })
    }

    /// Write the next planned span (`offset`, `len` of `file`, checked
    /// against the plan) to `stream`. In every case but `Done` nothing of
    /// it was written: the caller sends it another way.
    ///
    /// Errors: the socket's, the read's, `UnexpectedEof` when the file
    /// ends inside the span, or a span out of plan. After an error the
    /// response is cut short and the connection closes, as for a failed
    /// splice.
    pub async fn send_next(
        &mut self,
        stream: &Transport,
        file: &Arc<File>,
        offset: u64,
        len: usize,
    ) -> io::Result<Sent> {
        let Some(&(extent, planned_offset, planned_len)) = self.spans.get(self.next_span) else {
            return Err(io::Error::other("a file part the response did not plan"));
        };
        if !Arc::ptr_eq(&self.extents[extent].file, file)
            || (planned_offset, planned_len) != (offset, len)
        {
            return Err(io::Error::other(
                "file parts sent out of their planned order",
            ));
        }
        self.next_span += 1;
        if self.filled.is_none() && self.reads.is_empty() && self.spare.is_none() {
            match take_buffer() {
                Some(buffer) => self.spare = Some(buffer),
                None => {
                    self.declined.get_or_insert(Sent::PoolEmpty);
                }
            }
        }
        if let Some(why) = self.declined {
            return Ok(why);
        }
        if self.open(extent).is_none() {
            let Source::Declined(why) = self.extents[extent].source else {
                unreachable!("open declines or opens");
            };
            return Ok(why);
        }
        self.read_ahead();
        let end = offset + len as u64;
        let mut at = offset;
        while at < end {
            let (from, buffer) = self.bytes_at(extent, at).await?;
            let to = end.min(from + buffer.len as u64);
            let mut writer = stream;
            let BufResult(written, slice) = compio::io::AsyncWriteExt::write_all(
                &mut writer,
                buffer.slice((at - from) as usize..(to - from) as usize),
            )
            .await;
            written?;
            self.filled = Some(Filled {
                extent,
                at: from,
                buffer: slice.into_inner(),
            });
            at = to;
        }
        Ok(Sent::Done)
    }

    /// The filled buffer that holds byte `at` of `extent` (and its file
    /// offset), awaiting the next read when the one in hand is used up.
    async fn bytes_at(&mut self, extent: usize, at: u64) -> io::Result<(u64, DirectBuf)> {
        if let Some(filled) = self.filled.take() {
            if filled.extent == extent
                && filled.at <= at
                && at < filled.at + filled.buffer.len as u64
            {
                return Ok((filled.at, filled.buffer));
            }
            self.spare = Some(filled.buffer);
            self.read_ahead();
        }
        if self.reads.is_empty() {
            self.give_way();
        }
        let Some(read) = self.reads.pop_front() else {
            return Err(out_of_step());
        };
        let BufResult(result, buffer) = read
            .task
            .await
            .map_err(|error| io::Error::other(format!("a segment read task failed: {error:?}")))?;
        // Chunks are contiguous over an extent and every chunk holds bytes
        // of a span, so the next read starts at or before `at`.
        if read.extent != extent || read.at > at || at >= read.at + read.want as u64 {
            return Err(out_of_step());
        }
        let read_bytes = result?;
        let needed = self.extents[extent].end.min(read.at + read.want as u64);
        if read.at + (read_bytes as u64) < needed {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment file ended inside a fetched batch",
            ));
        }
        Ok((read.at, buffer))
    }

    /// Start reads while fewer than [`READS_IN_FLIGHT`] buffers are held
    /// and the plan has bytes left; opens extents' files as reached. Past
    /// the plan, reads go on in the last extent's file ([`ReadAhead`]).
    fn read_ahead(&mut self) {
        while self.held() < READS_IN_FLIGHT {
            let Some(extent) = self.extents.get(self.plan_extent) else {
                self.read_beyond();
                return;
            };
            if let Some((_, parked)) = self.parked.take_if(|(index, _)| *index == self.plan_extent)
            {
                let last = parked.back().expect("a parked read");
                self.plan_at = last.at + last.want as u64;
                self.reads.extend(parked);
                continue;
            }
            let read_end = extent.end.next_multiple_of(BLOCK);
            if self.plan_at >= read_end || matches!(extent.source, Source::Declined(_)) {
                self.plan_extent += 1;
                if let Some(next) = self.extents.get(self.plan_extent) {
                    self.plan_at = next.start;
                }
                continue;
            }
            let Some(fd) = self.open(self.plan_extent) else {
                continue;
            };
            let Some(buffer) = self.spare.take().or_else(take_buffer) else {
                return;
            };
            let want = (read_end - self.plan_at).min(CHUNK_BYTES as u64) as usize;
            self.reads.push_back(Read {
                extent: self.plan_extent,
                at: self.plan_at,
                want,
                task: spawn_read(fd, self.plan_at, want, buffer),
            });
            self.plan_at += want as u64;
        }
    }

    /// Reads parked for a later run give way, latest first, until a read
    /// of the current run has started: they count against the buffers
    /// this response may hold, and must not leave the runs before theirs
    /// without a read to wait on. (Today at most `READS_IN_FLIGHT - 1`
    /// are parked, as the buffer of a response's last span is still held
    /// when its reads are handed on, so one slot is always free; this
    /// keeps that from being load-bearing.)
    fn give_way(&mut self) {
        while self.reads.is_empty() {
            let Some((_, parked)) = self.parked.as_mut() else {
                return;
            };
            parked.pop_back();
            if parked.is_empty() {
                self.parked = None;
            }
            self.read_ahead();
        }
    }

    /// Buffers this response holds: reads in flight or parked, and the
    /// one being sent.
    fn held(&self) -> usize {
        self.reads.len()
            + usize::from(self.filled.is_some())
            + self.parked.as_ref().map_or(0, |(_, reads)| reads.len())
    }

    /// Past the plan: start reads of the last extent's file from the block
    /// that holds its end, as many bytes as the response asked of that
    /// extent (none past [`READ_AHEAD_ASKED_MAX`]) and up to the file's
    /// final bytes, while fewer than [`READS_IN_FLIGHT`] buffers are held
    /// and at least half of the pool is left to other responses (a
    /// connection holds these buffers until its next request, or
    /// [`READ_AHEAD_KEPT_MAX`] of quiet).
    fn read_beyond(&mut self) {
        let Some(last) = self.extents.last() else {
            return;
        };
        let Source::Direct(fd) = &last.source else {
            return;
        };
        let index = self.extents.len() - 1;
        // Decided once per response, when the plan's reads have all started.
        let (mut at, end) = *self.beyond.get_or_insert_with(|| {
            let asked: u64 = self
                .spans
                .iter()
                .filter(|span| span.0 == index)
                .map(|span| span.2 as u64)
                .sum();
            let from = last.end - last.end % BLOCK;
            if asked > READ_AHEAD_ASKED_MAX {
                (from, from)
            } else {
                let final_end = last.final_len - last.final_len % BLOCK;
                (
                    from,
                    final_end.min((from + asked + BLOCK).next_multiple_of(BLOCK)),
                )
            }
        });
        while at < end && self.held() < READS_IN_FLIGHT && pool_left() >= POOL_BUFFERS_MAX / 2 {
            let Some(buffer) = self.spare.take().or_else(take_buffer) else {
                break;
            };
            let want = (end - at).min(CHUNK_BYTES as u64) as usize;
            self.reads.push_back(Read {
                extent: index,
                at,
                want,
                task: spawn_read(fd.clone(), at, want, buffer),
            });
            at += want as u64;
        }
        self.beyond = Some((at, end));
    }

    /// The O_DIRECT descriptor of extent `index`, opened on first use (or
    /// shared with an earlier extent of the same file); `None` when the
    /// extent was declined, now or before.
    fn open(&mut self, index: usize) -> Option<SharedFd<File>> {
        match &self.extents[index].source {
            Source::Direct(fd) => return Some(fd.clone()),
            Source::Declined(_) => return None,
            Source::Unopened => {}
        }
        let file = &self.extents[index].file;
        let earlier = self.extents[..index]
            .iter()
            .find_map(|extent| match &extent.source {
                Source::Direct(fd) if Arc::ptr_eq(&extent.file, file) => Some(fd.clone()),
                _ => None,
            });
        let source = match earlier
            .map(Ok)
            .unwrap_or_else(|| open_direct(file).map(SharedFd::new))
        {
            Ok(fd) => Source::Direct(fd),
            // EINVAL: a file system without O_DIRECT (ramfs); ENOENT: no /proc.
            Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
                if !UNSUPPORTED_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(%error, "cannot open segment files with O_DIRECT for fetches; they are read through the page cache (storage.cold_reads)");
                }
                Source::Declined(Sent::Unsupported)
            }
            // Out of descriptors, say: this extent goes the other way.
            Err(_) => Source::Declined(Sent::OpenFailed),
        };
        let fd = match &source {
            Source::Direct(fd) => Some(fd.clone()),
            _ => None,
        };
        self.extents[index].source = source;
        fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span of a response: (file, offset, len, the file's final bytes).
    type Span<'a> = (&'a Arc<File>, u64, usize, u64);

    /// One connection's socket, the peer reading it, and the read-ahead
    /// its responses hand on, as `ResponseWriter` keeps it.
    struct Connection {
        runtime: compio::runtime::Runtime,
        stream: Transport,
        client: std::net::TcpStream,
        read_ahead: Option<ReadAhead>,
    }

    impl Connection {
        fn new() -> Connection {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            let runtime = compio::runtime::Runtime::new().unwrap();
            let stream = runtime.block_on(async {
                Transport::Plain(compio::net::TcpStream::from_std(server).unwrap())
            });
            Connection {
                runtime,
                stream,
                client,
                read_ahead: None,
            }
        }

        /// Send `spans` as one response's file parts, planned and sent
        /// through [`ResponseReads`], and return what the peer received
        /// for each; `None` when the file system refuses O_DIRECT.
        fn respond(&mut self, spans: &[Span]) -> Option<Vec<Vec<u8>>> {
            let total: usize = spans.iter().map(|span| span.2).sum();
            let client = self.client.try_clone().unwrap();
            let reader = std::thread::spawn(move || {
                let mut received = vec![0u8; total];
                std::io::Read::read_exact(&mut &client, &mut received).map(|()| received)
            });
            let parts: Vec<Part> = spans
                .iter()
                .map(|&(file, offset, len, final_len)| Part::File {
                    file: Arc::clone(file),
                    offset,
                    len: len as u32,
                    final_len,
                })
                .collect();
            let (stream, read_ahead) = (&self.stream, &mut self.read_ahead);
            let supported = self.runtime.block_on(async {
                let mut reads = ResponseReads::plan(&parts, read_ahead).expect("file parts");
                for &(file, offset, len, _) in spans {
                    match reads.send_next(stream, file, offset, len).await.unwrap() {
                        Sent::Done => {}
                        Sent::Unsupported => return false,
                        Sent::PoolEmpty | Sent::OpenFailed => panic!("declined"),
                    }
                }
                *read_ahead = reads.into_read_ahead();
                true
            });
            let received = reader.join().unwrap().unwrap();
            if !supported {
                return None;
            }
            let mut at = 0;
            Some(
                spans
                    .iter()
                    .map(|span| {
                        at += span.2;
                        received[at - span.2..at].to_vec()
                    })
                    .collect(),
            )
        }

        /// Let the reads started past the last response complete.
        fn settle(&self) {
            self.runtime
                .block_on(compio::time::sleep(std::time::Duration::from_millis(100)));
        }
    }

    /// Send `(file, offset, len)` spans, all of whose files are final, as
    /// one response on a new connection (see [`Connection::respond`]).
    fn sent(spans: &[(&Arc<File>, u64, usize)]) -> Option<Vec<Vec<u8>>> {
        let spans: Vec<Span> = spans
            .iter()
            .map(|&(file, offset, len)| (file, offset, len, file.metadata().unwrap().len()))
            .collect();
        Connection::new().respond(&spans)
    }

    /// A file of `bytes` in the build tree (/tmp may be a file system
    /// without O_DIRECT), with bytes that differ from block to block.
    fn segment(dir: &tempfile::TempDir, name: &str, bytes: u64, seed: u64) -> (Vec<u8>, Arc<File>) {
        let path = dir.path().join(name);
        let contents: Vec<u8> = (0..bytes)
            .map(|at| (at * 7 + at / 4096 + seed) as u8)
            .collect();
        std::fs::write(&path, &contents).unwrap();
        (contents, Arc::new(File::open(&path).unwrap()))
    }

    /// Spans that start and end off the block grid, within one block,
    /// across chunk boundaries, over more chunks than are in flight,
    /// back to back with 20-byte gaps (one partition's batches), past a
    /// gap too wide to read through, backwards, and alternating between
    /// two files (at neighbouring offsets too) all arrive as in the files
    /// (mutation: reading from the span's offset rounded the wrong way
    /// shifts the bytes; merging spans of two files trips the plan check).
    #[test]
    fn spans_arrive_byte_for_byte_whatever_their_alignment() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (one, a) = segment(&dir, "a", 5 * CHUNK_BYTES as u64, 0);
        let (two, b) = segment(&dir, "b", 2 * CHUNK_BYTES as u64 + 10, 99);
        let chunk = CHUNK_BYTES as u64;
        let batch = 1_000_000;
        let spans = [
            (&a, 0, 4096),
            (&a, 1, 10),
            (&a, 4095, 2),
            (&a, chunk - 100, 200),
            (&a, 12_345, 4 * CHUNK_BYTES + 777),
            (&a, 5 * chunk - 1, 1),
            (&a, 20, batch),
            (&a, 1_000_040, batch),
            (&a, 2_000_060, batch),
            (&a, 3_000_080, batch),
            (&a, 4_000_080 + GAP_READ_BYTES_MAX + 1, 100_000),
            (&b, 7, 1_500_000),
            (&a, 4096, 3),
            (&b, 1_500_007, 2 * CHUNK_BYTES + 10 - 1_500_007),
            (&a, 100, 50),
            (&b, 150, 1000),
        ];
        let Some(received) = sent(&spans) else {
            eprintln!("skipped: this file system refuses O_DIRECT");
            return;
        };
        for ((file, offset, len), bytes) in spans.iter().zip(received) {
            let contents = if Arc::ptr_eq(file, &a) { &one } else { &two };
            let offset = *offset as usize;
            assert!(
                bytes == contents[offset..offset + len],
                "span {offset}+{len} differs"
            );
        }
    }

    /// Plan one file part, `planned` (offset, len) of `file`, and send
    /// `asked` through it to a socket nobody reads.
    fn send_one(file: &Arc<File>, planned: (u64, usize), asked: (u64, usize)) -> io::Result<Sent> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let parts = [Part::File {
            file: Arc::clone(file),
            offset: planned.0,
            len: planned.1 as u32,
            final_len: planned.0 + planned.1 as u64,
        }];
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let stream = Transport::Plain(compio::net::TcpStream::from_std(server).unwrap());
            let mut reads = ResponseReads::plan(&parts, &mut None).expect("a file part");
            reads.send_next(&stream, file, asked.0, asked.1).await
        })
    }

    /// Overwrite `bytes` of `path` at `at` through the page cache, as the
    /// commit log rewrites its partial tail block and appends.
    fn overwrite(path: &std::path::Path, at: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(bytes, at).unwrap();
    }

    /// A consumer catching up: the reads a response starts past its
    /// spans serve the next response's spans of the same file, but never
    /// bytes at or past the final length the first response was planned
    /// with. The test changes bytes between the responses: below the old
    /// final length (which the broker never does) to see which bytes came
    /// from the read-ahead, and past it (the partial tail block rewritten,
    /// new batches appended), which must arrive as they are now.
    /// (Mutations: reading ahead to the file's end sends the stale tail;
    /// dropping the read-ahead sends the new bytes below the old final
    /// length; keeping it for a response that starts before it shifts
    /// the bytes or trips the plan check.)
    #[test]
    fn reads_past_a_response_serve_the_next_only_below_the_final_length() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (mut contents, a) = segment(&dir, "a", 6 * CHUNK_BYTES as u64, 0);
        let (other, b) = segment(&dir, "b", CHUNK_BYTES as u64, 7);
        let path = dir.path().join("a");
        let final_then = 2_500_007u64;
        let mut connection = Connection::new();
        // Asks 2 MB of `a`: the read-ahead may go as far again, but the
        // final length stops it first.
        let Some(first) = connection.respond(&[(&a, 20, 2_000_000, final_then)]) else {
            eprintln!("skipped: this file system refuses O_DIRECT");
            return;
        };
        assert!(first[0] == contents[20..2_000_020]);
        connection.settle();
        // Below the old final length: what the read-ahead holds is sent.
        let changed = vec![0xA5u8; 200_000];
        overwrite(&path, 2_100_000, &changed);
        // From the old final length on: new bytes, which must be sent.
        let appended: Vec<u8> = (0..1_000_000u32).map(|at| (at % 251) as u8).collect();
        overwrite(&path, final_then, &appended);
        contents[final_then as usize..final_then as usize + appended.len()]
            .copy_from_slice(&appended);
        let final_now = final_then + appended.len() as u64;
        let second = connection
            .respond(&[
                (&b, 5, 1000, CHUNK_BYTES as u64),
                (&a, 2_000_040, 400_000, final_now),
                (&a, 2_400_060, 1_000_000, final_now),
            ])
            .unwrap();
        assert!(second[0] == other[5..1005]);
        assert!(
            second[1] == contents[2_000_040..2_400_040],
            "the read-ahead's bytes (read before the change) were not used"
        );
        assert!(
            second[2] == contents[2_400_060..3_400_060],
            "bytes past the old final length arrived stale"
        );
        // A response that starts before the read-ahead drops it.
        contents[2_100_000..2_300_000].copy_from_slice(&changed);
        connection.settle();
        let third = connection
            .respond(&[
                (&a, 100, 3_000_000, final_now),
                (&a, 3_400_000, 100, final_now),
            ])
            .unwrap();
        assert!(third[0] == contents[100..3_000_100]);
        assert!(third[1] == contents[3_400_000..3_400_100]);
    }

    /// Reads kept past a response for a file that the next response
    /// reaches only after another file's spans: the other file's spans
    /// still get reads and every byte arrives as in the files, whether
    /// three reads are parked (as now) or four. (Mutation: releasing the
    /// last span's buffer before handing the reads on parks four; without
    /// [`ResponseReads::give_way`] as well, the first span has no read to
    /// wait on and fails "out of step".)
    #[test]
    fn reads_kept_for_a_later_run_give_way_to_the_runs_before_it() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (contents, a) = segment(&dir, "a", 12 * CHUNK_BYTES as u64, 0);
        let (other, b) = segment(&dir, "b", 3 * CHUNK_BYTES as u64, 7);
        let final_len = 12 * CHUNK_BYTES as u64;
        let mut connection = Connection::new();
        // Asks 4 MB of `a`: as much is read on past it, every slot.
        let Some(first) = connection.respond(&[(&a, 20, 4_000_000, final_len)]) else {
            eprintln!("skipped: this file system refuses O_DIRECT");
            return;
        };
        assert!(first[0] == contents[20..4_000_020]);
        connection.settle();
        let second = connection
            .respond(&[
                (&b, 5, 2_500_000, 3 * CHUNK_BYTES as u64),
                (&a, 4_000_040, 5_000_000, final_len),
            ])
            .unwrap();
        assert!(second[0] == other[5..2_500_005]);
        assert!(second[1] == contents[4_000_040..9_000_040]);
    }

    /// A span past the file's end fails with UnexpectedEof instead of
    /// sending zeros or hanging.
    #[test]
    fn a_span_past_the_end_of_the_file_is_an_error() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (_, file) = segment(&dir, "segment", 3 * 4096 + 10, 0);
        let span = (4096, 3 * 4096);
        match send_one(&file, span, span) {
            Err(error) => assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof),
            Ok(Sent::Unsupported) => {}
            Ok(_) => panic!("sent a span the file does not hold"),
        }
    }

    /// A span other than the next planned one is refused, not sent from
    /// the wrong buffer.
    #[test]
    fn a_span_out_of_plan_is_refused() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (_, file) = segment(&dir, "segment", 8192, 0);
        assert!(send_one(&file, (0, 100), (100, 100)).is_err());
    }

    /// The pool makes at most [`POOL_BUFFERS_MAX`] buffers; one dropped
    /// anywhere is taken again.
    #[test]
    fn the_pool_is_bounded_and_buffers_come_back_when_dropped() {
        std::thread::spawn(|| {
            let taken: Vec<DirectBuf> = (0..POOL_BUFFERS_MAX)
                .map(|_| take_buffer().expect("under the bound"))
                .collect();
            assert!(take_buffer().is_none(), "the bound holds");
            // Cut from huge-page regions: every growth starts at a 2 MiB
            // boundary, so a 1 MiB read never spans two huge pages.
            let region_starts = taken
                .iter()
                .filter(|buf| (buf.bytes().as_ptr() as usize).is_multiple_of(2 << 20))
                .count();
            assert!(
                region_starts >= POOL_BUFFERS_MAX / POOL_GROWTH_BUFFERS,
                "{region_starts} buffers at a huge page's start"
            );
            assert!(
                taken
                    .iter()
                    .all(|buf| (buf.bytes().as_ptr() as usize).is_multiple_of(CHUNK_BYTES)),
                "each buffer within one huge page"
            );
            drop(taken.into_iter().next());
            assert!(take_buffer().is_some(), "a dropped buffer is back");
        })
        .join()
        .unwrap();
    }
}
