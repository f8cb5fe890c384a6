//! Members that speak the classic protocol inside a consumer group (Kafka
//! 4's mixed groups, KIP-848's migration path), and the conversions
//! between the two kinds of group.
//!
//! A classic member joins a consumer group with JoinGroup: its
//! subscription and owned partitions come from its embedded protocol
//! metadata, the coordinator assigns it like any member, and JoinGroup
//! answers with the member's epoch as the generation (the member is never
//! the leader). SyncGroup answers with its current assignment, encoded in
//! the embedded protocol. Its Heartbeat gets REBALANCE_IN_PROGRESS once the
//! group epoch passed its own, and it rejoins to catch up (unless it still
//! has partitions to revoke: it first syncs the smaller assignment). It must
//! rejoin and sync within its rebalance timeout, and heartbeat within its
//! session timeout, or it is fenced.
//!
//! Conversions (`groups.consumer_migration_policy`): a ConsumerGroupHeartbeat
//! joining a classic group with members turns it into a consumer group when
//! upgrades are allowed and the group uses the `consumer` protocol type; its
//! members keep their partitions and epochs (their generation). When the last
//! consumer-protocol member leaves a consumer group whose other members are
//! classic, and downgrades are allowed, it becomes a classic group again,
//! whose members rejoin in a rebalance. Kafka also downgrades when a static
//! member joining with JoinGroup replaces the last consumer-protocol one;
//! here that group stays a consumer group until a member leaves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::embedded::{decode_assignment, decode_subscription, encode_assignment};
use super::group::{ConsumerGroup, ConsumerGroupLimits, Context, GroupError, new_member_id};
use super::member::{Assignment, ClassicMetadata, ConsumerMember, MemberState};
use crate::broker::group::membership::{CONSUMER_PROTOCOL_TYPE, Group, MovedMember};
use crate::broker::metadata::{ClusterMetadata, TopicId};

/// A JoinGroup request to a consumer group, decoded.
#[derive(Clone, Debug)]
pub struct ClassicJoin {
    /// Empty: a new member.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED.
    pub requires_known_member_id: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassicJoinOutcome {
    /// Rejoin with this id (nothing was stored).
    MemberIdRequired(String),
    Joined {
        member_id: String,
        generation: i32,
        protocol_name: String,
    },
}

/// A SyncGroup request to a consumer group, decoded.
#[derive(Clone, Debug)]
pub struct ClassicSync {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassicSyncOutcome {
    Assigned {
        protocol_name: String,
        assignment: Bytes,
    },
    /// The member must rejoin first (its epoch is behind the group's).
    RebalanceInProgress,
}

impl ConsumerGroup {
    /// Whether a classic member with these protocols may join (Kafka's
    /// `supportsClassicProtocols`): the `consumer` protocol type, and a
    /// protocol every classic member already here supports.
    pub fn supports_classic_protocols(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
    ) -> bool {
        if protocol_type != CONSUMER_PROTOCOL_TYPE || protocols.is_empty() {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .filter_map(|member| member.metadata.classic.as_ref())
                .all(|classic| classic.protocols.iter().any(|(other, _)| other == name))
        })
    }

    /// JoinGroup to a consumer group with members (Kafka's
    /// `classicGroupJoinToConsumerGroup`).
    pub fn classic_join(
        &mut self,
        join: &ClassicJoin,
        context: &Context<'_>,
    ) -> Result<ClassicJoinOutcome, GroupError> {
        let unknown = join.member_id.is_empty();
        let member_id = if unknown {
            new_member_id()
        } else {
            join.member_id.clone()
        };
        if self.members.len() >= context.limits.members_max
            && !self.members.contains_key(&member_id)
        {
            return Err(GroupError::new(
                ResponseError::GroupMaxSizeReached,
                format!(
                    "The consumer group has reached its maximum capacity of {} members.",
                    context.limits.members_max
                ),
            ));
        }
        if !self.supports_classic_protocols(&join.protocol_type, &join.protocols) {
            return Err(GroupError::new(
                ResponseError::InconsistentGroupProtocol,
                format!("Member {member_id}'s protocols are not supported."),
            ));
        }
        if join.requires_known_member_id && unknown && join.instance_id.is_none() {
            return Ok(ClassicJoinOutcome::MemberIdRequired(member_id));
        }
        let subscription = decode_subscription(&join.protocols[0].1).ok_or_else(|| {
            GroupError::new(
                ResponseError::UnknownServerError,
                "Malformed embedded consumer protocol in subscription deserialization.",
            )
        })?;
        let (member, replaced) = match &join.instance_id {
            None => (
                self.members
                    .get(&member_id)
                    .cloned()
                    .unwrap_or_else(|| ConsumerMember::new(&member_id, context.now)),
                None,
            ),
            Some(instance) => {
                self.classic_static_member(&member_id, instance, unknown, context.now)?
            }
        };
        let mut updated = member;
        let mut names = subscription.topics.clone();
        names.sort();
        names.dedup();
        let subscription_changed =
            names != updated.metadata.subscribed_topic_names || updated.metadata.regex().is_some();
        let metadata = &mut updated.metadata;
        metadata.instance_id = join.instance_id.clone().or(metadata.instance_id.take());
        if subscription.rack_id.is_some() {
            metadata.rack_id = subscription.rack_id.clone();
        }
        if join.rebalance_timeout_ms != -1 {
            metadata.rebalance_timeout_ms = join.rebalance_timeout_ms;
        }
        metadata.subscribed_topic_names = names;
        metadata.subscribed_topic_regex = Some(String::new());
        metadata.client_id = join.client_id.clone();
        metadata.client_host = join.client_host.clone();
        metadata.classic = Some(ClassicMetadata {
            session_timeout_ms: join.session_timeout_ms,
            protocols: join.protocols.clone(),
        });
        if let Some(old_id) = replaced {
            self.members.remove(&old_id);
            if let Some(target) = self.targets.remove(&old_id) {
                self.targets.insert(member_id.clone(), target);
            }
        }
        if subscription_changed || !self.members.contains_key(&member_id) {
            self.subscriptions_changed();
        }
        self.members.insert(member_id.clone(), updated);
        let owned = owned_by_id(&subscription.owned, context.cluster);
        self.settle(&member_id, subscription_changed, Some(&owned), context)?;
        let member = self
            .members
            .get_mut(&member_id)
            .expect("the member was just installed");
        member.session_deadline =
            context.now + member.session_timeout(context.limits.session_timeout);
        member.classic_deadline = Some(context.now + rebalance_timeout(member));
        Ok(ClassicJoinOutcome::Joined {
            member_id,
            generation: member.current.epoch,
            protocol_name: join.protocols[0].0.clone(),
        })
    }

    /// The static member a JoinGroup with `instance` names: a new one, the
    /// same one, or (a new process, `unknown` member id) a replacement.
    fn classic_static_member(
        &self,
        member_id: &str,
        instance: &str,
        unknown: bool,
        now: Instant,
    ) -> Result<(ConsumerMember, Option<String>), GroupError> {
        let existing = self.static_member(instance);
        if !unknown {
            let existing = existing.ok_or_else(|| {
                GroupError::new(
                    ResponseError::UnknownMemberId,
                    format!("Instance id {instance} is unknown."),
                )
            })?;
            check_instance(existing, member_id, instance)?;
            return Ok((existing.clone(), None));
        }
        let Some(existing) = existing else {
            return Ok((ConsumerMember::new(member_id, now), None));
        };
        let mut member = existing.clone();
        member.id = member_id.to_owned();
        member.current.epoch = 0;
        member.current.previous_epoch = 0;
        member.revocation_deadline = None;
        Ok((member, Some(existing.id.clone())))
    }

    /// The member a SyncGroup or Heartbeat names, which must be classic
    /// (Kafka: UNKNOWN_MEMBER_ID for a consumer-protocol member).
    fn classic_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<&ConsumerMember, GroupError> {
        let member = match instance_id {
            None => self
                .members
                .get(member_id)
                .ok_or_else(|| self.unknown_member(member_id))?,
            Some(instance) => {
                let member = self.static_member(instance).ok_or_else(|| {
                    GroupError::new(
                        ResponseError::UnknownMemberId,
                        format!("Instance id {instance} is unknown."),
                    )
                })?;
                check_instance(member, member_id, instance)?;
                member
            }
        };
        if !member.uses_classic_protocol() {
            return Err(GroupError::new(
                ResponseError::UnknownMemberId,
                format!("Member {member_id} does not use the classic protocol."),
            ));
        }
        if member.current.epoch != generation {
            return Err(GroupError::new(
                ResponseError::IllegalGeneration,
                format!(
                    "The request generation id {generation} is not equal to the member epoch {} of member {member_id}.",
                    member.current.epoch
                ),
            ));
        }
        Ok(member)
    }

    /// Whether a classic member must rejoin (Kafka's
    /// `classicGroupHeartbeatToConsumerGroup`): the group moved past its
    /// epoch and it has nothing left to revoke at this one, or partitions
    /// of its target that other members held back then are free now (only
    /// a rejoin hands them over: a classic member has no other way to learn
    /// its new assignment). It must then rejoin within its rebalance timeout.
    fn must_rejoin(&mut self, member_id: &str, now: Instant) -> bool {
        let epoch = self.epoch;
        let Some(member) = self.members.get(member_id) else {
            return false;
        };
        let behind = epoch > member.current.epoch
            && member.current.state != MemberState::UnrevokedPartitions;
        let released = member.current.state == MemberState::UnreleasedPartitions
            && !self.waiting_on_unreleased(member_id);
        if !behind && !released {
            return false;
        }
        let member = self.members.get_mut(member_id).expect("found above");
        if member.classic_deadline.is_none() {
            member.classic_deadline = Some(now + rebalance_timeout(member));
        }
        true
    }

    /// Whether another member still owns (or must still revoke) a
    /// partition of `member_id`'s target that it does not have yet.
    fn waiting_on_unreleased(&self, member_id: &str) -> bool {
        let (Some(member), Some(target)) =
            (self.members.get(member_id), self.targets.get(member_id))
        else {
            return false;
        };
        let taken = self.owned_by_others(member_id);
        target.iter().any(|(topic, partitions)| {
            partitions.iter().any(|partition| {
                let held = member
                    .current
                    .assigned
                    .get(topic)
                    .is_some_and(|assigned| assigned.contains(partition));
                !held && taken.contains(&(*topic, *partition))
            })
        })
    }

    /// SyncGroup to a consumer group: the member's assignment.
    pub fn classic_sync(
        &mut self,
        sync: &ClassicSync,
        limits: &ConsumerGroupLimits,
        cluster: &ClusterMetadata,
        now: Instant,
    ) -> Result<ClassicSyncOutcome, GroupError> {
        let member = self.classic_member(
            &sync.member_id,
            sync.instance_id.as_deref(),
            sync.generation,
        )?;
        let protocol_name = member
            .metadata
            .classic
            .as_ref()
            .and_then(|classic| classic.protocols.first())
            .map(|(name, _)| name.clone())
            .unwrap_or_default();
        let type_differs = sync
            .protocol_type
            .as_deref()
            .is_some_and(|wanted| wanted != CONSUMER_PROTOCOL_TYPE);
        let name_differs = sync
            .protocol_name
            .as_deref()
            .is_some_and(|wanted| wanted != protocol_name);
        if type_differs || name_differs {
            return Err(GroupError::new(
                ResponseError::InconsistentGroupProtocol,
                format!(
                    "The protocol of member {} does not match the group's.",
                    sync.member_id
                ),
            ));
        }
        let member_id = member.id.clone();
        if self.must_rejoin(&member_id, now) {
            return Ok(ClassicSyncOutcome::RebalanceInProgress);
        }
        let member = self.members.get_mut(&member_id).expect("found above");
        member.classic_deadline = None;
        member.session_deadline = now + member.session_timeout(limits.session_timeout);
        Ok(ClassicSyncOutcome::Assigned {
            protocol_name,
            assignment: encode_assignment(&by_name(&member.current.assigned, cluster)),
        })
    }

    /// Heartbeat to a consumer group: 0, or REBALANCE_IN_PROGRESS when the
    /// member must rejoin.
    pub fn classic_heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        limits: &ConsumerGroupLimits,
        now: Instant,
    ) -> Result<i16, GroupError> {
        let member_id = self
            .classic_member(member_id, instance_id, generation)?
            .id
            .clone();
        let member = self.members.get_mut(&member_id).expect("found above");
        member.session_deadline = now + member.session_timeout(limits.session_timeout);
        if self.must_rejoin(&member_id, now) {
            return Ok(ResponseError::RebalanceInProgress.code());
        }
        Ok(0)
    }

    /// LeaveGroup to a consumer group: classic members leave (one epoch
    /// bump for all); one code per departure.
    pub fn classic_leave(
        &mut self,
        departures: &[(String, Option<String>)],
        context: &Context<'_>,
    ) -> Vec<i16> {
        let mut leaving: Vec<String> = Vec::new();
        let codes = departures
            .iter()
            .map(|(member_id, instance_id)| {
                let found = match instance_id {
                    Some(instance) => self
                        .static_member(instance)
                        .ok_or(ResponseError::UnknownMemberId)
                        .and_then(|member| {
                            if !member_id.is_empty() && member.id != *member_id {
                                Err(ResponseError::FencedInstanceId)
                            } else {
                                Ok(member)
                            }
                        }),
                    None => self
                        .members
                        .get(member_id)
                        .ok_or(ResponseError::UnknownMemberId),
                };
                match found {
                    Ok(member) if member.uses_classic_protocol() => {
                        leaving.push(member.id.clone());
                        0
                    }
                    Ok(_) => ResponseError::UnknownMemberId.code(),
                    Err(error) => error.code(),
                }
            })
            .collect();
        let ids: Vec<&str> = leaving.iter().map(String::as_str).collect();
        for id in &ids {
            tracing::info!(group = %self.id, member = id, "classic member left the consumer group");
        }
        self.fence_all(&ids, context);
        codes
    }

    /// Whether the group has members and all joined with JoinGroup.
    pub fn only_classic_members(&self) -> bool {
        !self.members.is_empty()
            && self
                .members
                .values()
                .all(ConsumerMember::uses_classic_protocol)
    }

    /// A consumer group made of a classic group's members (Kafka's online
    /// upgrade): each keeps its partitions, at the group's generation as its
    /// epoch. Refused (GROUP_ID_NOT_FOUND) when a member's embedded protocol
    /// does not decode.
    pub fn from_classic(
        classic: &Group,
        cluster: &Arc<ClusterMetadata>,
        now: Instant,
    ) -> Result<ConsumerGroup, GroupError> {
        let malformed = || {
            GroupError::new(
                ResponseError::GroupIdNotFound,
                format!(
                    "Cannot upgrade classic group {} to consumer group because the embedded \
                     consumer protocol is malformed.",
                    classic.id
                ),
            )
        };
        let mut group = ConsumerGroup::new(&classic.id, now);
        let generation = classic.generation;
        let protocol = classic.protocol_name.clone().unwrap_or_default();
        for member in classic.members() {
            let subscription =
                decode_subscription(&member.metadata(&protocol)).ok_or_else(malformed)?;
            let assigned = decode_assignment(&member.assignment).ok_or_else(malformed)?;
            let mut consumer = ConsumerMember::new(&member.id, now);
            let mut names = subscription.topics;
            names.sort();
            names.dedup();
            consumer.metadata.instance_id = member.instance_id.clone();
            consumer.metadata.rack_id = subscription.rack_id;
            consumer.metadata.client_id = member.client_id.clone();
            consumer.metadata.client_host = member.client_host.clone();
            consumer.metadata.subscribed_topic_names = names;
            consumer.metadata.subscribed_topic_regex = Some(String::new());
            consumer.metadata.rebalance_timeout_ms = millis(member.rebalance_timeout);
            consumer.metadata.classic = Some(ClassicMetadata {
                session_timeout_ms: millis(member.session_timeout),
                protocols: member.protocols.clone(),
            });
            let assignment = by_id(&assigned, cluster);
            consumer.current.epoch = generation;
            consumer.current.previous_epoch = generation;
            consumer.current.assigned = assignment.clone();
            consumer.session_deadline = now + member.session_timeout;
            group.targets.insert(member.id.clone(), assignment);
            group.members.insert(member.id.clone(), consumer);
        }
        group.epoch = generation;
        group.assignment_epoch = generation;
        group.metadata_hash = group.subscriptions(cluster).hash;
        Ok(group)
    }

    /// This group's members as a classic group takes them (Kafka's online
    /// downgrade), each with its current assignment encoded.
    pub fn to_classic_members(&self, cluster: &ClusterMetadata) -> Vec<MovedMember> {
        self.members
            .values()
            .filter_map(|member| {
                let classic = member.metadata.classic.as_ref()?;
                Some(MovedMember {
                    id: member.id.clone(),
                    instance_id: member.metadata.instance_id.clone(),
                    client_id: member.metadata.client_id.clone(),
                    client_host: member.metadata.client_host.clone(),
                    session_timeout: duration(classic.session_timeout_ms),
                    rebalance_timeout: duration(member.metadata.rebalance_timeout_ms),
                    protocols: classic.protocols.clone(),
                    assignment: encode_assignment(&by_name(&member.current.assigned, cluster)),
                })
            })
            .collect()
    }
}

fn check_instance(
    member: &ConsumerMember,
    member_id: &str,
    instance: &str,
) -> Result<(), GroupError> {
    if member.id != member_id {
        return Err(GroupError::new(
            ResponseError::FencedInstanceId,
            format!(
                "Static member {member_id} with instance id {instance} was fenced by member {}.",
                member.id
            ),
        ));
    }
    Ok(())
}

fn rebalance_timeout(member: &ConsumerMember) -> Duration {
    duration(member.metadata.rebalance_timeout_ms)
}

fn duration(millis: i32) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

/// Owned partitions by name, as topic ids (unknown topics are dropped).
fn owned_by_id(
    owned: &[(String, Vec<i32>)],
    cluster: &ClusterMetadata,
) -> Vec<(TopicId, Vec<i32>)> {
    owned
        .iter()
        .filter_map(|(name, partitions)| Some((cluster.topic(name)?.id, partitions.clone())))
        .collect()
}

fn by_id(partitions: &[(String, Vec<i32>)], cluster: &ClusterMetadata) -> Assignment {
    let mut assignment = Assignment::new();
    for (topic, partitions) in owned_by_id(partitions, cluster) {
        assignment.entry(topic).or_default().extend(partitions);
    }
    assignment
}

/// An assignment by topic name (topics deleted meanwhile are dropped).
fn by_name(assignment: &Assignment, cluster: &ClusterMetadata) -> Vec<(String, Vec<i32>)> {
    let names: HashMap<TopicId, &str> = cluster
        .topics
        .values()
        .map(|topic| (topic.id, topic.name.as_str()))
        .collect();
    assignment
        .iter()
        .filter_map(|(topic, partitions)| {
            Some((
                (*names.get(topic)?).to_owned(),
                partitions.iter().copied().collect(),
            ))
        })
        .collect()
}
