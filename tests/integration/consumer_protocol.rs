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
use crate::topic_configs;
use crate::wire::Wire;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// Consumer groups with short timeouts: a silent member is gone in 1.5 s;
/// a group's configs may take the session timeout from 1 s to 60 s.
const CONFIG: &str = "[groups]\ninitial_rebalance_delay_ms = 300\nconsumer_heartbeat_interval_ms = 300\nconsumer_session_timeout_ms = 1500\nconsumer_session_timeout_min_ms = 1000\nconsumer_heartbeat_interval_min_ms = 100\n";

fn start(dir: &Path, extra_config: &str) -> BrokerProcess {
    let config = dir.join("consumer-protocol.toml");
    std::fs::write(&config, format!("{CONFIG}{extra_config}")).unwrap();
    BrokerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

/// A broker (with [`CONFIG`]) that has `topic` with `partitions`, a
/// connection to it, and the topic's id.
fn start_with_topic(dir: &Path, topic: &str, partitions: i32) -> (BrokerProcess, Wire, uuid::Uuid) {
    let broker = start(dir, "");
    kafka_clients::create_topic(&broker.address, topic, partitions, &[]);
    let mut wire = Wire::connect(&broker.address);
    let id = topic_id(&mut wire, topic);
    (broker, wire, id)
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
    let (broker, mut wire, topic) = start_with_topic(dir.path(), "kip848", 4);

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
    // While reconciling, the target and the assignment differ: a still owns
    // all four, b owns none of its two.
    let sizes: Vec<(String, usize, usize)> = described
        .members
        .iter()
        .map(|member| {
            let count = |assignment: &consumer_group_describe_response::Assignment| {
                assignment
                    .topic_partitions
                    .iter()
                    .map(|entry| entry.partitions.len())
                    .sum::<usize>()
            };
            (
                member.member_id.to_string(),
                count(&member.assignment),
                count(&member.target_assignment),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        [("member-a".to_owned(), 4, 2), ("member-b".to_owned(), 0, 2)]
    );

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
    // `sluice groups describe` shows it through ConsumerGroupDescribe.
    let (ok, out) =
        crate::consumer_groups::sluice_admin(&broker.address, &["groups", "describe", "g"]);
    assert!(ok, "{out}");
    assert!(out.contains("STATE     Stable"), "{out}");
    assert!(out.contains("PROTOCOL  consumer (uniform)"), "{out}");
    assert!(out.contains("MEMBERS   2"), "{out}");
    assert!(out.contains("member-b"), "{out}");
}

/// A librdkafka consumer speaking the consumer protocol (librdkafka 2.12,
/// bundled by rdkafka-sys: KIP-848 is GA from 2.10). The classic settings
/// (session timeout, heartbeat interval, assignment strategy) are the
/// broker's under this protocol, so they are not set.
fn kip848_consumer(address: &str, group: &str, name: &str) -> rdkafka::consumer::BaseConsumer {
    rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", group)
        .set("group.protocol", "consumer")
        .set("client.id", name)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer config is valid")
}

/// Payloads received more than once (the first few, and how many).
fn duplicates(received: &crate::consumer_groups::Received) -> (usize, Vec<String>) {
    let mut seen = BTreeSet::new();
    let again: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, _, payload)| !seen.insert(payload.clone()))
        .map(|(_, _, _, payload)| String::from_utf8_lossy(payload).into_owned())
        .collect();
    (again.len(), again.into_iter().take(5).collect())
}

#[test]
fn librdkafka_consumers_with_group_protocol_consumer_share_partitions_and_rebalance() {
    use crate::consumer_groups::{Member, Received, produce, wait_for_all, wait_for_assignments};
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "");
    kafka_clients::create_topic(&broker.address, "kip848-clients", 4, &[]);
    let first_batch = produce(&broker.address, "kip848-clients", 4, "first", 400);
    let received: Received = Default::default();
    let one = Member::start_consumer(
        kip848_consumer(&broker.address, "kip848-rdkafka", "one"),
        "kip848-clients",
        "one",
        &received,
    );
    let two = Member::start_consumer(
        kip848_consumer(&broker.address, "kip848-rdkafka", "two"),
        "kip848-clients",
        "two",
        &received,
    );
    wait_for_assignments(&[&one, &two], 4, &[2, 2], Duration::from_secs(30));
    wait_for_all(&received, &first_batch, Duration::from_secs(30));
    let mut wire = Wire::connect(&broker.address);
    let described = describe(&mut wire, "kip848-rdkafka");
    assert_eq!(described.group_state.as_str(), "Stable", "{described:?}");
    assert_eq!(described.members.len(), 2);

    // One leaves (librdkafka sends epoch -1): the other takes all four.
    two.leave();
    wait_for_assignments(&[&one], 4, &[4], Duration::from_secs(30));
    let second_batch = produce(&broker.address, "kip848-clients", 4, "second", 400);
    wait_for_all(&received, &second_batch, Duration::from_secs(30));
    one.leave();
    assert_eq!(
        duplicates(&received),
        (0, Vec::<String>::new()),
        "each record is consumed once"
    );
    let by_one = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, _, _, payload)| name == "one" && payload.starts_with(b"second"))
        .count();
    assert_eq!(
        by_one, 400,
        "after the rebalance the remaining member reads everything"
    );
}

fn error(response: &ConsumerGroupHeartbeatResponse) -> (i16, String) {
    (
        response.error_code,
        response
            .error_message
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    )
}

#[test]
fn bad_heartbeats_get_kafkas_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "");
    kafka_clients::create_topic(&broker.address, "checks", 2, &[]);
    let mut wire = Wire::connect(&broker.address);
    let invalid = ResponseError::InvalidRequest.code();
    let cases: Vec<(i16, ConsumerGroupHeartbeatRequest, i16, &str)> = vec![
        (
            1,
            join("g", "", &["checks"]),
            invalid,
            "MemberId can't be empty.",
        ),
        (
            1,
            join(" ", "m", &["checks"]),
            invalid,
            "GroupId can't be empty.",
        ),
        (
            1,
            join("g", "m", &["checks"]).with_instance_id(Some(text(" "))),
            invalid,
            "InstanceId can't be empty.",
        ),
        (
            1,
            join("g", "m", &["checks"]).with_rebalance_timeout_ms(-1),
            invalid,
            "RebalanceTimeoutMs must be provided in first request.",
        ),
        (
            1,
            join("g", "m", &["checks"]).with_topic_partitions(None),
            invalid,
            "TopicPartitions must be empty when (re-)joining.",
        ),
        (
            1,
            join("g", "m", &["checks"]).with_subscribed_topic_names(None),
            invalid,
            "Either SubscribedTopicNames or SubscribedTopicRegex must be non-null when (re-)joining.",
        ),
        (
            1,
            beat("g", "m", -2, &[]),
            invalid,
            "InstanceId can't be null.",
        ),
        (
            1,
            beat("g", "m", -3, &[]),
            invalid,
            "MemberEpoch is invalid.",
        ),
        (
            0,
            beat("g", "", 1, &[]),
            invalid,
            "MemberId can't be empty.",
        ),
        (
            1,
            join("g", "m", &["checks"]).with_server_assignor(Some(text("sticky"))),
            ResponseError::UnsupportedAssignor.code(),
            "ServerAssignor sticky is not supported. Supported assignors: uniform, range.",
        ),
        (
            1,
            join("g", "m", &[]).with_subscribed_topic_regex(Some(text("(unclosed"))),
            ResponseError::InvalidRegularExpression.code(),
            "",
        ),
        (
            1,
            beat("nothing-here", "m", 1, &[]),
            ResponseError::GroupIdNotFound.code(),
            "Consumer group nothing-here not found.",
        ),
    ];
    for (version, request, code, message) in cases {
        let response = wire.call(version, &request);
        let (got, got_message) = error(&response);
        assert_eq!(got, code, "{request:?}: {got_message}");
        if !message.is_empty() {
            assert_eq!(got_message, message);
        }
        assert_eq!(response.member_epoch, 0);
    }

    // v0: the coordinator names a joining member.
    let named = wire.call(0, &join("g0", "", &["checks"]));
    assert_eq!(named.error_code, 0);
    let member = named.member_id.unwrap().to_string();
    assert_eq!(member.len(), 22, "a Kafka-style base64 UUID: {member}");
    assert_eq!(named.member_epoch, 1);

    // Epochs: ahead is fenced, an unknown member is unknown.
    let ahead = wire.call(0, &beat("g0", &member, 7, &[]));
    assert_eq!(ahead.error_code, ResponseError::FencedMemberEpoch.code());
    let unknown = wire.call(1, &beat("g0", "stranger", 1, &[]));
    assert_eq!(unknown.error_code, ResponseError::UnknownMemberId.code());
    let leave_unknown = wire.call(1, &beat("g0", "stranger", -1, &[]));
    assert_eq!(
        leave_unknown.error_code,
        ResponseError::UnknownMemberId.code()
    );
    // Leaving answers epoch -1; the member is then unknown.
    let left = wire.call(0, &beat("g0", &member, -1, &[]));
    assert_eq!((left.error_code, left.member_epoch), (0, -1));
    let gone = wire.call(0, &beat("g0", &member, 1, &[]));
    assert_eq!(gone.error_code, ResponseError::UnknownMemberId.code());
}

#[test]
fn a_static_member_rejoins_with_its_partitions_and_a_second_instance_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mut wire, topic) = start_with_topic(dir.path(), "static", 2);
    let request = |member: &str| join("sg", member, &["static"]).with_instance_id(Some(text("i1")));
    let first = wire.call(1, &request("first"));
    assert_eq!(first.member_epoch, 1);
    assert_eq!(assigned(&first, topic), Some(vec![0, 1]));
    let other = wire.call(1, &join("sg", "other", &["static"]));
    assert_eq!(other.member_epoch, 2);
    let both: &[i32] = &[0, 1];
    let told = wire.call(1, &beat("sg", "first", 1, &[(topic, both)]));
    let kept = assigned(&told, topic).unwrap();
    wire.call(1, &beat("sg", "first", 1, &[(topic, &kept)]));

    // A second process with the same instance id while the first is alive.
    let intruder = wire.call(1, &request("second"));
    assert_eq!(
        intruder.error_code,
        ResponseError::UnreleasedInstanceId.code()
    );
    // The member id must match the instance's.
    let mismatch = wire.call(
        1,
        &beat("sg", "second", 2, &[]).with_instance_id(Some(text("i1"))),
    );
    assert_eq!(mismatch.error_code, ResponseError::FencedInstanceId.code());

    // The first leaves for now (-2): it keeps its partitions...
    let left = wire.call(
        1,
        &beat("sg", "first", -2, &[]).with_instance_id(Some(text("i1"))),
    );
    assert_eq!((left.error_code, left.member_epoch), (0, -2));
    let epoch = describe(&mut wire, "sg").group_epoch;
    // ...and a new process with the same instance id takes them over with
    // no rebalance.
    let second = wire.call(1, &request("second"));
    assert_eq!(second.error_code, 0, "{:?}", second.error_message);
    assert_eq!(assigned(&second, topic), Some(kept));
    let described = describe(&mut wire, "sg");
    assert_eq!(described.group_epoch, epoch, "no rebalance");
    let ids: Vec<String> = described
        .members
        .iter()
        .map(|member| member.member_id.to_string())
        .collect();
    assert_eq!(ids, ["other", "second"]);
}

#[test]
fn a_silent_member_is_removed_after_the_session_timeout_and_its_partitions_move() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut wire, topic) = start_with_topic(dir.path(), "sessions", 2);
    wire.call(1, &join("sess", "stays", &["sessions"]));
    wire.call(1, &join("sess", "goes-quiet", &["sessions"]));
    let quiet_since = Instant::now();
    let both: &[i32] = &[0, 1];
    let told = wire.call(1, &beat("sess", "stays", 1, &[(topic, both)]));
    let kept = assigned(&told, topic).unwrap();
    wire.call(1, &beat("sess", "stays", 1, &[(topic, &kept)]));
    let started = Instant::now();
    // Only "stays" heartbeats; after 1.5 s the other is fenced and "stays"
    // gets both partitions.
    let request = beat("sess", "stays", 2, &[(topic, &kept)]);
    let mut epoch = 2;
    loop {
        let response = wire.call(1, &request.clone().with_member_epoch(epoch));
        assert_eq!(response.error_code, 0, "{:?}", response.error_message);
        epoch = response.member_epoch;
        if assigned(&response, topic).is_some_and(|partitions| partitions == [0, 1]) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never reassigned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        quiet_since.elapsed() >= Duration::from_millis(1500),
        "not before the session timeout"
    );
    assert!(broker.wait_for_log("its session timed out"));
    let described = describe(&mut wire, "sess");
    assert_eq!(described.members.len(), 1);
    let quiet = wire.call(1, &beat("sess", "goes-quiet", 2, &[]));
    assert_eq!(quiet.error_code, ResponseError::UnknownMemberId.code());
}

#[test]
fn a_topic_growing_or_appearing_starts_a_new_assignment() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut wire, grows) = start_with_topic(dir.path(), "grows", 1);
    let joined = wire.call(1, &join("growth", "m", &["grows", "later"]));
    assert_eq!(assigned(&joined, grows), Some(vec![0]));
    let admin = kafka_clients::admin(&broker.address);
    futures_executor::block_on(admin.create_partitions(
        &[rdkafka::admin::NewPartitions::new("grows", 3)],
        &rdkafka::admin::AdminOptions::new(),
    ))
    .unwrap();
    let one: &[i32] = &[0];
    let grown = beat_until(
        &mut wire,
        &beat("growth", "m", 1, &[(grows, one)]),
        |response| assigned(response, grows).is_some(),
    );
    assert_eq!(grown.member_epoch, 2);
    assert_eq!(assigned(&grown, grows), Some(vec![0, 1, 2]));
    kafka_clients::create_topic(&broker.address, "later", 2, &[]);
    let later = topic_id(&mut wire, "later");
    let all: &[i32] = &[0, 1, 2];
    let appeared = beat_until(
        &mut wire,
        &beat("growth", "m", 2, &[(grows, all)]),
        |response| assigned(response, later).is_some(),
    );
    assert_eq!(appeared.member_epoch, 3);
    assert_eq!(assigned(&appeared, later), Some(vec![0, 1]));
}

fn commit(
    wire: &mut Wire,
    version: i16,
    group: &str,
    member: &str,
    epoch: i32,
    offsets: &[(&str, i32, i64)],
) -> Vec<i16> {
    let topics = offsets
        .iter()
        .map(|(topic, partition, offset)| {
            OffsetCommitRequestTopic::default()
                .with_name(text(topic).into())
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(*partition)
                        .with_committed_offset(*offset),
                ])
        })
        .collect();
    let response = wire.call(
        version,
        &OffsetCommitRequest::default()
            .with_group_id(text(group).into())
            .with_generation_id_or_member_epoch(epoch)
            .with_member_id(text(member))
            .with_topics(topics),
    );
    response
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| partition.error_code)
        })
        .collect()
}

/// OffsetFetch v9 of `topic`'s partition 0: the group's code and offset.
fn fetch(
    wire: &mut Wire,
    group: &str,
    member: Option<&str>,
    epoch: i32,
    topic: &str,
) -> (i16, i64) {
    let response = wire.call(
        9,
        &OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(text(group).into())
                .with_member_id(member.map(text))
                .with_member_epoch(epoch)
                .with_topics(Some(vec![
                    OffsetFetchRequestTopics::default()
                        .with_name(text(topic).into())
                        .with_partition_indexes(vec![0]),
                ])),
        ]),
    );
    let group = &response.groups[0];
    let offset = group
        .topics
        .first()
        .and_then(|topic| topic.partitions.first())
        .map_or(-1, |partition| partition.committed_offset);
    (group.error_code, offset)
}

#[test]
fn offset_commits_and_fetches_check_the_member_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "");
    kafka_clients::create_topic(&broker.address, "commits", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    wire.call(1, &join("cg", "m", &["commits"]));
    let ok = 0;
    let stale = ResponseError::StaleMemberEpoch.code();
    assert_eq!(
        commit(&mut wire, 9, "cg", "m", 1, &[("commits", 0, 5)]),
        [ok]
    );
    assert_eq!(
        commit(&mut wire, 9, "cg", "m", 0, &[("commits", 0, 6)]),
        [stale]
    );
    assert_eq!(
        commit(&mut wire, 9, "cg", "m", 2, &[("commits", 0, 6)]),
        [stale]
    );
    assert_eq!(
        commit(&mut wire, 9, "cg", "nobody", 1, &[("commits", 0, 6)]),
        [ResponseError::UnknownMemberId.code()]
    );
    assert_eq!(
        commit(&mut wire, 8, "cg", "m", 1, &[("commits", 0, 6)]),
        [ResponseError::UnsupportedVersion.code()],
        "consumer-protocol members must commit with v9"
    );
    // While the group has members, an admin's epoch -1 commit is refused.
    assert_eq!(
        commit(&mut wire, 9, "cg", "", -1, &[("commits", 0, 6)]),
        [ResponseError::UnknownMemberId.code()]
    );
    assert_eq!(
        commit(&mut wire, 9, "no-such-group", "m", 3, &[("commits", 0, 6)]),
        [ResponseError::GroupIdNotFound.code()],
        "v9 names an unknown group"
    );
    assert_eq!(
        commit(&mut wire, 8, "no-such-group", "m", 3, &[("commits", 0, 6)]),
        [ResponseError::IllegalGeneration.code()],
        "before v9 it is a generation error"
    );

    assert_eq!(fetch(&mut wire, "cg", Some("m"), 1, "commits"), (0, 5));
    assert_eq!(
        fetch(&mut wire, "cg", None, -1, "commits"),
        (0, 5),
        "admins read freely"
    );
    assert_eq!(fetch(&mut wire, "cg", Some("m"), 0, "commits"), (stale, -1));
    assert_eq!(
        fetch(&mut wire, "cg", Some("nobody"), 1, "commits"),
        (ResponseError::UnknownMemberId.code(), -1)
    );

    // OffsetDelete refuses a topic the members subscribe to; DeleteGroups
    // refuses a group with members.
    let delete_offsets = |wire: &mut Wire| {
        use kafka_protocol::messages::offset_delete_request::{
            OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
        };
        let response = wire.call(
            0,
            &OffsetDeleteRequest::default()
                .with_group_id(text("cg").into())
                .with_topics(vec![
                    OffsetDeleteRequestTopic::default()
                        .with_name(text("commits").into())
                        .with_partitions(vec![
                            OffsetDeleteRequestPartition::default().with_partition_index(0),
                        ]),
                ]),
        );
        (
            response.error_code,
            response.topics[0].partitions[0].error_code,
        )
    };
    let delete_group = |wire: &mut Wire| {
        wire.call(
            2,
            &DeleteGroupsRequest::default().with_groups_names(vec![text("cg").into()]),
        )
        .results[0]
            .error_code
    };
    assert_eq!(
        delete_offsets(&mut wire),
        (0, ResponseError::GroupSubscribedToTopic.code())
    );
    assert_eq!(delete_group(&mut wire), ResponseError::NonEmptyGroup.code());

    // Once the member left, the empty group takes an admin's commit.
    wire.call(1, &beat("cg", "m", -1, &[]));
    assert_eq!(
        commit(&mut wire, 9, "cg", "", -1, &[("commits", 0, 9)]),
        [ok]
    );
    assert_eq!(fetch(&mut wire, "cg", None, -1, "commits"), (0, 9));
    // ...and it can be deleted, offsets and all.
    assert_eq!(delete_offsets(&mut wire), (0, 0));
    assert_eq!(fetch(&mut wire, "cg", None, -1, "commits"), (0, -1));
    assert_eq!(delete_group(&mut wire), 0);
    assert_eq!(
        describe(&mut wire, "cg").error_code,
        ResponseError::GroupIdNotFound.code()
    );
}

#[test]
fn list_groups_and_describe_groups_tell_consumer_groups_from_classic_ones() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "");
    kafka_clients::create_topic(&broker.address, "listed", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    wire.call(1, &join("modern", "m", &["listed"]));
    // A classic group with committed offsets only.
    assert_eq!(
        commit(&mut wire, 8, "simple", "", -1, &[("listed", 0, 1)]),
        [0]
    );
    let list = |wire: &mut Wire,
                types: &[&str],
                states: &[&str]|
     -> Vec<(String, String, String, String)> {
        let response = wire.call(
            5,
            &ListGroupsRequest::default()
                .with_types_filter(types.iter().map(|kind| text(kind)).collect())
                .with_states_filter(states.iter().map(|state| text(state)).collect()),
        );
        let mut groups: Vec<_> = response
            .groups
            .iter()
            .map(|group| {
                (
                    group.group_id.to_string(),
                    group.protocol_type.to_string(),
                    group.group_state.to_string(),
                    group.group_type.to_string(),
                )
            })
            .collect();
        groups.sort();
        groups
    };
    let modern = (
        "modern".to_owned(),
        "consumer".to_owned(),
        "Stable".to_owned(),
        "consumer".to_owned(),
    );
    let simple = (
        "simple".to_owned(),
        String::new(),
        "Empty".to_owned(),
        "classic".to_owned(),
    );
    assert_eq!(list(&mut wire, &[], &[]), [modern.clone(), simple.clone()]);
    assert_eq!(
        list(&mut wire, &["Consumer"], &[]),
        std::slice::from_ref(&modern)
    );
    assert_eq!(list(&mut wire, &["classic"], &[]), [simple]);
    assert_eq!(list(&mut wire, &[], &["stable"]), [modern]);
    assert_eq!(list(&mut wire, &[], &["Reconciling"]), []);

    // DescribeGroups (up to v5) sees a consumer group as Dead, as Kafka's
    // does; ConsumerGroupDescribe refuses a classic group.
    let response = wire.call(
        5,
        &DescribeGroupsRequest::default().with_groups(vec![text("modern").into()]),
    );
    assert_eq!(response.groups[0].group_state.as_str(), "Dead");
    assert!(response.groups[0].members.is_empty());
    let classic = describe(&mut wire, "simple");
    assert_eq!(classic.error_code, ResponseError::GroupIdNotFound.code());
    assert_eq!(
        classic.error_message.as_deref(),
        Some("Group simple is not a consumer group.")
    );
    let absent = describe(&mut wire, "absent");
    assert_eq!(absent.error_code, ResponseError::GroupIdNotFound.code());
}

#[test]
fn consumer_groups_survive_a_restart_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut wire, topic) = start_with_topic(dir.path(), "durable", 4);
    wire.call(
        1,
        &join("dg", "a", &["durable"]).with_server_assignor(Some(text("range"))),
    );
    wire.call(
        1,
        &join("dg", "b", &["durable"]).with_instance_id(Some(text("static-b"))),
    );
    let all: &[i32] = &[0, 1, 2, 3];
    let told = wire.call(1, &beat("dg", "a", 1, &[(topic, all)]));
    let kept = assigned(&told, topic).unwrap();
    assert_eq!(
        kept,
        [2, 3],
        "range puts static members first: static-b gets 0 and 1"
    );
    wire.call(1, &beat("dg", "a", 1, &[(topic, &kept)]));
    assert_eq!(
        commit(&mut wire, 9, "dg", "a", 2, &[("durable", 0, 42)]),
        [0]
    );
    let before = describe(&mut wire, "dg");
    assert_eq!(
        before.group_state.as_str(),
        "Reconciling",
        "b has not taken its partitions yet"
    );
    drop(wire);

    let view = |group: &consumer_group_describe_response::DescribedGroup| {
        format!(
            "{} {} {} {} {:?}",
            group.group_state,
            group.group_epoch,
            group.assignment_epoch,
            group.assignor_name,
            group
                .members
                .iter()
                .map(|member| (
                    member.member_id.to_string(),
                    member.instance_id.as_ref().map(ToString::to_string),
                    member.member_epoch,
                    member.assignment.clone(),
                    member.target_assignment.clone(),
                ))
                .collect::<Vec<_>>()
        )
    };
    let (status, _) = broker.stop_with_log();
    assert!(status.success());
    let broker = restart(dir.path());
    let mut wire = Wire::connect(&broker.address);
    let after = describe(&mut wire, "dg");
    assert_eq!(view(&after), view(&before));
    // The members carry on at their epochs: b now takes its partitions.
    let b = beat_until(
        &mut wire,
        &beat("dg", "b", 2, &[]).with_instance_id(Some(text("static-b"))),
        |response| assigned(response, topic).is_some(),
    );
    assert_eq!(b.error_code, 0);
    assert_eq!(assigned(&b, topic), Some(vec![0, 1]));
    let a = wire.call(1, &beat("dg", "a", 2, &[(topic, &kept)]));
    assert_eq!((a.error_code, a.member_epoch), (0, 2));
    assert_eq!(fetch(&mut wire, "dg", Some("a"), 2, "durable"), (0, 42));
    let settled = describe(&mut wire, "dg");
    drop(wire);

    broker.kill9();
    let broker = restart(dir.path());
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(view(&describe(&mut wire, "dg")), view(&settled));
    let a = wire.call(1, &beat("dg", "a", 2, &[(topic, &kept)]));
    assert_eq!((a.error_code, a.member_epoch), (0, 2));
}

/// A classic consumer's JoinGroup protocol metadata: a
/// ConsumerProtocolSubscription (v1: with the partitions it owns).
fn subscription(topics: &[&str], owned: &[(&str, &[i32])]) -> Bytes {
    use bytes::BufMut;
    use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition;
    use kafka_protocol::protocol::Encodable;
    let subscription = ConsumerProtocolSubscription::default()
        .with_topics(topics.iter().map(|topic| text(topic)).collect())
        .with_owned_partitions(
            owned
                .iter()
                .map(|(topic, partitions)| {
                    TopicPartition::default()
                        .with_topic(text(topic).into())
                        .with_partitions(partitions.to_vec())
                })
                .collect(),
        );
    let mut bytes = bytes::BytesMut::new();
    bytes.put_i16(1);
    subscription.encode(&mut bytes, 1).unwrap();
    bytes.freeze()
}

fn assignment_bytes(partitions: &[(&str, &[i32])]) -> Bytes {
    use bytes::BufMut;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        partitions
            .iter()
            .map(|(topic, partitions)| {
                TopicPartition::default()
                    .with_topic(text(topic).into())
                    .with_partitions(partitions.to_vec())
            })
            .collect(),
    );
    let mut bytes = bytes::BytesMut::new();
    bytes.put_i16(1);
    assignment.encode(&mut bytes, 1).unwrap();
    bytes.freeze()
}

fn decode_assignment(bytes: &Bytes) -> Vec<(String, Vec<i32>)> {
    use bytes::Buf;
    use kafka_protocol::protocol::Decodable;
    let mut bytes = bytes.clone();
    let version = bytes.get_i16();
    ConsumerProtocolAssignment::decode(&mut bytes, version.min(3))
        .unwrap()
        .assigned_partitions
        .iter()
        .map(|topic| (topic.topic.to_string(), topic.partitions.clone()))
        .collect()
}

fn classic_join(
    wire: &mut Wire,
    group: &str,
    member: &str,
    protocol_type: &str,
    metadata: Bytes,
) -> JoinGroupResponse {
    wire.call(
        5,
        &JoinGroupRequest::default()
            .with_group_id(text(group).into())
            .with_session_timeout_ms(6000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(text(member))
            .with_protocol_type(text(protocol_type))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(text("range"))
                    .with_metadata(metadata),
            ]),
    )
}

fn classic_sync(
    wire: &mut Wire,
    group: &str,
    member: &str,
    generation: i32,
    assignments: Vec<(String, Bytes)>,
) -> SyncGroupResponse {
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    wire.call(
        5,
        &SyncGroupRequest::default()
            .with_group_id(text(group).into())
            .with_member_id(text(member))
            .with_generation_id(generation)
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text("range")))
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(id, bytes)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(text(&id))
                            .with_assignment(bytes)
                    })
                    .collect(),
            ),
    )
}

fn classic_heartbeat(wire: &mut Wire, group: &str, member: &str, generation: i32) -> i16 {
    wire.call(
        4,
        &HeartbeatRequest::default()
            .with_group_id(text(group).into())
            .with_generation_id(generation)
            .with_member_id(text(member)),
    )
    .error_code
}

fn group_type(wire: &mut Wire, group: &str) -> (String, String) {
    let response = wire.call(5, &ListGroupsRequest::default());
    response
        .groups
        .iter()
        .find(|listed| listed.group_id.as_str() == group)
        .map(|listed| {
            (
                listed.group_type.to_string(),
                listed.group_state.to_string(),
            )
        })
        .unwrap_or_default()
}

/// A classic member that joined, led and synced `partitions` to itself.
fn classic_member_with(
    wire: &mut Wire,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> (String, i32) {
    let first = classic_join(wire, group, "", "consumer", subscription(&[topic], &[]));
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    let member = first.member_id.to_string();
    let joined = classic_join(
        wire,
        group,
        &member,
        "consumer",
        subscription(&[topic], &[]),
    );
    assert_eq!(joined.error_code, 0);
    let synced = classic_sync(
        wire,
        group,
        &member,
        joined.generation_id,
        vec![(member.clone(), assignment_bytes(&[(topic, partitions)]))],
    );
    assert_eq!(synced.error_code, 0);
    (member, joined.generation_id)
}

#[test]
fn a_consumer_member_cannot_join_a_busy_classic_group_unless_upgrades_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "consumer_migration_policy = \"downgrade\"\n");
    kafka_clients::create_topic(&broker.address, "mixed", 2, &[]);
    let mut wire = Wire::connect(&broker.address);
    classic_member_with(&mut wire, "busy", "mixed", &[0, 1]);
    let refused = wire.call(1, &join("busy", "k", &["mixed"]));
    assert_eq!(
        error(&refused),
        (
            ResponseError::GroupIdNotFound.code(),
            "Group busy is not a consumer group.".to_owned()
        )
    );
    assert_eq!(group_type(&mut wire, "busy").0, "classic");

    // A group of another protocol type never converts.
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "");
    let mut wire = Wire::connect(&broker.address);
    let connect = classic_join(
        &mut wire,
        "connect",
        "",
        "connect",
        Bytes::from_static(b"x"),
    );
    let member = connect.member_id.to_string();
    let joined = classic_join(
        &mut wire,
        "connect",
        &member,
        "connect",
        Bytes::from_static(b"x"),
    );
    assert_eq!(joined.error_code, 0);
    let refused = wire.call(1, &join("connect", "k", &["mixed"]));
    assert_eq!(refused.error_code, ResponseError::GroupIdNotFound.code());
}

#[test]
fn a_classic_group_upgrades_when_a_consumer_member_joins_and_downgrades_when_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mut wire, topic) = start_with_topic(dir.path(), "mixed", 2);
    let (classic, generation) = classic_member_with(&mut wire, "mig", "mixed", &[0, 1]);
    assert_eq!(group_type(&mut wire, "mig").0, "classic");

    // A consumer-protocol member joins: the group is upgraded. The classic
    // member keeps its partitions at its generation, so the newcomer waits.
    let joined = wire.call(1, &join("mig", "k", &["mixed"]));
    assert_eq!(joined.error_code, 0, "{:?}", joined.error_message);
    assert_eq!(joined.member_epoch, generation + 1);
    assert_eq!(assigned(&joined, topic), Some(vec![]));
    assert_eq!(
        group_type(&mut wire, "mig"),
        ("consumer".to_owned(), "Reconciling".to_owned())
    );
    let described = describe(&mut wire, "mig");
    let types: Vec<i8> = described
        .members
        .iter()
        .map(|member| member.member_type)
        .collect();
    assert_eq!(types.len(), 2);

    // The classic member is told to rejoin, rejoins owning both, and is
    // given one: it must first revoke the other (generation unchanged).
    assert_eq!(
        classic_heartbeat(&mut wire, "mig", &classic, generation),
        ResponseError::RebalanceInProgress.code()
    );
    let owned: &[(&str, &[i32])] = &[("mixed", &[0, 1])];
    let rejoined = classic_join(
        &mut wire,
        "mig",
        &classic,
        "consumer",
        subscription(&["mixed"], owned),
    );
    assert_eq!(rejoined.error_code, 0);
    assert_eq!(rejoined.generation_id, generation);
    assert_eq!(rejoined.protocol_name.as_deref(), Some("range"));
    assert_eq!(rejoined.leader.as_str(), "", "the coordinator assigns");
    let synced = classic_sync(&mut wire, "mig", &classic, generation, vec![]);
    assert_eq!(synced.error_code, 0);
    let kept = decode_assignment(&synced.assignment);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].1.len(), 1);
    let kept_partition = kept[0].1[0];
    // The newcomer still waits while the classic member owns both.
    let waiting = wire.call(1, &beat("mig", "k", joined.member_epoch, &[]));
    assert_eq!(assigned(&waiting, topic), None);
    // Rejoining with only its partition, the classic member reaches the new
    // epoch, and the newcomer gets the other partition.
    let owned: &[(&str, &[i32])] = &[("mixed", &[kept_partition])];
    let caught_up = classic_join(
        &mut wire,
        "mig",
        &classic,
        "consumer",
        subscription(&["mixed"], owned),
    );
    assert_eq!(caught_up.generation_id, generation + 1);
    let synced = classic_sync(&mut wire, "mig", &classic, generation + 1, vec![]);
    assert_eq!(
        decode_assignment(&synced.assignment),
        [("mixed".to_owned(), vec![kept_partition])]
    );
    assert_eq!(
        classic_heartbeat(&mut wire, "mig", &classic, generation + 1),
        0
    );
    let handed = wire.call(1, &beat("mig", "k", joined.member_epoch, &[]));
    assert_eq!(assigned(&handed, topic), Some(vec![1 - kept_partition]));

    // The consumer-protocol member leaves: only a classic member is left,
    // and the group goes back to the classic protocol in a rebalance.
    let left = wire.call(
        1,
        &beat("mig", "k", joined.member_epoch, &[]).with_member_epoch(-1),
    );
    assert_eq!(left.error_code, 0);
    assert_eq!(
        group_type(&mut wire, "mig"),
        ("classic".to_owned(), "PreparingRebalance".to_owned())
    );
    // The classic group continues at the member's own generation (Kafka
    // converts the group as it was before the leave): its heartbeat is told
    // to rejoin, and the offsets it commits on revoking are kept. A bumped
    // generation would answer ILLEGAL_GENERATION to both, and the member
    // would consume again what it had not committed yet.
    let code = classic_heartbeat(&mut wire, "mig", &classic, generation + 1);
    assert_eq!(code, ResponseError::RebalanceInProgress.code());
    assert_eq!(
        commit(
            &mut wire,
            8,
            "mig",
            &classic,
            generation + 1,
            &[("mixed", 0, 7)]
        ),
        [0]
    );
    assert_eq!(fetch(&mut wire, "mig", None, -1, "mixed"), (0, 7));
    let back = classic_join(
        &mut wire,
        "mig",
        &classic,
        "consumer",
        subscription(&["mixed"], &[]),
    );
    assert_eq!(back.error_code, 0);
    assert_eq!(
        back.leader, back.member_id,
        "a classic group again: its member leads"
    );
}

/// Found by a new-user trial (issue 14): a classic member joining a
/// consumer group whose target partitions other members still own waits
/// (state UnreleasedPartitions); once they revoke them, its heartbeat must
/// tell it to rejoin (Kafka's `classicGroupHeartbeatToConsumerGroup`), or
/// those partitions stay without a consumer until the next rebalance.
#[test]
fn a_classic_member_is_told_to_rejoin_once_its_partitions_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mut wire, topic) = start_with_topic(dir.path(), "held", 2);
    let joined = wire.call(1, &join("held-group", "a", &["held"]));
    assert_eq!(joined.error_code, 0, "{:?}", joined.error_message);
    assert_eq!(assigned(&joined, topic), Some(vec![0, 1]));
    let epoch = joined.member_epoch;

    // A classic member joins: its target holds a partition "a" still owns.
    let first = classic_join(
        &mut wire,
        "held-group",
        "",
        "consumer",
        subscription(&["held"], &[]),
    );
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    let member = first.member_id.to_string();
    let rejoined = classic_join(
        &mut wire,
        "held-group",
        &member,
        "consumer",
        subscription(&["held"], &[]),
    );
    assert_eq!(rejoined.error_code, 0);
    let generation = rejoined.generation_id;
    let synced = classic_sync(&mut wire, "held-group", &member, generation, vec![]);
    assert_eq!(synced.error_code, 0);
    assert!(
        decode_assignment(&synced.assignment)
            .iter()
            .all(|(_, p)| p.is_empty())
    );
    assert_eq!(
        classic_heartbeat(&mut wire, "held-group", &member, generation),
        0
    );

    // "a" learns its new target and revokes one partition.
    let told = beat_until(
        &mut wire,
        &beat("held-group", "a", epoch, &[(topic, &[0, 1])]),
        |answer| assigned(answer, topic).is_some_and(|partitions| partitions.len() == 1),
    );
    let kept = assigned(&told, topic).unwrap();
    let revoked = wire.call(
        1,
        &beat("held-group", "a", told.member_epoch, &[(topic, &kept)]),
    );
    assert_eq!(revoked.error_code, 0);

    // Now the classic member must rejoin, and gets the released partition.
    assert_eq!(
        classic_heartbeat(&mut wire, "held-group", &member, generation),
        ResponseError::RebalanceInProgress.code()
    );
    let again = classic_join(
        &mut wire,
        "held-group",
        &member,
        "consumer",
        subscription(&["held"], &[]),
    );
    assert_eq!(again.error_code, 0);
    let synced = classic_sync(
        &mut wire,
        "held-group",
        &member,
        again.generation_id,
        vec![],
    );
    assert_eq!(
        decode_assignment(&synced.assignment),
        [("held".to_owned(), vec![1 - kept[0]])]
    );
}

#[test]
fn an_empty_group_switches_protocol_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "consumer_migration_policy = \"disabled\"\n");
    kafka_clients::create_topic(&broker.address, "switch", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    // Consumer first; it commits and leaves: an empty consumer group.
    wire.call(1, &join("sw", "k", &["switch"]));
    assert_eq!(commit(&mut wire, 9, "sw", "k", 1, &[("switch", 0, 3)]), [0]);
    wire.call(1, &beat("sw", "k", 1, &[]).with_member_epoch(-1));
    assert_eq!(
        group_type(&mut wire, "sw"),
        ("consumer".to_owned(), "Empty".to_owned())
    );
    // A classic member joins the empty group: it is a classic group now,
    // with its offsets.
    let (member, generation) = classic_member_with(&mut wire, "sw", "switch", &[0]);
    assert_eq!(group_type(&mut wire, "sw").0, "classic");
    assert_eq!(fetch(&mut wire, "sw", None, -1, "switch"), (0, 3));
    // While it has a member, a consumer member is refused (policy
    // disabled); once it left, the consumer member gets the group back.
    let refused = wire.call(1, &join("sw", "k2", &["switch"]));
    assert_eq!(refused.error_code, ResponseError::GroupIdNotFound.code());
    let left = wire.call(
        3,
        &LeaveGroupRequest::default()
            .with_group_id(text("sw").into())
            .with_members(vec![
                leave_group_request::MemberIdentity::default().with_member_id(text(&member)),
            ]),
    );
    assert_eq!(left.error_code, 0);
    let _ = generation;
    let joined = wire.call(1, &join("sw", "k2", &["switch"]));
    assert_eq!(joined.error_code, 0, "{:?}", joined.error_message);
    assert_eq!(group_type(&mut wire, "sw").0, "consumer");
    assert_eq!(
        fetch(&mut wire, "sw", Some("k2"), joined.member_epoch, "switch"),
        (0, 3)
    );
    // Classic requests for consumer-protocol members are refused.
    assert_eq!(
        classic_heartbeat(&mut wire, "sw", "k2", joined.member_epoch),
        ResponseError::UnknownMemberId.code()
    );
    let other = classic_join(&mut wire, "sw", "", "connect", Bytes::from_static(b"x"));
    assert_eq!(
        other.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
}

#[test]
fn librdkafka_classic_and_consumer_protocol_members_share_one_group() {
    use crate::consumer_groups::{
        Member, Received, group_consumer, produce, wait_for_all, wait_for_assignments,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "");
    kafka_clients::create_topic(&broker.address, "mixed-clients", 4, &[]);
    let first_batch = produce(&broker.address, "mixed-clients", 4, "first", 400);
    let received: Received = Default::default();
    // The classic member commits only when partitions are revoked (not on
    // a timer), so every record it consumed is committed in a rebalance:
    // the downgrade's rebalance must accept those commits.
    let classic = Member::start_consumer(
        group_consumer(
            &broker.address,
            "mixed-rdkafka",
            "classic",
            &[("auto.commit.interval.ms", "600000")],
        ),
        "mixed-clients",
        "classic",
        &received,
    );
    wait_for_assignments(&[&classic], 4, &[4], Duration::from_secs(30));
    // A consumer-protocol member joins: the group is upgraded and the
    // classic member rejoins it through JoinGroup.
    let modern = Member::start_consumer(
        kip848_consumer(&broker.address, "mixed-rdkafka", "modern"),
        "mixed-clients",
        "modern",
        &received,
    );
    wait_for_assignments(&[&classic, &modern], 4, &[2, 2], Duration::from_secs(30));
    wait_for_all(&received, &first_batch, Duration::from_secs(30));
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(group_type(&mut wire, "mixed-rdkafka").0, "consumer");
    let second_batch = produce(&broker.address, "mixed-clients", 4, "second", 400);
    wait_for_all(&received, &second_batch, Duration::from_secs(30));
    // The consumer-protocol member leaves: the group is a classic one again
    // and its member takes all four partitions back.
    modern.leave();
    wait_for_assignments(&[&classic], 4, &[4], Duration::from_secs(30));
    assert_eq!(group_type(&mut wire, "mixed-rdkafka").0, "classic");
    let third_batch = produce(&broker.address, "mixed-clients", 4, "third", 400);
    wait_for_all(&received, &third_batch, Duration::from_secs(30));
    classic.leave();
    assert_eq!(
        duplicates(&received),
        (0, Vec::<String>::new()),
        "each record is consumed once"
    );
}

/// The copy-forward snapshot of `__consumer_offsets` keeps a consumer
/// group's records along with its offsets: after the log start moved past
/// everything the group wrote, a kill -9 and a restart still find it.
#[test]
fn a_consumer_group_survives_the_compaction_of_its_offsets_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut wire, topic) = start_with_topic(dir.path(), "stream", 2);
    let joined = wire.call(1, &join("compacted", "m", &["stream"]));
    assert_eq!(assigned(&joined, topic), Some(vec![0, 1]));
    let churn: Vec<(&str, i32, i64)> = (0..2600).map(|offset| ("stream", 0, offset)).collect();
    for _ in 0..4 {
        let codes = commit(&mut wire, 9, "compacted", "m", 1, &churn);
        assert!(codes.iter().all(|&code| code == 0));
    }
    assert_eq!(
        commit(&mut wire, 9, "compacted", "m", 1, &[("stream", 0, 777)]),
        [0]
    );

    let partition = sluice::broker::group::coordinator::offsets_partition("compacted", 50) as i32;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .unwrap();
    let log_start = |consumer: &rdkafka::consumer::BaseConsumer| {
        rdkafka::consumer::Consumer::fetch_watermarks(
            consumer,
            "__consumer_offsets",
            partition,
            Duration::from_secs(5),
        )
        .unwrap()
    };
    let both: &[i32] = &[0, 1];
    let keep_alive = |wire: &mut Wire| {
        let beat = wire.call(1, &beat("compacted", "m", 1, &[(topic, both)]));
        assert_eq!((beat.error_code, beat.member_epoch), (0, 1));
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        keep_alive(&mut wire);
        let (low, high) = log_start(&consumer);
        if low > 0 {
            // One offset, the group, its target epoch, and the member's three.
            assert!(
                high - low <= 6,
                "only the live records remain: {low}..{high}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never compacted ({low}..{high})");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Past the next checkpoint, which records the new log start.
    for _ in 0..12 {
        keep_alive(&mut wire);
        std::thread::sleep(Duration::from_millis(250));
    }
    let before = describe(&mut wire, "compacted");
    drop(wire);
    broker.kill9();
    let broker = restart(dir.path());
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .unwrap();
    let (low, _) = log_start(&consumer);
    assert!(low > 0, "the replay starts past the group's first records");
    let mut wire = Wire::connect(&broker.address);
    let after = describe(&mut wire, "compacted");
    assert_eq!(after.error_code, 0, "{:?}", after.error_message);
    assert_eq!(after.members, before.members);
    assert_eq!(after.group_epoch, before.group_epoch);
    keep_alive(&mut wire);
    assert_eq!(
        fetch(&mut wire, "compacted", Some("m"), 1, "stream"),
        (0, 777)
    );
}

const RESOURCE_GROUP: i8 = 32;
const OP_SET: i8 = 0;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_GROUP: i8 = 8;

/// (value, source) of each group config of `group`.
fn group_configs(wire: &mut Wire, group: &str) -> Vec<(String, String, i8)> {
    let described = topic_configs::describe(wire, RESOURCE_GROUP, group);
    assert_eq!(described.error_code, 0, "{:?}", described.error_message);
    described
        .configs
        .iter()
        .map(|config| {
            let value = config.value.as_ref().map(ToString::to_string);
            (
                config.name.to_string(),
                value.unwrap_or_default(),
                config.config_source,
            )
        })
        .collect()
}

#[test]
fn group_configs_set_one_groups_session_timeout_and_heartbeat_interval_durably() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut wire, _topic) = start_with_topic(dir.path(), "configured", 1);
    // A group nobody has used yet is described with the broker's values.
    assert_eq!(
        group_configs(&mut wire, "slow"),
        [
            (
                "consumer.heartbeat.interval.ms".to_owned(),
                "300".to_owned(),
                SOURCE_STATIC_BROKER
            ),
            (
                "consumer.session.timeout.ms".to_owned(),
                "1500".to_owned(),
                SOURCE_STATIC_BROKER
            ),
        ]
    );
    for (name, operations, code, message) in [
        (
            "slow",
            vec![("consumer.session.timeout.ms", OP_SET, Some("999"))],
            ResponseError::InvalidConfig,
            "greater than or equal to group.consumer.min.session.timeout.ms",
        ),
        (
            "slow",
            vec![("consumer.heartbeat.interval.ms", OP_SET, Some("15001"))],
            ResponseError::InvalidConfig,
            "less than or equal to group.consumer.max.heartbeat.interval.ms",
        ),
        (
            "slow",
            vec![
                ("consumer.session.timeout.ms", OP_SET, Some("1200")),
                ("consumer.heartbeat.interval.ms", OP_SET, Some("1200")),
            ],
            ResponseError::InvalidConfig,
            "must be greater than consumer.heartbeat.interval.ms",
        ),
        (
            "slow",
            vec![("session.timeout.ms", OP_SET, Some("5000"))],
            ResponseError::InvalidConfig,
            "Unknown group config name",
        ),
        (
            "slow",
            vec![("consumer.session.timeout.ms", 2, Some("5000"))],
            ResponseError::InvalidConfig,
            "not a LIST",
        ),
        (
            "",
            vec![("consumer.session.timeout.ms", OP_SET, Some("5000"))],
            ResponseError::InvalidRequest,
            "must not be empty",
        ),
    ] {
        let (got, text) =
            topic_configs::alter_incremental(&mut wire, RESOURCE_GROUP, name, &operations);
        assert_eq!(
            (got, text.contains(message)),
            (code.code(), true),
            "{operations:?}: {text}"
        );
    }
    let (code, text) = topic_configs::alter_incremental(
        &mut wire,
        RESOURCE_GROUP,
        "slow",
        &[
            ("consumer.session.timeout.ms", OP_SET, Some("4000")),
            ("consumer.heartbeat.interval.ms", OP_SET, Some("700")),
        ],
    );
    assert_eq!(code, 0, "{text}");

    // Members of "slow" are told its interval and outlive the broker's
    // 1.5 s session timeout; those of another group are not.
    let slow = wire.call(1, &join("slow", "patient", &["configured"]));
    assert_eq!(slow.heartbeat_interval_ms, 700);
    let quick = wire.call(1, &join("quick", "hasty", &["configured"]));
    assert_eq!(quick.heartbeat_interval_ms, 300);
    std::thread::sleep(Duration::from_millis(2500));
    let slow = wire.call(1, &beat("slow", "patient", slow.member_epoch, &[]));
    assert_eq!(slow.error_code, 0, "{:?}", slow.error_message);
    let quick = wire.call(1, &beat("quick", "hasty", quick.member_epoch, &[]));
    assert_eq!(quick.error_code, ResponseError::UnknownMemberId.code());

    // The configs survive a kill -9, and a legacy AlterConfigs with none
    // gives the group the broker's values back.
    broker.kill9();
    let broker = restart(dir.path());
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(
        group_configs(&mut wire, "slow"),
        [
            (
                "consumer.heartbeat.interval.ms".to_owned(),
                "700".to_owned(),
                SOURCE_GROUP
            ),
            (
                "consumer.session.timeout.ms".to_owned(),
                "4000".to_owned(),
                SOURCE_GROUP
            ),
        ]
    );
    let rejoined = wire.call(1, &join("slow", "again", &["configured"]));
    assert_eq!(rejoined.heartbeat_interval_ms, 700);
    let outcomes =
        topic_configs::alter_legacy(&mut wire, 2, &[(RESOURCE_GROUP, "slow", &[])], false);
    assert_eq!(outcomes[0].0, 0, "{}", outcomes[0].1);
    let defaults = group_configs(&mut wire, "slow");
    assert!(
        defaults
            .iter()
            .all(|(_, _, source)| *source == SOURCE_STATIC_BROKER),
        "{defaults:?}"
    );
    let again = wire.call(1, &beat("slow", "again", rejoined.member_epoch, &[]));
    assert_eq!(again.heartbeat_interval_ms, 300);
}
