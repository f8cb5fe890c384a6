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

use super::consumer::group::{
    ConsumerGroup, Context, GroupError, HeartbeatAnswer, HeartbeatRequest,
};
use super::consumer::member::Assignment;
use super::consumer::records as consumer_records;
use super::coordinator::Coordinator;
use super::coordinator_error::OffsetsWriteError;
use super::log_record::LogRecord;
use super::membership::{JoinRequest, JoinResult, MemberClaim, SyncRequest, SyncResult};
use crate::broker::metadata::TopicId;
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
        let cluster = self.broker.metadata.snapshot();
        let existing = self.consumer_groups.borrow().get(group_id).cloned();
        let mut group = match existing {
            Some(group) => group,
            None => create(self)?,
        };
        let context = Context {
            limits: &self.consumer_limits,
            cluster: &cluster,
            now: Instant::now(),
        };
        let value = change(&mut group, &context)?;
        let records: Vec<LogRecord> = {
            let groups = self.consumer_groups.borrow();
            consumer_records::changes(groups.get(group_id), Some(&group))
                .into_iter()
                .map(LogRecord::Consumer)
                .collect()
        };
        let receipt = self
            .append_group_records(records)
            .await
            .map_err(|error| write_error(&error))?;
        self.consumer_groups
            .borrow_mut()
            .insert(group_id.to_owned(), group);
        drop(writing);
        if let Some(receipt) = receipt {
            self.context
                .store
                .wait(&receipt)
                .await
                .map_err(|source| write_error(&OffsetsWriteError::Append { source }))?;
        }
        Ok(value)
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

    /// A consumer group for a joining member: only when no classic group
    /// with members holds the id (an empty classic group switches; its
    /// offsets stay). Kafka answers GROUP_ID_NOT_FOUND otherwise.
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
        if self
            .groups
            .borrow()
            .get(group_id)
            .is_some_and(|group| group.has_members())
        {
            return Err(not_a_consumer_group(group_id));
        }
        Ok(ConsumerGroup::new(group_id, Instant::now()))
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
            && let Err(source) = self.context.store.wait(&receipt).await
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
/// meeting a consumer-protocol group. Each returns `None` when `group_id`
/// is not a consumer group (the classic path then serves the request).
impl Coordinator {
    /// JoinGroup: an empty consumer group becomes a classic group (its
    /// records are deleted; its offsets stay). The caller holds the writer
    /// lock.
    pub(super) async fn join_consumer_group(
        &self,
        group_id: &str,
        request: &JoinRequest,
    ) -> Option<JoinResult> {
        let group = self.consumer_groups.borrow().get(group_id).cloned()?;
        if group.members.is_empty() {
            return match self.remove_consumer_group(&group, false).await {
                Ok(_) => {
                    tracing::info!(
                        group = group_id,
                        "empty consumer group becomes a classic group"
                    );
                    None
                }
                Err(error) => Some(JoinResult {
                    error: write_error(&error).error.code(),
                    generation: -1,
                    member_id: request.member_id.clone(),
                    ..JoinResult::default()
                }),
            };
        }
        Some(JoinResult {
            error: ResponseError::InconsistentGroupProtocol.code(),
            generation: -1,
            member_id: request.member_id.clone(),
            ..JoinResult::default()
        })
    }

    /// SyncGroup to a consumer group.
    pub(super) async fn sync_consumer_group(
        &self,
        group_id: &str,
        _request: &SyncRequest,
    ) -> Option<SyncResult> {
        if !self.consumer_groups.borrow().contains_key(group_id) {
            return None;
        }
        Some(SyncResult {
            error: ResponseError::UnknownMemberId.code(),
            ..SyncResult::default()
        })
    }

    /// Heartbeat to a consumer group.
    pub(super) async fn heartbeat_consumer_group(
        &self,
        group_id: &str,
        _claim: &MemberClaim<'_>,
    ) -> Option<i16> {
        if !self.consumer_groups.borrow().contains_key(group_id) {
            return None;
        }
        Some(ResponseError::UnknownMemberId.code())
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
        Some(vec![
            ResponseError::UnknownMemberId.code();
            departures.len()
        ])
    }
}
