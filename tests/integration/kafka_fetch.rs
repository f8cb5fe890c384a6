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
