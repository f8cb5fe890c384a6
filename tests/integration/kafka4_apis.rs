//! The Kafka 4 admin APIs and versions of issue 14: DescribeTopicPartitions
//! (API 75) paging, DescribeLogDirs (API 35) sizes and filesystem totals,
//! ListOffsets 8–10's special timestamps, and Produce 12's implicit add to
//! a transaction, through raw requests (`wire.rs`) and kafka-python 3's
//! admin client.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::describe_log_dirs_response::DescribeLogDirsResult;
use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DescribeLogDirsRequest, DescribeTopicPartitionsRequest,
    DescribeTopicPartitionsResponse, EndTxnRequest, InitProducerIdRequest, ListOffsetsRequest,
    ProduceRequest, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use serde_json::Value;
use sluice::record_batch::{BatchBuilder, RecordSpec};

use crate::broker_process::BrokerProcess;
use crate::kafka_bad_input::{batch, produce_code};
use crate::test_clients;
use crate::topic_ids::create;
use crate::wire::Wire;

/// Every operation a topic supports, as Kafka without an authorizer
/// reports them (READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE,
/// DESCRIBE_CONFIGS, ALTER_CONFIGS).
const TOPIC_OPERATIONS_ALL: i32 = 0b1101_1111_1000;

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn describe_topic_partitions(
    wire: &mut Wire,
    topics: &[&str],
    limit: i32,
    cursor: Option<(String, i32)>,
) -> DescribeTopicPartitionsResponse {
    let request = DescribeTopicPartitionsRequest::default()
        .with_topics(
            topics
                .iter()
                .map(|topic| TopicRequest::default().with_name(name(topic)))
                .collect(),
        )
        .with_response_partition_limit(limit)
        .with_cursor(cursor.map(|(topic, partition)| {
            Cursor::default()
                .with_topic_name(name(&topic))
                .with_partition_index(partition)
        }));
    wire.call(0, &request)
}

/// Issue 14: DescribeTopicPartitions pages through 3 topics of 3, 2 and 4
/// partitions with a limit of 2 partitions per response, following
/// `next_cursor` until it is null: every partition comes exactly once, in
/// order, with the topic's id, this broker as leader, replica and ISR, and
/// every topic operation authorized; a topic that does not exist gets
/// UNKNOWN_TOPIC_OR_PARTITION and a cursor outside the topics asked for
/// INVALID_REQUEST.
#[test]
fn describe_topic_partitions_pages_through_every_partition_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let mut ids = BTreeMap::new();
    for (topic, partitions) in [("paged-b", 2), ("paged-a", 3), ("paged-c", 4)] {
        ids.insert(topic.to_owned(), create(&mut wire, topic, partitions));
    }
    let asked = ["paged-c", "paged-nope", "paged-a", "paged-b"];
    let mut cursor = None;
    let mut seen = Vec::new();
    let mut missing = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "the cursor must reach the end");
        let response = describe_topic_partitions(&mut wire, &asked, 2, cursor.take());
        let mut in_page = 0;
        for topic in &response.topics {
            let topic_name = topic.name.as_ref().unwrap().0.to_string();
            assert_eq!(topic.topic_authorized_operations, TOPIC_OPERATIONS_ALL);
            if topic.error_code != 0 {
                missing.push((topic_name, topic.error_code));
                continue;
            }
            assert_eq!(topic.topic_id, ids[&topic_name], "{topic_name}");
            assert!(!topic.is_internal);
            for partition in &topic.partitions {
                assert_eq!(partition.leader_id, partition.replica_nodes[0]);
                assert_eq!(partition.isr_nodes, partition.replica_nodes);
                assert_eq!(partition.leader_epoch, 0);
                seen.push((topic_name.clone(), partition.partition_index));
                in_page += 1;
            }
        }
        assert!(in_page <= 2, "page {pages} holds {in_page} partitions");
        match response.next_cursor {
            Some(next) => cursor = Some((next.topic_name.0.to_string(), next.partition_index)),
            None => break,
        }
    }
    let expected: Vec<(String, i32)> = [("paged-a", 3), ("paged-b", 2), ("paged-c", 4)]
        .iter()
        .flat_map(|&(topic, count)| (0..count).map(move |index| (topic.to_owned(), index)))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 5, "9 partitions at 2 a page");
    assert_eq!(
        missing,
        vec![(
            "paged-nope".to_owned(),
            ResponseError::UnknownTopicOrPartition.code()
        )]
    );

    let refused =
        describe_topic_partitions(&mut wire, &["paged-a"], 2, Some(("paged-b".to_owned(), 0)));
    assert_eq!(
        refused.topics[0].error_code,
        ResponseError::InvalidRequest.code()
    );
    // With no topics named, every topic is described, internal ones too.
    let all = describe_topic_partitions(&mut wire, &[], 2000, None);
    assert!(all.next_cursor.is_none());
    assert!(
        all.topics
            .iter()
            .any(|topic| topic.is_internal && topic.name == Some(name("__consumer_offsets")))
    );
}

fn describe_log_dirs(
    wire: &mut Wire,
    version: i16,
    topics: Option<Vec<(&str, Vec<i32>)>>,
) -> Vec<DescribeLogDirsResult> {
    let request = DescribeLogDirsRequest::default().with_topics(topics.map(|topics| {
        topics
            .into_iter()
            .map(|(topic, partitions)| {
                DescribableLogDirTopic::default()
                    .with_topic(name(topic))
                    .with_partitions(partitions)
            })
            .collect()
    }));
    let response = wire.call(version, &request);
    assert_eq!(response.error_code, 0);
    response.results
}

/// (topic, partition) -> size, over every log dir; each partition must
/// appear in one dir only.
fn sizes(results: &[DescribeLogDirsResult]) -> BTreeMap<(String, i32), i64> {
    let mut sizes = BTreeMap::new();
    for dir in results {
        assert_eq!(dir.error_code, 0, "{dir:?}");
        for topic in &dir.topics {
            for partition in &topic.partitions {
                assert_eq!((partition.offset_lag, partition.is_future_key), (0, false));
                let key = (topic.name.0.to_string(), partition.partition_index);
                let earlier = sizes.insert(key, partition.partition_size);
                assert!(earlier.is_none(), "a partition lives in one log dir");
            }
        }
    }
    sizes
}

fn delete_records(wire: &mut Wire, topic: &str, partition: i32, offset: i64) {
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            DeleteRecordsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    DeleteRecordsPartition::default()
                        .with_partition_index(partition)
                        .with_offset(offset),
                ]),
        ]);
    let response = wire.call(2, &request);
    assert_eq!(response.topics[0].partitions[0].error_code, 0);
}

/// Issue 14: DescribeLogDirs reports each shard's directory (absolute,
/// `shard-<n>`) with the filesystem's total and usable bytes (v4); a
/// partition's size is the bytes of its batches, growing with each batch
/// produced and shrinking when DeleteRecords moves its log start past one;
/// only the partitions asked for that exist are reported.
#[test]
fn describe_log_dirs_reports_shard_dirs_and_partition_sizes_that_follow_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let every = describe_log_dirs(&mut wire, 4, None);
    assert_eq!(every.len(), 2, "one log dir per shard (the broker runs 2)");
    for (index, log_dir) in every.iter().enumerate() {
        let path = std::path::Path::new(log_dir.log_dir.as_str());
        assert!(path.is_absolute() && path.is_dir(), "{path:?}");
        assert!(path.ends_with(format!("shard-{index}")), "{path:?}");
        assert!(log_dir.total_bytes > 0, "{log_dir:?}");
        assert!((0..=log_dir.total_bytes).contains(&log_dir.usable_bytes));
    }
    assert!(
        sizes(&every)
            .keys()
            .any(|(topic, _)| topic == "__consumer_offsets"),
        "null topics: every partition"
    );

    create(&mut wire, "sized", 2);
    let asked = || Some(vec![("sized", vec![0, 1, 9]), ("sized-nope", vec![0])]);
    let empty = sizes(&describe_log_dirs(&mut wire, 4, asked()));
    let key = |index: i32| ("sized".to_owned(), index);
    assert_eq!(empty, BTreeMap::from([(key(0), 0), (key(1), 0)]));

    let first = batch(10, 100);
    let second = batch(3, 50);
    let (first_len, second_len) = (first.len() as i64, second.len() as i64);
    assert_eq!(produce_code(&mut wire, "sized", 0, first), 0);
    let one = sizes(&describe_log_dirs(&mut wire, 4, asked()));
    assert_eq!((one[&key(0)], one[&key(1)]), (first_len, 0));
    assert_eq!(produce_code(&mut wire, "sized", 0, second), 0);
    let two = sizes(&describe_log_dirs(&mut wire, 4, asked()));
    assert_eq!(two[&key(0)], first_len + second_len);
    // v1: the same sizes, without the filesystem's totals.
    let old = describe_log_dirs(&mut wire, 1, asked());
    assert_eq!(sizes(&old), two);
    assert!(old.iter().all(|dir| dir.total_bytes == -1));

    delete_records(&mut wire, "sized", 0, 10);
    let trimmed = sizes(&describe_log_dirs(&mut wire, 4, asked()));
    assert_eq!(
        trimmed[&key(0)],
        second_len,
        "the first batch is below the log start"
    );
}

fn list_offsets(
    wire: &mut Wire,
    version: i16,
    partition: i32,
    timestamp: i64,
) -> ListOffsetsPartitionResponse {
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(name("listed"))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(timestamp),
                ]),
        ]);
    let mut response = wire.call(version, &request);
    response.topics[0].partitions.remove(0)
}

/// Issue 14: ListOffsets answers EARLIEST_LOCAL (-4, v8+) with the log
/// start offset (the local log is the whole log), LATEST_TIERED (-5, v9+)
/// with offset -1 and leader epoch -1 (nothing is tiered), and
/// UNSUPPORTED_VERSION for a special timestamp its version does not define,
/// as Kafka does; v10 serves every one of them.
#[test]
fn list_offsets_answers_earliest_local_and_latest_tiered_from_their_versions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    create(&mut wire, "listed", 1);
    assert_eq!(produce_code(&mut wire, "listed", 0, batch(2, 8)), 0);
    assert_eq!(produce_code(&mut wire, "listed", 0, batch(3, 8)), 0);
    delete_records(&mut wire, "listed", 0, 2);
    let unsupported = ResponseError::UnsupportedVersion.code();
    let answer = |response: ListOffsetsPartitionResponse| {
        (
            response.error_code,
            response.offset,
            response.timestamp,
            response.leader_epoch,
        )
    };
    for version in [8, 9, 10] {
        assert_eq!(
            answer(list_offsets(&mut wire, version, 0, -4)),
            (0, 2, -1, 0),
            "v{version}: earliest local is the log start"
        );
        assert_eq!(answer(list_offsets(&mut wire, version, 0, -2)).1, 2);
        assert_eq!(answer(list_offsets(&mut wire, version, 0, -1)).1, 5);
    }
    for version in [9, 10] {
        assert_eq!(
            answer(list_offsets(&mut wire, version, 0, -5)),
            (0, -1, -1, -1),
            "v{version}: nothing is tiered"
        );
    }
    assert_eq!(list_offsets(&mut wire, 7, 0, -4).error_code, unsupported);
    assert_eq!(list_offsets(&mut wire, 8, 0, -5).error_code, unsupported);
    assert_eq!(list_offsets(&mut wire, 10, 0, -6).error_code, unsupported);
    assert_eq!(list_offsets(&mut wire, 6, 0, -3).error_code, unsupported);
    assert_eq!(
        list_offsets(&mut wire, 9, 4, -5).error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

/// Issue 14: kafka-python 3's admin client, which negotiates the newest
/// versions, pages through DescribeTopicPartitions with its cursor,
/// describes log dirs (v4) with sizes that count what it produced,
/// describes a topic by id (Metadata v12+) and deletes one by id
/// (DeleteTopics v6).
#[test]
fn kafka_python_admin_uses_topic_ids_paging_and_log_dirs() {
    let Some(clients) =
        test_clients::installed("kafka_python_admin_uses_topic_ids_paging_and_log_dirs")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut script = clients.python("kafka_python_kafka4_admin.py", &[&broker.address, "py4"]);
    let report: Value = script.finish_as(Duration::from_secs(120));
    assert!(
        report["error"].is_null(),
        "{report}\n{}",
        script.stderr_tail()
    );
    let seen: Vec<(String, i64)> = report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|page| page.as_array().unwrap().iter())
        .map(|entry| {
            (
                entry[0].as_str().unwrap().to_owned(),
                entry[1].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = [("py4-a", 3), ("py4-b", 2), ("py4-c", 4)]
        .iter()
        .flat_map(|&(topic, count)| (0..count).map(move |index| (topic.to_owned(), index)))
        .collect();
    assert_eq!(seen, expected, "{report}");
    assert!(
        report["pages"].as_array().unwrap().len() >= 5,
        "limit 2: {report}"
    );
    assert!(report["log_dir_bytes"].as_i64().unwrap() > 0, "{report}");
    assert!(
        report["log_dir_total_bytes"].as_i64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["by_id"], "py4-b", "{report}");
    assert_eq!(report["deleted_code"], 0, "{report}");
    assert_eq!(report["after_delete"], false, "{report}");
}

/// A transactional Produce of one record to `txn4`-`partition` at
/// `version`, without AddPartitionsToTxn first; returns its error code.
fn produce_transactional(
    wire: &mut Wire,
    version: i16,
    (producer_id, epoch): (i64, i16),
    partition: i32,
    sequence: i32,
) -> i16 {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder
        .producer(producer_id, epoch, sequence)
        .transactional();
    builder.push(RecordSpec {
        value: Some(b"added by the broker"),
        ..RecordSpec::default()
    });
    let request = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(TXN_ID))))
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(name("txn4"))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(builder.build().into())),
                ]),
        ]);
    let response = wire.call(version, &request);
    response.responses[0].partition_responses[0].error_code
}

const TXN_ID: &str = "implicit-add";

/// The latest offset of `txn4`-`partition` for read_committed (1) or
/// read_uncommitted (0) consumers.
fn latest(wire: &mut Wire, partition: i32, isolation: i8) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_isolation_level(isolation)
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(name("txn4"))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(-1),
                ]),
        ]);
    let mut response = wire.call(10, &request);
    response.topics.remove(0).partitions.remove(0).offset
}

/// `call` until it answers something other than CONCURRENT_TRANSACTIONS
/// (a previous step still being written), for at most 20 s.
fn past_concurrent(mut call: impl FnMut() -> i16) -> i16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let code = call();
        if code != ResponseError::ConcurrentTransactions.code() || Instant::now() > deadline {
            return code;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 14: from Produce v12 (KIP-890 part 2) a transactional batch adds
/// its partition to the producer's transaction itself: v11 without
/// AddPartitionsToTxn gets INVALID_TXN_STATE, v12 is stored, and the commit
/// then writes its marker on both partitions v12 wrote to, so
/// read_committed consumers read them.
#[test]
fn produce_v12_adds_its_partition_to_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    create(&mut wire, "txn4", 2);
    let init = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(TXN_ID))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let producer = {
        let response = wire.call(4, &init);
        assert_eq!(response.error_code, 0);
        (response.producer_id.0, response.producer_epoch)
    };
    assert_eq!(
        produce_transactional(&mut wire, 11, producer, 0, 0),
        ResponseError::InvalidTxnState.code(),
        "v11 only checks that the partition is in the transaction"
    );
    assert_eq!(produce_transactional(&mut wire, 12, producer, 0, 0), 0);
    assert_eq!(produce_transactional(&mut wire, 12, producer, 1, 0), 0);
    let end = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(StrBytes::from_static_str(TXN_ID)))
        .with_producer_id(ProducerId(producer.0))
        .with_producer_epoch(producer.1)
        .with_committed(true);
    assert_eq!(past_concurrent(|| wire.call(3, &end).error_code), 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    for partition in [0, 1] {
        // The record and the commit marker, both stable.
        while latest(&mut wire, partition, 1) != 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            (
                latest(&mut wire, partition, 1),
                latest(&mut wire, partition, 0)
            ),
            (2, 2),
            "partition {partition} was in the committed transaction"
        );
    }
}
