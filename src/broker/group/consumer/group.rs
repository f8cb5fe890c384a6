//! One consumer-protocol group (KIP-848) as a synchronous state machine:
//! members join, heartbeat and leave through ConsumerGroupHeartbeat; the
//! group epoch moves when the subscriptions or the subscribed topics change;
//! a new epoch gets a new target assignment from the server-side assignor;
//! and each member is reconciled towards its target at its heartbeats, never
//! receiving a partition before its previous owner has revoked it (see
//! `reconcile.rs`).
//!
//! States (Kafka's names): `Empty` (no members), `Assigning` (the group
//! epoch is ahead of the target's), `Reconciling` (some member is not yet at
//! the target), `Stable`.
//!
//! Nothing here waits or does I/O. The coordinator applies a request to a
//! copy of the group, writes the records describing the change
//! (`records.rs`), and only then installs the copy; an error leaves the copy
//! half changed, so it is dropped.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use super::assignor::{AssignmentSpec, Assignor, MemberSpec};
use super::member::{Assignment, ConsumerMember, MemberState, is_subset};
use super::reconcile::{MustRejoin, Reconcile, reconcile};
use super::subscription::{ResolvedCache, Subscriptions, compile};
use crate::broker::metadata::{ClusterMetadata, TopicId};
use crate::security::acl::Viewer;

/// The epoch a dynamic member sends to leave.
pub const LEAVE_EPOCH: i32 = -1;
/// The epoch a static member sends to leave for now, keeping its partitions
/// until its session runs out.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerGroupState {
    Empty,
    Assigning,
    Reconciling,
    Stable,
}

impl ConsumerGroupState {
    /// The name Kafka tools print and ListGroups filters on.
    pub fn name(self) -> &'static str {
        match self {
            ConsumerGroupState::Empty => "Empty",
            ConsumerGroupState::Assigning => "Assigning",
            ConsumerGroupState::Reconciling => "Reconciling",
            ConsumerGroupState::Stable => "Stable",
        }
    }
}

/// The settings a consumer group runs under: the broker's, with the group's
/// configs applied (`group/config.rs`).
#[derive(Clone, Debug)]
pub struct ConsumerGroupLimits {
    /// The group's `consumer.session.timeout.ms`, else
    /// `groups.consumer_session_timeout_ms`.
    pub session_timeout: Duration,
    /// The group's `consumer.heartbeat.interval.ms`, else
    /// `groups.consumer_heartbeat_interval_ms`; told to every member.
    pub heartbeat_interval: Duration,
    /// `groups.members_max`.
    pub members_max: usize,
    /// `groups.consumer_assignors`: the first is the default.
    pub assignors: Vec<Assignor>,
}

/// A ConsumerGroupHeartbeat request, decoded. `None` fields did not change
/// since the member's last heartbeat.
#[derive(Clone, Debug, Default)]
pub struct HeartbeatRequest {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned: Option<Vec<(TopicId, Vec<i32>)>>,
    pub client_id: String,
    pub client_host: String,
    /// The member's view of topics: a regex subscription matches only
    /// topics it may describe.
    pub viewer: Viewer,
}

/// A successful heartbeat's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub member_id: String,
    pub member_epoch: i32,
    /// Sent when the member joined, sent a full request, or its assignment
    /// changed.
    pub assignment: Option<Assignment>,
}

/// A Kafka error with its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupError {
    pub error: ResponseError,
    pub message: String,
}

impl GroupError {
    pub fn new(error: ResponseError, message: impl Into<String>) -> GroupError {
        GroupError {
            error,
            message: message.into(),
        }
    }
}

/// What a request acts on: the clock and the cluster's topics.
pub struct Context<'a> {
    pub limits: &'a ConsumerGroupLimits,
    pub cluster: &'a Arc<ClusterMetadata>,
    pub now: Instant,
}

#[derive(Clone, Debug)]
pub struct ConsumerGroup {
    pub id: String,
    /// The group epoch: bumped by every change of membership, subscriptions
    /// or subscribed topics.
    pub epoch: i32,
    /// [`Subscriptions::hash`] as of the last bump.
    pub metadata_hash: u64,
    /// The epoch of the target assignment.
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    /// Each member's target assignment (every member has one, maybe empty).
    pub targets: BTreeMap<String, Assignment>,
    /// Since when the group has had no members (for offset expiry).
    pub empty_since: Instant,
    /// Bumped whenever a member's subscription changes (for the cache).
    subscription_version: u64,
    resolved: ResolvedCache,
}

impl ConsumerGroup {
    pub fn new(id: &str, now: Instant) -> ConsumerGroup {
        ConsumerGroup {
            id: id.to_owned(),
            epoch: 0,
            metadata_hash: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            targets: BTreeMap::new(),
            empty_since: now,
            subscription_version: 0,
            resolved: ResolvedCache::default(),
        }
    }

    pub fn state(&self) -> ConsumerGroupState {
        if self.members.is_empty() {
            ConsumerGroupState::Empty
        } else if self.epoch > self.assignment_epoch {
            ConsumerGroupState::Assigning
        } else if self
            .members
            .values()
            .any(|member| !member.is_reconciled_to(self.assignment_epoch))
        {
            ConsumerGroupState::Reconciling
        } else {
            ConsumerGroupState::Stable
        }
    }

    pub fn static_member(&self, instance_id: &str) -> Option<&ConsumerMember> {
        self.members
            .values()
            .find(|member| member.metadata.instance_id.as_deref() == Some(instance_id))
    }

    /// A member's subscription changed outside a heartbeat (replay, a
    /// classic member's join): the next resolution must not be cached.
    pub fn subscriptions_changed(&mut self) {
        self.subscription_version += 1;
    }

    /// Members' subscriptions resolved against `cluster`.
    pub fn subscriptions(&mut self, cluster: &Arc<ClusterMetadata>) -> Arc<Subscriptions> {
        self.resolved
            .resolve(cluster, self.subscription_version, self.members.values())
    }

    /// The assignor the members prefer (the most named; the first name among
    /// equals), or the default. A name no longer configured is skipped.
    pub fn preferred_assignor(&self, limits: &ConsumerGroupLimits) -> Assignor {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for name in self
            .members
            .values()
            .filter_map(|member| member.metadata.server_assignor.as_deref())
        {
            *votes.entry(name).or_default() += 1;
        }
        let mut best: Option<(usize, Assignor)> = None;
        for (name, count) in votes {
            if let Some(assignor) =
                Assignor::from_name(name).filter(|assignor| limits.assignors.contains(assignor))
                && best.is_none_or(|(most, _)| count > most)
            {
                best = Some((count, assignor));
            }
        }
        best.map(|(_, assignor)| assignor)
            .or_else(|| limits.assignors.first().copied())
            .unwrap_or(Assignor::Uniform)
    }

    /// A heartbeat with member epoch 0 (join) or above. Leaving (epoch -1
    /// or -2) is [`ConsumerGroup::leave`].
    pub fn heartbeat(
        &mut self,
        request: &HeartbeatRequest,
        context: &Context<'_>,
    ) -> Result<HeartbeatAnswer, GroupError> {
        let joining = request.member_epoch == 0;
        self.check_size(&request.member_id, context.limits)?;
        let member_id = if request.member_id.is_empty() {
            new_member_id()
        } else {
            request.member_id.clone()
        };
        let (member, replaced) = match &request.instance_id {
            None => (self.dynamic_member(&member_id, request, context.now)?, None),
            Some(instance) => self.static_member_for(&member_id, instance, request, context.now)?,
        };
        let assigned_before = member.current.assigned.clone();
        let mut updated = member;
        let subscription_changed = update_metadata(&mut updated, request)?;
        if let Some(old_id) = replaced {
            self.members.remove(&old_id);
            if let Some(target) = self.targets.remove(&old_id) {
                self.targets.insert(member_id.clone(), target);
            }
        }
        let is_new = !self.members.contains_key(&member_id);
        let view_changed = updated.viewer != request.viewer;
        updated.viewer = request.viewer.clone();
        if subscription_changed || is_new || (view_changed && updated.metadata.regex().is_some()) {
            self.subscription_version += 1;
        }
        self.members.insert(member_id.clone(), updated);
        self.settle(
            &member_id,
            subscription_changed,
            request.owned.as_deref(),
            context,
        )?;
        let member = self
            .members
            .get_mut(&member_id)
            .expect("the member was just installed");
        member.session_deadline = context.now + context.limits.session_timeout;
        let full = request.rebalance_timeout_ms != -1
            && (request.subscribed_topic_names.is_some()
                || request.subscribed_topic_regex.is_some())
            && request.owned.is_some();
        let assignment = (joining || full || member.current.assigned != assigned_before)
            .then(|| member.current.assigned.clone());
        Ok(HeartbeatAnswer {
            member_id,
            member_epoch: member.current.epoch,
            assignment,
        })
    }

    fn check_size(&self, member_id: &str, limits: &ConsumerGroupLimits) -> Result<(), GroupError> {
        if self.members.len() >= limits.members_max
            && (member_id.is_empty() || !self.members.contains_key(member_id))
        {
            return Err(GroupError::new(
                ResponseError::GroupMaxSizeReached,
                format!(
                    "The consumer group has reached its maximum capacity of {} members.",
                    limits.members_max
                ),
            ));
        }
        Ok(())
    }

    fn dynamic_member(
        &self,
        member_id: &str,
        request: &HeartbeatRequest,
        now: Instant,
    ) -> Result<ConsumerMember, GroupError> {
        match self.members.get(member_id) {
            Some(member) => {
                check_epoch(member, request)?;
                Ok(member.clone())
            }
            None if request.member_epoch == 0 => Ok(ConsumerMember::new(member_id, now)),
            None => Err(self.unknown_member(member_id)),
        }
    }

    pub fn unknown_member(&self, member_id: &str) -> GroupError {
        GroupError::new(
            ResponseError::UnknownMemberId,
            format!("Member {member_id} is not a member of group {}.", self.id),
        )
    }

    /// A static member: a new one, the same one heartbeating, or a new
    /// instance replacing one that left with epoch -2 (it takes over the
    /// old member's partitions and target; returns the old member's id).
    fn static_member_for(
        &self,
        member_id: &str,
        instance: &str,
        request: &HeartbeatRequest,
        now: Instant,
    ) -> Result<(ConsumerMember, Option<String>), GroupError> {
        let existing = self.static_member(instance);
        if request.member_epoch != 0 {
            let existing = existing.ok_or_else(|| {
                GroupError::new(
                    ResponseError::UnknownMemberId,
                    format!("Instance id {instance} is unknown."),
                )
            })?;
            if existing.id != member_id {
                return Err(GroupError::new(
                    ResponseError::FencedInstanceId,
                    format!(
                        "Static member {member_id} with instance id {instance} was fenced by member {}.",
                        existing.id
                    ),
                ));
            }
            check_epoch(existing, request)?;
            return Ok((existing.clone(), None));
        }
        let Some(existing) = existing else {
            let member = self
                .members
                .get(member_id)
                .cloned()
                .unwrap_or_else(|| ConsumerMember::new(member_id, now));
            return Ok((member, None));
        };
        if !existing.uses_classic_protocol() && existing.epoch() != STATIC_LEAVE_EPOCH {
            return Err(GroupError::new(
                ResponseError::UnreleasedInstanceId,
                format!(
                    "Static member {member_id} with instance id {instance} cannot join the group \
                     because the instance id is owned by {} member.",
                    existing.id
                ),
            ));
        }
        let mut member = existing.clone();
        member.id = member_id.to_owned();
        member.current.epoch = 0;
        member.current.previous_epoch = 0;
        member.revocation_deadline = None;
        member.classic_deadline = None;
        let replaced = (existing.id != member_id).then(|| existing.id.clone());
        Ok((member, replaced))
    }

    /// After a member's metadata changed: bump the epoch if the
    /// subscriptions or their topics changed, compute a new target if the
    /// epoch moved past it, and reconcile the member.
    pub(super) fn settle(
        &mut self,
        member_id: &str,
        subscription_changed: bool,
        owned: Option<&[(TopicId, Vec<i32>)]>,
        context: &Context<'_>,
    ) -> Result<(), GroupError> {
        let subscriptions = self.subscriptions(context.cluster);
        if self.epoch == 0 || subscription_changed || subscriptions.hash != self.metadata_hash {
            self.bump(subscriptions.hash);
        }
        if self.epoch > self.assignment_epoch {
            self.compute_targets(&subscriptions, context.limits);
        }
        self.reconcile_member(
            member_id,
            &subscriptions,
            subscription_changed,
            owned,
            context.now,
        )
    }

    fn bump(&mut self, hash: u64) {
        self.epoch += 1;
        self.metadata_hash = hash;
    }

    /// A new target for every member from the preferred assignor.
    fn compute_targets(&mut self, subscriptions: &Subscriptions, limits: &ConsumerGroupLimits) {
        let assignor = self.preferred_assignor(limits);
        let empty = Assignment::new();
        let no_topics = BTreeSet::new();
        let spec = AssignmentSpec {
            members: self
                .members
                .values()
                .map(|member| MemberSpec {
                    id: &member.id,
                    instance_id: member.metadata.instance_id.as_deref(),
                    topics: subscriptions
                        .per_member
                        .get(&member.id)
                        .unwrap_or(&no_topics)
                        .clone(),
                    previous: self.targets.get(&member.id).unwrap_or(&empty),
                })
                .collect(),
            partitions: &subscriptions.partitions,
        };
        self.targets = assignor.assign(&spec);
        self.assignment_epoch = self.epoch;
        tracing::info!(
            group = %self.id,
            epoch = self.epoch,
            assignor = assignor.name(),
            members = self.members.len(),
            "computed a new target assignment"
        );
    }

    /// Partitions owned (assigned or being revoked) by members other than
    /// `member_id`.
    pub(super) fn owned_by_others(&self, member_id: &str) -> HashSet<(TopicId, i32)> {
        let mut owned = HashSet::new();
        for member in self
            .members
            .values()
            .filter(|member| member.id != member_id)
        {
            for assignment in [&member.current.assigned, &member.current.pending_revocation] {
                for (topic, partitions) in assignment {
                    owned.extend(partitions.iter().map(|&partition| (*topic, partition)));
                }
            }
        }
        owned
    }

    /// Move `member_id` towards its target, and start or stop its
    /// rebalance timeout as it enters or leaves `UnrevokedPartitions`.
    pub fn reconcile_member(
        &mut self,
        member_id: &str,
        subscriptions: &Subscriptions,
        subscription_changed: bool,
        owned: Option<&[(TopicId, Vec<i32>)]>,
        now: Instant,
    ) -> Result<(), GroupError> {
        let Some(member) = self.members.get(member_id) else {
            return Ok(());
        };
        if member.is_reconciled_to(self.assignment_epoch) && !subscription_changed {
            return Ok(());
        }
        let taken = self.owned_by_others(member_id);
        let owned_by_another = |topic: TopicId, partition: i32| taken.contains(&(topic, partition));
        let empty = Assignment::new();
        let no_topics = BTreeSet::new();
        let step = Reconcile {
            target_epoch: self.assignment_epoch,
            target: self.targets.get(member_id).unwrap_or(&empty),
            subscribed: subscriptions
                .per_member
                .get(member_id)
                .unwrap_or(&no_topics),
            enforce_subscription: subscription_changed,
            owned_by_another: &owned_by_another,
            owned,
        };
        let next = reconcile(&member.current, &step).map_err(|MustRejoin| {
            GroupError::new(
                ResponseError::FencedMemberEpoch,
                "The consumer group member is in a unknown state. The member must abandon all \
                 its partitions and rejoin.",
            )
        })?;
        let member = self.members.get_mut(member_id).expect("looked up above");
        if next != member.current {
            // A classic member has join and sync deadlines instead.
            let revoking = next.state == MemberState::UnrevokedPartitions;
            member.revocation_deadline = (revoking && !member.uses_classic_protocol()).then(|| {
                let timeout = u64::try_from(member.metadata.rebalance_timeout_ms).unwrap_or(0);
                (next.epoch, now + Duration::from_millis(timeout))
            });
            member.current = next;
        }
        Ok(())
    }

    /// ConsumerGroupHeartbeat with epoch -1 (leave) or -2 (a static member
    /// leaves for now and keeps its partitions until its session runs
    /// out). Returns the member id and epoch to answer with.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        epoch: i32,
        context: &Context<'_>,
    ) -> Result<(String, i32), GroupError> {
        let Some(instance) = instance_id else {
            if !self.members.contains_key(member_id) {
                return Err(self.unknown_member(member_id));
            }
            tracing::info!(group = %self.id, member = member_id, "member left the consumer group");
            self.fence(member_id, context);
            return Ok((member_id.to_owned(), epoch));
        };
        let existing = self.static_member(instance).ok_or_else(|| {
            GroupError::new(
                ResponseError::UnknownMemberId,
                format!("Instance id {instance} is unknown."),
            )
        })?;
        if existing.id != member_id {
            return Err(GroupError::new(
                ResponseError::FencedInstanceId,
                format!(
                    "Static member {member_id} with instance id {instance} was fenced by member {}.",
                    existing.id
                ),
            ));
        }
        if epoch == STATIC_LEAVE_EPOCH {
            tracing::info!(group = %self.id, member = member_id, instance, "static member left for now");
            let member = self.members.get_mut(member_id).expect("found above");
            member.current.epoch = STATIC_LEAVE_EPOCH;
            member.current.pending_revocation.clear();
            member.revocation_deadline = None;
            return Ok((member_id.to_owned(), STATIC_LEAVE_EPOCH));
        }
        tracing::info!(group = %self.id, member = member_id, instance, "static member left the consumer group");
        self.fence(member_id, context);
        Ok((member_id.to_owned(), epoch))
    }

    /// Remove a member (it left, or its session or rebalance timeout ran
    /// out): its partitions are free for the others, and the epoch is
    /// bumped so a new target is computed at the next heartbeat.
    pub fn fence(&mut self, member_id: &str, context: &Context<'_>) {
        self.fence_all(&[member_id], context);
    }

    /// [`ConsumerGroup::fence`] for several members, with one epoch bump.
    pub fn fence_all(&mut self, member_ids: &[&str], context: &Context<'_>) {
        let mut removed = false;
        for member_id in member_ids {
            removed |= self.members.remove(*member_id).is_some();
            self.targets.remove(*member_id);
        }
        if !removed {
            return;
        }
        self.subscription_version += 1;
        let hash = self.subscriptions(context.cluster).hash;
        self.bump(hash);
        if self.members.is_empty() {
            self.empty_since = context.now;
        }
    }

    /// Members whose session ran out, or who did not revoke within their
    /// rebalance timeout, with the reason (the coordinator fences them).
    pub fn expired(&self, now: Instant) -> Vec<(String, &'static str)> {
        self.members
            .values()
            .filter_map(|member| {
                if member.session_deadline <= now {
                    return Some((member.id.clone(), "its session timed out"));
                }
                if let Some((epoch, deadline)) = member.revocation_deadline
                    && deadline <= now
                    && member.current.epoch == epoch
                    && member.current.state == MemberState::UnrevokedPartitions
                {
                    return Some((
                        member.id.clone(),
                        "it did not revoke its partitions within its rebalance timeout",
                    ));
                }
                if member
                    .classic_deadline
                    .is_some_and(|deadline| deadline <= now)
                {
                    return Some((
                        member.id.clone(),
                        "it did not rejoin or sync within its rebalance timeout",
                    ));
                }
                None
            })
            .collect()
    }

    /// After a restart: every member gets a fresh session, and members that
    /// must revoke get a fresh rebalance timeout (Kafka reschedules both
    /// when it loads a group).
    pub fn restart_timers(&mut self, session_timeout: Duration, now: Instant) {
        self.empty_since = now;
        for member in self.members.values_mut() {
            member.session_deadline = now + member.session_timeout(session_timeout);
            let revoking = member.current.state == MemberState::UnrevokedPartitions;
            member.revocation_deadline = (revoking && !member.uses_classic_protocol()).then(|| {
                let timeout = u64::try_from(member.metadata.rebalance_timeout_ms).unwrap_or(0);
                (member.current.epoch, now + Duration::from_millis(timeout))
            });
        }
    }

    /// Offset commit rules for a consumer group (Kafka's
    /// `ConsumerGroup.validateOffsetCommit`): anyone while the group is
    /// empty with epoch < 0; otherwise a member at its current epoch
    /// (STALE_MEMBER_EPOCH, or ILLEGAL_GENERATION for a classic member); a
    /// consumer-protocol member needs OffsetCommit v9+.
    pub fn check_commit(
        &self,
        member_id: &str,
        epoch: i32,
        version: Option<i16>,
    ) -> Result<(), GroupError> {
        if epoch < 0 && self.members.is_empty() {
            return Ok(());
        }
        let member = self
            .members
            .get(member_id)
            .ok_or_else(|| self.unknown_member(member_id))?;
        if let Some(version) = version
            && !member.uses_classic_protocol()
            && version < 9
        {
            return Err(GroupError::new(
                ResponseError::UnsupportedVersion,
                "OffsetCommit version 9 or above must be used by members using the modern group \
                 protocol",
            ));
        }
        check_member_epoch(member, epoch)
    }

    /// OffsetFetch v9 rules: no member id and epoch < 0 reads freely;
    /// otherwise a member at its current epoch.
    pub fn check_fetch(&self, member_id: Option<&str>, epoch: i32) -> Result<(), GroupError> {
        let Some(member_id) = member_id else {
            if epoch < 0 {
                return Ok(());
            }
            return Err(self.unknown_member(""));
        };
        let member = self
            .members
            .get(member_id)
            .ok_or_else(|| self.unknown_member(member_id))?;
        check_member_epoch(member, epoch)
    }
}

fn check_member_epoch(member: &ConsumerMember, epoch: i32) -> Result<(), GroupError> {
    if epoch == member.current.epoch {
        return Ok(());
    }
    let expected = member.current.epoch;
    if member.uses_classic_protocol() {
        return Err(GroupError::new(
            ResponseError::IllegalGeneration,
            format!(
                "The received generation id {epoch} does not match the expected member epoch {expected}."
            ),
        ));
    }
    Err(GroupError::new(
        ResponseError::StaleMemberEpoch,
        format!(
            "The received member epoch {epoch} does not match the expected member epoch {expected}."
        ),
    ))
}

/// A heartbeat's epoch against the member's (Kafka's
/// `throwIfConsumerGroupMemberEpochIsInvalid`): 0 rejoins; a greater one is
/// fenced; a smaller one is accepted only as the previous epoch with owned
/// partitions within the assignment (the answer with the bump was lost).
fn check_epoch(member: &ConsumerMember, request: &HeartbeatRequest) -> Result<(), GroupError> {
    let received = request.member_epoch;
    let known = member.current.epoch;
    if received == 0 || received == known {
        return Ok(());
    }
    if received > known {
        return Err(GroupError::new(
            ResponseError::FencedMemberEpoch,
            format!(
                "The consumer group member has a greater member epoch ({received}) than the one \
                 known by the group coordinator ({known}). The member must abandon all its \
                 partitions and rejoin."
            ),
        ));
    }
    let lost_bump = received == member.current.previous_epoch
        && request
            .owned
            .as_deref()
            .is_some_and(|owned| is_subset(owned, &member.current.assigned));
    if !lost_bump {
        return Err(GroupError::new(
            ResponseError::FencedMemberEpoch,
            format!(
                "The consumer group member has a smaller member epoch ({received}) than the one \
                 known by the group coordinator ({known}). The member must abandon all its \
                 partitions and rejoin."
            ),
        ));
    }
    Ok(())
}

/// Apply what the request changed to the member's metadata; returns whether
/// its subscription (names or regex) changed. A new regex must compile.
fn update_metadata(
    member: &mut ConsumerMember,
    request: &HeartbeatRequest,
) -> Result<bool, GroupError> {
    let metadata = &mut member.metadata;
    if let Some(instance) = &request.instance_id {
        metadata.instance_id = Some(instance.clone());
    }
    if let Some(rack) = &request.rack_id {
        metadata.rack_id = Some(rack.clone());
    }
    if request.rebalance_timeout_ms != -1 {
        metadata.rebalance_timeout_ms = request.rebalance_timeout_ms;
    }
    if let Some(assignor) = &request.server_assignor {
        metadata.server_assignor = Some(assignor.clone());
    }
    metadata.client_id = request.client_id.clone();
    metadata.client_host = request.client_host.clone();
    metadata.classic = None;
    let mut changed = false;
    if let Some(names) = &request.subscribed_topic_names {
        let mut names = names.clone();
        names.sort();
        names.dedup();
        changed |= names != metadata.subscribed_topic_names;
        metadata.subscribed_topic_names = names;
    }
    if let Some(regex) = &request.subscribed_topic_regex
        && metadata.subscribed_topic_regex.as_ref() != Some(regex)
    {
        if !regex.is_empty()
            && let Err(error) = compile(regex)
        {
            return Err(GroupError::new(
                ResponseError::InvalidRegularExpression,
                format!(
                    "SubscribedTopicRegex `{regex}` is not a valid regular expression: {error}."
                ),
            ));
        }
        changed |= metadata.regex() != Some(regex.as_str()).filter(|regex| !regex.is_empty());
        metadata.subscribed_topic_regex = Some(regex.clone());
    }
    Ok(changed)
}

/// A new member id as Kafka makes them (`Uuid.randomUuid().toString()`: 16
/// random bytes in unpadded URL-safe base64).
pub fn new_member_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = crate::broker::metadata::random_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let value = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
        let symbols = chunk.len() + 1;
        for index in 0..symbols {
            let sextet = (value >> (18 - 6 * index)) & 0x3f;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}
