//! Fetch response details against the real binary, decoded by
//! kafka-protocol.

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{CreateTopicsRequest, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker_process::BrokerProcess;
use crate::kafka_bad_input::{batch, produce_code};
use crate::wire::Wire;

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

/// A Fetch of partitions 0 and 1 of `topic` from offset 0 that does not wait.
fn fetch(topic: &str, isolation_level: i8) -> FetchRequest {
    let partition = |index| {
        FetchPartition::default()
            .with_partition(index)
            .with_fetch_offset(0)
            .with_partition_max_bytes(1 << 20)
    };
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation_level)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![partition(0), partition(1)]),
        ])
}

/// Issue 12: a read_committed Fetch answers every partition with an empty
/// aborted-transactions list (no transaction was ever aborted), and a
/// read_uncommitted one with null, for partitions that were read as well as
/// for ones that do not exist. Reading a partition used to overwrite the
/// list with null.
#[test]
fn read_committed_fetches_carry_an_empty_aborted_transactions_list() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let created = wire.call(
        5,
        &CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(name("committed"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ]),
    );
    assert_eq!(created.topics[0].error_code, 0);
    assert_eq!(produce_code(&mut wire, "committed", 0, batch(2, 10)), 0);

    for version in [4, 12] {
        let committed = wire.call(version, &fetch("committed", 1));
        let [read, missing] = &committed.responses[0].partitions[..] else {
            panic!("two partitions answered");
        };
        assert_eq!(read.error_code, 0);
        assert_eq!(read.high_watermark, 2);
        assert_eq!(
            read.aborted_transactions,
            Some(Vec::new()),
            "v{version}: a partition that was read"
        );
        assert_ne!(missing.error_code, 0, "partition 1 does not exist");
        assert_eq!(missing.aborted_transactions, Some(Vec::new()));

        let uncommitted = wire.call(version, &fetch("committed", 0));
        for partition in &uncommitted.responses[0].partitions {
            assert_eq!(partition.aborted_transactions, None, "v{version}");
        }
    }
}

/// The broker's peak resident memory (`VmHWM`) and its current one, in MiB.
fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|line| line.starts_with(name)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            / 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Bytes of record batches in a Fetch response.
fn batch_bytes(response: &kafka_protocol::messages::FetchResponse) -> usize {
    response
        .responses
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(|partition| {
            partition
                .records
                .as_ref()
                .map_or(0, |records| records.len())
        })
        .sum()
}

/// A Fetch v4 of `topic`-0 from offset 0, listed `times` times, each with
/// `partition_max_bytes` of i32::MAX, and `max_bytes` for the response.
pub fn fetch_repeated(topic: &str, times: usize, max_bytes: i32) -> FetchRequest {
    let partition = FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(i32::MAX);
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_max_bytes(max_bytes)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![partition; times]),
        ])
}

/// Issue 12 (found by a tester): a Fetch that listed one partition 20 000
/// times with `partition_max_bytes` of i32::MAX made the owner shard read
/// every batch of it for every entry before `max_bytes` was applied: 3 GB
/// resident within seconds and the shard stalled. Each owner now stops
/// reading once `max_bytes` is used up (at least one batch is still sent,
/// KIP-74), and a client's `max_bytes` is capped at `kafka.fetch_max_bytes`.
#[test]
fn a_fetch_listing_a_partition_thousands_of_times_reads_at_most_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "shards = 1\n[kafka]\nfetch_max_bytes = 65536\n",
    )
    .unwrap();
    let config = dir.path().join("sluice.toml");
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut wire = Wire::connect(&broker.address);
    for value in 0..2000 {
        assert_eq!(
            produce_code(&mut wire, "many", 0, batch(1, 10 + value % 7)),
            0
        );
    }
    let first_batch = batch(1, 10).len();
    let (_, before_mib) = rss_mib(broker.pid());
    // 4000 x 2000 batches read whole would be 8 million batch descriptors.
    let response = wire.call(4, &fetch_repeated("many", 4000, 1024));
    assert_eq!(response.responses[0].partitions.len(), 4000);
    assert!(
        response.responses[0]
            .partitions
            .iter()
            .all(|partition| partition.error_code == 0 && partition.high_watermark == 2000)
    );
    let sent = batch_bytes(&response);
    assert!(
        (first_batch..=1024 + first_batch).contains(&sent),
        "{sent} bytes of batches for a max_bytes of 1024"
    );
    // A client asking for i32::MAX gets kafka.fetch_max_bytes.
    let response = wire.call(4, &fetch_repeated("many", 4000, i32::MAX));
    let sent = batch_bytes(&response);
    assert!(
        (65536 - first_batch * 2..=65536).contains(&sent),
        "{sent} bytes of batches under a fetch_max_bytes of 65536"
    );
    let (peak_mib, _) = rss_mib(broker.pid());
    assert!(
        peak_mib < before_mib + 64,
        "resident memory peaked at {peak_mib} MiB, from {before_mib} MiB before the fetches"
    );
}

/// CPU time the broker process has used (user + system), from
/// `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    std::time::Duration::from_millis(ticks * 1000 / per_second)
}

/// Issue 12 (found by a tester): a long poll on a partition holding some
/// data but less than `min_bytes` never waited: the owner's "is there
/// data" check saw the data already read, so the request re-read it in a
/// loop until `max_wait_ms`, a core busy for the whole wait and other
/// clients stalled behind it. Now it waits for data past what it read.
#[test]
fn a_long_poll_for_more_than_there_is_waits_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    for _ in 0..10 {
        assert_eq!(produce_code(&mut wire, "quiet", 0, batch(1, 100)), 0);
    }
    let partition = FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1 << 20);
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(3000)
        .with_min_bytes(1 << 20)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name("quiet"))
                .with_partitions(vec![partition]),
        ]);
    let before = cpu_time(broker.pid());
    let started = std::time::Instant::now();
    let response = wire.call(4, &request);
    let waited = started.elapsed();
    let used = cpu_time(broker.pid()) - before;
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    assert!(
        batch_bytes(&response) > 0,
        "the data there is, at the deadline"
    );
    assert!(
        waited >= std::time::Duration::from_millis(2900),
        "{waited:?}"
    );
    // A spinning wait burns about a core for the whole 3 s.
    assert!(
        used < std::time::Duration::from_millis(1000),
        "the broker used {used:?} of CPU during a 3 s long poll"
    );
}

/// Issue 14: a zstd batch sent with Produce v3–v6 was stored; Kafka answers
/// UNSUPPORTED_COMPRESSION_TYPE and stores nothing, and will not send zstd
/// data to a Fetch older than v10 (KIP-110).
#[test]
fn zstd_needs_produce_v7_and_fetch_v10() {
    use kafka_protocol::messages::ProduceRequest;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use sluice::bench::batch::{BatchTemplate, Compression};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    crate::kafka_clients::create_topic(&broker.address, "zstd", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    let zstd = BatchTemplate::new(10, 100, Compression::Zstd, 1)
        .bytes()
        .to_vec();
    let produce = |version: i16, wire: &mut Wire| {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(name("zstd"))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(bytes::Bytes::from(zstd.clone()))),
                    ]),
            ]);
        let response = wire.call(version, &request);
        response.responses[0].partition_responses[0].error_code
    };
    let unsupported = kafka_protocol::ResponseError::UnsupportedCompressionType.code();
    assert_eq!(produce(5, &mut wire), unsupported);
    assert_eq!(produce(7, &mut wire), 0, "stored once, at offset 0");
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name("zstd"))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let old = wire.call(9, &request);
    assert_eq!(old.responses[0].partitions[0].error_code, unsupported);
    let new = wire.call(10, &request);
    let partition = &new.responses[0].partitions[0];
    assert_eq!((partition.error_code, partition.high_watermark), (0, 10));
    assert!(
        partition
            .records
            .as_ref()
            .is_some_and(|records| !records.is_empty())
    );
    broker.stop();
}

/// Issue 14: DeleteRecords (API 21) was missing. It moves the log start:
/// the low watermark answers it, ListOffsets earliest and Fetch follow, -1
/// means the high watermark, and offsets past it, unknown partitions and
/// internal topics get their codes. A clean restart keeps the move.
#[test]
fn delete_records_moves_the_log_start() {
    use crate::kafka_bad_input::{batch, produce_code};
    use kafka_protocol::messages::DeleteRecordsRequest;
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    crate::kafka_clients::create_topic(&broker.address, "trim", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    for _ in 0..5 {
        assert_eq!(produce_code(&mut wire, "trim", 0, batch(2, 10)), 0);
    }
    let delete = |wire: &mut Wire, topic: &str, partition: i32, offset: i64| {
        let response = wire.call(
            2,
            &DeleteRecordsRequest::default()
                .with_timeout_ms(5_000)
                .with_topics(vec![
                    DeleteRecordsTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![
                            DeleteRecordsPartition::default()
                                .with_partition_index(partition)
                                .with_offset(offset),
                        ]),
                ]),
        );
        let partition = &response.topics[0].partitions[0];
        (partition.error_code, partition.low_watermark)
    };
    let out_of_range = kafka_protocol::ResponseError::OffsetOutOfRange.code();
    assert_eq!(delete(&mut wire, "trim", 0, 4), (0, 4));
    assert_eq!(delete(&mut wire, "trim", 0, 2), (0, 4), "never back");
    assert_eq!(delete(&mut wire, "trim", 0, 11).0, out_of_range);
    assert_eq!(
        delete(&mut wire, "trim", 3, 1).0,
        kafka_protocol::ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        delete(&mut wire, "__consumer_offsets", 0, 0).0,
        kafka_protocol::ResponseError::InvalidTopicException.code()
    );
    let fetched = wire.call(12, &fetch("trim", 0));
    assert_eq!(fetched.responses[0].partitions[0].log_start_offset, 4);
    assert_eq!(
        fetched.responses[0].partitions[0].error_code, out_of_range,
        "a fetch below the log start"
    );
    assert_eq!(
        delete(&mut wire, "trim", 0, -1),
        (0, 10),
        "-1: up to the high watermark"
    );
    drop(wire);
    broker.stop();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let fetched = wire.call(12, &fetch("trim", 0));
    assert_eq!(fetched.responses[0].partitions[0].log_start_offset, 10);
    broker.stop();
}
