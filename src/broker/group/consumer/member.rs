//! One member of a consumer-protocol group (KIP-848): what it subscribes
//! to, the partitions it owns, and where it stands in the reconciliation
//! towards its target assignment.
//!
//! The persisted part has two halves, stored as two records (see
//! `records.rs`): the member's metadata (ids, subscription, assignor,
//! rebalance timeout, and for a member that speaks the classic protocol its
//! session timeout and protocols) and its current assignment (epochs, state,
//! assigned partitions, partitions it must still revoke). The deadlines are
//! not persisted: a recovered member gets a fresh session, as in Kafka.

use std::collections::{BTreeMap, BTreeSet};

use crate::security::acl::Viewer;
use std::time::Instant;

use bytes::Bytes;

use crate::broker::metadata::TopicId;

/// Partitions by topic id: an assignment, a target, or what to revoke.
pub type Assignment = BTreeMap<TopicId, BTreeSet<i32>>;

/// Where a member is in its reconciliation (Kafka's `MemberState`; the
/// numbers are the ones its records store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Owns exactly its target at the target epoch.
    Stable,
    /// Must revoke partitions first; it keeps its epoch until it has.
    UnrevokedPartitions,
    /// At the target epoch, waiting for partitions others still own.
    UnreleasedPartitions,
    /// A state this version does not know (a record from a later one): the
    /// member is fenced at its next heartbeat unless it owns nothing.
    Unknown,
}

impl MemberState {
    pub fn code(self) -> i8 {
        match self {
            MemberState::Stable => 1,
            MemberState::UnrevokedPartitions => 2,
            MemberState::UnreleasedPartitions => 3,
            MemberState::Unknown => 0,
        }
    }

    pub fn from_code(code: i8) -> MemberState {
        match code {
            1 => MemberState::Stable,
            2 => MemberState::UnrevokedPartitions,
            3 => MemberState::UnreleasedPartitions,
            _ => MemberState::Unknown,
        }
    }
}

/// What a member that joined with the classic protocol (JoinGroup) brought:
/// its session timeout and its protocols with their metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassicMetadata {
    pub session_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
}

/// The member's metadata record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberMetadata {
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Subscribed topic names, sorted and without duplicates.
    pub subscribed_topic_names: Vec<String>,
    /// The subscribed regular expression; `None` or empty: none.
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub classic: Option<ClassicMetadata>,
}

impl MemberMetadata {
    pub fn new() -> MemberMetadata {
        MemberMetadata {
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            subscribed_topic_names: Vec::new(),
            subscribed_topic_regex: None,
            server_assignor: None,
            rebalance_timeout_ms: -1,
            classic: None,
        }
    }

    /// The regex, unless absent or empty (an empty one subscribes to nothing).
    pub fn regex(&self) -> Option<&str> {
        self.subscribed_topic_regex
            .as_deref()
            .filter(|regex| !regex.is_empty())
    }
}

impl Default for MemberMetadata {
    fn default() -> Self {
        MemberMetadata::new()
    }
}

/// The member's current-assignment record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentAssignment {
    /// The epoch the member must send in its next heartbeat.
    pub epoch: i32,
    /// The epoch before the last bump: a member whose answer with the bump
    /// was lost may still send it (with a subset of its partitions).
    pub previous_epoch: i32,
    pub state: MemberState,
    /// Partitions the member owns (or is being given).
    pub assigned: Assignment,
    /// Partitions the member must revoke before its epoch advances; still
    /// its own until it says it has let them go.
    pub pending_revocation: Assignment,
}

impl CurrentAssignment {
    pub fn new() -> CurrentAssignment {
        CurrentAssignment {
            epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            assigned: Assignment::new(),
            pending_revocation: Assignment::new(),
        }
    }
}

impl Default for CurrentAssignment {
    fn default() -> Self {
        CurrentAssignment::new()
    }
}

#[derive(Clone, Debug)]
pub struct ConsumerMember {
    pub id: String,
    pub metadata: MemberMetadata,
    pub current: CurrentAssignment,
    /// The member is fenced if it does not heartbeat before this.
    pub session_deadline: Instant,
    /// While the member must revoke partitions: the epoch it must leave and
    /// when its rebalance timeout runs out (then it is fenced).
    pub revocation_deadline: Option<(i32, Instant)>,
    /// A classic member must rejoin (JoinGroup) before this once a new
    /// epoch needs it, and sync (SyncGroup) before this after its join.
    pub classic_deadline: Option<Instant>,
    /// Which topics a regex subscription may match for this member (its
    /// principal as of its last heartbeat; not stored: a member replayed
    /// from the log sees every topic until it heartbeats again).
    pub viewer: Viewer,
}

impl ConsumerMember {
    pub fn new(id: &str, now: Instant) -> ConsumerMember {
        ConsumerMember {
            id: id.to_owned(),
            metadata: MemberMetadata::new(),
            current: CurrentAssignment::new(),
            session_deadline: now,
            revocation_deadline: None,
            classic_deadline: None,
            viewer: Viewer::unrestricted(),
        }
    }

    pub fn epoch(&self) -> i32 {
        self.current.epoch
    }

    pub fn uses_classic_protocol(&self) -> bool {
        self.metadata.classic.is_some()
    }

    /// Its session timeout: a classic member's own, else the broker's.
    pub fn session_timeout(&self, consumer_default: std::time::Duration) -> std::time::Duration {
        self.metadata
            .classic
            .as_ref()
            .and_then(|classic| u64::try_from(classic.session_timeout_ms).ok())
            .map_or(consumer_default, std::time::Duration::from_millis)
    }

    /// Whether the member owns exactly its target at `target_epoch`.
    pub fn is_reconciled_to(&self, target_epoch: i32) -> bool {
        self.current.state == MemberState::Stable && self.current.epoch == target_epoch
    }
}

/// How many partitions an assignment holds.
pub fn partition_count(assignment: &Assignment) -> usize {
    assignment.values().map(BTreeSet::len).sum()
}

/// Whether every partition in `owned` is in `assignment`.
pub fn is_subset(owned: &[(TopicId, Vec<i32>)], assignment: &Assignment) -> bool {
    owned.iter().all(|(topic, partitions)| {
        assignment.get(topic).is_some_and(|assigned| {
            partitions
                .iter()
                .all(|partition| assigned.contains(partition))
        })
    })
}

/// Whether `owned` holds any partition of `assignment`.
pub fn overlaps(owned: &[(TopicId, Vec<i32>)], assignment: &Assignment) -> bool {
    owned.iter().any(|(topic, partitions)| {
        assignment.get(topic).is_some_and(|pending| {
            partitions
                .iter()
                .any(|partition| pending.contains(partition))
        })
    })
}
