//! How a consumer-protocol group lives in `__consumer_offsets`, next to
//! the committed offsets: five record types, after Kafka's own (the key
//! versions are Kafka's; the value layouts are this broker's, big-endian,
//! each with a version):
//!
//! | key version | key | value |
//! |---|---|---|
//! | 3 | group | group epoch, subscription metadata hash |
//! | 5 | group, member | ids, client, subscription, assignor, rebalance timeout, classic protocols |
//! | 6 | group | target assignment epoch |
//! | 7 | group, member | the member's target assignment |
//! | 8 | group, member | member epoch, previous epoch, state, assigned partitions, partitions to revoke |
//!
//! A record without a value (a tombstone) deletes: a member's three
//! tombstones remove it, the group's removes the group. Every change to a
//! group is written as the records that differ between its state before and
//! after ([`changes`]); replaying them in log order ([`apply`]) rebuilds the
//! group. Timers are not stored: a recovered group restarts them.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::group::ConsumerGroup;
use super::member::{
    Assignment, ClassicMetadata, ConsumerMember, CurrentAssignment, MemberMetadata, MemberState,
};
use crate::broker::internal_log::{
    FieldError, get_i8, get_i16, get_i32, get_i64, get_string, put_string,
};
use crate::broker::metadata::TopicId;

pub const GROUP_KEY_VERSION: i16 = 3;
pub const MEMBER_KEY_VERSION: i16 = 5;
pub const TARGET_EPOCH_KEY_VERSION: i16 = 6;
pub const TARGET_KEY_VERSION: i16 = 7;
pub const CURRENT_KEY_VERSION: i16 = 8;
const VALUE_VERSION: i16 = 0;

/// Whether a key version is one of these records'.
pub fn is_consumer_key_version(version: i16) -> bool {
    matches!(
        version,
        GROUP_KEY_VERSION
            | MEMBER_KEY_VERSION
            | TARGET_EPOCH_KEY_VERSION
            | TARGET_KEY_VERSION
            | CURRENT_KEY_VERSION
    )
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConsumerRecordError {
    #[error("consumer group record: {0}")]
    Field(#[from] FieldError),
    #[error("consumer group record value version {found} (expected {VALUE_VERSION})")]
    ValueVersion { found: i16 },
    #[error("consumer group record: negative count {count}")]
    NegativeCount { count: i32 },
}

/// The group's own record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupValue {
    pub epoch: i32,
    pub metadata_hash: u64,
}

/// One stored change to a consumer group; `None` values are tombstones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerRecord {
    Group {
        group: String,
        value: Option<GroupValue>,
    },
    Member {
        group: String,
        member: String,
        value: Option<MemberMetadata>,
    },
    TargetEpoch {
        group: String,
        value: Option<i32>,
    },
    Target {
        group: String,
        member: String,
        value: Option<Assignment>,
    },
    Current {
        group: String,
        member: String,
        value: Option<CurrentAssignment>,
    },
}

impl ConsumerRecord {
    pub fn group(&self) -> &str {
        match self {
            ConsumerRecord::Group { group, .. }
            | ConsumerRecord::Member { group, .. }
            | ConsumerRecord::TargetEpoch { group, .. }
            | ConsumerRecord::Target { group, .. }
            | ConsumerRecord::Current { group, .. } => group,
        }
    }

    pub fn encode_key(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        let (version, member) = match self {
            ConsumerRecord::Group { .. } => (GROUP_KEY_VERSION, None),
            ConsumerRecord::Member { member, .. } => (MEMBER_KEY_VERSION, Some(member)),
            ConsumerRecord::TargetEpoch { .. } => (TARGET_EPOCH_KEY_VERSION, None),
            ConsumerRecord::Target { member, .. } => (TARGET_KEY_VERSION, Some(member)),
            ConsumerRecord::Current { member, .. } => (CURRENT_KEY_VERSION, Some(member)),
        };
        out.put_i16(version);
        put_string(&mut out, self.group());
        if let Some(member) = member {
            put_string(&mut out, member);
        }
        out.to_vec()
    }

    pub fn encode_value(&self) -> Option<Vec<u8>> {
        let mut out = BytesMut::new();
        out.put_i16(VALUE_VERSION);
        match self {
            ConsumerRecord::Group { value, .. } => {
                let value = value.as_ref()?;
                out.put_i32(value.epoch);
                out.put_u64(value.metadata_hash);
            }
            ConsumerRecord::Member { value, .. } => put_member(&mut out, value.as_ref()?),
            ConsumerRecord::TargetEpoch { value, .. } => out.put_i32((*value)?),
            ConsumerRecord::Target { value, .. } => put_assignment(&mut out, value.as_ref()?),
            ConsumerRecord::Current { value, .. } => {
                let value = value.as_ref()?;
                out.put_i32(value.epoch);
                out.put_i32(value.previous_epoch);
                out.put_i8(value.state.code());
                put_assignment(&mut out, &value.assigned);
                put_assignment(&mut out, &value.pending_revocation);
            }
        }
        Some(out.to_vec())
    }

    /// Decode a record whose key version [`is_consumer_key_version`].
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<ConsumerRecord, ConsumerRecordError> {
        let mut key = Bytes::copy_from_slice(key);
        let version = get_i16(&mut key)?;
        let group = get_string(&mut key)?;
        let mut value = match value {
            None => None,
            Some(bytes) => {
                let mut bytes = Bytes::copy_from_slice(bytes);
                let found = get_i16(&mut bytes)?;
                if found != VALUE_VERSION {
                    return Err(ConsumerRecordError::ValueVersion { found });
                }
                Some(bytes)
            }
        };
        let record = match version {
            GROUP_KEY_VERSION => ConsumerRecord::Group {
                group,
                value: match value.as_mut() {
                    None => None,
                    Some(bytes) => Some(GroupValue {
                        epoch: get_i32(bytes)?,
                        metadata_hash: get_i64(bytes)? as u64,
                    }),
                },
            },
            TARGET_EPOCH_KEY_VERSION => ConsumerRecord::TargetEpoch {
                group,
                value: value.as_mut().map(get_i32).transpose()?,
            },
            MEMBER_KEY_VERSION => ConsumerRecord::Member {
                member: get_string(&mut key)?,
                group,
                value: value.as_mut().map(get_member).transpose()?,
            },
            TARGET_KEY_VERSION => ConsumerRecord::Target {
                member: get_string(&mut key)?,
                group,
                value: value.as_mut().map(get_assignment).transpose()?,
            },
            _ => ConsumerRecord::Current {
                member: get_string(&mut key)?,
                group,
                value: value.as_mut().map(get_current).transpose()?,
            },
        };
        Ok(record)
    }
}

fn put_nullable(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => put_string(out, text),
        None => out.put_i16(-1),
    }
}

fn get_nullable(bytes: &mut Bytes) -> Result<Option<String>, FieldError> {
    if bytes.remaining() >= 2 && i16::from_be_bytes([bytes[0], bytes[1]]) == -1 {
        bytes.advance(2);
        return Ok(None);
    }
    get_string(bytes).map(Some)
}

fn get_count(bytes: &mut Bytes) -> Result<usize, ConsumerRecordError> {
    let count = get_i32(bytes)?;
    usize::try_from(count).map_err(|_| ConsumerRecordError::NegativeCount { count })
}

fn put_member(out: &mut BytesMut, member: &MemberMetadata) {
    put_nullable(out, member.instance_id.as_deref());
    put_nullable(out, member.rack_id.as_deref());
    put_string(out, &member.client_id);
    put_string(out, &member.client_host);
    out.put_i32(member.subscribed_topic_names.len() as i32);
    for name in &member.subscribed_topic_names {
        put_string(out, name);
    }
    put_nullable(out, member.subscribed_topic_regex.as_deref());
    put_nullable(out, member.server_assignor.as_deref());
    out.put_i32(member.rebalance_timeout_ms);
    match &member.classic {
        None => out.put_i8(0),
        Some(classic) => {
            out.put_i8(1);
            out.put_i32(classic.session_timeout_ms);
            out.put_i32(classic.protocols.len() as i32);
            for (name, metadata) in &classic.protocols {
                put_string(out, name);
                out.put_i32(metadata.len() as i32);
                out.put_slice(metadata);
            }
        }
    }
}

fn get_member(bytes: &mut Bytes) -> Result<MemberMetadata, ConsumerRecordError> {
    let instance_id = get_nullable(bytes)?;
    let rack_id = get_nullable(bytes)?;
    let client_id = get_string(bytes)?;
    let client_host = get_string(bytes)?;
    // Counts are never trusted for sizing: items are pushed as they decode.
    let mut subscribed_topic_names = Vec::new();
    for _ in 0..get_count(bytes)? {
        subscribed_topic_names.push(get_string(bytes)?);
    }
    let subscribed_topic_regex = get_nullable(bytes)?;
    let server_assignor = get_nullable(bytes)?;
    let rebalance_timeout_ms = get_i32(bytes)?;
    let classic = match get_i8(bytes)? {
        0 => None,
        _ => {
            let session_timeout_ms = get_i32(bytes)?;
            let mut protocols = Vec::new();
            for _ in 0..get_count(bytes)? {
                let name = get_string(bytes)?;
                let len = get_count(bytes)?;
                if bytes.remaining() < len {
                    return Err(FieldError::EndsEarly {
                        needed: len,
                        left: bytes.remaining(),
                    }
                    .into());
                }
                protocols.push((name, bytes.split_to(len)));
            }
            Some(ClassicMetadata {
                session_timeout_ms,
                protocols,
            })
        }
    };
    Ok(MemberMetadata {
        instance_id,
        rack_id,
        client_id,
        client_host,
        subscribed_topic_names,
        subscribed_topic_regex,
        server_assignor,
        rebalance_timeout_ms,
        classic,
    })
}

fn put_assignment(out: &mut BytesMut, assignment: &Assignment) {
    out.put_i32(assignment.len() as i32);
    for (topic, partitions) in assignment {
        out.put_slice(&topic.0);
        out.put_i32(partitions.len() as i32);
        for partition in partitions {
            out.put_i32(*partition);
        }
    }
}

fn get_assignment(bytes: &mut Bytes) -> Result<Assignment, ConsumerRecordError> {
    let mut assignment = Assignment::new();
    for _ in 0..get_count(bytes)? {
        let high = get_i64(bytes)?.to_be_bytes();
        let low = get_i64(bytes)?.to_be_bytes();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&high);
        id[8..].copy_from_slice(&low);
        let partitions = assignment.entry(TopicId(id)).or_default();
        for _ in 0..get_count(bytes)? {
            partitions.insert(get_i32(bytes)?);
        }
    }
    Ok(assignment)
}

fn get_current(bytes: &mut Bytes) -> Result<CurrentAssignment, ConsumerRecordError> {
    Ok(CurrentAssignment {
        epoch: get_i32(bytes)?,
        previous_epoch: get_i32(bytes)?,
        state: MemberState::from_code(get_i8(bytes)?),
        assigned: get_assignment(bytes)?,
        pending_revocation: get_assignment(bytes)?,
    })
}

/// The records that turn `old` into `new` (a group created: `old` is None;
/// deleted: `new` is None). Writing every record of a group that exists,
/// from nothing, is `changes(None, Some(group))`: the copy-forward snapshot.
pub fn changes(old: Option<&ConsumerGroup>, new: Option<&ConsumerGroup>) -> Vec<ConsumerRecord> {
    let Some(group_id) = new.or(old).map(|group| group.id.clone()) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    let old_members = old.map(|group| &group.members);
    let new_members = new.map(|group| &group.members);
    // Members that went, first: their three tombstones.
    if let Some(old_members) = old_members {
        for id in old_members.keys() {
            if new_members.is_some_and(|members| members.contains_key(id)) {
                continue;
            }
            for record in member_tombstones(&group_id, id) {
                records.push(record);
            }
        }
    }
    let Some(new) = new else {
        records.push(ConsumerRecord::TargetEpoch {
            group: group_id.clone(),
            value: None,
        });
        records.push(ConsumerRecord::Group {
            group: group_id,
            value: None,
        });
        return records;
    };
    for member in new.members.values() {
        let before = old_members.and_then(|members| members.get(&member.id));
        if before.is_none_or(|before| before.metadata != member.metadata) {
            records.push(ConsumerRecord::Member {
                group: group_id.clone(),
                member: member.id.clone(),
                value: Some(member.metadata.clone()),
            });
        }
    }
    let group_value = GroupValue {
        epoch: new.epoch,
        metadata_hash: new.metadata_hash,
    };
    if old.is_none_or(|old| old.epoch != new.epoch || old.metadata_hash != new.metadata_hash) {
        records.push(ConsumerRecord::Group {
            group: group_id.clone(),
            value: Some(group_value),
        });
    }
    target_changes(&group_id, old, new, &mut records);
    for member in new.members.values() {
        let before = old_members.and_then(|members| members.get(&member.id));
        if before.is_none_or(|before| before.current != member.current) {
            records.push(ConsumerRecord::Current {
                group: group_id.clone(),
                member: member.id.clone(),
                value: Some(member.current.clone()),
            });
        }
    }
    records
}

fn member_tombstones(group: &str, member: &str) -> [ConsumerRecord; 3] {
    [
        ConsumerRecord::Current {
            group: group.to_owned(),
            member: member.to_owned(),
            value: None,
        },
        ConsumerRecord::Target {
            group: group.to_owned(),
            member: member.to_owned(),
            value: None,
        },
        ConsumerRecord::Member {
            group: group.to_owned(),
            member: member.to_owned(),
            value: None,
        },
    ]
}

fn target_changes(
    group_id: &str,
    old: Option<&ConsumerGroup>,
    new: &ConsumerGroup,
    records: &mut Vec<ConsumerRecord>,
) {
    let old_targets = old.map(|group| &group.targets);
    for (member, target) in &new.targets {
        if old_targets
            .and_then(|targets| targets.get(member))
            .is_none_or(|before| before != target)
        {
            records.push(ConsumerRecord::Target {
                group: group_id.to_owned(),
                member: member.clone(),
                value: Some(target.clone()),
            });
        }
    }
    if let Some(old_targets) = old_targets {
        for member in old_targets.keys() {
            // A member that went already has its tombstone.
            if !new.targets.contains_key(member) && new.members.contains_key(member) {
                records.push(ConsumerRecord::Target {
                    group: group_id.to_owned(),
                    member: member.clone(),
                    value: None,
                });
            }
        }
    }
    if old.is_none_or(|old| old.assignment_epoch != new.assignment_epoch) {
        records.push(ConsumerRecord::TargetEpoch {
            group: group_id.to_owned(),
            value: Some(new.assignment_epoch),
        });
    }
}

/// Replay one record into `groups` (at start, in log order).
pub fn apply(groups: &mut HashMap<String, ConsumerGroup>, record: ConsumerRecord, now: Instant) {
    let group_id = record.group().to_owned();
    if let ConsumerRecord::Group { value: None, .. } = record {
        groups.remove(&group_id);
        return;
    }
    let group = groups
        .entry(group_id.clone())
        .or_insert_with(|| ConsumerGroup::new(&group_id, now));
    match record {
        ConsumerRecord::Group { value, .. } => {
            if let Some(value) = value {
                group.epoch = value.epoch;
                group.metadata_hash = value.metadata_hash;
            }
        }
        ConsumerRecord::TargetEpoch { value, .. } => {
            group.assignment_epoch = value.unwrap_or(0);
        }
        ConsumerRecord::Member { member, value, .. } => match value {
            Some(metadata) => {
                member_entry(&mut group.members, &member, now).metadata = metadata;
                group.subscriptions_changed();
            }
            None => {
                group.members.remove(&member);
                group.subscriptions_changed();
            }
        },
        ConsumerRecord::Target { member, value, .. } => match value {
            Some(target) => {
                group.targets.insert(member, target);
            }
            None => {
                group.targets.remove(&member);
            }
        },
        ConsumerRecord::Current { member, value, .. } => {
            if let Some(current) = value {
                member_entry(&mut group.members, &member, now).current = current;
            } else if let Some(member) = group.members.get_mut(&member) {
                member.current = CurrentAssignment::new();
            }
        }
    }
}

fn member_entry<'a>(
    members: &'a mut BTreeMap<String, ConsumerMember>,
    id: &str,
    now: Instant,
) -> &'a mut ConsumerMember {
    members
        .entry(id.to_owned())
        .or_insert_with(|| ConsumerMember::new(id, now))
}
