//! Load from a real Kafka client (librdkafka) against a running broker.
//!
//! ```sh
//! cargo run --release --example rdkafka_load -- produce --brokers 127.0.0.1:9092 --acks all
//! cargo run --release --example rdkafka_load -- consume --brokers 127.0.0.1:9092
//! cargo run --release --example rdkafka_load -- latency --brokers 127.0.0.1:9092 --rate-mb 50
//! ```
//!
//! `produce` sends 1 KiB records as fast as librdkafka batches them (up to
//! 1000 records per batch); `consume` reads a topic from the start to its end
//! as it was when the run began; `latency` produces with acks=all at a fixed
//! rate and reports send-to-acknowledgement percentiles. It measures what an
//! unmodified client sees; the storage engine's own figures are in
//! benches/README.md.

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser)]
struct Args {
    mode: Mode,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "load")]
    topic: String,
    #[arg(long, default_value_t = 2)]
    partitions: i32,
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value = "all")]
    acks: String,
    /// Megabytes per second for `latency`.
    #[arg(long, default_value_t = 50.0)]
    rate_mb: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Produce,
    Consume,
    Latency,
}

struct Timed {
    latencies_us: std::sync::Mutex<Vec<u64>>,
    delivered: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl ClientContext for Timed {}

impl ProducerContext for Timed {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Relaxed);
                self.latencies_us
                    .lock()
                    .unwrap()
                    .push(sent.elapsed().as_micros() as u64);
            }
            Err(_) => {
                self.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

fn producer(args: &Args) -> BaseProducer<Timed> {
    ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("acks", &args.acks)
        .set("linger.ms", "5")
        .set("batch.size", (1000 * (args.record_bytes + 64)).to_string())
        .set("batch.num.messages", "1000")
        .set("compression.codec", "none")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "30000")
        .create_with_context(Timed {
            latencies_us: std::sync::Mutex::new(Vec::new()),
            delivered: 0.into(),
            failed: 0.into(),
        })
        .expect("producer")
}

fn send(producer: &BaseProducer<Timed>, topic: &str, partition: i32, payload: &[u8]) {
    let mut record: BaseRecord<'_, (), [u8], Box<Instant>> =
        BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .payload(payload)
            .partition(partition);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    ensure_topic(&args);
    match args.mode {
        Mode::Produce => produce(&args),
        Mode::Consume => consume(&args),
        Mode::Latency => latency(&args),
    }
}

/// Creates the topic with `--partitions` partitions; an existing topic must
/// have at least that many, or the records for the missing ones would wait
/// out librdkafka's delivery timeout.
fn ensure_topic(args: &Args) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1));
    let created = futures_executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .expect("create topics");
    match &created[0] {
        Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
        Err((_, code)) => panic!("cannot create topic {}: {code}", args.topic),
    }
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(
        partitions >= args.partitions,
        "topic {} has {partitions} partitions; pass --partitions {partitions} or use another --topic",
        args.topic
    );
}

fn produce(args: &Args) {
    let producer = producer(args);
    let payload = vec![b'x'; args.record_bytes];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        send(
            &producer,
            &args.topic,
            (sent % args.partitions as u64) as i32,
            &payload,
        );
        sent += 1;
        if sent.is_multiple_of(1000) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let elapsed = started.elapsed().as_secs_f64();
    let context = producer.context();
    let delivered = context.delivered.load(std::sync::atomic::Ordering::Relaxed);
    report(
        "produce",
        delivered,
        args.record_bytes,
        elapsed,
        context.failed.load(std::sync::atomic::Ordering::Relaxed),
    );
}

fn consume(args: &Args) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "rdkafka-load")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()
        .expect("consumer");
    let mut end = 0i64;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..args.partitions {
        let (_, high) = consumer
            .fetch_watermarks(&args.topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        end += high;
        assignment
            .add_partition_offset(&args.topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0u64;
    while (records as i64) < end && started.elapsed() < Duration::from_secs(120) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            records += 1;
            bytes += message.payload_len() as u64;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "consume: {records} records, {:.1} MB/s, {:.0} records/s over {elapsed:.1} s",
        bytes as f64 / elapsed / 1e6,
        records as f64 / elapsed
    );
}

fn latency(args: &Args) {
    let producer = producer(args);
    let payload = vec![b'x'; args.record_bytes];
    let records_per_second = args.rate_mb * 1e6 / args.record_bytes as f64;
    let interval = Duration::from_secs_f64(1.0 / records_per_second);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let due = started + interval.mul_f64(sent as f64);
        let now = Instant::now();
        if due > now {
            producer.poll(due - now);
            continue;
        }
        send(
            &producer,
            &args.topic,
            (sent % args.partitions as u64) as i32,
            &payload,
        );
        sent += 1;
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let elapsed = started.elapsed().as_secs_f64();
    let context = producer.context();
    let mut latencies = context.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    let at = |quantile: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * quantile) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    report(
        "latency",
        latencies.len() as u64,
        args.record_bytes,
        elapsed,
        context.failed.load(std::sync::atomic::Ordering::Relaxed),
    );
    println!(
        "acks={} at {:.0} MB/s: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        args.acks,
        args.rate_mb,
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

fn report(mode: &str, records: u64, record_bytes: usize, elapsed: f64, failed: u64) {
    println!(
        "{mode}: {records} records acknowledged ({failed} failed), {:.1} MB/s, {:.0} records/s over {elapsed:.1} s",
        records as f64 * record_bytes as f64 / elapsed / 1e6,
        records as f64 / elapsed
    );
}
