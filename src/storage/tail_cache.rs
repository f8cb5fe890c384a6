//! The tail cache: the newest frames of a shard's commit log, in memory, so
//! consumers and followers near the end of the log read without touching
//! the disk (issue 19 item 2).
//!
//! O_DIRECT writes leave nothing in the page cache, so without this every
//! fetch of data written a moment ago is a disk read. The write path copies
//! each appended frame here (one copy, on the shard thread, next to the copy
//! into the write buffer); fetch serves a batch found here as a memory part
//! (one more copy, into the socket), and anything older as a file span
//! spliced through the page cache, as before. Catch-up reads of cold data
//! therefore never evict the hot set: it is the broker's own memory, not
//! page cache the kernel shares between them.
//!
//! Frames are immutable once appended (the log is append-only; compaction
//! appends its rewritten batches, truncation reopens the log), so a cached
//! frame is what is, or will be, in the segment file at its position. Reads
//! only ask for bytes below the high watermark, which is written.
//!
//! Memory: frames are packed into arenas (`BytesMut`, split per frame), so a
//! frame costs no allocation of its own; an arena is reused once every frame
//! cut from it is evicted and no response still holds one. What the cache
//! keeps is bounded by `storage.tail_cache_bytes`, counting each frame's
//! length plus its bookkeeping; arenas add at most a few steps on top, and a
//! response still being sent keeps its frames' arena alive until it is.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::ids::LogPosition;

/// Bookkeeping counted against the budget for each cached frame.
const PIECE_OVERHEAD_BYTES: u64 = std::mem::size_of::<Piece>() as u64;
/// Arena size bounds: an eighth of the budget, within these.
const ARENA_MIN_BYTES: u64 = 64 * 1024;
const ARENA_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// A cached frame: its log position and bytes.
#[derive(Debug)]
struct Piece {
    start: LogPosition,
    bytes: Bytes,
}

impl Piece {
    fn end(&self) -> LogPosition {
        self.start.plus(self.bytes.len() as u64)
    }
}

/// The newest frames of one commit log, up to a byte budget.
#[derive(Debug)]
pub struct TailCache {
    /// `storage.tail_cache_bytes`; 0 turns the cache off.
    budget: u64,
    arena_bytes: usize,
    /// Ascending by position, non-overlapping (gaps where segments roll).
    pieces: VecDeque<Piece>,
    /// Frame bytes plus bookkeeping of `pieces`: at most `budget` (the
    /// newest frame is kept even when it alone passes it).
    charged: u64,
    /// The arena frames are copied into; empty, with spare capacity.
    arena: BytesMut,
    /// Filled arenas, oldest first, reused once no frame of theirs is held.
    spent: VecDeque<BytesMut>,
    /// Arenas allocated so far (reuse keeps this flat in a steady stream).
    allocations: u64,
}

impl TailCache {
    /// A cache of at most `budget` bytes (0: off, nothing is kept).
    pub fn new(budget: u64) -> TailCache {
        let arena_bytes = (budget / 8).clamp(ARENA_MIN_BYTES, ARENA_MAX_BYTES) as usize;
        TailCache {
            budget,
            arena_bytes,
            pieces: VecDeque::new(),
            charged: 0,
            arena: BytesMut::new(),
            spent: VecDeque::new(),
            allocations: 0,
        }
    }

    /// Keep the frame made of `parts` appended at `position`, evicting the
    /// oldest frames past the budget. Frames come in log order. A frame
    /// larger than the whole budget is not kept.
    pub fn push(&mut self, position: LogPosition, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let charge = len as u64 + PIECE_OVERHEAD_BYTES;
        if charge > self.budget {
            return;
        }
        if let Some(last) = self.pieces.back() {
            assert!(
                last.end() <= position,
                "frames enter the tail cache in log order"
            );
        }
        self.make_room(len);
        for part in parts {
            self.arena.extend_from_slice(part);
        }
        let bytes = self.arena.split().freeze();
        self.pieces.push_back(Piece {
            start: position,
            bytes,
        });
        self.charged += charge;
        while self.charged > self.budget {
            self.pop_oldest();
        }
    }

    /// Bytes `[start, end)` if one cached frame holds them all.
    pub fn get(&self, start: LogPosition, end: LogPosition) -> Option<Bytes> {
        // The last frame starting at or before `start`.
        let after = self.pieces.partition_point(|piece| piece.start <= start);
        let piece = self.pieces.get(after.checked_sub(1)?)?;
        if end > piece.end() || start > end {
            return None;
        }
        let from = (start.0 - piece.start.0) as usize;
        let to = (end.0 - piece.start.0) as usize;
        Some(piece.bytes.slice(from..to))
    }

    /// Drop every frame ending at or before `position` (its segment is
    /// deleted: the cache must not keep memory for it).
    pub fn forget_below(&mut self, position: LogPosition) {
        while self
            .pieces
            .front()
            .is_some_and(|piece| piece.end() <= position)
        {
            self.pop_oldest();
        }
    }

    /// Frame bytes plus bookkeeping held, for the gauge and tests.
    pub fn charged_bytes(&self) -> u64 {
        self.charged
    }

    fn pop_oldest(&mut self) {
        let oldest = self.pieces.pop_front().expect("a frame to evict");
        self.charged -= oldest.bytes.len() as u64 + PIECE_OVERHEAD_BYTES;
    }

    /// Leave `self.arena` with room for `len` more bytes: the current arena,
    /// else the oldest spent one no frame of which is held any more, else a
    /// new allocation.
    fn make_room(&mut self, len: usize) {
        if self.arena.capacity() >= len {
            return;
        }
        if self.allocations > 0 {
            self.spent.push_back(std::mem::take(&mut self.arena));
        }
        let want = len.max(self.arena_bytes);
        if let Some(oldest) = self.spent.front_mut()
            && oldest.try_reclaim(want)
        {
            self.arena = self.spent.pop_front().expect("checked above");
        } else {
            self.arena = BytesMut::with_capacity(want);
            self.allocations += 1;
        }
        // Spent arenas beyond what the budget can fill are let go: their
        // memory is freed once the last frame or response holding it is.
        let kept_max = (self.budget / self.arena_bytes as u64) as usize + 2;
        while self.spent.len() > kept_max {
            self.spent.pop_front();
        }
        assert!(self.arena.is_empty() && self.arena.capacity() >= len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fill: u8, len: usize) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn a_cached_frame_is_served_whole_or_in_part() {
        let mut cache = TailCache::new(1 << 20);
        let (a, b) = (frame(1, 100), frame(2, 300));
        cache.push(LogPosition(4096), &[&a[..40], &a[40..]]);
        cache.push(LogPosition(4196), &[&b]);
        assert_eq!(cache.get(LogPosition(4096), LogPosition(4196)).unwrap(), a);
        assert_eq!(
            cache
                .get(LogPosition(4196 + 10), LogPosition(4496))
                .unwrap(),
            b[10..]
        );
        // Across two frames, before the first, past the last: not served.
        assert!(cache.get(LogPosition(4150), LogPosition(4250)).is_none());
        assert!(cache.get(LogPosition(0), LogPosition(10)).is_none());
        assert!(cache.get(LogPosition(4496), LogPosition(4500)).is_none());
    }

    #[test]
    fn the_oldest_frames_go_past_the_budget_and_arenas_are_reused() {
        let budget = 1 << 20;
        let mut cache = TailCache::new(budget);
        let len = 10_000usize;
        let mut position = 0u64;
        for round in 0..1000u64 {
            cache.push(LogPosition(position), &[&frame(round as u8, len)]);
            position += len as u64;
            assert!(cache.charged_bytes() <= budget);
        }
        let kept = cache.pieces.len() as u64;
        assert_eq!(kept, budget / (len as u64 + PIECE_OVERHEAD_BYTES));
        let newest = LogPosition(position - len as u64);
        assert_eq!(
            cache.get(newest, LogPosition(position)).unwrap(),
            frame(999u64 as u8, len)
        );
        let evicted = LogPosition(position - (kept + 1) * len as u64);
        assert!(cache.get(evicted, evicted.plus(len as u64)).is_none());
        // 10 MB went through a 1 MiB cache in 128 KiB arenas: about 80
        // arenas' worth, from the few the budget holds, reused.
        assert_eq!(cache.arena_bytes, 128 * 1024);
        assert!(
            cache.allocations <= 12,
            "{} arenas allocated",
            cache.allocations
        );
    }

    #[test]
    fn a_held_frame_keeps_its_bytes_while_its_arena_cannot_be_reused() {
        let mut cache = TailCache::new(256 * 1024);
        cache.push(LogPosition(0), &[&frame(7, 50_000)]);
        let held = cache.get(LogPosition(0), LogPosition(50_000)).unwrap();
        for i in 1..100u64 {
            cache.push(LogPosition(i * 50_000), &[&frame(i as u8, 50_000)]);
        }
        assert!(cache.get(LogPosition(0), LogPosition(1)).is_none());
        assert!(
            held.iter().all(|&byte| byte == 7),
            "a sent frame never changes"
        );
    }

    #[test]
    fn an_empty_budget_keeps_nothing_and_a_frame_over_budget_is_skipped() {
        let mut off = TailCache::new(0);
        off.push(LogPosition(0), &[&frame(1, 10)]);
        assert!(off.get(LogPosition(0), LogPosition(10)).is_none());
        assert_eq!(off.charged_bytes(), 0);

        let mut small = TailCache::new(100_000);
        small.push(LogPosition(0), &[&frame(1, 10)]);
        small.push(LogPosition(10), &[&frame(2, 200_000)]);
        assert!(small.get(LogPosition(10), LogPosition(20)).is_none());
        assert!(small.get(LogPosition(0), LogPosition(10)).is_some());
    }

    #[test]
    fn a_deleted_segment_leaves_the_cache() {
        let mut cache = TailCache::new(1 << 20);
        cache.push(LogPosition(0), &[&frame(1, 100)]);
        cache.push(LogPosition(1 << 16), &[&frame(2, 100)]);
        cache.forget_below(LogPosition(1 << 16));
        assert!(cache.get(LogPosition(0), LogPosition(100)).is_none());
        assert!(
            cache
                .get(LogPosition(1 << 16), LogPosition((1 << 16) + 100))
                .is_some()
        );
        assert_eq!(cache.charged_bytes(), 100 + PIECE_OVERHEAD_BYTES);
    }
}
