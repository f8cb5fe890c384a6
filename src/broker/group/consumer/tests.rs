//! The consumer group state machine driven through whole scenarios, and
//! its records replayed against the state they describe.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use super::assignor::Assignor;
use super::group::{
    ConsumerGroup, ConsumerGroupLimits, ConsumerGroupState, Context, HeartbeatAnswer,
    HeartbeatRequest, STATIC_LEAVE_EPOCH,
};
use super::member::{Assignment, MemberState};
use super::records::{ConsumerRecord, apply, changes};
use crate::broker::metadata::{ClusterMetadata, TopicId};

const ORDERS: TopicId = TopicId([7; 16]);

fn cluster(topics: &[(&str, TopicId, u32)]) -> Arc<ClusterMetadata> {
    Arc::new(ClusterMetadata::with_topics(topics))
}

fn limits() -> ConsumerGroupLimits {
    ConsumerGroupLimits {
        session_timeout: Duration::from_secs(45),
        heartbeat_interval: Duration::from_secs(5),
        members_max: 10,
        assignors: vec![Assignor::Uniform, Assignor::Range],
    }
}

fn join(member: &str, topics: &[&str]) -> HeartbeatRequest {
    HeartbeatRequest {
        member_id: member.to_owned(),
        member_epoch: 0,
        rebalance_timeout_ms: 30_000,
        subscribed_topic_names: Some(topics.iter().map(|name| (*name).to_owned()).collect()),
        owned: Some(Vec::new()),
        client_id: "client".to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        ..HeartbeatRequest::default()
    }
}

fn beat(member: &str, epoch: i32, owned: &[i32]) -> HeartbeatRequest {
    HeartbeatRequest {
        member_id: member.to_owned(),
        member_epoch: epoch,
        rebalance_timeout_ms: -1,
        owned: Some(vec![(ORDERS, owned.to_vec())]),
        client_id: "client".to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        ..HeartbeatRequest::default()
    }
}

fn partitions(answer: &HeartbeatAnswer) -> Vec<i32> {
    answer
        .assignment
        .as_ref()
        .and_then(|assignment| assignment.get(&ORDERS))
        .map(|set| set.iter().copied().collect())
        .unwrap_or_default()
}

/// Apply `request` the way the coordinator does (on a copy, records from
/// the difference), replay the records into `replayed`, and check that the
/// replayed group equals the live one.
struct Harness {
    group: ConsumerGroup,
    replayed: HashMap<String, ConsumerGroup>,
    cluster: Arc<ClusterMetadata>,
    limits: ConsumerGroupLimits,
    now: Instant,
}

impl Harness {
    fn new(cluster: Arc<ClusterMetadata>) -> Harness {
        let now = Instant::now();
        Harness {
            group: ConsumerGroup::new("g", now),
            replayed: HashMap::new(),
            cluster,
            limits: limits(),
            now,
        }
    }

    fn heartbeat(&mut self, request: HeartbeatRequest) -> Result<HeartbeatAnswer, ResponseError> {
        let mut next = self.group.clone();
        let context = Context {
            limits: &self.limits,
            cluster: &self.cluster,
            now: self.now,
        };
        let answer = next
            .heartbeat(&request, &context)
            .map_err(|error| error.error)?;
        self.install(next);
        Ok(answer)
    }

    fn leave(&mut self, member: &str, instance: Option<&str>, epoch: i32) {
        let mut next = self.group.clone();
        let context = Context {
            limits: &self.limits,
            cluster: &self.cluster,
            now: self.now,
        };
        next.leave(member, instance, epoch, &context).unwrap();
        self.install(next);
    }

    fn install(&mut self, next: ConsumerGroup) {
        let records = changes(Some(&self.group), Some(&next));
        for record in records {
            let encoded = (record.encode_key(), record.encode_value());
            let decoded = ConsumerRecord::decode(&encoded.0, encoded.1.as_deref()).unwrap();
            assert_eq!(decoded, record);
            apply(&mut self.replayed, decoded, self.now);
        }
        self.group = next;
        self.assert_replay_matches();
    }

    fn assert_replay_matches(&self) {
        let replayed = self.replayed.get("g").expect("the group was written");
        assert_eq!(replayed.epoch, self.group.epoch);
        assert_eq!(replayed.metadata_hash, self.group.metadata_hash);
        assert_eq!(replayed.assignment_epoch, self.group.assignment_epoch);
        assert_eq!(replayed.targets, self.group.targets);
        let view = |group: &ConsumerGroup| -> Vec<_> {
            group
                .members
                .values()
                .map(|member| {
                    (
                        member.id.clone(),
                        member.metadata.clone(),
                        member.current.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(view(replayed), view(&self.group));
    }
}

#[test]
fn a_partition_moves_to_a_new_member_only_after_its_owner_revoked_it() {
    let mut harness = Harness::new(cluster(&[("orders", ORDERS, 4)]));
    let first = harness.heartbeat(join("a", &["orders"])).unwrap();
    assert_eq!(first.member_epoch, 1);
    assert_eq!(partitions(&first), [0, 1, 2, 3]);
    let second = harness.heartbeat(join("b", &["orders"])).unwrap();
    assert_eq!(second.member_epoch, 2);
    // b's target is two partitions a still owns: it gets none yet.
    assert_eq!(partitions(&second), Vec::<i32>::new());
    assert_eq!(harness.group.state(), ConsumerGroupState::Reconciling);
    assert_eq!(
        harness.group.members["b"].current.state,
        MemberState::UnreleasedPartitions
    );
    // a is told to keep two: it stays at epoch 1 until it revokes.
    let revoke = harness.heartbeat(beat("a", 1, &[0, 1, 2, 3])).unwrap();
    assert_eq!(revoke.member_epoch, 1);
    let kept = partitions(&revoke);
    assert_eq!(kept.len(), 2);
    let given: Vec<i32> = (0..4)
        .filter(|partition| !kept.contains(partition))
        .collect();
    // b asks again while a still owns them: still nothing.
    let waiting = harness.heartbeat(beat("b", 2, &[])).unwrap();
    assert_eq!(waiting.assignment, None);
    // a reports the revocation and moves to epoch 2; b then gets them.
    let revoked = harness.heartbeat(beat("a", 1, &kept)).unwrap();
    assert_eq!(revoked.member_epoch, 2);
    let handed = harness.heartbeat(beat("b", 2, &[])).unwrap();
    assert_eq!(partitions(&handed), given);
    harness.heartbeat(beat("b", 2, &given)).unwrap();
    assert_eq!(harness.group.state(), ConsumerGroupState::Stable);
}

#[test]
fn epochs_ahead_or_behind_are_fenced_but_a_lost_bump_is_forgiven() {
    let mut harness = Harness::new(cluster(&[("orders", ORDERS, 2)]));
    harness.heartbeat(join("a", &["orders"])).unwrap();
    assert_eq!(
        harness.heartbeat(beat("a", 5, &[0, 1])),
        Err(ResponseError::FencedMemberEpoch)
    );
    harness.heartbeat(join("b", &["orders"])).unwrap();
    // a revokes one partition and reaches epoch 2...
    let revoke = harness.heartbeat(beat("a", 1, &[0, 1])).unwrap();
    let kept = partitions(&revoke);
    harness.heartbeat(beat("a", 1, &kept)).unwrap();
    assert_eq!(harness.group.members["a"].epoch(), 2);
    // ...but never got the answer: epoch 1 with a subset is accepted.
    let retried = harness.heartbeat(beat("a", 1, &kept)).unwrap();
    assert_eq!(retried.member_epoch, 2);
    // Epoch 1 claiming a partition it no longer has is fenced.
    assert_eq!(
        harness.heartbeat(beat("a", 1, &[0, 1])),
        Err(ResponseError::FencedMemberEpoch)
    );
    assert_eq!(
        harness.heartbeat(beat("nobody", 3, &[])),
        Err(ResponseError::UnknownMemberId)
    );
}

#[test]
fn a_static_member_that_left_for_now_gets_its_partitions_back_under_a_new_id() {
    let mut harness = Harness::new(cluster(&[("orders", ORDERS, 2)]));
    let mut request = join("a1", &["orders"]);
    request.instance_id = Some("instance-a".to_owned());
    harness.heartbeat(request.clone()).unwrap();
    let epoch = harness.group.epoch;
    // A second instance with the same id while the first is active.
    let mut intruder = request.clone();
    intruder.member_id = "a2".to_owned();
    assert_eq!(
        harness.heartbeat(intruder.clone()),
        Err(ResponseError::UnreleasedInstanceId)
    );
    harness.leave("a1", Some("instance-a"), STATIC_LEAVE_EPOCH);
    assert_eq!(harness.group.members["a1"].epoch(), STATIC_LEAVE_EPOCH);
    let back = harness.heartbeat(intruder).unwrap();
    assert_eq!(back.member_id, "a2");
    assert_eq!(partitions(&back), [0, 1]);
    assert!(!harness.group.members.contains_key("a1"));
    assert_eq!(harness.group.epoch, epoch, "no rebalance");
}

#[test]
fn growing_a_subscribed_topic_bumps_the_epoch_and_assigns_the_new_partitions() {
    let mut harness = Harness::new(cluster(&[("orders", ORDERS, 2)]));
    harness.heartbeat(join("a", &["orders"])).unwrap();
    assert_eq!(harness.group.epoch, 1);
    harness.cluster = cluster(&[("orders", ORDERS, 3)]);
    let grown = harness.heartbeat(beat("a", 1, &[0, 1])).unwrap();
    assert_eq!(harness.group.epoch, 2);
    assert_eq!(grown.member_epoch, 2);
    assert_eq!(partitions(&grown), [0, 1, 2]);
}

#[test]
fn a_regex_subscription_follows_the_topics_that_match() {
    let other = TopicId([8; 16]);
    let mut harness = Harness::new(cluster(&[("orders", ORDERS, 1), ("audit", other, 1)]));
    let mut request = join("a", &[]);
    request.subscribed_topic_names = None;
    request.subscribed_topic_regex = Some("ord.*".to_owned());
    let answer = harness.heartbeat(request.clone()).unwrap();
    assert_eq!(partitions(&answer), [0]);
    assert_eq!(answer.assignment.unwrap().len(), 1, "audit does not match");
    request.member_id = "b".to_owned();
    request.subscribed_topic_regex = Some("(unclosed".to_owned());
    assert_eq!(
        harness.heartbeat(request),
        Err(ResponseError::InvalidRegularExpression)
    );
}

#[test]
fn leaving_frees_the_partitions_and_an_empty_group_is_empty() {
    let mut harness = Harness::new(cluster(&[("orders", ORDERS, 2)]));
    harness.heartbeat(join("a", &["orders"])).unwrap();
    harness.heartbeat(join("b", &["orders"])).unwrap();
    harness.leave("a", None, -1);
    assert_eq!(harness.group.state(), ConsumerGroupState::Assigning);
    let after = harness.heartbeat(beat("b", 2, &[])).unwrap();
    assert_eq!(partitions(&after), [0, 1]);
    harness.leave("b", None, -1);
    assert_eq!(harness.group.state(), ConsumerGroupState::Empty);
    let records = changes(Some(&harness.group), None);
    let mut replayed = harness.replayed.clone();
    for record in records {
        apply(&mut replayed, record, harness.now);
    }
    assert!(replayed.is_empty(), "the tombstones delete the group");
}

#[test]
fn a_full_group_refuses_new_members() {
    let mut harness = Harness::new(cluster(&[("orders", ORDERS, 2)]));
    harness.limits.members_max = 1;
    harness.heartbeat(join("a", &["orders"])).unwrap();
    assert_eq!(
        harness.heartbeat(join("b", &["orders"])),
        Err(ResponseError::GroupMaxSizeReached)
    );
    let _: &Assignment = &harness.group.targets["a"];
}
