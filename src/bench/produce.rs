//! Producers: one connection each, a writer thread that sends pre-built
//! batches (round robin over the producer's partitions) with up to
//! `inflight` requests outstanding, and a reader thread that matches the
//! responses and records the ack latency.
//!
//! An idempotent producer (`--idempotent`) first asks InitProducerId for its
//! producer id on its own connection, then stamps each batch with its
//! partition's next sequence (see `batch.rs`); a plain one stamps -1s, with
//! the same per-send CRC. A transactional one (`--transactional`,
//! `transaction.rs`) is idempotent with a transactional id, and wraps every
//! `--txn-batches` batches per partition in a transaction: before its
//! commit the writer sends the reader a barrier and waits until every
//! response so far is read, so the connection carries EndTxn and the next
//! AddPartitionsToTxn with nothing else in flight, as Kafka's clients send
//! them. Either way the reader checks that each partition's acknowledged
//! base offsets increase: an answer with an earlier offset is a batch the
//! broker took for a duplicate, which would count records twice.
//!
//! With `--rate`, sends are scheduled at fixed intervals and latency is
//! measured from the scheduled time, so a stall shows up in the percentiles
//! instead of silently slowing the schedule (no coordinated omission). The
//! latency from the moment each request is written is reported beside it
//! (`from_send`): what a tool that times each request from its send
//! measures (iggy-bench does), without the writer's wake-up and without
//! any wait for an in-flight slot behind unanswered requests.

use std::net::TcpStream;
use std::sync::mpsc::{Receiver, RecvError, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::batch::{BatchTemplate, Compression, IdempotentProducer, ProducerStamp, now_nanos};
use super::control::Control;
use super::panicked;
use super::stats::Recorder;
use super::transaction::{Transactions, TxnFigures, TxnPlan};
use super::wire::{self, InitProducer, ProduceTarget};

/// How long the broker may take over a produce request.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

/// What each producer connection is (KIP-98).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerKind {
    Plain,
    /// Its own producer id from InitProducerId; batches numbered per
    /// partition.
    Idempotent,
    /// Idempotent, with its own transactional id, committing a transaction
    /// every `batches_per_partition` batches per partition.
    Transactional {
        batches_per_partition: usize,
    },
    /// Plain, every record delayed by `delay_ms` (issue 18: a
    /// `sluice.delay.ms` header).
    Delayed {
        delay_ms: u64,
    },
}

impl ProducerKind {
    pub fn name(self) -> &'static str {
        match self {
            ProducerKind::Plain => "plain",
            ProducerKind::Idempotent => "idempotent",
            ProducerKind::Transactional { .. } => "transactional",
            ProducerKind::Delayed { .. } => "delayed",
        }
    }

    /// Headers every record of this kind carries.
    pub fn record_headers(self) -> Vec<(String, Vec<u8>)> {
        match self {
            ProducerKind::Delayed { delay_ms } => vec![(
                crate::broker::delay::DELAY_MS.to_owned(),
                delay_ms.to_string().into_bytes(),
            )],
            _ => Vec::new(),
        }
    }
}

#[derive(Clone)]
pub struct ProduceLoad {
    /// The broker every producer sends to, unless `leaders` is known.
    pub address: String,
    /// In a cluster: each partition's leader (HOST:PORT), from Metadata
    /// ([`ProduceLoad::assignment`]); empty for a single node.
    pub leaders: std::collections::BTreeMap<i32, String>,
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
    /// Idempotent and transactional producers need acks=all, inflight at
    /// most 5, and (transactional) no --rate: checked by the caller.
    pub kind: ProducerKind,
    /// Headers on every record besides the kind's (`bench delivery`'s
    /// `sluice.deliver.at.ms`).
    pub record_headers: Vec<(String, Vec<u8>)>,
}

/// The schedule every thread of a run shares.
#[derive(Clone, Copy)]
pub struct Window {
    /// Sends before this are warm-up: sent but not counted.
    pub measure_from: Instant,
    /// No send starts after this (but a transaction open then is finished).
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
    /// Under `--rate`, when the writer began to write the request: set
    /// once the request has its in-flight slot (the writer may wait for one
    /// behind unanswered requests), before any byte of it is written.
    sent: Option<Arc<OnceLock<Instant>>>,
    records: u64,
    bytes: u64,
    counted: bool,
}

/// What the writer hands the ack reader, in the order of the connection's
/// requests.
enum Pending {
    /// A produce request whose response comes next.
    Produce(InFlight),
    /// Every earlier response has been read: answer on the barrier channel
    /// (with the first produce error, if any) and read nothing until the
    /// next entry, so the writer may exchange control requests meanwhile.
    Barrier,
}

/// The ack reader's answer to a barrier: the first produce error so far.
type BarrierReply = Result<(), String>;

/// What a run of producers measured.
pub struct Produced {
    pub acks: Recorder,
    /// Transactional producers' commit and begin latencies.
    pub transactions: Option<TxnFigures>,
    /// From `measure_from` to the last counted ack or, for transactional
    /// producers, the last counted commit.
    pub elapsed: Duration,
}

/// One producer's share.
struct ProducerResult {
    acks: Recorder,
    transactions: Option<TxnFigures>,
    last: Instant,
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

impl ProduceLoad {
    /// Producer `index`'s broker and partitions. A single node: every
    /// producer sends to `address`, partitions shared by [`partitions_of`].
    /// A cluster (`leaders` known): producers go to the partitions'
    /// leaders round robin, and those of one leader share its partitions
    /// the same way; every leader needs a producer (checked when the
    /// leaders are looked up).
    pub fn assignment(&self, index: usize) -> (String, Vec<i32>) {
        if self.leaders.is_empty() {
            return (
                self.address.clone(),
                partitions_of(index, self.producers, self.partitions),
            );
        }
        let mut by_leader: std::collections::BTreeMap<&str, Vec<i32>> =
            std::collections::BTreeMap::new();
        for (partition, leader) in &self.leaders {
            by_leader.entry(leader).or_default().push(*partition);
        }
        let leaders = by_leader.len();
        let (leader, partitions) = by_leader
            .into_iter()
            .nth(index % leaders)
            .expect("index % leaders is a leader");
        // The producers with this leader: indexes congruent to it.
        let sharing = (self.producers + leaders - 1 - index % leaders) / leaders;
        let mine = partitions_of(index / leaders, sharing, partitions.len() as i32)
            .into_iter()
            .map(|slot| partitions[slot as usize])
            .collect();
        (leader.to_owned(), mine)
    }
}

/// Run every producer; returns their merged figures.
pub fn run(load: &ProduceLoad, window: Window) -> anyhow::Result<Produced> {
    let results: Vec<anyhow::Result<ProducerResult>> = thread::scope(|scope| {
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
    let mut acks = Recorder::default();
    let mut transactions: Option<TxnFigures> = None;
    let mut last = window.measure_from;
    for result in results {
        let one = result?;
        acks.merge(one.acks);
        if let Some(figures) = one.transactions {
            transactions
                .get_or_insert_with(TxnFigures::default)
                .merge(figures);
        }
        last = last.max(one.last);
    }
    if acks.records == 0 {
        match acks.first_error {
            Some(error) => anyhow::bail!("no batch was acknowledged: {error}"),
            None => anyhow::bail!("no batch was acknowledged in the measured window"),
        }
    }
    Ok(Produced {
        acks,
        transactions,
        elapsed: last.duration_since(window.measure_from),
    })
}

fn producer(load: &ProduceLoad, index: usize, window: Window) -> anyhow::Result<ProducerResult> {
    let (address, partitions) = load.assignment(index);
    let mut headers = load.kind.record_headers();
    headers.extend(load.record_headers.iter().cloned());
    let template = BatchTemplate::new(
        load.batch_records,
        load.record_size,
        load.compression,
        index as u64 + 1,
    )
    .with_headers(&headers);
    let mut stream = wire::connect(&address)?;
    let mut control = Control::new(&address);
    let (stamps, transactions) = match load.kind {
        ProducerKind::Plain | ProducerKind::Delayed { .. } => (None, None),
        ProducerKind::Idempotent => {
            let (producer_id, epoch) =
                control.init_producer_id(&mut stream, InitProducer::Idempotent)?;
            let stamps = IdempotentProducer::new(producer_id, epoch, partitions.len());
            (Some(stamps), None)
        }
        ProducerKind::Transactional {
            batches_per_partition,
        } => {
            assert_eq!(load.acks, -1, "a transaction commits acknowledged batches");
            let plan = TxnPlan {
                transactional_id: format!("{}-{index}", load.topic),
                topic: load.topic.clone(),
                partitions: partitions.clone(),
                batches_per_partition,
            };
            let (transactions, stamps) = Transactions::start(&mut control, &mut stream, plan)?;
            (Some(stamps), Some(transactions))
        }
    };
    let interval = load.rate_mb_s.map(|rate| {
        let per_producer = rate * 1e6 / load.producers as f64;
        Duration::from_secs_f64(template.bytes().len() as f64 / per_producer)
    });
    let (sender, receiver) = sync_channel::<Pending>(load.inflight.max(1) - 1);
    let (barrier_sender, barrier_replies) = channel::<BarrierReply>();
    let reader = if load.acks == 0 {
        drop(receiver);
        None
    } else {
        let stream = stream
            .try_clone()
            .with_context(|| format!("cannot clone the socket to {address}"))?;
        let slots = partitions.len();
        Some(thread::spawn(move || {
            read_acks(stream, receiver, barrier_sender, window, slots)
        }))
    };
    let mut writer = Writer {
        load,
        window,
        partitions,
        template,
        stream,
        control,
        stamps,
        transactions,
        interval,
        next_send: Instant::now(),
        sends: 0,
        correlation_id: 0,
        sender,
        barrier_replies,
    };
    let sent = writer.run();
    let Writer {
        sender,
        transactions,
        ..
    } = writer;
    drop(sender);
    let sent_until = Instant::now();
    let (mut acks, acked_until) = match reader {
        Some(reader) => reader
            .join()
            .map_err(|payload| panicked("the ack reader", payload.as_ref()))?,
        None => (Recorder::default(), sent_until),
    };
    let sent = match sent {
        Ok(sent) => sent,
        Err(error) => match acks.first_error {
            Some(first) => return Err(error.context(format!("first produce error: {first}"))),
            None => return Err(error),
        },
    };
    acks.merge(sent);
    let figures = transactions.map(|transactions| transactions.figures);
    let last = figures
        .as_ref()
        .and_then(|figures| figures.last_commit)
        .map_or(acked_until, |commit| commit.max(acked_until));
    Ok(ProducerResult {
        acks,
        transactions: figures,
        last,
    })
}

/// A producer's sending side: the batch, the connection, its stamps and
/// transactions, and the channel to the ack reader.
struct Writer<'a> {
    load: &'a ProduceLoad,
    window: Window,
    partitions: Vec<i32>,
    template: BatchTemplate,
    stream: TcpStream,
    control: Control,
    /// Idempotent and transactional producers' sequences.
    stamps: Option<IdempotentProducer>,
    transactions: Option<Transactions>,
    /// The send schedule under --rate, and the next send's slot in it.
    interval: Option<Duration>,
    next_send: Instant,
    /// Batches sent, for the round robin over partitions.
    sends: usize,
    /// The next produce request's; counts from 0 (control requests count
    /// down from -1).
    correlation_id: i32,
    sender: SyncSender<Pending>,
    barrier_replies: Receiver<BarrierReply>,
}

impl Writer<'_> {
    /// Send until the deadline (finishing an open transaction); returns
    /// what acks=0 counted and errors of sending. A transaction that
    /// cannot begin or commit fails the producer.
    fn run(&mut self) -> anyhow::Result<Recorder> {
        let mut sent = Recorder::default();
        if Instant::now() < self.window.deadline {
            self.begin()?;
        }
        self.next_send = Instant::now();
        loop {
            let intended = self.next_send_time();
            let open = self
                .transactions
                .as_ref()
                .is_some_and(Transactions::is_open);
            if intended >= self.window.deadline && !open {
                break;
            }
            if !self.send(intended, &mut sent) {
                break;
            }
            if self.transactions.as_mut().is_some_and(Transactions::sent) {
                self.commit()?;
                if Instant::now() < self.window.deadline {
                    self.begin()?;
                }
            }
        }
        Ok(sent)
    }

    /// When the next send is due: now, or under --rate its slot in the
    /// schedule (slept until).
    fn next_send_time(&mut self) -> Instant {
        let Some(interval) = self.interval else {
            return Instant::now();
        };
        let now = Instant::now();
        if self.next_send > now {
            thread::sleep(self.next_send - now);
        }
        let intended = self.next_send;
        self.next_send += interval;
        intended
    }

    /// Send the next batch, scheduled at `intended`, to the next partition;
    /// false when the connection or the ack reader has stopped (`sent` or
    /// the reader holds the error).
    fn send(&mut self, intended: Instant, sent: &mut Recorder) -> bool {
        let load = self.load;
        let slot = self.sends % self.partitions.len();
        let partition = self.partitions[slot];
        self.sends += 1;
        let producer = match &mut self.stamps {
            Some(stamps) => stamps.next(slot, self.template.records()),
            None => ProducerStamp::NONE,
        };
        let stamp = load.stamp.then(|| self.window.stamp_of(intended));
        self.template.prepare(producer, stamp);
        let batch = self.template.bytes();
        let target = ProduceTarget {
            topic: &load.topic,
            partition,
            acks: load.acks,
            timeout_ms: PRODUCE_TIMEOUT_MS,
            transactional_id: self
                .transactions
                .as_ref()
                .map(Transactions::transactional_id),
        };
        let mut prefix = wire::produce_prefix(&target, batch.len());
        wire::set_correlation_id(&mut prefix, self.correlation_id);
        let entry = InFlight {
            correlation_id: self.correlation_id,
            partition,
            slot,
            intended,
            sent: self.interval.map(|_| Arc::new(OnceLock::new())),
            records: self.template.records() as u64,
            bytes: batch.len() as u64,
            counted: intended >= self.window.measure_from,
        };
        self.correlation_id = self.correlation_id.wrapping_add(1);
        if load.acks == 0 && entry.counted {
            sent.add(entry.records, entry.bytes);
            sent.requests += 1;
        }
        let sent_at = entry.sent.clone();
        if load.acks != 0 && self.sender.send(Pending::Produce(entry)).is_err() {
            return false; // the reader stopped: it holds the error
        }
        if let Some(sent_at) = sent_at {
            sent_at.set(Instant::now()).expect("set once, here");
        }
        if let Err(error) = wire::write_all_vectored(&mut self.stream, &[&prefix, batch]) {
            let peer = self
                .stream
                .peer_addr()
                .map_or_else(|_| load.address.clone(), |peer| peer.to_string());
            sent.error(format!("send to {peer}: {error}"));
            return false;
        }
        true
    }

    /// Open the next transaction, if this producer is transactional.
    fn begin(&mut self) -> anyhow::Result<()> {
        match &mut self.transactions {
            Some(transactions) => transactions.begin(
                &mut self.control,
                &mut self.stream,
                self.window.measure_from,
            ),
            None => Ok(()),
        }
    }

    /// Wait for every batch of the transaction to be acknowledged, then
    /// commit it.
    fn commit(&mut self) -> anyhow::Result<()> {
        self.barrier()?;
        let transactions = self
            .transactions
            .as_mut()
            .expect("only transactions commit");
        transactions.commit(
            &mut self.control,
            &mut self.stream,
            self.window.measure_from,
        )
    }

    /// Wait until the ack reader has read every response so far; after it
    /// this thread may read the connection until it sends the next entry.
    fn barrier(&mut self) -> anyhow::Result<()> {
        // The reader stops only on an error, which it returns when joined.
        let stopped = "the ack reader stopped before the transaction's acks were read";
        if self.sender.send(Pending::Barrier).is_err() {
            anyhow::bail!(stopped);
        }
        match self.barrier_replies.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(first_error)) => anyhow::bail!(
                "a produce request of the transaction failed, so it is not committed: \
                 {first_error}"
            ),
            Err(RecvError) => anyhow::bail!(stopped),
        }
    }
}

fn read_acks(
    mut stream: TcpStream,
    in_flight: Receiver<Pending>,
    barrier_replies: Sender<BarrierReply>,
    window: Window,
    slots: usize,
) -> (Recorder, Instant) {
    let mut recorder = Recorder::default();
    let mut last = window.measure_from;
    let mut frame = Vec::new();
    // Per partition slot, the base offset of the last acknowledged batch.
    let mut acked_offsets: Vec<Option<i64>> = vec![None; slots];
    for pending in in_flight {
        let entry = match pending {
            Pending::Produce(entry) => entry,
            Pending::Barrier => {
                let reply = match &recorder.first_error {
                    Some(error) => Err(error.clone()),
                    None => Ok(()),
                };
                if barrier_replies.send(reply).is_err() {
                    break; // the writer is gone
                }
                continue;
            }
        };
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
            // Set before the request was written, so before its answer.
            if let Some(sent) = entry.sent.as_ref().and_then(|sent| sent.get()) {
                recorder.latency_from_send(now.duration_since(*sent));
            }
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
    fn producers_in_a_cluster_go_to_each_partitions_leader() {
        let load = super::ProduceLoad {
            address: "a:1".to_owned(),
            leaders: [
                (0, "a:1"),
                (1, "b:1"),
                (2, "c:1"),
                (3, "a:1"),
                (4, "b:1"),
                (5, "c:1"),
            ]
            .into_iter()
            .map(|(partition, leader)| (partition, leader.to_owned()))
            .collect(),
            topic: "t".to_owned(),
            partitions: 6,
            producers: 4,
            record_size: 1,
            batch_records: 1,
            acks: -1,
            compression: crate::bench::batch::Compression::None,
            rate_mb_s: None,
            inflight: 1,
            stamp: false,
            kind: super::ProducerKind::Plain,
            record_headers: Vec::new(),
        };
        let assigned: Vec<(String, Vec<i32>)> =
            (0..4).map(|index| load.assignment(index)).collect();
        assert_eq!(
            assigned,
            [
                ("a:1".to_owned(), vec![0]),
                ("b:1".to_owned(), vec![1, 4]),
                ("c:1".to_owned(), vec![2, 5]),
                ("a:1".to_owned(), vec![3]),
            ]
        );
    }

    #[test]
    fn partitions_are_spread_over_producers() {
        assert_eq!(partitions_of(0, 2, 2), vec![0]);
        assert_eq!(partitions_of(1, 2, 2), vec![1]);
        assert_eq!(partitions_of(1, 2, 5), vec![1, 3]);
        assert_eq!(partitions_of(0, 2, 5), vec![0, 2, 4]);
        assert_eq!(partitions_of(3, 4, 2), vec![1]);
    }
}
