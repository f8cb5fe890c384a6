//! The write path: append a validated batch to a partition, and wait until
//! it reached the durability it asked for.
//!
//! `append` returns once the batch is **buffered** with its offsets assigned;
//! when write buffers are full it waits, in arrival order, for the flusher to
//! free space (backpressure). `wait` resolves at `Written` (in the segment
//! file, fetchable) or `Fsynced` (a covering fdatasync returned), or with
//! `Poisoned` after an I/O error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::commit_log::LogAppendError;
use super::frame::{FRAME_PREFIX_BYTES, FrameHeader, FrameKind};
use super::partition::IndexedBatch;
use super::producer_state::{Check, ProducerError, TxnToken};
use super::retention::DiskPressure;
use super::segment;
use super::shard_store::{AppendReceipt, Durability, LEADER_EPOCH, ShardStore};
use super::store_errors::{AppendError, TryAppendError};
use super::timer::pairing::TimerFrame;
use crate::ids::{Offset, PartitionId};
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::record_batch::control::TxnMarker;
use crate::record_batch::{self, ValidatedBatch};

/// Failed age rolls, logged at most once per 10 s per process.
static AGE_ROLL_FAILURES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 1);

/// Whether an append is refused above `retention.disk_reject_ratio`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    UnlessDiskFull,
    EvenAboveRejectRatio,
}

impl ShardStore {
    /// Append `batch` to partition `id`. Returns once buffered, with offsets
    /// assigned; waits (in arrival order) while write buffers are full.
    /// Refused (retriable `DiskFull`) while disk usage is above
    /// `retention.disk_reject_ratio`.
    pub async fn append(
        &self,
        id: PartitionId,
        batch: ValidatedBatch<'_>,
        durability: Durability,
    ) -> Result<AppendReceipt, AppendError> {
        self.append_admitted(id, None, batch, durability, Admission::UnlessDiskFull, None)
            .await
    }

    /// [`ShardStore::append`] of a produced batch whose delayed records
    /// were taken out (issue 18; ARCHITECTURE.md, "Delayed delivery, retry
    /// and dead letters"): `held`, a broker-built timer batch holding them
    /// with their own offset deltas, is appended as a held frame right
    /// before `batch`, at the same base offset and naming `batch`'s CRC, in
    /// one step after the producer-state check, so a retry of a stored
    /// batch appends neither. `token` as in [`ShardStore::append_verified`].
    pub async fn append_with_held(
        &self,
        id: PartitionId,
        held: ValidatedBatch<'_>,
        batch: ValidatedBatch<'_>,
        durability: Durability,
        token: Option<TxnToken>,
    ) -> Result<AppendReceipt, AppendError> {
        self.append_admitted(
            id,
            Some((FrameKind::DelayHeld, &held)),
            batch,
            durability,
            Admission::UnlessDiskFull,
            token,
        )
        .await
    }

    /// Append a timer delivery (issue 18): the delivery note `note` (naming
    /// the timer entries delivered) right before `batch`, the delivered
    /// records, as one step; the entries are done once it returns. Goes in
    /// above `retention.disk_reject_ratio`: a delivery frees the timer
    /// batches it delivers from.
    pub(super) async fn append_delivery(
        &self,
        id: PartitionId,
        note: ValidatedBatch<'_>,
        batch: ValidatedBatch<'_>,
    ) -> Result<AppendReceipt, AppendError> {
        self.append_admitted(
            id,
            Some((FrameKind::DelayDelivery, &note)),
            batch,
            Durability::Buffered,
            Admission::EvenAboveRejectRatio,
            None,
        )
        .await
    }

    /// [`ShardStore::append`] for a client's transactional batch, checked
    /// against the [`TxnToken`] taken before its coordinator verified it
    /// (`ShardStore::txn_token`): refused with INVALID_TXN_STATE if it
    /// would open a transaction whose marker landed meanwhile.
    pub async fn append_verified(
        &self,
        id: PartitionId,
        batch: ValidatedBatch<'_>,
        durability: Durability,
        token: TxnToken,
    ) -> Result<AppendReceipt, AppendError> {
        self.append_admitted(
            id,
            None,
            batch,
            durability,
            Admission::UnlessDiskFull,
            Some(token),
        )
        .await
    }

    /// What a transactional Produce takes before verification (see
    /// [`TxnToken`]); `None` for an unknown partition.
    pub fn txn_token(&self, id: PartitionId, producer_id: i64) -> Option<TxnToken> {
        let state = self.state.borrow();
        let partition = state.partitions.get(&id)?;
        Some(partition.producers.txn_token(producer_id))
    }

    /// [`ShardStore::append`] for a small append that lets space be freed:
    /// an internal topic copying its live records forward (the
    /// `__consumer_offsets` snapshot) so that retention can delete the old
    /// segment they pin. It goes in above `retention.disk_reject_ratio`,
    /// which would otherwise refuse the very write that frees space; it can
    /// still fail on a file system that is really full (ENOSPC).
    pub async fn append_to_free_space(
        &self,
        id: PartitionId,
        batch: ValidatedBatch<'_>,
        durability: Durability,
    ) -> Result<AppendReceipt, AppendError> {
        self.append_above_reject_ratio(id, batch, durability).await
    }

    /// Append a transaction marker (a control batch, `record_batch::control`)
    /// for `producer_id` at `producer_epoch` to partition `id`: it closes
    /// the producer's open transaction there (KIP-98). Refused with
    /// INVALID_PRODUCER_EPOCH for an epoch older than the producer's, or
    /// TRANSACTION_COORDINATOR_FENCED for an older coordinator epoch;
    /// accepted for a producer with no state here. The marker goes in above
    /// `retention.disk_reject_ratio`: a transaction must be able to end, or
    /// its open data would hold the last stable offset back.
    pub async fn append_marker(
        &self,
        id: PartitionId,
        producer_id: i64,
        producer_epoch: i16,
        marker: &TxnMarker,
        durability: Durability,
    ) -> Result<AppendReceipt, AppendError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        let bytes =
            record_batch::control::build_marker(producer_id, producer_epoch, marker, now_ms);
        let batch = ValidatedBatch::frame_only(&bytes, bytes.len())
            .expect("a marker this broker built is a sound batch");
        self.append_above_reject_ratio(id, batch, durability).await
    }

    /// An append that goes in above `retention.disk_reject_ratio` (space
    /// freeing copies, transaction markers).
    async fn append_above_reject_ratio(
        &self,
        id: PartitionId,
        batch: ValidatedBatch<'_>,
        durability: Durability,
    ) -> Result<AppendReceipt, AppendError> {
        let admission = Admission::EvenAboveRejectRatio;
        self.append_admitted(id, None, batch, durability, admission, None)
            .await
    }

    async fn append_admitted(
        &self,
        id: PartitionId,
        note: Option<(FrameKind, &ValidatedBatch<'_>)>,
        batch: ValidatedBatch<'_>,
        durability: Durability,
        admission: Admission,
        token: Option<TxnToken>,
    ) -> Result<AppendReceipt, AppendError> {
        let appended = self
            .in_buffer_order(|| {
                let now = Instant::now();
                match self.try_append(id, note, &batch, durability, admission, token, now) {
                    Ok(receipt) => Ok(receipt),
                    Err(TryAppendError::NoBufferSpace) => Err(None),
                    Err(TryAppendError::Fatal(error)) => Err(Some(error)),
                }
            })
            .await;
        if let Err(error) = &appended {
            self.metrics.append_rejected(error);
            if error.is_storage_fault()
                && let Some(refused) = self.rejection_log.record(monotonic_ms())
            {
                tracing::warn!(
                    shard = %self.options.shard,
                    %error,
                    refused,
                    "appends refused since the last such line"
                );
            }
        }
        appended
    }

    /// Run `attempt` until it finds buffer space (`Err(None)` says it did
    /// not), in arrival order with every other append waiting for space (a
    /// FIFO ticket), kicking the flusher to free some; `Err(Some(_))` ends
    /// it.
    pub(super) async fn in_buffer_order<T, E>(
        &self,
        mut attempt: impl FnMut() -> Result<T, Option<E>>,
    ) -> Result<T, E> {
        let mut ticket = None;
        loop {
            if ticket.is_none() && !self.buffer_space.is_empty() {
                ticket = Some(self.buffer_space.enqueue());
            }
            if let Some(ticket) = &ticket
                && !ticket.is_front()
            {
                ticket.changed().await;
                continue;
            }
            match attempt() {
                Ok(done) => return Ok(done),
                Err(Some(error)) => return Err(error),
                Err(None) => {
                    let ticket = ticket.get_or_insert_with(|| self.buffer_space.enqueue());
                    self.flush_kick.notify();
                    ticket.changed().await;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn try_append(
        &self,
        id: PartitionId,
        note: Option<(FrameKind, &ValidatedBatch<'_>)>,
        batch: &ValidatedBatch<'_>,
        durability: Durability,
        admission: Admission,
        token: Option<TxnToken>,
        now: Instant,
    ) -> Result<AppendReceipt, TryAppendError> {
        if self.stopping.get() {
            return Err(AppendError::ShuttingDown.into());
        }
        if self.follower.get() {
            return Err(AppendError::NotLeader.into());
        }
        let limit = self.options.storage.batch_ceiling_bytes();
        if let Some(size) = std::iter::once(batch)
            .chain(note.map(|(_, note)| note))
            .map(|batch| batch.len())
            .find(|&size| size > limit as usize)
        {
            return Err(AppendError::BatchTooLarge { size, limit }.into());
        }
        if self.disk_pressure.get() == DiskPressure::Reject
            && admission == Admission::UnlessDiskFull
        {
            return Err(AppendError::DiskFull {
                usage_percent: self.disk_usage_ratio.get() * 100.0,
                limit_percent: self.options.retention.disk_reject_ratio * 100.0,
            }
            .into());
        }
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let partition = state
            .partitions
            .get_mut(&id)
            .ok_or(AppendError::UnknownPartition(id))?;
        let bytes = batch.bytes();
        let header = *batch.header();
        // A control batch is a transaction marker only the broker writes
        // (`append_marker`); one this broker cannot read changes no state,
        // as in recovery.
        let marker = header
            .is_control()
            .then(|| record_batch::control::parse_marker(bytes).ok())
            .flatten();
        // Checked under the borrow that assigns the offset, so no append of
        // this partition comes between the check and the state update.
        let check = match &marker {
            Some(marker) => partition
                .producers
                .check_marker(header.producer_id, header.producer_epoch, marker)
                .map(|()| Check::Append),
            None if header.is_control() => Ok(Check::Append),
            None => partition
                .producers
                .check(&header)
                .and_then(|check| match (check, &token) {
                    (Check::Append, Some(token)) => partition
                        .producers
                        .check_token(&header, token)
                        .map(|()| Check::Append),
                    (check, _) => Ok(check),
                }),
        };
        let check = match check {
            Err(ProducerError::OutOfOrderSequence {
                producer_id,
                epoch,
                expected,
                found,
            }) if sequence_ahead(expected, found)
                && self.leading_from.get().is_some_and(|(from, since)| {
                    now.saturating_duration_since(since) < SEQUENCE_GAP_AFTER_TAKEOVER
                        && partition
                            .producers
                            .get(producer_id)
                            .filter(|entry| entry.epoch == epoch)
                            .and_then(|entry| entry.newest())
                            .is_some_and(|newest| newest.end <= from)
                }) =>
            {
                return Err(AppendError::SequenceGapAfterFailover {
                    producer_id,
                    expected,
                    found,
                }
                .into());
            }
            check => check,
        };
        if let Check::Duplicate(original) = check.map_err(AppendError::Producer)? {
            // A retry asking for more than the original (acks=all after
            // acks=1) must not wait for the original's flush.ms.
            if durability == Durability::Fsynced {
                state.log.require_durable_now(now);
                drop(guard);
                self.flush_kick.notify();
            }
            return Ok(AppendReceipt {
                base_offset: original.base_offset,
                last_offset: original.last_offset(),
                position: original.end,
                end: original.end,
                durability,
                duplicate: true,
            });
        }
        let base_offset = partition.next_offset;
        let mut frame_prefix = [0u8; FRAME_PREFIX_BYTES];
        let mut batch_prefix = [0u8; super::frame::COVERED_PAYLOAD_PREFIX_BYTES];
        let prefix_len = batch_prefix.len();
        batch_prefix.copy_from_slice(&bytes[..prefix_len]);
        record_batch::assign_broker_fields(&mut batch_prefix, base_offset.0, LEADER_EPOCH);
        let frame = FrameHeader {
            payload_len: u32::try_from(bytes.len()).expect("batch validated against a u32 limit"),
            partition: id,
            kind: FrameKind::Batch,
        };
        frame.encode_prefix(&batch_prefix, &mut frame_prefix);
        // Counted only once the append succeeds: an append that must wait for
        // buffer space comes back here and would count its records twice.
        let records = u64::try_from(header.records_count).unwrap_or(0);
        let records_since_forced_sync = partition.records_since_forced_sync + records;
        let flush_messages_reached = records_since_forced_sync >= partition.config.flush_messages;
        let durable_by = match durability {
            Durability::Fsynced => Some(now),
            _ if flush_messages_reached => Some(now),
            Durability::Buffered | Durability::Written => {
                now.checked_add(Duration::from_millis(partition.config.flush_ms))
            }
        };
        partition
            .queue
            .reserve_next()
            .map_err(|source| AppendError::Queue {
                partition: id,
                source,
            })?;
        if let Some(reservation) = partition.queue.reservation_ahead() {
            state.queue_reservations.push((id, reservation));
        }
        let rest = &bytes[batch_prefix.len()..];
        let wall_ms = segment::now_ms();
        if state.log.age_roll_due(wall_ms, partition.config.segment_ms) {
            // An age roll is for retention's sake: one that cannot create
            // its file (no space, no descriptors) leaves the batch in the
            // active segment and is tried again at the next append.
            match state.log.roll_for_age() {
                Ok(()) => {}
                Err(LogAppendError::Roll(error)) => {
                    if let Some(failed) = AGE_ROLL_FAILURES.record(monotonic_ms()) {
                        tracing::warn!(shard = %self.options.shard, %error, failed, "cannot roll the active segment for its age; appending to it meanwhile (`failed` counts failures since the last such line)");
                    }
                }
                Err(error) => return Err(self.classify_log_error(error)),
            }
        }
        let mut note_frame = None;
        if let Some((kind, note)) = note {
            // The note (held frame or delivery note) first: the batch's
            // durability covers it. A batch refused after it (no buffer
            // space) leaves it unpaired, dead bytes that recovery and
            // followers ignore.
            let bytes = note.bytes();
            let mut held_prefix = [0u8; super::frame::COVERED_PAYLOAD_PREFIX_BYTES];
            held_prefix.copy_from_slice(&bytes[..prefix_len]);
            // The held batch is never served: its leader epoch field holds
            // the visible batch's CRC, which pairs the two frames (a batch
            // of another producer at the same offset cannot pass for it).
            record_batch::assign_broker_fields(
                &mut held_prefix,
                base_offset.0,
                record_batch::stored_crc(batch.bytes()) as i32,
            );
            let held_frame = FrameHeader {
                payload_len: u32::try_from(bytes.len()).expect("under the batch ceiling"),
                partition: id,
                kind,
            };
            let mut held_frame_prefix = [0u8; FRAME_PREFIX_BYTES];
            held_frame.encode_prefix(&held_prefix, &mut held_frame_prefix);
            let note_position = state
                .log
                .append_frame(&[&held_frame_prefix, &bytes[prefix_len..]], None, now)
                .map_err(|error| self.classify_log_error(error))?;
            state.log.note_append(partition.config.segment_ms, wall_ms);
            note_frame = Some((kind, note_position, held_frame.frame_len(), bytes));
        }
        let position = state
            .log
            .append_frame(&[&frame_prefix, rest], durable_by, now)
            .map_err(|error| self.classify_log_error(error))?;
        state.log.note_append(partition.config.segment_ms, wall_ms);
        partition.records_since_forced_sync = if durable_by == Some(now) {
            0
        } else {
            records_since_forced_sync
        };
        let indexed = IndexedBatch::of(frame.payload_len, &header);
        partition
            .index_batch(position, &indexed)
            .expect("queue room was reserved");
        let end = position.plus(frame.frame_len());
        match &marker {
            Some(marker) => partition.producers.apply_marker(
                header.producer_id,
                header.producer_epoch,
                marker,
                base_offset,
                header.max_timestamp_ms,
            ),
            None if header.is_control() => {}
            None => partition.producers.apply(&header, base_offset, end),
        }
        assert!(
            partition.next_offset.0 == base_offset.0 + i64::from(header.last_offset_delta) + 1,
            "the partition's next offset follows the batch"
        );
        let next_offset = partition.next_offset;
        state.push_pending(id, end, next_offset);
        if let Some((kind, note_position, frame_len, payload)) = note_frame {
            let note = TimerFrame {
                kind,
                position: note_position,
                frame_len,
                partition: id,
                base_offset: base_offset.0,
                batch_position: position,
                batch_frame_len: frame.frame_len(),
            };
            state.apply_timer_frame(&note, payload);
        }
        drop(guard);
        self.flush_kick.notify();
        Ok(AppendReceipt {
            base_offset,
            last_offset: Offset(base_offset.0 + i64::from(header.last_offset_delta)),
            position,
            end,
            durability,
            duplicate: false,
        })
    }

    pub(super) fn classify_log_error(&self, error: LogAppendError) -> TryAppendError {
        match error {
            LogAppendError::NoBufferSpace { .. } | LogAppendError::AwaitingReservation { .. } => {
                TryAppendError::NoBufferSpace
            }
            LogAppendError::Poisoned(source) => TryAppendError::Fatal(AppendError::Poisoned {
                shard: self.options.shard,
                source,
            }),
            LogAppendError::Roll(source) => TryAppendError::Fatal(AppendError::Roll { source }),
            LogAppendError::Reserve(source) => {
                TryAppendError::Fatal(AppendError::Reserve { source })
            }
        }
    }

    /// Wait until the append reached the durability it asked for. An append
    /// that reached it is reported done even if the log was poisoned later
    /// (watermarks freeze at poisoning, so what they cover stays true): an
    /// error for a durable batch would make the producer send a duplicate.
    pub async fn wait(&self, receipt: &AppendReceipt) -> Result<(), AppendError> {
        loop {
            let progress = {
                let state = self.state.borrow();
                let reached = match receipt.durability {
                    Durability::Buffered => true,
                    Durability::Written => state.log.written_end() >= receipt.end,
                    Durability::Fsynced => state.log.durable_end() >= receipt.end,
                };
                if reached {
                    return Ok(());
                }
                if let Some(source) = state.log.poisoned() {
                    return Err(AppendError::Poisoned {
                        shard: self.options.shard,
                        source: Arc::clone(source),
                    });
                }
                self.progress.wait()
            };
            progress.await;
        }
    }

    /// Make everything appended so far durable, then return.
    pub async fn sync(&self) -> Result<(), AppendError> {
        let end = {
            let mut state = self.state.borrow_mut();
            state.log.require_durable_now(Instant::now());
            state.log.append_end()
        };
        self.flush_kick.notify();
        let receipt = AppendReceipt {
            base_offset: Offset(0),
            last_offset: Offset(0),
            position: end,
            end,
            durability: Durability::Fsynced,
            duplicate: false,
        };
        self.wait(&receipt).await
    }
}

/// How long after a store takes over its shard group's log a sequence gap
/// from a producer it has not heard from since is answered as retriable
/// ([`AppendError::SequenceGapAfterFailover`]): long enough for the
/// requests in flight at the failover to come back in order, short enough
/// that a gap that will never close (an unclean election lost the batches)
/// soon gets OUT_OF_ORDER_SEQUENCE_NUMBER, as Kafka answers it.
pub const SEQUENCE_GAP_AFTER_TAKEOVER: Duration = Duration::from_secs(30);

/// Whether sequence `found` is ahead of `expected`, by less than half the
/// sequence space (sequences wrap from `i32::MAX` to 0, KIP-98).
fn sequence_ahead(expected: i32, found: i32) -> bool {
    let distance = (i64::from(found) - i64::from(expected)).rem_euclid(1 << 31);
    distance > 0 && distance < 1 << 30
}

#[cfg(test)]
mod tests {
    use super::sequence_ahead;

    #[test]
    fn a_sequence_is_ahead_across_the_wrap_and_never_behind() {
        assert!(sequence_ahead(2, 3));
        assert!(sequence_ahead(i32::MAX - 1, 3));
        assert!(!sequence_ahead(3, 3));
        assert!(!sequence_ahead(3, 2));
        assert!(!sequence_ahead(3, i32::MAX - 1));
    }
}
