//! Idempotent-producer state of one partition, kept on its owner shard: per
//! producer id, its epoch and the sequence ranges and offsets of its last
//! [`BATCHES_CACHED_MAX`] batches (KIP-98).
//!
//! Produce asks [`ProducerStates::check`] before it assigns an offset and
//! calls [`ProducerStates::apply`] once the batch is in the log, both under
//! the one borrow of the shard's state that assigns the offset, so no other
//! append of the partition can come between them. Recovery rebuilds the same
//! state by [`ProducerStates::apply`]ing every stored batch in log order,
//! with no checks (Kafka's replication origin): everything it reads is in the
//! batch header, so a replica replaying the same log gets the same state.
//!
//! The rules, as Kafka's `ProducerAppendInfo` and KIP-360:
//! * an epoch older than the producer's → INVALID_PRODUCER_EPOCH;
//! * the same epoch and the same first and last sequence as a cached batch
//!   → a duplicate, answered with that batch's offsets and stored once;
//! * the same epoch: the first sequence must follow the newest cached
//!   batch's last (wrapping from `i32::MAX` to 0), else
//!   OUT_OF_ORDER_SEQUENCE_NUMBER (a gap, or a retry older than the window);
//! * a newer epoch must start at sequence 0; it forgets the older batches;
//! * a producer the partition has no state for is accepted at any sequence
//!   (KIP-360), which is why Produce never answers UNKNOWN_PRODUCER_ID.
//!
//! [`ProducerStates::expire`] forgets a producer whose newest batch's
//! timestamp is older than `storage.producer_id_expiration_ms` (Kafka's
//! `producer.id.expiration.ms`); its next batch is then accepted as an
//! unknown producer's. The timestamp is the batch's, so a replica replaying
//! the same log expires the same producers.
//!
//! Invariant: an entry holds between 1 and [`BATCHES_CACHED_MAX`] batches of
//! its current epoch, in log order, each starting where the one before ends.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use thiserror::Error;

use crate::ids::{LogPosition, Offset};
use crate::record_batch::{BatchHeader, increment_sequence};

/// How many of a producer's latest batches are remembered per partition:
/// idempotence allows at most 5 requests in flight per partition (KIP-98),
/// so a retry is always one of the last 5.
pub const BATCHES_CACHED_MAX: usize = 5;

/// What a stored batch of an idempotent producer is remembered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: Offset,
    pub last_offset_delta: i32,
    /// Where the batch's frame ends in the commit log: a duplicate waits
    /// for the original to reach the durability the retry asked for.
    pub end: LogPosition,
}

impl BatchMeta {
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + i64::from(self.last_offset_delta))
    }
}

/// One producer's state on the partition.
#[derive(Clone, Debug)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// The `maxTimestamp` of its latest batch (expiry compares it; read from
    /// the batch, so a replay gives the same value).
    pub last_timestamp_ms: i64,
    /// A ring of the latest batches: the oldest at `head`, `len` in use.
    batches: [BatchMeta; BATCHES_CACHED_MAX],
    len: u8,
    head: u8,
}

/// Equal when they remember the same batches, wherever the ring holds them.
impl PartialEq for ProducerEntry {
    fn eq(&self, other: &ProducerEntry) -> bool {
        self.epoch == other.epoch
            && self.last_timestamp_ms == other.last_timestamp_ms
            && self.batches().eq(other.batches())
    }
}

impl Eq for ProducerEntry {}

impl ProducerEntry {
    /// An entry restored from a snapshot: 1 to [`BATCHES_CACHED_MAX`]
    /// batches, oldest first, in offset order. `None` if they are not (the
    /// bytes came from disk, so this is no assertion). Sequences are not
    /// checked: a replay takes what the log holds, and so does a restore.
    pub fn restored(
        epoch: i16,
        last_timestamp_ms: i64,
        batches: &[BatchMeta],
    ) -> Option<ProducerEntry> {
        let (first, rest) = batches.split_first()?;
        if rest.len() >= BATCHES_CACHED_MAX {
            return None;
        }
        let mut entry = ProducerEntry::starting_with(epoch, last_timestamp_ms, *first);
        for batch in rest {
            let newest = entry.newest();
            if batch.base_offset <= newest.last_offset() {
                return None;
            }
            entry.push(*batch);
        }
        Some(entry)
    }

    fn starting_with(epoch: i16, last_timestamp_ms: i64, batch: BatchMeta) -> ProducerEntry {
        ProducerEntry {
            epoch,
            last_timestamp_ms,
            batches: [batch; BATCHES_CACHED_MAX],
            len: 1,
            head: 0,
        }
    }

    /// The cached batches, oldest first.
    pub fn batches(&self) -> impl Iterator<Item = &BatchMeta> {
        (0..usize::from(self.len))
            .map(|i| &self.batches[(usize::from(self.head) + i) % BATCHES_CACHED_MAX])
    }

    /// The newest cached batch.
    pub fn newest(&self) -> &BatchMeta {
        assert!(self.len > 0, "a producer entry holds at least one batch");
        let newest = (usize::from(self.head) + usize::from(self.len) - 1) % BATCHES_CACHED_MAX;
        &self.batches[newest]
    }

    fn push(&mut self, batch: BatchMeta) {
        if usize::from(self.len) < BATCHES_CACHED_MAX {
            let at = (usize::from(self.head) + usize::from(self.len)) % BATCHES_CACHED_MAX;
            self.batches[at] = batch;
            self.len += 1;
        } else {
            self.batches[usize::from(self.head)] = batch;
            self.head = ((usize::from(self.head) + 1) % BATCHES_CACHED_MAX) as u8;
        }
    }

    fn restart(&mut self, epoch: i16, batch: BatchMeta) {
        self.epoch = epoch;
        self.len = 1;
        self.head = 0;
        self.batches[0] = batch;
    }
}

/// Why a producer's batch is refused; each maps to the Kafka code the
/// clients act on (see the module doc).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProducerError {
    #[error(
        "producer {producer_id} sent epoch {epoch}, older than its current epoch {current}: a \
         newer instance of this producer exists (INVALID_PRODUCER_EPOCH)"
    )]
    InvalidEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error(
        "producer {producer_id} epoch {epoch} sent sequence {found}, expected {expected} \
         (OUT_OF_ORDER_SEQUENCE_NUMBER: a batch is missing, or the retry is older than the last \
         5 batches)"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        epoch: i16,
        expected: i32,
        found: i32,
    },
}

/// What Produce does with a batch that passed the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Store it, then [`ProducerStates::apply`] it.
    Append,
    /// A retry of a stored batch: answer with its offsets, store nothing.
    Duplicate(BatchMeta),
}

/// The idempotent producers of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStates {
    entries: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every producer's entry, in no particular order (for the snapshot).
    pub fn entries(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.entries.iter().map(|(id, entry)| (*id, entry))
    }

    /// Restore one producer's entry from a snapshot; replaces any entry it had.
    pub fn restore(&mut self, producer_id: i64, entry: ProducerEntry) {
        self.entries.insert(producer_id, entry);
    }

    /// Forget every producer whose newest batch's timestamp is at least
    /// `expiration_ms` older than `now_ms` (the broker's clock against the
    /// batch's timestamp, as Kafka's `removeExpiredProducers`). Returns how
    /// many were removed. Entries are never removed because the log start
    /// moved past their batches (KIP-360).
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, entry| now_ms.saturating_sub(entry.last_timestamp_ms) < expiration_ms);
        before - self.entries.len()
    }

    /// Check a client's batch against the producer's state; changes nothing.
    /// A batch without a producer id is always appended.
    pub fn check(&self, header: &BatchHeader) -> Result<Check, ProducerError> {
        if !header.has_producer() {
            return Ok(Check::Append);
        }
        let Some(entry) = self.entries.get(&header.producer_id) else {
            return Ok(Check::Append);
        };
        let epoch = header.producer_epoch;
        if epoch < entry.epoch {
            return Err(ProducerError::InvalidEpoch {
                producer_id: header.producer_id,
                epoch,
                current: entry.epoch,
            });
        }
        let first = header.base_sequence;
        let last = header.last_sequence();
        if epoch == entry.epoch
            && let Some(original) = entry
                .batches()
                .find(|cached| cached.first_sequence == first && cached.last_sequence == last)
        {
            return Ok(Check::Duplicate(*original));
        }
        let expected = if epoch == entry.epoch {
            increment_sequence(entry.newest().last_sequence, 1)
        } else {
            0
        };
        if first != expected {
            return Err(ProducerError::OutOfOrderSequence {
                producer_id: header.producer_id,
                epoch,
                expected,
                found: first,
            });
        }
        Ok(Check::Append)
    }

    /// Remember a batch just stored at `base_offset`, whose frame ends at
    /// `end`, after a successful [`ProducerStates::check`].
    pub fn apply(&mut self, header: &BatchHeader, base_offset: Offset, end: LogPosition) {
        let applied = self.replay(header, base_offset, end);
        assert!(applied, "producer batches are applied in offset order");
    }

    /// Recovery's replay of a stored batch: no checks, only the update
    /// (Kafka's replication origin). Returns false, changing nothing, for a
    /// batch not past the producer's newest one, which a sound log never
    /// holds (the bytes come from disk, so this is no assertion).
    pub fn replay(&mut self, header: &BatchHeader, base_offset: Offset, end: LogPosition) -> bool {
        if !header.has_producer() {
            return true;
        }
        let batch = BatchMeta {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            base_offset,
            last_offset_delta: header.last_offset_delta,
            end,
        };
        let epoch = header.producer_epoch;
        let timestamp = header.max_timestamp_ms;
        let entry = match self.entries.entry(header.producer_id) {
            Entry::Vacant(vacant) => {
                vacant.insert(ProducerEntry::starting_with(epoch, timestamp, batch));
                return true;
            }
            Entry::Occupied(occupied) => occupied.into_mut(),
        };
        if entry.newest().base_offset >= base_offset {
            return false;
        }
        if epoch == entry.epoch {
            entry.push(batch);
        } else {
            // The log decides: a replay takes whatever epoch it holds.
            entry.restart(epoch, batch);
        }
        entry.last_timestamp_ms = timestamp;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{BatchBuilder, RecordSpec};

    const PRODUCER: i64 = 7;

    fn header(epoch: i16, base_sequence: i32, records: i32) -> BatchHeader {
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        builder.producer(PRODUCER, epoch, base_sequence);
        for _ in 0..records {
            builder.push(RecordSpec {
                value: Some(b"v"),
                ..RecordSpec::default()
            });
        }
        BatchHeader::parse(&builder.build()).expect("a built batch parses")
    }

    /// Check then apply, as Produce does; offsets follow one another.
    struct Log {
        states: ProducerStates,
        next_offset: i64,
    }

    impl Log {
        fn new() -> Log {
            Log {
                states: ProducerStates::default(),
                next_offset: 0,
            }
        }

        fn produce(&mut self, header: &BatchHeader) -> Result<(Offset, bool), ProducerError> {
            match self.states.check(header)? {
                Check::Duplicate(original) => Ok((original.base_offset, true)),
                Check::Append => {
                    let base = Offset(self.next_offset);
                    self.next_offset += i64::from(header.last_offset_delta) + 1;
                    self.states
                        .apply(header, base, LogPosition(self.next_offset as u64 * 100));
                    Ok((base, false))
                }
            }
        }
    }

    #[test]
    fn batch_without_producer_is_always_appended_and_remembered_nowhere() {
        let mut log = Log::new();
        let plain = BatchHeader::parse(&BatchBuilder::new(0).push(RecordSpec::default()).build())
            .expect("parses");
        assert_eq!(log.produce(&plain), Ok((Offset(0), false)));
        assert_eq!(log.produce(&plain), Ok((Offset(1), false)));
        assert!(log.states.is_empty());
    }

    #[test]
    fn unknown_producer_is_accepted_at_any_sequence() {
        let mut log = Log::new();
        assert_eq!(log.produce(&header(3, 1234, 2)), Ok((Offset(0), false)));
        assert_eq!(log.produce(&header(3, 1236, 1)), Ok((Offset(2), false)));
    }

    #[test]
    fn duplicate_at_every_window_position_is_answered_with_its_original_offset() {
        let mut log = Log::new();
        let batches: Vec<_> = (0..BATCHES_CACHED_MAX as i32)
            .map(|i| header(0, i * 2, 2))
            .collect();
        let mut offsets = Vec::new();
        for batch in &batches {
            offsets.push(log.produce(batch).expect("in sequence").0);
        }
        for (batch, offset) in batches.iter().zip(&offsets) {
            assert_eq!(log.produce(batch), Ok((*offset, true)));
        }
        assert_eq!(
            log.next_offset,
            2 * BATCHES_CACHED_MAX as i64,
            "stored once"
        );
    }

    #[test]
    fn duplicate_older_than_the_window_is_out_of_order() {
        let mut log = Log::new();
        let first = header(0, 0, 1);
        log.produce(&first).expect("first");
        for sequence in 1..=BATCHES_CACHED_MAX as i32 {
            log.produce(&header(0, sequence, 1)).expect("in sequence");
        }
        assert_eq!(
            log.produce(&first),
            Err(ProducerError::OutOfOrderSequence {
                producer_id: PRODUCER,
                epoch: 0,
                expected: BATCHES_CACHED_MAX as i32 + 1,
                found: 0,
            })
        );
        // The sixth batch back fell out; the fifth is still a duplicate.
        assert_eq!(log.produce(&header(0, 1, 1)), Ok((Offset(1), true)));
    }

    #[test]
    fn gap_in_sequence_is_out_of_order_and_changes_nothing() {
        let mut log = Log::new();
        log.produce(&header(0, 0, 3)).expect("first");
        let before = log.states.clone();
        assert_eq!(
            log.produce(&header(0, 4, 1)),
            Err(ProducerError::OutOfOrderSequence {
                producer_id: PRODUCER,
                epoch: 0,
                expected: 3,
                found: 4,
            })
        );
        assert_eq!(log.states, before);
        assert_eq!(log.produce(&header(0, 3, 1)), Ok((Offset(3), false)));
    }

    #[test]
    fn overlapping_batch_that_is_no_exact_duplicate_is_out_of_order() {
        let mut log = Log::new();
        log.produce(&header(0, 0, 3)).expect("first");
        assert!(matches!(
            log.produce(&header(0, 1, 2)),
            Err(ProducerError::OutOfOrderSequence { expected: 3, .. })
        ));
    }

    #[test]
    fn older_epoch_is_refused() {
        let mut log = Log::new();
        log.produce(&header(2, 0, 1)).expect("first");
        assert_eq!(
            log.produce(&header(1, 1, 1)),
            Err(ProducerError::InvalidEpoch {
                producer_id: PRODUCER,
                epoch: 1,
                current: 2,
            })
        );
    }

    #[test]
    fn new_epoch_must_start_at_sequence_zero_and_resets_the_window() {
        let mut log = Log::new();
        let old = header(0, 0, 1);
        log.produce(&old).expect("first");
        log.produce(&header(0, 1, 1)).expect("second");
        assert!(matches!(
            log.produce(&header(1, 2, 1)),
            Err(ProducerError::OutOfOrderSequence {
                expected: 0,
                found: 2,
                ..
            })
        ));
        assert_eq!(log.produce(&header(1, 0, 1)), Ok((Offset(2), false)));
        let entry = log.states.get(PRODUCER).expect("known");
        assert_eq!((entry.epoch, entry.batches().count()), (1, 1));
        assert!(matches!(
            log.produce(&old),
            Err(ProducerError::InvalidEpoch { current: 1, .. })
        ));
    }

    #[test]
    fn sequence_wraps_from_i32_max_to_zero() {
        let mut log = Log::new();
        let last = header(0, i32::MAX - 1, 2);
        assert_eq!(last.last_sequence(), i32::MAX);
        log.produce(&last).expect("first");
        let wrapped = header(0, 0, 3);
        assert_eq!(log.produce(&wrapped), Ok((Offset(2), false)));
        assert_eq!(log.produce(&last), Ok((Offset(0), true)));
        assert_eq!(log.produce(&wrapped), Ok((Offset(2), true)));
        let spanning = header(0, i32::MAX - 1, 4);
        assert_eq!(spanning.last_sequence(), 1, "a batch may span the wrap");
    }

    #[test]
    fn producer_idle_for_the_expiration_is_forgotten_and_then_accepted_as_unknown() {
        const EXPIRATION_MS: i64 = 1000;
        let mut log = Log::new();
        let first = header(0, 0, 2);
        log.produce(&first).expect("stored");
        let stored_at = first.max_timestamp_ms;
        assert_eq!(
            log.states
                .expire(stored_at + EXPIRATION_MS - 1, EXPIRATION_MS),
            0
        );
        assert!(log.states.get(PRODUCER).is_some());
        // A gap is refused while the producer is remembered.
        assert!(log.produce(&header(0, 5, 1)).is_err());

        assert_eq!(
            log.states.expire(stored_at + EXPIRATION_MS, EXPIRATION_MS),
            1
        );
        assert!(log.states.is_empty());
        // Forgotten: the same batch is accepted at any sequence (KIP-360).
        assert_eq!(log.produce(&header(0, 5, 1)), Ok((Offset(2), false)));
    }

    #[test]
    fn replay_of_the_stored_batches_rebuilds_the_same_state() {
        let mut log = Log::new();
        let sent = [
            header(0, 0, 2),
            header(0, 2, 1),
            header(0, 2, 1), // duplicate: not stored
            header(1, 0, 1),
            header(1, 1, 4),
        ];
        let mut stored = Vec::new();
        for batch in &sent {
            let (base, duplicate) = log.produce(batch).expect("accepted");
            if !duplicate {
                let end =
                    LogPosition((base.0 + i64::from(batch.last_offset_delta) + 1) as u64 * 100);
                stored.push((*batch, base, end));
            }
        }
        let mut replayed = ProducerStates::default();
        for (batch, base, end) in &stored {
            assert!(replayed.replay(batch, *base, *end));
        }
        let (batch, base, end) = stored[1];
        assert!(
            !replayed.replay(&batch, base, end),
            "a batch replayed twice is ignored"
        );
        assert_eq!(replayed, log.states);
    }
}
