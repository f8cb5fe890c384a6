//! Request framing: a 4-byte big-endian size, then the request.
//!
//! Frames are read into one growing buffer per connection and split off as
//! `Bytes`, so decoded record batches are slices of it, never copies. A
//! negative, zero or oversized length ends the connection with a log line:
//! after such a prefix the stream cannot be resynchronised.

use bytes::{Buf, Bytes, BytesMut};
use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::AsyncRead;
use thiserror::Error;

/// Bytes read from the socket at once when a frame needs more.
const READ_CHUNK_BYTES: usize = 64 * 1024;

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
    #[error("reading the request failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Buffered reader of request frames.
pub struct FrameReader {
    buffer: BytesMut,
    limit: u32,
}

impl FrameReader {
    pub fn new(limit: u32) -> FrameReader {
        FrameReader {
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            limit,
        }
    }

    /// A complete frame if one is buffered, without reading.
    pub fn buffered_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let size = i32::from_be_bytes(self.buffer[..4].try_into().expect("4 bytes"));
        if size <= 0 {
            return Err(FrameError::BadSize { size });
        }
        let size = size as usize;
        if size > self.limit as usize {
            return Err(FrameError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        if self.buffer.len() < 4 + size {
            self.buffer.reserve(4 + size - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(4);
        Ok(Some(self.buffer.split_to(size).freeze()))
    }

    /// Read until a whole frame is buffered and return it.
    pub async fn next_frame<R: AsyncRead>(&mut self, stream: &mut R) -> Result<Bytes, FrameError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(frame);
            }
            if self.buffer.capacity() - self.buffer.len() < READ_CHUNK_BYTES / 4 {
                self.buffer.reserve(READ_CHUNK_BYTES);
            }
            // compio reads into a buffer from its start: hand it only the
            // spare capacity after the bytes already buffered.
            let buffered = self.buffer.len();
            let buffer = std::mem::take(&mut self.buffer);
            let BufResult(result, spare) = stream.read(buffer.slice(buffered..)).await;
            self.buffer = spare.into_inner();
            match result? {
                0 if self.buffer.is_empty() => return Err(FrameError::Closed),
                0 => return Err(FrameError::Truncated),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_out_of_the_buffer_and_bad_sizes_are_refused() {
        let mut reader = FrameReader::new(16);
        reader
            .buffer
            .extend_from_slice(&[0, 0, 0, 3, b'a', b'b', b'c', 0, 0]);
        assert_eq!(
            reader.buffered_frame().unwrap().unwrap(),
            Bytes::from_static(b"abc")
        );
        assert!(reader.buffered_frame().unwrap().is_none());
        let mut reader = FrameReader::new(16);
        reader.buffer.extend_from_slice(&[0, 0, 0, 17]);
        assert!(matches!(
            reader.buffered_frame(),
            Err(FrameError::TooLarge { size: 17, .. })
        ));
        let mut reader = FrameReader::new(16);
        reader.buffer.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            reader.buffered_frame(),
            Err(FrameError::BadSize { size: -1 })
        ));
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    /// A stream that hands out its bytes a few at a time, writing them the
    /// way compio's socket reads do: from the start of the buffer's capacity,
    /// then advancing its length to at least what was read.
    struct Trickle {
        bytes: Vec<u8>,
        step: usize,
    }

    impl AsyncRead for Trickle {
        async fn read<B: compio::buf::IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
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

    #[test]
    fn frames_split_across_many_reads_arrive_intact() {
        let runtime = compio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut wire = Vec::new();
            let payloads: Vec<Vec<u8>> = (0..5)
                .map(|index| vec![b'a' + index as u8; 100_000 + index])
                .collect();
            for payload in &payloads {
                wire.extend_from_slice(&(payload.len() as i32).to_be_bytes());
                wire.extend_from_slice(payload);
            }
            let mut stream = Trickle {
                bytes: wire,
                step: 7919,
            };
            let mut reader = FrameReader::new(1 << 20);
            for payload in &payloads {
                let frame = reader.next_frame(&mut stream).await.unwrap();
                assert_eq!(&frame[..], &payload[..]);
            }
        });
    }
}
