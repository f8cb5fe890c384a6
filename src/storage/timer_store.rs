//! The shard store's side of delayed delivery (issue 18; ARCHITECTURE.md,
//! "Delayed delivery, retry and dead letters"): opening the timer and
//! replaying the timer frames recovery found, and the delivery task that
//! appends the due records to their partitions.
//!
//! Delivery runs on the leader only (a follower's store refuses appends),
//! every [`DELIVERY_TICK`]: the due entries, in due order, are grouped by
//! partition into delivery batches of at most [`DELIVERY_BATCH_BYTES`];
//! each goes in as a delivery note naming its entries followed by the
//! batch, in one synchronous append that also finishes the entries. Entries
//! due past the wheel's window are listed again through a roll note first.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use super::commit_log::CommitLog;
use super::compaction::records::Records;
use super::frame::{FRAME_HEADER_BYTES, FRAME_PREFIX_BYTES, FrameHeader, FrameKind};
use super::replica::log_bytes;
use super::shard_store::{ShardStore, StoreState};
use super::store_errors::{AppendError, OpenError};
use super::timer::entry::{Done, TimerEntry};
use super::timer::index::{TimerError, TimerGeometry};
use super::timer::notes::{
    DeliveryRecord, HELD_DECOMPRESSED_MAX, delivery_batch, delivery_record, note_batch,
};
use super::timer::pairing::TimerFrame;
use super::timer::shard_timer::ShardTimer;
use crate::ids::{LogPosition, PartitionId};
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::record_batch::{self, ValidatedBatch};

/// How often the leader looks for due records.
pub const DELIVERY_TICK: Duration = Duration::from_millis(10);
/// Most entries one look hands out (more wait for the next, at once).
const DUE_PER_STEP: usize = 4096;
/// The pause between two steps of one look.
const STEP_PAUSE: Duration = Duration::from_millis(1);
/// Largest delivery batch (records section), bytes.
const DELIVERY_BATCH_BYTES: usize = 512 * 1024;
/// Entries per timer entry file (64 bytes each: 16 MiB files).
const ENTRIES_PER_FILE: u64 = 1 << 18;

static DELIVERY_FAILURES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 1);

/// The wheel of a shard's timer: one-second slots over `window_s`.
pub fn timer_geometry(window_s: u64) -> TimerGeometry {
    TimerGeometry {
        slot_ms: 1000,
        slots: window_s.max(1),
        entries_per_file: ENTRIES_PER_FILE,
    }
}

/// Open the shard's timer and replay the timer frames recovery listed.
pub(super) fn open_timer(
    store: &super::shard_store::StoreOptions,
    layout: &super::layout::ShardLayout,
    log: &CommitLog,
    (checkpoint, from): (super::timer::index::TimerCheckpoint, LogPosition),
    frames: &[TimerFrame],
) -> Result<ShardTimer, OpenError> {
    let shard = store.shard;
    let fail = |source: TimerError| OpenError::Timer { shard, source };
    let (mut timer, report) = ShardTimer::open(
        &layout.timer_dir(),
        timer_geometry(store.storage.timer_wheel_window_s),
        checkpoint,
        from,
        crate::broker::delay::clock_ms(),
    )
    .map_err(fail)?;
    for note in frames {
        let payload = frame_payload(log, note.position, note.frame_len).map_err(|source| {
            fail(TimerError::Io {
                path: layout.log_dir(),
                source,
            })
        })?;
        timer.apply(note, &payload).map_err(fail)?;
    }
    if report.pending > 0 || report.damaged > 0 || !frames.is_empty() {
        tracing::info!(
            %shard,
            pending = timer.index.pending(),
            damaged_entries = report.damaged,
            repaired_entries = report.repaired,
            frames_replayed = frames.len(),
            "delayed-delivery timer opened"
        );
    }
    Ok(timer)
}

/// The payload (the batch) of the frame at `position`, whatever its length.
pub(super) fn frame_payload_at(log: &CommitLog, position: LogPosition) -> std::io::Result<Vec<u8>> {
    let segment = log
        .segment_at(position)
        .ok_or_else(|| std::io::Error::other(format!("no segment holds {position}")))?;
    let end = position.plus(FRAME_PREFIX_BYTES as u64);
    if end > log.written_end() || end > segment.end() {
        return Err(std::io::Error::other(format!(
            "frame at {position} is not written yet"
        )));
    }
    let bytes = log_bytes(log, segment, position, end).map_err(std::io::Error::other)?;
    let header =
        FrameHeader::decode(&bytes, segment.end().0 - position.0).map_err(std::io::Error::other)?;
    frame_payload(log, position, header.frame_len())
}

/// The payload (the batch) of the frame at `position`, `frame_len` bytes
/// with its header.
pub(super) fn frame_payload(
    log: &CommitLog,
    position: LogPosition,
    frame_len: u64,
) -> std::io::Result<Vec<u8>> {
    let end = position.plus(frame_len);
    let segment = log
        .segment_at(position)
        .filter(|segment| end <= segment.end() && end <= log.written_end())
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "frame at {position} ({frame_len} bytes) is not in the written log"
            ))
        })?;
    let mut bytes = log_bytes(log, segment, position, end).map_err(std::io::Error::other)?;
    bytes.drain(..FRAME_HEADER_BYTES);
    Ok(bytes)
}

impl StoreState {
    /// Apply a timer frame appended or copied under this borrow; a failure
    /// of the timer's files stops checkpoints (recovery then replays the
    /// frames again from the last one) and is logged.
    pub(super) fn apply_timer_frame(&mut self, note: &TimerFrame, payload: &[u8]) {
        if let Err(error) = self.timer.apply(note, payload) {
            self.timer_failed(error);
        }
    }

    /// Feed the timer a frame copied from the leader at `position`.
    pub(super) fn copy_timer_frame(
        &mut self,
        position: LogPosition,
        header: &FrameHeader,
        batch: &record_batch::BatchHeader,
        frame: &[u8],
    ) {
        if let Err(error) = self.timer.copied(position, header, batch, frame) {
            self.timer_failed(error);
        }
    }

    pub(super) fn timer_failed(&mut self, error: TimerError) {
        tracing::error!(%error, "the delayed-delivery timer failed; checkpoints stop until a restart rebuilds it from the log");
        self.timer_fault.get_or_insert_with(|| error.to_string());
    }
}

/// A delivery ready to append: its note and batch, for one partition,
/// and the entries it delivers (handed out, not done until it is in).
struct Delivery {
    partition: PartitionId,
    note: Vec<u8>,
    batch: Vec<u8>,
    entries: Vec<(u64, TimerEntry)>,
}

impl ShardStore {
    /// The leader's delivery loop (a store task).
    pub(super) async fn run_timer(self: Rc<Self>) {
        loop {
            compio::time::sleep(DELIVERY_TICK).await;
            if self.follower.get() || self.stopping.get() {
                continue;
            }
            if let Err(error) = self.deliver_due(crate::broker::delay::clock_ms()).await
                && let Some(failed) = DELIVERY_FAILURES.record(monotonic_ms())
            {
                tracing::warn!(shard = %self.options.shard, %error, failed, "cannot deliver due delayed records now; retrying (`failed` counts failures since the last such line)");
            }
        }
    }

    /// Deliver every record due at `now_ms`; returns how many.
    pub async fn deliver_due(&self, now_ms: i64) -> Result<usize, AppendError> {
        let mut delivered = 0;
        loop {
            self.roll_timer(now_ms).await?;
            let (deliveries, handed) = self.prepare_deliveries(now_ms);
            let mut deliveries = deliveries.into_iter();
            while let Some(delivery) = deliveries.next() {
                let note = ValidatedBatch::frame_only(&delivery.note, delivery.note.len())
                    .expect("a note this broker built is a sound batch");
                let batch = ValidatedBatch::frame_only(&delivery.batch, delivery.batch.len())
                    .expect("a delivery batch this broker built is a sound batch");
                match self.append_delivery(delivery.partition, note, batch).await {
                    Ok(_) => {
                        delivered += delivery.entries.len();
                        let now_ms = crate::broker::delay::clock_ms();
                        self.metrics.delayed_delivered(
                            delivery
                                .entries
                                .iter()
                                .map(|(_, entry)| now_ms - entry.due_ms),
                        );
                    }
                    // Deleted meanwhile: dropped at the next look.
                    Err(error) => {
                        let mut state = self.state.borrow_mut();
                        state.timer.index.put_back(delivery.entries);
                        for later in deliveries {
                            state.timer.index.put_back(later.entries);
                        }
                        return Err(error);
                    }
                }
            }
            if handed < DUE_PER_STEP {
                return Ok(delivered);
            }
            // More are due: let the I/O of this shard complete between
            // steps (a yield alone does not poll the ring), so that the
            // flusher writes the deliveries (they become visible) and
            // requests are served.
            compio::time::sleep(STEP_PAUSE).await;
        }
    }

    /// List again, through a roll note, the loaded entries due past the
    /// slot they were listed in.
    async fn roll_timer(&self, now_ms: i64) -> Result<(), AppendError> {
        let again = self.state.borrow().timer.index.take_again(DUE_PER_STEP);
        if again.is_empty() {
            return Ok(());
        }
        let note = note_batch(&again, now_ms);
        self.in_buffer_order(|| {
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            let frame = FrameHeader {
                payload_len: note.len() as u32,
                // Any partition: a roll note is read by its kind alone.
                partition: PartitionId(0),
                kind: FrameKind::DelayRoll,
            };
            let mut prefix = [0u8; FRAME_PREFIX_BYTES];
            frame.encode_prefix(
                &note[..super::frame::COVERED_PAYLOAD_PREFIX_BYTES],
                &mut prefix,
            );
            let now = std::time::Instant::now();
            let position = match state.log.append_frame(
                &[&prefix, &note[super::frame::COVERED_PAYLOAD_PREFIX_BYTES..]],
                None,
                now,
            ) {
                Ok(position) => position,
                Err(error) => {
                    return Err(match self.classify_log_error(error) {
                        super::store_errors::TryAppendError::NoBufferSpace => None,
                        super::store_errors::TryAppendError::Fatal(error) => Some(error),
                    });
                }
            };
            state.log.note_append(u64::MAX, super::segment::now_ms());
            let roll = TimerFrame {
                kind: FrameKind::DelayRoll,
                position,
                frame_len: frame.frame_len(),
                partition: frame.partition,
                base_offset: 0,
                batch_position: position,
                batch_frame_len: frame.frame_len(),
            };
            state.apply_timer_frame(&roll, &note);
            Ok(())
        })
        .await?;
        self.flush_kick.notify();
        Ok(())
    }

    /// Take the due entries and build their deliveries; entries of a
    /// partition that is gone are dropped, entries whose timer batch cannot
    /// be read yet wait. Returns the deliveries and how many entries were
    /// handed out.
    fn prepare_deliveries(&self, now_ms: i64) -> (Vec<Delivery>, usize) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let due = match state.timer.index.due(now_ms, DUE_PER_STEP) {
            Ok(due) => due,
            Err(error) => {
                state.timer_failed(error);
                return (Vec::new(), 0);
            }
        };
        let handed = due.len();
        let mut by_partition: Vec<(PartitionId, Vec<(u64, TimerEntry)>)> = Vec::new();
        for (at, entry) in due {
            match by_partition
                .iter_mut()
                .find(|(partition, _)| *partition == entry.partition)
            {
                Some((_, entries)) => entries.push((at, entry)),
                None => by_partition.push((entry.partition, vec![(at, entry)])),
            }
        }
        let mut held: HashMap<LogPosition, Option<(i64, Records)>> = HashMap::new();
        let mut deliveries = Vec::new();
        let mut waiting = Vec::new();
        for (partition, entries) in by_partition {
            if !state.partitions.contains_key(&partition) {
                for (at, _) in entries {
                    if let Err(error) = state.timer.index.finish(at, Done::Dropped) {
                        state.timer_failed(error);
                    }
                }
                continue;
            }
            let mut records = Vec::new();
            let mut taken = Vec::new();
            let mut bytes = 0;
            for (at, entry) in entries {
                let source = held.entry(entry.held_position).or_insert_with(|| {
                    let payload = frame_payload_at(&state.log, entry.held_position).ok()?;
                    let base_offset = record_batch::BatchHeader::parse(&payload).ok()?.base_offset;
                    Some((
                        base_offset,
                        Records::parse(&payload, HELD_DECOMPRESSED_MAX).ok()?,
                    ))
                });
                let Some((base_offset, source)) = source else {
                    // Not written yet (or unreadable): tried again later.
                    waiting.push((at, entry));
                    continue;
                };
                let offset_delta = records.len() as i32;
                match delivery_record(source, *base_offset, entry.origin_offset.0, offset_delta) {
                    Ok(Some(record)) => {
                        bytes += record.len();
                        records.push(record);
                        taken.push((at, entry));
                    }
                    Ok(None) | Err(_) => {
                        tracing::error!(
                            %partition,
                            origin_offset = entry.origin_offset.0,
                            held_position = entry.held_position.0,
                            "a delayed record is not in its timer batch; dropped"
                        );
                        if let Err(error) = state.timer.index.finish(at, Done::Dropped) {
                            state.timer_failed(error);
                        }
                    }
                }
                if bytes >= DELIVERY_BATCH_BYTES {
                    deliveries.push(delivery(partition, &mut records, &mut taken, now_ms));
                    bytes = 0;
                }
            }
            if !records.is_empty() {
                deliveries.push(delivery(partition, &mut records, &mut taken, now_ms));
            }
        }
        state.timer.index.put_back(waiting);
        (deliveries, handed)
    }
}

/// The delivery of `records`, taken from `taken`'s entries (both emptied).
fn delivery(
    partition: PartitionId,
    records: &mut Vec<DeliveryRecord>,
    taken: &mut Vec<(u64, TimerEntry)>,
    now_ms: i64,
) -> Delivery {
    let ats: Vec<u64> = taken.iter().map(|(at, _)| *at).collect();
    let delivery = Delivery {
        partition,
        note: note_batch(&ats, now_ms),
        batch: delivery_batch(records, now_ms),
        entries: std::mem::take(taken),
    };
    records.clear();
    delivery
}
