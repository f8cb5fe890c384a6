//! Which timer notes of a commit log count (ARCHITECTURE.md, "Delayed
//! delivery, retry and dead letters": two adjacent frames per produced
//! batch, and per delivery). A note, a held frame (the delayed records of a
//! produced batch) or a delivery note (the next batch delivers delayed
//! records), counts only when the very next frame of the log is its batch:
//! same partition, same base offset, and the CRC the note names in its
//! `partitionLeaderEpoch` field. A crash between the two appends, or a
//! batch refused after its note was written, leaves the note unpaired: dead
//! bytes, never a delayed record whose batch was not acknowledged, nor a
//! delivery that is not in the log. Recovery and followers feed every frame
//! they read, in log order, through one [`TimerPairing`].

use crate::ids::{LogPosition, PartitionId};
use crate::record_batch::BatchHeader;
use crate::storage::frame::{FrameHeader, FrameKind};

/// A timer note whose batch follows it in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerFrame {
    /// [`FrameKind::DelayHeld`], [`FrameKind::DelayDelivery`] or
    /// [`FrameKind::DelayRoll`] (which stands alone: its "batch" is
    /// itself).
    pub kind: FrameKind,
    /// Where the note starts, and its length with its header.
    pub position: LogPosition,
    pub frame_len: u64,
    pub partition: PartitionId,
    /// The batch's base offset: for a held frame, each delayed record's
    /// origin offset is this plus its offset delta.
    pub base_offset: i64,
    /// Where the note's batch (the visible batch, or the delivered
    /// records) starts, and its length with its header.
    pub batch_position: LogPosition,
    pub batch_frame_len: u64,
}

/// The last note read, waiting for the next frame.
#[derive(Debug, Default)]
pub struct TimerPairing {
    pending: Option<(TimerFrame, u32)>,
}

impl TimerPairing {
    /// Feed the next frame of the log (`position`, its frame header and its
    /// batch's header); the note it completes, if it is the batch the
    /// previous frame was a note for. Positions must rise.
    pub fn next(
        &mut self,
        position: LogPosition,
        frame: &FrameHeader,
        batch: &BatchHeader,
    ) -> Option<TimerFrame> {
        let pending = self.pending.take();
        if let Some((note, _)) = &pending {
            assert!(position > note.position, "frames fed in log order");
        }
        // This frame as a note standing alone (its own batch).
        let alone = TimerFrame {
            kind: frame.kind,
            position,
            frame_len: frame.frame_len(),
            partition: frame.partition,
            base_offset: batch.base_offset,
            batch_position: position,
            batch_frame_len: frame.frame_len(),
        };
        match frame.kind {
            FrameKind::DelayHeld | FrameKind::DelayDelivery => {
                self.pending = Some((alone, batch.partition_leader_epoch as u32));
                None
            }
            // A roll note stands alone.
            FrameKind::DelayRoll => Some(alone),
            // The next frame, wherever it lies (a roll may come between
            // the two appends: the batch then starts the next segment).
            FrameKind::Batch => pending.and_then(|(note, crc)| {
                (frame.partition == note.partition
                    && batch.base_offset == note.base_offset
                    && batch.crc == crc)
                    .then_some(TimerFrame {
                        batch_position: position,
                        batch_frame_len: frame.frame_len(),
                        ..note
                    })
            }),
            _ => None,
        }
    }

    /// Forget a note waiting for its batch (the log's reading jumped: a
    /// damaged range skipped, a new segment after a gap).
    pub fn reset(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{self, BatchBuilder, RecordSpec};

    fn batch(value: &[u8], base_offset: i64, leader_epoch: i32) -> Vec<u8> {
        let mut builder = BatchBuilder::new(1_000);
        builder.push(RecordSpec {
            value: Some(value),
            ..RecordSpec::default()
        });
        let mut bytes = builder.build();
        record_batch::assign_broker_fields(&mut bytes, base_offset, leader_epoch);
        bytes
    }

    fn frame(kind: FrameKind, partition: u32, batch: &[u8]) -> FrameHeader {
        FrameHeader {
            payload_len: batch.len() as u32,
            partition: PartitionId(partition),
            kind,
        }
    }

    /// (frame header, batch header) of a held frame for `visible`.
    fn held_for(visible: &[u8], partition: u32, base_offset: i64) -> (FrameHeader, BatchHeader) {
        let crc = record_batch::stored_crc(visible) as i32;
        let held = batch(b"later", base_offset, crc);
        (
            frame(FrameKind::DelayHeld, partition, &held),
            BatchHeader::parse(&held).unwrap(),
        )
    }

    #[test]
    fn a_held_frame_counts_only_right_before_its_own_batch() {
        let visible = batch(b"now", 10, 0);
        let visible_header = BatchHeader::parse(&visible).unwrap();
        let visible_frame = frame(FrameKind::Batch, 1, &visible);
        let (held_frame, held_header) = held_for(&visible, 1, 10);
        let after_held = LogPosition(100).plus(held_frame.frame_len());

        let mut pairing = TimerPairing::default();
        assert_eq!(
            pairing.next(LogPosition(100), &held_frame, &held_header),
            None
        );
        assert_eq!(
            pairing.next(after_held, &visible_frame, &visible_header),
            Some(TimerFrame {
                kind: FrameKind::DelayHeld,
                position: LogPosition(100),
                frame_len: held_frame.frame_len(),
                partition: PartitionId(1),
                base_offset: 10,
                batch_position: after_held,
                batch_frame_len: visible_frame.frame_len(),
            })
        );
        assert_eq!(
            pairing.next(
                after_held.plus(visible_frame.frame_len()),
                &visible_frame,
                &visible_header
            ),
            None,
            "counted once"
        );

        // Another batch of the same partition and offset (another
        // producer's after a crash between the two appends).
        let other = batch(b"other", 10, 0);
        let other_header = BatchHeader::parse(&other).unwrap();
        pairing.next(LogPosition(100), &held_frame, &held_header);
        assert_eq!(
            pairing.next(
                after_held,
                &frame(FrameKind::Batch, 1, &other),
                &other_header
            ),
            None
        );
        // Another partition, another base offset, a frame between, reset.
        pairing.next(LogPosition(100), &held_frame, &held_header);
        assert_eq!(
            pairing.next(
                after_held,
                &frame(FrameKind::Batch, 2, &visible),
                &visible_header
            ),
            None
        );
        let (moved_frame, moved_header) = held_for(&visible, 1, 11);
        pairing.next(LogPosition(100), &moved_frame, &moved_header);
        assert_eq!(
            pairing.next(after_held, &visible_frame, &visible_header),
            None
        );
        pairing.next(LogPosition(100), &held_frame, &held_header);
        pairing.next(
            after_held,
            &frame(FrameKind::Batch, 2, &other),
            &other_header,
        );
        assert_eq!(
            pairing.next(after_held.plus(100), &visible_frame, &visible_header),
            None
        );
        pairing.next(LogPosition(100), &held_frame, &held_header);
        pairing.reset();
        assert_eq!(
            pairing.next(after_held, &visible_frame, &visible_header),
            None
        );
    }
}
