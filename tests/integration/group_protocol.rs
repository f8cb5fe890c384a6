//! The group protocol at the wire, for what librdkafka does not expose:
//! generation fencing, static membership, batched lookups and leaves,
//! group administration, offset deletion, and the compaction of
//! `__consumer_offsets` across a kill -9.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::Consumer;

use crate::consumer_groups::start_broker;
use crate::kafka_clients;
use crate::wire::Wire;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn join_request(group: &str, member: &str, instance: Option<&str>) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(text(group).into())
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(text(member))
        .with_group_instance_id(instance.map(text))
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(text("range"))
                .with_metadata(Bytes::from_static(b"subscription")),
        ])
}

/// Join as a new dynamic member (v5: MEMBER_ID_REQUIRED, then again with
/// the id). Returns the final response.
fn join_new(wire: &mut Wire, group: &str) -> JoinGroupResponse {
    let first = wire.call(5, &join_request(group, "", None));
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    assert!(!first.member_id.is_empty());
    wire.call(5, &join_request(group, &first.member_id, None))
}

fn sync(
    wire: &mut Wire,
    group: &str,
    generation: i32,
    member: &str,
    assign: &[&str],
) -> SyncGroupResponse {
    let assignments = assign
        .iter()
        .map(|id| {
            SyncGroupRequestAssignment::default()
                .with_member_id(text(id))
                .with_assignment(Bytes::from(format!("for {id}")))
        })
        .collect();
    wire.call(
        5,
        &SyncGroupRequest::default()
            .with_group_id(text(group).into())
            .with_generation_id(generation)
            .with_member_id(text(member))
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text("range")))
            .with_assignments(assignments),
    )
}

fn heartbeat(
    wire: &mut Wire,
    group: &str,
    generation: i32,
    member: &str,
    instance: Option<&str>,
) -> i16 {
    wire.call(
        4,
        &HeartbeatRequest::default()
            .with_group_id(text(group).into())
            .with_generation_id(generation)
            .with_member_id(text(member))
            .with_group_instance_id(instance.map(text)),
    )
    .error_code
}

fn commit_request(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(text(group).into())
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(text(member))
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(text(topic).into())
                .with_partitions(
                    offsets
                        .iter()
                        .map(|&(partition, offset)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(partition)
                                .with_committed_offset(offset)
                                .with_committed_metadata(Some(text("m")))
                        })
                        .collect(),
                ),
        ])
}

/// Commit and return the per-partition codes.
fn commit(
    wire: &mut Wire,
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Vec<i16> {
    let response = wire.call(
        8,
        &commit_request(group, generation, member, topic, offsets),
    );
    response.topics[0]
        .partitions
        .iter()
        .map(|partition| partition.error_code)
        .collect()
}

/// Committed offsets of `groups` for `topic` partition 0 (v8, one request).
fn fetch_offsets(wire: &mut Wire, groups: &[&str]) -> Vec<Vec<(String, i32, i64)>> {
    let request = OffsetFetchRequest::default().with_groups(
        groups
            .iter()
            .map(|group| {
                OffsetFetchRequestGroup::default()
                    .with_group_id(text(group).into())
                    .with_topics(None)
            })
            .collect(),
    );
    let response = wire.call(8, &request);
    response
        .groups
        .iter()
        .map(|group| {
            assert_eq!(group.error_code, 0);
            group
                .topics
                .iter()
                .flat_map(|topic| {
                    topic.partitions.iter().map(|partition| {
                        (
                            topic.name.to_string(),
                            partition.partition_index,
                            partition.committed_offset,
                        )
                    })
                })
                .collect()
        })
        .collect()
}

#[test]
fn a_stale_generation_is_fenced_and_a_rejoin_starts_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    kafka_clients::create_topic(&broker.address, "jobs", 2, &[]);
    let mut a = Wire::connect(&broker.address);
    let mut b = Wire::connect(&broker.address);

    let joined = join_new(&mut a, "fence");
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.generation_id, 1);
    assert_eq!(joined.leader, joined.member_id, "the only member leads");
    let a_id = joined.member_id.to_string();
    let synced = sync(&mut a, "fence", 1, &a_id, &[&a_id]);
    assert_eq!(synced.error_code, 0);
    assert_eq!(synced.assignment.as_ref(), format!("for {a_id}").as_bytes());
    assert_eq!(
        commit(&mut a, "fence", 1, &a_id, "jobs", &[(0, 5)]),
        vec![0]
    );

    // B joins: its join waits until A rejoins; A learns from its heartbeat.
    let first = b.call(5, &join_request("fence", "", None));
    let b_id = first.member_id.to_string();
    let b_join = b.send(5, &join_request("fence", &b_id, None));
    let deadline = Instant::now() + Duration::from_secs(5);
    while heartbeat(&mut a, "fence", 1, &a_id, None) != ResponseError::RebalanceInProgress.code() {
        assert!(Instant::now() < deadline, "A never heard of the rebalance");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rejoined = a.call(5, &join_request("fence", &a_id, None));
    assert_eq!(rejoined.generation_id, 2);
    assert_eq!(rejoined.members.len(), 2, "the leader sees both members");
    let frame = b.read_frame().unwrap();
    assert!(
        !frame.is_empty(),
        "B's join (correlation {b_join}) is answered"
    );

    // A commit or heartbeat from generation 1 is fenced.
    assert_eq!(
        commit(&mut a, "fence", 1, &a_id, "jobs", &[(0, 9)]),
        vec![ResponseError::IllegalGeneration.code()]
    );
    assert_eq!(
        heartbeat(&mut a, "fence", 1, &a_id, None),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        heartbeat(&mut a, "fence", 2, "nobody", None),
        ResponseError::UnknownMemberId.code()
    );
    // Until the leader syncs, commits wait for the rebalance to finish.
    assert_eq!(
        commit(&mut a, "fence", 2, &a_id, "jobs", &[(0, 9)]),
        vec![ResponseError::RebalanceInProgress.code()]
    );
    assert_eq!(
        sync(&mut a, "fence", 2, &a_id, &[&a_id, &b_id]).error_code,
        0
    );
    assert_eq!(
        commit(&mut a, "fence", 2, &a_id, "jobs", &[(0, 9)]),
        vec![0]
    );
    assert_eq!(
        fetch_offsets(&mut a, &["fence"]),
        vec![vec![("jobs".to_owned(), 0, 9)]]
    );
}

#[test]
fn a_static_member_that_restarts_fences_its_old_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let mut old = Wire::connect(&broker.address);
    let joined = old.call(5, &join_request("static", "", Some("host-1")));
    assert_eq!(joined.error_code, 0, "static members get an id at once");
    let old_id = joined.member_id.to_string();
    assert_eq!(
        sync(
            &mut old,
            "static",
            joined.generation_id,
            &old_id,
            &[&old_id]
        )
        .error_code,
        0
    );

    let mut new = Wire::connect(&broker.address);
    let rejoined = new.call(5, &join_request("static", "", Some("host-1")));
    assert_eq!(rejoined.error_code, 0);
    assert_ne!(rejoined.member_id, joined.member_id);
    assert_eq!(
        heartbeat(
            &mut old,
            "static",
            rejoined.generation_id,
            &old_id,
            Some("host-1")
        ),
        ResponseError::FencedInstanceId.code()
    );
    let leave = old.call(
        4,
        &LeaveGroupRequest::default()
            .with_group_id(text("static").into())
            .with_members(vec![
                MemberIdentity::default()
                    .with_member_id(text(&old_id))
                    .with_group_instance_id(Some(text("host-1"))),
            ]),
    );
    assert_eq!(
        leave.members[0].error_code,
        ResponseError::FencedInstanceId.code()
    );
}

/// librdkafka test 0102 (issue 14): a static member that was the group's
/// leader restarts into a stable group. Kafka rebalances for neither a
/// leader nor a follower: from JoinGroup v9 the new incarnation is told it
/// leads with `skip_assignment` (KIP-814); before v9 the answer names the
/// old leader id so the client does not run an assignment.
#[test]
fn a_restarted_static_leader_keeps_the_generation_and_its_assignment() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let mut first = Wire::connect(&broker.address);
    let joined = first.call(5, &join_request("static-leader", "", Some("host-1")));
    assert_eq!(joined.error_code, 0);
    let first_id = joined.member_id.to_string();
    assert_eq!(joined.leader.to_string(), first_id);
    let generation = joined.generation_id;
    let synced = sync(
        &mut first,
        "static-leader",
        generation,
        &first_id,
        &[&first_id],
    );
    assert_eq!(synced.error_code, 0);

    // Restart with JoinGroup v9: leader, skip the assignor, same generation.
    let mut second = Wire::connect(&broker.address);
    let rejoined = second.call(9, &join_request("static-leader", "", Some("host-1")));
    assert_eq!(rejoined.error_code, 0);
    let second_id = rejoined.member_id.to_string();
    assert_ne!(second_id, first_id);
    assert_eq!(rejoined.generation_id, generation, "no rebalance");
    assert!(rejoined.skip_assignment);
    assert_eq!(rejoined.leader.to_string(), second_id);
    assert_eq!(rejoined.members.len(), 1);
    // Its SyncGroup (without assignments) gets the assignment it had.
    let kept = sync(&mut second, "static-leader", generation, &second_id, &[]);
    assert_eq!(kept.error_code, 0);
    assert_eq!(kept.assignment, Bytes::from(format!("for {first_id}")));

    // Restart with JoinGroup v5: the answer names the previous leader id.
    let mut third = Wire::connect(&broker.address);
    let rejoined = third.call(5, &join_request("static-leader", "", Some("host-1")));
    assert_eq!(rejoined.error_code, 0);
    assert_eq!(rejoined.generation_id, generation, "no rebalance");
    assert_eq!(rejoined.leader.to_string(), second_id);
    assert!(rejoined.members.is_empty());
    assert_eq!(
        heartbeat(
            &mut third,
            "static-leader",
            generation,
            &rejoined.member_id,
            Some("host-1")
        ),
        0,
        "the group stays stable"
    );
}

#[test]
fn groups_are_found_listed_described_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    kafka_clients::create_topic(&broker.address, "ledger", 1, &[]);
    let mut wire = Wire::connect(&broker.address);

    let found = wire.call(
        4,
        &FindCoordinatorRequest::default().with_coordinator_keys(vec![text("alpha"), text("beta")]),
    );
    assert_eq!(found.coordinators.len(), 2);
    for coordinator in &found.coordinators {
        assert_eq!(coordinator.error_code, 0);
        assert_eq!(
            format!("{}:{}", coordinator.host, coordinator.port),
            broker.address
        );
    }

    let joined = join_new(&mut wire, "alpha");
    let member = joined.member_id.to_string();
    assert_eq!(
        sync(
            &mut wire,
            "alpha",
            joined.generation_id,
            &member,
            &[&member]
        )
        .error_code,
        0
    );
    // Clients that assign partitions themselves commit with generation -1.
    assert_eq!(
        commit(&mut wire, "beta", -1, "", "ledger", &[(0, 3)]),
        vec![0]
    );
    assert_eq!(
        commit(&mut wire, "alpha", -1, "", "ledger", &[(0, 1)]),
        vec![ResponseError::UnknownMemberId.code()],
        "a group with members only takes commits from them"
    );
    assert_eq!(
        commit(&mut wire, "beta", -1, "", "no-such-topic", &[(0, 1)]),
        vec![ResponseError::UnknownTopicOrPartition.code()]
    );

    let listed = wire.call(4, &ListGroupsRequest::default());
    let mut names: Vec<(String, String)> = listed
        .groups
        .iter()
        .map(|group| (group.group_id.to_string(), group.group_state.to_string()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("alpha".to_owned(), "Stable".to_owned()),
            ("beta".to_owned(), "Empty".to_owned())
        ]
    );
    let described = wire.call(
        5,
        &DescribeGroupsRequest::default()
            .with_groups(vec![text("alpha").into(), text("gone").into()]),
    );
    assert_eq!(described.groups[0].group_state.as_str(), "Stable");
    assert_eq!(described.groups[0].protocol_data.as_str(), "range");
    assert_eq!(described.groups[0].members.len(), 1);
    assert_eq!(
        described.groups[0].members[0].client_id.as_str(),
        "sluice-tests"
    );
    assert_eq!(described.groups[1].group_state.as_str(), "Dead");

    let deleted = wire.call(
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![text("alpha").into()]),
    );
    assert_eq!(
        deleted.results[0].error_code,
        ResponseError::NonEmptyGroup.code()
    );
    let left = wire.call(
        5,
        &LeaveGroupRequest::default()
            .with_group_id(text("alpha").into())
            .with_members(vec![
                MemberIdentity::default().with_member_id(text(&member)),
            ]),
    );
    assert_eq!(left.members[0].error_code, 0);
    // Issue 14: an emptied consumer group keeps its protocol type, as in
    // Kafka (it was listed as "", which tools read as a simple group).
    let listed = wire.call(4, &ListGroupsRequest::default());
    let alpha = listed
        .groups
        .iter()
        .find(|group| group.group_id.as_str() == "alpha")
        .expect("alpha is listed");
    assert_eq!(
        (alpha.group_state.as_str(), alpha.protocol_type.as_str()),
        ("Empty", "consumer")
    );
    let deleted = wire.call(
        2,
        &DeleteGroupsRequest::default()
            .with_groups_names(vec![text("alpha").into(), text("nope").into()]),
    );
    assert_eq!(deleted.results[0].error_code, 0);
    assert_eq!(
        deleted.results[1].error_code,
        ResponseError::GroupIdNotFound.code()
    );

    // OffsetDelete of a group without members.
    let removed = wire.call(
        0,
        &OffsetDeleteRequest::default()
            .with_group_id(text("beta").into())
            .with_topics(vec![
                OffsetDeleteRequestTopic::default()
                    .with_name(text("ledger").into())
                    .with_partitions(vec![
                        OffsetDeleteRequestPartition::default().with_partition_index(0),
                    ]),
            ]),
    );
    assert_eq!(removed.error_code, 0);
    assert_eq!(removed.topics[0].partitions[0].error_code, 0);
    assert_eq!(
        fetch_offsets(&mut wire, &["alpha", "beta"]),
        vec![vec![], vec![]]
    );
    // The group stays after the coordinator's next ticks (100 ms) found it
    // empty and without offsets, so it can still be deleted, as in Kafka
    // (a CI failure with @platformatic/kafka: GROUP_ID_NOT_FOUND).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let deleted = wire.call(
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![text("beta").into()]),
    );
    assert_eq!(deleted.results[0].error_code, 0);
}

#[test]
fn offsets_log_is_compacted_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    kafka_clients::create_topic(&broker.address, "stream", 2, &[]);
    let mut wire = Wire::connect(&broker.address);
    // 10 000+ superseded records of one key, then the value that counts.
    let churn: Vec<(i32, i64)> = (0..2600).map(|offset| (0, offset)).collect();
    for _ in 0..4 {
        assert!(
            commit(&mut wire, "churn", -1, "", "stream", &churn)
                .iter()
                .all(|&code| code == 0)
        );
    }
    assert_eq!(
        commit(&mut wire, "churn", -1, "", "stream", &[(0, 777), (1, 42)]),
        vec![0, 0]
    );

    let partition = sluice::broker::group::coordinator::offsets_partition("churn", 50) as i32;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (low, high) = consumer
            .fetch_watermarks("__consumer_offsets", partition, Duration::from_secs(5))
            .unwrap();
        if low > 0 {
            assert!(
                high - low <= 4,
                "only the live entries remain: {low}..{high}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the offsets log was never compacted ({low}..{high})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(broker.log_contains("committed offsets recovered"));

    // The internal topic is the broker's own.
    let (producer, acks) = kafka_clients::producer(
        &broker.address,
        &[("message.timeout.ms", "3000"), ("retries", "0")],
    );
    kafka_clients::send(
        &producer,
        "__consumer_offsets",
        Some(0),
        None,
        b"forged",
        &[],
    );
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    assert_eq!(
        acks.failed.lock().unwrap().len(),
        1,
        "producing to __consumer_offsets is refused"
    );

    broker.kill9();
    let broker = start_broker(dir.path());
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(
        fetch_offsets(&mut wire, &["churn"]),
        vec![vec![
            ("stream".to_owned(), 0, 777),
            ("stream".to_owned(), 1, 42)
        ]]
    );
}

/// Issue 14: a group's committed offsets outlived the deletion of their
/// topic, so a topic re-created with the same name was read from the old
/// offset (10 of its new records silently skipped). Kafka forgets them; so
/// does Sluice, also when the broker restarts right after the deletion.
#[test]
fn deleting_a_topic_forgets_its_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    kafka_clients::create_topic(&broker.address, "rt", 1, &[]);
    kafka_clients::create_topic(&broker.address, "kept", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(commit(&mut wire, "g", -1, "", "rt", &[(0, 10)]), vec![0]);
    assert_eq!(commit(&mut wire, "g", -1, "", "kept", &[(0, 7)]), vec![0]);
    let (ok, out) =
        crate::consumer_groups::sluice_admin(&broker.address, &["topics", "delete", "rt"]);
    assert!(ok, "{out}");
    kafka_clients::create_topic(&broker.address, "rt", 1, &[]);
    assert_eq!(
        fetch_offsets(&mut wire, &["g"]),
        vec![vec![("kept".to_owned(), 0, 7)]],
        "only the surviving topic's offset is left"
    );
    drop(wire);
    broker.kill9();
    let broker = start_broker(dir.path());
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(
        fetch_offsets(&mut wire, &["g"]),
        vec![vec![("kept".to_owned(), 0, 7)]]
    );
    broker.stop();
}
