//! Watermarks over commit-log byte ranges, and fsync deadlines.
//!
//! Several writes may be in flight and complete in any order, so "written up
//! to X" is the end of the contiguous prefix of completed ranges. A
//! [`RangeWatermark`] keeps that end plus the completed ranges beyond it, and
//! advances when a gap fills. The same type tracks durability: an fdatasync
//! makes durable exactly what was written when it was issued, which is a
//! snapshot of the written watermark ([`RangeWatermark::merge`]).
//!
//! [`DueQueue`] holds, for appends not yet durable, the time by which they
//! must be fsynced; it answers "what is the earliest deadline?" in O(1).

use std::collections::VecDeque;
use std::time::Instant;

/// Ranges of the log marked done; `end` is where the contiguous prefix stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeWatermark {
    end: u64,
    /// Sorted, disjoint, non-adjacent ranges that all start beyond `end`.
    ahead: Vec<(u64, u64)>,
}

impl RangeWatermark {
    pub fn new(end: u64) -> Self {
        RangeWatermark {
            end,
            ahead: Vec::new(),
        }
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// Mark `[start, end)` done; returns true if the contiguous end advanced.
    pub fn mark(&mut self, start: u64, end: u64) -> bool {
        assert!(start <= end, "range {start}..{end} is reversed");
        if end <= self.end || start == end {
            return false;
        }
        if start <= self.end {
            self.end = end;
            self.absorb_ahead();
            return true;
        }
        self.insert_ahead(start, end);
        false
    }

    /// Mark everything `other` has marked; returns true if the end advanced.
    pub fn merge(&mut self, other: &RangeWatermark) -> bool {
        self.merge_within(other, 0, u64::MAX)
    }

    /// Mark what `other` has marked inside `[low, high)` only. An fdatasync
    /// makes durable only what was written to *its* file: one segment's range.
    pub fn merge_within(&mut self, other: &RangeWatermark, low: u64, high: u64) -> bool {
        let before = self.end;
        let ranges = std::iter::once((0, other.end)).chain(other.ahead.iter().copied());
        for (start, end) in ranges {
            let (start, end) = (start.max(low), end.min(high));
            if start < end {
                self.mark(start, end);
            }
        }
        self.end > before
    }

    fn absorb_ahead(&mut self) {
        let mut absorbed = 0;
        for &(start, end) in &self.ahead {
            if start > self.end {
                break;
            }
            self.end = self.end.max(end);
            absorbed += 1;
        }
        self.ahead.drain(..absorbed);
    }

    fn insert_ahead(&mut self, start: u64, end: u64) {
        let at = self
            .ahead
            .partition_point(|&(other_start, _)| other_start < start);
        self.ahead.insert(at, (start, end));
        // Coalesce overlapping or touching neighbours so the list stays short.
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ahead.len());
        for &(start, end) in &self.ahead {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        self.ahead = merged;
    }
}

/// Fsync deadlines of appends not yet durable, keyed by their end position.
///
/// A sliding-window minimum: when a new entry is due no later than entries
/// queued before it, those entries are dropped, because the new entry ends
/// later and any fsync that satisfies it satisfies them too.
#[derive(Debug, Default)]
pub struct DueQueue {
    entries: VecDeque<(u64, Instant)>,
}

impl DueQueue {
    pub fn push(&mut self, end: u64, due: Instant) {
        while let Some(&(_, last_due)) = self.entries.back() {
            if last_due < due {
                break;
            }
            self.entries.pop_back();
        }
        self.entries.push_back((end, due));
    }

    /// Forget entries made durable by `durable_end`.
    pub fn satisfy(&mut self, durable_end: u64) {
        while let Some(&(end, _)) = self.entries.front() {
            if end > durable_end {
                break;
            }
            self.entries.pop_front();
        }
    }

    pub fn earliest(&self) -> Option<Instant> {
        self.entries.front().map(|&(_, due)| due)
    }

    /// The end of the first entry due by `now` that ends past `covered`.
    pub fn first_due_beyond(&self, covered: u64, now: Instant) -> Option<u64> {
        self.entries
            .iter()
            .take_while(|&&(_, due)| due <= now)
            .map(|&(end, _)| end)
            .find(|&end| end > covered)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn out_of_order_ranges_advance_when_the_gap_fills() {
        let mut mark = RangeWatermark::new(0);
        assert!(!mark.mark(200, 300));
        assert!(!mark.mark(100, 200));
        assert_eq!(mark.end(), 0);
        assert!(mark.mark(0, 100));
        assert_eq!(mark.end(), 300);
    }

    #[test]
    fn merge_takes_the_snapshot_ranges() {
        let mut written = RangeWatermark::new(0);
        written.mark(0, 10);
        written.mark(20, 30);
        let mut durable = RangeWatermark::new(0);
        assert!(durable.merge(&written));
        assert_eq!(durable.end(), 10);
        durable.mark(10, 20);
        assert_eq!(durable.end(), 30);
    }

    #[test]
    fn merge_within_credits_only_the_synced_file_range() {
        let mut written = RangeWatermark::new(0);
        written.mark(0, 300);
        let mut durable = RangeWatermark::new(100);
        // An fdatasync of the segment [200, 400) says nothing about [100, 200).
        assert!(!durable.merge_within(&written, 200, 400));
        assert_eq!(durable.end(), 100);
        assert!(durable.merge_within(&written, 100, 200));
        assert_eq!(durable.end(), 300);
    }

    #[test]
    fn due_queue_keeps_the_earliest_deadline() {
        let now = Instant::now();
        let mut due = DueQueue::default();
        due.push(100, now + Duration::from_millis(50));
        due.push(200, now + Duration::from_millis(10));
        assert_eq!(due.earliest(), Some(now + Duration::from_millis(10)));
        due.push(300, now + Duration::from_millis(40));
        due.satisfy(200);
        assert_eq!(due.earliest(), Some(now + Duration::from_millis(40)));
        due.satisfy(300);
        assert!(due.is_empty());
    }

    #[test]
    fn watermark_matches_a_bitmap_model() {
        // Mark ranges of a 64-byte space in a scrambled order and compare the
        // contiguous end with a brute-force model after every step.
        let mut mark = RangeWatermark::new(0);
        let mut done = [false; 64];
        let order = [5usize, 0, 7, 3, 1, 6, 2, 4];
        for &chunk in &order {
            let (start, end) = (chunk as u64 * 8, chunk as u64 * 8 + 8);
            mark.mark(start, end);
            done[chunk * 8..chunk * 8 + 8].fill(true);
            let model_end = done.iter().position(|&d| !d).unwrap_or(64) as u64;
            assert_eq!(mark.end(), model_end);
        }
    }
}
