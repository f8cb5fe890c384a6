//! Producers: one connection each, a writer thread that sends pre-built
//! batches (round robin over the producer's partitions) with up to
//! `inflight` requests outstanding, and a reader thread that matches the
//! responses and records the ack latency.
//!
//! An idempotent producer (`--idempotent`) first asks InitProducerId for its
//! producer id on its own connection, then stamps each batch with its
//! partition's next sequence (see `batch.rs`); a plain one stamps -1s, with
//! the same per-send CRC. Either way the reader checks that each partition's
//! acknowledged base offsets increase: an answer with an earlier offset is a
//! batch the broker took for a duplicate, which would count records twice.
//!
//! With `--rate`, sends are scheduled at fixed intervals and latency is
//! measured from the scheduled time, so a stall shows up in the percentiles
//! instead of silently slowing the schedule (no coordinated omission).

use std::net::TcpStream;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::batch::{BatchTemplate, Compression, IdempotentProducer, ProducerStamp, now_nanos};
use super::panicked;
use super::stats::Recorder;
use super::wire;
use crate::admin::describe_error;

/// InitProducerId's error while the broker cannot hand out ids yet (or its
/// disk refused the block): retriable, as Kafka's clients treat it.
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
/// InitProducerId attempts before giving up, and the pause between them.
const INIT_PRODUCER_ID_ATTEMPTS_MAX: u32 = 50;
const INIT_PRODUCER_ID_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// The correlation id of InitProducerId; produce requests count from 0.
const INIT_PRODUCER_ID_CORRELATION_ID: i32 = -1;

#[derive(Clone)]
pub struct ProduceLoad {
    pub address: String,
    pub topic: String,
    pub partitions: i32,
    pub producers: usize,
    pub record_size: usize,
    pub batch_records: usize,
    pub acks: i16,
    pub compression: Compression,
    /// Total MB/s over all producers; `None` sends as fast as acks allow.
    pub rate_mb_s: Option<f64>,
    pub inflight: usize,
    /// Stamp each batch with its send time (for e2e).
    pub stamp: bool,
    /// Each connection is an idempotent producer (acks=all, inflight at most
    /// 5, checked by the caller).
    pub idempotent: bool,
}

/// The schedule every thread of a run shares.
#[derive(Clone, Copy)]
pub struct Window {
    /// Sends before this are warm-up: sent but not counted.
    pub measure_from: Instant,
    /// No send starts after this.
    pub deadline: Instant,
    /// `measure_from` on the wall clock (nanoseconds since the epoch), for
    /// stamps that a consumer compares with its own clock.
    pub measure_from_nanos: u64,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Window {
        let now = Instant::now();
        Window {
            measure_from: now + warmup,
            deadline: now + warmup + duration,
            measure_from_nanos: now_nanos() + warmup.as_nanos() as u64,
        }
    }

    /// The e2e stamp of a send scheduled at `intended`: its wall-clock time
    /// when it is measured, 0 (ignored by consumers) during warm-up.
    fn stamp_of(&self, intended: Instant) -> u64 {
        match intended.checked_duration_since(self.measure_from) {
            Some(since) => self.measure_from_nanos + since.as_nanos() as u64,
            None => 0,
        }
    }
}

struct InFlight {
    correlation_id: i32,
    /// The partition, and its slot in the producer's list.
    partition: i32,
    slot: usize,
    intended: Instant,
    records: u64,
    bytes: u64,
    counted: bool,
}

/// Partitions producer (or consumer) `index` of `count` writes (reads).
pub fn partitions_of(index: usize, count: usize, partitions: i32) -> Vec<i32> {
    let partitions = partitions.max(1) as usize;
    if count >= partitions {
        return vec![(index % partitions) as i32];
    }
    (index..partitions)
        .step_by(count)
        .map(|partition| partition as i32)
        .collect()
}

/// Run every producer; returns their merged recorder and the time from
/// `measure_from` to the last counted ack.
pub fn run(load: &ProduceLoad, window: Window) -> anyhow::Result<(Recorder, Duration)> {
    let results: Vec<anyhow::Result<(Recorder, Instant)>> = thread::scope(|scope| {
        let producers: Vec<_> = (0..load.producers)
            .map(|index| scope.spawn(move || producer(load, index, window)))
            .collect();
        producers
            .into_iter()
            .map(|producer| {
                producer
                    .join()
                    .unwrap_or_else(|payload| Err(panicked("a producer", payload.as_ref())))
            })
            .collect()
    });
    let mut recorder = Recorder::default();
    let mut last = window.measure_from;
    for result in results {
        let (one, one_last) = result?;
        recorder.merge(one);
        last = last.max(one_last);
    }
    if recorder.records == 0 {
        match recorder.first_error {
            Some(error) => anyhow::bail!("no batch was acknowledged: {error}"),
            None => anyhow::bail!("no batch was acknowledged in the measured window"),
        }
    }
    Ok((recorder, last.duration_since(window.measure_from)))
}

fn producer(
    load: &ProduceLoad,
    index: usize,
    window: Window,
) -> anyhow::Result<(Recorder, Instant)> {
    let partitions = partitions_of(index, load.producers, load.partitions);
    let mut template = BatchTemplate::new(
        load.batch_records,
        load.record_size,
        load.compression,
        index as u64 + 1,
    );
    let mut stream = wire::connect(&load.address)?;
    let mut idempotent = if load.idempotent {
        Some(init_producer_id(
            &mut stream,
            &load.address,
            partitions.len(),
        )?)
    } else {
        None
    };
    let interval = load.rate_mb_s.map(|rate| {
        let per_producer = rate * 1e6 / load.producers as f64;
        Duration::from_secs_f64(template.bytes().len() as f64 / per_producer)
    });
    let (sender, receiver) = sync_channel::<InFlight>(load.inflight.max(1) - 1);
    let reader = if load.acks == 0 {
        drop(receiver);
        None
    } else {
        let stream = stream
            .try_clone()
            .with_context(|| format!("cannot clone the socket to {}", load.address))?;
        let slots = partitions.len();
        Some(thread::spawn(move || {
            read_acks(stream, receiver, window, slots)
        }))
    };
    let mut sent = Recorder::default();
    let mut next = Instant::now();
    let mut sequence = 0usize;
    let mut correlation_id = 0i32;
    loop {
        let intended = match interval {
            Some(interval) => {
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                }
                let intended = next;
                next += interval;
                intended
            }
            None => Instant::now(),
        };
        if intended >= window.deadline {
            break;
        }
        let slot = sequence % partitions.len();
        let partition = partitions[slot];
        sequence += 1;
        let producer = match &mut idempotent {
            Some(idempotent) => idempotent.next(slot, template.records()),
            None => ProducerStamp::NONE,
        };
        template.prepare(producer, load.stamp.then(|| window.stamp_of(intended)));
        let batch = template.bytes();
        let mut prefix =
            wire::produce_prefix(&load.topic, partition, load.acks, 30_000, batch.len());
        wire::set_correlation_id(&mut prefix, correlation_id);
        let entry = InFlight {
            correlation_id,
            partition,
            slot,
            intended,
            records: template.records() as u64,
            bytes: batch.len() as u64,
            counted: intended >= window.measure_from,
        };
        correlation_id = correlation_id.wrapping_add(1);
        if load.acks == 0 && entry.counted {
            sent.add(entry.records, entry.bytes);
            sent.requests += 1;
        }
        if load.acks != 0 && sender.send(entry).is_err() {
            break; // the reader stopped: it holds the error
        }
        if let Err(error) = wire::write_all_vectored(&mut stream, &[&prefix, batch]) {
            sent.error(format!("send to {}: {error}", load.address));
            break;
        }
    }
    drop(sender);
    let sent_until = Instant::now();
    match reader {
        Some(reader) => {
            let (mut acked, last) = reader
                .join()
                .map_err(|payload| panicked("the ack reader", payload.as_ref()))?;
            acked.merge(sent);
            Ok((acked, last))
        }
        None => Ok((sent, sent_until)),
    }
}

/// Ask InitProducerId for this connection's producer id and epoch (KIP-98),
/// retrying while the broker says it cannot hand one out yet.
fn init_producer_id(
    stream: &mut TcpStream,
    address: &str,
    partitions: usize,
) -> anyhow::Result<IdempotentProducer> {
    let request = wire::init_producer_id_request(INIT_PRODUCER_ID_CORRELATION_ID);
    let mut frame = Vec::new();
    for attempt in 1..=INIT_PRODUCER_ID_ATTEMPTS_MAX {
        wire::write_all_vectored(stream, &[&request])
            .with_context(|| format!("sending InitProducerId to {address}"))?;
        wire::read_frame(stream, &mut frame)
            .with_context(|| format!("reading InitProducerId's response from {address}"))?;
        let answer = wire::parse_init_producer_id_response(&frame)?;
        if answer.correlation_id != INIT_PRODUCER_ID_CORRELATION_ID {
            anyhow::bail!(
                "InitProducerId: response {} arrived for request {INIT_PRODUCER_ID_CORRELATION_ID}",
                answer.correlation_id
            );
        }
        match answer.error_code {
            0 if answer.producer_id >= 0 => {
                return Ok(IdempotentProducer::new(
                    answer.producer_id,
                    answer.producer_epoch,
                    partitions,
                ));
            }
            0 => anyhow::bail!(
                "InitProducerId from {address} answered producer id {} without an error",
                answer.producer_id
            ),
            COORDINATOR_LOAD_IN_PROGRESS if attempt < INIT_PRODUCER_ID_ATTEMPTS_MAX => {
                thread::sleep(INIT_PRODUCER_ID_RETRY_BACKOFF);
            }
            code => anyhow::bail!(
                "InitProducerId from {address} failed (attempt {attempt}): {}",
                describe_error(code, None)
            ),
        }
    }
    unreachable!("the last attempt returns or bails")
}

fn read_acks(
    mut stream: TcpStream,
    in_flight: Receiver<InFlight>,
    window: Window,
    slots: usize,
) -> (Recorder, Instant) {
    let mut recorder = Recorder::default();
    let mut last = window.measure_from;
    let mut frame = Vec::new();
    // Per partition slot, the base offset of the last acknowledged batch.
    let mut acked_offsets: Vec<Option<i64>> = vec![None; slots];
    for entry in in_flight {
        if let Err(error) = wire::read_frame(&mut stream, &mut frame) {
            recorder.error(format!("reading a produce response: {error}"));
            break;
        }
        let now = Instant::now();
        let answer = match wire::parse_produce_response(&frame) {
            Ok(answer) => answer,
            Err(error) => {
                recorder.error(format!("undecodable produce response: {error:#}"));
                break;
            }
        };
        if answer.correlation_id != entry.correlation_id {
            recorder.error(format!(
                "response {} arrived for request {}",
                answer.correlation_id, entry.correlation_id
            ));
            break;
        }
        if let Some(error) = answer.error {
            recorder.error(error);
            continue;
        }
        if let Err(error) = check_offset_advances(&mut acked_offsets[entry.slot], &entry, &answer) {
            recorder.error(error);
            break;
        }
        if entry.counted {
            recorder.add(entry.records, entry.bytes);
            recorder.requests += 1;
            recorder.latency(now.duration_since(entry.intended));
            last = now;
        }
    }
    (recorder, last)
}

/// A connection's batches for one partition are appended in the order sent
/// (the broker takes a connection's produce requests in turn), so each
/// acknowledged base offset must lie past the one before. One that does not
/// is the broker answering a duplicate with the original's offset.
fn check_offset_advances(
    previous: &mut Option<i64>,
    entry: &InFlight,
    answer: &wire::ProduceAnswer,
) -> Result<(), String> {
    let Some(base_offset) = answer.base_offset else {
        return Err(format!(
            "the response to request {} names no partition",
            entry.correlation_id
        ));
    };
    if let Some(previous) = *previous
        && base_offset <= previous
    {
        return Err(format!(
            "partition {}: acknowledged at base offset {base_offset}, not after this producer's \
             previous batch at {previous}: the broker took the batch for a duplicate (a sequence \
             repeated?)",
            entry.partition
        ));
    }
    *previous = Some(base_offset);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::partitions_of;

    #[test]
    fn partitions_are_spread_over_producers() {
        assert_eq!(partitions_of(0, 2, 2), vec![0]);
        assert_eq!(partitions_of(1, 2, 2), vec![1]);
        assert_eq!(partitions_of(1, 2, 5), vec![1, 3]);
        assert_eq!(partitions_of(0, 2, 5), vec![0, 2, 4]);
        assert_eq!(partitions_of(3, 4, 2), vec![1]);
    }
}
