//! Idempotent producers of the clients users bring, against the real binary
//! (issue 13, design 5.3 items 1–4): kafka-python's default producer,
//! confluent-kafka across repeated kill -9 of the broker, aiokafka and
//! kafkajs. Each client script (in `tests/clients/`) reports what the broker
//! acknowledged; the records are read back with librdkafka and every
//! acknowledged one must be there exactly once, at its offset, in order
//! within its partition; a raw Fetch shows the stored batches carry a
//! producer id, so the client really produced idempotently.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kafka_protocol::messages::FetchRequest;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::protocol::StrBytes;
use sluice::record_batch::{BatchHeader, declared_size};

use crate::broker_process::{BrokerProcess, Launch, free_loopback_address};
use crate::kafka_clients::{self, Record};
use crate::test_clients::{self, Acked, Report};
use crate::wire::Wire;

/// Partitions of the topics the single-run tests write to.
const PARTITIONS: i32 = 3;
/// Records each single-run test sends.
const RECORDS: usize = 300;
/// How long a client script may take to send and flush [`RECORDS`].
const CLIENT_RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Partitions of the kill -9 test's topic (the design's six).
const RESTART_PARTITIONS: i32 = 6;
/// Broker kill -9 and restarts while the producer runs.
const RESTARTS: usize = 5;
/// How long each broker lives, producing, before it is killed.
const BROKER_LIFETIME: Duration = Duration::from_millis(2000);
/// How long the producer runs against no broker before the restart.
const BROKER_DOWN: Duration = Duration::from_millis(300);

/// Every record of `topic`, read with librdkafka from offset 0.
fn read_back(address: &str, topic: &str, partitions: i32) -> Vec<Record> {
    let stored: i64 = kafka_clients::high_watermarks(address, topic, partitions)
        .iter()
        .sum();
    kafka_clients::consume(address, topic, partitions, 0, stored as usize)
}

/// `"<partition>-<sequence>"`, the value every client script writes.
fn sequence_of(value: &str, partition: i32) -> u64 {
    let (written_to, sequence) = value
        .split_once('-')
        .unwrap_or_else(|| panic!("value {value:?} is not <partition>-<sequence>"));
    assert_eq!(
        written_to,
        partition.to_string(),
        "{value:?} read from partition {partition}"
    );
    sequence.parse().expect("the sequence is a number")
}

/// Every acknowledged record is stored exactly once, at the offset it was
/// acknowledged with; within a partition the values come in the order they
/// were sent, and the acknowledged ones have no gaps; nothing is stored that
/// was not acknowledged.
fn assert_acked_stored_exactly_once_in_order(consumed: &[Record], acked: &[Acked]) {
    let mut copies: HashMap<&[u8], Vec<(i32, i64)>> = HashMap::new();
    for record in consumed {
        copies
            .entry(&record.payload)
            .or_default()
            .push((record.partition, record.offset));
    }
    let mut duplicates: Vec<_> = copies
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(value, at)| (String::from_utf8_lossy(value), at))
        .collect();
    duplicates.sort();
    assert!(
        duplicates.is_empty(),
        "{} values stored more than once (value, [(partition, offset)]), first: {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(5)]
    );

    let mut last_sequence: HashMap<i32, (u64, i64)> = HashMap::new();
    for record in consumed {
        let value = String::from_utf8_lossy(&record.payload);
        let sequence = sequence_of(&value, record.partition);
        if let Some((previous, at)) =
            last_sequence.insert(record.partition, (sequence, record.offset))
        {
            assert!(
                sequence > previous,
                "partition {} out of order: {previous} at offset {at}, then {sequence} at offset {}",
                record.partition,
                record.offset
            );
        }
    }

    let stored: HashMap<(i32, i64), &[u8]> = consumed
        .iter()
        .map(|record| ((record.partition, record.offset), record.payload.as_slice()))
        .collect();
    let mut acked_sequences: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for record in acked {
        assert_eq!(
            stored
                .get(&(record.partition, record.offset))
                .map(|value| String::from_utf8_lossy(value)),
            Some(record.value.as_str().into()),
            "acknowledged {:?} missing or replaced at partition {} offset {}",
            record.value,
            record.partition,
            record.offset
        );
        acked_sequences
            .entry(record.partition)
            .or_default()
            .push(sequence_of(&record.value, record.partition));
    }
    for (partition, sequences) in &mut acked_sequences {
        sequences.sort_unstable();
        let expected: Vec<u64> = (0..sequences.len() as u64).collect();
        assert!(
            *sequences == expected,
            "partition {partition}: the acknowledged sequences have gaps or repeats"
        );
    }
    assert_eq!(
        consumed.len(),
        acked.len(),
        "records stored vs acknowledged (nothing failed, so they must match)"
    );
}

/// The header of every batch stored in `topic`, by a raw Fetch from offset 0.
fn stored_batches(address: &str, topic: &str, partitions: i32) -> Vec<(i32, BatchHeader)> {
    let mut wire = Wire::connect(address);
    let mut headers = Vec::new();
    for partition in 0..partitions {
        let mut offset = 0;
        loop {
            let request = FetchRequest::default()
                .with_replica_id((-1).into())
                .with_max_wait_ms(0)
                .with_max_bytes(1 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(partition)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(1 << 20),
                        ]),
                ]);
            let response = wire.call(4, &request);
            let answer = &response.responses[0].partitions[0];
            assert_eq!(
                answer.error_code, 0,
                "Fetch of {topic}/{partition} at {offset}"
            );
            let records = answer.records.clone().unwrap_or_default();
            let mut rest: &[u8] = &records;
            while let Some(size) = declared_size(rest).filter(|size| *size <= rest.len()) {
                let header = BatchHeader::parse(&rest[..size]).expect("a whole batch header");
                offset = header.base_offset + i64::from(header.last_offset_delta) + 1;
                headers.push((partition, header));
                rest = &rest[size..];
            }
            if offset >= answer.high_watermark {
                break;
            }
        }
    }
    headers
}

/// Every batch in `topic` was written by an idempotent producer: it carries
/// a producer id, an epoch and a base sequence.
fn assert_batches_carry_a_producer_id(address: &str, topic: &str, partitions: i32) {
    let batches = stored_batches(address, topic, partitions);
    assert!(!batches.is_empty(), "nothing stored in {topic}");
    for (partition, header) in &batches {
        assert!(
            header.has_producer() && header.producer_epoch >= 0 && header.base_sequence >= 0,
            "partition {partition}: batch at offset {} has producer id {}, epoch {}, base \
             sequence {}: the client did not produce idempotently",
            header.base_offset,
            header.producer_id,
            header.producer_epoch,
            header.base_sequence
        );
    }
}

/// Run a single-run client script (`BOOTSTRAP TOPIC PARTITIONS COUNT`)
/// against a fresh broker and check what it stored.
fn sends_are_stored_exactly_once(
    test: &str,
    topic: &str,
    start: impl FnOnce(&test_clients::Clients, &[&str]) -> test_clients::ClientProcess,
) {
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, topic, PARTITIONS, &[]);
    let partitions = PARTITIONS.to_string();
    let records = RECORDS.to_string();
    let mut client = start(clients, &[&broker.address, topic, &partitions, &records]);
    let report: Report = client.finish(CLIENT_RUN_TIMEOUT);
    report.assert_clean(&client);
    assert_eq!(
        report.acked.len(),
        RECORDS,
        "{}: records acknowledged",
        report.client
    );

    let consumed = read_back(&broker.address, topic, PARTITIONS);
    assert_acked_stored_exactly_once_in_order(&consumed, &report.acked);
    assert_batches_carry_a_producer_id(&broker.address, topic, PARTITIONS);
}

/// Issue 13: kafka-python 3.x's plain `KafkaProducer(bootstrap_servers=...)`
/// is idempotent by default and stopped with "broker does not support
/// InitProducerIdRequest"; now its records are stored once each, in order.
#[test]
fn kafka_python_default_producer_is_idempotent_and_stores_each_record_once() {
    sends_are_stored_exactly_once(
        "kafka_python_default_producer",
        "kafka-python-default",
        |clients, args| clients.python("kafka_python_default_producer.py", args),
    );
}

/// Issue 13: aiokafka's `AIOKafkaProducer(enable_idempotence=True)` sends
/// and every record is stored once, in order.
#[test]
fn aiokafka_idempotent_producer_stores_each_record_once() {
    sends_are_stored_exactly_once(
        "aiokafka_idempotent_producer",
        "aiokafka-idempotent",
        |clients, args| clients.python("aiokafka_idempotent_producer.py", args),
    );
}

/// Issue 13: kafkajs's `producer({ idempotent: true })` sends and every
/// record is stored once, in order.
#[test]
fn kafkajs_idempotent_producer_stores_each_record_once() {
    sends_are_stored_exactly_once(
        "kafkajs_idempotent_producer",
        "kafkajs-idempotent",
        |clients, args| clients.node("kafkajs_idempotent_producer.js", args),
    );
}

/// Issue 13: a confluent-kafka idempotent producer keeps producing to 6
/// partitions while the broker is killed with kill -9 and restarted on the
/// same port 5 times. Batches in flight at a kill are retried with their
/// original sequences; the restarted broker must recognise the ones it had
/// already stored. Afterwards every acknowledged record is stored exactly
/// once and in order per partition, with no gaps.
#[test]
fn confluent_kafka_idempotent_producer_across_kill_9_stores_each_acked_record_once() {
    let test = "confluent_kafka_idempotent_producer_across_kill_9";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    let topic = "confluent-idempotent";
    let dir = tempfile::tempdir().unwrap();
    let address = free_loopback_address();
    let launch = Launch {
        listen: &address,
        ..Launch::default()
    };
    let mut broker = BrokerProcess::start_with(dir.path(), &[], &launch);
    assert_eq!(broker.address, address, "the broker listens where asked");
    kafka_clients::create_topic(&address, topic, RESTART_PARTITIONS, &[]);

    let partitions = RESTART_PARTITIONS.to_string();
    let mut producer = clients.python(
        "confluent_idempotent_producer.py",
        &[&address, topic, &partitions],
    );
    if !producer.wait_for_stderr("first-ack", Duration::from_secs(30)) {
        let report = producer.finish(Duration::from_secs(90));
        report.assert_clean(&producer);
        panic!(
            "no delivery report within 30 s;\n{}",
            producer.stderr_tail()
        );
    }
    let mut stored_at_kill = Vec::with_capacity(RESTARTS);
    for _ in 0..RESTARTS {
        std::thread::sleep(BROKER_LIFETIME);
        let stored: i64 = kafka_clients::high_watermarks(&address, topic, RESTART_PARTITIONS)
            .iter()
            .sum();
        stored_at_kill.push(stored);
        broker.kill9();
        std::thread::sleep(BROKER_DOWN);
        broker = BrokerProcess::start_with(dir.path(), &[], &launch);
    }
    std::thread::sleep(BROKER_LIFETIME);
    let report = producer.finish(Duration::from_secs(90));
    report.assert_clean(&producer);
    assert!(
        stored_at_kill.windows(2).all(|pair| pair[0] < pair[1])
            && stored_at_kill.last() < Some(&(report.acked.len() as i64)),
        "every broker lifetime stores records (stored at each kill: {stored_at_kill:?}, \
         acknowledged in all: {})",
        report.acked.len()
    );

    eprintln!(
        "{}: {} records acknowledged across {RESTARTS} kill -9 restarts (stored at each kill: \
         {stored_at_kill:?})",
        report.client,
        report.acked.len()
    );

    let consumed = read_back(&address, topic, RESTART_PARTITIONS);
    assert_acked_stored_exactly_once_in_order(&consumed, &report.acked);
    assert_batches_carry_a_producer_id(&address, topic, RESTART_PARTITIONS);
    drop(broker);
}
