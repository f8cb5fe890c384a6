//! Request framing: a 4-byte big-endian size, then the request.
//!
//! Memory follows the bytes that arrive, never the size a client declares:
//! * the size prefix and small frames are read through one read-ahead
//!   buffer per connection, at most [`READ_CHUNK_BYTES`] at a time, and
//!   split off as `Bytes`, so decoded record batches are slices of it;
//! * once a frame's size is read, the frame takes that many bytes from the
//!   broker's [`RequestBudget`] before any of its body is read; the
//!   connection waits (reading nothing, so TCP pushes back) until the budget
//!   covers it;
//! * a frame larger than the read-ahead buffer gets a buffer of its own that
//!   grows as its bytes arrive (doubling, from [`READ_CHUNK_BYTES`], never
//!   past the declared size), and reads stop at the frame's end. That
//!   buffer comes from the broker's [`body_pool`] (one no larger than the
//!   declared size, so never more than the frame's lease) and returns to it
//!   when the request's last slice of it is dropped, so a stream of large
//!   requests reuses memory that is already mapped instead of growing new
//!   buffers.
//!
//! A frame must arrive within `kafka.request_read_timeout_ms` of its first
//! byte (time spent waiting for the budget, or while the connection was not
//! reading, does not count); after that the connection closes with a log
//! line, so a client trickling bytes cannot hold a connection or the budget
//! for long. Waiting for the first byte of a request has no limit here
//! (that is the idle watch's job). A negative, zero or oversized length also
//! ends the connection with a log line: after such a prefix the stream
//! cannot be resynchronised.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::AsyncRead;
use thiserror::Error;

use super::body_pool;
use super::request_budget::{Lease, RequestBudget};

/// Bytes read from the socket at once into the read-ahead buffer, and the
/// first step of a large frame's own buffer.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
const SIZE_PREFIX_BYTES: usize = 4;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("the client closed the connection")]
    Closed,
    #[error("the client closed the connection in the middle of a request")]
    Truncated,
    #[error("request size {size} is not positive")]
    BadSize { size: i32 },
    #[error("request of {size} bytes exceeds kafka.request_max_bytes ({limit})")]
    TooLarge { size: usize, limit: u32 },
    #[error(
        "a TLS handshake arrived on a listener without TLS: the client is set up for SSL or \
         SASL_SSL, this listener's security_protocol is PLAINTEXT or SASL_PLAINTEXT"
    )]
    TlsOnPlaintext,
    #[error(
        "request incomplete {timeout_ms} ms after its first byte ({received} of {expected} \
         bytes arrived); kafka.request_read_timeout_ms"
    )]
    ReadTimeout {
        received: usize,
        /// The whole frame with its size prefix, or just the prefix while
        /// the size is not known yet.
        expected: usize,
        timeout_ms: u128,
    },
    #[error("reading the request failed: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The `reason` label of `sluice_kafka_connections_closed_bad_input_total`
    /// for a connection closed by this error; `None` for a plain close,
    /// which a client resetting its connection between requests is too.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            FrameError::Closed => None,
            FrameError::Io(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                None
            }
            FrameError::Truncated => Some("truncated"),
            FrameError::BadSize { .. } => Some("bad_size"),
            FrameError::TooLarge { .. } => Some("too_large"),
            FrameError::TlsOnPlaintext => Some("tls_on_plaintext"),
            FrameError::ReadTimeout { .. } => Some("read_timeout"),
            FrameError::Io(_) => Some("read_error"),
        }
    }
}

/// A request frame (without its size prefix) and its share of the budget.
pub struct Frame {
    pub body: Bytes,
    /// Keep until the request is done with the frame's bytes.
    pub lease: Lease,
}

/// Limits on frames; from the `[kafka]` settings.
#[derive(Clone, Copy, Debug)]
pub struct FrameLimits {
    pub request_max_bytes: u32,
    pub read_timeout: Duration,
}

/// Buffered reader of request frames.
pub struct FrameReader {
    /// Bytes read but not yet returned in a frame.
    buffer: BytesMut,
    limits: FrameLimits,
    /// The frame being read.
    deadline: FrameDeadline,
}

/// When the frame being read must be complete: unset until its first byte.
struct FrameDeadline {
    at: Option<Instant>,
    timeout: Duration,
}

impl FrameDeadline {
    fn start(&mut self) {
        if self.at.is_none() {
            self.at = Some(Instant::now() + self.timeout);
        }
    }

    fn started_at(&mut self) -> Instant {
        self.start();
        self.at.unwrap_or_else(|| Instant::now() + self.timeout)
    }

    /// Move the deadline on by time the broker, not the client, spent.
    fn extend(&mut self, by: Duration) {
        self.at = self.at.map(|at| at + by);
    }
}

impl FrameReader {
    /// Change the largest request accepted from the next frame on.
    pub fn set_request_max_bytes(&mut self, request_max_bytes: u32) {
        self.limits.request_max_bytes = request_max_bytes;
    }

    pub fn new(limits: FrameLimits) -> FrameReader {
        FrameReader {
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            limits,
            deadline: FrameDeadline {
                at: None,
                timeout: limits.read_timeout,
            },
        }
    }

    /// Read the next frame, waiting for the budget to cover it: the steps
    /// below, for a caller with nothing to watch while it waits.
    pub async fn next_frame<R: AsyncRead>(
        &mut self,
        stream: &mut R,
        budget: &Arc<RequestBudget>,
    ) -> Result<Frame, FrameError> {
        let size = self.read_size(stream).await?;
        let waiting_since = Instant::now();
        let lease = budget.acquire(size as u64).await;
        let body = self
            .read_body(stream, size, waiting_since.elapsed())
            .await?;
        Ok(Frame { body, lease })
    }

    /// Read the next frame's size prefix, checked. The frame's read clock
    /// starts now if some of it is buffered, else at its first byte.
    pub async fn read_size<R: AsyncRead>(&mut self, stream: &mut R) -> Result<usize, FrameError> {
        self.deadline.at = None;
        if !self.buffer.is_empty() {
            self.deadline.start();
        }
        while self.buffer.len() < SIZE_PREFIX_BYTES {
            self.read_ahead(stream, SIZE_PREFIX_BYTES).await?;
        }
        self.declared_size()
    }

    /// Read the body of the frame whose size [`FrameReader::read_size`]
    /// returned. `paused` (time spent waiting for the budget since) does
    /// not count against the read timeout.
    pub async fn read_body<R: AsyncRead>(
        &mut self,
        stream: &mut R,
        size: usize,
        paused: Duration,
    ) -> Result<Bytes, FrameError> {
        self.deadline.extend(paused);
        let expected = SIZE_PREFIX_BYTES + size;
        if expected <= READ_CHUNK_BYTES || self.buffer.len() >= expected {
            while self.buffer.len() < expected {
                self.read_ahead(stream, expected).await?;
            }
            self.buffer.advance(SIZE_PREFIX_BYTES);
            return Ok(self.buffer.split_to(size).freeze());
        }
        self.read_large(stream, size).await
    }

    /// The size prefix at the front of the buffer, checked.
    fn declared_size(&self) -> Result<usize, FrameError> {
        let prefix = &self.buffer[..SIZE_PREFIX_BYTES];
        // A TLS ClientHello record: content type 22, version 3.x.
        if prefix[0] == 0x16 && prefix[1] == 0x03 {
            return Err(FrameError::TlsOnPlaintext);
        }
        let size = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if size <= 0 {
            return Err(FrameError::BadSize { size });
        }
        let size = size as usize;
        if size > self.limits.request_max_bytes as usize {
            return Err(FrameError::TooLarge {
                size,
                limit: self.limits.request_max_bytes,
            });
        }
        Ok(size)
    }

    /// One read into the read-ahead buffer, which grows by at most
    /// [`READ_CHUNK_BYTES`] at a time.
    async fn read_ahead<R: AsyncRead>(
        &mut self,
        stream: &mut R,
        expected: usize,
    ) -> Result<(), FrameError> {
        if self.buffer.capacity() - self.buffer.len() < READ_CHUNK_BYTES / 4 {
            self.buffer.reserve(READ_CHUNK_BYTES);
        }
        // compio reads into a buffer from its start: hand it only the
        // spare capacity after the bytes already buffered.
        let buffered = self.buffer.len();
        let buffer = std::mem::take(&mut self.buffer);
        let read = stream.read(buffer.slice(buffered..));
        let BufResult(result, spare) = match self.deadline.at {
            None => read.await,
            Some(at) => compio::time::timeout_at(at, read)
                .await
                .map_err(|_elapsed| self.timed_out(buffered, expected))?,
        };
        self.buffer = spare.into_inner();
        match result? {
            0 if self.buffer.is_empty() => Err(FrameError::Closed),
            0 => Err(FrameError::Truncated),
            _ => {
                self.deadline.start();
                Ok(())
            }
        }
    }

    /// Read a frame too large for the read-ahead buffer into a buffer of
    /// its own, grown as its bytes arrive; reads stop at the frame's end.
    async fn read_large<R: AsyncRead>(
        &mut self,
        stream: &mut R,
        size: usize,
    ) -> Result<Bytes, FrameError> {
        let at = self.deadline.started_at();
        self.buffer.advance(SIZE_PREFIX_BYTES);
        let mut body = body_pool::take(size);
        let first = next_capacity(self.buffer.len(), size);
        if body.capacity() < first {
            body.reserve_exact(first);
        }
        body.extend_from_slice(&self.buffer);
        self.buffer.clear();
        while body.len() < size {
            if body.len() == body.capacity() {
                body.reserve_exact(next_capacity(body.len(), size) - body.len());
            }
            let received = body.len();
            // Each read is offered at most double what arrived, whatever
            // capacity a pooled buffer brings.
            let end = body.capacity().min(next_capacity(received, size));
            let read = stream.read(body.slice(received..end));
            let BufResult(result, spare) =
                compio::time::timeout_at(at, read)
                    .await
                    .map_err(|_elapsed| {
                        self.timed_out(SIZE_PREFIX_BYTES + received, SIZE_PREFIX_BYTES + size)
                    })?;
            body = spare.into_inner();
            if result? == 0 {
                return Err(FrameError::Truncated);
            }
        }
        debug_assert!(body.capacity() >= size && body.len() == size);
        Ok(body_pool::into_bytes(body))
    }

    fn timed_out(&self, received: usize, expected: usize) -> FrameError {
        FrameError::ReadTimeout {
            received,
            expected,
            timeout_ms: self.limits.read_timeout.as_millis(),
        }
    }
}

/// Capacity for a large frame's buffer holding `received` of its `size`
/// bytes: double what arrived (at least a chunk), never past `size`.
fn next_capacity(received: usize, size: usize) -> usize {
    (2 * received).max(READ_CHUNK_BYTES).min(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(request_max_bytes: u32) -> FrameLimits {
        FrameLimits {
            request_max_bytes,
            read_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        let mut reader = FrameReader::new(limits(16));
        reader.buffer.extend_from_slice(&[0, 0, 0, 17]);
        assert!(matches!(
            reader.declared_size(),
            Err(FrameError::TooLarge { size: 17, .. })
        ));
        let mut reader = FrameReader::new(limits(16));
        reader.buffer.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            reader.declared_size(),
            Err(FrameError::BadSize { size: -1 })
        ));
    }

    #[test]
    fn a_large_frame_buffer_grows_by_doubling_up_to_its_size() {
        let size = 100 << 20;
        let mut capacity = next_capacity(0, size);
        assert_eq!(capacity, READ_CHUNK_BYTES);
        let mut steps = 1;
        while capacity < size {
            let next = next_capacity(capacity, size);
            assert!(next > capacity && next <= size && next <= 2 * capacity);
            capacity = next;
            steps += 1;
        }
        assert_eq!(capacity, size);
        assert!(steps <= 12, "{steps} reallocations for 100 MiB");
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    /// A stream that hands out its bytes a few at a time, writing them the
    /// way compio's socket reads do: from the start of the buffer's capacity,
    /// then advancing its length to at least what was read. When its bytes
    /// run out it reports EOF, or with `stall` never answers again.
    struct Trickle {
        bytes: Vec<u8>,
        step: usize,
        stall: bool,
        /// The largest buffer capacity a read was offered.
        largest_read: usize,
    }

    impl Trickle {
        fn new(bytes: Vec<u8>, step: usize) -> Trickle {
            Trickle {
                bytes,
                step,
                stall: false,
                largest_read: 0,
            }
        }
    }

    impl AsyncRead for Trickle {
        async fn read<B: compio::buf::IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
            self.largest_read = self.largest_read.max(buf.buf_capacity());
            if self.bytes.is_empty() && self.stall {
                std::future::pending::<()>().await;
            }
            let take = self.step.min(self.bytes.len()).min(buf.buf_capacity());
            let chunk: Vec<u8> = self.bytes.drain(..take).collect();
            let spare = buf.as_uninit();
            for (index, byte) in chunk.iter().enumerate() {
                spare[index].write(*byte);
            }
            // SAFETY: the first `take` bytes were just written.
            unsafe { compio::buf::SetLen::advance_to(&mut buf, take) };
            BufResult(Ok(take), buf)
        }
    }

    fn wire(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for payload in payloads {
            wire.extend_from_slice(&(payload.len() as i32).to_be_bytes());
            wire.extend_from_slice(payload);
        }
        wire
    }

    fn reader(request_max_bytes: u32, read_timeout: Duration) -> FrameReader {
        FrameReader::new(FrameLimits {
            request_max_bytes,
            read_timeout,
        })
    }

    #[test]
    fn frames_split_across_many_reads_arrive_intact() {
        let runtime = compio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let payloads: Vec<Vec<u8>> = (0..5)
                .map(|index| vec![b'a' + index as u8; 100_000 + index])
                .chain((0..5).map(|index| vec![b'k' + index as u8; 10 + index]))
                .collect();
            let mut stream = Trickle::new(wire(&payloads), 7919);
            let budget = Arc::new(RequestBudget::new(1 << 20));
            let mut reader = reader(1 << 20, Duration::from_secs(60));
            for payload in &payloads {
                let frame = reader.next_frame(&mut stream, &budget).await.unwrap();
                assert_eq!(&frame.body[..], &payload[..]);
                assert_eq!(budget.used_bytes(), payload.len() as u64);
            }
            assert_eq!(budget.used_bytes(), 0, "leases came back when dropped");
            assert!(matches!(
                reader.next_frame(&mut stream, &budget).await,
                Err(FrameError::Closed)
            ));
        });
    }

    /// Issue 12: a declared size reserved no memory up front; a frame's
    /// buffer follows the bytes that arrived.
    #[test]
    fn memory_follows_the_bytes_that_arrive_not_the_declared_size() {
        let runtime = compio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let declared = 100 << 20;
            let mut bytes = (declared as i32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&[7u8; 1024]);
            let mut stream = Trickle::new(bytes, 1 << 20);
            stream.stall = true;
            let budget = Arc::new(RequestBudget::new(declared as u64));
            let mut reader = reader(declared, Duration::from_millis(200));
            let outcome = reader.next_frame(&mut stream, &budget).await;
            assert!(
                matches!(outcome, Err(FrameError::ReadTimeout { received: 1028, .. })),
                "a stalled frame times out"
            );
            assert!(
                stream.largest_read <= 2 * READ_CHUNK_BYTES,
                "a read was offered {} bytes for a frame with 1 KiB sent",
                stream.largest_read
            );
            assert_eq!(budget.used_bytes(), 0, "the frame's budget came back");
        });
    }

    #[test]
    fn a_stalled_small_frame_times_out() {
        let runtime = compio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut bytes = 100i32.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[7u8; 50]);
            let mut stream = Trickle::new(bytes, 3);
            stream.stall = true;
            let budget = Arc::new(RequestBudget::new(1000));
            let mut reader = reader(1000, Duration::from_millis(100));
            let outcome = compio::time::timeout(
                Duration::from_secs(10),
                reader.next_frame(&mut stream, &budget),
            )
            .await
            .expect("the read timeout ends the wait");
            assert!(
                matches!(
                    outcome,
                    Err(FrameError::ReadTimeout {
                        received: 54,
                        expected: 104,
                        ..
                    })
                ),
                "{:?}",
                outcome.err()
            );
        });
    }

    #[test]
    fn a_large_frame_is_read_to_its_end_and_not_past_it() {
        let runtime = compio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let payloads = vec![vec![1u8; 1_000_000], vec![2u8; 3]];
            let mut stream = Trickle::new(wire(&payloads), 300_000);
            let budget = Arc::new(RequestBudget::new(1 << 20));
            let mut reader = reader(1 << 20, Duration::from_secs(60));
            let large = reader.next_frame(&mut stream, &budget).await.unwrap();
            assert_eq!(large.body.len(), 1_000_000);
            assert!(large.body.iter().all(|&byte| byte == 1));
            let small = reader.next_frame(&mut stream, &budget).await.unwrap();
            assert_eq!(&small.body[..], &[2, 2, 2]);
        });
    }

    #[test]
    fn a_frame_the_budget_cannot_cover_waits_until_bytes_come_back() {
        let runtime = compio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let payloads = vec![vec![1u8; 600], vec![2u8; 600]];
            let mut stream = Trickle::new(wire(&payloads), 4);
            let budget = Arc::new(RequestBudget::new(1000));
            let mut reader = reader(1000, Duration::from_secs(60));
            let first = reader.next_frame(&mut stream, &budget).await.unwrap();
            let mut second = std::pin::pin!(reader.next_frame(&mut stream, &budget));
            let waited = compio::time::timeout(Duration::from_millis(100), second.as_mut()).await;
            assert!(waited.is_err(), "600 + 600 bytes exceed the budget of 1000");
            assert_eq!(budget.waiting(), 1);
            drop(first);
            let second = second.await.unwrap();
            assert_eq!(&second.body[..], &payloads[1][..]);
        });
    }
}
