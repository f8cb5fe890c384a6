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
//! Here a file part is read with O_DIRECT into a few reused aligned buffers
//! (up to [`READS_IN_FLIGHT`] reads of [`CHUNK_BYTES`] ahead of the send)
//! and written to the socket from them: the disk's DMA lands in memory the
//! broker touched before, the page cache is left alone, and the read of
//! the next chunk overlaps the send of this one. The price is one copy into
//! the socket per cold byte, which splice avoids on a real NIC.
//!
//! The buffers come from a pool per shard thread of [`POOL_BUFFERS_MAX`]
//! (memory = that × `CHUNK_BYTES`). A part that finds the pool empty is
//! spliced (or copied) as before, so the memory is bounded however many
//! consumers catch up at once. A file system without O_DIRECT (ramfs; tmpfs before Linux 6.6) gets
//! the same fallback, logged once. `sluice_kafka_fetch_file_bytes_total
//! {read}` shows which way file bytes went, and
//! `sluice_kafka_cold_read_pool_empty_total` the parts that found the pool
//! empty (consumers that stop reading hold their buffers while their sends
//! wait).
//!
//! Reads use the segment's own descriptor reopened with O_DIRECT through
//! `/proc/self/fd`, once per response part, so a segment deleted by
//! retention is still read whole (and its space freed when the send ends).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf, IoBufMut, SetLen};
use compio::driver::SharedFd;
use compio::driver::op::ReadAt;

use crate::config::DIRECT_IO_ALIGNMENT_BYTES;
use crate::io::aligned_buf::AlignedBuf;
use crate::kafka::transport::Transport;

/// One O_DIRECT read (1 MiB): at one read in flight `dd iflag=direct` ran
/// 1.1–1.3 GB/s here at 1, 4 and 16 MiB alike.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Reads a part keeps ahead of its send.
pub const READS_IN_FLIGHT: usize = 4;
/// Buffers one shard thread holds at most (64 MiB).
pub const POOL_BUFFERS_MAX: usize = 64;

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

/// A buffer from the pool, or a new one while fewer than
/// [`POOL_BUFFERS_MAX`] were made; `None` when all are taken.
fn take_buffer() -> Option<DirectBuf> {
    POOL.with_borrow_mut(|pool| {
        let buf = match pool.free.pop() {
            Some(buf) => buf,
            None if pool.made < POOL_BUFFERS_MAX => {
                pool.made += 1;
                AlignedBuf::zeroed(CHUNK_BYTES, BLOCK as usize)
            }
            None => return None,
        };
        Some(DirectBuf {
            buf: Some(buf),
            len: 0,
        })
    })
}

/// What [`send_direct`] did with a part. In every case but `Done` nothing
/// was read or written: the caller sends the part another way.
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

/// Write `len` bytes of `file` from `offset` to `stream`, read with
/// O_DIRECT in chunks of [`CHUNK_BYTES`], [`READS_IN_FLIGHT`] ahead.
///
/// Errors: the socket's, the read's, or `UnexpectedEof` when the file ends
/// inside the part. After an error the response is cut short and the
/// connection closes, as for a failed splice.
pub async fn send_direct(
    stream: &Transport,
    file: &File,
    offset: u64,
    len: usize,
) -> io::Result<Sent> {
    let end = offset + len as u64;
    let Some(first) = take_buffer() else {
        return Ok(Sent::PoolEmpty);
    };
    let direct = match open_direct(file) {
        Ok(direct) => SharedFd::new(direct),
        // EINVAL: a file system without O_DIRECT (ramfs); ENOENT: no /proc.
        Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
            if !UNSUPPORTED_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(%error, "cannot open segment files with O_DIRECT for fetches; they are read through the page cache (storage.cold_reads)");
            }
            return Ok(Sent::Unsupported);
        }
        // Out of descriptors, say: this part goes the other way.
        Err(_) => return Ok(Sent::OpenFailed),
    };
    // A buffer this part holds between reads: it always has one, so it
    // never waits on other connections for the pool.
    let mut spare = Some(first);
    let mut next_read = offset - offset % BLOCK;
    let mut reads: VecDeque<(u64, usize, ReadTask)> = VecDeque::new();
    loop {
        while reads.len() < READS_IN_FLIGHT && next_read < end {
            let Some(buffer) = spare.take().or_else(take_buffer) else {
                break;
            };
            let want = (end.next_multiple_of(BLOCK) - next_read).min(CHUNK_BYTES as u64) as usize;
            reads.push_back((
                next_read,
                want,
                spawn_read(direct.clone(), next_read, want, buffer),
            ));
            next_read += want as u64;
        }
        let Some((at, want, task)) = reads.pop_front() else {
            assert!(next_read >= end, "a part with bytes left and no read");
            return Ok(Sent::Done);
        };
        let BufResult(result, buffer) = match task.await {
            Ok(done) => done,
            Err(error) => {
                return Err(io::Error::other(format!(
                    "a segment read task failed: {error:?}"
                )));
            }
        };
        let read = result?;
        let (from, to) = (offset.max(at), end.min(at + want as u64));
        if at + (read as u64) < to {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment file ended inside a fetched batch",
            ));
        }
        let (lo, hi) = ((from - at) as usize, (to - at) as usize);
        let mut writer = stream;
        let BufResult(written, slice) =
            compio::io::AsyncWriteExt::write_all(&mut writer, buffer.slice(lo..hi)).await;
        written?;
        spare = Some(slice.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send `(offset, len)` spans of a 5 MiB file through [`send_direct`]
    /// to a socket and return what the peer received for each.
    fn sent(file: &File, spans: &[(u64, usize)]) -> Option<Vec<Vec<u8>>> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let total: usize = spans.iter().map(|(_, len)| len).sum();
        let reader = std::thread::spawn(move || {
            let mut received = vec![0u8; total];
            std::io::Read::read_exact(&mut &client, &mut received).map(|()| received)
        });
        let outcome = compio::runtime::Runtime::new().unwrap().block_on(async {
            let stream = Transport::Plain(compio::net::TcpStream::from_std(server).unwrap());
            for &(offset, len) in spans {
                match send_direct(&stream, file, offset, len).await.unwrap() {
                    Sent::Done => {}
                    Sent::Unsupported => return false,
                    Sent::PoolEmpty | Sent::OpenFailed => panic!("declined"),
                }
            }
            true
        });
        if !outcome {
            return None;
        }
        let received = reader.join().unwrap().unwrap();
        let mut at = 0;
        Some(
            spans
                .iter()
                .map(|&(_, len)| {
                    at += len;
                    received[at - len..at].to_vec()
                })
                .collect(),
        )
    }

    /// Spans that start and end off the block grid, within one block,
    /// across chunk boundaries and over more chunks than are in flight
    /// all arrive as in the file (mutation: reading from the span's offset
    /// rounded the wrong way shifts the bytes).
    #[test]
    fn spans_arrive_byte_for_byte_whatever_their_alignment() {
        // In the build tree: /tmp may be a file system without O_DIRECT.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("segment");
        let contents: Vec<u8> = (0..5 * CHUNK_BYTES as u64)
            .map(|at| (at * 7 + at / 4096) as u8)
            .collect();
        std::fs::write(&path, &contents).unwrap();
        let file = File::open(&path).unwrap();
        let chunk = CHUNK_BYTES as u64;
        let spans = [
            (0, 4096),
            (1, 10),
            (4095, 2),
            (chunk - 100, 200),
            (12_345, 4 * CHUNK_BYTES + 777),
            (5 * chunk - 1, 1),
        ];
        let Some(received) = sent(&file, &spans) else {
            eprintln!("skipped: this file system refuses O_DIRECT");
            return;
        };
        for ((offset, len), bytes) in spans.iter().zip(received) {
            let offset = *offset as usize;
            assert!(
                bytes == contents[offset..offset + len],
                "span {offset}+{len} differs"
            );
        }
    }

    /// A span past the file's end fails with UnexpectedEof instead of
    /// sending zeros or hanging.
    #[test]
    fn a_span_past_the_end_of_the_file_is_an_error() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, vec![1u8; 3 * 4096 + 10]).unwrap();
        let file = File::open(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let stream = Transport::Plain(compio::net::TcpStream::from_std(server).unwrap());
            match send_direct(&stream, &file, 4096, 3 * 4096).await {
                Err(error) => assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof),
                Ok(Sent::Unsupported) => {}
                Ok(_) => panic!("sent a span the file does not hold"),
            }
        });
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
            drop(taken.into_iter().next());
            assert!(take_buffer().is_some(), "a dropped buffer is back");
        })
        .join()
        .unwrap();
    }
}
