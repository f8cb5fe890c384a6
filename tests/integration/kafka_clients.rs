//! librdkafka (through the `rdkafka` crate) as the tests' Kafka client: a
//! producer that records what the broker acknowledged, a consumer that reads
//! partitions from given offsets, and an admin client.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

/// A message as acknowledged or consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp: Option<i64>,
}

/// Collects the delivery reports librdkafka hands back.
#[derive(Clone, Default)]
pub struct Acks {
    pub delivered: Arc<Mutex<Vec<Record>>>,
    pub failed: Arc<Mutex<Vec<String>>>,
}

/// `SLUICE_TEST_CLIENT_DEBUG=<librdkafka debug contexts>` (for example
/// `eos,msg`) prints the test producers' librdkafka debug log to stderr,
/// with the time, to diagnose a failed run.
impl ClientContext for Acks {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "{}.{:03} librdkafka {level:?} {fac}: {log_message}",
            now.as_secs(),
            now.subsec_millis()
        );
    }
}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => self.delivered.lock().unwrap().push(to_record(message)),
            Err((error, _)) => self.failed.lock().unwrap().push(error.to_string()),
        }
    }
}

pub fn to_record<M: Message>(message: &M) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
        timestamp: message.timestamp().to_millis(),
    }
}

pub fn producer(address: &str, settings: &[(&str, &str)]) -> (BaseProducer<Acks>, Acks) {
    let acks = Acks::default();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    if let Ok(contexts) = std::env::var("SLUICE_TEST_CLIENT_DEBUG") {
        config
            .set("debug", contexts)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let producer = config
        .create_with_context(acks.clone())
        .expect("producer config is valid");
    (producer, acks)
}

/// Send one record; retries while librdkafka's queue is full.
pub fn send(
    producer: &BaseProducer<Acks>,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: &[(&str, &[u8])],
) {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    let mut record: BaseRecord<'_, [u8], [u8]> =
        BaseRecord::to(topic).payload(payload).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((error, back)) => {
                assert!(
                    matches!(
                        error.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "send failed: {error}"
                );
                record = back;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

/// Flush and return every acknowledged record; panics on failed deliveries.
pub fn flush(producer: &BaseProducer<Acks>, acks: &Acks) -> Vec<Record> {
    producer
        .flush(Duration::from_secs(60))
        .expect("flush completes");
    let failed = acks.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} deliveries failed, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    acks.delivered.lock().unwrap().clone()
}

/// A consumer of `address` with `settings`, for assign() (no group use).
pub fn consumer(address: &str, settings: &[(&str, &str)]) -> BaseConsumer {
    // librdkafka wants a group id even for assign(); nothing is committed.
    // Its default isolation level is read_committed.
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address)
        .set("group.id", "sluice-tests")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config.create().expect("consumer config is valid")
}

/// Read `expected` records from `topic`'s `partitions`, each from `from`.
pub fn consume(
    address: &str,
    topic: &str,
    partitions: i32,
    from: i64,
    expected: usize,
) -> Vec<Record> {
    consume_with(address, topic, partitions, from, expected, &[])
}

/// Every record of `topic`'s `partitions` from offset 0, read until none
/// comes for `idle` (at most 120 s in all).
pub fn consume_all(address: &str, topic: &str, partitions: i32, idle: Duration) -> Vec<Record> {
    let consumer = consumer(address, &[]);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(0))
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut records = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < idle && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records.push(to_record(&message));
                last = Instant::now();
            }
            Some(Err(error)) => panic!("consume failed: {error}"),
            None => {}
        }
    }
    records
}

/// [`consume`] with extra consumer settings (`isolation.level`, ...).
pub fn consume_with(
    address: &str,
    topic: &str,
    partitions: i32,
    from: i64,
    expected: usize,
    settings: &[(&str, &str)],
) -> Vec<Record> {
    let consumer = consumer(address, settings);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(from))
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::with_capacity(expected);
    while records.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => records.push(to_record(&message)),
            Some(Err(error)) => panic!("consume failed: {error}"),
            None => {}
        }
    }
    assert_eq!(records.len(), expected, "records consumed from {topic}");
    // Nothing beyond what was expected.
    if let Some(Ok(extra)) = consumer.poll(Duration::from_millis(300)) {
        let extra = to_record(&extra);
        let listed: Vec<String> = records
            .iter()
            .map(|record| {
                format!(
                    "{}@{}:{}",
                    record.partition,
                    record.offset,
                    String::from_utf8_lossy(&record.payload)
                )
            })
            .collect();
        panic!(
            "more records than produced: {}@{}:{} after {listed:?}",
            extra.partition,
            extra.offset,
            String::from_utf8_lossy(&extra.payload)
        );
    }
    records
}

/// Offsets of the first records at or after `timestamp_ms`, per partition.
pub fn offsets_for_time(
    address: &str,
    topic: &str,
    partitions: i32,
    timestamp_ms: i64,
) -> BTreeMap<i32, Offset> {
    let consumer = consumer(address, &[]);
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query
            .add_partition_offset(topic, partition, Offset::Offset(timestamp_ms))
            .unwrap();
    }
    let found = consumer
        .offsets_for_times(query, Duration::from_secs(30))
        .expect("ListOffsets by time");
    found
        .elements()
        .iter()
        .map(|element| (element.partition(), element.offset()))
        .collect()
}

pub fn admin(address: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", address)
        .create()
        .expect("admin config is valid")
}

pub fn create_topic(address: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin = admin(address);
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let results = futures_executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .expect("CreateTopics answered");
    for result in results {
        result.unwrap_or_else(|(topic, error)| panic!("creating {topic} failed: {error}"));
    }
}

pub fn delete_topic(address: &str, name: &str) {
    let admin = admin(address);
    let results = futures_executor::block_on(admin.delete_topics(&[name], &AdminOptions::new()))
        .expect("DeleteTopics answered");
    for result in results {
        result.unwrap_or_else(|(topic, error)| panic!("deleting {topic} failed: {error}"));
    }
}

/// The high watermark of each partition.
pub fn high_watermarks(address: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer = consumer(address, &[]);
    (0..partitions)
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(30))
                .expect("ListOffsets answered")
                .1
        })
        .collect()
}
