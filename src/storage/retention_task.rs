//! The retention task: samples disk usage, applies the disk guards, and
//! deletes what retention (see `retention.rs`) says is no longer needed.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::partition::Partition;
use super::retention::{self, DiskPressure};
use super::segment;
use super::shard_store::{ShardStore, StoreState, publish};
use crate::ids::{LogPosition, Offset, PartitionId};
use crate::log_throttle::monotonic_ms;
use crate::telemetry::storage::{Deletion, StoreMetrics};

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
        let producers_kept = self.producer_state_kept_to(state);
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
            delete_oldest_segment(state, &self.metrics, Deletion::Retention);
        }
        drop(guard);
        while self.disk_pressure.get() >= DiskPressure::ForceClean {
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
                if let Some(times) = self.forced_deletion_log.record(monotonic_ms()) {
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
            delete_oldest_segment(&mut state, &self.metrics, Deletion::DiskPressure);
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

fn delete_oldest_segment(state: &mut StoreState, metrics: &StoreMetrics, why: Deletion) {
    let Some((base, end, result)) = state.log.delete_oldest_segment() else {
        return;
    };
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
            tracing::error!(base = base.0, %error, "cannot delete commit-log segment file")
        }
    }
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

/// A partition (topic, index) that still needs the oldest segment and does
/// not allow forced deletion, if there is one: the oldest segment must stay.
fn forced_deletion_blocked_by(state: &StoreState) -> Option<(String, u32)> {
    state.partitions.values().find_map(|partition| {
        (needs_the_oldest_segment(state, partition) && !partition.config.disk_pressure_delete)
            .then(|| (partition.meta.topic.clone(), partition.meta.index))
    })
}
