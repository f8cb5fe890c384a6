//! `sluice bench produce|consume|e2e|baseline`: a Kafka load generator that
//! costs the client as little as possible (batches built once and sent with
//! vectored writes, several connections, pipelined produce requests,
//! responses parsed in place), so the figures measure the broker.
//!
//! Latencies go into HDR histograms; throughput counts record batch bytes.
//! With `--baseline` a run first measures the host's own limits (loopback
//! TCP, write + fdatasync) with the same chunk size and prints its ratio to
//! them, so figures from noisy shared machines stay comparable. With
//! `--idempotent` or `--transactional`, produce compares plain producers
//! with idempotent or transactional ones in interleaved rounds
//! (`compare.rs`, `transaction.rs`).

pub mod baseline;
pub mod batch;
mod compare;
mod consume;
mod control;
mod delivery;
mod fetch;
mod produce;
pub mod stats;
mod transaction;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest};
use kafka_protocol::protocol::StrBytes;
use serde_json::json;

use crate::admin::describe_error;
use crate::admin::offsets::{self, EARLIEST, LATEST};
use crate::client::KafkaClient;
use crate::storage::producer_state::BATCHES_CACHED_MAX;
use baseline::Baseline;
use batch::Compression;
use consume::{ConsumeLoad, Mode};
use produce::{ProduceLoad, ProducerKind, Window};
use stats::{Bound, ClientCpu, Report};

/// CreateTopics error: the topic exists.
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Produce requests in flight per connection unless `--inflight` says.
const INFLIGHT_DEFAULT: usize = 8;
/// The most produce requests in flight per idempotent (or transactional)
/// connection: the broker remembers a producer's last 5 batches per
/// partition, so Kafka's clients allow at most 5
/// (`max.in.flight.requests.per.connection`, KIP-98).
const INFLIGHT_IDEMPOTENT_MAX: usize = BATCHES_CACHED_MAX;
/// Batches per partition in each transaction unless `--txn-batches` says.
const TXN_BATCHES_DEFAULT: usize = 10;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Produce as fast as acks allow (or at --rate); report throughput and
    /// ack latency.
    Produce(ProduceArgs),
    /// Read the topic from its log start to the end seen at start
    /// (catch-up); report throughput and fetch latency.
    Consume(ConsumeArgs),
    /// Produce at --rate while consumers follow; report produce-to-consume
    /// latency.
    E2e(E2eArgs),
    /// Measure this host's limits with the same sizes: loopback TCP, and
    /// sequential write (+ fdatasync) in the data directory.
    Baseline(BaselineArgs),
    /// Produce records that all fall due at one time (issue 18's delayed
    /// delivery); report how fast and how late the timer delivers them.
    Delivery(DeliveryArgs),
}

#[derive(Args)]
pub struct DeliveryArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    shape: Shape,
    #[command(flatten)]
    producer: ProducerOptions,
    /// Seconds of producing (every record due at the same time).
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    produce_for: f64,
    /// Seconds from the start to the records' due time.
    #[arg(long, value_name = "SECONDS", default_value_t = 6.0)]
    lead: f64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
pub struct Target {
    /// Broker address, HOST:PORT (the first address of a comma-separated
    /// list is used). Against a cluster, `produce` sends each partition to
    /// its leader, found through this address; the other modes need a
    /// single node.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "sluice-bench")]
    topic: String,
}

#[derive(Args)]
pub struct Shape {
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Records in each batch (one batch per produce request).
    #[arg(long, default_value_t = 1000)]
    batch_records: usize,
}

#[derive(Args)]
pub struct Output {
    /// Print one JSON object on stdout (the text summary goes to stderr).
    #[arg(long)]
    json: bool,
    /// Measure the host's limits first (as `sluice bench baseline`) and
    /// print the run's ratio to them.
    #[arg(long)]
    baseline: bool,
    /// Where the disk baseline writes its scratch file: the broker's data
    /// directory.
    #[arg(long, value_name = "DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Seconds each baseline measurement runs.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    baseline_duration: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all")]
    All,
}

impl Acks {
    fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

#[derive(Args)]
pub struct ProducerOptions {
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Partitions of the topic (created with this many when missing).
    #[arg(long, default_value_t = 2)]
    partitions: i32,
    #[arg(long, value_enum, default_value = "all")]
    acks: Acks,
    #[arg(long, value_enum, default_value = "none")]
    compression: Compression,
    /// Produce requests in flight per producer connection [default: 8; for
    /// `produce --idempotent|--transactional` 5, the most allowed there].
    #[arg(long)]
    inflight: Option<usize>,
    /// Seconds of measured load.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    warmup: f64,
    /// A header every record carries, KEY=VALUE (repeatable): for example
    /// `sluice.delay.ms=60000` delays every record a minute.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, Vec<u8>)>,
}

fn parse_header(text: &str) -> Result<(String, Vec<u8>), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    Ok((key.to_owned(), value.as_bytes().to_vec()))
}

#[derive(Args)]
#[command(group(ArgGroup::new("comparison").args(["idempotent", "transactional", "delayed"])))]
pub struct ProduceArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    shape: Shape,
    #[command(flatten)]
    producer: ProducerOptions,
    /// Fixed total load in MB/s (latency at a given throughput); without
    /// it, as fast as the acks come back.
    #[arg(long, value_name = "MB/S")]
    rate: Option<f64>,
    /// Compare plain and idempotent producers (KIP-98): --rounds rounds of a
    /// plain run and an idempotent one (plain first in odd rounds,
    /// idempotent first in even ones; each idempotent connection gets its
    /// own producer id from InitProducerId and numbers its batches), each on
    /// a fresh topic <topic>-<round>-plain|idempotent of the same layout.
    /// Reports both and idempotent_ratio, the median over rounds of
    /// idempotent MB/s / plain MB/s, and p99_ratio. Needs --acks all and
    /// --inflight at most 5; any produce error fails the run.
    #[arg(long)]
    idempotent: bool,
    /// Compare plain and transactional producers (KIP-98) as --idempotent
    /// does, on topics <topic>-<round>-plain|transactional: each
    /// transactional connection has its own transactional id
    /// (<topic>-<round>-transactional-<index>) and loops over
    /// AddPartitionsToTxn with all its partitions, --txn-batches batches per
    /// partition, and EndTxn(commit) once they are all acknowledged. Reports
    /// both, transactional_ratio and p99_ratio, and the commit latency (EndTxn
    /// round trip). Needs --acks all, --inflight at most 5 and no --rate; any
    /// error fails the run.
    #[arg(long)]
    transactional: bool,
    /// Compare plain producers with producers whose every record carries
    /// `sluice.delay.ms: MS` (issue 18), as --idempotent does, on topics
    /// <topic>-<round>-plain|delayed: reports delayed_ratio (MB/s of delayed
    /// over plain records) and p99_ratio. Choose MS past the run's end
    /// (default one hour) so that deliveries do not load a later round.
    #[arg(long, value_name = "MS", num_args = 0..=1, default_missing_value = "3600000")]
    delayed: Option<u64>,
    /// Batches per partition in each transaction of --transactional.
    #[arg(
        long,
        value_name = "N",
        default_value_t = TXN_BATCHES_DEFAULT,
        requires = "transactional",
        conflicts_with = "idempotent"
    )]
    txn_batches: usize,
    /// Rounds of the --idempotent, --transactional or --delayed comparison.
    #[arg(long, default_value_t = 2, requires = "comparison")]
    rounds: usize,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    target: Target,
    /// Sizes for the baseline's chunk (the consumers read what is there).
    #[command(flatten)]
    shape: Shape,
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Partitions to read (default: all of the topic's).
    #[arg(long)]
    partitions: Option<i32>,
    /// Fetch max_bytes: most bytes in one response.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    fetch_max_bytes: i32,
    /// Fetch partition_max_bytes: most bytes per partition in one response.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    partition_max_bytes: i32,
    /// Most seconds to read; the run ends sooner once caught up.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    duration: f64,
    /// Count each batch from its header and drop its records in the kernel
    /// (`recv` with MSG_TRUNC) instead of copying them into the load
    /// generator: what the broker can deliver when the consumer costs
    /// nothing. Without it, records are read into memory as a Kafka client
    /// reads them.
    #[arg(long)]
    discard_records: bool,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
pub struct E2eArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    shape: Shape,
    #[command(flatten)]
    producer: ProducerOptions,
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Fixed total produce load in MB/s.
    #[arg(long, value_name = "MB/S", default_value_t = 50.0)]
    rate: f64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    shape: Shape,
    /// Parallel loopback connections (as many as producers or consumers).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Directory for the disk scratch file: the broker's data directory.
    #[arg(long, value_name = "DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Seconds each measurement runs.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    duration: f64,
    /// Also write + fdatasync one chunk at this fixed rate (MB/s) and report
    /// latency from each chunk's due time: the disk's part of what
    /// `bench produce --acks all --rate` measures, stalls included.
    #[arg(long, value_name = "MB/S")]
    paced_rate: Option<f64>,
    /// Writer threads (scratch files) sharing `--paced-rate`: as many as the
    /// broker has shards.
    #[arg(long, default_value_t = 2, requires = "paced_rate")]
    paced_writers: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Produce(args) => produce(args),
        BenchCommand::Consume(args) => consume(args),
        BenchCommand::E2e(args) => e2e(args),
        BenchCommand::Delivery(args) => {
            let load = producer_load(&args.target, &args.shape, &args.producer, None, false)?;
            ensure_topic(&args.target.brokers, &load.topic, load.partitions)?;
            delivery::run(&args, load)
        }
        BenchCommand::Baseline(args) => {
            let chunk = chunk_bytes(&args.shape);
            let duration = seconds("--duration", args.duration)?;
            let mut baseline =
                baseline::measure(&args.data_dir, chunk, args.connections, duration)?;
            if let Some(rate) = args.paced_rate {
                baseline.paced = Some(baseline::measure_paced(
                    &args.data_dir,
                    chunk,
                    rate,
                    args.paced_writers,
                    duration,
                )?);
            }
            if args.json {
                println!("{}", baseline.to_json());
            } else {
                print!("{}", baseline.to_text());
            }
            Ok(())
        }
    }
}

fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    if args.idempotent {
        return produce_compared(args, ProducerKind::Idempotent);
    }
    if let Some(delay_ms) = args.delayed {
        return produce_compared(args, ProducerKind::Delayed { delay_ms });
    }
    if args.transactional {
        let batches_per_partition = args.txn_batches;
        return produce_compared(
            args,
            ProducerKind::Transactional {
                batches_per_partition,
            },
        );
    }
    let load = producer_load(&args.target, &args.shape, &args.producer, args.rate, false)?;
    ensure_topic(&args.target.brokers, &load.topic, load.partitions)?;
    let load = with_leaders(load, &args.target.brokers)?;
    let baseline = measure_baseline(&args.output, &args.shape, load.producers)?;
    let window = window(&args.producer)?;
    let (produced, client_cpu) = ClientCpu::measure(|| produce::run(&load, window));
    let produce::Produced {
        acks: recorder,
        elapsed,
        ..
    } = produced?;
    let bound = if load.acks == -1 {
        Bound::DurableWrite
    } else {
        Bound::Write
    };
    let report = Report {
        test: "produce",
        latency_of: if load.acks == 0 {
            "no acks"
        } else {
            "ack latency"
        },
        settings: producer_settings(&load),
        elapsed,
        recorder,
        baseline: baseline.map(|baseline| (baseline, bound)),
        extra: Vec::new(),
        client_cpu: Some(client_cpu),
    };
    emit(&report, args.output.json)
}

/// `produce --idempotent|--transactional`: plain rounds and rounds of
/// `variant`, interleaved.
fn produce_compared(args: ProduceArgs, variant: ProducerKind) -> anyhow::Result<()> {
    let flag = format!("--{}", variant.name());
    let idempotent = matches!(
        variant,
        ProducerKind::Idempotent | ProducerKind::Transactional { .. }
    );
    if idempotent && args.producer.acks != Acks::All {
        anyhow::bail!(
            "{flag} needs --acks all: an idempotent producer is acknowledged only once its \
             batch is durable (Kafka's clients force acks=all with enable.idempotence, and a \
             transactional producer is idempotent)"
        );
    }
    if let Some(inflight) = args.producer.inflight
        && idempotent
        && inflight > INFLIGHT_IDEMPOTENT_MAX
    {
        anyhow::bail!(
            "--inflight {inflight} with {flag}: at most {INFLIGHT_IDEMPOTENT_MAX} requests \
             may be in flight per idempotent connection (the broker remembers a producer's last \
             {BATCHES_CACHED_MAX} batches per partition; Kafka's clients have the same limit)"
        );
    }
    if args.rounds == 0 {
        anyhow::bail!("--rounds must be at least 1");
    }
    if let ProducerKind::Transactional {
        batches_per_partition,
    } = variant
    {
        if batches_per_partition == 0 {
            anyhow::bail!("--txn-batches must be at least 1");
        }
        if args.rate.is_some() {
            anyhow::bail!(
                "--rate with --transactional: a transactional producer waits for its acks before \
                 each commit, which a fixed send schedule cannot keep; leave --rate out"
            );
        }
    }
    let mut load = producer_load(&args.target, &args.shape, &args.producer, args.rate, false)?;
    if idempotent {
        load.inflight = args
            .producer
            .inflight
            .unwrap_or(INFLIGHT_IDEMPOTENT_MAX)
            .max(1);
    }
    load.kind = variant;
    let baseline = measure_baseline(&args.output, &args.shape, load.producers)?;
    let comparison = compare::Comparison {
        load: &load,
        rounds: args.rounds,
        warmup: warmup(&args.producer)?,
        duration: seconds("--duration", args.producer.duration)?,
        baseline,
    };
    let (json, text) = compare::run(&comparison, |topic| {
        ensure_topic(&args.target.brokers, topic, load.partitions)
    })?;
    if args.output.json {
        eprint!("{text}");
        println!("{json}");
    } else {
        print!("{text}");
    }
    Ok(())
}

fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let address = first_address(&args.target.brokers)?;
    let mut client = KafkaClient::connect(&args.target.brokers)?;
    let topic = args.target.topic.clone();
    let counts = offsets::partition_counts(&mut client, std::slice::from_ref(&topic))?;
    let available = counts.get(&topic).copied().unwrap_or(0);
    let partitions = args.partitions.unwrap_or(available);
    if partitions > available || partitions <= 0 {
        anyhow::bail!("topic {topic} has {available} partitions; cannot read {partitions}");
    }
    let start = partition_offsets(&mut client, &topic, partitions, EARLIEST)?;
    let end = partition_offsets(&mut client, &topic, partitions, LATEST)?;
    let records: i64 = end.iter().map(|(p, end)| end - start[p]).sum();
    if records <= 0 {
        anyhow::bail!(
            "topic {topic} holds no records to read: fill it first, e.g. \
             `sluice bench produce --topic {topic} --acks 1 --duration 10`"
        );
    }
    let baseline = measure_baseline(&args.output, &args.shape, args.consumers)?;
    let load = ConsumeLoad {
        address,
        topic: topic.clone(),
        partitions,
        consumers: args.consumers.max(1),
        fetch_max_bytes: args.fetch_max_bytes,
        partition_max_bytes: args.partition_max_bytes,
        start,
        mode: Mode::CatchUp { end },
        discard_records: args.discard_records,
    };
    let started = Instant::now();
    let deadline = started + seconds("--duration", args.duration)?;
    let (consumed, client_cpu) = ClientCpu::measure(|| consume::run(&load, started, deadline));
    let (recorder, elapsed) = consumed?;
    let report = Report {
        test: "consume",
        latency_of: "fetch latency",
        settings: json!({
            "topic": topic,
            "partitions": partitions,
            "consumers": load.consumers,
            "fetch_max_bytes": load.fetch_max_bytes,
            "partition_max_bytes": load.partition_max_bytes,
            "records_in_log": records,
            "discard_records": load.discard_records,
        }),
        elapsed,
        recorder,
        baseline: baseline.map(|baseline| (baseline, Bound::Read)),
        extra: Vec::new(),
        client_cpu: Some(client_cpu),
    };
    emit(&report, args.output.json)
}

fn e2e(args: E2eArgs) -> anyhow::Result<()> {
    let load = producer_load(
        &args.target,
        &args.shape,
        &args.producer,
        Some(args.rate),
        true,
    )?;
    ensure_topic(&args.target.brokers, &load.topic, load.partitions)?;
    let baseline = measure_baseline(&args.output, &args.shape, load.producers)?;
    let mut client = KafkaClient::connect(&args.target.brokers)?;
    let start = partition_offsets(&mut client, &load.topic, load.partitions, LATEST)?;
    let producers_done = Arc::new(AtomicBool::new(false));
    let window = window(&args.producer)?;
    let consumers = ConsumeLoad {
        address: load.address.clone(),
        topic: load.topic.clone(),
        partitions: load.partitions,
        consumers: args.consumers.max(1),
        fetch_max_bytes: 64 << 20,
        partition_max_bytes: 16 << 20,
        start,
        mode: Mode::Follow {
            measure_from_nanos: window.measure_from_nanos,
            producers_done: producers_done.clone(),
        },
        discard_records: false,
    };
    // Consumers stop once caught up after the producers finish, or 30 s
    // later at the latest.
    let consumers_deadline = window.deadline + Duration::from_secs(30);
    let ((produced, consumed), client_cpu) = ClientCpu::measure(|| {
        std::thread::scope(|scope| {
            let consumed =
                scope.spawn(|| consume::run(&consumers, window.measure_from, consumers_deadline));
            let produced = produce::run(&load, window);
            producers_done.store(true, Ordering::Release);
            let consumed = consumed
                .join()
                .unwrap_or_else(|payload| Err(panicked("the consumers", payload.as_ref())));
            (produced, consumed)
        })
    });
    let produce::Produced {
        acks: produced,
        elapsed: produce_elapsed,
        ..
    } = produced?;
    let (consumed, consume_elapsed) = consumed?;
    let produce_report = Report {
        test: "e2e producers",
        latency_of: "ack latency",
        settings: producer_settings(&load),
        elapsed: produce_elapsed,
        recorder: produced,
        baseline: None,
        extra: Vec::new(),
        client_cpu: None,
    };
    let mut settings = producer_settings(&load);
    settings["consumers"] = json!(consumers.consumers);
    let report = Report {
        test: "e2e",
        latency_of: "produce→consume",
        settings,
        elapsed: consume_elapsed,
        recorder: consumed,
        baseline: baseline.map(|baseline| (baseline, Bound::Network)),
        extra: vec![("produce", produce_report.to_json())],
        client_cpu: Some(client_cpu),
    };
    if args.output.json {
        eprint!("{}", produce_report.to_text());
    } else {
        print!("{}", produce_report.to_text());
    }
    emit(&report, args.output.json)
}

fn producer_load(
    target: &Target,
    shape: &Shape,
    options: &ProducerOptions,
    rate_mb_s: Option<f64>,
    stamp: bool,
) -> anyhow::Result<ProduceLoad> {
    if shape.record_size == 0 || shape.batch_records == 0 {
        anyhow::bail!("--record-size and --batch-records must be at least 1");
    }
    if options.producers == 0 || options.partitions <= 0 {
        anyhow::bail!("--producers and --partitions must be at least 1");
    }
    if let Some(rate) = rate_mb_s
        && !(rate > 0.0 && rate.is_finite())
    {
        anyhow::bail!("--rate {rate}: expected MB/s above 0");
    }
    if i32::try_from(shape.batch_records).is_err() {
        anyhow::bail!(
            "--batch-records {}: at most {}",
            shape.batch_records,
            i32::MAX
        );
    }
    Ok(ProduceLoad {
        address: first_address(&target.brokers)?,
        leaders: BTreeMap::new(),
        topic: target.topic.clone(),
        partitions: options.partitions,
        producers: options.producers,
        record_size: shape.record_size,
        batch_records: shape.batch_records,
        acks: options.acks.wire(),
        compression: options.compression,
        rate_mb_s,
        inflight: options.inflight.unwrap_or(INFLIGHT_DEFAULT).max(1),
        stamp,
        kind: ProducerKind::Plain,
        record_headers: options.headers.clone(),
    })
}

fn producer_settings(load: &ProduceLoad) -> serde_json::Value {
    json!({
        "topic": load.topic,
        "record_size": load.record_size,
        "batch_records": load.batch_records,
        "producers": load.producers,
        "partitions": load.partitions,
        "acks": match load.acks { 0 => "0", 1 => "1", _ => "all" },
        "compression": load.compression.name(),
        "inflight": load.inflight,
        "rate_mb_s": load.rate_mb_s,
        "idempotent": matches!(
            load.kind,
            ProducerKind::Idempotent | ProducerKind::Transactional { .. }
        ),
        "delay_ms": match load.kind {
            ProducerKind::Delayed { delay_ms } => Some(delay_ms),
            _ => None,
        },
        "transactional": matches!(load.kind, ProducerKind::Transactional { .. }),
        "txn_batches": match load.kind {
            ProducerKind::Transactional { batches_per_partition } => Some(batches_per_partition),
            _ => None,
        },
        "headers": load
            .record_headers
            .iter()
            .map(|(key, value)| format!("{key}={}", String::from_utf8_lossy(value)))
            .collect::<Vec<_>>(),
    })
}

fn window(options: &ProducerOptions) -> anyhow::Result<Window> {
    Ok(Window::new(
        warmup(options)?,
        seconds("--duration", options.duration)?,
    ))
}

fn warmup(options: &ProducerOptions) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(options.warmup)
        .with_context(|| format!("--warmup {}: expected seconds >= 0", options.warmup))
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|duration| !duration.is_zero())
        .with_context(|| format!("{flag} {value}: expected seconds above 0"))
}

/// A thread of the run panicked: what it was, and the panic's message when
/// it is text (the panic hook printed it with its location too).
fn panicked(thread: &str, payload: &(dyn std::any::Any + Send)) -> anyhow::Error {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    match message {
        Some(message) => anyhow::anyhow!("{thread} panicked: {message}"),
        None => anyhow::anyhow!("{thread} panicked"),
    }
}

/// One batch of the run's shape, as the baseline's chunk.
fn chunk_bytes(shape: &Shape) -> usize {
    batch::BatchTemplate::new(
        shape.batch_records.max(1),
        shape.record_size.max(1),
        Compression::None,
        1,
    )
    .bytes()
    .len()
}

fn measure_baseline(
    output: &Output,
    shape: &Shape,
    connections: usize,
) -> anyhow::Result<Option<Baseline>> {
    if !output.baseline {
        return Ok(None);
    }
    let baseline = baseline::measure(
        &output.data_dir,
        chunk_bytes(shape),
        connections,
        seconds("--baseline-duration", output.baseline_duration)?,
    )?;
    eprint!("{}", baseline.to_text());
    Ok(Some(baseline))
}

/// Print `report` (JSON on stdout with `json`, the text on stderr), then
/// fail when any request failed, so that a script that checks the exit
/// status never takes a run with errors for a clean one; the report,
/// with `errors` and `first_error`, is printed either way.
fn emit(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        eprint!("{}", report.to_text());
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    let recorder = &report.recorder;
    if recorder.errors > 0 {
        anyhow::bail!(
            "{} requests failed (first: {}); the figures above count only the others",
            recorder.errors,
            recorder.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

fn first_address(brokers: &str) -> anyhow::Result<String> {
    brokers
        .split(',')
        .map(str::trim)
        .find(|address| !address.is_empty())
        .map(str::to_owned)
        .context("--brokers is empty")
}

/// `load` with each partition's leader when the broker is part of a
/// cluster (Metadata lists more than one broker), so that every producer
/// sends to its partitions' leader ([`ProduceLoad::assignment`]); as it
/// was for a single node. Errors: a partition without a leader, or fewer
/// producers than leaders.
fn with_leaders(mut load: ProduceLoad, brokers: &str) -> anyhow::Result<ProduceLoad> {
    let mut client = KafkaClient::connect(brokers)?;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(load.topic.clone())),
        ))]))
        .with_allow_auto_topic_creation(false);
    let response = client.call(&request)?;
    if response.brokers.len() < 2 {
        return Ok(load);
    }
    let addresses: BTreeMap<i32, String> = response
        .brokers
        .iter()
        .map(|broker| {
            (
                broker.node_id.0,
                format!("{}:{}", broker.host.as_str(), broker.port),
            )
        })
        .collect();
    let topic = response
        .topics
        .first()
        .context("Metadata answered no topic")?;
    if topic.error_code != 0 {
        anyhow::bail!(
            "topic {}: {}",
            load.topic,
            describe_error(topic.error_code, None)
        );
    }
    if topic.partitions.len() != load.partitions as usize {
        anyhow::bail!(
            "Metadata lists {} partitions of {}, not {}",
            topic.partitions.len(),
            load.topic,
            load.partitions
        );
    }
    for partition in &topic.partitions {
        let leader = addresses.get(&partition.leader_id.0).with_context(|| {
            format!(
                "partition {} of {} has no live leader (leader {})",
                partition.partition_index, load.topic, partition.leader_id.0
            )
        })?;
        load.leaders
            .insert(partition.partition_index, leader.clone());
    }
    let leaders: std::collections::BTreeSet<&String> = load.leaders.values().collect();
    if load.producers < leaders.len() {
        anyhow::bail!(
            "{} nodes lead the partitions of {}: --producers must be at least that many (each \
             producer sends to one leader)",
            leaders.len(),
            load.topic
        );
    }
    Ok(load)
}

/// Create `topic` with `partitions`, or check that it has that many.
fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let mut client = KafkaClient::connect(brokers)?;
    let request = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_num_partitions(partitions)
                .with_replication_factor(-1),
        ])
        .with_timeout_ms(30_000);
    let response = client.call(&request)?;
    let result = response
        .topics
        .first()
        .context("empty CreateTopics response")?;
    match result.error_code {
        0 => Ok(()),
        TOPIC_ALREADY_EXISTS => {
            let counts = offsets::partition_counts(&mut client, &[topic.to_owned()])?;
            let existing = counts.get(topic).copied().unwrap_or(0);
            if existing == partitions {
                Ok(())
            } else {
                anyhow::bail!(
                    "topic {topic} exists with {existing} partitions, not {partitions}: \
                     delete it (`sluice topics delete {topic}`) or choose another --topic"
                )
            }
        }
        code => anyhow::bail!(
            "cannot create topic {topic}: {}",
            describe_error(code, result.error_message.as_deref())
        ),
    }
}

fn partition_offsets(
    client: &mut KafkaClient,
    topic: &str,
    partitions: i32,
    at: i64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let keys: Vec<_> = (0..partitions).map(|p| (topic.to_owned(), p)).collect();
    Ok(offsets::list_offsets(client, &keys, at)?
        .into_iter()
        .map(|((_, partition), offset)| (partition, offset))
        .collect())
}
