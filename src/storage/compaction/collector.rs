//! The compaction commit frames a shard has stored but not applied yet.
//!
//! Every way frames enter a shard's log (the leader's own cleaner, a
//! follower's copy of its leader's log, recovery's scan) hands commit parts
//! to [`Collector::collect`]. A pass's parts arrive in order; a complete
//! pass waits in `ready` until the log is durable past its last part, and
//! is then applied (`ShardStore::apply_compaction`). Until it is applied,
//! [`Collector::hold`] keeps the checkpoint at its first part, so a restart
//! scans the parts again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::commit::CommitPart;
use crate::ids::{LogPosition, Offset, PartitionId};
use crate::storage::queue_entry::QueueEntry;

/// A complete pass of one partition, ready to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletePass {
    pub partition: PartitionId,
    pub generation: u64,
    pub clean_end: Offset,
    /// Where its first commit frame starts.
    pub first_part: LogPosition,
    /// Where its last commit frame ends: applied once durable there.
    pub end: LogPosition,
    pub entries: Vec<QueueEntry>,
    /// Commit parts joined so far.
    pub parts: usize,
}

#[derive(Default)]
pub struct Collector {
    /// Passes still collecting parts, with when their first part came.
    building: HashMap<PartitionId, (CompletePass, Instant)>,
    ready: Vec<CompletePass>,
    /// First parts of passes handed out by `take_durable` and not yet
    /// reported `applied`.
    applying: Vec<LogPosition>,
}

impl Collector {
    /// Take the commit part stored at `[position, end)` for `partition`.
    /// A part of another generation than the one being collected starts
    /// that generation afresh (the earlier pass was cut short: its leader
    /// stopped between parts).
    pub fn collect(
        &mut self,
        partition: PartitionId,
        position: LogPosition,
        end: LogPosition,
        part: CommitPart,
        now: Instant,
    ) {
        let (pass, since) = match self.building.remove(&partition) {
            Some((mut pass, since))
                if pass.generation == part.generation && usize::from(part.index) == pass.parts =>
            {
                pass.entries.extend(part.entries);
                pass.end = end;
                pass.parts += 1;
                (pass, since)
            }
            // A part out of order: one before it is missing from the log
            // (damage), so the pass can never be complete.
            _ if part.index != 0 => return,
            _ => (
                CompletePass {
                    partition,
                    generation: part.generation,
                    clean_end: part.clean_end,
                    first_part: position,
                    end,
                    entries: part.entries,
                    parts: 1,
                },
                now,
            ),
        };
        if part.last {
            self.ready.retain(|ready| ready.partition != partition);
            self.ready.push(pass);
        } else {
            self.building.insert(partition, (pass, since));
        }
    }

    /// The complete passes whose last part ends at or before `durable`.
    pub fn take_durable(&mut self, durable: LogPosition) -> Vec<CompletePass> {
        let (done, waiting) = std::mem::take(&mut self.ready)
            .into_iter()
            .partition(|pass| pass.end <= durable);
        self.ready = waiting;
        self.applying
            .extend(done.iter().map(|pass: &CompletePass| pass.first_part));
        done
    }

    /// The passes last taken by [`Collector::take_durable`] are applied:
    /// they no longer hold the checkpoint.
    pub fn applied(&mut self) {
        self.applying.clear();
    }

    /// Whether a complete pass waits to be applied.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Drop every collected pass for which `damaged` says one of its
    /// entries' frames is not whole in the log (recovery skipped a damaged
    /// range there): applying it would index bytes that are not a batch.
    pub fn drop_damaged(&mut self, damaged: impl Fn(&QueueEntry) -> bool) {
        let sound = |pass: &CompletePass| {
            let sound = !pass.entries.iter().any(&damaged);
            if !sound {
                tracing::error!(partition = %pass.partition, generation = pass.generation, "a compaction pass's copies lie in a damaged log range; it is not applied and the partition keeps its previous clean section");
            }
            sound
        };
        self.building.retain(|_, (pass, _)| sound(pass));
        self.ready.retain(|pass| sound(pass));
    }

    /// The newest generation collected for `partition`, complete or not.
    pub fn newest_generation(&self, partition: PartitionId) -> Option<u64> {
        self.building
            .get(&partition)
            .map(|(pass, _)| pass.generation)
            .into_iter()
            .chain(
                self.ready
                    .iter()
                    .filter(|pass| pass.partition == partition)
                    .map(|pass| pass.generation),
            )
            .max()
    }

    /// Forget what was collected for `partition` (deleted, or its passes
    /// abandoned on a leader that stopped cleaning it).
    pub fn forget(&mut self, partition: PartitionId) {
        self.building.remove(&partition);
        self.ready.retain(|pass| pass.partition != partition);
    }

    /// Forget passes that never completed (a new leader will not finish
    /// its predecessor's pass); complete ones stay to be applied.
    pub fn abandon_incomplete(&mut self) {
        self.building.clear();
    }

    /// Forget passes still incomplete `max_age` after their first part: a
    /// pass writes its parts back to back, so its leader stopped.
    pub fn abandon_older_than(&mut self, now: Instant, max_age: Duration) {
        self.building
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < max_age);
    }

    /// The earliest first part of a pass collected but not applied: the
    /// checkpoint stays at or before it.
    pub fn hold(&self) -> Option<LogPosition> {
        self.building
            .values()
            .map(|(pass, _)| pass.first_part)
            .chain(self.ready.iter().map(|pass| pass.first_part))
            .chain(self.applying.iter().copied())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;

    fn part(generation: u64, last: bool, base: i64) -> CommitPart {
        CommitPart {
            generation,
            clean_end: Offset(100),
            last,
            index: base as u16,
            entries: vec![QueueEntry {
                base_offset: Offset(base),
                position: LogPosition(10 + base as u64),
                batch_len: 80,
                last_offset_delta: 0,
                max_timestamp_ms: 5,
                attributes: 0,
            }],
        }
    }

    fn now() -> Instant {
        Instant::now()
    }

    /// Collect `part` as the frame at log positions `frame`.
    fn collect(collector: &mut Collector, id: PartitionId, frame: Range<u64>, part: CommitPart) {
        collector.collect(
            id,
            LogPosition(frame.start),
            LogPosition(frame.end),
            part,
            now(),
        );
    }

    #[test]
    fn parts_of_a_pass_are_joined_and_applied_once_durable() {
        let mut collector = Collector::default();
        let id = PartitionId(3);
        collect(&mut collector, id, 1000..1100, part(2, false, 0));
        assert_eq!(collector.hold(), Some(LogPosition(1000)));
        collect(&mut collector, id, 1100..1200, part(2, true, 1));
        assert!(collector.take_durable(LogPosition(1199)).is_empty());
        let done = collector.take_durable(LogPosition(1200));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].entries.len(), 2);
        assert_eq!(done[0].first_part, LogPosition(1000));
        assert_eq!(
            collector.hold(),
            Some(LogPosition(1000)),
            "held until applied"
        );
        collector.applied();
        assert_eq!(collector.hold(), None);
    }

    #[test]
    fn a_new_generation_replaces_a_pass_cut_short() {
        let mut collector = Collector::default();
        let id = PartitionId(3);
        collect(&mut collector, id, 1000..1100, part(2, false, 0));
        collect(&mut collector, id, 5000..5100, part(3, true, 0));
        let done = collector.take_durable(LogPosition(u64::MAX));
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].generation, done[0].entries.len()), (3, 1));
        assert_eq!(done[0].first_part, LogPosition(5000));
    }

    #[test]
    fn a_missing_middle_part_leaves_the_pass_incomplete() {
        let mut collector = Collector::default();
        let id = PartitionId(4);
        collect(&mut collector, id, 100..200, part(5, false, 0));
        collect(&mut collector, id, 300..400, part(5, true, 2));
        assert!(collector.take_durable(LogPosition(u64::MAX)).is_empty());
        assert!(!collector.has_ready());
    }

    #[test]
    fn an_incomplete_pass_holds_the_checkpoint_until_abandoned() {
        let mut collector = Collector::default();
        collector.collect(
            PartitionId(1),
            LogPosition(64),
            LogPosition(128),
            part(1, false, 0),
            now(),
        );
        assert_eq!(collector.hold(), Some(LogPosition(64)));
        collector.abandon_older_than(Instant::now(), Duration::from_secs(60));
        assert_eq!(collector.hold(), Some(LogPosition(64)), "young: kept");
        collector.abandon_older_than(
            Instant::now() + Duration::from_secs(61),
            Duration::from_secs(60),
        );
        assert_eq!(collector.hold(), None);
    }
}
