//! Responses as lists of parts, and sending them.
//!
//! A part is either bytes in memory (headers, encoded responses, the last
//! partial block of the log) or a span of a segment file (fetched record
//! batches). Memory parts are coalesced into few writes. File spans go to the
//! socket with zero copies on io_uring: `splice` from the file into a
//! per-connection pipe, then from the pipe into the socket. The disk read runs
//! in io_uring's workers, not on the shard thread. On the epoll fallback
//! (where splice cannot wait on a regular file) they are read into a buffer
//! and written: correct, not zero-copy.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use compio::BufResult;
use compio::driver::SharedFd;
use compio::fs::pipe::{Receiver, Sender};
use compio::io::AsyncWriteExt;
use compio::net::TcpStream;
use kafka_protocol::messages::ResponseHeader;
use kafka_protocol::protocol::Encodable;

use crate::io::IoBackend;
use crate::kafka::cold_read;
use crate::kafka::transport::Transport;

/// Memory parts up to this size are copied into one write with their neighbours.
const COALESCE_BYTES_MAX: usize = 64 * 1024;
/// Pipe capacity asked for (Linux default 64 KiB; 1 MiB is the usual cap).
const PIPE_BYTES: i32 = 1024 * 1024;
/// Bytes read per step when copying file spans on the epoll fallback.
const COPY_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub enum Part {
    Bytes(Bytes),
    /// `len` bytes of `file` from `offset`; the file's bytes below
    /// `final_len` were final when the response was built (a read may run
    /// on up to there: `cold_read::ReadAhead`).
    File {
        file: Arc<File>,
        offset: u64,
        len: u32,
        final_len: u64,
    },
}

/// A response body (without the 4-byte size), ready to send.
#[derive(Clone, Debug, Default)]
pub struct Response {
    parts: Vec<Part>,
    len: usize,
}

impl Response {
    pub fn push_bytes(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.parts.push(Part::Bytes(bytes));
    }

    /// Append `len` bytes of `file` from `offset`, whose bytes below
    /// `final_len` (at least `offset + len`) are final.
    pub fn push_file(&mut self, file: Arc<File>, offset: u64, len: u32, final_len: u64) {
        if len == 0 {
            return;
        }
        debug_assert!(
            final_len >= offset + u64::from(len),
            "a part's bytes are final"
        );
        self.len += len as usize;
        self.parts.push(Part::File {
            file,
            offset,
            len,
            final_len,
        });
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// A response made of a header and a message encoded by kafka-protocol.
    pub fn encode<M: Encodable>(
        correlation_id: i32,
        header_version: i16,
        body: &M,
        version: i16,
    ) -> anyhow::Result<Response> {
        let header = ResponseHeader::default().with_correlation_id(correlation_id);
        let size = header.compute_size(header_version)? + body.compute_size(version)?;
        let mut buffer = BytesMut::with_capacity(size);
        header.encode(&mut buffer, header_version)?;
        body.encode(&mut buffer, version)?;
        let mut response = Response::default();
        response.push_bytes(buffer.freeze());
        Ok(response)
    }
}

/// A response too large for the frame's i32 size field: the connection
/// closes instead of sending a size that lies.
#[derive(Debug, thiserror::Error)]
#[error("a response of {len} bytes does not fit a Kafka frame (2 GiB at most): {source}")]
struct ResponseTooLarge {
    len: usize,
    #[source]
    source: std::num::TryFromIntError,
}

/// Sends responses on one connection.
pub struct ResponseWriter {
    backend: IoBackend,
    /// Read file parts with O_DIRECT (`cold_read.rs`); turned off for the
    /// connection when the file system refuses it.
    direct_reads: bool,
    metrics: cold_read::FileReadMetrics,
    pipe: Option<(Receiver, Sender)>,
    /// Reads the last response started past its file parts, for the next.
    read_ahead: Option<cold_read::ReadAhead>,
}

struct SegmentFd(Arc<File>);

impl AsFd for SegmentFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl ResponseWriter {
    /// A writer for one connection; `direct_reads`: read file parts with
    /// O_DIRECT ([`crate::config::StorageConfig::direct_cold_reads`]).
    pub fn new(
        backend: IoBackend,
        direct_reads: bool,
        metrics: cold_read::FileReadMetrics,
    ) -> ResponseWriter {
        ResponseWriter {
            backend,
            direct_reads,
            metrics,
            pipe: None,
            read_ahead: None,
        }
    }

    /// Write `response`, preceded by its size.
    pub async fn send(&mut self, stream: &Transport, response: Response) -> io::Result<()> {
        let size = i32::try_from(response.len).map_err(|source| {
            io::Error::other(ResponseTooLarge {
                len: response.len,
                source,
            })
        })?;
        let mut pending = BytesMut::with_capacity(4 + response.len.min(COALESCE_BYTES_MAX));
        pending.put_i32(size);
        let mut direct = if self.direct_reads {
            cold_read::ResponseReads::plan(&response.parts, &mut self.read_ahead)
        } else {
            None
        };
        for part in response.parts {
            match part {
                Part::Bytes(bytes) if bytes.len() <= COALESCE_BYTES_MAX => {
                    pending.extend_from_slice(&bytes)
                }
                Part::Bytes(bytes) => {
                    write_pending(stream, &mut pending).await?;
                    write_all(stream, bytes).await?;
                }
                Part::File {
                    file, offset, len, ..
                } => {
                    write_pending(stream, &mut pending).await?;
                    self.send_file(stream, direct.as_mut(), file, offset, len as usize)
                        .await?;
                }
            }
        }
        write_pending(stream, &mut pending).await?;
        if let Some(direct) = direct {
            self.read_ahead = direct.into_read_ahead();
        }
        Ok(())
    }

    /// Await `quiet` (the connection's next request or answer); a
    /// read-ahead kept meanwhile is dropped after
    /// [`cold_read::READ_AHEAD_KEPT_MAX`], since it holds its segment file
    /// open (the issue-19 breaker trial found connections that went quiet
    /// after one cold fetch keeping segments retention had deleted).
    pub async fn while_quiet<F: std::future::Future>(&mut self, quiet: F) -> F::Output {
        let mut quiet = std::pin::pin!(quiet);
        if self.read_ahead.is_some() {
            match compio::time::timeout(cold_read::READ_AHEAD_KEPT_MAX, quiet.as_mut()).await {
                Ok(output) => return output,
                Err(_) => self.read_ahead = None,
            }
        }
        quiet.await
    }

    async fn send_file(
        &mut self,
        stream: &Transport,
        direct: Option<&mut cold_read::ResponseReads>,
        file: Arc<File>,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        if let Some(direct) = direct.filter(|_| self.direct_reads) {
            match direct.send_next(stream, &file, offset, len).await? {
                cold_read::Sent::Done => {
                    self.metrics.direct_bytes.increment(len as u64);
                    return Ok(());
                }
                cold_read::Sent::PoolEmpty => self.metrics.pool_empty.increment(1),
                cold_read::Sent::OpenFailed => {}
                cold_read::Sent::Unsupported => self.direct_reads = false,
            }
        }
        self.metrics.page_cache_bytes.increment(len as u64);
        let splices = matches!(self.backend, IoBackend::IoUring) && stream.splices();
        if splices && self.has_pipe().await {
            self.splice_file(stream.tcp(), file, offset, len).await
        } else {
            copy_file(stream, file, offset, len).await
        }
    }

    /// Make the connection's splice pipe if it has none; `false` when it
    /// cannot be made (out of descriptors: the issue-19 breaker trial
    /// found a file part that fell back here after its O_DIRECT open
    /// hit EMFILE, then failed to make the pipe and tore the response), so
    /// the part is copied instead, which needs no descriptor.
    async fn has_pipe(&mut self) -> bool {
        if self.pipe.is_some() {
            return true;
        }
        match compio::fs::pipe::anonymous().await {
            Ok((receiver, sender)) => {
                // SAFETY: fcntl with F_SETPIPE_SZ takes an int; failure keeps
                // the default size, which only means more splice round trips.
                unsafe { libc::fcntl(sender.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
                self.pipe = Some((receiver, sender));
                true
            }
            Err(error) => {
                tracing::debug!(%error, "no splice pipe for a fetch; copying the file part instead");
                false
            }
        }
    }

    async fn splice_file(
        &mut self,
        stream: &TcpStream,
        file: Arc<File>,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let (receiver, sender) = self.pipe.as_ref().expect("has_pipe made it");
        let source = SharedFd::new(SegmentFd(file));
        let mut done = 0usize;
        while done < len {
            let want = (len - done).min(PIPE_BYTES as usize);
            let moved = compio::fs::pipe::splice(&source, sender, want)
                .offset_in((offset + done as u64) as i64)
                .await?;
            if moved == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "segment file ended inside a fetched batch",
                ));
            }
            let mut drained = 0;
            while drained < moved {
                let out = compio::fs::pipe::splice(receiver, stream, moved - drained).await?;
                if out == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the client stopped reading",
                    ));
                }
                drained += out;
            }
            done += moved;
        }
        Ok(())
    }
}

async fn copy_file(stream: &Transport, file: Arc<File>, offset: u64, len: usize) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let want = (len - done).min(COPY_CHUNK_BYTES);
        let at = offset + done as u64;
        let file = Arc::clone(&file);
        let chunk = compio::runtime::spawn_blocking(move || {
            let mut buffer = vec![0u8; want];
            file.read_exact_at(&mut buffer, at).map(|()| buffer)
        })
        .await
        // A JoinError may hold a panic payload, which is not Sync, so it
        // cannot travel inside an io::Error: its text does.
        .map_err(|error| io::Error::other(format!("reading a segment for a fetch: {error}")))??;
        write_all(stream, chunk).await?;
        done += want;
    }
    Ok(())
}

async fn write_pending(stream: &Transport, pending: &mut BytesMut) -> io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let bytes = pending.split().freeze();
    write_all(stream, bytes).await
}

async fn write_all<B: compio::buf::IoBuf>(stream: &Transport, buffer: B) -> io::Result<()> {
    let mut stream = stream;
    let BufResult(result, _) = stream.write_all(buffer).await;
    result
}
