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
//! frame costs no allocation of its own; a frame over half an arena
//! gets a buffer of its own size, so large batches waste no arena tails.
//! What counts against `storage.tail_cache_bytes` is the whole capacity of
//! every buffer holding a cached frame (unused arena tails included) plus
//! each frame's bookkeeping, so the budget bounds the memory, not just the
//! frame bytes. A spent arena is reused once every frame cut from it is
//! evicted and no response still holds one; a response still being sent
//! keeps its frames' buffer alive until it is.
//!
//! While the cache fills, each new arena is fresh memory, and touching it
//! first costs a page fault and a zeroing per page: on the shard thread,
//! inside the append, that was 110 000–130 000 faults in a 10 s run at
//! 100 MB/s (a fault per 4 KiB of the first `tail_cache_bytes` per shard).
//! So the next arena is made ahead, off the shard ([`TailCache::spare_due`],
//! [`prepare_arena`] on the blocking pool, [`TailCache::spare_done`]):
//! whenever the cache opens an arena it does not reuse, it asks for one
//! more, and takes the prepared one next time (the first arena usually
//! comes before its spare is ready, and is made in line). Once arenas are
//! being reused (the budget is full) no spare is kept, and one that arrives
//! then is let go. A spare is not charged: the cache holds at most one arena
//! beyond what it charges (also while idle, or when every frame is over
//! half an arena and gets a buffer of its own).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::ids::LogPosition;

/// Bookkeeping counted against the budget for each cached frame.
const PIECE_OVERHEAD_BYTES: u64 = std::mem::size_of::<Piece>() as u64;
/// Arena size: a 32nd of the budget (the newest arena is charged whole
/// before it fills), within these bounds.
const ARENA_MIN_BYTES: u64 = 64 * 1024;
const ARENA_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Frames over this fraction of an arena get a buffer of their own. Such a
/// buffer is a fresh allocation, and fresh pages cost a fault and zeroing
/// each (measured: 29 % of the broker's CPU with 1 MB batches in their own
/// buffers), so arenas, which are reused, take frames up to half their size.
const OWN_BUFFER_OVER_ARENA_DIVISOR: usize = 2;

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

/// A buffer frames were copied into, in the order the frames were: its
/// capacity is charged while any of its frames is cached.
#[derive(Debug)]
struct BufferUse {
    capacity: u64,
    /// Cached frames cut from it (the next `frames` of `pieces` in order).
    frames: usize,
}

/// The newest frames of one commit log, up to a byte budget.
#[derive(Debug)]
pub struct TailCache {
    /// `storage.tail_cache_bytes`; 0 turns the cache off.
    budget: u64,
    arena_bytes: usize,
    /// Ascending by position, non-overlapping (gaps where segments roll).
    pieces: VecDeque<Piece>,
    /// The buffers behind `pieces`, oldest first; the last is `current`'s.
    buffers: VecDeque<BufferUse>,
    /// Capacity of `buffers` plus bookkeeping of `pieces`: at most `budget`
    /// (the newest frame is kept even when it alone passes it).
    charged: u64,
    /// The buffer frames are copied into; empty, with spare capacity.
    current: BytesMut,
    /// Whether `current` is an arena (reused once spent), not a large
    /// frame's own buffer or the empty one a cache starts with.
    current_is_arena: bool,
    /// Filled arenas, oldest first, reused once no frame of theirs is held.
    spent: VecDeque<BytesMut>,
    /// Buffers allocated so far on the shard thread, in line (reuse keeps
    /// this flat in a steady stream; spares keep it low while filling: the
    /// first arena, and any needed before its spare is made, are in line).
    allocations: u64,
    /// The arena made ahead for the next one opened.
    spare: Spare,
}

/// Where the arena made ahead stands.
#[derive(Debug)]
enum Spare {
    /// None is wanted: the cache is off, or the last arena opened was a
    /// reused one (the budget is full), and a spare arriving now is let go.
    Unwanted,
    /// One is wanted: the cache opened an arena it did not reuse.
    Wanted,
    /// One is being made off the shard.
    Preparing,
    /// One is being made, but the cache has since reused an arena: let go
    /// when it arrives, unless the cache opens a fresh arena first (then
    /// it is wanted again, and no second one is asked for meanwhile).
    Abandoned,
    /// Made, its pages already touched; taken by the next arena opened
    /// that is not a reused one.
    Ready(BytesMut),
}

/// A new arena of `bytes` capacity, every page touched (run off the shard
/// thread: this is where an arena's page faults and zeroing happen).
pub fn prepare_arena(bytes: usize) -> BytesMut {
    let mut arena = BytesMut::with_capacity(bytes);
    arena.resize(bytes, 0);
    arena.clear();
    arena
}

impl TailCache {
    /// A cache of at most `budget` bytes (0: off, nothing is kept).
    pub fn new(budget: u64) -> TailCache {
        let arena_bytes = (budget / 32).clamp(ARENA_MIN_BYTES, ARENA_MAX_BYTES) as usize;
        TailCache {
            budget,
            arena_bytes,
            pieces: VecDeque::new(),
            buffers: VecDeque::new(),
            charged: 0,
            current: BytesMut::new(),
            current_is_arena: false,
            spent: VecDeque::new(),
            allocations: 0,
            spare: if budget > 0 {
                Spare::Wanted
            } else {
                Spare::Unwanted
            },
        }
    }

    /// The capacity of an arena to make ahead, if one is wanted and none is
    /// held or being made; the caller makes it ([`prepare_arena`]) and hands
    /// it to [`TailCache::spare_done`].
    pub fn spare_due(&mut self) -> Option<usize> {
        if !matches!(self.spare, Spare::Wanted) {
            return None;
        }
        self.spare = Spare::Preparing;
        Some(self.arena_bytes)
    }

    /// The arena [`TailCache::spare_due`] asked for (`None`: its making was
    /// cancelled, and it is asked for again). One arriving once the cache
    /// reuses its arenas is let go.
    pub fn spare_done(&mut self, arena: Option<BytesMut>) {
        self.spare = match (&self.spare, arena) {
            (Spare::Preparing, Some(arena)) if arena.capacity() >= self.arena_bytes => {
                Spare::Ready(arena)
            }
            (Spare::Preparing, _) => Spare::Wanted,
            (Spare::Abandoned, _) => Spare::Unwanted,
            // Not asked for (a stray answer): nothing changes.
            _ => return,
        };
    }

    /// Keep the frame made of `parts` appended at `position`, evicting the
    /// oldest frames past the budget. Frames come in log order. A frame
    /// larger than the whole budget is not kept.
    pub fn push(&mut self, position: LogPosition, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        if len as u64 + PIECE_OVERHEAD_BYTES > self.budget {
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
            self.current.extend_from_slice(part);
        }
        let bytes = self.current.split().freeze();
        self.pieces.push_back(Piece {
            start: position,
            bytes,
        });
        self.buffers
            .back_mut()
            .expect("make_room opened a buffer")
            .frames += 1;
        self.charged += PIECE_OVERHEAD_BYTES;
        while self.charged > self.budget && self.pieces.len() > 1 {
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

    /// Memory charged: capacity of the buffers holding cached frames plus
    /// bookkeeping (`sluice_log_tail_cache_bytes`).
    pub fn charged_bytes(&self) -> u64 {
        self.charged
    }

    fn pop_oldest(&mut self) {
        self.pieces.pop_front().expect("a frame to evict");
        self.charged -= PIECE_OVERHEAD_BYTES;
        let buffers = self.buffers.len();
        let oldest = self
            .buffers
            .front_mut()
            .expect("a cached frame has a buffer");
        oldest.frames -= 1;
        if oldest.frames == 0 && buffers > 1 {
            self.charged -= oldest.capacity;
            self.buffers.pop_front();
        }
    }

    /// Leave `self.current` with room for `len` more bytes: the current
    /// arena, else a buffer of the frame's own size for a large frame, else
    /// the oldest spent arena no frame of which is held any more, else a new
    /// arena. A buffer opened here is charged whole.
    fn make_room(&mut self, len: usize) {
        if self.current.capacity() >= len && !self.buffers.is_empty() {
            return;
        }
        let previous = std::mem::take(&mut self.current);
        if self.current_is_arena {
            self.spent.push_back(previous);
        }
        if self.buffers.back().is_some_and(|buffer| buffer.frames == 0) {
            // The last buffer holds no cached frame (all forgotten): it is
            // no longer charged once replaced.
            let unused = self.buffers.pop_back().expect("checked above");
            self.charged -= unused.capacity;
        }
        self.current_is_arena = len <= self.arena_bytes / OWN_BUFFER_OVER_ARENA_DIVISOR;
        if !self.current_is_arena {
            self.current = BytesMut::with_capacity(len);
            self.allocations += 1;
        } else if let Some(oldest) = self.spent.front_mut()
            && oldest.try_reclaim(self.arena_bytes)
        {
            self.current = self.spent.pop_front().expect("checked above");
            // Arenas are being reused: the cache has filled its budget.
            self.spare = match self.spare {
                Spare::Preparing | Spare::Abandoned => Spare::Abandoned,
                _ => Spare::Unwanted,
            };
        } else {
            self.current = match std::mem::replace(&mut self.spare, Spare::Wanted) {
                Spare::Ready(spare) => spare,
                // The one being made is taken by the next arena opened.
                Spare::Preparing | Spare::Abandoned => {
                    self.spare = Spare::Preparing;
                    self.allocate_arena()
                }
                Spare::Unwanted | Spare::Wanted => self.allocate_arena(),
            };
        }
        let capacity = self.current.capacity() as u64;
        self.buffers.push_back(BufferUse {
            capacity,
            frames: 0,
        });
        self.charged += capacity;
        // Spent arenas beyond what the budget can fill are let go: their
        // memory is freed once the last frame or response holding it is.
        let kept_max = (self.budget / self.arena_bytes as u64) as usize + 2;
        while self.spent.len() > kept_max {
            self.spent.pop_front();
        }
        assert!(self.current.is_empty() && self.current.capacity() >= len);
    }

    /// A fresh arena, made in line on the shard thread.
    fn allocate_arena(&mut self) -> BytesMut {
        self.allocations += 1;
        BytesMut::with_capacity(self.arena_bytes)
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
        let len = 5_000usize;
        let mut position = 0u64;
        for round in 0..2000u64 {
            cache.push(LogPosition(position), &[&frame(round as u8, len)]);
            position += len as u64;
            assert!(cache.charged_bytes() <= budget);
        }
        let kept = cache.pieces.len() as u64;
        assert!(
            kept * len as u64 >= budget * 8 / 10,
            "{kept} frames of {len} bytes kept in a {budget}-byte budget"
        );
        let newest = LogPosition(position - len as u64);
        assert_eq!(
            cache.get(newest, LogPosition(position)).unwrap(),
            frame(1999u64 as u8, len)
        );
        let evicted = LogPosition(position - (kept + 1) * len as u64);
        assert!(cache.get(evicted, evicted.plus(len as u64)).is_none());
        // 10 MB went through a 1 MiB cache in 64 KiB arenas: about 160
        // arenas' worth, from the 16 or so the budget holds, reused.
        assert_eq!(cache.arena_bytes, 64 * 1024);
        assert!(
            cache.allocations <= 20,
            "{} arenas allocated",
            cache.allocations
        );
    }

    #[test]
    fn arenas_are_made_ahead_while_the_cache_fills_and_not_once_it_reuses_them() {
        let budget = 1 << 20;
        let mut cache = TailCache::new(budget);
        let len = 5_000usize;
        let mut spares = 0;
        for round in 0..2000u64 {
            // The flusher's part: make each spare asked for at once.
            if let Some(bytes) = cache.spare_due() {
                assert!(cache.spare_due().is_none(), "one spare at a time");
                cache.spare_done(Some(prepare_arena(bytes)));
                spares += 1;
            }
            cache.push(LogPosition(round * len as u64), &[&frame(round as u8, len)]);
        }
        assert_eq!(cache.allocations, 0, "every new arena was a spare");
        assert!(
            (16..=20).contains(&spares),
            "{spares} spares for a 16-arena budget"
        );
        assert!(
            matches!(cache.spare, Spare::Unwanted) && cache.spare_due().is_none(),
            "no spare once reusing"
        );
        // A cancelled spare is asked for again.
        let mut filling = TailCache::new(budget);
        let bytes = filling
            .spare_due()
            .expect("a new cache wants its first arena");
        filling.spare_done(None);
        assert!(matches!(filling.spare, Spare::Wanted));
        filling.push(LogPosition(0), &[&frame(1, len)]);
        assert_eq!(filling.allocations, 1);
        assert_eq!(filling.spare_due(), Some(bytes));
        // An arena opened while its spare is being made is made in line,
        // and the spare is kept for the next.
        for (index, at) in [len, len + 30_000, len + 60_000].into_iter().enumerate() {
            filling.push(LogPosition(at as u64), &[&frame(index as u8, 30_000)]);
        }
        assert_eq!(filling.allocations, 2, "a second arena, made in line");
        assert!(matches!(filling.spare, Spare::Preparing));
        filling.spare_done(Some(prepare_arena(bytes)));
        assert!(matches!(filling.spare, Spare::Ready(_)));
    }

    #[test]
    fn a_spare_being_made_when_the_cache_starts_reusing_arenas_is_let_go() {
        let budget = 1 << 20;
        let len = 5_000usize;
        let mut cache = TailCache::new(budget);
        let mut position = 0u64;
        let mut push = |cache: &mut TailCache| {
            cache.push(LogPosition(position), &[&frame(1, len)]);
            position += len as u64;
        };
        // Fill the budget, each spare made at once, until an arena is reused.
        while !matches!(cache.spare, Spare::Unwanted) {
            if let Some(bytes) = cache.spare_due() {
                cache.spare_done(Some(prepare_arena(bytes)));
            }
            push(&mut cache);
        }
        // A fresh arena opened once more (frames over half an arena get
        // their own buffer and leave the arenas alone, so force it: spent
        // arenas still holding frames cannot be reused).
        cache.spare = Spare::Wanted;
        let bytes = cache.spare_due().expect("wanted");
        assert!(matches!(cache.spare, Spare::Preparing));
        // Reuse starts while it is being made: it is abandoned, not asked
        // for a second time, and let go when it arrives.
        for _ in 0..1000 {
            if !matches!(cache.spare, Spare::Preparing) {
                break;
            }
            push(&mut cache);
        }
        assert!(matches!(cache.spare, Spare::Abandoned), "{:?}", cache.spare);
        assert_eq!(cache.spare_due(), None, "no second spare while one is made");
        cache.spare_done(Some(prepare_arena(bytes)));
        assert!(
            matches!(cache.spare, Spare::Unwanted),
            "a late spare is let go"
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
        // The arena still holds the kept frame: it stays charged whole.
        assert_eq!(
            cache.charged_bytes(),
            cache.arena_bytes as u64 + PIECE_OVERHEAD_BYTES
        );
        cache.forget_below(LogPosition(1 << 20));
        cache.push(LogPosition(1 << 20), &[&frame(3, 100)]);
        assert_eq!(
            cache.charged_bytes(),
            cache.arena_bytes as u64 + PIECE_OVERHEAD_BYTES
        );
    }

    /// Found by the breaker trial: frames a little over half an arena each
    /// took a whole arena, and the budget counted only their bytes, so a
    /// 64 MiB cache of 2.1 MB batches held 114 MiB. Now the budget counts
    /// buffer capacity, and large frames get buffers of their own size.
    #[test]
    fn the_budget_bounds_buffer_capacity_for_frames_of_any_size() {
        let budget = 8 << 20;
        for len in [1_000usize, 70_000, 140_000, 600_000, 2_000_000] {
            let mut cache = TailCache::new(budget);
            let mut position = 0u64;
            for round in 0..2 * budget / len as u64 {
                cache.push(LogPosition(position), &[&frame(round as u8, len)]);
                position += len as u64;
                assert!(cache.charged_bytes() <= budget, "{len}-byte frames");
            }
            let capacity: u64 = cache.buffers.iter().map(|buffer| buffer.capacity).sum();
            assert!(
                capacity <= budget,
                "{len}-byte frames: {capacity} bytes of buffers"
            );
            let cached: u64 = cache
                .pieces
                .iter()
                .map(|piece| piece.bytes.len() as u64)
                .sum();
            assert!(
                cached >= budget * 3 / 4,
                "{len}-byte frames: only {cached} bytes cached in {budget}"
            );
        }
    }
}
