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
//! the same log expires the same producers. A producer with an open
//! transaction never expires.
//!
//! Transactions (KIP-98), as Kafka's `ProducerStateManager`: a producer's
//! first transactional batch on the partition opens its transaction there
//! (its offset is the transaction's first offset); until a marker closes it,
//! a non-transactional batch from that producer gets INVALID_TXN_STATE. A
//! marker (a control batch the broker writes, `record_batch::control`) is
//! refused for an older producer epoch (INVALID_PRODUCER_EPOCH) or an older
//! coordinator epoch (TRANSACTION_COORDINATOR_FENCED); it closes the open
//! transaction, raises the producer's epoch (fencing a zombie: a newer
//! epoch forgets the cached batches, so the next batch starts at sequence
//! 0) and, for an abort, adds the transaction to the aborted list that
//! read_committed fetches return. A completed transaction stays unstable
//! until the high watermark passes its marker
//! ([`ProducerStates::stabilize`]). The last stable offset is the first
//! offset of the oldest open or unstable transaction
//! ([`ProducerStates::first_unstable_offset`]), else the high watermark.
//!
//! A batch with a producer id but no sequence (-1) is the broker's own:
//! the transactional offset records the group coordinator writes for
//! TxnOffsetCommit (Kafka's coordinator origin; Produce refuses such a
//! batch from a client). Only its epoch is checked, and it is not cached
//! for duplicates, but it opens the producer's transaction like any
//! transactional batch, so the marker closes it.
//!
//! Invariant: an entry holds at most [`BATCHES_CACHED_MAX`] batches of its
//! current epoch, in log order, each starting where the one before ends
//! (none after a marker raised its epoch); `ongoing` holds exactly the
//! entries' open transactions.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};

use thiserror::Error;

use crate::ids::{LogPosition, Offset};
use crate::record_batch::control::{MarkerKind, TxnMarker};
use crate::record_batch::{BatchHeader, increment_sequence};

/// "No coordinator epoch yet" (Kafka's `RecordBatch.NO_PARTITION_LEADER_EPOCH`).
pub const NO_COORDINATOR_EPOCH: i32 = -1;

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
    /// The `maxTimestamp` of its latest batch or marker (expiry compares
    /// it; read from the log, so a replay gives the same value).
    pub last_timestamp_ms: i64,
    /// The coordinator epoch of its latest marker, or
    /// [`NO_COORDINATOR_EPOCH`].
    pub coordinator_epoch: i32,
    /// The first offset of its open transaction on this partition.
    pub current_txn_first_offset: Option<Offset>,
    /// The offset of its latest marker here (not persisted, not compared:
    /// only a [`TxnToken`] taken in this process is checked against it).
    last_marker_offset: Option<Offset>,
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
            && self.coordinator_epoch == other.coordinator_epoch
            && self.current_txn_first_offset == other.current_txn_first_offset
            && self.batches().eq(other.batches())
    }
}

impl Eq for ProducerEntry {}

impl ProducerEntry {
    /// An entry restored from a snapshot: at most [`BATCHES_CACHED_MAX`]
    /// batches, oldest first, in offset order. `None` if they are not (the
    /// bytes came from disk, so this is no assertion). Sequences are not
    /// checked: a replay takes what the log holds, and so does a restore.
    pub fn restored(
        epoch: i16,
        last_timestamp_ms: i64,
        coordinator_epoch: i32,
        current_txn_first_offset: Option<Offset>,
        batches: &[BatchMeta],
    ) -> Option<ProducerEntry> {
        if batches.len() > BATCHES_CACHED_MAX {
            return None;
        }
        let mut entry = ProducerEntry::empty(epoch, last_timestamp_ms);
        entry.coordinator_epoch = coordinator_epoch;
        entry.current_txn_first_offset = current_txn_first_offset;
        for batch in batches {
            if entry
                .newest()
                .is_some_and(|newest| batch.base_offset <= newest.last_offset())
            {
                return None;
            }
            entry.push(*batch);
        }
        Some(entry)
    }

    fn empty(epoch: i16, last_timestamp_ms: i64) -> ProducerEntry {
        let none = BatchMeta {
            first_sequence: -1,
            last_sequence: -1,
            base_offset: Offset(-1),
            last_offset_delta: 0,
            end: LogPosition(0),
        };
        ProducerEntry {
            epoch,
            last_timestamp_ms,
            coordinator_epoch: NO_COORDINATOR_EPOCH,
            current_txn_first_offset: None,
            last_marker_offset: None,
            batches: [none; BATCHES_CACHED_MAX],
            len: 0,
            head: 0,
        }
    }

    /// The cached batches, oldest first.
    pub fn batches(&self) -> impl Iterator<Item = &BatchMeta> {
        (0..usize::from(self.len))
            .map(|i| &self.batches[(usize::from(self.head) + i) % BATCHES_CACHED_MAX])
    }

    /// The newest cached batch; `None` right after a marker raised the
    /// epoch.
    pub fn newest(&self) -> Option<&BatchMeta> {
        let last = usize::from(self.len).checked_sub(1)?;
        Some(&self.batches[(usize::from(self.head) + last) % BATCHES_CACHED_MAX])
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

    /// Move to a newer epoch: the older epoch's batches are forgotten.
    fn raise_epoch(&mut self, epoch: i16) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.len = 0;
            self.head = 0;
        }
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
    #[error(
        "producer {producer_id} sent a non-transactional batch while its transaction on this \
         partition is open (INVALID_TXN_STATE)"
    )]
    NonTransactionalInTransaction { producer_id: i64 },
    #[error(
        "producer {producer_id} sent epoch {epoch} while its transaction at epoch {open_epoch} \
         is open on this partition: only a marker ends it (INVALID_TXN_STATE)"
    )]
    EpochChangedInTransaction {
        producer_id: i64,
        epoch: i16,
        open_epoch: i16,
    },
    #[error(
        "producer {producer_id}'s transaction on this partition ended while its batch was being \
         verified: the batch belongs to no open transaction (INVALID_TXN_STATE)"
    )]
    TransactionEnded { producer_id: i64 },
    #[error(
        "a transaction marker for producer {producer_id} carries coordinator epoch \
         {coordinator_epoch}, older than {current} (TRANSACTION_COORDINATOR_FENCED)"
    )]
    CoordinatorFenced {
        producer_id: i64,
        coordinator_epoch: i32,
        current: i32,
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

/// One producer as DescribeProducers shows it (KIP-664).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub epoch: i16,
    /// The last sequence of its newest cached batch, -1 if none.
    pub last_sequence: i32,
    pub last_timestamp_ms: i64,
    pub coordinator_epoch: i32,
    /// The first offset of its open transaction here, -1 if none.
    pub current_txn_start_offset: i64,
}

/// What a transactional Produce saw of its producer on the partition before
/// asking the coordinator (KIP-890's verification): whether its
/// transaction was open here, and its latest marker. If a marker lands
/// before the batch, the batch is refused rather than opening a
/// transaction the coordinator has already finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnToken {
    /// Whether the producer's transaction was open here...
    pub open: bool,
    /// ...at this epoch (the entry's epoch, if it had one).
    pub epoch: Option<i16>,
    last_marker_offset: Option<Offset>,
}

impl TxnToken {
    /// Whether a transactional batch at `epoch` belongs to the transaction
    /// already open here, so needs no verification.
    pub fn joins_open_transaction(&self, epoch: i16) -> bool {
        self.open && self.epoch == Some(epoch)
    }
}

/// An aborted transaction, as read_committed fetches list it (Kafka's
/// `AbortedTxn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: Offset,
    /// The offset of its abort marker.
    pub last_offset: Offset,
    /// The last stable offset right after the marker: the first offset of
    /// the oldest transaction still open then, else `last_offset + 1`.
    pub last_stable_offset: Offset,
}

/// The idempotent and transactional producers of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStates {
    entries: HashMap<i64, ProducerEntry>,
    /// Open transactions: first offset → producer id.
    ongoing: BTreeMap<Offset, i64>,
    /// Completed transactions whose marker the high watermark has not
    /// passed yet: (first offset, marker offset), in marker order.
    unstable: VecDeque<(Offset, Offset)>,
    /// Aborted transactions whose marker is at or past the log start, in
    /// marker order.
    aborted: VecDeque<AbortedTxn>,
}

impl ProducerStates {
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.aborted.is_empty()
    }

    /// Every producer's entry, in no particular order (for the snapshot).
    pub fn entries(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.entries.iter().map(|(id, entry)| (*id, entry))
    }

    /// Restore one producer's entry from a snapshot; replaces any entry it
    /// had (and its open transaction).
    pub fn restore(&mut self, producer_id: i64, entry: ProducerEntry) {
        if let Some(first) = entry.current_txn_first_offset {
            self.ongoing.insert(first, producer_id);
        }
        if let Some(old) = self.entries.insert(producer_id, entry)
            && let Some(first) = old.current_txn_first_offset
        {
            self.ongoing.remove(&first);
        }
    }

    /// The aborted transactions, oldest marker first (for the snapshot).
    pub fn aborted(&self) -> impl Iterator<Item = &AbortedTxn> {
        self.aborted.iter()
    }

    /// Restore the aborted list from a snapshot (in marker order).
    pub fn restore_aborted(&mut self, aborted: Vec<AbortedTxn>) {
        self.aborted = aborted.into();
    }

    /// Forget every producer whose newest batch's timestamp is at least
    /// `expiration_ms` older than `now_ms` (the broker's clock against the
    /// batch's timestamp, as Kafka's `removeExpiredProducers`), unless its
    /// transaction is open. Returns how many were removed. Entries are
    /// never removed because the log start moved past their batches
    /// (KIP-360).
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, entry| {
            entry.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(entry.last_timestamp_ms) < expiration_ms
        });
        before - self.entries.len()
    }

    /// Every producer with state here, by producer id.
    pub fn summaries(&self) -> Vec<ProducerSummary> {
        let mut all: Vec<ProducerSummary> = self
            .entries
            .iter()
            .map(|(&producer_id, entry)| ProducerSummary {
                producer_id,
                epoch: entry.epoch,
                last_sequence: entry.newest().map_or(-1, |newest| newest.last_sequence),
                last_timestamp_ms: entry.last_timestamp_ms,
                coordinator_epoch: entry.coordinator_epoch,
                current_txn_start_offset: entry
                    .current_txn_first_offset
                    .map_or(-1, |first| first.0),
            })
            .collect();
        all.sort_by_key(|summary| summary.producer_id);
        all
    }

    /// The token a transactional Produce takes before verification.
    pub fn txn_token(&self, producer_id: i64) -> TxnToken {
        let entry = self.entries.get(&producer_id);
        TxnToken {
            open: entry.is_some_and(|entry| entry.current_txn_first_offset.is_some()),
            epoch: entry.map(|entry| entry.epoch),
            last_marker_offset: entry.and_then(|entry| entry.last_marker_offset),
        }
    }

    /// Whether a transactional batch that passed [`ProducerStates::check`]
    /// may go in under `token`: if it would open a transaction here, no
    /// marker may have landed since the token was taken, and the token must
    /// have been taken with the transaction not open (so it was verified).
    pub fn check_token(&self, header: &BatchHeader, token: &TxnToken) -> Result<(), ProducerError> {
        let entry = self.entries.get(&header.producer_id);
        let open_now = entry.is_some_and(|entry| entry.current_txn_first_offset.is_some());
        let marker_now = entry.and_then(|entry| entry.last_marker_offset);
        if !header.is_transactional() || open_now {
            return Ok(());
        }
        if token.open || token.last_marker_offset != marker_now {
            return Err(ProducerError::TransactionEnded {
                producer_id: header.producer_id,
            });
        }
        Ok(())
    }

    /// The first offset of the oldest open or unstable transaction: the
    /// last stable offset when it is below the high watermark.
    pub fn first_unstable_offset(&self) -> Option<Offset> {
        let unstable = self.unstable.iter().map(|(first, _)| *first).min();
        match (self.ongoing.keys().next().copied(), unstable) {
            (Some(ongoing), Some(unstable)) => Some(ongoing.min(unstable)),
            (ongoing, unstable) => ongoing.or(unstable),
        }
    }

    /// The high watermark moved to `high_watermark`: transactions whose
    /// marker it passed are stable.
    pub fn stabilize(&mut self, high_watermark: Offset) {
        while self
            .unstable
            .front()
            .is_some_and(|(_, marker)| *marker < high_watermark)
        {
            self.unstable.pop_front();
        }
    }

    /// The log start moved to `log_start`: aborted transactions whose
    /// marker is below it are no longer fetchable.
    pub fn prune_aborted(&mut self, log_start: Offset) {
        while self
            .aborted
            .front()
            .is_some_and(|aborted| aborted.last_offset < log_start)
        {
            self.aborted.pop_front();
        }
    }

    /// The aborted transactions a read_committed fetch of `[from, upper)`
    /// must list (Kafka's `collectAbortedTransactions`): those whose marker
    /// is at or past `from` and whose first offset is below `upper`. The
    /// search stops at the first marker at or past `upper` after which no
    /// transaction that began below `upper` was still open.
    pub fn aborted_between(&self, from: Offset, upper: Offset) -> Vec<AbortedTxn> {
        let start = self
            .aborted
            .partition_point(|aborted| aborted.last_offset < from);
        let mut found = Vec::new();
        for aborted in self.aborted.range(start..) {
            if aborted.first_offset < upper {
                found.push(*aborted);
            }
            if aborted.last_offset >= upper && aborted.last_stable_offset >= upper {
                break;
            }
        }
        found
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
        if epoch > entry.epoch && entry.current_txn_first_offset.is_some() {
            return Err(ProducerError::EpochChangedInTransaction {
                producer_id: header.producer_id,
                epoch,
                open_epoch: entry.epoch,
            });
        }
        if header.base_sequence < 0 {
            return Ok(Check::Append);
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
        if !header.is_transactional() && entry.current_txn_first_offset.is_some() {
            return Err(ProducerError::NonTransactionalInTransaction {
                producer_id: header.producer_id,
            });
        }
        let expected = match entry.newest() {
            Some(newest) if epoch == entry.epoch => increment_sequence(newest.last_sequence, 1),
            _ => 0,
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
        let entry = match self.entries.entry(header.producer_id) {
            Entry::Vacant(vacant) => {
                vacant.insert(ProducerEntry::empty(epoch, header.max_timestamp_ms))
            }
            Entry::Occupied(occupied) => {
                let entry = occupied.into_mut();
                if entry
                    .newest()
                    .is_some_and(|newest| newest.base_offset >= base_offset)
                    || entry
                        .current_txn_first_offset
                        .is_some_and(|first| first >= base_offset)
                {
                    return false;
                }
                entry
            }
        };
        // The log decides: a replay takes whatever epoch it holds.
        entry.raise_epoch(epoch);
        if header.base_sequence >= 0 {
            entry.push(batch);
        }
        entry.last_timestamp_ms = header.max_timestamp_ms;
        if header.is_transactional() && entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(base_offset);
            self.ongoing.insert(base_offset, header.producer_id);
        }
        true
    }

    /// Check a transaction marker for `producer_id` at `epoch` before it is
    /// stored; changes nothing. A marker for a producer without state here
    /// is accepted (Kafka writes one to every partition of the transaction).
    pub fn check_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        marker: &TxnMarker,
    ) -> Result<(), ProducerError> {
        let Some(entry) = self.entries.get(&producer_id) else {
            return Ok(());
        };
        if epoch < entry.epoch {
            return Err(ProducerError::InvalidEpoch {
                producer_id,
                epoch,
                current: entry.epoch,
            });
        }
        if marker.coordinator_epoch < entry.coordinator_epoch {
            return Err(ProducerError::CoordinatorFenced {
                producer_id,
                coordinator_epoch: marker.coordinator_epoch,
                current: entry.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Apply a marker stored at `offset` (after [`ProducerStates::check_marker`],
    /// or in a replay): close the producer's open transaction, raise its
    /// epoch and coordinator epoch, and for an abort list the transaction.
    /// `timestamp_ms` is the marker batch's `maxTimestamp`.
    pub fn apply_marker(
        &mut self,
        producer_id: i64,
        epoch: i16,
        marker: &TxnMarker,
        offset: Offset,
        timestamp_ms: i64,
    ) {
        let entry = self
            .entries
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry::empty(epoch, timestamp_ms));
        if epoch > entry.epoch {
            entry.raise_epoch(epoch);
        }
        entry.coordinator_epoch = entry.coordinator_epoch.max(marker.coordinator_epoch);
        entry.last_marker_offset = Some(offset);
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(timestamp_ms);
        let Some(first) = entry.current_txn_first_offset.take() else {
            return;
        };
        let removed = self.ongoing.remove(&first);
        assert_eq!(
            removed,
            Some(producer_id),
            "an open transaction is in the ongoing map"
        );
        self.unstable.push_back((first, offset));
        if marker.kind == MarkerKind::Abort {
            let last_stable_offset = self
                .ongoing
                .keys()
                .next()
                .copied()
                .unwrap_or(Offset(offset.0 + 1));
            assert!(
                self.aborted
                    .back()
                    .is_none_or(|previous| previous.last_offset < offset),
                "aborted transactions are listed in marker order"
            );
            self.aborted.push_back(AbortedTxn {
                producer_id,
                first_offset: first,
                last_offset: offset,
                last_stable_offset,
            });
        }
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

    // Transactions (KIP-98).

    fn txn_header(producer: i64, epoch: i16, base_sequence: i32, records: i32) -> BatchHeader {
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        builder
            .producer(producer, epoch, base_sequence)
            .transactional();
        for _ in 0..records {
            builder.push(RecordSpec {
                value: Some(b"t"),
                ..RecordSpec::default()
            });
        }
        BatchHeader::parse(&builder.build()).expect("a built batch parses")
    }

    fn marker(kind: MarkerKind, coordinator_epoch: i32) -> TxnMarker {
        TxnMarker {
            kind,
            coordinator_epoch,
        }
    }

    impl Log {
        /// Check and apply a marker at the next offset, as `try_append` does.
        fn end_txn(
            &mut self,
            producer: i64,
            epoch: i16,
            marker: TxnMarker,
        ) -> Result<Offset, ProducerError> {
            self.states.check_marker(producer, epoch, &marker)?;
            let offset = Offset(self.next_offset);
            self.next_offset += 1;
            self.states
                .apply_marker(producer, epoch, &marker, offset, 1_700_000_000_000);
            Ok(offset)
        }
    }

    #[test]
    fn a_transactional_batch_opens_a_transaction_that_holds_the_stable_offset_until_its_marker_is_readable()
     {
        let mut log = Log::new();
        log.produce(&header(0, 0, 2)).unwrap();
        assert_eq!(log.states.first_unstable_offset(), None);
        let (first, _) = log.produce(&txn_header(PRODUCER, 0, 2, 3)).unwrap();
        assert_eq!(first, Offset(2));
        log.produce(&txn_header(PRODUCER, 0, 5, 1)).unwrap();
        assert_eq!(log.states.first_unstable_offset(), Some(first));
        let commit = log
            .end_txn(PRODUCER, 0, marker(MarkerKind::Commit, 0))
            .unwrap();
        assert_eq!(
            log.states.first_unstable_offset(),
            Some(first),
            "decided, but the marker is not below the high watermark yet"
        );
        log.states.stabilize(commit);
        assert_eq!(log.states.first_unstable_offset(), Some(first));
        log.states.stabilize(Offset(commit.0 + 1));
        assert_eq!(log.states.first_unstable_offset(), None);
        assert_eq!(log.states.aborted().count(), 0, "a commit lists nothing");
        // The sequence goes on after a marker of the same epoch.
        assert_eq!(log.produce(&header(0, 6, 1)), Ok((Offset(7), false)));
    }

    #[test]
    fn a_non_transactional_batch_inside_an_open_transaction_is_invalid_txn_state() {
        let mut log = Log::new();
        log.produce(&txn_header(PRODUCER, 0, 0, 1)).unwrap();
        assert_eq!(
            log.produce(&header(0, 1, 1)),
            Err(ProducerError::NonTransactionalInTransaction {
                producer_id: PRODUCER
            })
        );
        // A retry of the transactional batch is still a duplicate.
        assert_eq!(
            log.produce(&txn_header(PRODUCER, 0, 0, 1)),
            Ok((Offset(0), true))
        );
    }

    #[test]
    fn an_abort_marker_lists_the_transaction_with_the_stable_offset_after_it() {
        let mut log = Log::new();
        let other = PRODUCER + 1;
        log.produce(&txn_header(other, 0, 0, 1)).unwrap(); // 0: other's txn
        log.produce(&txn_header(PRODUCER, 0, 0, 2)).unwrap(); // 1-2
        let abort = log
            .end_txn(PRODUCER, 0, marker(MarkerKind::Abort, 0))
            .unwrap(); // 3
        let listed: Vec<AbortedTxn> = log.states.aborted().copied().collect();
        assert_eq!(
            listed,
            vec![AbortedTxn {
                producer_id: PRODUCER,
                first_offset: Offset(1),
                last_offset: abort,
                last_stable_offset: Offset(0),
            }],
            "the other producer's transaction is still open at the marker"
        );
        let other_abort = log.end_txn(other, 0, marker(MarkerKind::Abort, 0)).unwrap();
        assert_eq!(
            log.states.aborted().last().unwrap().last_stable_offset,
            Offset(other_abort.0 + 1)
        );
        log.states.prune_aborted(Offset(abort.0 + 1));
        assert_eq!(
            log.states.aborted().count(),
            1,
            "the first marker is below the log start"
        );
    }

    #[test]
    fn markers_from_an_older_producer_or_coordinator_epoch_are_refused() {
        let mut log = Log::new();
        log.produce(&txn_header(PRODUCER, 2, 0, 1)).unwrap();
        log.end_txn(PRODUCER, 2, marker(MarkerKind::Commit, 5))
            .unwrap();
        assert!(matches!(
            log.end_txn(PRODUCER, 1, marker(MarkerKind::Abort, 5)),
            Err(ProducerError::InvalidEpoch { .. })
        ));
        assert!(matches!(
            log.end_txn(PRODUCER, 2, marker(MarkerKind::Abort, 4)),
            Err(ProducerError::CoordinatorFenced { current: 5, .. })
        ));
        // A marker for a producer with no state here is accepted.
        assert!(log.end_txn(99, 0, marker(MarkerKind::Abort, 0)).is_ok());
        assert_eq!(
            log.states.aborted().count(),
            0,
            "no open transaction to abort"
        );
    }

    #[test]
    fn a_marker_with_a_newer_epoch_fences_the_old_producer_and_restarts_its_sequence() {
        let mut log = Log::new();
        log.produce(&txn_header(PRODUCER, 0, 0, 3)).unwrap();
        // The coordinator bumps the epoch and aborts (a timeout, a new instance).
        log.end_txn(PRODUCER, 1, marker(MarkerKind::Abort, 0))
            .unwrap();
        assert!(matches!(
            log.produce(&txn_header(PRODUCER, 0, 3, 1)),
            Err(ProducerError::InvalidEpoch { current: 1, .. })
        ));
        assert!(matches!(
            log.produce(&txn_header(PRODUCER, 1, 3, 1)),
            Err(ProducerError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(
            log.produce(&txn_header(PRODUCER, 1, 0, 1)),
            Ok((Offset(4), false))
        );
    }

    #[test]
    fn a_producer_with_an_open_transaction_never_expires() {
        let mut log = Log::new();
        log.produce(&txn_header(PRODUCER, 0, 0, 1)).unwrap();
        log.produce(&header(0, 0, 1)).ok();
        assert_eq!(log.states.expire(i64::MAX, 1), 0);
        log.end_txn(PRODUCER, 0, marker(MarkerKind::Commit, 0))
            .unwrap();
        assert_eq!(log.states.expire(i64::MAX, 1), 1);
    }

    /// Transactions on random layouts: the aborted list a read of
    /// `[from, upper)` gets equals a brute-force filter over every aborted
    /// transaction (design 5.1; checked against stopping at the first marker
    /// at or past `upper`).
    #[test]
    fn the_aborted_list_search_equals_a_brute_force_filter() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for _ in 0..200 {
            let mut log = Log::new();
            let mut open = [false; 4];
            let mut sequences = [0i32; 4];
            for _ in 0..60 {
                let producer = next(4) as usize;
                if open[producer] && next(3) == 0 {
                    let kind = if next(2) == 0 {
                        MarkerKind::Abort
                    } else {
                        MarkerKind::Commit
                    };
                    log.end_txn(producer as i64, 0, marker(kind, 0)).unwrap();
                    open[producer] = false;
                } else {
                    let batch = txn_header(producer as i64, 0, sequences[producer], 1);
                    log.produce(&batch).unwrap();
                    sequences[producer] += 1;
                    open[producer] = true;
                }
            }
            let all: Vec<AbortedTxn> = log.states.aborted().copied().collect();
            let end = log.next_offset as u64;
            for _ in 0..20 {
                let from = Offset(next(end) as i64);
                let upper = Offset(from.0 + 1 + next(end - from.0 as u64) as i64);
                let expected: Vec<AbortedTxn> = all
                    .iter()
                    .filter(|txn| txn.last_offset >= from && txn.first_offset < upper)
                    .copied()
                    .collect();
                assert_eq!(log.states.aborted_between(from, upper), expected);
            }
        }
    }

    #[test]
    fn replaying_transactions_and_markers_rebuilds_the_same_state() {
        let mut live = Log::new();
        let mut stored: Vec<(BatchHeader, Option<TxnMarker>, Offset)> = Vec::new();
        let batches = [
            txn_header(PRODUCER, 0, 0, 2),
            header(0, 0, 1),
            txn_header(8, 3, 0, 1),
            txn_header(PRODUCER, 0, 2, 1),
        ];
        for batch in &batches {
            if let Ok((offset, false)) = live.produce(batch) {
                stored.push((*batch, None, offset));
            }
        }
        let abort = live
            .end_txn(PRODUCER, 0, marker(MarkerKind::Abort, 1))
            .unwrap();
        stored.push((
            txn_header(PRODUCER, 0, -1, 1),
            Some(marker(MarkerKind::Abort, 1)),
            abort,
        ));
        let mut replayed = ProducerStates::default();
        for (batch, marker, offset) in &stored {
            match marker {
                Some(marker) => {
                    replayed.apply_marker(PRODUCER, 0, marker, *offset, 1_700_000_000_000)
                }
                None => {
                    let end = LogPosition(
                        (offset.0 + i64::from(batch.last_offset_delta) + 1) as u64 * 100,
                    );
                    assert!(replayed.replay(batch, *offset, end));
                }
            }
        }
        assert_eq!(replayed, live.states);
    }

    /// Found by the breaker: a transactional batch at a newer epoch while
    /// the producer's transaction is open would raise the partition's epoch
    /// past the coordinator's, so its markers would be refused and the
    /// last stable offset stuck for good.
    #[test]
    fn a_newer_epoch_inside_an_open_transaction_is_refused() {
        let mut log = Log::new();
        log.produce(&txn_header(PRODUCER, 0, 0, 1)).unwrap();
        assert!(matches!(
            log.produce(&txn_header(PRODUCER, i16::MAX, 0, 1)),
            Err(ProducerError::EpochChangedInTransaction {
                epoch: i16::MAX,
                open_epoch: 0,
                ..
            })
        ));
        log.end_txn(PRODUCER, 0, marker(MarkerKind::Commit, 0))
            .unwrap();
        assert_eq!(log.states.first_unstable_offset(), Some(Offset(0)));
        log.states.stabilize(Offset(2));
        assert_eq!(log.states.first_unstable_offset(), None);
    }
}
