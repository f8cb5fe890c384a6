//! A shard's timer as its store keeps it (ARCHITECTURE.md, "Delayed
//! delivery, retry and dead letters"): the timer index, fed from the
//! timer frames of the commit log in log order (a leader's own appends, a
//! follower's copied frames, recovery's scan), and what a checkpoint
//! records of it.
//!
//! Every change to the entries comes from a frame of the log: a held frame
//! inserts its delayed records, a roll note lists entries again, a
//! delivery note finishes them. So every copy of a shard group's log
//! numbers its entries alike, and a delivery note can name entries by
//! index. Only two things happen outside the log: the cursor moving (which
//! slots are loaded) and an entry dropped because its partition is gone;
//! both are redone after a restart.

use std::collections::VecDeque;
use std::path::Path;

use super::entry::{Done, TimerEntry};
use super::index::{OpenReport, TimerCheckpoint, TimerError, TimerGeometry, TimerIndex};
use super::notes::{held_records, note_entries};
use super::pairing::{TimerFrame, TimerPairing};
use crate::ids::{LogPosition, Offset, PartitionId};
use crate::record_batch::BatchHeader;
use crate::storage::frame::{FRAME_HEADER_BYTES, FrameHeader, FrameKind};

pub struct ShardTimer {
    pub index: TimerIndex,
    /// (end of a timer frame's batch, entry count after it), for frames
    /// past the last checkpoint's position.
    marks: VecDeque<(LogPosition, u64)>,
    /// The entry count at the newest mark dropped from `marks`.
    floor: u64,
    /// A follower's copied frames, paired as recovery pairs them.
    pairing: TimerPairing,
    /// The payload of the note `pairing` waits on.
    note: Option<Vec<u8>>,
}

impl ShardTimer {
    /// Open the index in `dir` as of `checkpoint` (taken at `from`); a
    /// fresh index starts its cursor at `now_ms`.
    pub fn open(
        dir: &Path,
        geometry: TimerGeometry,
        mut checkpoint: TimerCheckpoint,
        from: LogPosition,
        now_ms: i64,
    ) -> Result<(ShardTimer, OpenReport), TimerError> {
        if checkpoint.entries == 0 && checkpoint.cursor == 0 {
            checkpoint.cursor = now_ms.div_euclid(geometry.slot_ms);
        }
        let (index, report) = TimerIndex::open(dir, geometry, checkpoint, from)?;
        let floor = index.count();
        Ok((
            ShardTimer {
                index,
                marks: VecDeque::new(),
                floor,
                pairing: TimerPairing::default(),
                note: None,
            },
            report,
        ))
    }

    /// Apply the timer frame `note` whose own payload (a batch) is
    /// `payload`: insert a held frame's records, finish a delivery's
    /// entries, list a roll's entries again. A payload that does not read
    /// is logged and skipped (the broker wrote and checked it).
    pub fn apply(&mut self, note: &TimerFrame, payload: &[u8]) -> Result<(), TimerError> {
        match note.kind {
            FrameKind::DelayHeld => match held_records(payload, note.base_offset) {
                Ok(records) => {
                    for record in records {
                        self.index.insert(TimerEntry {
                            due_ms: record.due_ms,
                            held_position: note.position,
                            record_bytes: record.bytes,
                            partition: record.target.map_or(note.partition, PartitionId),
                            origin_offset: Offset(record.origin_offset),
                            previous: 0,
                            slot: 0,
                            done: None,
                        })?;
                    }
                }
                Err(reason) => unreadable(note, &reason),
            },
            FrameKind::DelayDelivery => match note_entries(payload) {
                Ok(entries) => {
                    for at in entries {
                        self.index
                            .finish(at, Done::Delivered(note.batch_position))?;
                    }
                }
                Err(reason) => unreadable(note, &reason),
            },
            FrameKind::DelayRoll => match note_entries(payload) {
                Ok(entries) => {
                    for at in entries {
                        self.index.reinsert(at)?;
                    }
                }
                Err(reason) => unreadable(note, &reason),
            },
            _ => unreachable!("only timer notes are paired"),
        }
        let end = note.batch_position.plus(note.batch_frame_len);
        self.marks.push_back((end, self.index.count()));
        Ok(())
    }

    /// Feed a frame a follower copied (at `position`, whole in `frame`).
    pub fn copied(
        &mut self,
        position: LogPosition,
        header: &FrameHeader,
        batch: &BatchHeader,
        frame: &[u8],
    ) -> Result<(), TimerError> {
        let payload = &frame[FRAME_HEADER_BYTES..];
        let waiting = self.note.take();
        let paired = self.pairing.next(position, header, batch);
        if matches!(header.kind, FrameKind::DelayHeld | FrameKind::DelayDelivery) {
            self.note = Some(payload.to_vec());
        }
        match paired {
            Some(note) if note.kind == FrameKind::DelayRoll => self.apply(&note, payload),
            Some(note) => self.apply(&note, waiting.as_deref().unwrap_or_default()),
            None => Ok(()),
        }
    }

    /// Forget a note waiting for its batch (the copy's log jumped).
    pub fn reset_pairing(&mut self) {
        self.pairing.reset();
        self.note = None;
    }

    /// What a checkpoint at `indexed` (a frame boundary no later than the
    /// log's end) records: the entries that the frames before it made, and
    /// the cursor.
    pub fn checkpoint_at(&mut self, indexed: LogPosition) -> TimerCheckpoint {
        while let Some(&(end, count)) = self.marks.front()
            && end <= indexed
        {
            self.floor = count;
            self.marks.pop_front();
        }
        TimerCheckpoint {
            entries: self.floor,
            cursor: self.index.checkpoint().cursor,
        }
    }
}

fn unreadable(note: &TimerFrame, reason: &str) {
    tracing::error!(
        kind = ?note.kind,
        position = note.position.0,
        partition = %note.partition,
        %reason,
        "a timer frame does not read; skipped"
    );
}
