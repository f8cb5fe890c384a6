//! The retention task: samples disk usage, applies the disk guards, and
//! deletes what retention (see `retention.rs`) says is no longer needed.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::partition::Partition;
use super::retention::{self, DiskPressure};
use super::segment::{self, Segment};
use super::shard_store::{ShardStore, StoreState, publish};
use crate::ids::{LogPosition, Offset, PartitionId};
use crate::log_throttle::monotonic_ms;
use crate::telemetry::storage::Deletion;

impl ShardStore {
    pub(super) async fn run_retention(self: Rc<Self>) {
        let retention = self.options.retention.clone();
        let producers_interval = Duration::from_millis(
            self.options
                .storage
                .producer_id_expiration_check_interval_ms,
        );
        let mut last_run = Instant::now();
        let mut last_producers_run = Instant::now();
        loop {
            compio::time::sleep(Duration::from_millis(retention.disk_check_interval_ms)).await;
            let pressure = self.check_disk();
            let due = last_run.elapsed() >= Duration::from_millis(retention.check_interval_ms);
            if due || pressure >= DiskPressure::Clean {
                self.enforce_retention(segment::now_ms());
                last_run = Instant::now();
            }
            if last_producers_run.elapsed() >= producers_interval {
                self.expire_producers(segment::now_ms());
                last_producers_run = Instant::now();
            }
        }
    }

    /// Forget, on every partition, the idempotent producers whose newest
    /// batch's timestamp is `storage.producer_id_expiration_ms` or more
    /// before `now_ms` (design 2.5, Kafka's `producer.id.expiration.ms`);
    /// their next batch is accepted as a new producer's. Returns how many
    /// entries were removed. Only the in-memory state changes: the next
    /// producer snapshot leaves them out, and a restart that replays them
    /// from the log expires them again at the next check.
    pub fn expire_producers(&self, now_ms: u64) -> usize {
        let expiration_ms = self.options.storage.producer_id_expiration_ms;
        let now_ms = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let expiration_ms = i64::try_from(expiration_ms).unwrap_or(i64::MAX);
        let mut state = self.state.borrow_mut();
        let mut removed = 0;
        for partition in state.partitions.values_mut() {
            removed += partition.producers.expire(now_ms, expiration_ms);
        }
        if removed > 0 {
            tracing::debug!(shard = %self.options.shard, removed, "expired idle producers");
        }
        removed
    }

    /// Sample disk usage and update the guard state; returns the pressure.
    pub fn check_disk(&self) -> DiskPressure {
        let ratio = match (self.disk_probe)() {
            Ok(ratio) => ratio,
            Err(error) => {
                tracing::warn!(%error, "cannot read disk usage; keeping the previous value");
                self.disk_usage_ratio.get()
            }
        };
        let pressure = DiskPressure::from_ratio(ratio, &self.options.retention);
        let previous = self.disk_pressure.replace(pressure);
        self.unlinker.set_hurry(pressure >= DiskPressure::Clean);
        self.disk_usage_ratio.set(ratio);
        if pressure != previous {
            let percent = ratio * 100.0;
            match pressure {
                DiskPressure::Reject => tracing::error!(
                    percent,
                    "disk nearly full: refusing appends until usage drops"
                ),
                DiskPressure::ForceClean => tracing::warn!(
                    percent,
                    "disk usage high: deleting oldest segments even if not expired"
                ),
                DiskPressure::Clean => tracing::warn!(
                    percent,
                    "disk usage above clean threshold: deleting expired segments now"
                ),
                DiskPressure::Normal => tracing::info!(percent, "disk usage back to normal"),
            }
        }
        pressure
    }

    /// Apply retention now: the age roll of an idle active segment, then
    /// per-partition log starts, then whole segments, then (under force
    /// pressure) the oldest segments regardless.
    pub fn enforce_retention(&self, now_ms: u64) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        // An active segment no append comes to still rolls once it is older
        // than its partitions' segment.ms, so its data can expire whole.
        if state.log.age_roll_due(now_ms, u64::MAX)
            && let Err(error) = state.log.roll_for_age()
        {
            tracing::warn!(shard = %self.options.shard, %error, "cannot roll the active segment for its age; retrying at the next check");
        }
        let producers_kept = self.producer_state_kept_to(state);
        let producers_kept =
            self.roll_the_only_segment_under_disk_pressure(state, producers_kept, now_ms);
        let ages: Vec<_> = state
            .log
            .segments()
            .map(|segment| (segment.base, segment.end(), segment.last_write_ms()))
            .collect();
        for partition in state.partitions.values_mut() {
            match retention::retained_start(partition, &ages, now_ms) {
                Ok(start) => advance_log_start(partition, start),
                Err(error) => {
                    tracing::error!(%error, topic = %partition.meta.topic, index = partition.meta.index, "retention skips a partition whose queue cannot be read")
                }
            }
        }
        let needed = retention::lowest_needed_position(&mut state.partitions.values());
        let needed = needed.unwrap_or(state.log.written_end());
        // Pending delayed records keep the timer batches holding them.
        let needed = needed.min(timer_pin(state));
        while state.log.segments().len() > 1
            && state
                .log
                .segments()
                .next()
                .is_some_and(|oldest| oldest.end() <= needed)
        {
            if !self.may_delete_oldest(state, producers_kept) {
                break;
            }
            self.delete_oldest_segment(state, Deletion::Retention);
        }
        drop(guard);
        while self.disk_pressure.get() >= DiskPressure::ForceClean {
            // Segments retention just deleted are still being unlinked: the
            // disk usage sampled next shows the space they free, and
            // unexpired data must not go for space about to be freed.
            if self.unlinks_pending.get() > 0 {
                break;
            }
            let mut state = self.state.borrow_mut();
            if state.log.segments().len() < 2 {
                break;
            }
            if !self.may_delete_oldest(&state, producers_kept) {
                break;
            }
            if state
                .log
                .segments()
                .next()
                .is_some_and(|oldest| oldest.end() > timer_pin(&state))
            {
                break;
            }
            if let Some(keeper) = forced_deletion_blocked_by(&state) {
                // An internal topic's owner copies its records forward soon
                // (`pins_the_oldest_segment_under_disk_pressure`).
                if !keeper.2
                    && let Some(times) = self.forced_deletion_log.record(monotonic_ms())
                {
                    tracing::warn!(
                        shard = %self.options.shard,
                        topic = %keeper.0,
                        partition = keeper.1,
                        times,
                        "disk usage is above retention.disk_force_clean_ratio, but the oldest \
                         segment holds unexpired data of a topic without \
                         sluice.disk.pressure.delete=true: nothing is deleted, and appends are \
                         refused at retention.disk_reject_ratio until space is freed"
                    );
                }
                break;
            }
            self.delete_oldest_segment(&mut state, Deletion::DiskPressure);
            drop(state);
            self.check_disk();
        }
        // Deleted ranges count as written and durable: publish, wake waiters,
        // and let the flusher recompute its deadlines.
        publish(&mut self.state.borrow_mut());
        self.progress.notify_all();
        self.flush_kick.notify();
    }
}

/// Where the oldest pending delayed record's timer batch lies (rounded
/// down): no segment ending past it is deleted.
fn timer_pin(state: &StoreState) -> LogPosition {
    state
        .timer
        .index
        .pinned_from()
        .unwrap_or(LogPosition(u64::MAX))
}

impl ShardStore {
    /// Under disk pressure (`retention.disk_force_clean_ratio` or above),
    /// roll the active segment when it is the shard's only one, holds a
    /// frame of a partition other than the internal topics' (whose owners
    /// copy what they still need forward: [`PartitionConfig::copies_forward`],
    /// so rolling for their copies alone would free nothing), and every
    /// partition with data in it lets that data go: its topic was deleted,
    /// its `retention.ms` has passed since the segment's newest frame, it
    /// allows deletion for space (`sluice.disk.pressure.delete`), or it
    /// copies forward; and no pending delayed record and no unsnapshotted
    /// producer state is in it. The rolled segment is aged from its newest
    /// frame, so retention (or the forced deletion) deletes it in this
    /// pass, or once the internal topics' owners have copied their records
    /// forward. Retention deletes only sealed segments, and a segment is
    /// aged from its last flush while it is active, so without this a
    /// shard whose one segment filled the disk stayed full for good:
    /// refused appends start no age roll (found by a breaker trial). The
    /// new segment reserves the smallest step first. A partition or a
    /// delayed record that holds the roll back is named in a warning (at
    /// most one every 10 s, shared with the forced deletion's).
    ///
    /// Only on a leader or a single node: a follower rolls where its
    /// leader did, at its next frame (`roll_as_copied`). Only under
    /// pressure, so that a leader and its followers' logs differ that way
    /// only in that emergency.
    ///
    /// Returns the position up to which deletion loses no producer state
    /// (`producer_state_kept_to`): a snapshot at the old end is exact at
    /// the new segment's base too, as nothing lies between them.
    fn roll_the_only_segment_under_disk_pressure(
        &self,
        state: &mut StoreState,
        producers_kept: Option<LogPosition>,
        now_ms: u64,
    ) -> Option<LogPosition> {
        let end = state.log.written_end();
        let Some(last_append_ms) = state.log.active_last_append_ms() else {
            return producers_kept;
        };
        let Some(only) = state.log.segments().next().map(|segment| segment.base) else {
            return producers_kept;
        };
        if self.disk_pressure.get() < DiskPressure::ForceClean
            || self.is_follower()
            || state.log.segments().len() != 1
            || state.last_frame_not_copied_forward <= only
        {
            return producers_kept;
        }
        let expired_since_last_frame = |partition: &Partition| {
            partition.config.delete
                && u64::try_from(partition.config.retention_ms)
                    .is_ok_and(|retention_ms| now_ms.saturating_sub(last_append_ms) >= retention_ms)
        };
        let keeper = state.partitions.values().find(|partition| {
            needs_the_oldest_segment(state, partition)
                && !partition.config.disk_pressure_delete
                && !partition.config.copies_forward
                && !expired_since_last_frame(partition)
        });
        let held_by = match keeper {
            Some(partition) => Some(format!(
                "unexpired data of {}-{}, a topic without sluice.disk.pressure.delete=true",
                partition.meta.topic, partition.meta.index
            )),
            None => (timer_pin(state) < end).then(|| "a pending delayed record".to_owned()),
        };
        if let Some(held_by) = held_by {
            if let Some(times) = self.forced_deletion_log.record(monotonic_ms()) {
                tracing::warn!(
                    shard = %self.options.shard,
                    held_by,
                    times,
                    "disk usage is above retention.disk_force_clean_ratio, but the shard's only \
                     segment holds data that must stay: nothing is deleted, and appends are \
                     refused at retention.disk_reject_ratio until space is freed"
                );
            }
            return producers_kept;
        }
        if producers_kept.is_some_and(|kept| kept < end) {
            // A producer snapshot at the next checkpoint lets it go.
            self.producer_snapshots.borrow_mut().request();
            return producers_kept;
        }
        // The next segment's first reservation must fit a nearly full disk.
        state.log.restart_reservation_steps();
        match state.log.roll_for_age() {
            Ok(()) => {
                let rolled = state.log.segments().rev().nth(1).expect("rolled");
                rolled.touch(last_append_ms);
                tracing::warn!(
                    shard = %self.options.shard,
                    "disk usage is above retention.disk_force_clean_ratio: rolled the shard's \
                     only segment, whose data may go, so that retention deletes it"
                );
                producers_kept.map(|kept| kept.max(state.log.written_end()))
            }
            Err(error) => {
                tracing::warn!(
                    shard = %self.options.shard,
                    %error,
                    "disk usage is above retention.disk_force_clean_ratio, but the shard's \
                     only segment cannot be rolled to be deleted; retrying at the next check"
                );
                producers_kept
            }
        }
    }

    /// The log position up to which deleting segments loses no
    /// idempotent-producer state: the newest producer snapshot on disk,
    /// from which recovery replays the log after it (Kafka keeps its
    /// producer snapshots for the same reason). A shard without producer
    /// state has nothing to lose and no bound. Without this, a segment
    /// holding a producer's last batches, deleted by retention (or made
    /// unneeded by compaction) before a snapshot covered it, took that
    /// producer's sequences with it at the next crash, and the client's
    /// retry of its last batch was stored twice.
    fn producer_state_kept_to(&self, state: &StoreState) -> Option<LogPosition> {
        if state
            .partitions
            .values()
            .all(|partition| partition.producers.is_empty())
        {
            return None;
        }
        Some(
            *self
                .producer_snapshot_written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Whether the oldest segment may go given the producer state's bound
    /// (see `producer_state_kept_to`); when it may not, a producer snapshot
    /// is taken at the next checkpoint, after which it may.
    fn may_delete_oldest(&self, state: &StoreState, producers_kept: Option<LogPosition>) -> bool {
        let Some(kept) = producers_kept else {
            return true;
        };
        let Some(oldest) = state.log.segments().next() else {
            return false;
        };
        if oldest.end() <= kept {
            return true;
        }
        tracing::debug!(shard = %self.options.shard, segment = oldest.base.0, snapshot = kept.0, "a segment waits for a producer snapshot past it before deletion");
        self.producer_snapshots.borrow_mut().request();
        false
    }
}

fn advance_log_start(partition: &mut Partition, start: Offset) {
    if start <= partition.log_start_offset {
        return;
    }
    tracing::debug!(topic = %partition.meta.topic, index = partition.meta.index, from = partition.log_start_offset.0, to = start.0, "retention moves log start");
    if let Err(error) = partition.advance_log_start(start) {
        tracing::warn!(%error, "cannot delete expired consume-queue files");
    }
}

impl ShardStore {
    /// Delete the oldest segment and move every partition's log start past
    /// it. Its file is unlinked on the blocking pool for retention (the
    /// shard thread must not wait for ext4 to free a gigabyte of blocks);
    /// under disk pressure in line, since the next disk sample must see the
    /// space freed before deciding to delete more.
    fn delete_oldest_segment(&self, state: &mut StoreState, why: Deletion) {
        let Some(segment) = state.log.delete_oldest_segment() else {
            return;
        };
        let (base, end) = (segment.base, segment.end());
        match why {
            Deletion::Retention => self.unlink_off_shard(segment),
            Deletion::DiskPressure => log_unlinked(base, end, &segment.path, why, unlink(&segment)),
        }
        let metrics = &self.metrics;
        metrics.segment_deleted(why, end.0 - base.0);
        for partition in state.partitions.values_mut() {
            let before = partition.log_start_offset;
            match retention::first_offset_at_or_after(partition, end) {
                Ok(start) => advance_log_start(partition, start),
                Err(error) => {
                    tracing::error!(%error, topic = %partition.meta.topic, index = partition.meta.index, "cannot move the log start past a deleted segment")
                }
            }
            let deleted = partition.log_start_offset.0 - before.0;
            if why == Deletion::DiskPressure && deleted > 0 {
                tracing::warn!(
                    topic = %partition.meta.topic,
                    partition = partition.meta.index,
                    from = before.0,
                    to = partition.log_start_offset.0,
                    "disk pressure deleted unexpired records (the topic has sluice.disk.pressure.delete=true)"
                );
                metrics.disk_pressure_deleted(&partition.meta.topic, deleted as u64);
            }
        }
    }

    /// Unlink `segment`'s file on the blocking pool, counted in
    /// `unlinks_pending` until it is gone (see [`ShardStore::segment_files_removed`]).
    fn unlink_off_shard(&self, segment: Segment) {
        let pending = Rc::clone(&self.unlinks_pending);
        pending.set(pending.get() + 1);
        let unlinker = self.unlinker.clone();
        compio::runtime::spawn(async move {
            let (base, end) = (segment.base, segment.end());
            let path = segment.path.clone();
            let result =
                match compio::runtime::spawn_blocking(move || unlinker.remove_gradually(segment))
                    .await
                {
                    Ok(result) => result,
                    Err(error) => {
                        error.resume_unwind();
                        Err(std::io::Error::other("the unlink task was cancelled"))
                    }
                };
            log_unlinked(base, end, &path, Deletion::Retention, result);
            pending.set(pending.get() - 1);
        })
        .detach();
    }

    /// Wait until the files of the segments retention deleted are unlinked
    /// (they go on the blocking pool): for shutdown and for tests that count
    /// files.
    pub async fn segment_files_removed(&self) {
        while self.unlinks_pending.get() > 0 {
            compio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn unlink(segment: &Segment) -> std::io::Result<()> {
    std::fs::remove_file(&segment.path)
}

/// How much of a deleted segment each truncation frees. On a filesystem
/// mounted with `discard` the freed blocks are discarded synchronously, and
/// the inode and extent writes of every fdatasync on the disk queue behind
/// the discard: unlinking a whole 1 GiB segment at once held acks=all
/// producers of both shards for 0.4-0.6 s here (p99 440-510 ms at
/// 100 MB/s); 8 MiB steps at half the time still gave p99 70-140 ms,
/// 2 MiB steps at a fifth 6-12 ms, as without deletions (benches/README.md,
/// "acks=all latency: one fdatasync per batch, deleting segments gently").
const UNLINK_STEP_BYTES: u64 = 2 << 20;
/// After each step the deletion pauses this many times as long as the step
/// took, so the disk serves other work at least 80 % of the time whatever
/// its speed (1 GiB took 1.4 s on an idle disk here). Under disk pressure
/// (`disk_clean_ratio` or above) it does not pause.
const UNLINK_PAUSE_FACTOR: u32 = 4;
/// How long a deleted segment waits for fetches planned before the log start
/// moved past it, which still read it, before its descriptors are dropped
/// and the last holder's close frees it whole (Kafka waits
/// `file.delete.delay.ms`, one minute, for the same reason).
const UNLINK_READERS_WAIT: Duration = Duration::from_secs(60);

/// What the shard's segment deletions share across the blocking pool.
#[derive(Clone, Default)]
pub(super) struct Unlinker {
    /// One deletion frees blocks at a time, so the pauses pace the shard's
    /// deletions together, not each on its own.
    one_at_a_time: Arc<Mutex<()>>,
    /// Disk usage is at `disk_clean_ratio` or above: free without pausing.
    hurry: Arc<AtomicBool>,
}

impl Unlinker {
    pub(super) fn set_hurry(&self, hurry: bool) {
        self.hurry.store(hurry, Ordering::Relaxed);
    }

    /// Unlink `segment`'s file, then free its blocks a step at a time,
    /// pausing after each step (blocking: on the blocking pool).
    fn remove_gradually(&self, segment: Segment) -> std::io::Result<()> {
        unlink(&segment)?;
        let waiting_since = Instant::now();
        // Only this task holds the segment's descriptors once no fetch or
        // write in flight does; truncating under a fetch would cut its reply
        // short.
        while Arc::strong_count(&segment.reader) > 1 || Arc::strong_count(&segment.writer) > 1 {
            if waiting_since.elapsed() >= UNLINK_READERS_WAIT {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _turn = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let file = &segment.writer.file;
        let mut len = file.metadata()?.len();
        while len > 0 {
            len = len.saturating_sub(UNLINK_STEP_BYTES);
            let started = Instant::now();
            file.set_len(len)?;
            if !self.hurry.load(Ordering::Relaxed) {
                std::thread::sleep(started.elapsed() * UNLINK_PAUSE_FACTOR);
            }
        }
        Ok(())
    }
}

fn log_unlinked(
    base: LogPosition,
    end: LogPosition,
    path: &std::path::Path,
    why: Deletion,
    result: std::io::Result<()>,
) {
    let reason = match why {
        Deletion::Retention => "retention",
        Deletion::DiskPressure => "disk usage above disk_force_clean_ratio",
    };
    match result {
        Ok(()) => tracing::info!(
            base = base.0,
            end = end.0,
            reason,
            "deleted commit-log segment"
        ),
        Err(error) => {
            tracing::error!(base = base.0, path = %path.display(), %error, "cannot delete commit-log segment file")
        }
    }
}

impl ShardStore {
    /// Whether partition `id` still needs the oldest of several segments:
    /// what an internal topic whose newest records state everything
    /// (`__producer_ids`, `__transaction_state`) checks to copy them
    /// forward, so that its records never keep retention from deleting
    /// the segments around them.
    pub fn pins_the_oldest_segment(&self, id: PartitionId) -> bool {
        let state = self.state.borrow();
        if state.log.segments().len() < 2 {
            return false;
        }
        state
            .partitions
            .get(&id)
            .is_some_and(|partition| needs_the_oldest_segment(&state, partition))
    }

    /// Whether disk usage is above `retention.disk_force_clean_ratio` and
    /// partition `id` still needs the oldest of several segments: what an
    /// internal topic that copies its live records forward (the
    /// `__consumer_offsets` snapshots) checks to do so at once, rather
    /// than pin the segment until its next scheduled copy.
    pub fn pins_the_oldest_segment_under_disk_pressure(&self, id: PartitionId) -> bool {
        if self.disk_pressure.get() < DiskPressure::ForceClean {
            return false;
        }
        let state = self.state.borrow();
        if state.log.segments().len() < 2 {
            return false;
        }
        state
            .partitions
            .get(&id)
            .is_some_and(|partition| needs_the_oldest_segment(&state, partition))
    }
}

/// Whether `partition` retains a batch in the shard's oldest segment.
fn needs_the_oldest_segment(state: &StoreState, partition: &Partition) -> bool {
    let Some(oldest) = state.log.segments().next() else {
        return false;
    };
    match retention::needed_position(partition) {
        Ok(position) => position.is_some_and(|position| position < oldest.end()),
        // A queue that cannot say might need it.
        Err(_) => true,
    }
}

/// A partition (topic, index, whether it copies forward) that still needs
/// the oldest segment and does not allow forced deletion, if there is one,
/// one that does not copy forward first: the oldest segment must stay.
fn forced_deletion_blocked_by(state: &StoreState) -> Option<(String, u32, bool)> {
    state
        .partitions
        .values()
        .filter(|partition| {
            needs_the_oldest_segment(state, partition) && !partition.config.disk_pressure_delete
        })
        .min_by_key(|partition| partition.config.copies_forward)
        .map(|partition| {
            (
                partition.meta.topic.clone(),
                partition.meta.index,
                partition.config.copies_forward,
            )
        })
}
