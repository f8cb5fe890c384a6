//! The KIP-848 consumer group protocol at the wire (issue 14):
//! ConsumerGroupHeartbeat joins, heartbeats, revocation before
//! reassignment, fencing, static members, session expiry, topic growth,
//! ConsumerGroupDescribe, OffsetCommit/OffsetFetch v9 member epochs, the
//! groups' state across a restart, the rules between the two protocols, and
//! librdkafka with `group.protocol=consumer`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;
use crate::wire::Wire;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// Consumer groups with short timeouts: a silent member is gone in 1.5 s.
const CONFIG: &str = "[groups]\ninitial_rebalance_delay_ms = 300\nconsumer_heartbeat_interval_ms = 300\nconsumer_session_timeout_ms = 1500\n";

fn start(dir: &Path, extra_config: &str) -> BrokerProcess {
    let config = dir.join("consumer-protocol.toml");
    std::fs::write(&config, format!("{CONFIG}{extra_config}")).unwrap();
    BrokerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn restart(dir: &Path) -> BrokerProcess {
    let config = dir.join("consumer-protocol.toml");
    BrokerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn topic_id(wire: &mut Wire, topic: &str) -> uuid::Uuid {
    let response = wire.call(
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(text(topic).into())),
        ])),
    );
    response.topics[0].topic_id
}

fn join(group: &str, member: &str, topics: &[&str]) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest::default()
        .with_group_id(text(group).into())
        .with_member_id(text(member))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(10_000)
        .with_subscribed_topic_names(Some(topics.iter().map(|name| text(name).into()).collect()))
        .with_topic_partitions(Some(Vec::new()))
}

fn beat(
    group: &str,
    member: &str,
    epoch: i32,
    owned: &[(uuid::Uuid, &[i32])],
) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest::default()
        .with_group_id(text(group).into())
        .with_member_id(text(member))
        .with_member_epoch(epoch)
        .with_rebalance_timeout_ms(-1)
        .with_topic_partitions(Some(
            owned
                .iter()
                .map(|(topic, partitions)| {
                    TopicPartitions::default()
                        .with_topic_id(*topic)
                        .with_partitions(partitions.to_vec())
                })
                .collect(),
        ))
}

/// The partitions of `topic` in a heartbeat answer's assignment (`None`:
/// no assignment in the answer).
fn assigned(response: &ConsumerGroupHeartbeatResponse, topic: uuid::Uuid) -> Option<Vec<i32>> {
    let assignment = response.assignment.as_ref()?;
    let mut partitions: Vec<i32> = assignment
        .topic_partitions
        .iter()
        .filter(|entry| entry.topic_id == topic)
        .flat_map(|entry| entry.partitions.iter().copied())
        .collect();
    partitions.sort_unstable();
    Some(partitions)
}

fn describe(wire: &mut Wire, group: &str) -> consumer_group_describe_response::DescribedGroup {
    let response = wire.call(
        0,
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![text(group).into()]),
    );
    response.groups.into_iter().next().unwrap()
}

/// Heartbeat `member` until `done` holds for the answer (the coordinator
/// hands partitions over at heartbeats), returning that answer.
fn beat_until(
    wire: &mut Wire,
    request: &ConsumerGroupHeartbeatRequest,
    done: impl Fn(&ConsumerGroupHeartbeatResponse) -> bool,
) -> ConsumerGroupHeartbeatResponse {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = wire.call(1, request);
        if done(&response) {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "never got there; last answer {response:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_partition_is_given_to_a_new_member_only_after_its_owner_revoked_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "");
    kafka_clients::create_topic(&broker.address, "kip848", 4, &[]);
    let mut wire = Wire::connect(&broker.address);
    let topic = topic_id(&mut wire, "kip848");

    let a = wire.call(1, &join("g", "member-a", &["kip848"]));
    assert_eq!(a.error_code, 0, "{:?}", a.error_message);
    assert_eq!(a.member_id.as_deref(), Some("member-a"));
    assert_eq!(a.member_epoch, 1);
    assert_eq!(a.heartbeat_interval_ms, 300);
    assert_eq!(assigned(&a, topic), Some(vec![0, 1, 2, 3]));

    let b = wire.call(1, &join("g", "member-b", &["kip848"]));
    assert_eq!(b.member_epoch, 2);
    assert_eq!(
        assigned(&b, topic),
        Some(vec![]),
        "a still owns every partition"
    );
    let described = describe(&mut wire, "g");
    assert_eq!(described.group_state.as_str(), "Reconciling");
    assert_eq!(described.group_epoch, 2);
    assert_eq!(described.assignment_epoch, 2);
    assert_eq!(described.assignor_name.as_str(), "uniform");

    // a is told to give up two partitions and stays at epoch 1 until it has.
    let all: &[i32] = &[0, 1, 2, 3];
    let told = wire.call(1, &beat("g", "member-a", 1, &[(topic, all)]));
    assert_eq!(told.member_epoch, 1);
    let kept = assigned(&told, topic).expect("a's assignment changed");
    assert_eq!(kept.len(), 2);
    let given: Vec<i32> = all.iter().copied().filter(|p| !kept.contains(p)).collect();
    let waiting = wire.call(1, &beat("g", "member-b", 2, &[]));
    assert_eq!(waiting.error_code, 0);
    assert_eq!(
        assigned(&waiting, topic),
        None,
        "b gets nothing while a owns them"
    );
    let still = wire.call(1, &beat("g", "member-a", 1, &[(topic, all)]));
    assert_eq!(still.member_epoch, 1, "a has not revoked yet");

    // a revokes: it reaches epoch 2, and then b gets the partitions.
    let revoked = wire.call(1, &beat("g", "member-a", 1, &[(topic, &kept)]));
    assert_eq!(revoked.member_epoch, 2);
    let handed = wire.call(1, &beat("g", "member-b", 2, &[]));
    assert_eq!(assigned(&handed, topic), Some(given.clone()));
    wire.call(1, &beat("g", "member-b", 2, &[(topic, &given)]));

    let described = describe(&mut wire, "g");
    assert_eq!(described.error_code, 0);
    assert_eq!(described.group_state.as_str(), "Stable");
    let members: Vec<(String, i32, Vec<i32>, Vec<i32>)> = described
        .members
        .iter()
        .map(|member| {
            let parts = |assignment: &consumer_group_describe_response::Assignment| {
                let mut all: Vec<i32> = assignment
                    .topic_partitions
                    .iter()
                    .inspect(|entry| assert_eq!(entry.topic_name.as_str(), "kip848"))
                    .flat_map(|entry| entry.partitions.iter().copied())
                    .collect();
                all.sort_unstable();
                all
            };
            (
                member.member_id.to_string(),
                member.member_epoch,
                parts(&member.assignment),
                parts(&member.target_assignment),
            )
        })
        .collect();
    assert_eq!(
        members,
        [
            ("member-a".to_owned(), 2, kept.clone(), kept),
            ("member-b".to_owned(), 2, given.clone(), given),
        ]
    );
}
