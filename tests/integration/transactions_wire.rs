//! Transactions against the real binary (issue 13, step 4): librdkafka's
//! transactional producer end to end, and the coordinator's answers at the
//! wire (design section 3.2).

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, BrokerId, EndTxnRequest, FindCoordinatorRequest,
    InitProducerIdRequest, ListOffsetsRequest, ProduceRequest, ProducerId, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::producer::Producer;
use sluice::record_batch::{BatchBuilder, RecordSpec};

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;
use crate::wire::Wire;

const TOPIC: &str = "txn";

fn name(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

pub(crate) fn init(
    wire: &mut Wire,
    version: i16,
    id: &str,
    expected: Option<(i64, i16)>,
) -> (i16, i64, i16) {
    init_with_timeout(wire, version, id, expected, 60_000)
}

fn init_with_timeout(
    wire: &mut Wire,
    version: i16,
    id: &str,
    expected: Option<(i64, i16)>,
    timeout_ms: i32,
) -> (i16, i64, i16) {
    let (producer_id, epoch) = expected.unwrap_or((-1, -1));
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(name(id))))
        .with_transaction_timeout_ms(timeout_ms)
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch);
    let response = wire.call(version, &request);
    (
        response.error_code,
        response.producer_id.0,
        response.producer_epoch,
    )
}

/// `attempt` until it gives an answer, for at most 20 s (panics with
/// `what` after that).
fn retry<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(answer) = attempt() {
            return answer;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the exposition `body` has a sample of `metric` for `label`
/// (`name="value"`) equal to `value`.
fn has_sample(body: &str, metric: &str, label: &str, value: &str) -> bool {
    body.lines().any(|line| {
        line.starts_with(&format!("{metric}{{"))
            && line.contains(label)
            && line.ends_with(&format!(" {value}"))
    })
}

/// InitProducerId, retrying CONCURRENT_TRANSACTIONS as clients do.
fn init_retrying(wire: &mut Wire, id: &str) -> (i64, i16) {
    retry("InitProducerId never succeeded", || {
        let (error, producer_id, epoch) = init(wire, 4, id, None);
        if error != 0 {
            assert_eq!(error, ResponseError::ConcurrentTransactions.code());
        }
        (error == 0).then_some((producer_id, epoch))
    })
}

/// `call`'s code once it is not CONCURRENT_TRANSACTIONS (the previous
/// transaction's completion is still being written), as clients retry.
fn past_concurrent(mut call: impl FnMut() -> i16) -> i16 {
    retry("still CONCURRENT_TRANSACTIONS after 20 s", || {
        let error = call();
        (error != ResponseError::ConcurrentTransactions.code()).then_some(error)
    })
}

pub(crate) fn add_partitions(
    wire: &mut Wire,
    version: i16,
    id: &str,
    (producer_id, epoch): (i64, i16),
    topic: &str,
    partitions: Vec<i32>,
) -> Vec<i16> {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(name(id)))
        .with_v3_and_below_producer_id(ProducerId(producer_id))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(name(topic)))
                .with_partitions(partitions),
        ]);
    let response = wire.call(version, &request);
    response.results_by_topic_v3_and_below[0]
        .results_by_partition
        .iter()
        .map(|partition| partition.partition_error_code)
        .collect()
}

fn end_txn(
    wire: &mut Wire,
    version: i16,
    id: &str,
    (producer_id, epoch): (i64, i16),
    commit: bool,
) -> i16 {
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(name(id)))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    wire.call(version, &request).error_code
}

/// A transactional Produce of one record at `sequence` to `partition`.
fn produce(
    wire: &mut Wire,
    id: &str,
    (producer_id, epoch): (i64, i16),
    partition: i32,
    sequence: i32,
) -> (i16, i64) {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder
        .producer(producer_id, epoch, sequence)
        .transactional();
    builder.push(RecordSpec {
        value: Some(b"in a transaction"),
        ..RecordSpec::default()
    });
    let request = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(name(id))))
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(name(TOPIC)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(Bytes::from(builder.build()))),
                ]),
        ]);
    let mut response = wire.call(9, &request);
    let partition = response.responses.remove(0).partition_responses.remove(0);
    (partition.error_code, partition.base_offset)
}

/// Latest offset of `TOPIC`-`partition` at an isolation level (1: committed).
fn latest(wire: &mut Wire, partition: i32, isolation: i8) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation)
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(name(TOPIC)))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(-1),
                ]),
        ]);
    let mut response = wire.call(5, &request);
    response.topics.remove(0).partitions.remove(0).offset
}

/// Wait until the last stable offset of `TOPIC`-`partition` reaches its
/// high watermark (the markers are written after EndTxn is answered).
fn wait_stable(wire: &mut Wire, partition: i32) -> i64 {
    retry("the LSO never reached the HW", || {
        let (committed, uncommitted) = (latest(wire, partition, 1), latest(wire, partition, 0));
        (committed == uncommitted).then_some(committed)
    })
}

/// Issue 13: librdkafka's transactional producer: a committed transaction
/// is read by a read_committed consumer, an aborted one is not; a
/// read_uncommitted consumer reads both.
#[test]
fn librdkafka_transactions_commit_and_abort_as_read_committed_consumers_see() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 2, &[]);
    let (producer, acks) = kafka_clients::producer(
        &broker.address,
        &[("transactional.id", "rdkafka-txn"), ("linger.ms", "1")],
    );
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init_transactions");
    producer.begin_transaction().unwrap();
    for index in 0..10 {
        let value = format!("committed-{index}");
        kafka_clients::send(
            &producer,
            TOPIC,
            Some(index % 2),
            None,
            value.as_bytes(),
            &[],
        );
    }
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    producer.begin_transaction().unwrap();
    for index in 0..5 {
        let value = format!("aborted-{index}");
        kafka_clients::send(
            &producer,
            TOPIC,
            Some(index % 2),
            None,
            value.as_bytes(),
            &[],
        );
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    producer
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");
    assert_eq!(acks.delivered.lock().unwrap().len(), 15);
    drop(producer);

    let mut committed: Vec<String> = kafka_clients::consume_with(
        &broker.address,
        TOPIC,
        2,
        0,
        10,
        &[("isolation.level", "read_committed")],
    )
    .into_iter()
    .map(|record| String::from_utf8(record.payload).unwrap())
    .collect();
    committed.sort();
    let mut expected: Vec<String> = (0..10).map(|index| format!("committed-{index}")).collect();
    expected.sort();
    assert_eq!(committed, expected);
    let everything = kafka_clients::consume_with(
        &broker.address,
        TOPIC,
        2,
        0,
        15,
        &[("isolation.level", "read_uncommitted")],
    );
    assert_eq!(everything.len(), 15);
    broker.stop();
}

/// Issue 13, design 3.2: the coordinator's answers at the wire.
#[test]
fn the_coordinator_answers_as_kafka_does() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 2, &[]);
    let mut wire = Wire::connect(&broker.address);
    let id = "wire-txn";

    let find = FindCoordinatorRequest::default()
        .with_key_type(1)
        .with_coordinator_keys(vec![name(id), name("")]);
    let found = wire.call(4, &find);
    assert_eq!(found.coordinators[0].error_code, 0);
    assert_eq!(
        found.coordinators[1].error_code,
        ResponseError::InvalidRequest.code()
    );

    let (error, producer_id, epoch) = init(&mut wire, 4, id, None);
    assert_eq!((error, epoch), (0, 0));
    let producer = (producer_id, epoch);
    // A second InitProducerId bumps the epoch and fences the first.
    let (error, same_id, bumped) = init(&mut wire, 4, id, None);
    assert_eq!((error, same_id, bumped), (0, producer_id, 1));
    let stale = producer;
    let producer = (producer_id, 1);
    assert_eq!(
        add_partitions(&mut wire, 3, id, stale, TOPIC, vec![0]),
        vec![ResponseError::ProducerFenced.code()]
    );
    assert_eq!(
        add_partitions(&mut wire, 1, id, stale, TOPIC, vec![0]),
        vec![ResponseError::InvalidProducerEpoch.code()],
        "before KIP-588's versions"
    );
    assert_eq!(
        add_partitions(&mut wire, 3, "unknown-txn", producer, TOPIC, vec![0]),
        vec![ResponseError::InvalidProducerIdMapping.code()]
    );
    assert_eq!(
        add_partitions(&mut wire, 3, id, producer, TOPIC, vec![0, 7]),
        vec![
            ResponseError::OperationNotAttempted.code(),
            ResponseError::UnknownTopicOrPartition.code()
        ]
    );
    assert_eq!(
        end_txn(&mut wire, 3, id, producer, true),
        ResponseError::InvalidTxnState.code(),
        "nothing to end"
    );
    // A transactional batch for a partition not in the transaction.
    assert_eq!(
        produce(&mut wire, id, producer, 0, 0).0,
        ResponseError::InvalidTxnState.code()
    );
    assert_eq!(
        add_partitions(&mut wire, 3, id, producer, TOPIC, vec![0]),
        vec![0]
    );
    assert_eq!(produce(&mut wire, id, producer, 0, 0), (0, 0));
    assert_eq!(
        produce(&mut wire, id, producer, 1, 0).0,
        ResponseError::InvalidTxnState.code()
    );
    // The open transaction holds the last stable offset back.
    assert_eq!((latest(&mut wire, 0, 1), latest(&mut wire, 0, 0)), (0, 1));
    // A new instance fences the open transaction: it is aborted, and the
    // new instance gets the epoch after the abort's.
    assert_eq!(
        init(&mut wire, 4, id, None).0,
        ResponseError::ConcurrentTransactions.code()
    );
    let (fenced_id, fenced_epoch) = init_retrying(&mut wire, id);
    assert_eq!((fenced_id, fenced_epoch), (producer_id, 3));
    assert_eq!(
        wait_stable(&mut wire, 0),
        2,
        "the abort marker is at offset 1"
    );
    assert_eq!(
        produce(&mut wire, id, producer, 0, 1).0,
        ResponseError::InvalidProducerEpoch.code(),
        "the zombie is fenced on the partition"
    );
    // A commit by the new instance, and its retry.
    let producer = (fenced_id, fenced_epoch);
    assert_eq!(
        add_partitions(&mut wire, 3, id, producer, TOPIC, vec![0, 1]),
        vec![0, 0]
    );
    assert_eq!(produce(&mut wire, id, producer, 0, 0), (0, 2));
    assert_eq!(end_txn(&mut wire, 3, id, producer, true), 0);
    assert_eq!(wait_stable(&mut wire, 0), 4);
    assert_eq!(
        wait_stable(&mut wire, 1),
        1,
        "a marker on the added partition without data"
    );
    // Once the commit is complete (CONCURRENT_TRANSACTIONS until then), a
    // retried commit is answered NONE and an abort INVALID_TXN_STATE.
    let retried = past_concurrent(|| end_txn(&mut wire, 3, id, producer, true));
    assert_eq!(retried, 0, "a retried commit");
    assert_eq!(
        end_txn(&mut wire, 3, id, producer, false),
        ResponseError::InvalidTxnState.code()
    );
    drop(wire);
    broker.stop();
}

/// Issue 13, design 3.3: a commit answered just before a kill -9 (the
/// failpoint holds its markers back) takes effect on every partition when
/// the broker restarts.
#[test]
fn a_commit_answered_before_kill_9_is_completed_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 2, &[]);
    broker.stop();
    let mut command = BrokerProcess::command(dir.path(), &[]);
    command.env("SLUICE_FAILPOINT", "txn_before_markers");
    let broker = BrokerProcess::start_command(command);
    let mut wire = Wire::connect(&broker.address);
    let id = "crash-txn";
    let (error, producer_id, epoch) = init(&mut wire, 4, id, None);
    assert_eq!(error, 0);
    let producer = (producer_id, epoch);
    assert_eq!(
        add_partitions(&mut wire, 3, id, producer, TOPIC, vec![0, 1]),
        vec![0, 0]
    );
    assert_eq!(produce(&mut wire, id, producer, 0, 0), (0, 0));
    assert_eq!(end_txn(&mut wire, 3, id, producer, true), 0);
    assert!(broker.wait_for_log("failpoint txn_before_markers"));
    assert_eq!(latest(&mut wire, 0, 1), 0, "no marker yet");
    drop(wire);
    broker.kill9();

    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(
        wait_stable(&mut wire, 0),
        2,
        "the commit marker follows the record"
    );
    assert_eq!(wait_stable(&mut wire, 1), 1);
    let read = kafka_clients::consume_with(
        &broker.address,
        TOPIC,
        1,
        0,
        1,
        &[("isolation.level", "read_committed")],
    );
    assert_eq!(read[0].payload, b"in a transaction");
    // The id is usable again: its next epoch.
    assert_eq!(init_retrying(&mut wire, id), (producer_id, epoch + 1));
    drop(wire);
    broker.stop();
}

/// Issue 13, design 3.8: a transaction left open by a producer that went
/// away is aborted once its timeout passes, also across a kill -9 of the
/// broker, and its producer is fenced.
#[test]
fn an_abandoned_transaction_is_aborted_after_its_timeout_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("txn.toml");
    std::fs::write(&config, "[transactions]\nabort_check_interval_ms = 100\n").unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let broker = BrokerProcess::start(&data, &args);
    kafka_clients::create_topic(&broker.address, TOPIC, 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    let id = "abandoned-txn";
    let (error, producer_id, epoch) = init_with_timeout(&mut wire, 4, id, None, 5000);
    assert_eq!(error, 0);
    let producer = (producer_id, epoch);
    assert_eq!(
        add_partitions(&mut wire, 3, id, producer, TOPIC, vec![0]),
        vec![0]
    );
    assert_eq!(produce(&mut wire, id, producer, 0, 0), (0, 0));
    drop(wire);
    broker.kill9();

    let broker = BrokerProcess::start(&data, &args);
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(latest(&mut wire, 0, 1), 0, "still open after the restart");
    assert_eq!(
        wait_stable(&mut wire, 0),
        2,
        "aborted: its marker is at offset 1"
    );
    assert!(broker.wait_for_log("aborting a transaction open longer than its timeout"));
    assert_eq!(
        produce(&mut wire, id, producer, 0, 1).0,
        ResponseError::InvalidProducerEpoch.code(),
        "the abandoned producer is fenced"
    );
    drop(wire);
    broker.stop();
}

/// AddOffsetsToTxn, retrying CONCURRENT_TRANSACTIONS (the previous
/// transaction's completion is still being written) as clients do.
fn add_offsets(wire: &mut Wire, id: &str, (producer_id, epoch): (i64, i16), group: &str) -> i16 {
    let request = kafka_protocol::messages::AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(name(id)))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_group_id(kafka_protocol::messages::GroupId(name(group)));
    past_concurrent(|| wire.call(3, &request).error_code)
}

fn txn_commit_offset(
    wire: &mut Wire,
    id: &str,
    (producer_id, epoch): (i64, i16),
    group: &str,
    offset: i64,
) -> i16 {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    let request = kafka_protocol::messages::TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(name(id)))
        .with_group_id(kafka_protocol::messages::GroupId(name(group)))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_generation_id(-1)
        .with_topics(vec![
            TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(name(TOPIC)))
                .with_partitions(vec![
                    TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset)
                        .with_committed_metadata(Some(name(""))),
                ]),
        ]);
    let response = wire.call(3, &request);
    response.topics[0].partitions[0].error_code
}

/// (error code, committed offset) of `TOPIC`-0 for `group`.
fn fetch_offset(wire: &mut Wire, group: &str, require_stable: bool) -> (i16, i64) {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let request = kafka_protocol::messages::OffsetFetchRequest::default()
        .with_group_id(kafka_protocol::messages::GroupId(name(group)))
        .with_require_stable(require_stable)
        .with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(TopicName(name(TOPIC)))
                .with_partition_indexes(vec![0]),
        ]));
    let response = wire.call(7, &request);
    let partition = &response.topics[0].partitions[0];
    (partition.error_code, partition.committed_offset)
}

/// Wait until the group's committed offset for `TOPIC`-0 is stable and
/// return it.
fn wait_offset_stable(wire: &mut Wire, group: &str) -> i64 {
    retry("the offsets never became stable", || {
        let (error, offset) = fetch_offset(wire, group, true);
        if error != 0 {
            assert_eq!(error, ResponseError::UnstableOffsetCommit.code());
        }
        (error == 0).then_some(offset)
    })
}

/// Issue 13, design 3.7: offsets committed in a transaction are invisible
/// (UNSTABLE_OFFSET_COMMIT with `require_stable`) until it commits, gone if
/// it aborts, and a commit answered before a kill -9 still applies them.
#[test]
fn transactional_offsets_follow_their_transaction_even_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    let (id, group) = ("offsets-txn", "ctp-group");
    let (error, producer_id, epoch) = init(&mut wire, 4, id, None);
    assert_eq!(error, 0);
    let producer = (producer_id, epoch);
    assert_eq!(
        txn_commit_offset(&mut wire, id, producer, group, 5),
        ResponseError::InvalidTxnState.code(),
        "the group's partition is not in the transaction yet"
    );
    assert_eq!(add_offsets(&mut wire, id, producer, group), 0);
    assert_eq!(txn_commit_offset(&mut wire, id, producer, group, 5), 0);
    assert_eq!(
        fetch_offset(&mut wire, group, false),
        (0, -1),
        "not visible yet"
    );
    assert_eq!(
        fetch_offset(&mut wire, group, true).0,
        ResponseError::UnstableOffsetCommit.code()
    );
    assert_eq!(end_txn(&mut wire, 3, id, producer, true), 0);
    assert_eq!(wait_offset_stable(&mut wire, group), 5);

    // An aborted transaction's offsets vanish.
    assert_eq!(add_offsets(&mut wire, id, producer, group), 0);
    assert_eq!(txn_commit_offset(&mut wire, id, producer, group, 9), 0);
    assert_eq!(end_txn(&mut wire, 3, id, producer, false), 0);
    assert_eq!(wait_offset_stable(&mut wire, group), 5);
    // The abort is complete (its last record written) once the id answers
    // InitProducerId again: the restart below holds markers back.
    init_retrying(&mut wire, id);
    drop(wire);
    broker.stop();

    // A commit answered, then kill -9 before its markers.
    let mut command = BrokerProcess::command(dir.path(), &[]);
    command.env("SLUICE_FAILPOINT", "txn_before_markers");
    let broker = BrokerProcess::start_command(command);
    let mut wire = Wire::connect(&broker.address);
    let producer = init_retrying(&mut wire, id);
    assert_eq!(add_offsets(&mut wire, id, producer, group), 0);
    assert_eq!(txn_commit_offset(&mut wire, id, producer, group, 12), 0);
    assert_eq!(end_txn(&mut wire, 3, id, producer, true), 0);
    assert!(broker.wait_for_log("failpoint txn_before_markers"));
    assert_eq!(fetch_offset(&mut wire, group, false), (0, 5));
    drop(wire);
    broker.kill9();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(wait_offset_stable(&mut wire, group), 12);
    drop(wire);
    broker.stop();
}

/// Issue 13: librdkafka's consume-transform-produce with
/// `send_offsets_to_transaction`: the group's committed offset moves with
/// committed transactions only, and read_committed readers of the output
/// see only the committed transactions' records.
#[test]
fn librdkafka_send_offsets_to_transaction_commits_offsets_with_the_transaction() {
    use rdkafka::TopicPartitionList;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 1, &[]);
    kafka_clients::create_topic(&broker.address, "txn-out", 1, &[]);
    let group = "rdkafka-ctp";
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (producer, _acks) = kafka_clients::producer(
        &broker.address,
        &[("transactional.id", "rdkafka-ctp"), ("linger.ms", "1")],
    );
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    let mut wire = Wire::connect(&broker.address);
    for (round, commit) in [(1, true), (2, false), (3, true)] {
        producer.begin_transaction().unwrap();
        let value = format!("output-{round}");
        kafka_clients::send(&producer, "txn-out", Some(0), None, value.as_bytes(), &[]);
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(TOPIC, 0, rdkafka::Offset::Offset(round * 10))
            .unwrap();
        let metadata = consumer.group_metadata().expect("group metadata");
        producer
            .send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))
            .expect("send_offsets_to_transaction");
        producer.flush(Duration::from_secs(30)).unwrap();
        if commit {
            producer
                .commit_transaction(Duration::from_secs(30))
                .unwrap();
        } else {
            producer.abort_transaction(Duration::from_secs(30)).unwrap();
        }
        let expected = if commit { round * 10 } else { (round - 1) * 10 };
        assert_eq!(
            wait_offset_stable(&mut wire, group),
            expected,
            "round {round}"
        );
    }
    let read: Vec<String> = kafka_clients::consume_with(
        &broker.address,
        "txn-out",
        1,
        0,
        2,
        &[("isolation.level", "read_committed")],
    )
    .into_iter()
    .map(|record| String::from_utf8(record.payload).unwrap())
    .collect();
    assert_eq!(read, vec!["output-1", "output-3"]);
    drop(wire);
    broker.stop();
}

/// Issue 13, design 3.8: an operator sees a hanging transaction
/// (DescribeProducers, `sluice transactions list|describe`) and aborts it
/// (`sluice transactions abort`), which fences its producer.
#[test]
fn an_operator_finds_and_aborts_an_open_transaction() {
    use crate::consumer_groups::sluice_admin;
    use kafka_protocol::messages::DescribeProducersRequest;
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    let id = "hanging-txn";
    let (error, producer_id, epoch) = init(&mut wire, 4, id, None);
    assert_eq!(error, 0);
    let producer = (producer_id, epoch);
    assert_eq!(
        add_partitions(&mut wire, 3, id, producer, TOPIC, vec![0]),
        vec![0]
    );
    assert_eq!(produce(&mut wire, id, producer, 0, 0), (0, 0));

    let described = wire.call(
        0,
        &DescribeProducersRequest::default().with_topics(vec![
            TopicRequest::default()
                .with_name(TopicName(name(TOPIC)))
                .with_partition_indexes(vec![0, 9]),
        ]),
    );
    let partitions = &described.topics[0].partitions;
    let active = &partitions[0].active_producers[0];
    assert_eq!(
        (
            active.producer_id.0,
            active.producer_epoch,
            active.last_sequence,
            active.current_txn_start_offset
        ),
        (producer_id, 0, 0, 0)
    );
    assert_eq!(
        partitions[1].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );

    // Operators see it in the metrics too.
    let topic_label = format!("topic=\"{TOPIC}\"");
    retry("no transaction metrics", || {
        let (_, body) = crate::metrics::get(&broker.metrics, "/metrics");
        (has_sample(&body, "sluice_partition_lso_lag", &topic_label, "1")
            && has_sample(&body, "sluice_transactions", "state=\"Ongoing\"", "1"))
        .then_some(())
    });
    let (ok, out) = sluice_admin(
        &broker.address,
        &["transactions", "list", "--state", "Ongoing"],
    );
    assert!(ok && out.contains(id) && out.contains("Ongoing"), "{out}");
    let (ok, out) = sluice_admin(
        &broker.address,
        &["transactions", "list", "--state", "Bogus"],
    );
    assert!(!ok && out.contains("unknown state Bogus"), "{out}");
    let (ok, out) = sluice_admin(&broker.address, &["transactions", "describe", id]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Ongoing") && out.contains(&producer_id.to_string()),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|line| line.starts_with(TOPIC) && line.trim_end().ends_with(" 0")),
        "the partition's open-since offset: {out}"
    );
    let (ok, out) = sluice_admin(&broker.address, &["transactions", "describe", "nobody"]);
    assert!(!ok && out.contains("does not exist"), "{out}");

    let (ok, out) = sluice_admin(&broker.address, &["transactions", "abort", id]);
    assert!(ok && out.contains("fenced transactional id"), "{out}");
    assert_eq!(
        wait_stable(&mut wire, 0),
        2,
        "aborted: its marker is at offset 1"
    );
    assert_eq!(
        produce(&mut wire, id, producer, 0, 1).0,
        ResponseError::InvalidProducerEpoch.code(),
        "the hanging producer is fenced"
    );
    let (ok, out) = sluice_admin(&broker.address, &["transactions", "list"]);
    assert!(ok && out.contains(id) && out.contains("Empty"), "{out}");
    let (_, body) = crate::metrics::get(&broker.metrics, "/metrics");
    assert!(
        body.lines()
            .any(|line| line.starts_with("sluice_transaction_markers_total{")
                && line.contains("result=\"abort\"")),
        "{body}"
    );
    // The lag gauge comes back to 0 (found by the new-user trial: it kept
    // its last value).
    retry("the LSO lag never returned to 0", || {
        let (_, body) = crate::metrics::get(&broker.metrics, "/metrics");
        has_sample(&body, "sluice_partition_lso_lag", &topic_label, "0").then_some(())
    });
    drop(wire);
    broker.stop();
}

/// Issue 13, found by the breaker: a 32 KiB+ transactional id aborted the
/// broker; a transactional batch at a newer epoch, under any transactional
/// id, skipped verification and left read_committed stuck for good; a
/// producer id forged near `i64::MAX` and a restart stopped InitProducerId;
/// an AddPartitionsToTxn naming millions of partitions cost gigabytes.
#[test]
fn hostile_transaction_requests_are_refused_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 1, &[]);
    let mut wire = Wire::connect(&broker.address);

    let long_id = "t".repeat(32 * 1024);
    assert_eq!(
        init(&mut wire, 3, &long_id, None).0,
        ResponseError::InvalidRequest.code()
    );

    let id = "victim-txn";
    let (error, producer_id, epoch) = init(&mut wire, 4, id, None);
    assert_eq!(error, 0);
    let victim = (producer_id, epoch);
    assert_eq!(
        add_partitions(&mut wire, 3, id, victim, TOPIC, vec![0]),
        vec![0]
    );
    assert_eq!(produce(&mut wire, id, victim, 0, 0), (0, 0));
    let injected = produce(&mut wire, "whatever", (producer_id, i16::MAX), 0, 0);
    assert_ne!(injected.0, 0, "the injected batch is refused");
    assert_eq!(end_txn(&mut wire, 3, id, victim, true), 0);
    assert_eq!(
        wait_stable(&mut wire, 0),
        2,
        "the victim's commit is readable"
    );

    let forged = {
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        builder.producer(i64::MAX - 1, 0, 0);
        builder.push(RecordSpec {
            value: Some(b"forged"),
            ..RecordSpec::default()
        });
        builder.build()
    };
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(name(TOPIC)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(forged))),
                ]),
        ]);
    let response = wire.call(9, &request);
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);

    let mut too_many = Wire::connect(&broker.address);
    too_many.send(
        3,
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(name(id)))
            .with_v3_and_below_producer_id(ProducerId(producer_id))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![
                AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(name(TOPIC)))
                    .with_partitions(vec![0; 10_001]),
            ]),
    );
    assert!(
        too_many.closed_by_broker(),
        "a request naming 10001 partitions is closed"
    );
    drop(wire);
    broker.kill9();

    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let response = wire.call(4, &request);
    assert_eq!(
        response.error_code, 0,
        "InitProducerId still works after the forged id"
    );
    assert!(broker.log_contains("a client stamped it without InitProducerId"));
    drop(wire);
    broker.stop();
}
