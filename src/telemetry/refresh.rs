//! Each shard's gauge refresher: every `metrics.refresh_interval_ms` it sets
//! the gauges that describe the shard's state rather than count events.
//!
//! * busy ratio: the shard thread's CPU time over the interval's wall time
//!   (`CLOCK_THREAD_CPUTIME_ID`; a thread parked in `io_uring_enter` or
//!   `epoll_wait` uses none);
//! * partitions, segments, log bytes, bytes not yet durable, commit-log
//!   ops in flight, and the commit log's running totals;
//! * disk usage, open connections (and those this shard serves), the request budget (bytes taken,
//!   connections waiting for it), what recovery did at this start;
//! * consumer lag of the groups this shard coordinates: high watermarks are
//!   asked of the owner shards, one mailbox call per shard;
//! * transactional ids per state on this shard's transaction coordinator,
//!   and how far each partition's last stable offset trails its high
//!   watermark (only partitions where it does).
//!
//! Gauges are looked up by name at each refresh, so one nobody sets any more
//! (a deleted group's lag) expires from the exposition.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use metrics::{Counter, counter, gauge};

use super::names;
use super::storage::shard_label;
use crate::broker::group::coordinator::Coordinator;
use crate::broker::txn::coordinator::TxnCoordinator;
use crate::broker::txn::records::TxnState;
use crate::ids::ShardId;
use crate::kafka::balance::ConnectionBalance;
use crate::kafka::request_budget::RequestBudget;
use crate::shard::ShardContext;

/// Refresh this shard's gauges every `interval`, forever (cancelled with
/// the shard's other service tasks).
pub async fn run(
    context: Rc<ShardContext>,
    (budget, balance): (Arc<RequestBudget>, Arc<ConnectionBalance>),
    interval: Duration,
) {
    let shard = shard_label(context.id);
    let totals = LogTotals::new(&shard);
    let mut last = (Instant::now(), thread_cpu_time());
    let mut delay_topics = std::collections::BTreeSet::new();
    loop {
        let now = (Instant::now(), thread_cpu_time());
        let wall = now.0.duration_since(last.0).as_secs_f64();
        let busy = now.1.saturating_sub(last.1).as_secs_f64();
        if wall > 0.0 {
            gauge!(names::SHARD_BUSY_RATIO, "shard" => shard.clone()).set(busy / wall);
        }
        last = now;
        refresh_storage(&context, &shard, &totals);
        refresh_request_budget(&budget);
        let index = usize::from(context.id.0);
        super::kafka::shard_connections(index, balance.serving(index), balance.weighing(index));
        refresh_consumer_lag(&context).await;
        refresh_transactions(&context, &shard);
        refresh_delays(&context, &shard, &mut delay_topics);
        compio::time::sleep(interval).await;
    }
}

/// The commit log's running totals, mirrored into counters.
struct LogTotals {
    writes: Counter,
    bytes: Counter,
    fsyncs: Counter,
}

impl LogTotals {
    fn new(shard: &str) -> LogTotals {
        LogTotals {
            writes: counter!(names::LOG_WRITES, "shard" => shard.to_owned()),
            bytes: counter!(names::LOG_WRITTEN_BYTES, "shard" => shard.to_owned()),
            fsyncs: counter!(names::LOG_FSYNCS, "shard" => shard.to_owned()),
        }
    }
}

fn refresh_storage(context: &ShardContext, shard: &str, totals: &LogTotals) {
    let store = &context.store();
    let state = store.gauges();
    let label = ("shard", shard.to_owned());
    let per_shard = [
        (names::SHARD_PARTITIONS, state.partitions as f64),
        (names::SHARD_SEGMENTS, state.segments as f64),
        (names::SHARD_LOG_BYTES, state.log_bytes as f64),
        (names::LOG_UNFLUSHED_BYTES, state.unflushed_bytes as f64),
        (names::LOG_TAIL_CACHE_BYTES, state.tail_cache_bytes as f64),
        (names::LOG_FLUSH_QUEUE_DEPTH, state.io_inflight as f64),
        (names::DELAY_PENDING_RECORDS, state.delayed_records as f64),
        (names::DELAY_PENDING_BYTES, state.delayed_bytes as f64),
        (names::DELAY_DUE_LAG, due_lag_seconds(state.oldest_due_ms)),
    ];
    for (name, value) in per_shard {
        gauge!(name, std::slice::from_ref(&label)).set(value);
    }
    totals.writes.absolute(state.stats.writes);
    totals.bytes.absolute(state.stats.bytes_written);
    totals.fsyncs.absolute(state.stats.fsyncs);
    let recovery = store.recovery_report();
    gauge!(names::RECOVERY_DURATION, std::slice::from_ref(&label))
        .set(recovery.elapsed.as_secs_f64());
    gauge!(
        names::RECOVERY_TRUNCATED_BYTES,
        std::slice::from_ref(&label)
    )
    .set(recovery.truncated_bytes as f64);
    // The same filesystem and connection count on every shard: unlabelled.
    gauge!(names::DISK_USAGE_RATIO).set(store.disk_usage_ratio());
    gauge!(names::KAFKA_CONNECTIONS).set(f64::from(crate::kafka::open_connections()));
}

/// The `due` label values of [`names::DELAY_PENDING_BY_TOPIC`]: due before
/// now, then due within each bound (milliseconds from now) and not an
/// earlier one; `later` past the last.
pub const DUE_WITHIN: [(&str, i64); 6] = [
    ("1m", 60_000),
    ("10m", 600_000),
    ("1h", 3_600_000),
    ("1d", 86_400_000),
    ("7d", 7 * 86_400_000),
    ("later", i64::MAX),
];

/// Pending delayed records per topic by when they are due, and each
/// topic's next due minute. A topic whose records were all delivered since
/// the last refresh is shown at 0 once (then its gauges expire).
fn refresh_delays(
    context: &ShardContext,
    shard: &str,
    shown: &mut std::collections::BTreeSet<String>,
) {
    let now_ms = crate::broker::delay::clock_ms();
    let mut by_topic: BTreeMap<String, ([u64; 7], i64)> = BTreeMap::new();
    for pending in context.store().pending_delays() {
        let (counts, next) = by_topic.entry(pending.topic).or_insert(([0; 7], i64::MAX));
        let ahead = pending.due_minute_ms.saturating_sub(now_ms);
        let bucket = if pending.due_minute_ms + 60_000 <= now_ms {
            0
        } else {
            1 + DUE_WITHIN
                .iter()
                .position(|(_, bound)| ahead < *bound)
                .unwrap_or(DUE_WITHIN.len() - 1)
        };
        counts[bucket] += pending.records;
        *next = (*next).min(pending.due_minute_ms);
    }
    let labels = std::iter::once("overdue").chain(DUE_WITHIN.iter().map(|(label, _)| *label));
    let labels: Vec<&str> = labels.collect();
    for gone in shown.iter().filter(|topic| !by_topic.contains_key(*topic)) {
        for due in &labels {
            gauge!(names::DELAY_PENDING_BY_TOPIC, "shard" => shard.to_owned(), "topic" => gone.clone(), "due" => *due).set(0.0);
        }
        gauge!(names::DELAY_NEXT_DUE, "shard" => shard.to_owned(), "topic" => gone.clone())
            .set(0.0);
    }
    shown.clear();
    for (topic, (counts, next)) in by_topic {
        for (due, count) in labels.iter().zip(counts) {
            gauge!(names::DELAY_PENDING_BY_TOPIC, "shard" => shard.to_owned(), "topic" => topic.clone(), "due" => *due).set(count as f64);
        }
        gauge!(names::DELAY_NEXT_DUE, "shard" => shard.to_owned(), "topic" => topic.clone())
            .set(next as f64 / 1000.0);
        shown.insert(topic);
    }
}

/// How late the oldest due delayed record is, seconds (0: none is late).
fn due_lag_seconds(oldest_due_ms: Option<i64>) -> f64 {
    let now_ms = crate::broker::delay::clock_ms();
    oldest_due_ms.map_or(0.0, |due| (now_ms - due).max(0) as f64 / 1000.0)
}

/// The same budget on every shard: unlabelled.
fn refresh_request_budget(budget: &RequestBudget) {
    gauge!(names::KAFKA_QUEUED_REQUEST_BYTES).set(budget.used_bytes() as f64);
    gauge!(names::KAFKA_CONNECTIONS_WAITING_FOR_BUDGET).set(budget.waiting() as f64);
}

/// Transactional ids by state, and the partitions whose last stable offset
/// trails their high watermark.
fn refresh_transactions(context: &ShardContext, shard: &str) {
    if let Some(coordinator) = TxnCoordinator::local() {
        let mut by_state: BTreeMap<&'static str, u64> = TxnState::ALL
            .iter()
            .map(|state| (state.name(), 0))
            .collect();
        for listing in coordinator.list() {
            *by_state.entry(listing.meta.state.name()).or_default() += 1;
        }
        for (state, count) in by_state {
            gauge!(names::TRANSACTIONS, "shard" => shard.to_owned(), "state" => state)
                .set(count as f64);
        }
    }
    // A partition reported last time but stable now gets one 0, then is
    // left to expire, so the gauge never keeps a stale lag.
    let now: Vec<(String, u32, i64)> = context.store().unstable_partitions();
    let settled: Vec<(String, u32)> = LSO_LAGGING.with(|lagging| {
        let mut lagging = lagging.borrow_mut();
        let current: std::collections::HashSet<(String, u32)> = now
            .iter()
            .map(|(topic, partition, _)| (topic.clone(), *partition))
            .collect();
        let settled = lagging.difference(&current).cloned().collect();
        *lagging = current;
        settled
    });
    let zeros = settled
        .into_iter()
        .map(|(topic, partition)| (topic, partition, 0));
    for (topic, partition, lag) in now.into_iter().chain(zeros) {
        gauge!(
            names::PARTITION_LSO_LAG,
            "topic" => topic,
            "partition" => partition.to_string()
        )
        .set(lag as f64);
    }
}

thread_local! {
    /// The partitions this shard last reported a last-stable-offset lag for.
    static LSO_LAGGING: std::cell::RefCell<std::collections::HashSet<(String, u32)>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// Lag of every committed offset this shard's coordinator holds.
async fn refresh_consumer_lag(context: &Rc<ShardContext>) {
    let Some(coordinator) = Coordinator::local() else {
        return;
    };
    let committed = coordinator.committed_offsets();
    drop(coordinator);
    let mut by_owner: BTreeMap<ShardId, Vec<(String, String, i32, i64)>> = BTreeMap::new();
    for (group, key, offset) in committed {
        let Ok(index) = u32::try_from(key.partition) else {
            continue;
        };
        let owner = context.shards.owner(&key.topic, index);
        by_owner
            .entry(owner)
            .or_default()
            .push((group, key.topic, key.partition, offset));
    }
    let calls = by_owner.into_iter().map(|(owner, entries)| {
        context.run_on(owner, move |owner_context| async move {
            entries
                .into_iter()
                .filter_map(|(group, topic, partition, offset)| {
                    let store = owner_context.store_for(&topic, partition as u32);
                    let id = store.partition_id(&topic, partition as u32)?;
                    let high_watermark = store.offsets(id)?.high_watermark.0;
                    Some((group, topic, partition, (high_watermark - offset).max(0)))
                })
                .collect::<Vec<_>>()
        })
    });
    for (group, topic, partition, lag) in join_all(calls).await.into_iter().flatten().flatten() {
        gauge!(
            names::CONSUMER_GROUP_LAG,
            "group" => group,
            "topic" => topic,
            "partition" => partition.to_string()
        )
        .set(lag as f64);
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    if result != 0 {
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}
