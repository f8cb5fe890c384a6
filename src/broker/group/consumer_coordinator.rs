//! The coordinator's consumer-protocol groups (KIP-848): ConsumerGroupHeartbeat,
//! ConsumerGroupDescribe, session and rebalance timeouts, and the rules
//! between the two protocols.
//!
//! Every change to a consumer group is made the same way, while holding the
//! coordinator's writer lock: copy the group, change the copy
//! (`consumer/group.rs`), append the records that differ between the two
//! (`consumer/records.rs`), install the copy, release the lock, and answer
//! once the records are durable. A refused request or a failed append
//! leaves the installed group as it was. Classic joins take the same lock to
//! check and create members, so a group id never holds members of both
//! kinds through a race.

use std::collections::HashMap;
use std::time::Instant;

use kafka_protocol::ResponseError;

use super::consumer::classic::{ClassicJoin, ClassicJoinOutcome, ClassicSync, ClassicSyncOutcome};
use super::consumer::group::{
    ConsumerGroup, ConsumerGroupLimits, Context, GroupError, HeartbeatAnswer, HeartbeatRequest,
};
use super::consumer::member::Assignment;
use super::consumer::records as consumer_records;
use super::coordinator::Coordinator;
use super::coordinator_error::OffsetsWriteError;
use super::log_record::LogRecord;
use super::membership::{
    CONSUMER_PROTOCOL_TYPE, Group, JoinRequest, JoinResult, MemberClaim, SyncRequest, SyncResult,
};
use crate::broker::metadata::{ClusterMetadata, TopicId};
use crate::storage::AppendError;

/// What ConsumerGroupDescribe shows of a group.
#[derive(Debug, Default)]
pub struct ConsumerGroupDescription {
    pub state: &'static str,
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<ConsumerMemberDescription>,
}

/// Partitions of one topic: its id, its name, the partitions.
pub type DescribedPartitions = (TopicId, String, Vec<i32>);

#[derive(Debug, Default)]
pub struct ConsumerMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub assignment: Vec<DescribedPartitions>,
    pub target: Vec<DescribedPartitions>,
    /// Whether the member joined with JoinGroup (ConsumerGroupDescribe v1's
    /// member type: 0 classic, 1 consumer).
    pub classic: bool,
}

/// The code a failed write of group records is answered with (Kafka maps
/// an oversized record to UNKNOWN_SERVER_ERROR for group operations).
fn write_error(error: &OffsetsWriteError) -> GroupError {
    let code = match error {
        OffsetsWriteError::RecordTooLarge { .. }
        | OffsetsWriteError::Append {
            source: AppendError::BatchTooLarge { .. },
        } => ResponseError::UnknownServerError,
        OffsetsWriteError::Append {
            source: AppendError::ShuttingDown,
        }
        | OffsetsWriteError::NotHere { .. } => ResponseError::NotCoordinator,
        _ => ResponseError::CoordinatorNotAvailable,
    };
    GroupError::new(code, error.to_string())
}

fn not_a_consumer_group(group_id: &str) -> GroupError {
    GroupError::new(
        ResponseError::GroupIdNotFound,
        format!("Group {group_id} is not a consumer group."),
    )
}

impl Coordinator {
    /// Change consumer group `group_id` (or create it: `create` makes the
    /// new group when it does not exist, or says why not) and make the
    /// change durable; see the module doc.
    pub(super) async fn change_consumer_group<T>(
        &self,
        group_id: &str,
        create: impl FnOnce(&Coordinator) -> Result<ConsumerGroup, GroupError>,
        change: impl FnOnce(&mut ConsumerGroup, &Context<'_>) -> Result<T, GroupError>,
    ) -> Result<T, GroupError> {
        let writing = self.writer.lock().await;
        let (value, receipt) = self
            .change_consumer_group_locked(group_id, create, change)
            .await?;
        drop(writing);
        self.wait_durable(group_id, receipt).await?;
        Ok(value)
    }

    /// Wait until an append of group records is durable.
    pub(super) async fn wait_durable(
        &self,
        group_id: &str,
        receipt: Option<crate::storage::AppendReceipt>,
    ) -> Result<(), GroupError> {
        if let Some(receipt) = receipt {
            self.durable_for_group(group_id, &receipt)
                .await
                .map_err(|source| write_error(&OffsetsWriteError::Append { source }))?;
        }
        Ok(())
    }

    /// [`Coordinator::change_consumer_group`] for a caller holding the
    /// writer lock, which waits for the receipt itself after releasing it.
    /// A classic group with members that the new consumer group took over
    /// (upgrade) gives its membership up; a consumer group left with only
    /// classic members by this change becomes a classic group (downgrade),
    /// when the migration policy allows.
    pub(super) async fn change_consumer_group_locked<T>(
        &self,
        group_id: &str,
        create: impl FnOnce(&Coordinator) -> Result<ConsumerGroup, GroupError>,
        change: impl FnOnce(&mut ConsumerGroup, &Context<'_>) -> Result<T, GroupError>,
    ) -> Result<(T, Option<crate::storage::AppendReceipt>), GroupError> {
        let cluster = self.broker.metadata.snapshot();
        let existing = self.consumer_groups.borrow().get(group_id).cloned();
        let mut group = match existing {
            Some(group) => group,
            None => create(self)?,
        };
        let limits = self.consumer_limits_for(group_id);
        let context = Context {
            limits: &limits,
            cluster: &cluster,
            now: Instant::now(),
        };
        let value = change(&mut group, &context)?;
        // The epoch before this change: a downgrade continues from it, as
        // the classic members' generation (Kafka converts the group as it
        // was, without the members leaving).
        let before = self
            .consumer_groups
            .borrow()
            .get(group_id)
            .filter(|old| {
                old.members
                    .values()
                    .any(|member| !member.uses_classic_protocol())
            })
            .map(|old| old.epoch);
        let downgrade = before.is_some()
            && group.only_classic_members()
            && self
                .broker
                .config
                .groups
                .consumer_migration_policy
                .downgrade_enabled();
        let records: Vec<LogRecord> = {
            let groups = self.consumer_groups.borrow();
            let new = (!downgrade).then_some(&group);
            consumer_records::changes(groups.get(group_id), new)
                .into_iter()
                .map(LogRecord::Consumer)
                .collect()
        };
        let receipt = self
            .append_group_records(records)
            .await
            .map_err(|error| write_error(&error))?;
        if let Some(generation) = before.filter(|_| downgrade) {
            self.downgrade(group, generation, &cluster, context.now);
        } else {
            self.install_consumer_group(group, context.now);
        }
        Ok((value, receipt))
    }

    /// The limits group `group_id` runs under: the broker's, with the
    /// group's configs (`group/config.rs`) applied.
    pub(super) fn consumer_limits_for(&self, group_id: &str) -> ConsumerGroupLimits {
        let settings = self.broker.group_settings(group_id);
        ConsumerGroupLimits {
            session_timeout: settings.session_timeout,
            heartbeat_interval: settings.heartbeat_interval,
            ..self.consumer_limits.clone()
        }
    }

    /// Install a consumer group; a classic membership under the same id
    /// (the group it was upgraded from) goes.
    fn install_consumer_group(&self, group: ConsumerGroup, now: Instant) {
        if let Some(classic) = self.groups.borrow_mut().get_mut(&group.id)
            && classic.has_members()
        {
            tracing::info!(group = %group.id, "classic group upgraded to a consumer group");
            classic.give_up_membership(now);
        }
        self.consumer_groups
            .borrow_mut()
            .insert(group.id.clone(), group);
    }

    /// The consumer group becomes a classic group of its (classic) members,
    /// which rejoin in a rebalance; its records were just deleted.
    /// `generation` is the group epoch before the change that left only
    /// classic members (Kafka's `ClassicGroup.fromConsumerGroup` takes the
    /// group without its leaving members, unbumped): the members' own
    /// generation, so their heartbeats get REBALANCE_IN_PROGRESS and the
    /// offsets they commit on revoking are accepted, not ILLEGAL_GENERATION.
    fn downgrade(
        &self,
        group: ConsumerGroup,
        generation: i32,
        cluster: &ClusterMetadata,
        now: Instant,
    ) {
        self.consumer_groups.borrow_mut().remove(&group.id);
        let mut groups = self.groups.borrow_mut();
        let offsets = groups
            .remove(&group.id)
            .map(|mut classic| std::mem::take(&mut classic.offsets))
            .unwrap_or_default();
        let classic = Group::from_consumer_group(
            &group.id,
            generation,
            group.to_classic_members(cluster),
            offsets,
            &self.limits,
            now,
        );
        tracing::info!(
            group = %group.id,
            members = group.members.len(),
            "consumer group downgraded to a classic group"
        );
        groups.insert(group.id.clone(), classic);
    }

    /// ConsumerGroupHeartbeat with epoch 0 or above (a join or a heartbeat).
    pub async fn consumer_heartbeat(
        &self,
        group_id: &str,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatAnswer, GroupError> {
        let joining = request.member_epoch == 0;
        self.change_consumer_group(
            group_id,
            |coordinator| coordinator.new_consumer_group(group_id, joining),
            |group, context| group.heartbeat(&request, context),
        )
        .await
    }

    /// A consumer group for a joining member. An empty classic group
    /// switches (its offsets stay); one with members is upgraded when the
    /// migration policy allows it and it uses the `consumer` protocol type,
    /// and gets Kafka's GROUP_ID_NOT_FOUND otherwise.
    fn new_consumer_group(
        &self,
        group_id: &str,
        joining: bool,
    ) -> Result<ConsumerGroup, GroupError> {
        if !joining {
            return Err(GroupError::new(
                ResponseError::GroupIdNotFound,
                format!("Consumer group {group_id} not found."),
            ));
        }
        let now = Instant::now();
        let groups = self.groups.borrow();
        let Some(classic) = groups.get(group_id).filter(|group| group.has_members()) else {
            return Ok(ConsumerGroup::new(group_id, now));
        };
        let policy = self.broker.config.groups.consumer_migration_policy;
        let consumer_protocol = classic.protocol_type.as_deref() == Some(CONSUMER_PROTOCOL_TYPE);
        if !policy.upgrade_enabled() || !consumer_protocol {
            tracing::info!(
                group = group_id,
                upgrade_allowed = policy.upgrade_enabled(),
                consumer_protocol,
                "a consumer-protocol member cannot join this classic group"
            );
            return Err(not_a_consumer_group(group_id));
        }
        let cluster = self.broker.metadata.snapshot();
        ConsumerGroup::from_classic(classic, &cluster, now)
    }

    /// ConsumerGroupHeartbeat with epoch -1 or -2.
    pub async fn consumer_leave(
        &self,
        group_id: &str,
        member_id: String,
        instance_id: Option<String>,
        epoch: i32,
    ) -> Result<(String, i32), GroupError> {
        self.change_consumer_group(
            group_id,
            |coordinator| Err(coordinator.missing_consumer_group(group_id)),
            |group, context| group.leave(&member_id, instance_id.as_deref(), epoch, context),
        )
        .await
    }

    fn missing_consumer_group(&self, group_id: &str) -> GroupError {
        if self.groups.borrow().contains_key(group_id) {
            return not_a_consumer_group(group_id);
        }
        GroupError::new(
            ResponseError::GroupIdNotFound,
            format!("Consumer group {group_id} not found."),
        )
    }

    /// ConsumerGroupDescribe of one group.
    pub fn consumer_describe(
        &self,
        group_id: &str,
    ) -> Result<ConsumerGroupDescription, GroupError> {
        let groups = self.consumer_groups.borrow();
        let Some(group) = groups.get(group_id) else {
            if self.groups.borrow().contains_key(group_id) {
                return Err(not_a_consumer_group(group_id));
            }
            return Err(GroupError::new(
                ResponseError::GroupIdNotFound,
                format!("Group {group_id} not found."),
            ));
        };
        let cluster = self.broker.metadata.snapshot();
        let names: HashMap<TopicId, &str> = cluster
            .topics
            .values()
            .map(|topic| (topic.id, topic.name.as_str()))
            .collect();
        let describe = |assignment: &Assignment| -> Vec<DescribedPartitions> {
            assignment
                .iter()
                .filter_map(|(topic, partitions)| {
                    let name = names.get(topic)?;
                    Some((
                        *topic,
                        (*name).to_owned(),
                        partitions.iter().copied().collect(),
                    ))
                })
                .collect()
        };
        let empty = Assignment::new();
        Ok(ConsumerGroupDescription {
            state: group.state().name(),
            epoch: group.epoch,
            assignment_epoch: group.assignment_epoch,
            assignor: group
                .preferred_assignor(&self.consumer_limits)
                .name()
                .to_owned(),
            members: group
                .members
                .values()
                .map(|member| ConsumerMemberDescription {
                    member_id: member.id.clone(),
                    instance_id: member.metadata.instance_id.clone(),
                    rack_id: member.metadata.rack_id.clone(),
                    member_epoch: member.current.epoch,
                    client_id: member.metadata.client_id.clone(),
                    client_host: member.metadata.client_host.clone(),
                    subscribed_topic_names: member.metadata.subscribed_topic_names.clone(),
                    subscribed_topic_regex: member.metadata.regex().map(str::to_owned),
                    assignment: describe(&member.current.assigned),
                    target: describe(group.targets.get(&member.id).unwrap_or(&empty)),
                    classic: member.uses_classic_protocol(),
                })
                .collect(),
        })
    }

    /// Fence members whose session or rebalance timeout ran out (the
    /// coordinator's timer calls this every tick).
    pub(super) async fn expire_consumer_members(&self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .consumer_groups
            .borrow()
            .values()
            .filter(|group| !group.expired(now).is_empty())
            .map(|group| group.id.clone())
            .collect();
        for group_id in due {
            let fenced = self
                .change_consumer_group(
                    &group_id,
                    |coordinator| Err(coordinator.missing_consumer_group(&group_id)),
                    |group, context| {
                        let expired = group.expired(context.now);
                        for (member, reason) in &expired {
                            tracing::info!(group = %group.id, %member, "member fenced from the consumer group: {reason}");
                            group.fence(member, context);
                        }
                        Ok(expired.len())
                    },
                )
                .await;
            if let Err(error) = fenced {
                tracing::warn!(group = %group_id, error = %error.message, "cannot fence expired consumer group members");
            }
        }
    }
}

/// Deleting consumer groups, and what the classic APIs see of them.
impl Coordinator {
    /// The topics a consumer group's members subscribe to (names and regex
    /// matches); `None` if `group_id` is not a consumer group.
    pub(super) fn consumer_subscribed_topics(
        &self,
        group_id: &str,
    ) -> Option<std::collections::BTreeSet<String>> {
        let cluster = self.broker.metadata.snapshot();
        self.consumer_groups
            .borrow_mut()
            .get_mut(group_id)
            .map(|group| group.subscriptions(&cluster).names.clone())
    }

    /// DeleteGroups of a consumer group: only an empty one (NON_EMPTY_GROUP
    /// otherwise); its offsets and records go. `None`: not a consumer group.
    pub(super) async fn delete_consumer_group(&self, group_id: &str) -> Option<i16> {
        let writing = self.writer.lock().await;
        let group = self.consumer_groups.borrow().get(group_id).cloned()?;
        if !group.members.is_empty() {
            return Some(ResponseError::NonEmptyGroup.code());
        }
        let receipt = match self.remove_consumer_group(&group, true).await {
            Ok(receipt) => receipt,
            Err(error) => return Some(write_error(&error).error.code()),
        };
        drop(writing);
        if let Some(receipt) = receipt
            && let Err(source) = self.durable_for_group(group_id, &receipt).await
        {
            return Some(
                write_error(&OffsetsWriteError::Append { source })
                    .error
                    .code(),
            );
        }
        tracing::info!(group = group_id, "deleted consumer group");
        Some(0)
    }

    /// Write the tombstones of `group` (and of its offsets, if asked) and
    /// forget it. The caller holds the writer lock and waits for the
    /// receipt's durability.
    pub(super) async fn remove_consumer_group(
        &self,
        group: &ConsumerGroup,
        with_offsets: bool,
    ) -> Result<Option<crate::storage::AppendReceipt>, OffsetsWriteError> {
        let mut records: Vec<LogRecord> = Vec::new();
        if with_offsets && let Some(classic) = self.groups.borrow().get(&group.id) {
            records.extend(classic.offsets.iter().map(|(key, _)| {
                LogRecord::Offset(super::offsets::OffsetRecord {
                    group: group.id.clone(),
                    key: key.clone(),
                    value: None,
                })
            }));
        }
        records.extend(
            consumer_records::changes(Some(group), None)
                .into_iter()
                .map(LogRecord::Consumer),
        );
        let receipt = self.append_group_records(records).await?;
        self.consumer_groups.borrow_mut().remove(&group.id);
        if with_offsets {
            let mut groups = self.groups.borrow_mut();
            if groups
                .get(&group.id)
                .is_some_and(|classic| !classic.has_members())
            {
                groups.remove(&group.id);
            }
        }
        Ok(receipt)
    }

    /// Empty consumer groups without committed offsets are deleted, as
    /// Kafka's periodic group cleanup does.
    pub(super) async fn delete_abandoned_consumer_groups(&self) {
        let abandoned: Vec<String> = {
            let groups = self.groups.borrow();
            self.consumer_groups
                .borrow()
                .values()
                .filter(|group| group.members.is_empty())
                .filter(|group| {
                    groups
                        .get(&group.id)
                        .is_none_or(|classic| classic.offsets.is_empty())
                })
                .map(|group| group.id.clone())
                .collect()
        };
        for group_id in abandoned {
            let writing = self.writer.lock().await;
            let Some(group) = self
                .consumer_groups
                .borrow()
                .get(&group_id)
                .filter(|group| group.members.is_empty())
                .cloned()
            else {
                continue;
            };
            match self.remove_consumer_group(&group, false).await {
                Ok(_) => {
                    tracing::info!(group = %group_id, "deleted an empty consumer group without offsets")
                }
                Err(error) => {
                    tracing::warn!(group = %group_id, %error, "cannot delete an empty consumer group")
                }
            }
            drop(writing);
        }
    }
}

/// The classic group APIs (JoinGroup, SyncGroup, Heartbeat, LeaveGroup)
/// meeting a consumer-protocol group (`consumer/classic.rs`). Each returns
/// `None` when `group_id` is not a consumer group (the classic path then
/// serves the request).
impl Coordinator {
    /// JoinGroup. An empty consumer group becomes a classic group (its
    /// records are deleted; its offsets stay) and `None` lets the classic
    /// join go on; otherwise the member joins the consumer group. The
    /// caller holds the writer lock and waits for the receipt after
    /// releasing it.
    pub(super) async fn join_consumer_group(
        &self,
        group_id: &str,
        request: &JoinRequest,
    ) -> Option<(JoinResult, Option<crate::storage::AppendReceipt>)> {
        let group = self.consumer_groups.borrow().get(group_id).cloned()?;
        let failed = |error: GroupError| JoinResult {
            error: error.error.code(),
            generation: -1,
            member_id: request.member_id.clone(),
            ..JoinResult::default()
        };
        if group.members.is_empty() {
            return match self.remove_consumer_group(&group, false).await {
                Ok(_) => {
                    tracing::info!(
                        group = group_id,
                        "empty consumer group becomes a classic group"
                    );
                    None
                }
                Err(error) => Some((failed(write_error(&error)), None)),
            };
        }
        let join = ClassicJoin {
            member_id: request.member_id.clone(),
            instance_id: request.instance_id.clone(),
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
            session_timeout_ms: millis(request.session_timeout),
            rebalance_timeout_ms: millis(request.rebalance_timeout),
            protocol_type: request.protocol_type.clone(),
            protocols: request.protocols.clone(),
            requires_known_member_id: request.requires_known_member_id,
        };
        let changed = self
            .change_consumer_group_locked(
                group_id,
                |coordinator| Err(coordinator.missing_consumer_group(group_id)),
                |group, context| group.classic_join(&join, context),
            )
            .await;
        Some(match changed {
            Err(error) => (failed(error), None),
            Ok((ClassicJoinOutcome::MemberIdRequired(member_id), receipt)) => (
                JoinResult {
                    error: ResponseError::MemberIdRequired.code(),
                    generation: -1,
                    member_id,
                    ..JoinResult::default()
                },
                receipt,
            ),
            Ok((
                ClassicJoinOutcome::Joined {
                    member_id,
                    generation,
                    protocol_name,
                },
                receipt,
            )) => (
                JoinResult {
                    error: 0,
                    generation,
                    protocol_type: Some(CONSUMER_PROTOCOL_TYPE.to_owned()),
                    protocol_name: Some(protocol_name),
                    leader: String::new(),
                    member_id,
                    members: Vec::new(),
                    skip_assignment: false,
                },
                receipt,
            ),
        })
    }

    /// SyncGroup to a consumer group: the member's current assignment.
    pub(super) async fn sync_consumer_group(
        &self,
        group_id: &str,
        request: &SyncRequest,
    ) -> Option<SyncResult> {
        if !self.consumer_groups.borrow().contains_key(group_id) {
            return None;
        }
        let sync = ClassicSync {
            member_id: request.member_id.clone(),
            instance_id: request.instance_id.clone(),
            generation: request.generation,
            protocol_type: request.protocol_type.clone(),
            protocol_name: request.protocol_name.clone(),
        };
        let limits = self.consumer_limits_for(group_id);
        let synced = self
            .change_consumer_group(
                group_id,
                |_| Err(changed_protocol(group_id)),
                |group, context| group.classic_sync(&sync, &limits, context.cluster, context.now),
            )
            .await;
        Some(match synced {
            Ok(ClassicSyncOutcome::Assigned {
                protocol_name,
                assignment,
            }) => SyncResult {
                error: 0,
                protocol_type: Some(CONSUMER_PROTOCOL_TYPE.to_owned()),
                protocol_name: Some(protocol_name),
                assignment,
            },
            Ok(ClassicSyncOutcome::RebalanceInProgress) => SyncResult {
                error: ResponseError::RebalanceInProgress.code(),
                ..SyncResult::default()
            },
            Err(error) => SyncResult {
                error: error.error.code(),
                ..SyncResult::default()
            },
        })
    }

    /// Heartbeat to a consumer group.
    pub(super) async fn heartbeat_consumer_group(
        &self,
        group_id: &str,
        claim: &MemberClaim<'_>,
    ) -> Option<i16> {
        if !self.consumer_groups.borrow().contains_key(group_id) {
            return None;
        }
        let limits = self.consumer_limits_for(group_id);
        let code = self
            .change_consumer_group(
                group_id,
                |_| Err(changed_protocol(group_id)),
                |group, context| {
                    group.classic_heartbeat(
                        claim.member_id,
                        claim.instance_id,
                        claim.generation,
                        &limits,
                        context.now,
                    )
                },
            )
            .await;
        Some(code.unwrap_or_else(|error| error.error.code()))
    }

    /// LeaveGroup to a consumer group: one code per departure.
    pub(super) async fn leave_consumer_group(
        &self,
        group_id: &str,
        departures: &[(String, Option<String>)],
    ) -> Option<Vec<i16>> {
        if !self.consumer_groups.borrow().contains_key(group_id) {
            return None;
        }
        let left = self
            .change_consumer_group(
                group_id,
                |_| Err(changed_protocol(group_id)),
                |group, context| Ok(group.classic_leave(departures, context)),
            )
            .await;
        Some(left.unwrap_or_else(|error| vec![error.error.code(); departures.len()]))
    }
}

/// The group stopped being a consumer group between the check and the
/// change (it was downgraded): its members must rejoin.
fn changed_protocol(group_id: &str) -> GroupError {
    GroupError::new(
        ResponseError::UnknownMemberId,
        format!("Group {group_id} changed protocol; rejoin."),
    )
}

fn millis(duration: std::time::Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}
