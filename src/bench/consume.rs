//! Consumers: one connection each, fetching all of the consumer's partitions
//! in one Fetch request at a time (as Kafka clients do per broker), parsing
//! the response as it streams in and counting whole batches (`fetch`).
//!
//! Catch-up (`sluice bench consume`) reads from the log start to the end
//! offsets seen at start and records the fetch latency. Follow mode (e2e)
//! starts at the end and records each stamped batch's produce-to-consume
//! latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::batch::now_nanos;
use super::fetch::{FetchConnection, Records};
use super::panicked;
use super::produce::partitions_of;
use super::stats::Recorder;
use super::wire;
use crate::admin::describe_error;

pub struct ConsumeLoad {
    pub address: String,
    pub topic: String,
    pub partitions: i32,
    pub consumers: usize,
    pub fetch_max_bytes: i32,
    pub partition_max_bytes: i32,
    /// Where each partition starts.
    pub start: BTreeMap<i32, i64>,
    pub mode: Mode,
    /// Count catch-up batches from their headers and drop their records in
    /// the kernel instead of copying them (see `bench::fetch`); follow mode
    /// always reads the records, for their stamps.
    pub discard_records: bool,
}

pub enum Mode {
    /// Stop each partition at this offset (the end seen at start).
    CatchUp { end: BTreeMap<i32, i64> },
    /// Follow new data; count batches stamped at or after `measure_from`
    /// (nanoseconds since the epoch); stop once `producers_done` is set and
    /// every partition is caught up.
    Follow {
        measure_from_nanos: u64,
        producers_done: Arc<AtomicBool>,
    },
}

/// Run every consumer until its partitions are done or `deadline`; returns
/// the merged recorder and the time from `started` to the last counted batch.
pub fn run(
    load: &ConsumeLoad,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<(Recorder, Duration)> {
    let results: Vec<anyhow::Result<(Recorder, Instant)>> = thread::scope(|scope| {
        let consumers: Vec<_> = (0..load.consumers)
            .map(|index| scope.spawn(move || consumer(load, index, deadline)))
            .collect();
        consumers
            .into_iter()
            .map(|consumer| {
                consumer
                    .join()
                    .unwrap_or_else(|payload| Err(panicked("a consumer", payload.as_ref())))
            })
            .collect()
    });
    let mut recorder = Recorder::default();
    let mut last = started;
    for result in results {
        let (one, one_last) = result?;
        recorder.merge(one);
        last = last.max(one_last);
    }
    Ok((recorder, last.duration_since(started)))
}

fn consumer(
    load: &ConsumeLoad,
    index: usize,
    deadline: Instant,
) -> anyhow::Result<(Recorder, Instant)> {
    let mut offsets: BTreeMap<i32, i64> = partitions_of(index, load.consumers, load.partitions)
        .into_iter()
        .map(|partition| (partition, load.start.get(&partition).copied().unwrap_or(0)))
        .collect();
    let mut high_watermarks: BTreeMap<i32, i64> = BTreeMap::new();
    let mut connection = FetchConnection::new(wire::connect(&load.address)?);
    let mut recorder = Recorder::default();
    let mut last = Instant::now();
    let records = match load.mode {
        Mode::CatchUp { .. } if load.discard_records => Records::Discard,
        Mode::CatchUp { .. } => Records::Keep { stamps: false },
        Mode::Follow { .. } => Records::Keep { stamps: true },
    };
    let mut correlation_id = 0i32;
    let max_wait_ms = match load.mode {
        Mode::CatchUp { .. } => 500,
        Mode::Follow { .. } => 100,
    };
    while Instant::now() < deadline {
        let wanted: Vec<(i32, i64)> = offsets
            .iter()
            .filter(|(partition, offset)| match &load.mode {
                Mode::CatchUp { end } => **offset < end.get(partition).copied().unwrap_or(0),
                Mode::Follow { .. } => true,
            })
            .map(|(partition, offset)| (*partition, *offset))
            .collect();
        if wanted.is_empty() {
            break;
        }
        // Only a response to a fetch sent after the producers finished can
        // show that everything they produced was read.
        let producers_were_done = match &load.mode {
            Mode::Follow { producers_done, .. } => producers_done.load(Ordering::Acquire),
            Mode::CatchUp { .. } => false,
        };
        let request = fetch_request(load, &wanted, max_wait_ms);
        let sent_at = Instant::now();
        let request = wire::encode_request(&request, wire::FETCH_VERSION, correlation_id);
        wire::write_all_vectored(connection.stream(), &[&request])
            .with_context(|| format!("fetch from {}", load.address))?;
        let (answered, partitions) = connection
            .read_fetch_response(records)
            .with_context(|| format!("fetch from {}", load.address))?;
        let now = Instant::now();
        if answered != correlation_id {
            anyhow::bail!("fetch response {answered} for request {correlation_id}");
        }
        correlation_id = correlation_id.wrapping_add(1);
        recorder.requests += 1;
        let mut got_any = false;
        for fetched in partitions {
            if fetched.error_code != 0 {
                // Retrying would spin: the same fetch gets the same answer.
                anyhow::bail!(
                    "partition {} at offset {}: {}",
                    fetched.partition,
                    offsets.get(&fetched.partition).copied().unwrap_or(-1),
                    describe_error(fetched.error_code, None)
                );
            }
            high_watermarks.insert(fetched.partition, fetched.high_watermark);
            let Some(offset) = offsets.get_mut(&fetched.partition) else {
                continue;
            };
            for batch in fetched.batches {
                if batch.next_offset <= *offset {
                    continue;
                }
                *offset = batch.next_offset;
                got_any = true;
                match &load.mode {
                    Mode::CatchUp { .. } => recorder.add(batch.records, batch.bytes),
                    Mode::Follow {
                        measure_from_nanos, ..
                    } => {
                        if let Some(stamp) = batch.stamp
                            && stamp >= *measure_from_nanos
                        {
                            recorder.add(batch.records, batch.bytes);
                            recorder
                                .latency(Duration::from_nanos(now_nanos().saturating_sub(stamp)));
                            last = Instant::now();
                        }
                    }
                }
            }
        }
        let caught_up = offsets.iter().all(|(partition, offset)| {
            high_watermarks
                .get(partition)
                .is_some_and(|high| offset >= high)
        });
        if producers_were_done && caught_up {
            break;
        }
        if let Mode::CatchUp { .. } = load.mode
            && got_any
        {
            recorder.latency(now.duration_since(sent_at));
            last = now;
        }
    }
    Ok((recorder, last))
}

fn fetch_request(load: &ConsumeLoad, wanted: &[(i32, i64)], max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(load.fetch_max_bytes)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(load.topic.clone())))
                .with_partitions(
                    wanted
                        .iter()
                        .map(|(partition, offset)| {
                            FetchPartition::default()
                                .with_partition(*partition)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(*offset)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(load.partition_max_bytes)
                        })
                        .collect(),
                ),
        ])
}
