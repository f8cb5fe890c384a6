//! One consumer group's membership: the classic Kafka rebalance protocol as
//! a synchronous state machine.
//!
//! States: `Empty` (no members) → `PreparingRebalance` (waiting for every
//! member to (re)join) → `CompletingRebalance` (joined; waiting for the
//! leader's assignment in SyncGroup) → `Stable`. Any membership change
//! (join with new metadata, leave, session expiry) goes back to
//! `PreparingRebalance`. Each completed join bumps the generation; requests
//! from an older generation are fenced with ILLEGAL_GENERATION.
//!
//! The coordinator owns the clock and the waiting: a JoinGroup or SyncGroup
//! that cannot be answered yet leaves a oneshot sender in its member, and
//! the answer is sent when the join or sync completes. Nothing here blocks
//! or does I/O, so every transition is unit-tested directly.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use kafka_protocol::ResponseError;

use super::offsets::GroupOffsets;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka tools print and ListGroups filters on.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// Settings the coordinator applies to every group.
#[derive(Clone, Copy, Debug)]
pub struct GroupLimits {
    pub initial_rebalance_delay: Duration,
    pub session_timeout_min: Duration,
    pub session_timeout_max: Duration,
    pub members_max: usize,
}

/// A JoinGroup request, decoded.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED.
    pub requires_known_member_id: bool,
    /// JoinGroup v9+ (KIP-814): a static leader that rejoins a stable group
    /// can be told it leads without running the assignor.
    pub supports_skip_assignment: bool,
}

#[derive(Clone, Debug, Default)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: (member id, instance id, metadata for the chosen protocol).
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// KIP-814: the leader keeps the current assignment and must not run
    /// the assignor (a static leader rejoining a stable group).
    pub skip_assignment: bool,
}

impl JoinResult {
    fn error(error: ResponseError, member_id: &str) -> JoinResult {
        JoinResult {
            error: error.code(),
            generation: -1,
            member_id: member_id.to_owned(),
            ..JoinResult::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(error: ResponseError) -> SyncResult {
        SyncResult {
            error: error.code(),
            ..SyncResult::default()
        }
    }
}

/// A request that is answered now or when the rebalance gets there.
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// A SyncGroup request, decoded.
#[derive(Clone, Debug)]
pub struct SyncRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

/// Who a request claims to be: checked by heartbeats and offset commits.
#[derive(Clone, Debug)]
pub struct MemberClaim<'a> {
    pub member_id: &'a str,
    pub instance_id: Option<&'a str>,
    pub generation: i32,
}

#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    /// When the member last proved it is alive (join, sync, heartbeat).
    pub last_seen: Instant,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    /// The member's metadata for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

/// A member a classic group takes over from a consumer group.
#[derive(Debug)]
pub struct MovedMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    /// Members in join order (the key is a join sequence number), so the
    /// first member becomes leader and answers are deterministic.
    members: BTreeMap<u64, Member>,
    joined_sequence: u64,
    /// Member ids handed out with MEMBER_ID_REQUIRED, and when.
    pending: HashMap<String, (Instant, Duration)>,
    /// When the current rebalance gives up on members that have not rejoined.
    rebalance_deadline: Option<Instant>,
    /// A new group's first join waits until then for more members.
    initial_delay_until: Option<Instant>,
    /// Since when the group has had no members (for offset expiry).
    pub empty_since: Instant,
    pub offsets: GroupOffsets,
}

impl Group {
    pub fn new(id: &str, now: Instant) -> Group {
        Group {
            id: id.to_owned(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            joined_sequence: 0,
            pending: HashMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
            empty_since: now,
            offsets: GroupOffsets::default(),
        }
    }

    /// A classic group made of a consumer group's members (Kafka's online
    /// downgrade, see `consumer/classic.rs`): the generation continues from
    /// the consumer group's epoch, the offsets come along, and a rebalance
    /// starts, so every member rejoins through JoinGroup.
    pub fn from_consumer_group(
        id: &str,
        generation: i32,
        moved: Vec<MovedMember>,
        offsets: GroupOffsets,
        limits: &GroupLimits,
        now: Instant,
    ) -> Group {
        let mut group = Group::new(id, now);
        group.offsets = offsets;
        group.generation = generation;
        group.protocol_type = Some(CONSUMER_PROTOCOL_TYPE.to_owned());
        for member in moved {
            group.joined_sequence += 1;
            group.members.insert(
                group.joined_sequence,
                Member {
                    id: member.id,
                    instance_id: member.instance_id,
                    client_id: member.client_id,
                    client_host: member.client_host,
                    session_timeout: member.session_timeout,
                    rebalance_timeout: member.rebalance_timeout,
                    protocols: member.protocols,
                    assignment: member.assignment,
                    last_seen: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        if group.members.is_empty() {
            return group;
        }
        group.protocol_name = Some(group.select_protocol());
        group.leader = group
            .members
            .values()
            .next()
            .map(|member| member.id.clone());
        group.state = GroupState::Stable;
        group.prepare_rebalance(limits, now);
        group
    }

    /// The group moves to the consumer protocol (Kafka's online upgrade):
    /// members waiting on a join or sync are told to rejoin
    /// (REBALANCE_IN_PROGRESS; they then join the consumer group), and the
    /// classic membership goes. The offsets stay.
    pub fn give_up_membership(&mut self, now: Instant) {
        for member in self.members.values_mut() {
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(JoinResult::error(
                    ResponseError::RebalanceInProgress,
                    &member.id,
                ));
            }
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncResult::error(ResponseError::RebalanceInProgress));
            }
        }
        let offsets = std::mem::take(&mut self.offsets);
        *self = Group::new(&self.id, now);
        self.offsets = offsets;
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn has_members(&self) -> bool {
        !self.members.is_empty() || !self.pending.is_empty()
    }

    fn key_of(&self, member_id: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, member)| member.id == member_id)
            .map(|(&key, _)| key)
    }

    fn member_mut(&mut self, member_id: &str) -> Option<&mut Member> {
        self.members
            .values_mut()
            .find(|member| member.id == member_id)
    }

    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.members.values().find(|member| member.id == member_id)
    }

    fn static_member_id(&self, instance_id: &str) -> Option<String> {
        self.members
            .values()
            .find(|member| member.instance_id.as_deref() == Some(instance_id))
            .map(|member| member.id.clone())
    }

    /// Check that a request comes from a current member of this generation.
    pub fn check_member(&self, claim: &MemberClaim<'_>) -> Result<(), ResponseError> {
        if let Some(instance) = claim.instance_id
            && let Some(known) = self.static_member_id(instance)
            && known != claim.member_id
        {
            return Err(ResponseError::FencedInstanceId);
        }
        if self.member(claim.member_id).is_none() {
            return Err(ResponseError::UnknownMemberId);
        }
        if claim.generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Protocols every member (and `extra`, a joining member) supports.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|member| member.protocols.iter().any(|(other, _)| other == name))
        })
    }

    pub fn join(
        &mut self,
        request: JoinRequest,
        limits: &GroupLimits,
        now: Instant,
    ) -> Reply<JoinResult> {
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return Reply::Now(JoinResult::error(
                ResponseError::InconsistentGroupProtocol,
                &request.member_id,
            ));
        }
        if request.session_timeout < limits.session_timeout_min
            || request.session_timeout > limits.session_timeout_max
        {
            return Reply::Now(JoinResult::error(
                ResponseError::InvalidSessionTimeout,
                &request.member_id,
            ));
        }
        if !self.supports_protocols(&request.protocol_type, &request.protocols) {
            return Reply::Now(JoinResult::error(
                ResponseError::InconsistentGroupProtocol,
                &request.member_id,
            ));
        }
        if request.member_id.is_empty() {
            return self.join_new(request, limits, now);
        }
        if let Some(instance) = &request.instance_id
            && let Some(known) = self.static_member_id(instance)
            && known != request.member_id
        {
            return Reply::Now(JoinResult::error(
                ResponseError::FencedInstanceId,
                &request.member_id,
            ));
        }
        if self.pending.remove(&request.member_id).is_some() {
            return self.add_and_rebalance(request.member_id.clone(), request, limits, now);
        }
        if self.member(&request.member_id).is_none() {
            return Reply::Now(JoinResult::error(
                ResponseError::UnknownMemberId,
                &request.member_id,
            ));
        }
        self.rejoin(request, limits, now)
    }

    fn join_new(
        &mut self,
        request: JoinRequest,
        limits: &GroupLimits,
        now: Instant,
    ) -> Reply<JoinResult> {
        if let Some(instance) = request.instance_id.clone()
            && let Some(old_id) = self.static_member_id(&instance)
        {
            return self.replace_static_member(&old_id, request, limits, now);
        }
        if self.members.len() + self.pending.len() >= limits.members_max {
            return Reply::Now(JoinResult::error(ResponseError::GroupMaxSizeReached, ""));
        }
        let member_id = new_member_id(&request.client_id, request.instance_id.as_deref());
        if request.requires_known_member_id && request.instance_id.is_none() {
            self.pending
                .insert(member_id.clone(), (now, request.session_timeout));
            return Reply::Now(JoinResult::error(
                ResponseError::MemberIdRequired,
                &member_id,
            ));
        }
        self.add_and_rebalance(member_id, request, limits, now)
    }

    /// A static member came back with a new member id: the old id is fenced.
    /// In a stable group whose selected protocol the member's protocols do
    /// not change, nobody rebalances, the leader included (Kafka's static
    /// membership, KIP-345): from JoinGroup v9 the leader is told it leads
    /// with `skip_assignment` (KIP-814); before v9 the answer names the old
    /// leader id, so the client does not think it leads and run a trivial
    /// assignment that a stable group would never hand out.
    fn replace_static_member(
        &mut self,
        old_id: &str,
        request: JoinRequest,
        limits: &GroupLimits,
        now: Instant,
    ) -> Reply<JoinResult> {
        let new_id = new_member_id(&request.client_id, request.instance_id.as_deref());
        let old_leader = self.leader.clone().unwrap_or_default();
        let was_leader = old_leader == old_id;
        let member = self.member_mut(old_id).expect("static member exists");
        if let Some(waiter) = member.join_waiter.take() {
            let _ = waiter.send(JoinResult::error(ResponseError::FencedInstanceId, old_id));
        }
        if let Some(waiter) = member.sync_waiter.take() {
            let _ = waiter.send(SyncResult::error(ResponseError::FencedInstanceId));
        }
        member.id = new_id.clone();
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.last_seen = now;
        member.protocols = request.protocols;
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.state == GroupState::Stable
            && self.protocol_name.as_deref() == Some(self.select_protocol().as_str())
        {
            let mut result = self.current_join_result(&new_id, was_leader);
            if !was_leader {
                return Reply::Now(result);
            }
            if request.supports_skip_assignment {
                result.skip_assignment = true;
            } else {
                result.leader = old_leader;
                result.members.clear();
            }
            return Reply::Now(result);
        }
        let member = self.member_mut(&new_id).expect("just renamed");
        let (sender, receiver) = oneshot::channel();
        member.join_waiter = Some(sender);
        self.prepare_rebalance(limits, now);
        self.try_complete_join(now);
        Reply::Later(receiver)
    }

    fn add_and_rebalance(
        &mut self,
        member_id: String,
        request: JoinRequest,
        limits: &GroupLimits,
        now: Instant,
    ) -> Reply<JoinResult> {
        let (sender, receiver) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        self.joined_sequence += 1;
        self.members.insert(
            self.joined_sequence,
            Member {
                id: member_id,
                instance_id: request.instance_id,
                client_id: request.client_id,
                client_host: request.client_host,
                session_timeout: request.session_timeout,
                rebalance_timeout: request.rebalance_timeout,
                protocols: request.protocols,
                assignment: Bytes::new(),
                last_seen: now,
                join_waiter: Some(sender),
                sync_waiter: None,
            },
        );
        if let Some(until) = self.initial_delay_until {
            // Each member joining a new group extends the wait, up to the
            // rebalance deadline.
            let extended = now + limits.initial_rebalance_delay;
            let cap = self.rebalance_deadline.unwrap_or(extended);
            self.initial_delay_until = Some(until.max(extended.min(cap)));
        }
        self.prepare_rebalance(limits, now);
        self.try_complete_join(now);
        Reply::Later(receiver)
    }

    fn rejoin(
        &mut self,
        request: JoinRequest,
        limits: &GroupLimits,
        now: Instant,
    ) -> Reply<JoinResult> {
        let is_leader = self.leader.as_deref() == Some(request.member_id.as_str());
        let state = self.state;
        let member = self
            .member_mut(&request.member_id)
            .expect("checked by the caller");
        member.last_seen = now;
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        let same_protocols = member.protocols == request.protocols;
        let unchanged = match state {
            GroupState::CompletingRebalance => same_protocols,
            GroupState::Stable => same_protocols && !is_leader,
            _ => false,
        };
        if unchanged {
            // The member missed (or repeats) the join answer: send it again.
            return Reply::Now(self.current_join_result(&request.member_id, is_leader));
        }
        let member = self.member_mut(&request.member_id).expect("present");
        member.protocols = request.protocols;
        let (sender, receiver) = oneshot::channel();
        if let Some(old) = member.join_waiter.replace(sender) {
            let _ = old.send(JoinResult::error(
                ResponseError::RebalanceInProgress,
                &request.member_id,
            ));
        }
        self.prepare_rebalance(limits, now);
        self.try_complete_join(now);
        Reply::Later(receiver)
    }

    /// Start a rebalance (or keep the one running): every member must rejoin.
    fn prepare_rebalance(&mut self, limits: &GroupLimits, now: Instant) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(waiter) = member.sync_waiter.take() {
                    let _ = waiter.send(SyncResult::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
        }
        let longest = self
            .members
            .values()
            .map(|member| member.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let deadline = now + longest;
        self.rebalance_deadline = Some(deadline);
        if self.state == GroupState::Empty {
            self.initial_delay_until = Some((now + limits.initial_rebalance_delay).min(deadline));
        }
        tracing::info!(group = %self.id, generation = self.generation, "rebalance started");
        self.state = GroupState::PreparingRebalance;
    }

    /// Finish the join phase if every member has rejoined (and a new group's
    /// initial delay is over) or the rebalance deadline passed. Members that
    /// did not rejoin in time are removed.
    pub fn try_complete_join(&mut self, now: Instant) -> bool {
        if self.state != GroupState::PreparingRebalance {
            return false;
        }
        let deadline_passed = self
            .rebalance_deadline
            .is_some_and(|deadline| now >= deadline);
        let delay_over = self.initial_delay_until.is_none_or(|until| now >= until);
        let all_joined = self.pending.is_empty()
            && self
                .members
                .values()
                .all(|member| member.join_waiter.is_some());
        if !(deadline_passed || all_joined && delay_over) {
            return false;
        }
        self.members
            .retain(|_, member| member.join_waiter.is_some());
        self.initial_delay_until = None;
        self.rebalance_deadline = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.become_empty(now);
            return true;
        }
        self.protocol_name = Some(self.select_protocol());
        if self
            .leader
            .as_ref()
            .is_none_or(|leader| self.member(leader).is_none())
        {
            self.leader = self.members.values().next().map(|member| member.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        let leader = self.leader.clone().unwrap_or_default();
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = self.protocol_name.as_deref().unwrap_or(""),
            %leader,
            "group joined; waiting for the leader's assignment"
        );
        let ids: Vec<String> = self
            .members
            .values()
            .map(|member| member.id.clone())
            .collect();
        for id in ids {
            let result = self.current_join_result(&id, id == leader);
            let member = self.member_mut(&id).expect("listed");
            member.last_seen = now;
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(result);
            }
        }
        true
    }

    /// The last member left. The protocol type stays, as in Kafka: an empty
    /// consumer group is still listed and described as `consumer`.
    fn become_empty(&mut self, now: Instant) {
        self.state = GroupState::Empty;
        self.protocol_name = None;
        self.leader = None;
        self.empty_since = now;
    }

    /// The protocol most members prefer among those all members support.
    fn select_protocol(&self) -> String {
        let first = self.members.values().next().expect("at least one member");
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|member| member.protocols.iter().any(|(other, _)| other == *name))
            })
            .collect();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|name| (0, *name)).collect();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(&name))
                && let Some(vote) = votes.iter_mut().find(|(_, candidate)| *candidate == name)
            {
                vote.0 += 1;
            }
        }
        // The highest count wins; among equals, the earliest candidate.
        let best = votes.iter().map(|(count, _)| *count).max().unwrap_or(0);
        votes
            .iter()
            .find(|(count, _)| *count == best)
            .map(|(_, name)| (*name).clone())
            .unwrap_or_default()
    }

    fn current_join_result(&self, member_id: &str, with_members: bool) -> JoinResult {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = if with_members {
            self.members
                .values()
                .map(|member| {
                    (
                        member.id.clone(),
                        member.instance_id.clone(),
                        member.metadata(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_owned(),
            members,
            skip_assignment: false,
        }
    }

    pub fn sync(&mut self, request: SyncRequest, now: Instant) -> Reply<SyncResult> {
        let claim = MemberClaim {
            member_id: &request.member_id,
            instance_id: request.instance_id.as_deref(),
            generation: request.generation,
        };
        if let Err(error) = self.check_member(&claim) {
            return Reply::Now(SyncResult::error(error));
        }
        let type_differs = request
            .protocol_type
            .as_ref()
            .is_some_and(|wanted| self.protocol_type.as_ref() != Some(wanted));
        let name_differs = request
            .protocol_name
            .as_ref()
            .is_some_and(|wanted| self.protocol_name.as_ref() != Some(wanted));
        if type_differs || name_differs {
            return Reply::Now(SyncResult::error(ResponseError::InconsistentGroupProtocol));
        }
        let is_leader = self.leader.as_deref() == Some(request.member_id.as_str());
        match self.state {
            GroupState::PreparingRebalance => {
                Reply::Now(SyncResult::error(ResponseError::RebalanceInProgress))
            }
            GroupState::Empty => Reply::Now(SyncResult::error(ResponseError::UnknownMemberId)),
            GroupState::Stable => {
                let member = self.member_mut(&request.member_id).expect("checked");
                member.last_seen = now;
                let assignment = member.assignment.clone();
                Reply::Now(self.sync_result(assignment))
            }
            GroupState::CompletingRebalance => {
                let member = self.member_mut(&request.member_id).expect("checked");
                member.last_seen = now;
                let (sender, receiver) = oneshot::channel();
                member.sync_waiter = Some(sender);
                if is_leader {
                    self.complete_sync(request.assignments);
                }
                Reply::Later(receiver)
            }
        }
    }

    fn sync_result(&self, assignment: Bytes) -> SyncResult {
        SyncResult {
            error: 0,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    /// The leader's assignment arrived: store it and answer every waiting member.
    fn complete_sync(&mut self, assignments: Vec<(String, Bytes)>) {
        let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
        let protocol_type = self.protocol_type.clone();
        let protocol_name = self.protocol_name.clone();
        for member in self.members.values_mut() {
            member.assignment = assignments.remove(&member.id).unwrap_or_default();
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncResult {
                    error: 0,
                    protocol_type: protocol_type.clone(),
                    protocol_name: protocol_name.clone(),
                    assignment: member.assignment.clone(),
                });
            }
        }
        self.state = GroupState::Stable;
    }

    pub fn heartbeat(
        &mut self,
        claim: &MemberClaim<'_>,
        now: Instant,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Empty {
            return Err(ResponseError::UnknownMemberId);
        }
        self.check_member(claim)?;
        let member = self.member_mut(claim.member_id).expect("checked");
        member.last_seen = now;
        if self.state == GroupState::PreparingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Members leave (LeaveGroup): by member id, or by instance id for static
    /// members. Returns one result per departure.
    pub fn leave(
        &mut self,
        departures: &[(String, Option<String>)],
        limits: &GroupLimits,
        now: Instant,
    ) -> Vec<Result<(), ResponseError>> {
        let mut removed_any = false;
        let results = departures
            .iter()
            .map(|(member_id, instance_id)| {
                let target = match instance_id {
                    Some(instance) => match self.static_member_id(instance) {
                        Some(known) if !member_id.is_empty() && known != *member_id => {
                            return Err(ResponseError::FencedInstanceId);
                        }
                        Some(known) => known,
                        None => return Err(ResponseError::UnknownMemberId),
                    },
                    None => member_id.clone(),
                };
                if self.pending.remove(&target).is_some() {
                    return Ok(());
                }
                let key = self.key_of(&target).ok_or(ResponseError::UnknownMemberId)?;
                self.remove_member(key);
                removed_any = true;
                Ok(())
            })
            .collect();
        if removed_any {
            self.after_removal(limits, now);
        }
        results
    }

    fn remove_member(&mut self, key: u64) {
        if let Some(mut member) = self.members.remove(&key) {
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(JoinResult::error(
                    ResponseError::UnknownMemberId,
                    &member.id,
                ));
            }
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncResult::error(ResponseError::UnknownMemberId));
            }
            if self.leader.as_deref() == Some(member.id.as_str()) {
                self.leader = None;
            }
        }
    }

    fn after_removal(&mut self, limits: &GroupLimits, now: Instant) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                if self.members.is_empty() {
                    self.generation += 1;
                    self.become_empty(now);
                } else {
                    self.prepare_rebalance(limits, now);
                }
            }
            GroupState::PreparingRebalance => {
                self.try_complete_join(now);
            }
            GroupState::Empty => {}
        }
    }

    /// Evict members whose session expired and forget member ids handed out
    /// but never used; complete a join whose time is up. Members waiting for
    /// a join or sync answer are alive by definition (the rebalance deadline
    /// bounds them). Returns the ids evicted.
    pub fn tick(&mut self, limits: &GroupLimits, now: Instant) -> Vec<String> {
        self.pending
            .retain(|_, (since, session)| now.duration_since(*since) < *session);
        let expired: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, member)| {
                member.join_waiter.is_none()
                    && member.sync_waiter.is_none()
                    && now.duration_since(member.last_seen) > member.session_timeout
            })
            .map(|(&key, _)| key)
            .collect();
        let evicted: Vec<String> = expired
            .iter()
            .filter_map(|key| self.members.get(key).map(|member| member.id.clone()))
            .collect();
        for key in expired {
            self.remove_member(key);
        }
        if !evicted.is_empty() {
            self.after_removal(limits, now);
        }
        self.try_complete_join(now);
        evicted
    }

    /// Whether the coordinator should wake this group soon.
    pub fn is_active(&self) -> bool {
        self.state != GroupState::Empty || !self.pending.is_empty()
    }

    /// The topics members subscribe to, for the "consumer" protocol type
    /// (OffsetDelete refuses to delete offsets of subscribed topics).
    pub fn subscribed_topics(&self) -> Option<Vec<String>> {
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return None;
        }
        let protocol = self.protocol_name.clone()?;
        let mut topics = Vec::new();
        for member in self.members.values() {
            let mut metadata = member.metadata(&protocol);
            if let Some(subscription) = decode_subscription(&mut metadata) {
                topics.extend(subscription);
            }
        }
        topics.sort();
        topics.dedup();
        Some(topics)
    }
}

pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// The topics of a ConsumerProtocolSubscription (any version), or None if
/// the bytes are not one.
pub(crate) fn decode_subscription(metadata: &mut Bytes) -> Option<Vec<String>> {
    use bytes::Buf;
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    if metadata.remaining() < 2 {
        return None;
    }
    let version = metadata.get_i16();
    let subscription = ConsumerProtocolSubscription::decode(metadata, version.clamp(0, 3)).ok()?;
    Some(
        subscription
            .topics
            .iter()
            .map(ToString::to_string)
            .collect(),
    )
}

/// `client-id-<uuid>` for dynamic members, `instance-id-<uuid>` for static
/// ones, as Kafka names them.
fn new_member_id(client_id: &str, instance_id: Option<&str>) -> String {
    let prefix = instance_id.unwrap_or(client_id);
    let random = crate::broker::metadata::random_bytes();
    let uuid = uuid::Uuid::from_bytes(random);
    format!("{prefix}-{uuid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: GroupLimits = GroupLimits {
        initial_rebalance_delay: Duration::ZERO,
        session_timeout_min: Duration::from_millis(1),
        session_timeout_max: Duration::from_secs(60),
        members_max: 10,
    };

    fn request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_owned(),
            instance_id: None,
            client_id: "client".to_owned(),
            client_host: "/127.0.0.1".to_owned(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: CONSUMER_PROTOCOL_TYPE.to_owned(),
            protocols: protocols
                .iter()
                .map(|name| ((*name).to_owned(), Bytes::new()))
                .collect(),
            requires_known_member_id: false,
            supports_skip_assignment: true,
        }
    }

    fn answer(reply: Reply<JoinResult>) -> JoinResult {
        match reply {
            Reply::Now(result) => result,
            Reply::Later(mut receiver) => receiver
                .try_recv()
                .expect("sender alive")
                .expect("answered"),
        }
    }

    #[test]
    fn the_first_preference_wins_and_members_without_a_common_protocol_are_refused() {
        let now = Instant::now();
        let mut group = Group::new("g", now);
        let first = group.join(request("", &["range", "roundrobin"]), &LIMITS, now);
        let first = answer(first);
        assert_eq!(first.protocol_name.as_deref(), Some("range"));
        // A member without a protocol in common with the group is refused.
        let refused = answer(group.join(request("", &["sticky"]), &LIMITS, now));
        assert_eq!(
            refused.error,
            ResponseError::InconsistentGroupProtocol.code()
        );
    }

    #[test]
    fn a_silent_member_is_evicted_after_its_session_and_the_group_rebalances() {
        let start = Instant::now();
        let mut group = Group::new("g", start);
        let a = answer(group.join(request("", &["range"]), &LIMITS, start));
        let b_reply = group.join(request("", &["range"]), &LIMITS, start);
        // A must rejoin for the new generation; it does.
        let a = answer(group.join(request(&a.member_id, &["range"]), &LIMITS, start));
        let b = answer(b_reply);
        assert_eq!((a.generation, b.generation), (2, 2));
        let synced = group.sync(
            SyncRequest {
                member_id: a.member_id.clone(),
                instance_id: None,
                generation: 2,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![],
            },
            start,
        );
        assert!(matches!(synced, Reply::Later(_)));
        assert_eq!(group.state, GroupState::Stable);
        let later = start + Duration::from_secs(5);
        let claim = MemberClaim {
            member_id: &a.member_id,
            instance_id: None,
            generation: 2,
        };
        assert_eq!(group.heartbeat(&claim, later), Ok(()));
        let evicted = group.tick(&LIMITS, start + Duration::from_secs(11));
        assert_eq!(evicted, vec![b.member_id]);
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(
            group.heartbeat(&claim, start + Duration::from_secs(11)),
            Err(ResponseError::RebalanceInProgress)
        );
    }
}
