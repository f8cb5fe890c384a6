//! The commit log's write buffers: where appended frames wait to be written.
//!
//! The log is cut into *chunks*: aligned ranges of `chunk_bytes` (the
//! `flush_bytes` setting) that tile each segment. A chunk fills from one
//! [`AlignedBuf`] whose byte `i` is log position `chunk.base + i`; frames may
//! span chunks but never segments. A full chunk is *sealed* and written whole.
//! The partly filled *active* chunk is written when the flusher says so (idle,
//! interval, fsync due).
//!
//! O_DIRECT writes whole blocks, so writing a partly filled chunk also writes
//! the zero padding up to the next block, and the next write of that chunk
//! starts at the block holding the old fill and rewrites it. Two writes of
//! one chunk would therefore overlap. Hence the rules:
//! * at most one write is in flight per chunk (writes to different chunks
//!   never overlap, so several chunks may be in flight at once);
//! * a write hands its buffer to the I/O op. If the chunk is still active, it
//!   continues in a fresh buffer from the pool, seeded with the partial block
//!   (at most one block copied).
//!
//! With buffered writes the block size is 1: nothing is padded or rewritten,
//! and the same code applies.
//!
//! Buffers are bounded: `write_buffers` in total, shared by the active chunk,
//! sealed chunks and in-flight writes. An append that needs more than the pool
//! holds is refused (the caller waits for writes to finish: backpressure).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::ids::LogPosition;
use crate::io::{AlignedBuf, LogFile, WriteOp};

/// Where a new chunk lives: the segment it belongs to.
#[derive(Clone, Debug)]
pub struct ChunkPlace {
    pub file: Arc<LogFile>,
    pub segment_base: LogPosition,
    pub segment_end: LogPosition,
}

#[derive(Debug)]
struct Chunk {
    id: u64,
    place: ChunkPlace,
    /// Log position of `buf[0]`.
    base: LogPosition,
    /// Bytes this chunk may hold: `chunk_bytes`, less at a segment's end.
    capacity: usize,
    /// `None` only while a sealed chunk's last write holds its buffer.
    buf: Option<AlignedBuf>,
    fill: usize,
    /// Data bytes covered by submitted writes.
    submitted: usize,
    write_inflight: bool,
}

/// A write taken from a chunk, ready for the I/O layer.
#[derive(Debug)]
pub struct ChunkWrite {
    pub chunk_id: u64,
    pub op: WriteOp,
    /// The log bytes this write makes durable-able: `[data_start, data_end)`.
    pub data_start: LogPosition,
    pub data_end: LogPosition,
    /// The range of the segment file written: all a linked fdatasync covers.
    pub segment: (LogPosition, LogPosition),
    /// Log position of the op buffer's first byte.
    pub chunk_base: LogPosition,
}

#[derive(Debug)]
pub struct Appender {
    chunk_bytes: usize,
    block_bytes: usize,
    pool: Vec<AlignedBuf>,
    active: Option<Chunk>,
    sealed: VecDeque<Chunk>,
    next_chunk_id: u64,
}

impl Appender {
    pub fn new(chunk_bytes: usize, block_bytes: usize, buffers: usize) -> Appender {
        assert!(chunk_bytes > 0 && chunk_bytes.is_multiple_of(block_bytes));
        assert!(buffers >= 2, "an active chunk plus one for swaps");
        let alignment = block_bytes.max(64);
        Appender {
            chunk_bytes,
            block_bytes,
            pool: AlignedBuf::pool(buffers, chunk_bytes, alignment),
            active: None,
            sealed: VecDeque::new(),
            next_chunk_id: 0,
        }
    }

    /// Start filling at `position` (after recovery or a roll). `preload` holds
    /// the bytes already on disk from the start of `position`'s block, which a
    /// direct-mode rewrite of that block must carry.
    pub fn start_at(&mut self, place: ChunkPlace, position: LogPosition, preload: &[u8]) {
        assert!(self.active.is_none(), "start_at with an active chunk");
        let mut chunk = self.new_chunk(place, position);
        let fill = position.0 - chunk.base.0;
        let fill = usize::try_from(fill).expect("fill within a chunk");
        let block_start = align_down(fill, self.block_bytes);
        assert_eq!(
            preload.len(),
            fill - block_start,
            "preload is the partial block"
        );
        let buf = chunk.buf.as_mut().expect("new chunk has a buffer");
        buf.as_mut_slice()[block_start..fill].copy_from_slice(preload);
        chunk.fill = fill;
        chunk.submitted = fill;
        self.active = Some(chunk);
    }

    /// Buffers an append of `len` bytes at `position` would take from the pool.
    pub fn buffers_needed(
        &self,
        position: LogPosition,
        len: usize,
        segment_end: LogPosition,
    ) -> usize {
        let room = match &self.active {
            Some(chunk) if chunk.base.0 + chunk.fill as u64 == position.0 => {
                chunk.capacity - chunk.fill
            }
            _ => 0,
        };
        let mut remaining = len.saturating_sub(room);
        let mut at = position.0 + room as u64;
        let mut needed = 0;
        while remaining > 0 {
            let chunk_room = (self.chunk_bytes as u64 - at % self.chunk_bytes as u64)
                .min(segment_end.0 - at) as usize;
            assert!(chunk_room > 0, "frame crosses the segment end");
            remaining = remaining.saturating_sub(chunk_room);
            at += chunk_room as u64;
            needed += 1;
        }
        needed
    }

    /// Buffers a frame needs when it starts a fresh segment at `position`.
    pub fn buffers_for_fresh(
        chunk_bytes: usize,
        position: LogPosition,
        len: usize,
        segment_end: LogPosition,
    ) -> usize {
        let room_to_end = (segment_end.0 - position.0) as usize;
        assert!(len <= room_to_end, "frame larger than a segment");
        len.div_ceil(chunk_bytes)
    }

    pub fn free_buffers(&self) -> usize {
        self.pool.len()
    }

    /// Copy `parts` contiguously at `position` (the active chunk's fill, or a
    /// chunk boundary), starting new chunks in `place` as chunks fill. The
    /// caller checked [`Appender::buffers_needed`] against
    /// [`Appender::free_buffers`].
    pub fn copy(&mut self, place: &ChunkPlace, position: LogPosition, parts: &[&[u8]]) {
        let mut at = position;
        for part in parts {
            let mut rest = *part;
            while !rest.is_empty() {
                if self.active.is_none() {
                    let chunk = self.new_chunk(place.clone(), at);
                    assert_eq!(chunk.fill, 0, "new chunks start at a chunk boundary");
                    self.active = Some(chunk);
                }
                let chunk = self.active.as_mut().expect("ensured above");
                assert_eq!(
                    chunk.base.0 + chunk.fill as u64,
                    at.0,
                    "append out of order"
                );
                let buf = chunk.buf.as_mut().expect("active chunk owns a buffer");
                let take = rest.len().min(chunk.capacity - chunk.fill);
                buf.as_mut_slice()[chunk.fill..chunk.fill + take].copy_from_slice(&rest[..take]);
                chunk.fill += take;
                rest = &rest[take..];
                at = at.plus(take as u64);
                if chunk.fill == chunk.capacity {
                    self.seal_active();
                }
            }
        }
    }

    fn new_chunk(&mut self, place: ChunkPlace, position: LogPosition) -> Chunk {
        let chunk_bytes = self.chunk_bytes as u64;
        let offset_in_segment = position.0 - place.segment_base.0;
        let base =
            LogPosition(place.segment_base.0 + offset_in_segment / chunk_bytes * chunk_bytes);
        let capacity = chunk_bytes.min(place.segment_end.0 - base.0) as usize;
        assert!(
            capacity.is_multiple_of(self.block_bytes),
            "segment size is block-aligned"
        );
        let buf = self.pool.pop().expect("caller reserved a buffer");
        let fill = (position.0 - base.0) as usize;
        let id = self.next_chunk_id;
        self.next_chunk_id += 1;
        Chunk {
            id,
            place,
            base,
            capacity,
            buf: Some(buf),
            fill,
            submitted: fill,
            write_inflight: false,
        }
    }

    /// Close the active chunk: full, or its segment is ending.
    pub fn seal_active(&mut self) {
        if let Some(chunk) = self.active.take() {
            if chunk.submitted == chunk.fill && !chunk.write_inflight {
                self.pool
                    .push(chunk.buf.expect("active chunk owns a buffer"));
            } else {
                self.sealed.push_back(chunk);
            }
        }
    }

    /// Data bytes appended but not yet handed to a write.
    pub fn unsubmitted_bytes(&self) -> usize {
        let sealed: usize = self
            .sealed
            .iter()
            .map(|chunk| chunk.fill - chunk.submitted)
            .sum();
        sealed
            + self
                .active
                .as_ref()
                .map_or(0, |chunk| chunk.fill - chunk.submitted)
    }

    /// The oldest sealed chunk with data to write and no write in flight.
    pub fn take_sealed_write(&mut self) -> Option<ChunkWrite> {
        let block_bytes = self.block_bytes;
        let chunk = self
            .sealed
            .iter_mut()
            .find(|chunk| !chunk.write_inflight && chunk.submitted < chunk.fill)?;
        let buf = chunk.buf.take().expect("idle sealed chunk owns its buffer");
        Some(take_write(chunk, buf, block_bytes))
    }

    /// Write the active chunk's unsubmitted bytes, continuing it in a fresh
    /// buffer. None if nothing is pending, its last write is still in flight,
    /// or no spare buffer exists for the swap.
    pub fn take_active_write(&mut self) -> Option<ChunkWrite> {
        let block_bytes = self.block_bytes;
        let chunk = self.active.as_mut()?;
        if chunk.write_inflight || chunk.submitted == chunk.fill {
            return None;
        }
        let mut fresh = self.pool.pop()?;
        let old = chunk.buf.take().expect("active chunk owns a buffer");
        let block_start = align_down(chunk.fill, block_bytes);
        fresh.as_mut_slice()[block_start..chunk.fill]
            .copy_from_slice(&old.as_slice()[block_start..chunk.fill]);
        chunk.buf = Some(fresh);
        Some(take_write(chunk, old, block_bytes))
    }

    /// A write of chunk `chunk_id` finished; its buffer returns to the pool.
    pub fn complete(&mut self, chunk_id: u64, buf: AlignedBuf) {
        self.pool.push(buf);
        if let Some(chunk) = self.active.as_mut().filter(|chunk| chunk.id == chunk_id) {
            chunk.write_inflight = false;
            return;
        }
        let Some(index) = self.sealed.iter().position(|chunk| chunk.id == chunk_id) else {
            panic!("completion for unknown chunk {chunk_id}");
        };
        let chunk = &mut self.sealed[index];
        chunk.write_inflight = false;
        if chunk.submitted == chunk.fill {
            let chunk = self.sealed.remove(index).expect("index is valid");
            if let Some(buf) = chunk.buf {
                self.pool.push(buf);
            }
        }
    }

    /// The active chunk's place, if any (its segment).
    pub fn active_segment_base(&self) -> Option<LogPosition> {
        self.active.as_ref().map(|chunk| chunk.place.segment_base)
    }
}

fn take_write(chunk: &mut Chunk, mut buf: AlignedBuf, block_bytes: usize) -> ChunkWrite {
    let io_start = align_down(chunk.submitted, block_bytes);
    let io_end = align_up(chunk.fill, block_bytes);
    assert!(io_end <= buf.capacity());
    // Pool buffers are reused: the block padding past the fill could hold an
    // older chunk's bytes (even whole old frames). Only zeros may reach disk
    // beyond the last frame.
    buf.as_mut_slice()[chunk.fill..io_end].fill(0);
    let write = ChunkWrite {
        chunk_id: chunk.id,
        data_start: chunk.base.plus(chunk.submitted as u64),
        data_end: chunk.base.plus(chunk.fill as u64),
        segment: (chunk.place.segment_base, chunk.place.segment_end),
        chunk_base: chunk.base,
        op: WriteOp {
            file: Arc::clone(&chunk.place.file),
            file_offset: chunk.base.0 - chunk.place.segment_base.0 + io_start as u64,
            buf,
            buf_range: io_start..io_end,
            sync: false,
        },
    };
    chunk.submitted = chunk.fill;
    chunk.write_inflight = true;
    write
}

pub fn align_down(value: usize, block: usize) -> usize {
    value / block * block
}

pub fn align_up(value: usize, block: usize) -> usize {
    value.div_ceil(block) * block
}
