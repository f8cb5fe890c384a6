//! KIP-430 authorized operations (issue 14, librdkafka test 0081): Sluice
//! has no authorizer, so, like a Kafka broker without one, it answers every
//! operation a resource type supports when a client asks, and Kafka's
//! "not requested" value (`i32::MIN`) when it does not.

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;
use crate::wire::Wire;

/// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS,
/// ALTER_CONFIGS as bits of Kafka's AclOperation codes (3-8, 10, 11).
const TOPIC_OPERATIONS: i32 = 0b1101_1111_1000;
/// CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS,
/// ALTER_CONFIGS, IDEMPOTENT_WRITE.
const CLUSTER_OPERATIONS: i32 = 0b1_1111_1010_0000;
/// READ, DESCRIBE, DELETE.
const GROUP_OPERATIONS: i32 = 0b1_0100_1000;
const NOT_REQUESTED: i32 = i32::MIN;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn metadata(wire: &mut Wire, topic: &str, include: bool) -> MetadataResponse {
    wire.call(
        10,
        &MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(text(topic).into())),
            ]))
            .with_include_cluster_authorized_operations(include)
            .with_include_topic_authorized_operations(include),
    )
}

#[test]
fn authorized_operations_are_the_full_sets_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, "ops", 2, &[]);
    let mut wire = Wire::connect(&broker.address);

    let asked = metadata(&mut wire, "ops", true);
    assert_eq!(asked.topics[0].error_code, 0);
    assert_eq!(
        asked.topics[0].topic_authorized_operations,
        TOPIC_OPERATIONS
    );
    assert_eq!(asked.cluster_authorized_operations, CLUSTER_OPERATIONS);
    let not_asked = metadata(&mut wire, "ops", false);
    assert_eq!(
        not_asked.topics[0].topic_authorized_operations,
        NOT_REQUESTED
    );
    assert_eq!(not_asked.cluster_authorized_operations, NOT_REQUESTED);

    for (include, expected) in [(true, CLUSTER_OPERATIONS), (false, NOT_REQUESTED)] {
        let cluster: DescribeClusterResponse = wire.call(
            0,
            &DescribeClusterRequest::default().with_include_cluster_authorized_operations(include),
        );
        assert_eq!(cluster.error_code, 0);
        assert_eq!(cluster.cluster_authorized_operations, expected);
    }

    // An empty group is described (state Empty) with the group's operations.
    let committed: OffsetCommitResponse = wire.call(
        2,
        &OffsetCommitRequest::default()
            .with_group_id(text("ops-group").into())
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(text("ops").into())
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(0),
                    ]),
            ]),
    );
    assert_eq!(committed.topics[0].partitions[0].error_code, 0);
    for (include, expected) in [(true, GROUP_OPERATIONS), (false, NOT_REQUESTED)] {
        let groups: DescribeGroupsResponse = wire.call(
            3,
            &DescribeGroupsRequest::default()
                .with_groups(vec![text("ops-group").into()])
                .with_include_authorized_operations(include),
        );
        assert_eq!(groups.groups[0].error_code, 0);
        assert_eq!(groups.groups[0].authorized_operations, expected);
    }
}
